"""The one module that imports kafka-python (3.x): the group consumer source and the DLQ producer.

Offsets are committed only by :meth:`KafkaSource.commit`, with explicit "last processed + 1"
values, after the loop has flushed every sink. While a dependency is down the loop pauses every
partition and calls :meth:`KafkaSource.keepalive` (a ``poll(0)``) so the member stays in the group
without consuming anything; any record a poll hands back anyway is sought back, never skipped.

Membership is watched on every poll: a member out of a stable group for longer than any legitimate
rebalance rejoins; a stable member holding no partition asks the broker now and then whether the
group left a partition to no one, and if so turns unready and then rejoins (:meth:`KafkaSource._watch_idle`).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerrors
from kafka.admin import KafkaAdminClient
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import MemberState, OffsetAndMetadata

from worker.common import kafka_security

from .errors import DependencyDown, Misconfigured
from .loop import Message

log = structlog.get_logger("invad.pipeline.kafka")

# A commit failing with these means the group moved on (rebalance, eviction): the partitions belong
# to someone else now, who restarts from the last commit. Not a dependency failure: don't retry.
_OWNERSHIP_LOST = (kerrors.CommitFailedError, kerrors.RebalanceInProgressError, kerrors.IllegalGenerationError,
                   kerrors.UnknownMemberIdError, kerrors.FencedInstanceIdError)
# How often the consumer lag (end offset - position per assigned partition) is asked of the broker.
LAG_REFRESH_S = 5.0
# A record the broker (or our producer's max_request_size) refuses for its size: never retried as is.
_TOO_LARGE = (kerrors.MessageSizeTooLargeError, kerrors.RecordListTooLargeError)
# A poll that fails at once (broker or coordinator unreachable) waits this long before the next try,
# whatever timeout it was given: a keepalive's poll(0) must not turn an outage into a busy loop.
POLL_ERROR_PAUSE_S = 0.5
# kafka-python 3.0 runs a group join (JoinGroup, then SyncGroup) as a task that outlives the poll that
# started it, and the next poll awaits it again; but a task that finished between two polls is thrown
# away and a new JoinGroup sent, which from the group's leader starts a new rebalance. A join slower
# than the poll's timeout (a loaded machine, a poll(0) keepalive, the loop's non-blocking polls with
# batches in flight) then never completes: a lone consumer polling every 5 ms had not joined after
# 20 s (every 20 ms: joined in 0.14 s). So while a join is in flight a poll keeps polling, in slices
# long enough to be waiting when it ends, for at most a quarter of max.poll.interval.ms plus
# JOIN_WAIT_EXTRA_S (the loop's keepalives come every quarter, so a rebalance waits no longer for them).
JOIN_SLICE_MS = 1_000
JOIN_WAIT_EXTRA_S = 10.0
# Per partition and fetch, at most this much is fetched (kafka-python's default is 1 MiB). A poll
# hands out one partition's fetched records before the next one's, so with 1 MiB a backlog of some
# 3,000 small ImageRefs on one partition held back the worker's other partitions for minutes (the
# soak: 159 s after a rebalance). A record larger than this still comes whole (Kafka returns at
# least one record batch per partition), so this bounds fairness, not message size.
PARTITION_FETCH_BYTES = 64 * 1024
# Group states in which the coordinator is moving partitions: their description proves nothing yet.
_REBALANCING = ("PreparingRebalance", "CompletingRebalance")


def is_transient(error: BaseException) -> bool:
    """True for a Kafka failure worth waiting out: the broker or coordinator unreachable, restarting,
    moving leadership, timing out. kafka-python 3.0 marks those ``retriable`` (KafkaConnectionError,
    KafkaTimeoutError - also what an unreachable bootstrap raises -, NodeNotReadyError,
    NotCoordinatorError, CoordinatorNotAvailableError, RequestTimedOutError, ...); socket errors
    that escape the client count too. Configuration and authorization errors are not transient."""
    return bool(getattr(error, "retriable", False)) or isinstance(
        error, (kerrors.KafkaConnectionError, kerrors.KafkaTimeoutError, ConnectionError, TimeoutError))


def _client_settings(config: Any, **settings: Any) -> dict[str, Any]:
    """kafka-python arguments of every client of the worker: the bootstrap servers, the security
    settings (worker/common/kafka_security.py), then ``settings``. Bootstrap gives up after 10 s (not
    kafka-python's 30 s), so a refused password or certificate fails the start within seconds; an
    outage is retried by the caller either way."""
    return dict(bootstrap_servers=list(config.kafka_bootstrap), bootstrap_timeout_ms=10_000,
                **kafka_security.client_kwargs(config), **settings)


def _connect(make: Any, settings: dict[str, Any]) -> Any:
    """Build a kafka-python client from ``settings``.

    Raises:
        Misconfigured: the broker refused our credentials or certificate, or speaks another protocol.
        DependencyDown: no broker reachable.
    """
    try:
        return kafka_security.make_client(make, settings)
    except kafka_security.Refused as refused:
        raise Misconfigured("kafka", refused.problem, refused.fix) from refused
    except kerrors.KafkaError as error:
        if is_transient(error):
            raise DependencyDown("kafka", f"no broker reachable at {settings['bootstrap_servers']}: {error}") from error
        raise


async def commit_in_listener(consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
    """Commit ``offsets`` from inside a rebalance listener. kafka-python 3 runs listeners on its IO
    loop, where the blocking ``commit()`` would raise; ``commit_async()`` returns a kafka Future,
    which is awaitable there (public API, tested against the broker for the pinned 3.0.x)."""
    await consumer.commit_async(offsets)


def group_gap(description: dict, topic: str, partitions: set[int], member_id: str) -> str | None:
    """What a stable member holding no partition must not sit out, read from its group's description
    (one value of kafka-python 3.0's ``KafkaAdminClient.describe_groups``); None when all is well, or
    when nothing can be told (the group is rebalancing, the answer is an error or undecodable).

    Two stalls count: partitions of ``topic`` that no member owns (a leader assigned them to no one,
    as kafka-python's range assignor does when its metadata lacks the topic), and ``member_id`` missing
    from the member list (the coordinator dropped us while we still believe we are stable)."""
    if description.get("error") or description.get("group_state") in _REBALANCING:
        return None
    members = description.get("members") or []
    if member_id not in {member.get("member_id") for member in members}:
        return f"this member is not in the group's member list (group state {description.get('group_state')})"
    owned: set[int] = set()
    for member in members:
        assignment = member.get("member_assignment")
        if not assignment:  # no assignment at all: owns nothing
            continue
        if not isinstance(assignment, dict):  # bytes the admin client could not decode: can't tell
            return None
        for entry in assignment.get("assigned_partitions") or []:
            if entry.get("topic") == topic:
                owned.update(entry.get("partitions") or [])
    unowned = sorted(set(partitions) - owned)
    return f"partitions {unowned} of {topic} are owned by no member" if unowned else None


class _Listener(AsyncConsumerRebalanceListener):
    """Records revocations for the loop, commits what is done on revoke, keeps new partitions paused
    while the loop waits for a dependency. Async because kafka-python 3 runs listeners on its IO
    loop, where a blocking consumer call would raise."""

    def __init__(self, source: "KafkaSource"):
        self.source = source

    async def on_partitions_revoked(self, revoked):
        source = self.source
        source._revoked.update((tp.topic, tp.partition) for tp in revoked)
        done = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in source._done.items() if (t, p) in source._revoked}
        log.info("partitions_revoked", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked),
                 committing={f"{tp.topic}:{tp.partition}": om.offset for tp, om in done.items()})
        if done:
            try:
                await commit_in_listener(source._consumer, done)
                for tp in done:
                    source._done.pop((tp.topic, tp.partition), None)
            except Exception as error:  # noqa: BLE001 - the new owner redelivers; results are idempotent
                log.warning("commit_on_revoke_failed", error=repr(error))

    async def on_partitions_assigned(self, assigned):
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        if self.source._paused and assigned:
            self.source._consumer.pause(*assigned)

    async def on_partitions_lost(self, lost):
        # Evicted: committing would fail; forget what we hold for these partitions.
        self.source._revoked.update((tp.topic, tp.partition) for tp in lost)
        for tp in lost:
            self.source._done.pop((tp.topic, tp.partition), None)
        log.warning("partitions_lost", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in lost))


class KafkaSource:
    """A group consumer on ``config.topic`` implementing the loop's Source protocol."""
    exhausted = False

    def __init__(self, config: Any, **overrides: Any):
        self.config = config
        settings = _client_settings(
            config, group_id=config.group, client_id=config.worker_id,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=config.batch_size,
            max_poll_interval_ms=config.max_poll_interval_ms, session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms, request_timeout_ms=30_000,
            reconnect_backoff_max_ms=5_000, max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
        settings.update(overrides)
        self._admin_settings = {k: v for k, v in settings.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
        self._admin_settings.update(client_id=f"{config.worker_id}-admin", request_timeout_ms=10_000,
                                    bootstrap_timeout_ms=10_000)
        self._consumer = _connect(lambda: KafkaConsumer(**settings), settings)
        self._revoked: set[tuple[str, int]] = set()
        self._done: dict[tuple[str, int], int] = {}  # flushed, not yet committed
        self._paused = False
        self._last_poll = time.monotonic()
        # A member that stays out of a stable group longer than any legitimate rebalance (which waits
        # at most max.poll.interval.ms for slow members) rejoins from scratch instead of idling.
        self._rejoin_after_s = 2 * config.max_poll_interval_ms / 1000 + config.session_timeout_ms / 1000
        self._join_wait_s = config.max_poll_interval_ms / 4000 + JOIN_WAIT_EXTRA_S
        self._unstable_since: float | None = None
        # An idle stable member watches for partitions no member owns (see _watch_idle).
        self._stall: str | None = None  # the problem found, until a check finds none or we get partitions
        self._stall_since: float | None = None
        self._stall_checked_at = float("-inf")
        self._admin: KafkaAdminClient | None = None
        self._lag: dict[tuple[str, int], int] = {}
        self._lag_at = float("-inf")
        self._consumer.subscribe([config.topic], listener=_Listener(self))

    def check_topics(self) -> None:
        """At start: the source topic and the dead-letter topic exist (listing topics never creates one,
        whatever the broker's auto-create setting).

        Raises:
            DependencyDown: the broker is unreachable (the caller waits and retries).
            Misconfigured: a topic is missing, or the broker refused us (authentication, authorization).
        """
        try:
            topics = self._consumer.topics()
        except kerrors.KafkaError as error:
            if is_transient(error):
                raise DependencyDown("kafka", f"listing topics failed: {error!r}") from error
            raise Misconfigured("kafka", f"the broker refused to list topics ({error!r})",
                                "check the Kafka credentials and ACLs (Describe on the topics)") from error
        missing = [t for t in (self.config.topic, self.config.dlq_topic) if t not in topics]
        if missing:
            raise Misconfigured("kafka", f"topic(s) {', '.join(map(repr, missing))} do not exist",
                                "create them (kafka-topics.sh --create --topic NAME --partitions N; `invad produce "
                                "--create-topic` creates the source topic), or set INVAD_TOPIC / INVAD_DLQ_TOPIC")

    # -- polling --------------------------------------------------------------------------------
    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``max_wait_s`` to fill the batch."""
        deadline = time.monotonic() + max_wait_s
        batch: list[Message] = []
        while len(batch) < max_records:
            left = max(0.0, deadline - time.monotonic())
            records = self._poll(int(left * 1000), max_records - len(batch))
            for tp, items in records.items():
                batch.extend(Message(r.value, r.key, tp.topic, tp.partition, r.offset) for r in items)
            if left <= 0:
                break
        # A rebalance happened mid-fill: the new owner starts from the last commit. The set stays for
        # the loop's take_revoked(), which also trims the batches still in flight.
        if self._revoked:
            self.give_back([m for m in batch if m.tp in self._revoked])
            batch = [m for m in batch if m.tp not in self._revoked]
        self._watch_membership()
        return batch

    def healthy(self) -> bool:
        """True while this consumer is a stable member of its group (with or without partitions) and no
        stall was found: holding no partition, it saw none of the topic left without an owner."""
        return self._stable() and self._stall is None

    def _stable(self) -> bool:
        return self._consumer.group_metadata().state == MemberState.STABLE

    def _watch_membership(self) -> None:
        if self._stable():
            self._unstable_since = None
            self._watch_idle()
            return
        now = time.monotonic()
        if self._unstable_since is None:
            self._unstable_since = now
        elif now - self._unstable_since > self._rejoin_after_s:
            self._rejoin("group_membership_stalled", state=self._consumer.group_metadata().state,
                         seconds=round(now - self._unstable_since))
            self._unstable_since = now

    def _watch_idle(self) -> None:
        """A stable member that holds no partition asks the broker, at most every ``stall_check_s``,
        whether the group left a partition of the topic to no one (or dropped us: :func:`group_gap`).
        While it did, this member is unready; still so ``stall_rejoin_s`` after it was first seen, the
        member rejoins, which makes the leader assign every partition again. A member holding
        partitions never asks: the cost is one DescribeGroups request per idle member and interval."""
        interval = self.config.stall_check_s
        if not interval or self._consumer.assignment():
            self._clear_stall()
            return
        now = time.monotonic()
        if now - self._stall_checked_at < interval:
            return
        self._stall_checked_at = now
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self._admin_settings)
            description = self._admin.describe_groups([self.config.group]).get(self.config.group, {})
            gap = group_gap(description, self.config.topic, self._consumer.partitions_for_topic(self.config.topic)
                            or set(), self._consumer.group_metadata().member_id)
        except Exception as error:  # noqa: BLE001 - a probe: the next one may answer; nothing else depends on it
            log.warning("group_describe_failed", error=repr(error))
            return
        if gap is None:
            self._clear_stall()
            return
        if self._stall_since is None:
            self._stall_since = now
            log.error("group_stall_detected", problem=gap, ready=False, rejoin_in_s=self.config.stall_rejoin_s)
        self._stall = gap
        if now - self._stall_since >= self.config.stall_rejoin_s:
            self._rejoin("group_stall_rejoin", problem=gap, seconds=round(now - self._stall_since))
            self._stall_since = now  # unready until a check after the rejoin finds the group whole

    def _clear_stall(self) -> None:
        if self._stall is not None:
            log.info("group_stall_cleared", assigned=sorted(tp.partition for tp in self._consumer.assignment()))
        self._stall = self._stall_since = None

    def _rejoin(self, event: str, **fields: Any) -> None:
        """Leave the group and subscribe again: the group rebalances and this member joins afresh."""
        log.error(event, action="unsubscribe and subscribe again", **fields)
        self._done.clear()  # whatever we held is someone else's now, restarting from the last commit
        self._consumer.unsubscribe()
        self._consumer.subscribe([self.config.topic], listener=_Listener(self))

    def give_back(self, messages: list[Message]) -> None:
        """Messages dropped unprocessed after a revocation. If their partition was assigned straight
        back to us, the consumer's position is already past them: seek back to the first one, or
        they would never be read again (lost, or the partition stalls behind a gap)."""
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            first[m.tp] = min(m.offset, first.get(m.tp, m.offset))
        for (topic, partition), offset in first.items():
            if (topic, partition) in owned:
                log.info("rewind_after_revoke", partition=f"{topic}:{partition}", offset=offset)
                self._consumer.seek(TopicPartition(topic, partition), offset)

    def _poll(self, timeout_ms: int, max_records: int) -> dict:
        """One consumer poll of ``timeout_ms``; while that leaves a group join in flight, more polls of
        JOIN_SLICE_MS until it is done (see JOIN_SLICE_MS), records arrive, a poll fails, or
        ``_join_wait_s`` has passed."""
        records = self._poll_once(timeout_ms, max_records)
        deadline = time.monotonic() + self._join_wait_s
        while records == {} and self._joining() and time.monotonic() < deadline:
            started = time.monotonic()
            records = self._poll_once(JOIN_SLICE_MS, max_records)
            if records == {} and time.monotonic() - started < JOIN_SLICE_MS / 10_000 and self._joining():
                time.sleep(POLL_ERROR_PAUSE_S)  # a slice that returned at once, still joining: never spin
        if records is None:
            return {}
        self._refresh_lag()
        return records

    def _poll_once(self, timeout_ms: int, max_records: int) -> dict | None:
        """The consumer's records, or None after a transient failure (logged, and paused for)."""
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max(1, max_records))
        except (kerrors.KafkaError, OSError) as error:
            if is_transient(error):
                log.warning("poll_failed", error=repr(error))
                time.sleep(POLL_ERROR_PAUSE_S)  # never spin on an error that returns at once
                return None
            raise
        self._last_poll = time.monotonic()
        return records

    def _joining(self) -> bool:
        return self._consumer.group_metadata().state == MemberState.REBALANCING

    def lag(self) -> dict[tuple[str, int], int]:
        """``{(topic, partition): messages not yet polled}`` for the assigned partitions, as of the last
        refresh (at most LAG_REFRESH_S old while polling). Safe to call from any thread: a cached copy."""
        return dict(self._lag)

    def _refresh_lag(self) -> None:
        """Ask the broker for the end offsets (one request, at most every LAG_REFRESH_S, also while
        paused, when the lag keeps growing); a failure keeps the last values, it never fails a poll."""
        now = time.monotonic()
        if now - self._lag_at < LAG_REFRESH_S:
            return
        self._lag_at = now
        try:
            assigned = list(self._consumer.assignment())
            ends = self._consumer.end_offsets(assigned, timeout_ms=2_000) if assigned else {}
            lag = {}
            for tp, end in ends.items():
                position = self._consumer.position(tp, timeout_ms=1_000)
                if end is not None and position is not None:
                    lag[(tp.topic, tp.partition)] = max(0, end - position)
            self._lag = lag
        except Exception as error:  # noqa: BLE001 - a metric, never a reason to fail the loop
            log.debug("lag_refresh_failed", error=repr(error))

    def keepalive(self) -> None:
        """``poll(0)`` with the partitions paused: heartbeats and rebalances proceed, nothing is consumed."""
        records = self._poll(0, 1)
        for tp, items in records.items():
            # A partition assigned just now, before our listener paused it: give the records back.
            self._consumer.seek(tp, min(r.offset for r in items))
            if self._paused:
                self._consumer.pause(tp)

    def keepalive_if_due(self) -> None:
        """Between stages of a slow batch: poll(0) once a quarter of max.poll.interval.ms has passed."""
        if time.monotonic() - self._last_poll < self.config.max_poll_interval_ms / 4000.0:
            return
        was_paused = self._paused
        self.pause()
        self.keepalive()
        if not was_paused:
            self.resume()

    def take_revoked(self) -> set[tuple[str, int]]:
        revoked, self._revoked = set(self._revoked), set()
        return revoked

    def pause(self) -> None:
        self._paused = True
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(*assigned)

    def resume(self) -> None:
        self._paused = False
        paused = self._consumer.paused()
        if paused:
            self._consumer.resume(*paused)

    # -- committing -----------------------------------------------------------------------------
    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``{(topic, partition): next offset}`` for the partitions still assigned to us.

        Raises:
            DependencyDown: the broker or coordinator is unreachable (the loop retries the commit).
        """
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        for tp, offset in offsets.items():
            if tp in owned:
                self._done[tp] = max(offset, self._done.get(tp, 0))
        pending = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in self._done.items() if (t, p) in owned}
        self._done = {tp: o for tp, o in self._done.items() if tp in owned}
        if not pending:
            return
        try:
            self._consumer.commit(offsets=pending, timeout_ms=15_000)
        except _OWNERSHIP_LOST as error:
            log.warning("commit_skipped_ownership_lost", error=repr(error),
                        offsets={f"{tp.topic}:{tp.partition}": om.offset for tp, om in pending.items()})
            self._done.clear()
            return
        except Exception as error:  # noqa: BLE001 - classified here
            if is_transient(error):
                raise DependencyDown("kafka", f"commit failed: {error!r}") from error
            raise
        for tp in pending:
            self._done.pop((tp.topic, tp.partition), None)

    def close(self) -> None:
        """Leave the group (so partitions move at once) without committing anything new."""
        try:
            self._consumer.close(autocommit=False, timeout_ms=10_000)
        except Exception as error:  # noqa: BLE001 - shutting down; the group times us out anyway
            log.warning("consumer_close_failed", error=repr(error))
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception as error:  # noqa: BLE001
                log.warning("admin_close_failed", error=repr(error))


class KafkaDeadLetters:
    """Dead letters to ``config.dlq_topic`` with acks=all; ``flush`` confirms every send or raises.

    A letter the broker refuses for its size (a topic with a smaller ``max.message.bytes``) is sent
    again with its payload cut to the original's size and digest: a dead letter is never dropped."""

    def __init__(self, config: Any, **overrides: Any):
        settings = _client_settings(config, client_id=f"{config.worker_id}-dlq",
                        acks="all", linger_ms=5, max_block_ms=10_000, request_timeout_ms=10_000,
                        retries=5, reconnect_backoff_max_ms=5_000, max_request_size=1_048_576,
                        # Not idempotent: kafka-python's idempotent producer fails every later send
                        # once the broker refused one batch as too large, and the letter could then
                        # never be resent in its smaller form. The DLQ is at-least-once anyway (a
                        # retried batch sends its letters again), so idempotence bought nothing here.
                        enable_idempotence=False)
        settings.update(overrides)
        self.topic = config.dlq_topic
        self._producer = _connect(lambda: KafkaProducer(**settings), settings)
        self._pending: list[tuple[Any, Any]] = []  # (dead letter, future)

    def send(self, dead_letter: Any) -> None:
        self._pending.append((dead_letter, self._send(dead_letter)))

    def _send(self, dead_letter: Any) -> Any:
        try:
            return self._producer.send(self.topic, value=dead_letter.to_json(), key=dead_letter.key_bytes())
        except _TOO_LARGE:  # larger than our own max_request_size: send the digest form at once
            smaller = dead_letter.truncated(0)
            log.warning("dead_letter_truncated", offset=dead_letter.offset, payload_size=smaller.payload_size)
            return self._producer.send(self.topic, value=smaller.to_json(), key=smaller.key_bytes())
        except kerrors.KafkaError as error:
            if is_transient(error):
                raise DependencyDown("kafka", f"dead-letter send failed: {error!r}") from error
            raise

    def flush(self) -> None:
        """Wait until every letter sent since the last flush is acknowledged.

        Raises:
            DependencyDown: the broker did not acknowledge them all (the loop retries the batch).
        """
        for _ in range(2):  # a second round only for letters refused as too large, sent truncated
            pending, self._pending = self._pending, []
            try:
                self._producer.flush(timeout=20)
            except kerrors.KafkaError as error:
                raise DependencyDown("kafka", f"dead-letter flush failed: {error!r}") from error
            for letter, future in pending:
                if future.is_done and isinstance(future.exception, _TOO_LARGE):
                    log.warning("dead_letter_truncated", offset=letter.offset, error=repr(future.exception))
                    self._pending.append((letter, self._send(letter.truncated(0))))
                elif not future.is_done or future.failed():
                    raise DependencyDown("kafka", f"dead letter not acknowledged: {future.exception!r}")
            if not self._pending:
                return
        raise DependencyDown("kafka", "dead letters refused as too large even without their payload")

    def close(self) -> None:
        try:
            self._producer.close(timeout=10)
        except Exception as error:  # noqa: BLE001
            log.warning("dlq_producer_close_failed", error=repr(error))
