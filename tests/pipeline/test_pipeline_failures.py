"""Failure modes against the real services: Redis or S3 cut mid-stream (via a TCP proxy, the shared
services stay up), a private Redis restarted mid-stream, SIGTERM mid-batch, SIGKILL of one worker in
a group of three."""

from __future__ import annotations

import json
import signal
import time
from urllib.parse import urlsplit

import pytest

from kafka_helpers import (KafkaEnv, WorkerThread, alert_ids, all_committed, assert_each_image_scored_once, offsets,
                           produce, refs_for, start_worker_process, stored_records, texture_pngs, upload_images,
                           wait_for)
from proxy import TCPProxy
from worker.bench.services import PrivateService

pytestmark = pytest.mark.services


@pytest.fixture
def kenv(kafka_bootstrap, redis_url, s3_settings, tiny_bundle) -> KafkaEnv:
    return KafkaEnv(kafka_bootstrap, redis_url, s3_settings, models=str(tiny_bundle)).setup()


def _outage(kenv: KafkaEnv, registry, cut, restore, **config_overrides: str) -> None:
    """Score a first half, ``cut()`` a dependency, publish a second half, check nothing moves,
    ``restore()`` it, finish."""
    images = texture_pngs(8, 4, seed=3)
    upload_images(kenv, images)
    refs = refs_for(kenv, images)
    first, second = refs[:6], refs[6:]
    worker = WorkerThread(kenv.config(**config_overrides), registry)
    try:
        produce(kenv, first)
        wait_for(lambda: len(stored_records(kenv)) == 6 and all_committed(kenv), 60, "first half")
        before, _ = offsets(kenv)
        cut()
        produce(kenv, second)
        time.sleep(4)  # several backoff rounds (INVAD_BACKOFF_MAX_S=1)
        during, ends = offsets(kenv)
        assert during == before, "an offset was committed while a dependency was down"
        assert sum(ends.values()) == len(refs)
        restore()
        assert len(stored_records(kenv)) >= 6
        wait_for(lambda: len(stored_records(kenv)) == len(refs) and all_committed(kenv), 60, "second half after restore")
    finally:
        restore()
        assert worker.stop() == 0
    records = stored_records(kenv)
    flagged = sorted(i for i, r in records.items() if r.is_anomaly)
    assert flagged and sorted(alert_ids(kenv)) == flagged  # one alert per flagged image, none doubled


def test_redis_down_mid_stream(kenv, registry):
    parts = urlsplit(kenv.redis_url)
    with TCPProxy(parts.hostname, parts.port) as proxy:
        _outage(kenv, registry, proxy.cut, proxy.restore, INVAD_REDIS_URL=f"redis://{proxy.address}{parts.path}")


def test_s3_down_mid_stream(kenv, registry):
    parts = urlsplit(kenv.s3["endpoint"])
    with TCPProxy(parts.hostname, parts.port) as proxy:
        _outage(kenv, registry, proxy.cut, proxy.restore, INVAD_S3_ENDPOINT=f"http://{proxy.address}")


def test_redis_restarted_mid_stream(kafka_bootstrap, s3_settings, tiny_bundle, registry, tmp_path):
    """A real restart, not a cut: the server loses its Lua script cache (the alert script must be
    loaded again) and clients their connections; its data comes back from the snapshot that
    SHUTDOWN SAVE wrote, as with a Redis that persists."""
    redis = PrivateService("redis", tmp_path / "redis-run")
    redis.start()
    try:
        kenv = KafkaEnv(kafka_bootstrap, redis.address, s3_settings, models=str(tiny_bundle)).setup()
        _outage(kenv, registry, redis.stop, redis.start)
    finally:
        redis.stop()


