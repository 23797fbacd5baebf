"""What the bench watches from outside the workers: their records in Redis, and processes' CPU time.

The workers write Redis through :class:`worker.pipeline.redis_sink.RedisSink`; the bench only reads,
with its own client and the key layout of :mod:`schemas.redis_layout`, and deletes its own prefix
at the end.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

from schemas import RedisLayout
from worker.common import redis_client

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``); None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)


def parse_pids(text: str | None) -> dict[str, int]:
    """``name=pid,name=pid`` -> {name: pid}; ValueError naming the bad entry."""
    pids: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, pid = part.partition("=")
        if not sep or not name.strip() or not pid.strip().isdigit():
            raise ValueError(f"--watch-pids: {part!r} is not name=pid (e.g. kafka=1234,redis=1300)")
        pids[name.strip()] = int(pid)
    return pids


class RedisReader:
    """Reads ScoreRecords the workers wrote under ``prefix``; removes every key under it at the end."""

    def __init__(self, url: str, prefix: str, poll_s: float, tls: dict[str, str | None] | None = None):
        self.client = redis_client.connect(url, tls, socket_timeout=10, socket_connect_timeout=5)
        self.layout, self.poll_s = RedisLayout(prefix=prefix), poll_s

    def wait_visible(self, ids: Sequence[str], timeout_s: float,
                     check: Callable[[], None]) -> tuple[dict[str, float], dict[str, Any]]:
        """Poll every ``poll_s`` until every id's record is readable.

        Returns ({id: epoch seconds first seen}, {id: record dict}); calls ``check`` between polls (it
        raises when a worker died).

        Raises:
            TimeoutError: ``timeout_s`` passed with records still missing (the message says how many).
        """
        keys = {image_id: self.layout.score_key(image_id) for image_id in ids}
        pending, seen, records = list(ids), {}, {}
        deadline = time.monotonic() + timeout_s
        while pending:
            values = self.client.mget([keys[i] for i in pending])
            now = time.time()
            for image_id, value in zip(pending, values):
                if value is not None:
                    seen[image_id], records[image_id] = now, json.loads(value)
            pending = [i for i in pending if i not in seen]
            if pending:
                check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} of {len(ids)} records not in Redis after {timeout_s:.0f} s")
                time.sleep(self.poll_s)
        return seen, records

    def delete_prefix(self) -> None:
        """Delete every key under the prefix (records, line sets, alerts, markers)."""
        keys = list(self.client.scan_iter(match=f"{self.layout.prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start:start + 500])

    def close(self) -> None:
        self.client.close()
