"""Helpers for the Kafka-mode tests: unique resources, producing refs, reading committed offsets,
and running a worker in a thread or a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from helpers import IMAGE_SIZE, SEED, unique
from synthetic import make_texture_images

HERE = Path(__file__).parent
REPO = HERE.parents[1]


@dataclass
class KafkaEnv:
    """One test's private topic, DLQ, group, Redis prefix and bucket on the shared services."""
    bootstrap: str
    redis_url: str
    s3: dict[str, str]
    partitions: int = 3
    models: str = ""  # INVAD_MODELS: the bundle a worker subprocess loads (a WorkerThread is given its registry)
    topic: str = field(default_factory=lambda: unique("images"))
    group: str = field(default_factory=lambda: unique("group"))
    prefix: str = field(default_factory=lambda: unique("p"))
    bucket: str = field(default_factory=lambda: unique("bucket").lower())
    dlq_configs: dict[str, str] = field(default_factory=dict)  # topic configs of the DLQ (max.message.bytes, ...)
    # kafka-python security arguments of the test's own clients (a SASL_SSL broker), and the TLS files
    # of its Redis client (redis_client.connect); empty for the plain shared services
    security: dict[str, Any] = field(default_factory=dict)
    redis_tls: dict[str, str | None] = field(default_factory=dict)

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    def setup(self) -> "KafkaEnv":
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security)
        admin.create_topics({self.topic: {"num_partitions": self.partitions, "replication_factor": 1},
                             self.dlq: {"num_partitions": 1, "replication_factor": 1, "configs": self.dlq_configs}},
                            wait_for_metadata=True)
        admin.close()
        self.s3_client().create_bucket(Bucket=self.bucket)
        return self

    def s3_client(self) -> Any:
        from worker.common import s3client
        return s3client.make_client(endpoint=self.s3["endpoint"], region=self.s3["region"], access_key=self.s3["access_key"],
                                    secret_key=self.s3["secret_key"], timeout_s=5)

    def redis(self) -> Any:
        from worker.common import redis_client
        return redis_client.connect(self.redis_url, self.redis_tls)

    def environ(self, **overrides: str) -> dict[str, str]:
        """INVAD_* variables for a worker on this env (short timeouts so rebalances are quick)."""
        env = {"INVAD_KAFKA_BOOTSTRAP": self.bootstrap, "INVAD_TOPIC": self.topic, "INVAD_GROUP": self.group,
               "INVAD_REDIS_URL": self.redis_url, "INVAD_REDIS_PREFIX": self.prefix,
               "INVAD_S3_ENDPOINT": self.s3["endpoint"], "INVAD_S3_BUCKET": self.bucket, "INVAD_S3_PREFIX": "art",
               "AWS_ACCESS_KEY_ID": self.s3["access_key"], "AWS_SECRET_ACCESS_KEY": self.s3["secret_key"],
               "AWS_REGION": self.s3["region"], "INVAD_BATCH_SIZE": "4", "INVAD_DEVICE": "cpu",
               # run_kafka loads INVAD_MODELS only when no registry is passed in (WorkerThread passes one)
               "INVAD_MODELS": self.models or "registry-passed-in-process",
               "INVAD_BATCH_WAIT_MS": "200", "INVAD_SESSION_TIMEOUT_MS": "6000", "INVAD_HEARTBEAT_INTERVAL_MS": "2000",
               "INVAD_MAX_POLL_INTERVAL_MS": "20000", "INVAD_BACKOFF_MAX_S": "1", "INVAD_DRAIN_TIMEOUT_S": "10",
               "INVAD_FETCH_TIMEOUT_S": "2", "INVAD_RECORD_TTL_S": "3600",
               "INVAD_METRICS_PORT": "0"}  # tests that scrape pick a free port themselves
        env.update(overrides)
        return env

    def config(self, **overrides: str) -> Any:
        from worker.pipeline.config import WorkerConfig
        return WorkerConfig.from_sources({}, self.environ(**overrides), mode="kafka")


def upload_images(env: KafkaEnv, images: dict[str, bytes]) -> None:
    client = env.s3_client()
    for name, data in images.items():
        client.put_object(Bucket=env.bucket, Key=f"in/{name}", Body=data)


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ref_json(env: KafkaEnv, image_id: str, key: str, line_id: str) -> bytes:
    from schemas import ImageRef
    return ImageRef(image_id=image_id, uri=f"s3://{env.bucket}/in/{key}", line_id=line_id, producer="test",
                    captured_at=datetime(2025, 1, 1, tzinfo=timezone.utc)).to_json()


