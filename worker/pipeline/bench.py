"""``invad bench pipeline``: the detector alone vs the whole pipeline through real Kafka, Redis and S3.

One run measures, on the same images at the same batch size B (the largest of ``--batch-sizes``):

1. the detector alone, in this process: decode PNG bytes + ``predict`` per batch of B; images/s is the
   median over ``--repeats`` passes over all images (after one warm-up batch);
2. one ``invad work`` subprocess: N images uploaded to a fresh bucket, N ImageRefs published in one burst
   to a fresh 2-partition topic (keyed by two line ids that land on different partitions);
3. with scaling on: one worker pinned to one core, then two workers pinned to one core each.

Workers are warm before timing: the bench waits until every partition is assigned (the model loads
before the consumer joins), then publishes 2*B warm-up refs per worker and waits for all of them in
Redis. Timing starts at the first timed publish. An image's "visible" time is when the bench first
reads its ScoreRecord from Redis (polled every ``POLL_S``), so latencies are capture -> readable in
Redis, queueing behind the burst included, and carry up to ``POLL_S`` of polling error.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

POLL_S = 0.05  # coarse enough that polling costs the busy cores little; latencies are seconds
REPO = Path(__file__).resolve().parents[2]
_CANDIDATE_LINES = tuple(f"bench-line-{c}" for c in "abcdefgh")  # two of them will hash to different partitions


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v), None)


def _percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values_ms, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def detector_alone(detector: Any, encoded: Sequence[bytes], batch_size: int,
                   repeats: int) -> tuple[dict[str, Any], np.ndarray]:
    """Decode + predict over ``encoded`` in batches. Returns (row, scores of the last pass): images/s is
    the median of ``repeats`` full passes; latencies are per-batch wall times (ms) over every pass."""
    from worker.core.images import decode_image
    detector.predict([decode_image(data) for data in encoded[:batch_size]])  # warm-up: lazy init, kernels
    rates, batch_ms = [], []
    for _ in range(repeats):
        started, scores = time.perf_counter(), []
        for start in range(0, len(encoded), batch_size):
            clock = time.perf_counter()
            scores.append(detector.predict([decode_image(data) for data in encoded[start:start + batch_size]]).pred_score)
            batch_ms.append((time.perf_counter() - clock) * 1e3)
        rates.append(len(encoded) / (time.perf_counter() - started))
    return {"name": "detector alone", "workers": 0, "images": len(encoded), "scored": len(encoded),
            "images_per_second": round(statistics.median(rates), 2), "runs_images_per_second": [round(r, 2) for r in rates],
            "latency_ms": _percentiles(batch_ms), "latency_kind": "per batch (decode + predict)"}, np.concatenate(scores)


class _Worker:
    """One ``invad work`` subprocess; a thread drains its JSON log lines and tracks its partitions."""

    def __init__(self, env: dict[str, str], cpu: int | None):
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "worker.cli", "work"], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.partitions: set[int] = set()
        self.tail: deque[str] = deque(maxlen=30)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.tail.append(line.rstrip())
            try:
                event = json.loads(line)
            except ValueError:
                continue  # kafka-python's own log lines are not JSON
            if not isinstance(event, dict):
                continue
            parts = {int(p.rsplit(":", 1)[1]) for p in event.get("partitions", ())}
            if event.get("event") == "partitions_assigned":
                self.partitions |= parts
            elif event.get("event") in ("partitions_revoked", "partitions_lost"):
                self.partitions -= parts

    def check(self) -> None:
        """Raise RuntimeError (with its last log lines) when the worker has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n" + "\n".join(self.tail))

    def stop(self) -> None:
        """SIGTERM (drain and leave the group), then SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


class PipelineBench:
    """Owns the bench's private topic, consumer group, bucket and Redis prefix on shared services."""

    def __init__(self, config: Any, s3_client: Any, redis_sink: Any, bundle: str, device: str | None):
        from producers.publisher import Publisher
        self.config, self.s3, self.redis, self.bundle, self.device = config, s3_client, redis_sink, bundle, device
        self.publisher = Publisher(",".join(config.kafka_bootstrap), config.topic, client_id="invad-bench", linger_ms=5)
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
        c = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVAD_", "AWS_"))}
        env.update(INVAD_KAFKA_BOOTSTRAP=",".join(c.kafka_bootstrap), INVAD_TOPIC=c.topic, INVAD_GROUP=c.group,
                   INVAD_REDIS_URL=c.redis_url, INVAD_REDIS_PREFIX=c.redis_prefix, INVAD_S3_BUCKET=c.s3_bucket,
                   INVAD_S3_PREFIX="results", INVAD_S3_ALLOW_BUCKETS=c.s3_bucket, INVAD_MODELS=self.bundle,
                   INVAD_BATCH_SIZE=str(c.batch_size), INVAD_WORKER_ID=name, INVAD_LOG_LEVEL="info",
                   # short session: a stopped worker's partitions move at once to the next run's workers
                   INVAD_SESSION_TIMEOUT_MS="10000", INVAD_HEARTBEAT_INTERVAL_MS="1000",
                   AWS_ACCESS_KEY_ID=c.aws_access_key_id or "", AWS_SECRET_ACCESS_KEY=c.aws_secret_access_key or "",
                   AWS_REGION=c.s3_region or "us-east-1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        if c.s3_endpoint:
            env["INVAD_S3_ENDPOINT"] = c.s3_endpoint
        if self.device:
            env["INVAD_DEVICE"] = self.device
        if single_core:  # the worker has no thread setting; torch and MKL read these at start-up
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return env

    def _publish(self, tag: str, count: int, lines: Sequence[str],
                 rate: float | None = None) -> tuple[list[str], dict[str, float]]:
        """Publish ``count`` refs cycling over ``lines``, in one burst or paced at ``rate`` per second;
        returns (image ids, {id: captured_at epoch s}). Each captured_at is taken just before its send,
        so latency starts at publish time."""
        from producers.rate import TokenBucket
        from schemas import ImageRef
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
            if len(self.lines) < 2:
                raise RuntimeError(f"lines {list(partitions)} all hash to partition(s) {sorted(by_partition)}")
        return list(captured), captured

    def _wait_visible(self, ids: Sequence[str], workers: Sequence[_Worker], timeout_s: float) -> tuple[dict, dict]:
        """Poll Redis until every id's ScoreRecord is readable; returns ({id: epoch s seen}, {id: record dict}).

        Raises:
            RuntimeError: a worker died, or ``timeout_s`` passed with records still missing.
        """
        client, layout = self.redis.client, self.redis.layout
        keys = {image_id: layout.score_key(image_id) for image_id in ids}
        pending, seen, records = list(ids), {}, {}
        deadline = time.monotonic() + timeout_s
        while pending:
            values = client.mget([keys[i] for i in pending])
            now = time.time()
            for image_id, value in zip(pending, values):
                if value is not None:
                    seen[image_id], records[image_id] = now, json.loads(value)
            pending = [i for i in pending if i not in seen]
            if pending:
                for worker in workers:
                    worker.check()
                if time.monotonic() > deadline:
                    logs = "\n".join(line for worker in workers for line in list(worker.tail)[-8:])
                    raise RuntimeError(f"{len(pending)} of {len(ids)} records not in Redis after {timeout_s:.0f} s; "
                                       f"worker logs:\n{logs}")
                time.sleep(POLL_S)
        return seen, records

    @staticmethod
    def _joined(procs: Sequence[_Worker], timeout_s: float) -> bool:
        """True once the workers hold the topic's 2 partitions between them, each at least one."""
        deadline = time.monotonic() + timeout_s
        while not (all(w.partitions for w in procs) and sum(len(w.partitions) for w in procs) == 2):
            for worker in procs:
                worker.check()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def scenario(self, name: str, tag: str, count: int, cpus: Sequence[int | None], single_core: bool,
                 rate: float | None = None) -> dict[str, Any]:
        """Start one warm worker per entry of ``cpus`` (pinned to that CPU unless None; one thread each
        when ``single_core``), then time ``count`` images from first publish to last Redis write,
        published in one burst or, with ``rate``, paced below capacity (steady-state latency)."""
        procs: list[_Worker] = []
        workers = len(cpus)
        restarts = 0
        try:
            for attempt in range(2):
                procs = [_Worker(self._env(f"bench-{tag}-{k}", single_core), cpu) for k, cpu in enumerate(cpus)]
                if self._joined(procs, timeout_s=90):
                    break
                # Seen once in CI on a freshly started broker: a worker that never got its partitions.
                # Start the set again (counted in the row) rather than time a half-joined group.
                logs = "\n".join(line for worker in procs for line in list(worker.tail)[-8:])
                for worker in procs:
                    worker.stop()
                if attempt == 1:
                    raise RuntimeError(f"{name}: partitions not assigned within 90 s, twice; worker logs:\n{logs}")
                restarts += 1
            warm, _ = self._publish(f"{tag}w", 2 * self.config.batch_size * workers, self.lines or _CANDIDATE_LINES)
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
            watcher.start()
            published, captured = self._publish(tag, count, self.lines, rate)
            watcher.join()
            if "error" in watched:
                raise watched["error"]
            if published != ids:  # the watcher polled for ids derived from the tag and the index
                raise RuntimeError("published image ids differ from the watched ones")
            seen, records = watched["seen"], watched["records"]
        finally:
            for worker in procs:
                worker.stop()
        started, ended = min(captured.values()), max(seen.values())
        scored_ms = [(datetime.fromisoformat(r["scored_at"].replace("Z", "+00:00")).timestamp() - captured[i]) * 1e3
                     for i, r in records.items()]
        return {"name": name, "workers": workers, "single_core": single_core, "cpus": list(cpus), "paced_rate": rate,
                "worker_restarts_before_join": restarts,
                "images": count, "scored": len(records), "seconds": round(ended - started, 3),
                "images_per_second": round(count / (ended - started), 2),
                "latency_ms": _percentiles([(seen[i] - captured[i]) * 1e3 for i in ids]),
                "latency_kind": ("capture -> readable in Redis, " +
                                 (f"paced at {rate} images/s" if rate else "burst of all images")),
                "scored_latency_ms": _percentiles(scored_ms),
                "worker_ids": sorted({r["worker_id"] for r in records.values()})}

    def cleanup(self) -> list[str]:
        """Delete the bucket and every Redis key under the prefix; returns what could not be removed."""
        problems = []
        self.publisher.close()
        try:
            client, match = self.redis.client, f"{self.config.redis_prefix}:*"
            keys = list(client.scan_iter(match=match, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
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
        try:
            from producers.admin import delete_topic

            delete_topic(",".join(self.config.kafka_bootstrap), self.config.topic)
        except Exception as error:  # noqa: BLE001
            problems.append(f"topic {self.config.topic}: {error!r}")
        self.redis.close()
        return problems


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: images/s, latency percentiles and each row's ratio to its reference row."""
    lines = ["| configuration | images/s | p50 ms | p95 ms | p99 ms | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        ratio = f"{r['ratio']:.2f}x {r['ratio_of']}" if r.get("ratio_of") else "-" if r.get("paced_rate") else "1.00"
        lines.append(f"| {r['name']} | {r['images_per_second']:.2f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
                     f"{lat['p99']:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def _config(args: Any, token: str, bundle: str, batch_size: int) -> Any:
    """The bench's WorkerConfig (validated like a worker's) from flags, then INVAD_TEST_*, then INVAD_*/AWS_*."""
    from .config import WorkerConfig
    env = os.environ
    name = f"invad-bench-{token}"
    needed = {"--bootstrap": ("INVAD_TEST_KAFKA", "INVAD_KAFKA_BOOTSTRAP", args.bootstrap),
              "--redis-url": ("INVAD_TEST_REDIS_URL", "INVAD_REDIS_URL", args.redis_url)}
    for flag, (test_var, var, given) in needed.items():
        if not _first(given, env.get(test_var), env.get(var)):
            raise ValueError(f"{flag} is required for the pipeline bench (or set {test_var} or {var})")
    return WorkerConfig.from_sources({
        "kafka_bootstrap": _first(args.bootstrap, env.get("INVAD_TEST_KAFKA"), env.get("INVAD_KAFKA_BOOTSTRAP")),
        "redis_url": _first(args.redis_url, env.get("INVAD_TEST_REDIS_URL"), env.get("INVAD_REDIS_URL")),
        "s3_endpoint": _first(args.s3_endpoint, env.get("INVAD_TEST_S3_ENDPOINT"), env.get("INVAD_S3_ENDPOINT")),
        "aws_access_key_id": _first(env.get("INVAD_TEST_S3_ACCESS_KEY"), env.get("AWS_ACCESS_KEY_ID")),
        "aws_secret_access_key": _first(env.get("INVAD_TEST_S3_SECRET_KEY"), env.get("AWS_SECRET_ACCESS_KEY")),
        "s3_region": _first(env.get("INVAD_TEST_S3_REGION"), env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION")),
        "topic": name, "group": name, "redis_prefix": name, "s3_bucket": name, "models": bundle,
        "batch_size": str(batch_size)}, {}, mode="kafka")


def _prepare(args: Any, scratch: str, batch_size: int) -> tuple[str, list[bytes], dict[str, Any]]:
    """Load (or build) the bundle, encode the bench images, time the detector alone.

    Returns (bundle path, PNG bytes of the ``args.images`` images, the detector-alone row). Without
    ``--model`` an untrained default detector is saved to ``scratch``; its threshold (inf until
    calibrated, which a ScoreRecord rejects) is set to the 95th percentile of its own scores here, so
    about 5% of images take the flagged path (original and overlay to S3, an alert) as in production.
    """
    from worker.core import bench
    from worker.core.config import DetectorConfig
    from worker.core.detector import Detector, select_device
    from worker.core.train import TrainConfig, build_detector

    device = select_device(args.device)
    if args.model:
        detector = Detector.from_pretrained(args.model, device)
    else:
        detector = build_detector(DetectorConfig(image_size=args.image_size), TrainConfig()).to(device)
    images = bench.bench_images(args.images, detector.config.image_size)
    encoded = [_png(images[i % len(images)]) for i in range(args.images)]
    row, scores = detector_alone(detector, encoded, batch_size, args.repeats)
    bundle = args.model
    if bundle is None:
        bundle = str(Path(scratch) / "untrained")
        detector.thresholds.fill_(float(np.percentile(scores, 95)))
        detector.save_pretrained(bundle)
    return str(Path(bundle).resolve()), encoded, row


def run_pipeline_bench(args: Any) -> int:
    """Entry point of ``invad bench pipeline``: prints the table, writes ``args.out``; returns 0.

    Raises:
        ValueError: a missing or malformed service setting (names the flag and variables to set).
        RuntimeError: a worker died or records did not reach Redis in time.
    """
    from producers.admin import ensure_topic
    from worker.core.bench import environment

    from . import s3
    from .redis_sink import RedisSink

    batch_size, token = max(args.batch_sizes), uuid.uuid4().hex[:8]
    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    pinned = shutil.which("taskset") is not None and len(cpus) == 2
    scaling = args.workers_scaling == "on"
    scratch = tempfile.mkdtemp(prefix="invad-bench-")
    try:
        _config(args, token, scratch, batch_size)  # fail on a bad service setting before the slow part
        bundle, encoded, detector_row = _prepare(args, scratch, batch_size)
        config = _config(args, token, bundle, batch_size)
        ensure_topic(",".join(config.kafka_bootstrap), config.topic, 2)
        run = PipelineBench(config, s3.client_from_config(config), RedisSink.from_config(config), bundle, args.device)
        rows = [detector_row]
        try:
            run.upload(encoded)
            rows.append(run.scenario("pipeline, 1 worker", "p1", args.images, [None], single_core=False))
            if scaling:
                rows.append(run.scenario("1 worker, 1 core", "c1", args.images, cpus[:1] if pinned else [None], True))
                rows.append(run.scenario("2 workers, 1 core each", "c2", args.images, cpus if pinned else [None, None], True))
            # Steady state: half the measured capacity, so latency is service time, not queueing.
            steady = round(0.5 * rows[1]["images_per_second"], 1)
            rows.append(run.scenario(f"1 worker, paced at {steady} images/s", "s1", max(2 * batch_size, args.images // 2),
                                     [None], False, rate=steady))
        finally:
            left_behind = run.cleanup()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows[1].update(ratio=rows[1]["images_per_second"] / rows[0]["images_per_second"], ratio_of="detector alone")
    goals = {"pipeline_vs_detector": round(rows[1]["ratio"], 3), "pipeline_goal_met": rows[1]["ratio"] >= 0.9}
    if scaling:
        rows[3].update(ratio=rows[3]["images_per_second"] / rows[2]["images_per_second"], ratio_of="1 worker, 1 core")
        goals.update(two_vs_one_worker=round(rows[3]["ratio"], 3), scaling_goal_met=rows[3]["ratio"] >= 1.8)
    meta = {"model": args.model or f"untrained default ({args.image_size} px, threshold at its p95 score)",
            "device": args.device or "auto", "batch_size": batch_size, "images": args.images, "repeats": args.repeats,
            "poll_interval_ms": POLL_S * 1e3, "single_core_pinned_with_taskset": pinned, "topic": config.topic,
            "left_behind": left_behind,
            "warmup": "wait for partition assignment, then 2*batch_size refs per worker scored before timing"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "environment": environment(), "goals": goals, "rows": rows}, indent=2) + "\n")
    print(format_table(rows), end="")
    print(" ".join(f"{k}={v}" for k, v in goals.items()))
    print(f"wrote {out}")
    return 0
