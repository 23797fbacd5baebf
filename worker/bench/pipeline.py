"""``invad bench pipeline``: workers through real Kafka, Redis and S3, with the InvAD or a cost-free detector.

Every scenario starts fresh worker processes (:mod:`worker.bench.worker`: the real Kafka worker) on a
private 2-partition topic, consumer group, bucket and Redis prefix, N images uploaded to the bucket
and N ImageRefs published to the topic (keyed by two line ids that land on different partitions).

``--detector invad`` (the default), on the same images at batch size B (the largest of
``--batch-sizes``):

1. the detector alone, in this process: decode PNG bytes + ``predict`` per batch of B; images/s is the
   median over ``--repeats`` passes over all images (after one warm-up batch);
2. one worker; with scaling on, one worker pinned to one CPU, then two workers pinned to one CPU each;
3. one worker fed at half the measured capacity (steady-state latency).

``--detector null`` (the plumbing ceiling): for each ``--flagged-fraction``, one worker, then (with
scaling on) two, serving :class:`~worker.bench.null_detector.NullDetector`: what Kafka, fetch,
decode, records, overlays, Redis, S3 and commits sustain, the bound of any faster model.

Workers are warm before timing: the bench waits until every partition is assigned (the model loads
before the consumer joins), then publishes 2*B warm-up refs per worker and waits for all of them in
Redis. Timing starts at the first timed publish. An image's "visible" time is when the bench first
reads its ScoreRecord from Redis (polled every ``POLL_S``), so latencies are capture -> readable in
Redis, queueing behind the burst included, and carry up to ``POLL_S`` of polling error. CPU time of
the workers (by stage, with the stage sampler), the bench and any ``--watch-pids`` process is taken
over the same window.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from producers.admin import delete_topic, ensure_topic
from producers.publisher import Publisher
from producers.rate import TokenBucket
from schemas import ImageRef
from worker.common import kafka_security, redis_client, s3client
from worker.pipeline import s3
from worker.pipeline.config import WorkerConfig

from .observe import RedisReader, parse_pids, process_cpu_s
from .report import cpu_fields, format_cpu_table, format_table, percentiles, write_report
from .scenarios import NULL_MODELS, ceiling_rows, detector_rows, prepare_inputs
from .workers import WorkerProcess, joined, worker_env

POLL_S = 0.05  # coarse enough that polling costs the busy cores little
PARTITIONS = 2
_CANDIDATE_LINES = tuple(f"bench-line-{c}" for c in "abcdefgh")  # two of them will hash to different partitions


class PipelineBench:
    """Owns the bench's private topic, consumer group, bucket and Redis prefix on shared services.

    Args:
        config: the workers' WorkerConfig (services, names, batch size, models).
        watch_pids: {name: pid} of other processes (Kafka, Redis, S3) whose CPU time to report.
        stage_profile: run each worker with the stage sampler.
    """

    def __init__(self, config: WorkerConfig, device: str | None, watch_pids: dict[str, int], stage_profile: bool,
                 scratch: Path):
        self.config, self.device, self.watch_pids, self.stage_profile = config, device, watch_pids, stage_profile
        self.scratch = scratch
        self.s3 = s3.client_from_config(config)
        self.redis = RedisReader(config.redis_url, config.redis_prefix, POLL_S, redis_client.tls_settings(config))
        self.publisher = Publisher(",".join(config.kafka_bootstrap), config.topic, client_id="invad-bench", linger_ms=5,
                                   security=kafka_security.client_kwargs(config))
        self.uris: list[str] = []
        self.lines: list[str] = []  # one line id per partition, found by the first warm-up

    def upload(self, encoded: Sequence[bytes]) -> None:
        """Create the bucket and put image ``i`` at ``in/{i}.png``."""
        self.s3.create_bucket(Bucket=self.config.s3_bucket)
        for i, data in enumerate(encoded):
            key = f"in/{i:06d}.png"
            self.s3.put_object(Bucket=self.config.s3_bucket, Key=key, Body=data, ContentType="image/png")
            self.uris.append(f"s3://{self.config.s3_bucket}/{key}")

    def _env(self, name: str, single_core: bool) -> dict[str, str]:
        return worker_env(self.config, name, self.device, single_core)

    def _publish(self, tag: str, count: int, lines: Sequence[str],
                 rate: float | None = None) -> tuple[list[str], dict[str, float]]:
        """Publish ``count`` refs cycling over ``lines``, in one burst or paced at ``rate`` per second;
        returns (image ids, {id: captured_at epoch s}). Each captured_at is taken just before its send,
        so latency starts at publish time."""
        captured: dict[str, float] = {}
        bucket = TokenBucket(rate) if rate else None

        def refs():
            for i in range(count):
                if bucket:
                    bucket.acquire()
                ref = ImageRef(image_id=f"{tag}-{i:06d}", uri=self.uris[i % len(self.uris)], line_id=lines[i % len(lines)],
                               captured_at=datetime.now(timezone.utc), producer="invad-bench")
                captured[ref.image_id] = ref.captured_at.timestamp()
                yield ref
        partitions: dict[str, set[int]] = {}
        for report in self.publisher.publish(refs()):
            if not report.ok:
                raise RuntimeError(f"publishing {report.image_id} failed: {report.error}")
            partitions.setdefault(report.line_id, set()).add(report.partition)
        if not self.lines:
            by_partition = {min(p): line for line, p in sorted(partitions.items(), reverse=True)}
            self.lines = [by_partition[p] for p in sorted(by_partition)]
            if len(self.lines) < PARTITIONS:
                raise RuntimeError(f"lines {list(partitions)} all hash to partition(s) {sorted(by_partition)}")
        return list(captured), captured

    def _wait_visible(self, ids: Sequence[str], procs: Sequence[WorkerProcess], timeout_s: float) -> tuple[dict, dict]:
        def check() -> None:
            for worker in procs:
                worker.check()
        try:
            return self.redis.wait_visible(ids, timeout_s, check)
        except TimeoutError as error:
            raise RuntimeError(f"{error}; worker logs:\n" + "\n".join(w.logs() for w in procs)) from None

    def _start_workers(self, name: str, tag: str, worker_args: Sequence[Sequence[str]],
                       single_core: bool) -> tuple[list[WorkerProcess], int]:
        """Start one worker per entry of ``worker_args`` and wait for them to hold every partition
        (once more from scratch if not within 90 s); returns (workers, restarts)."""
        for attempt in range(2):
            procs = [WorkerProcess(self._env(f"bench-{tag}-{k}", single_core), args,
                                   self.scratch / f"{tag}-{k}.marks" if self.stage_profile else None)
                     for k, args in enumerate(worker_args)]
            if joined(procs, PARTITIONS, timeout_s=90):
                return procs, attempt
            # Seen once in CI on a freshly started broker: a worker that never got its partitions.
            # Start the set again (counted in the row) rather than time a half-joined group.
            logs = "\n".join(w.logs() for w in procs)
            for worker in procs:
                worker.stop()
        raise RuntimeError(f"{name}: partitions not assigned within 90 s, twice; worker logs:\n{logs}")

    def _cpu_now(self, procs: Sequence[WorkerProcess]) -> dict[str, float | None]:
        """Mark every worker's stage sampler and read cumulative CPU seconds of every watched process."""
        for worker in procs:
            worker.mark()
        workers = [process_cpu_s(w.proc.pid) for w in procs]
        return {"workers": None if None in workers else sum(workers), "bench": time.process_time(),
                **{name: process_cpu_s(pid) for name, pid in self.watch_pids.items()}}

    def scenario(self, name: str, tag: str, count: int, worker_args: Sequence[Sequence[str]], single_core: bool,
                 rate: float | None = None) -> dict[str, Any]:
        """Start one warm worker per entry of ``worker_args`` (one thread each when ``single_core``),
        then time ``count`` images from first publish to last Redis write, published in one burst or,
        with ``rate``, paced below capacity (steady-state latency)."""
        procs, restarts = self._start_workers(name, tag, worker_args, single_core)
        try:
            warm, _ = self._publish(f"{tag}w", 2 * self.config.batch_size * len(procs), self.lines or _CANDIDATE_LINES)
            self._wait_visible(warm, procs, 120 + 5 * len(warm))
            # Watch Redis while publishing: a record's visible time must not wait for the last send.
            ids = [f"{tag}-{i:06d}" for i in range(count)]
            watched: dict[str, Any] = {}

            def watch() -> None:
                try:
                    watched["seen"], watched["records"] = self._wait_visible(ids, procs, 120 + 5 * count)
                except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
                    watched["error"] = error

            watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
            cpu_before = self._cpu_now(procs)
            watcher.start()
            published, captured = self._publish(tag, count, self.lines, rate)
            watcher.join()
            cpu_after = self._cpu_now(procs)
            if "error" in watched:
                raise watched["error"]
            if published != ids:  # the watcher polled for ids derived from the tag and the index
                raise RuntimeError("published image ids differ from the watched ones")
            seen, records = watched["seen"], watched["records"]
            marks = [worker.read_marks(2) for worker in procs]
        finally:
            for worker in procs:
                worker.stop()
        started, ended = min(captured.values()), max(seen.values())
        scored_ms = [(datetime.fromisoformat(r["scored_at"].replace("Z", "+00:00")).timestamp() - captured[i]) * 1e3
                     for i, r in records.items()]
        return {"name": name, "workers": len(procs), "single_core": single_core, "worker_args": [list(a) for a in worker_args],
                "paced_rate": rate, "worker_restarts_before_join": restarts,
                "images": count, "scored": len(records), "flagged": sum(bool(r["is_anomaly"]) for r in records.values()),
                "seconds": round(ended - started, 3), "images_per_second": round(count / (ended - started), 2),
                "latency_ms": percentiles([(seen[i] - captured[i]) * 1e3 for i in ids]),
                "latency_kind": ("capture -> readable in Redis, " +
                                 (f"paced at {rate} images/s" if rate else "burst of all images")),
                "scored_latency_ms": percentiles(scored_ms),
                "worker_ids": sorted({r["worker_id"] for r in records.values()}),
                **cpu_fields(count, ended - started, cpu_before, cpu_after, marks)}

    def cleanup(self) -> list[str]:
        """Delete the bucket, every Redis key under the prefix and the topic; returns what could not be removed."""
        problems = []
        self.publisher.close()
        try:
            self.redis.delete_prefix()
        except Exception as error:  # noqa: BLE001 - report, never mask the bench's own error
            problems.append(f"redis keys {self.config.redis_prefix}:*: {error!r}")
        try:
            bucket = self.config.s3_bucket
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
            self.s3.delete_bucket(Bucket=bucket)
        except Exception as error:  # noqa: BLE001
            problems.append(f"bucket {self.config.s3_bucket}: {error!r}")
        for topic in (self.config.topic, self.config.dlq_topic):
            try:
                delete_topic(",".join(self.config.kafka_bootstrap), topic,
                             security=kafka_security.client_kwargs(self.config))
            except Exception as error:  # noqa: BLE001
                problems.append(f"topic {topic}: {error!r}")
        self.redis.close()
        return problems


