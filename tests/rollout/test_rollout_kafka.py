"""Model roll-out in a running Kafka worker (real broker, Redis, S3 and bundles): a version activated
mid-stream is switched in with no message lost and every record naming the version that scored it,
monotonically per partition; a corrupt version is refused while the last good one keeps serving; a
roll-back returns to the first version."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout_helpers import invad
from helpers import free_port
from kafka_helpers import (KafkaEnv, WorkerThread, all_committed, produce, refs_for, stored_records, texture_pngs,
                           upload_images, wait_for)

pytestmark = pytest.mark.services
ORDER = {"v1": 0, "v2": 1}


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the worker's /metrics (0 when it is not there yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def images(tag: str, n: int, seed: int) -> dict[str, bytes]:
    return {f"{tag}_{name}": data for name, data in texture_pngs(n - n // 4, n // 4, seed=seed).items()}


def send(kenv: KafkaEnv, batch: dict[str, bytes]) -> None:
    upload_images(kenv, batch)
    produce(kenv, refs_for(kenv, batch))


class Stream:
    """Sends two images every quarter second from a thread until :meth:`stop`."""

    def __init__(self, kenv: KafkaEnv):
        self.kenv, self.names, self.more = kenv, [], None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        step = 0
        while self.more is None or self.more > 0:
            batch = images(f"s{step:03d}", 2, seed=400 + step)
            send(self.kenv, batch)
            self.names.extend(batch)
            step += 1
            if self.more is not None:
                self.more -= 1
            time.sleep(0.25)

    def stop(self, after: int) -> list[str]:
        """Send ``after`` more pairs, then stop; returns every image name sent."""
        self.more = after
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.names


def test_a_version_switched_mid_stream_loses_nothing_and_records_say_which_version_scored_them(
        model_env, kafka_bootstrap, redis_url, s3_settings, tiny_bundle, bundle_v2, corrupt_bundle, smoke_dir,
        capsys, tmp_path):
    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, prefix=model_env.prefix).setup()
    hashes = {}
    for version, bundle in (("v1", tiny_bundle), ("v2", bundle_v2), ("corrupt", corrupt_bundle)):
        code, out = invad("models", "publish", str(bundle), "--product", "default", "--version", version,
                          "--smoke", str(smoke_dir), "--smoke-count", "8", capsys=capsys)
        assert code == 0, out
        hashes[version] = out["bundle_version"]
    assert invad("models", "activate", "default", "v1", capsys=capsys)[0] == 0
    port = free_port()
    worker = WorkerThread(kenv.config(INVAD_MODELS="", INVAD_MODEL_POINTERS="default", INVAD_MODEL_BUCKET=model_env.bucket,
                                      INVAD_MODEL_CACHE_DIR=str(tmp_path / "cache"), INVAD_MODEL_WATCH_S="0.5",
                                      INVAD_METRICS_PORT=str(port), INVAD_METRICS_BIND="127.0.0.1"), None)
    sent: dict[str, str] = {}  # image name -> the phase it was sent in
    try:
        # 1. v1 serves a steady stream; v2 is activated while it flows, and the stream goes on a little
        #    after the switch (those messages are polled after the swap: v2 must score them).
        stream = Stream(kenv)
        wait_for(lambda: len(stored_records(kenv)) >= 4, 120, "the first records")
        assert invad("models", "activate", "default", "v2", capsys=capsys)[0] == 0
        wait_for(lambda: metric(port, "invad_model_switches_total", product="default") == 1, 120, "the switch to v2")
        sent.update(dict.fromkeys(stream.stop(after=3), "switch"))
        after = images("b", 8, seed=310)
        send(kenv, after)
        sent.update(dict.fromkeys(after, "v2"))
        wait_for(lambda: len(stored_records(kenv)) == len(sent) and all_committed(kenv), 120, "phase 1 scored")

        # 2. A corrupt version is refused; v2 keeps serving.
        assert invad("models", "activate", "default", "corrupt", capsys=capsys)[0] == 0
        wait_for(lambda: metric(port, "invad_model_refused_total", product="default", reason="smoke_failed") == 1,
                 120, "the corrupt version refused")
        refused = images("c", 8, seed=320)
        send(kenv, refused)
        sent.update(dict.fromkeys(refused, "v2"))
        wait_for(lambda: len(stored_records(kenv)) == len(sent) and all_committed(kenv), 120, "phase 2 scored")

        # 3. Two roll-backs: to v2 (served already), then to v1.
        code, back = invad("models", "rollback", "default", capsys=capsys)
        assert code == 0 and (back["from"], back["to"]) == ("corrupt", "v2")
        code, back = invad("models", "rollback", "default", capsys=capsys)
        assert code == 0 and (back["from"], back["to"]) == ("v2", "v1")
        wait_for(lambda: metric(port, "invad_model_switches_total", product="default") == 2, 120, "the switch to v1")
        rolled = images("d", 8, seed=330)
        send(kenv, rolled)
        sent.update(dict.fromkeys(rolled, "v1"))
        wait_for(lambda: len(stored_records(kenv)) == len(sent) and all_committed(kenv), 120, "phase 3 scored")
        assert metric(port, "invad_model_refused_total", product="default", reason="smoke_failed") == 1
    finally:
        assert worker.stop() == 0

    records = stored_records(kenv)
    assert sorted(records) == sorted(f"img/{name}" for name in sent)  # no message lost (nor dead-lettered)
    for name, phase in sent.items():
        record = records[f"img/{name}"]
        assert record.model_release in ("v1", "v2") and record.model_version == hashes[record.model_release]
        if phase != "switch":
            assert record.model_release == phase, (name, phase, record.model_release)
    switch = [records[f"img/{name}"] for name, phase in sent.items() if phase == "switch"]
    assert {r.model_release for r in switch} == {"v1", "v2"}
    by_partition = defaultdict(list)
    for record in switch:
        by_partition[record.source["partition"]].append((record.source["offset"], ORDER[record.model_release]))
    for partition, scored in by_partition.items():
        versions = [version for _, version in sorted(scored)]
        assert versions == sorted(versions), f"partition {partition} went back to v1 after v2: {versions}"
