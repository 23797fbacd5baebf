"""The consume loop of ``invad alerts``: read, decode, deliver, then acknowledge.

Order of reading:
1. this consumer's own pending entries (id 0): those a previous run of the same ``--consumer`` name
   read and never acknowledged, i.e. was handling when it stopped or died;
2. entries pending longer than ``claim_idle_ms`` in any consumer of the group (XAUTOCLAIM): a dead
   consumer's under another name, or our own whose acknowledgement was lost; again at once while it
   finds some, else every ``claim_idle_ms / 2``. A live consumer keeps what it read and works on
   claimed (XCLAIM resets the idle time) while a slow webhook holds it up, so none is taken over;
3. new entries (">"), waiting up to ``block_ms``.

Delivery is at-least-once. An entry is acknowledged only after its delivery returned, so a consumer
killed between the two delivers that one entry again after its restart (or another consumer does, after
the idle time): duplicates are bounded by the entries in flight at a crash, one per consumer, and
receivers deduplicate on the alert's ``image_id`` (the webhook's Idempotency-Key). Nothing is lost
while the stream keeps the entry (its MAXLEN trims the oldest, see REDIS_LAYOUT.md).

Every entry ends acknowledged in one of three ways: delivered; recorded in the group's dead stream
(``{stream}:dead:{group}``) with a reason ("malformed": it fails the schema, "rejected",
"retries_exhausted": see delivery.py); or, when the stream trimmed it while it was pending, only
logged. No entry content can stop the consumer. A Redis outage is waited out with backoff; a stop
(SIGTERM) lets the alert in hand finish, or leaves it pending if it is waiting to retry.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from schemas import SchemaError, decode_alert
from worker.pipeline.backoff import backoff_delay
from worker.pipeline.errors import DependencyDown

from .delivery import Interrupted, Undeliverable
from .stream import AlertStream, Entry

log = structlog.get_logger("invad.alerts")


@dataclass(frozen=True)
class ConsumerSettings:
    count: int = 100  # entries per read
    block_ms: int = 5000  # longest wait for new entries
    claim_idle_ms: int = 60_000  # a pending entry idle this long belongs to a dead consumer
    backoff_max_s: float = 30.0  # longest wait while Redis is down
    once: bool = False  # stop when nothing is left to read
    max_alerts: int | None = None  # stop after handling this many entries


@dataclass
class ConsumerStats:
    delivered: int = 0
    dead: Counter = field(default_factory=Counter)  # reason -> entries recorded in the dead stream
    trimmed: int = 0
    by_kind: Counter = field(default_factory=Counter)

    @property
    def handled(self) -> int:
        return self.delivered + sum(self.dead.values()) + self.trimmed


class AlertConsumer:
    """Runs the loop of the module docstring until ``stop``, ``once`` or ``max_alerts``."""

    def __init__(self, stream: AlertStream, delivery: Any, settings: ConsumerSettings, stop: threading.Event):
        self.stream, self.delivery, self.settings, self.stop = stream, delivery, settings, stop
        self.stats = ConsumerStats()
        self._unacked: list[str] = []  # delivered, but the acknowledgement failed: ack before anything else
        self._next_claim = 0.0
        self._own_cursor: str | None = "0"  # None once our own pending list was read through

    def run(self) -> ConsumerStats:
        """Consume until stopped. Raises Misconfigured when Redis refuses us mid-run; waits out outages."""
        attempt = 0
        while not self._done():
            try:
                more = self._step()
                attempt = 0
            except DependencyDown as error:
                self._own_cursor = "0"  # entries read but not handled are in our pending list: read it first
                attempt += 1
                delay = backoff_delay(attempt, self.settings.backoff_max_s)
                log.warning("redis_down", error=error.message, attempt=attempt, retry_in_s=round(delay, 2))
                self.stop.wait(delay)
                continue
            if not more and self.settings.once:
                break
        return self.stats

    def _done(self) -> bool:
        limit = self.settings.max_alerts
        return self.stop.is_set() or (limit is not None and self.stats.handled >= limit)

    def _step(self) -> bool:
        """One read and its handling; False when there was nothing to read."""
        while self._unacked:
            self.stream.ack(self._unacked[0])
            self._unacked.pop(0)
        count = self._read_size()
        if self._own_cursor is not None:
            entries = self.stream.read_own_pending(self._own_cursor, count)
            if entries:
                self._own_cursor = entries[-1][0]
                log.info("resuming_pending", entries=len(entries), first=entries[0][0])
                self._handle_all(entries)
                return True
            self._own_cursor = None
        if time.monotonic() >= self._next_claim:
            claimed = self.stream.claim_idle(self.settings.claim_idle_ms, count)
            if claimed:  # there may be more: claim again at the next step
                log.info("claimed_idle_entries", entries=len(claimed), first=claimed[0][0])
                self._handle_all(claimed)
                return True
            self._next_claim = time.monotonic() + self.settings.claim_idle_ms / 2000.0
        entries = self.stream.read_new(count, None if self.settings.once else self.settings.block_ms)
        self._handle_all(entries)
        return bool(entries)

    def _read_size(self) -> int:
        if self.settings.max_alerts is None:
            return self.settings.count
        return max(1, min(self.settings.count, self.settings.max_alerts - self.stats.handled))

    def _handle_all(self, entries: list[Entry]) -> None:
        # Entries read but not reached (a stop) stay pending in this consumer: the next run reads them first.
        # While a slow webhook works through a read, the rest are kept claimed, so that no other consumer
        # takes them over as a dead one's and delivers them too.
        refresh_s = self.settings.claim_idle_ms / 4000.0
        kept_at = time.monotonic()
        for index, (entry_id, fields) in enumerate(entries):
            if self._done():
                return
            if time.monotonic() - kept_at > refresh_s:
                self.stream.keep_claimed(*[rest for rest, _ in entries[index:]])
                kept_at = time.monotonic()
            self._handle(entry_id, fields)

    def _handle(self, entry_id: str, fields: dict) -> None:
        if not fields:
            log.warning("alert_trimmed", entry_id=entry_id, reason="the stream trimmed it while it was pending")
            self.stream.ack(entry_id)
            self.stats.trimmed += 1
            return
        try:
            alert = decode_alert(fields)
        except SchemaError as error:
            log.error("alert_malformed", entry_id=entry_id, reason=error.reason, error=error.message)
            self._dead(entry_id, fields, "malformed", f"{error.reason}: {error.message}")
            return
        try:
            self.delivery.deliver(entry_id, alert, lambda: self.stream.keep_claimed(entry_id))
        except Interrupted:
            log.info("alert_left_pending", entry_id=entry_id, reason="stopped while waiting to retry")
            return
        except Undeliverable as error:
            log.error("alert_undeliverable", entry_id=entry_id, image_id=alert.to_dict()["image_id"],
                      reason=error.reason, error=error.message)
            self._dead(entry_id, fields, error.reason, error.message)
            return
        self.stats.delivered += 1
        self.stats.by_kind[alert.kind] += 1
        log.info("alert_delivered", entry_id=entry_id, kind=alert.kind, image_id=alert.to_dict()["image_id"],
                 line_id=alert.line_id, product=alert.product)
        try:
            self.stream.ack(entry_id)
        except DependencyDown:
            self._unacked.append(entry_id)  # acknowledged first thing once Redis answers again
            raise

    def _dead(self, entry_id: str, fields: dict, reason: str, message: str) -> None:
        self.stream.ack_dead(entry_id, fields, reason, message)
        self.stats.dead[reason] += 1