def check_s3(config: WorkerConfig) -> None:
    """Ask S3 about the bench's own bucket, which does not exist yet: "not found" means the endpoint
    answers and accepts the credentials; anything else is a ValueError naming the flags to fix.
    """
    try:
        s3.client_from_config(config).head_bucket(Bucket=config.s3_bucket)
    except Exception as error:  # noqa: BLE001 - botocore raises many types; each becomes one line
        if s3client.is_missing(error):
            return
        reason = s3client.error_code(error) or f"{type(error).__name__}: {error}"
        raise ValueError(f"S3 at {config.s3_endpoint or 'AWS'} refused the bench ({reason}): check --s3-endpoint, "
                         "--s3-access-key and --s3-secret-key (or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from error
    raise ValueError(f"bucket {config.s3_bucket} already exists: the bench needs a fresh one; run it again")


def service_config(args: Any, token: str, models: str, batch_size: int) -> WorkerConfig:
    """The workers' WorkerConfig (validated like a worker's) from the bench's flags alone.

    Raises:
        ValueError: a missing or malformed service flag (names the flag and its variable).
    """
    for flag, value, var in (("--bootstrap", args.bootstrap, "INVAD_KAFKA_BOOTSTRAP"),
                             ("--redis-url", args.redis_url, "INVAD_REDIS_URL")):
        if not value:
            raise ValueError(f"{flag} is required for the pipeline bench (or set {var})")
    name = f"invad-bench-{token}"
    return WorkerConfig.from_sources({
        "kafka_bootstrap": args.bootstrap, "redis_url": args.redis_url, "s3_endpoint": args.s3_endpoint or None,
        "aws_access_key_id": args.s3_access_key or None, "aws_secret_access_key": args.s3_secret_key or None,
        "s3_region": args.s3_region or None, "topic": name, "group": name, "redis_prefix": name, "s3_bucket": name,
        "models": models, "batch_size": str(batch_size)}, {}, mode="kafka")


def run(args: Any) -> int:
    """Entry point of ``invad bench pipeline``: prints the tables, writes ``args.out``; returns 0.

    Raises:
        ValueError: a missing or malformed setting (names the flag and the variable to set).
        RuntimeError: a worker died or records did not reach Redis in time.
    """
    null = args.detector == "null"
    if args.flagged_fraction is not None and not null:
        raise ValueError("--flagged-fraction applies to --detector null (the InvAD bundle's threshold decides)")
    watch_pids = parse_pids(args.watch_pids)
    batch_size, token = max(args.batch_sizes), uuid.uuid4().hex[:8]
    scratch = Path(tempfile.mkdtemp(prefix="invad-bench-"))
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        check_s3(service_config(args, token, NULL_MODELS, batch_size))  # fail on a bad setting before the slow part
        models, encoded, rows, meta = prepare_inputs(args, scratch, batch_size)
        config = service_config(args, token, models, batch_size)
        security = kafka_security.client_kwargs(config)
        ensure_topic(",".join(config.kafka_bootstrap), config.topic, PARTITIONS, security=security)
        # workers refuse to start without it
        ensure_topic(",".join(config.kafka_bootstrap), config.dlq_topic, 1, security=security)
        bench = PipelineBench(config, args.device, watch_pids, args.stage_profile == "on", scratch)
        try:
            bench.upload(encoded)
            rows, goals = ceiling_rows(bench, args) if null else detector_rows(bench, args, rows)
        finally:
            left_behind = bench.cleanup()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta.update(detector=args.detector, device=args.device or "auto", batch_size=batch_size, images=args.images,
                poll_interval_ms=POLL_S * 1e3, topic=config.topic, watched_pids=watch_pids,
                stage_profile=args.stage_profile, left_behind=left_behind,
                load_average_1m={"before": load_before and round(load_before[0], 2),  # other work on the machine
                                 "after": round(os.getloadavg()[0], 2) if load_before else None},
                warmup="wait for partition assignment, then 2*batch_size refs per worker scored before timing")
    out = write_report(args.out, meta, goals, rows)
    print(format_table(rows), end="")
    print(format_cpu_table(rows), end="")
    print(" ".join(f"{k}={v}" for k, v in goals.items()))
    print(f"wrote {out}")
    return 0
