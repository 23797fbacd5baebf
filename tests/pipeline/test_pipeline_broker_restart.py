"""Kafka outages against a private, real broker (started by scripts/services.sh on ports of its own, so
the shared broker of the other tests stays up): a worker started while the broker is unreachable
waits for it, and two workers live through a broker restart mid-stream with nothing lost and no
alert doubled."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from kafka_helpers import (KafkaEnv, all_committed, assert_each_image_scored_once, produce, refs_for,
                           start_worker_process, stored_records, texture_pngs, upload_images, wait_for)

pytestmark = pytest.mark.services


def events(log: Path) -> list[str]:
    names = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                names.append(json.loads(line).get("event"))
            except ValueError:
                pass
    return names


def test_worker_started_before_the_broker_waits_for_it(private_broker, redis_url, s3_settings, tiny_bundle, tmp_path):
    broker = private_broker
    kenv = KafkaEnv(broker.address, redis_url, s3_settings, partitions=2, models=str(tiny_bundle))
    # The topics exist before the worker starts (a worker refuses a missing topic at start): create
    # them, then take the broker down; its log directory keeps them for the restart.
    broker.start()
    kenv.setup()
    broker.stop()
    log = tmp_path / "worker.log"
    proc = start_worker_process(kenv, log)
    try:
        # kafka-python gives up on an unreachable bootstrap after bootstrap_timeout_ms (10 s in the
        # worker): the worker must call that an outage and try again, not exit.
        wait_for(lambda: "dependency_down_at_start" in events(log), 240, "the first failed connection")
        assert proc.poll() is None, log.read_text()[-3000:]
        broker.start()
        images = texture_pngs(4, 2, seed=21)
        upload_images(kenv, images)
        produce(kenv, refs_for(kenv, images))
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 180, "scores")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_broker_restart_mid_stream_loses_nothing(private_broker, redis_url, s3_settings, tiny_bundle, tmp_path):
    broker = private_broker
    broker.start()
    kenv = KafkaEnv(broker.address, redis_url, s3_settings, partitions=4, models=str(tiny_bundle)).setup()
    images = texture_pngs(24, 8, seed=23)
    upload_images(kenv, images)
    refs = refs_for(kenv, images, lines=8)
    produce(kenv, refs[:20])
    procs = [start_worker_process(kenv, tmp_path / f"w{i}.log", INVAD_WORKER_ID=f"w{i}",
                                  INVAD_TEST_PREDICT_DELAY_S="0.3") for i in range(2)]
    try:
        wait_for(lambda: len(stored_records(kenv)) >= 6, 120, "progress before the restart")
        broker.stop()  # SIGTERM to the broker mid-batch: commits and polls now fail
        time.sleep(5)  # several backoff rounds with the broker gone
        assert [p.poll() for p in procs] == [None, None], "a worker exited when the broker went away"
        broker.start()
        produce(kenv, refs[20:])
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 240,
                 "every image after the restart")
        assert [p.poll() for p in procs] == [None, None], "a worker exited during the broker restart"
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert_each_image_scored_once(kenv, images)
