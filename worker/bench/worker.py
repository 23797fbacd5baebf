"""The bench's worker process: ``invad work``'s Kafka worker, with the bench's choice of detector.

``python -m worker.bench.worker [--detector null --flagged-fraction F] [--cpu N] [--stage-marks FILE]``

Settings come from ``INVAD_*`` variables exactly as for ``invad work``, and the worker is the same
:func:`worker.pipeline.cli.run_kafka` (consumer, fetcher, Loop, model registry, Redis and S3 sinks,
commits); only the registry's detector may be the cost-free :class:`NullDetector`. ``--cpu`` pins the
process to one CPU; ``--stage-marks`` starts a :class:`StageSampler` that writes a mark on each SIGUSR1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import structlog

from worker.pipeline.cli import configure_logging, install_signal_handlers, run_kafka
from worker.pipeline.config import WorkerConfig
from worker.pipeline.models import ModelRegistry

from .null_detector import NullDetector
from .stages import StageSampler

log = structlog.get_logger("invad.bench.worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker.bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=("invad", "null"), default="invad",
                        help="invad: the bundles of INVAD_MODELS; null: the cost-free NullDetector for every product")
    parser.add_argument("--flagged-fraction", type=float, default=0.0, help="null detector: fraction flagged")
    parser.add_argument("--map-size", type=int, default=256, help="null detector: anomaly map side (pixels)")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to this CPU")
    parser.add_argument("--stage-marks", default=None, help="sample CPU by stage; SIGUSR1 appends a mark here")
    return parser


def registry_for(args: argparse.Namespace, config: WorkerConfig) -> ModelRegistry:
    """The null detector for every product, or the bundles of ``config.models`` as ``invad work`` loads them."""
    if args.detector == "null":
        detector = NullDetector(args.flagged_fraction, args.map_size)
        log.info("model_loaded", product="*", model_name=detector.name, model_version=detector.version,
                 flagged_fraction=detector.flagged_fraction)
        return ModelRegistry({"*": detector})
    return ModelRegistry.load(config.models, config.device)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM; returns ``run_kafka``'s exit code, or 2 for a bad setting."""
    args = build_parser().parse_args(argv)
    try:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        config = WorkerConfig.from_sources({}, os.environ, mode="kafka")
        configure_logging(config.log_level)
        log.info("config", **config.redacted())
        registry = registry_for(args, config)
    except (ValueError, OSError) as error:
        print(f"bench worker: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    install_signal_handlers(stop)
    sampler = StageSampler(args.stage_marks).start() if args.stage_marks else None
    if sampler is not None:
        signal.signal(signal.SIGUSR1, lambda *_: sampler.request_mark())
    try:
        return run_kafka(config, stop, registry)
    finally:
        if sampler is not None:
            sampler.stop()


if __name__ == "__main__":
    sys.exit(main())
