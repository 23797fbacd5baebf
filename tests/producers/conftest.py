"""Fixtures for producer tests: real services from the environment, generated PNG folders, a CLI runner.

Service tests read INVAD_TEST_KAFKA and INVAD_TEST_S3_* (written by `scripts/services.sh start` to
$HOME/.cache/invad/run/services.env) through services.service_setting: a test skips only when a variable
is absent, and fails instead under INVAD_REQUIRE_SERVICES=1 (scripts/test.sh).
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from producers import cli
from services import service_setting


@pytest.fixture
def topic() -> str:
    return f"invad-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_env(monkeypatch) -> str:
    """The S3 endpoint, with the standard AWS variables set from INVAD_TEST_S3_* for the code under test."""
    endpoint = service_setting("INVAD_TEST_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", service_setting("INVAD_TEST_S3_ACCESS_KEY"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", service_setting("INVAD_TEST_S3_SECRET_KEY"))
    monkeypatch.setenv("AWS_REGION", os.environ.get("INVAD_TEST_S3_REGION", "us-east-1"))
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return endpoint


@pytest.fixture
def s3_bucket(s3_env):
    """(S3 client, unique bucket name); the bucket and its objects are removed afterwards."""
    from producers.s3 import S3

    s3 = S3(endpoint_url=s3_env)
    bucket = f"invad-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    yield s3, bucket
    s3.delete_bucket(bucket)


def png_bytes(width: int, height: int, seed: int) -> bytes:
    """A valid grey PNG whose pixels depend on ``seed`` (so files differ)."""
    rows = b"".join(b"\x00" + bytes((seed * 7 + x * 3 + y * 5) % 256 for x in range(width)) for y in range(height))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture
def make_pngs(tmp_path):
    """make_pngs(folder, names) writes small PNGs under tmp_path/folder and returns the folder."""
    def make(folder: str, names: list[str]) -> Path:
        root = tmp_path / folder
        for i, name in enumerate(names):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(8, 6, i))
        return root
    return make


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """run_cli(argv, stdin="") runs `invad produce` as the main CLI would; argparse errors give code 2."""
    monkeypatch.delenv("INVAD_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("INVAD_TOPIC", raising=False)
    monkeypatch.delenv("INVAD_S3_ENDPOINT", raising=False)

    def run(argv: list[str], stdin: str = "") -> CliResult:
        parser = argparse.ArgumentParser(prog="invad produce")
        cli.add_arguments(parser)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            code = cli.run(parser.parse_args(argv))
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def consume_all():
    """consume_all(bootstrap, topic, expected) -> every ConsumerRecord of the topic from the beginning."""
    return _consume_all


def _consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of ``topic`` from the beginning, once ``expected`` have arrived (or the timeout passed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
