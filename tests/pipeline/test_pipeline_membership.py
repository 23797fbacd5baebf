"""Group membership against real brokers: an idle member of a group that left partitions to no one
turns unready and rejoins; a worker forced out of its group (frozen past its session) rejoins and
scores again; with the broker gone, polling waits instead of spinning."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import MemberState

from kafka_helpers import (KafkaEnv, WorkerThread, assert_each_image_scored_once, produce, refs_for,
                           start_worker_process, stored_records, texture_pngs, upload_images, wait_for)
from worker.pipeline.kafka_io import KafkaSource, group_gap

pytestmark = pytest.mark.services


class ForgetfulAssignor(RangePartitionAssignor):
    """The leader's assignor, under the protocol name the worker speaks too ("range"), so the broker lets
    it decide for the whole group. While ``forgetful`` it assigns nothing to anyone: what kafka-python's
    own range assignor does when the leader's metadata lacks the topic. Then it assigns every partition
    to the members other than its own consumer (client id ``LEADER``), so a rejoin is what fixes it."""
    name = "range"

    def __init__(self) -> None:
        self.forgetful = True

    def assign(self, cluster, members):
        if self.forgetful:
            return {m.member_id: self._empty() for m in members}
        others = [m for m in members if not m.member_id.startswith(LEADER)]
        out = super().assign(cluster, others)
        return {**out, **{m.member_id: self._empty() for m in members if m.member_id.startswith(LEADER)}}

    def _empty(self):
        from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment
        return ConsumerProtocolAssignment(self.version, [], b"")


LEADER = "forgetful-leader"


class LeaderThread:
    """A plain consumer in the worker's group, polling in a thread, leading it with ForgetfulAssignor."""

    def __init__(self, kenv: KafkaEnv):
        self.assignor = ForgetfulAssignor()
        self.consumer = KafkaConsumer(bootstrap_servers=kenv.bootstrap, group_id=kenv.group, client_id=LEADER,
                                      enable_auto_commit=False, partition_assignment_strategy=[self.assignor],
                                      # long: a leader evicted by a starved machine would end the stall early
                                      session_timeout_ms=30000, heartbeat_interval_ms=3000)
        self.consumer.subscribe([kenv.topic])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            # Long polls until it is a stable member, its first join included (state UNJOINED, before the
            # join request goes out): kafka-python 3.0 drops a join that ends between two polls, and a
            # short poll on a loaded machine then never joins (see kafka_io.JOIN_SLICE_MS).
            settled = self.consumer.group_metadata().state == MemberState.STABLE
            self.consumer.poll(timeout_ms=200 if settled else 2000)

    def stable(self) -> bool:
        return self.consumer.group_metadata().state == MemberState.STABLE

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close(autocommit=False)


def describe(kenv: KafkaEnv) -> dict:
    admin = KafkaAdminClient(bootstrap_servers=kenv.bootstrap)
    try:
        return admin.describe_groups([kenv.group])[kenv.group]
    finally:
        admin.close()


def owners(description: dict) -> dict[str, list[int]]:
    """{client id: partitions} of a group description."""
    out = {}
    for member in description.get("members", []):
        assignment = member.get("member_assignment") or {}
        out[member["client_id"]] = sorted(p for entry in assignment.get("assigned_partitions", [])
                                          for p in entry["partitions"])
    return out


def test_idle_member_of_a_group_that_left_partitions_unowned_turns_unready_and_rejoins(kafka_bootstrap, redis_url,
                                                                                      s3_settings):
    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, partitions=3).setup()
    produce(kenv, [(f"k{i}".encode(), f"m{i}".encode()) for i in range(12)])
    leader = LeaderThread(kenv)
    source = KafkaSource(kenv.config(INVAD_WORKER_ID="idle", INVAD_STALL_CHECK_S="1", INVAD_STALL_REJOIN_S="3"))
    received = []
    try:
        wait_for(leader.stable, 60, "the forgetful leader to lead the group")

        def stalled_and_unready() -> bool:
            received.extend(source.poll_batch(4, 0.2))
            # read in one go, on the thread that polls: stable, holding nothing, and unready for it
            state, held = source._consumer.group_metadata().state, source._consumer.assignment()
            return state == MemberState.STABLE and not held and not source.healthy()
        wait_for(stalled_and_unready, 60, "the idle member to find the unowned partitions")
        description = describe(kenv)
        assert description["group_state"] == "Stable" and owners(description) == {LEADER: [], "idle": []}
        member_id = source._consumer.group_metadata().member_id
        assert group_gap(description, kenv.topic, {0, 1, 2}, member_id) == \
            f"partitions [0, 1, 2] of {kenv.topic} are owned by no member"
        assert not received
        # The leader would now assign properly, but only a rebalance asks it to: the member's rejoin.
        leader.assignor.forgetful = False

        def resumed() -> bool:
            received.extend(source.poll_batch(4, 0.2))
            return len(received) == 12 and source.healthy()
        wait_for(resumed, 90, "the rejoined member to get every partition and read every message")
        assert owners(describe(kenv)) == {LEADER: [], "idle": [0, 1, 2]}
    finally:
        source.close()
        leader.close()


