"""``invad soak`` (or ``python -m worker.bench.soak``): references through worker processes while
their dependencies fail, then a count of where every reference went.

1. Private Kafka, Redis and S3 (scripts/services.sh, each in a run directory of its own on free
   ports: the shared services are never touched, and each can be restarted alone).
2. A tiny real model (trained here at ``--image-size`` px unless ``--model`` names a bundle), images
   uploaded once, ``--refs`` references to them published at once, about ``--bad-fraction`` of them
   bad on purpose (:mod:`worker.bench.soak_inputs`).
3. ``--workers`` worker processes (the real ``invad work`` loop, one torch thread each) consume them
   while the faults of ``--faults`` strike one after the other (:mod:`worker.bench.soak_faults`):
   SIGKILL of a worker (restarted at once), a broker restart, a Redis restart, S3 stopped for
   ``--s3-down-s``. Offsets, lag and each worker's RSS are sampled throughout (:mod:`.soak_watch`).
4. Once the lag is 0, the workers get SIGTERM and the end checks run (:mod:`.soak_check`); the tables
   are printed, the JSON written, and the soak section of docs/RELIABILITY.md regenerated
   (:mod:`.soak_report`). Exit status 0 when every goal is met, 1 otherwise.

The soak is not part of the test suite: the full 20,000 references take the better part of an hour on
two cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .services import S3_KEYS, PrivateService
from .soak_faults import DEFAULT_FAULTS, FaultRunner, parse_faults
from .workers import REPO, joined, worker_env


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 0.5), got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refs", type=_positive, default=20_000, help="references to send (default 20000)")
    p.add_argument("--workers", type=_positive, default=3, help="worker processes (default 3)")
    p.add_argument("--partitions", type=_positive, default=6, help="partitions of the topic (default 6)")
    p.add_argument("--images", type=_positive, default=200, help="distinct images uploaded (default 200, 10 %% defective)")
    p.add_argument("--bad-fraction", type=_fraction, default=0.01, help="share of bad messages (default 0.01)")
    p.add_argument("--faults", default=DEFAULT_FAULTS, help=f"KIND@PROGRESS,... or none (default {DEFAULT_FAULTS})")
    p.add_argument("--s3-down-s", type=float, default=30.0, help="how long S3 stays stopped (default 30)")
    p.add_argument("--model", default=None, help="bundle to serve (default: train a tiny one here)")
    p.add_argument("--image-size", type=_positive, default=64, help="input size of the tiny model and images (default 64)")
    p.add_argument("--batch-size", type=_positive, default=16, help="INVAD_BATCH_SIZE of the workers (default 16)")
    p.add_argument("--session-timeout-ms", type=_positive, default=30_000, help="the workers' (default 30000)")
    p.add_argument("--warmup-s", type=float, default=120.0, help="RSS growth is measured from this age on (default 120)")
    p.add_argument("--timeout-s", type=float, default=4 * 3600, help="give up after this long (default 4 h)")
    p.add_argument("--out", default="soak.json", help="JSON file to write (default soak.json)")
    p.add_argument("--docs", default=str(REPO / "docs" / "RELIABILITY.md"),
                   help="file whose soak section is regenerated ('' for none; default docs/RELIABILITY.md)")
    p.add_argument("--keep", action="store_true", help="keep the services running and the scratch folder (logs)")


def say(text: str) -> None:
    print(text, flush=True)


class Soak:
    """One soak run: its scratch folder, private services, names, workers and watchers."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.token = args, uuid.uuid4().hex[:8]
        self.scratch = Path(tempfile.mkdtemp(prefix="invad-soak-"))
        self.services = {name: PrivateService(name, self.scratch / f"run-{name}") for name in ("kafka", "redis", "s3")}
        self.name = f"invad-soak-{self.token}"
        self.pool: Any = None
        self.watcher: Any = None

    def config(self, models: str) -> Any:
        from worker.pipeline.config import WorkerConfig
        return WorkerConfig.from_sources({
            "kafka_bootstrap": self.services["kafka"].address, "redis_url": self.services["redis"].address,
            "s3_endpoint": self.services["s3"].address, "aws_access_key_id": S3_KEYS[0],
            "aws_secret_access_key": S3_KEYS[1], "s3_region": "us-east-1", "topic": self.name, "group": self.name,
            "redis_prefix": self.name, "s3_bucket": self.name, "models": models,
            "batch_size": str(self.args.batch_size)}, {}, mode="kafka")

    def run(self) -> dict[str, Any]:
        from producers.admin import ensure_topic
        from worker.pipeline import s3 as s3_config

        from .soak_inputs import NOT_AN_IMAGE_KEY, references, soak_images, train_tiny
        from .soak_watch import OffsetReader, Pool, Watcher

        args, started = self.args, time.monotonic()
        n_bad_images = max(1, args.images // 10)
        train, good, bad = soak_images(args.image_size, 0 if args.model else 80, args.images - n_bad_images, n_bad_images)
        for name, service in self.services.items():
            say(f"soak: starting a private {name} in {service.run_dir}")
            service.start()
        model = args.model or str(train_tiny(train, self.scratch, args.image_size))
        config = self.config(str(Path(model).resolve()))
        bootstrap = self.services["kafka"].address
        ensure_topic(bootstrap, config.topic, args.partitions)
        ensure_topic(bootstrap, config.dlq_topic, 1)
        s3 = s3_config.client_from_config(config)
        s3.create_bucket(Bucket=config.s3_bucket)
        images = good + bad
        uris = []
        for i, data in enumerate(images):
            key = f"in/{i:05d}.png"
            s3.put_object(Bucket=config.s3_bucket, Key=key, Body=data, ContentType="image/png")
            uris.append(f"s3://{config.s3_bucket}/{key}")
        s3.put_object(Bucket=config.s3_bucket, Key=NOT_AN_IMAGE_KEY, Body=b"this is not an image\n")
        refs = references(args.refs, uris, len(good), config.s3_bucket, lines=10 * args.partitions,
                          bad_fraction=args.bad_fraction)
        overrides = dict(INVAD_SESSION_TIMEOUT_MS=str(args.session_timeout_ms), INVAD_ALERT_STREAM_MAXLEN="10000000")
        logs = self.scratch / "logs"
        logs.mkdir()
        names = [f"w{i}" for i in range(args.workers)]
        pool = self.pool = Pool(names, lambda name: worker_env(config, name, single_core=True, **overrides), logs)
        if not joined(list(pool.workers.values()), args.partitions, timeout_s=300):
            raise RuntimeError("the workers did not share every partition within 300 s; logs in " + str(logs))
        say(f"soak: {args.workers} workers hold the {args.partitions} partitions; publishing {len(refs):,} references")
        watcher = self.watcher = Watcher(OffsetReader(bootstrap, config.topic, config.group, args.partitions), pool).start()
        pool_started = {pid: at - watcher.started for pid, at in pool.started.items()}
        self._publish(config, refs)
        runner = FaultRunner(self.services, pool, watcher, len(refs), args.s3_down_s,
                             timeout_s=max(600.0, args.timeout_s - (time.monotonic() - started)), say=say)
        faults = [runner.run(fault) for fault in parse_faults(args.faults)]
        lag_end = self._wait_drained(watcher, len(refs), started)
        watcher.stop()
        pool_started.update({pid: at - watcher.started for pid, at in pool.started.items()})
        exit_codes = pool.stop()
        say(f"soak: lag {lag_end} at the end; workers stopped with {exit_codes}; checking every reference")
        return dict(config=config, refs=refs, images=images, s3=s3, faults=faults, lag_end=lag_end,
                    exit_codes=exit_codes, unexpected_exits=pool.exits, rss_samples=watcher.rss,
                    started=pool_started, offsets=[(round(s.t, 1), s.lag) for s in watcher.samples],
                    model=model, wall_s=time.monotonic() - started)

    def _publish(self, config: Any, refs: list) -> None:
        from producers.publisher import Publisher
        publisher = Publisher(",".join(config.kafka_bootstrap), config.topic, client_id="invad-soak", linger_ms=20)
        try:
            failed = [r.image_id for r in publisher.publish(ref.message for ref in refs) if not r.ok]
        finally:
            publisher.close()
        if failed:
            raise RuntimeError(f"{len(failed)} references could not be published, e.g. {failed[:3]}")

    def _wait_drained(self, watcher: Any, sent: int, started: float) -> int | None:
        """Wait until every reference is committed (lag 0), at most until --timeout-s; the last lag seen."""
        while time.monotonic() - started < self.args.timeout_s:
            sample = watcher.latest()
            if sample is not None and sample.lag == 0 and sum(sample.ends.values()) >= sent:
                return 0
            time.sleep(1.0)
        sample = watcher.latest()
        return None if sample is None else sample.lag

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.pool is not None:
            self.pool.stop()  # after an error; a no-op once the run stopped them
        if self.args.keep:
            say(f"soak: services left running; scratch (logs, run dirs) kept in {self.scratch}")
            return
        for service in self.services.values():
            try:
                service.stop()
            except Exception as error:  # noqa: BLE001 - report, keep stopping the others
                say(f"soak: stopping {service.name} failed: {error}")
        shutil.rmtree(self.scratch, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Entry point: run the soak, check, report; 0 when every goal is met."""
    from schemas import RedisLayout

    from . import soak_report
    from .soak_check import check

    parse_faults(args.faults)  # a bad schedule fails before anything starts
    soak = Soak(args)
    try:
        outcome = soak.run()
        import redis
        config = outcome["config"]
        client = redis.Redis.from_url(config.redis_url)
        checks = check(outcome["refs"], outcome["images"], client, RedisLayout(prefix=config.redis_prefix), outcome["s3"],
                       soak.services["kafka"].address, config.dlq_topic)
        client.close()
    finally:
        soak.close()
    rss = soak_report.rss_rows(outcome["rss_samples"], outcome["started"], args.warmup_s)
    flags = sys.argv[2:] if sys.argv[1:2] == ["soak"] else sys.argv[1:]
    result = {"command": " ".join(["invad soak", *flags]), "date": time.strftime("%Y-%m-%d"), "refs": args.refs, "workers": args.workers, "partitions": args.partitions,
              "model": args.model or f"tiny, trained here at {args.image_size} px", "warmup_s": args.warmup_s,
              "wall_s": round(outcome["wall_s"], 1), "load_average_1m": round(os.getloadavg()[0], 2),
              "checks": checks, "faults": outcome["faults"], "lag_end": outcome["lag_end"], "exit_codes": outcome["exit_codes"],
              "unexpected_exits": outcome["unexpected_exits"], "rss": rss,
              "rss_timeline": soak_report.rss_timeline(outcome["rss_samples"])}
    result["goals"] = soak_report.goals(checks, outcome["faults"], rss, outcome["lag_end"])
    text = soak_report.tables(result)
    print(text, end="")
    print(" ".join(f"{k}={v}" for k, v in result["goals"].items()))
    out = soak_report.write_json(args.out, {**result, "rss_samples": outcome["rss_samples"], "lag_samples": outcome["offsets"]})
    print(f"wrote {out}")
    if args.docs:
        header = (f"Run of {result['date']}: `{result['command']}`, {args.workers} workers on {args.partitions} "
                  f"partitions, {result['model']}, {result['wall_s'] / 60:.0f} min on this machine "
                  f"(load average {result['load_average_1m']} at the end).\n\n")
        soak_report.update_docs(args.docs, header + text)
        print(f"updated the soak section of {args.docs}")
    return 0 if all(result["goals"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bench.soak", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
