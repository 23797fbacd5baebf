#!/usr/bin/env python3
"""Round-trip check of the test services: Kafka, Redis, S3.

Reads INVAD_TEST_KAFKA, INVAD_TEST_REDIS_URL, INVAD_TEST_S3_ENDPOINT, INVAD_TEST_S3_ACCESS_KEY,
INVAD_TEST_S3_SECRET_KEY, INVAD_TEST_S3_REGION from the environment; any that is missing is taken
from the env file written by `scripts/services.sh start`
(${INVAD_RUN_DIR:-${INVAD_CACHE:-~/.cache/invad}/run}/services.env).

Prints one "OK <service>: ..." line per service, or "FAIL <service>: ..." and exits 1.
Usage: check_services.py [kafka] [redis] [s3]      (default: all three)
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import uuid
from pathlib import Path

KEYS = (
    "INVAD_TEST_KAFKA",
    "INVAD_TEST_REDIS_URL",
    "INVAD_TEST_S3_ENDPOINT",
    "INVAD_TEST_S3_ACCESS_KEY",
    "INVAD_TEST_S3_SECRET_KEY",
    "INVAD_TEST_S3_REGION",
)


def load_env() -> dict[str, str]:
    cache = Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad"))
    env_file = Path(os.environ.get("INVAD_RUN_DIR", cache / "run")) / "services.env"
    values: dict[str, str] = {}
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if line.startswith("export ") and "=" in line:
                key, _, val = line[len("export "):].partition("=")
                values[key.strip()] = val.strip().strip("'\"")
    for key in KEYS:
        if os.environ.get(key):
            values[key] = os.environ[key]
    return values


def check_kafka(env: dict[str, str]) -> str:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    bootstrap = env["INVAD_TEST_KAFKA"]
    run = uuid.uuid4().hex[:10]
    topic = f"invad-check-{run}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"check-{run}", request_timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(name=topic, num_partitions=3, replication_factor=1)], timeout_ms=30000)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        try:
            value = f"hello-{run}".encode()
            meta = producer.send(topic, key=b"k1", value=value).get(timeout=30)
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=10)
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"invad-check-{run}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
        )
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 45
            got = None
            while got is None and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=1000).values():
                    for rec in records:
                        if rec.value == value:
                            got = rec
            if got is None:
                raise RuntimeError(f"message not consumed from {topic} within 45 s")
            partitions = consumer.partitions_for_topic(topic) or set()
            if len(partitions) != 3:
                raise RuntimeError(f"topic {topic} has {len(partitions)} partitions, expected 3")
            consumer.commit()
        finally:
            consumer.close()
        admin.delete_topics([topic], timeout_ms=30000)
    finally:
        admin.close()
    return (
        f"{bootstrap} topic with 3 partitions created, produced to partition {meta.partition}"
        f" offset {meta.offset}, consumed in group and committed, topic deleted"
    )


def check_redis(env: dict[str, str]) -> str:
    import redis

    url = env["INVAD_TEST_REDIS_URL"]
    client = redis.Redis.from_url(url, socket_timeout=10)
    key = f"invad-check:{uuid.uuid4().hex}"
    client.set(key, b"v1", ex=60)
    got = client.get(key)
    client.delete(key)
    client.close()
    if got != b"v1":
        raise RuntimeError(f"GET {key} returned {got!r}, expected b'v1'")
    return f"{url} set/get/delete"


def check_s3(env: dict[str, str]) -> str:
    import boto3
    from botocore.config import Config

    endpoint = env["INVAD_TEST_S3_ENDPOINT"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["INVAD_TEST_S3_ACCESS_KEY"],
        aws_secret_access_key=env["INVAD_TEST_S3_SECRET_KEY"],
        region_name=env.get("INVAD_TEST_S3_REGION") or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )
    bucket = f"invad-check-{uuid.uuid4().hex[:12]}"
    body = os.urandom(100_000)
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=body, ContentType="application/octet-stream")
        got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")["Body"].read()
        if got != body:
            raise RuntimeError(f"object read back differs ({len(got)} bytes vs {len(body)})")
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        if listed != ["dir/obj.bin"]:
            raise RuntimeError(f"list_objects_v2 returned {listed}")
        s3.delete_object(Bucket=bucket, Key="dir/obj.bin")
    finally:
        s3.delete_bucket(Bucket=bucket)
    return f"{endpoint} bucket created, 100 kB object put/get/list/delete, bucket deleted"


CHECKS = {"kafka": check_kafka, "redis": check_redis, "s3": check_s3}
NEEDS = {"kafka": ["INVAD_TEST_KAFKA"], "redis": ["INVAD_TEST_REDIS_URL"], "s3": list(KEYS[2:5])}


def main(argv: list[str]) -> int:
    wanted = argv or list(CHECKS)
    unknown = [w for w in wanted if w not in CHECKS]
    if unknown:
        print(f"unknown service(s) {unknown}; choose from {list(CHECKS)}", file=sys.stderr)
        return 2
    env = load_env()
    failed = 0
    for name in wanted:
        missing = [k for k in NEEDS[name] if not env.get(k)]
        if missing:
            print(f"FAIL {name}: {', '.join(missing)} not set (run scripts/services.sh start)")
            failed += 1
            continue
        t0 = time.monotonic()
        try:
            detail = CHECKS[name](env)
        except Exception as exc:  # report every service, not just the first failure
            traceback.print_exc()
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            failed += 1
        else:
            print(f"OK {name}: {detail} ({time.monotonic() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
