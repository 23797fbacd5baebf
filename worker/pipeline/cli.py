"""``invad work``: the Kafka worker, or embedded mode with ``--source``; and :func:`run_embedded`.

Exit codes: 0 after a clean stop or an exhausted embedded source; 2 for an invalid setting; at
start, a dependency that refuses our configuration exits with 3 (Redis: credentials, ACL, TLS), 4 (S3:
bucket, credentials, permission) or 5 (Kafka: missing topic, SASL credentials, TLS), and 6 when a product of
INVAD_MODEL_POINTERS has no active version or none that passes its checks; 75 (EX_TEMPFAIL) when a
stop could not drain because a dependency stayed down (nothing was committed past the last good
batch, so nothing is lost). No message content causes an exit; a bug propagates as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import structlog

from .backoff import backoff_delay
from .config import WorkerConfig, add_config_arguments, parse_models
from .drift import DriftSink
from .embedded import FolderSink, JsonlDeadLetters, ProgressStore, SqliteSink, StdinSource, folder_source, jsonl_source
from .errors import DependencyDown, Misconfigured
from .fetch import Fetcher
from .health_http import HealthServer
from .kafka_io import KafkaDeadLetters, KafkaSource
from .loop import Loop, remove_health
from .metrics import NoMetrics, WorkerMetrics
from .model_watch import ModelRollout
from .models import LiveRegistry, ModelRegistry
from .redact import LogRedactor
from .redis_sink import RedisSink
from .s3_sink import S3Sink

log = structlog.get_logger("invad.pipeline.cli")
EX_TEMPFAIL = 75
# Masks credentials in every log event of this process; _start feeds it each config's secrets.
REDACTOR = LogRedactor()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``invad work``: every WorkerConfig option plus the embedded-mode flags."""
    add_config_arguments(parser)
    group = parser.add_argument_group("embedded mode (no Kafka, Redis or S3)")
    group.add_argument("--source", help="folder of images, JSON-lines file of ImageRefs, or '-' for stdin")
    group.add_argument("--sqlite", help="SQLite database for scores, alerts and dead letters")
    group.add_argument("--out", help="folder for flagged originals, overlays and records")
    group.add_argument("--product", default="default", help="product key of folder images (default: default)")
    group.add_argument("--line-id", default="local", help="line id of folder images (default: local)")
    group.add_argument("--progress", help="progress file for resuming (default: next to --sqlite or in --out)")


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is *now* (not at configuration time)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def configure_logging(level: str = "info") -> None:
    """JSON log lines on stderr with credentials masked (:data:`REDACTOR`), unless the application
    configured structlog already."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, REDACTOR, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *args: _StderrLogger())


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT only set ``stop`` (the batch in flight finishes); a second SIGINT interrupts."""
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _print_redacted_traceback(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    """``sys.excepthook`` of a worker: a crash's traceback with credentials masked, since a bug's message
    may quote a URL (botocore, for one, quotes a bad endpoint whole)."""
    sys.stderr.write(REDACTOR.text("".join(traceback.format_exception(kind, error, tb))))


def _start(config: WorkerConfig) -> threading.Event:
    """Logging configured, the config logged once (secrets redacted), signals wired to the stop flag."""
    REDACTOR.add(config.secrets())
    sys.excepthook = _print_redacted_traceback
    configure_logging(config.log_level)
    log.info("config", **config.redacted())
    stop = threading.Event()
    install_signal_handlers(stop)
    return stop


def run(args: argparse.Namespace) -> int:
    """Entry point of ``invad work``: embedded mode when ``--source`` is given, else Kafka mode."""
    if getattr(args, "source", None):
        return run_embedded_cli(args)
    try:
        config = WorkerConfig.from_sources(args, os.environ, mode="kafka")
    except ValueError as error:
        print(f"invad work: {error}", file=sys.stderr)
        return 2
    stop = _start(config)
    return run_kafka(config, stop)


def _until_up(what: str, make: Callable[[], Any], stop: threading.Event, backoff_max_s: float,
              metrics: NoMetrics = NoMetrics()) -> Any:
    """Call ``make`` until it stops raising DependencyDown (or ``stop`` is set: returns None). Waiting
    counts as alive for the health endpoints, and as the dependency's down time for the metrics."""
    attempt, down = 0, None
    while not stop.is_set():
        metrics.alive()
        try:
            made = make()
            if down is not None:
                metrics.dependency_up(down)
            return made
        except DependencyDown as error:
            if down is not None and down != error.dependency:
                metrics.dependency_up(down)
            down = error.dependency
            metrics.dependency_down(down)
            attempt += 1
            delay = backoff_delay(attempt, backoff_max_s)
            log.warning("dependency_down_at_start", dependency=error.dependency, what=what, error=error.message,
                        attempt=attempt, retry_in_s=round(delay, 2))
            stop.wait(delay)
    return None


def run_kafka(config: WorkerConfig, stop: threading.Event, registry: Any = None) -> int:
    """Run the Kafka worker until ``stop``; returns the exit code (0, or 75 for an abandoned drain).
    ``registry`` replaces the bundles of INVAD_MODELS (tests, benchmarks); the products of
    INVAD_MODEL_POINTERS follow their pointers either way."""
    metrics = WorkerMetrics()
    if registry is None and config.models:
        registry = ModelRegistry.load(config.models, config.device)
    if config.model_pointers:  # filled by ModelRollout.start before the first message
        registry = LiveRegistry(registry)
    else:
        metrics.models_loaded(registry)
    s3_sink = S3Sink.from_config(config)
    redis_sink = RedisSink.from_config(config)
    sinks: list[Any] = [s3_sink, redis_sink]  # S3 first: an alert must never point at a missing overlay
    fetcher = Fetcher.from_config(config)
    closers: list[Callable[[], None]] = [fetcher.close, redis_sink.close, s3_sink.close]
    if config.drift_watch:  # last: it reads what the batch scored, and its own failure retries like any sink's
        drift_sink = DriftSink.from_config(config, registry)
        sinks.append(drift_sink)
        closers.append(drift_sink.close)
    try:
        server = HealthServer.start(config, metrics, checks={"redis": redis_sink.ping, "s3": s3_sink.ping}, stop=stop)
        if server is not None:
            closers.insert(0, server.close)

        def until_up(what: str, make: Callable[[], Any]) -> Any:
            return _until_up(what, make, stop, config.backoff_max_s, metrics)

        # Each dependency is checked before the first message: an outage is waited out, a refusal of
        # our configuration (credentials, bucket, topic, permissions) exits at once with the fix.
        if not until_up("s3 bucket", lambda: s3_sink.check(config.worker_id) or True):
            return 0
        if not until_up("redis", lambda: redis_sink.check() or True):
            return 0
        if config.drift_watch and not until_up("redis", lambda: drift_sink.check() or True):
            return 0
        if config.model_pointers:  # the products that follow `invad models activate`
            rollout = ModelRollout.from_config(config, metrics)
            closers.insert(0, rollout.close)
            if not until_up("models", lambda: rollout.start(registry)):
                return 0
            rollout.watch()
        dead_letters = until_up("dlq producer", lambda: KafkaDeadLetters(config))
        if dead_letters is None:
            return 0
        closers.insert(0, dead_letters.close)
        source = until_up("consumer", lambda: KafkaSource(config))
        if source is None:
            return 0
        closers.insert(0, source.close)  # first: leave the group before the rest shuts down
        metrics.watch_lag(source.lag)
        if config.drift_watch:
            metrics.watch_drift(drift_sink.statuses)
        if not until_up("topics", lambda: source.check_topics() or True):
            return 0
        loop = Loop(source=source, fetcher=fetcher, registry=registry, sinks=sinks, dead_letters=dead_letters,
                    config=config, stop=stop, metrics=metrics)
        stats = loop.run()
        log.info("worker_stopped", batches=stats.batches, scored=stats.scored, flagged=stats.flagged,
                 dead_lettered=dict(stats.dead_lettered), retries=stats.retries, abandoned=stats.abandoned)
        return EX_TEMPFAIL if stats.abandoned else 0
    except Misconfigured as error:
        log.error("misconfigured", dependency=error.dependency, problem=error.problem, fix=error.fix,
                  exit_code=error.exit_code)
        print(f"invad work: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        remove_health(config)
        for close in closers:
            close()


def run_embedded(source: str | os.PathLike, model: Any, sqlite_path: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None, *, product: str = "default", line_id: str = "local",
                 progress_path: str | os.PathLike | None = None, config: WorkerConfig | None = None,
                 stop: threading.Event | None = None, keep_scores: int = 100_000, metrics: Any = None,
                 **settings: Any) -> dict[str, Any]:
    """Score ``source`` (image folder, ``.jsonl`` of ImageRefs, or "-" for stdin) with no services.

    Args:
        model: a bundle path, an ``INVAD_MODELS``-style string, or a ready :class:`ModelRegistry`.
        sqlite_path: database for every score, alerts and dead letters (optional).
        out_dir: folder for flagged originals, overlays and records (optional; at least one sink needed).
        product, line_id: the ImageRef fields given to folder images.
        file:// access: a folder source reads only inside the folder; JSON-lines/stdin references may
            name any local file unless ``file_roots`` (INVAD_FILE_ROOTS) is set.
        progress_path: resume file (default ``<sqlite>.progress.json`` or ``<out>/progress.json``).
        config: a WorkerConfig in embedded mode; ``settings`` override its fields (batch_size, device,
            file_roots, ...).
        metrics: the loop's hooks (a :class:`WorkerMetrics` to serve over HTTP; default: none).

    Returns:
        {"scored", "flagged", "dead_lettered": {reason: n}, "skipped", "batches", "seconds",
         "images_per_s", "sqlite", "out_dir", "progress", "scores": {image_id: score}}

    Raises:
        ValueError: bad arguments or model bundle (message names the value and what is allowed).
    """
    if sqlite_path is None and out_dir is None:
        raise ValueError("run_embedded needs sqlite_path and/or out_dir: scores must go somewhere")
    config = (config or WorkerConfig(mode="embedded", worker_id=f"embedded-{os.getpid()}"))
    config = config.replace(mode="embedded", **settings)
    if progress_path is None and str(source) != "-":
        progress_path = f"{sqlite_path}.progress.json" if sqlite_path else Path(out_dir) / "progress.json"
    progress = ProgressStore(progress_path)
    # A folder source reads only that folder. References from a JSON-lines file or stdin were written
    # by the user on their own machine: any local file unless INVAD_FILE_ROOTS narrows it (in Kafka
    # mode, where producers are other systems, file:// is allowed only under INVAD_FILE_ROOTS).
    roots = list(config.file_roots)
    if str(source) == "-":
        src: Any = StdinSource()
        roots = roots or ["/"]
    elif Path(source).is_dir():
        src = folder_source(source, progress, product=product, line_id=line_id)
        roots.append(str(Path(source).resolve()))
    elif Path(source).is_file():
        src = jsonl_source(source, progress)
        roots = roots or ["/"]
    else:
        raise ValueError(f"--source {str(source)!r}: not a folder, a JSON-lines file or '-'")
    config = config.replace(file_roots=tuple(dict.fromkeys(os.path.realpath(r) for r in roots)))
    if isinstance(model, ModelRegistry):
        registry = model
    else:
        registry = ModelRegistry.load(parse_models(str(model)), config.device)

    sinks: list[Any] = []
    sqlite_sink = SqliteSink(sqlite_path) if sqlite_path else None
    if out_dir:
        sinks.append(FolderSink(out_dir))
    if sqlite_sink:
        sinks.append(sqlite_sink)
    dead_letters = sqlite_sink.dead_letter_writer() if sqlite_sink else JsonlDeadLetters(Path(out_dir) / "dead_letters.jsonl")
    fetcher = Fetcher.from_config(config)
    started = time.perf_counter()
    try:
        loop = Loop(source=src, fetcher=fetcher, registry=registry, sinks=sinks, dead_letters=dead_letters,
                    config=config, stop=stop, keep_scores=keep_scores, metrics=metrics)
        stats = loop.run()
    finally:
        fetcher.close()
        for sink in sinks:
            sink.close()
        dead_letters.close()
    seconds = time.perf_counter() - started
    return {"source": str(source), "scored": stats.scored, "flagged": stats.flagged,
            "dead_lettered": dict(stats.dead_lettered), "skipped": getattr(src, "skipped", 0),
            "batches": stats.batches, "seconds": round(seconds, 3),
            "images_per_s": round(stats.scored / seconds, 2) if seconds > 0 else 0.0,
            "sqlite": str(sqlite_path) if sqlite_path else None, "out_dir": str(out_dir) if out_dir else None,
            "progress": str(progress_path) if progress_path else None, "scores": dict(stats.scores)}


def run_embedded_cli(args: argparse.Namespace) -> int:
    """``invad work --source ...``: embedded mode from flags and ``INVAD_*`` variables; prints a JSON summary."""
    try:
        config = WorkerConfig.from_sources(args, os.environ, mode="embedded")
        if not config.models:
            raise ValueError("INVAD_MODELS (or --models) is required: the bundle path to score with")
        if not (args.sqlite or args.out):
            raise ValueError("--sqlite and/or --out is required with --source")
    except ValueError as error:
        print(f"invad work: {error}", file=sys.stderr)
        return 2
    stop = _start(config)
    metrics = WorkerMetrics()
    registry = ModelRegistry.load(config.models, config.device)
    metrics.models_loaded(registry)
    try:
        server = HealthServer.start(config, metrics, stop=stop)
    except Misconfigured as error:
        print(f"invad work: {error}", file=sys.stderr)
        return error.exit_code
    try:
        summary = run_embedded(args.source, registry, args.sqlite, args.out, product=args.product,
                               line_id=args.line_id, progress_path=args.progress, config=config, stop=stop,
                               keep_scores=0, metrics=metrics)
    finally:
        if server is not None:
            server.close()
    summary.pop("scores", None)
    print(json.dumps(summary, indent=1))
    return 0
