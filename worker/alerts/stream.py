"""The consumer group's side of the alert stream: the one module of ``invad alerts`` that talks to Redis.

Every call makes one attempt; a failure is classified like the worker's (DependencyDown for an outage,
Misconfigured for a refusal of our credentials or commands) and the caller decides to wait or exit.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import redis.exceptions as rerrors

from worker.pipeline.errors import DependencyDown, Misconfigured
from worker.pipeline.redis_sink import classify_redis_error, close_client, worker_client

Entry = tuple[str, dict]  # (stream id, field map as redis-py returns it: bytes -> bytes)
T = TypeVar("T")
DEAD_MAXLEN = 10_000


def dead_stream_name(stream: str, group: str) -> str:
    """Where a group records the alerts it could not deliver: ``{stream}:dead:{group}``."""
    return f"{stream}:dead:{group}"


class AlertStream:
    """XREADGROUP / XAUTOCLAIM / XACK on one stream for one consumer of one group."""

    def __init__(self, url: str, stream: str, group: str, consumer: str, dead_stream: str, *,
                 socket_timeout_s: float = 10.0, client: Any = None):
        self.stream, self.group, self.consumer, self.dead_stream = stream, group, consumer, dead_stream
        self._client = client or worker_client(url, socket_timeout_s)
        self._claim_cursor = "0-0"

    def _call(self, command: Callable[[], T]) -> T:
        try:
            return command()
        except rerrors.RedisError as error:
            meaning = classify_redis_error(error)
            if meaning is not None:
                raise meaning from error
            if isinstance(error, rerrors.ResponseError) and str(error).startswith("WRONGTYPE"):
                raise Misconfigured("redis", f"{self.stream} is not a stream ({error})",
                                    "point --stream (or --prefix) at the workers' alert stream") from error
            if isinstance(error, rerrors.ResponseError) and str(error).startswith("NOGROUP"):
                # The stream was deleted (and maybe re-created by a worker): none of its entries reached
                # this group, so the group starts again at the oldest; the caller retries after a backoff.
                self._call(lambda: self._create_group("0"))
                raise DependencyDown("redis", f"group {self.group} of {self.stream} had vanished (stream deleted?); "
                                              "created it again") from error
            raise

    def ensure_group(self, start: str) -> bool:
        """Create the group (and an empty stream) unless it exists; ``start`` "$" (only new alerts) or "0"
        (everything the stream still holds). Returns True when it was created."""
        return self._call(lambda: self._create_group(start))

    def _create_group(self, start: str) -> bool:
        try:
            return bool(self._client.xgroup_create(self.stream, self.group, id=start, mkstream=True))
        except rerrors.ResponseError as error:
            if str(error).startswith("BUSYGROUP"):
                return False
            raise

    def read_own_pending(self, after: str, count: int) -> list[Entry]:
        """Entries delivered to this consumer name and never acknowledged (a previous run's in-flight ones),
        with ids after ``after``."""
        return self._entries(self._call(lambda: self._client.xreadgroup(
            self.group, self.consumer, {self.stream: after}, count=count)))

    def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        """Up to ``count`` never-delivered entries, waiting up to ``block_ms`` (None: do not wait)."""
        return self._entries(self._call(lambda: self._client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)))

    def claim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over up to ``count`` entries pending longer than ``min_idle_ms`` in any consumer of the
        group (a dead one's, or our own whose acknowledgement failed); walks the pending list across calls."""
        reply = self._call(lambda: self._client.xautoclaim(self.stream, self.group, self.consumer, min_idle_ms,
                                                           start_id=self._claim_cursor, count=count))
        cursor = reply[0]
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        return [(_text(entry_id), fields or {}) for entry_id, fields in reply[1] if entry_id is not None]

    def keep_claimed(self, *entry_ids: str) -> None:
        """Reset the idle time of entries this consumer still works on, so that no other consumer claims them."""
        self._call(lambda: self._client.xclaim(self.stream, self.group, self.consumer, 0, list(entry_ids), justid=True))

    def ack(self, entry_id: str) -> None:
        self._call(lambda: self._client.xack(self.stream, self.group, entry_id))

    def ack_dead(self, entry_id: str, fields: dict, reason: str, message: str) -> None:
        """Record an entry that cannot be delivered (its fields, why, when, by whom) in the dead stream and
        acknowledge it, in one transaction."""
        dead = {**fields, "dead_reason": reason, "dead_message": message[:2000], "dead_entry_id": entry_id,
                "dead_consumer": self.consumer, "dead_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}

        def record() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.xadd(self.dead_stream, dead, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            pipe.execute()
        self._call(record)

    def ping(self) -> None:
        self._call(self._client.ping)

    def close(self) -> None:
        close_client(self._client)

    @staticmethod
    def _entries(reply: Any) -> list[Entry]:
        # [[stream, [(id, fields), ...]]]; a pending entry trimmed from the stream has empty fields.
        return [(_text(entry_id), fields or {}) for _stream, entries in (reply or []) for entry_id, fields in entries]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
