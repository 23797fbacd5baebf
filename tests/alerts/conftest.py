"""Fixtures of the ``invad alerts`` tests: a real Redis client and a unique stream and group per test."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def stream_names(redis_client):
    """(stream, group): unique per test; the stream (with its groups) and its dead stream are deleted after it."""
    stream = f"t{uuid.uuid4().hex[:10]}:alerts"
    yield stream, "pager"
    redis_client.delete(stream, f"{stream}:dead:pager")