def test_a_member_whose_polls_never_wait_still_joins_and_rejoins(kafka_bootstrap, redis_url, s3_settings):
    """The loop polls without waiting while batches are in flight, and keeps a paused member in its group
    with poll(0): both must still complete a join, which kafka-python 3.0 alone never does when the
    join outlasts the poll (see kafka_io.JOIN_SLICE_MS)."""
    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, partitions=2).setup()
    produce(kenv, [(f"k{i}".encode(), f"m{i}".encode()) for i in range(4)])
    source = KafkaSource(kenv.config(INVAD_WORKER_ID="eager"))
    received = []
    try:
        def joined() -> bool:
            received.extend(source.poll_batch(4, 0.0))
            return source.healthy() and len(source._consumer.assignment()) == 2
        wait_for(joined, 30, "the member to join with polls that never wait")
        wait_for(lambda: received.extend(source.poll_batch(4, 0.0)) or len(received) == 4, 30, "every record")
        source.pause()
        source._rejoin("test_rejoin")  # a new join, driven by keepalives alone
        wait_for(lambda: source.keepalive() or (source.healthy() and len(source._consumer.assignment()) == 2),
                 30, "the paused member to rejoin with keepalives alone")
        assert owners(describe(kenv)) == {"eager": [0, 1]}
    finally:
        source.close()


def test_group_gap_reads_a_description():
    def member(member_id, partitions, topic="t"):
        assignment = {"assigned_partitions": [{"topic": topic, "partitions": partitions}]} if partitions else b""
        return {"member_id": member_id, "member_assignment": assignment}
    whole = {"group_state": "Stable", "members": [member("a", [0, 1]), member("me", [])]}
    assert group_gap(whole, "t", {0, 1}, "me") is None  # more members than partitions: idle is fine
    assert group_gap(whole, "t", {0, 1, 2}, "me") == "partitions [2] of t are owned by no member"
    assert "not in the group's member list" in group_gap(whole, "t", {0, 1}, "gone")
    assert group_gap({**whole, "group_state": "PreparingRebalance"}, "t", {0, 1, 2}, "me") is None
    assert group_gap({**whole, "error": "CoordinatorLoadInProgressError"}, "t", {0, 1, 2}, "me") is None
    undecodable = {"group_state": "Stable", "members": [{"member_id": "a", "member_assignment": b"\x00\x01"},
                                                         member("me", [])]}
    assert group_gap(undecodable, "t", {0}, "me") is None
    other_topic = {"group_state": "Stable", "members": [member("a", [0], topic="u"), member("me", [])]}
    assert group_gap(other_topic, "t", {0}, "me") == "partitions [0] of t are owned by no member"


def test_worker_forced_out_of_its_group_rejoins_and_scores_again(kafka_bootstrap, redis_url, s3_settings, tiny_bundle,
                                                                  registry, tmp_path):
    """A worker frozen (SIGSTOP) past its session timeout is evicted; its partitions move to the other
    worker. Woken, it must find itself out of the group, rejoin, get partitions back and score again."""
    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, partitions=4, models=str(tiny_bundle)).setup()
    images = texture_pngs(30, 6, seed=31)
    upload_images(kenv, images)
    refs = refs_for(kenv, images, lines=8)
    log = tmp_path / "frozen.log"
    frozen = start_worker_process(kenv, log, INVAD_WORKER_ID="frozen")
    other = WorkerThread(kenv.config(INVAD_WORKER_ID="other"), registry)
    try:
        wait_for(lambda: sorted(len(p) for p in owners(describe(kenv)).values()) == [2, 2], 120, "two members, 2+2")
        produce(kenv, refs[:12])
        wait_for(lambda: len(stored_records(kenv)) == 12, 120, "the first third")
        frozen.send_signal(signal.SIGSTOP)
        wait_for(lambda: owners(describe(kenv)) == {"other": [0, 1, 2, 3]}, 60, "the frozen worker's eviction")
        produce(kenv, refs[12:24])
        wait_for(lambda: len(stored_records(kenv)) == 24, 120, "the second third, by the other worker")
        frozen.send_signal(signal.SIGCONT)
        wait_for(lambda: len(owners(describe(kenv)).get("frozen", [])) == 2, 120, "the woken worker back with 2")
        produce(kenv, refs[24:])
        wait_for(lambda: len(stored_records(kenv)) == len(images), 120, "the last third")
        assert frozen.poll() is None, log.read_text()[-3000:]
        frozen.send_signal(signal.SIGTERM)
        assert frozen.wait(timeout=60) == 0
    finally:
        if frozen.poll() is None:
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
        assert other.stop() == 0
    assert_each_image_scored_once(kenv, images)
    third = {f"img/{name}" for name in sorted(images)[24:]}  # refs_for orders by name
    assert any(r.worker_id == "frozen" for i, r in stored_records(kenv).items() if i in third), \
        "the woken worker scored nothing after it rejoined"


def test_polling_with_the_broker_gone_waits_instead_of_spinning(private_broker, redis_url, s3_settings):
    """Each poll_batch or keepalive, with the broker stopped, costs a bounded number of consumer polls
    (a poll that fails or returns at once must not be retried in a tight loop)."""
    private_broker.start()
    kenv = KafkaEnv(private_broker.address, redis_url, s3_settings, partitions=2).setup()
    source = KafkaSource(kenv.config())
    try:
        wait_for(lambda: source.poll_batch(4, 0.2) == [] and source.healthy(), 60, "the member to join")
        polls = 0
        poll = source._consumer.poll

        def counted(*args, **kwargs):
            nonlocal polls
            polls += 1
            return poll(*args, **kwargs)
        source._consumer.poll = counted  # the real poll, counted
        private_broker.stop()
        for _ in range(10):
            assert source.poll_batch(4, 0.2) == []
        batch_polls, polls = polls, 0
        for _ in range(10):
            source.keepalive()
        assert batch_polls <= 30 and polls <= 10, (batch_polls, polls)
    finally:
        source.close()