def _log_events(path) -> list[dict]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def test_sigterm_mid_batch_drains_commits_and_exits_0(kenv, tmp_path):
    images = texture_pngs(12, 4, seed=5)
    upload_images(kenv, images)
    produce(kenv, refs_for(kenv, images))
    log = tmp_path / "worker.log"
    proc = start_worker_process(kenv, log, INVAD_TEST_PREDICT_DELAY_S="1.0")
    try:
        wait_for(lambda: len(stored_records(kenv)) >= 4, 60, "a first batch")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = _log_events(log)
    names = [e.get("event") for e in events]
    stop_at = names.index("stop_requested")
    assert "batch_committed" in names[stop_at:], "the batch in flight was not finished after SIGTERM"
    assert "worker_stopped" in names[stop_at:]
    committed, _ = offsets(kenv)
    records = stored_records(kenv)
    by_partition: dict[int, list[int]] = {}
    for record in records.values():
        by_partition.setdefault(record.source["partition"], []).append(record.source["offset"])
    for partition, done in by_partition.items():
        # every scored message is committed, and every committed message was scored (no gaps)
        assert committed[partition] == max(done) + 1 and sorted(done) == list(range(committed[partition]))


def test_sigkill_one_of_three_workers_loses_nothing(kafka_bootstrap, redis_url, s3_settings, tiny_bundle, tmp_path):
    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, partitions=6, models=str(tiny_bundle)).setup()
    images = texture_pngs(24, 6, seed=7)
    upload_images(kenv, images)
    produce(kenv, refs_for(kenv, images, lines=12))
    procs = [start_worker_process(kenv, tmp_path / f"w{i}.log", INVAD_TEST_PREDICT_DELAY_S="0.3",
                                  INVAD_WORKER_ID=f"w{i}") for i in range(3)]
    try:
        wait_for(lambda: len(stored_records(kenv)) >= 6, 60, "some progress")
        procs[0].kill()  # SIGKILL: no drain, no commit, no leave-group
        procs[0].wait(timeout=10)
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 120,
                 "every image scored after the kill")
        for proc in procs[1:]:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=30) for proc in procs[1:]] == [0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert_each_image_scored_once(kenv, images)


def test_sigkill_with_three_batches_in_flight_commits_nothing_early(kafka_bootstrap, redis_url, s3_settings,
                                                                     tiny_bundle, tmp_path):
    """The overlapped loop holds several batches at once (one scoring, the next fetched, an older one
    writing). Killed while three are in flight, it must have committed only what its sinks hold, and
    a replacement worker must finish the rest: nothing lost, no second alert."""
    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, partitions=2, models=str(tiny_bundle)).setup()
    images = texture_pngs(30, 10, seed=5)
    upload_images(kenv, images)
    produce(kenv, refs_for(kenv, images, lines=4))
    log_path = tmp_path / "killed.log"
    proc = start_worker_process(kenv, log_path, INVAD_TEST_PREDICT_DELAY_S="0.5", INVAD_BATCH_SIZE="4",
                                INVAD_MAX_IN_FLIGHT="3", INVAD_LOG_LEVEL="debug", INVAD_WORKER_ID="killed")
    try:
        wait_for(lambda: '"in_flight": 3' in log_path.read_text(errors="replace"), 120, "three batches in flight",
                 interval_s=0.05)
        proc.kill()  # SIGKILL: no drain, no commit, no leave-group
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    committed, _ = offsets(kenv)
    records = stored_records(kenv)
    assert len(records) < len(images), "the kill landed after the work was done; the test proves nothing"
    for partition, upto in committed.items():
        held = {r.source["offset"] for r in records.values() if r.source["partition"] == partition}
        missing = [offset for offset in range(upto or 0) if offset not in held]
        assert not missing, f"partition {partition}: offsets {missing} committed before their records were written"
    replacement = start_worker_process(kenv, tmp_path / "replacement.log", INVAD_WORKER_ID="replacement")
    try:
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 180,
                 "every image scored by the replacement")
        replacement.send_signal(signal.SIGTERM)
        assert replacement.wait(timeout=60) == 0
    finally:
        if replacement.poll() is None:
            replacement.kill()
    assert_each_image_scored_once(kenv, images)