def produce(env: KafkaEnv, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) pairs; keyed messages land by key hash, so a line stays on one partition."""
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", **env.security)
    for key, value in messages:
        producer.send(env.topic, key=key, value=value)
    producer.flush()
    producer.close()


def offsets(env: KafkaEnv) -> tuple[dict[int, int | None], dict[int, int]]:
    """(committed offset per partition for the env's group, end offset per partition)."""
    consumer = KafkaConsumer(bootstrap_servers=env.bootstrap, group_id=env.group, enable_auto_commit=False,
                             **env.security)
    tps = [TopicPartition(env.topic, p) for p in range(env.partitions)]
    committed = {tp.partition: consumer.committed(tp) for tp in tps}
    ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    consumer.close(autocommit=False)
    return committed, ends


def read_dlq(env: KafkaEnv, expected: int, timeout_s: float = 20) -> list[Any]:
    from schemas import DeadLetter
    consumer = KafkaConsumer(env.dlq, bootstrap_servers=env.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, **env.security)
    letters: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(letters) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            letters.extend(DeadLetter.from_json(r.value) for r in records)
    consumer.close()
    return letters


def stored_records(env: KafkaEnv) -> dict[str, Any]:
    """image_id -> ScoreRecord of every record under the env's prefix."""
    from schemas import ScoreRecord
    client = env.redis()
    out = {}
    for key in client.scan_iter(match=f"{env.prefix}:score:*", count=500):
        record = ScoreRecord.from_json(client.get(key))
        out[record.image_id] = record
    return out


def assert_each_image_scored_once(env: KafkaEnv, names) -> None:
    """Every image of ``names`` has its record (ids ``img/<name>``), and each flagged one exactly one alert."""
    records = stored_records(env)
    assert sorted(records) == sorted(f"img/{name}" for name in names)
    flagged = sorted(i for i, r in records.items() if r.is_anomaly)
    assert sorted(alert_ids(env)) == flagged, "an alert was lost or raised twice"


def alert_ids(env: KafkaEnv) -> list[str]:
    """The image ids of the anomaly alerts in the stream (drift entries left out)."""
    entries = env.redis().xrange(f"{env.prefix}:alerts")
    return [fields[b"image_id"].decode() for _, fields in entries if fields.get(b"kind", b"anomaly") == b"anomaly"]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class WorkerThread:
    """``run_kafka`` in a thread of the test process (with an in-memory registry)."""

    def __init__(self, config: Any, registry: Any):
        from worker.pipeline.cli import run_kafka
        self.stop_event = threading.Event()
        self.exit_code: int | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.exit_code = run_kafka(config, self.stop_event, registry)
            except BaseException as error:  # surfaced by stop()
                self.error = error
        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 60) -> int | None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        assert not self.thread.is_alive(), "worker did not stop"
        return self.exit_code


def start_worker_process(env: KafkaEnv, log_path: Path, *, cli: bool = False, **overrides: str) -> subprocess.Popen:
    """A worker subprocess (tests/pipeline/worker_proc.py, or with ``cli`` the real ``invad work``, the
    real bundle ``env.models``) logging to ``log_path``. One torch thread each: several workers share
    the test machine's cores."""
    assert env.models, "a worker process needs KafkaEnv(models=<bundle path>)"
    environ = {**os.environ, **env.environ(**overrides), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), str(HERE.parent)])}
    command = ["-m", "worker.cli", "work"] if cli else [str(HERE / "worker_proc.py")]
    return subprocess.Popen([sys.executable, *command], env=environ, cwd=str(REPO),
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def texture_pngs(n_good: int, n_bad: int, seed: int = SEED, size: int = IMAGE_SIZE) -> dict[str, bytes]:
    """PNG bytes of generated textures, ``good_XXX.png`` and ``bad_XXX.png`` (one drawn defect each)."""
    good, _ = make_texture_images(n_good, size=size, seed=seed)
    bad, _ = make_texture_images(n_bad, defect=True, size=size, seed=seed + 1)
    return {**{f"good_{i:03d}.png": png(im) for i, im in enumerate(good)},
            **{f"bad_{i:03d}.png": png(im) for i, im in enumerate(bad)}}


def refs_for(env: KafkaEnv, names, lines: int = 6) -> list[tuple[bytes, bytes]]:
    out = []
    for i, name in enumerate(sorted(names)):
        line = f"L{i % lines}"
        out.append((line.encode(), ref_json(env, f"img/{name}", name, line)))
    return out


def all_committed(env: KafkaEnv) -> bool:
    committed, ends = offsets(env)
    return all((committed[p] or 0) == ends[p] for p in ends)
