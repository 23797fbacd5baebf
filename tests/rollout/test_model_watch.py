"""What a worker does with the versions activated for its products (real Redis, S3 and bundles, no
Kafka): loads and switches a good one, refuses every kind of bad one while the old one keeps serving,
does not try a refused pointer again, and lets go of a detector once nothing uses it."""

from __future__ import annotations

import gc
import weakref

import pytest

from rollout_helpers import invad
from worker.pipeline.models import LiveRegistry

pytestmark = pytest.mark.services


def refused(metrics, product: str, reason: str) -> float:
    return metrics.registry.get_sample_value("invad_model_refused_total", {"product": product, "reason": reason}) or 0


def publish(capsys, bundle, version, smoke_dir, product="bottle") -> dict:
    code, out = invad("models", "publish", str(bundle), "--product", product, "--version", version, "--smoke",
                      str(smoke_dir), "--smoke-count", "8", capsys=capsys)
    assert code == 0, out
    return out


def activate(capsys, version, product="bottle") -> None:
    code, out = invad("models", "activate", product, version, capsys=capsys)
    assert code == 0, out


@pytest.fixture
def rollout(model_env, tmp_path):
    from worker.pipeline.config import WorkerConfig
    from worker.pipeline.metrics import WorkerMetrics
    from worker.pipeline.model_watch import ModelRollout

    environ = {**model_env.environ(), "INVAD_KAFKA_BOOTSTRAP": "127.0.0.1:1", "INVAD_S3_BUCKET": model_env.bucket,
               "INVAD_MODEL_POINTERS": "bottle", "INVAD_MODEL_CACHE_DIR": str(tmp_path / "cache"), "INVAD_DEVICE": "cpu"}
    made = ModelRollout.from_config(WorkerConfig.from_sources({}, environ, mode="kafka"), WorkerMetrics())
    yield made
    made.close()


def test_good_versions_switch_bad_ones_are_refused_and_the_old_one_keeps_serving(
        model_env, rollout, tiny_bundle, bundle_v2, corrupt_bundle, smoke_dir, capsys):
    v1 = publish(capsys, tiny_bundle, "v1", smoke_dir)
    v2 = publish(capsys, bundle_v2, "v2", smoke_dir)
    publish(capsys, corrupt_bundle, "corrupt", smoke_dir)
    for version in ("tampered", "incomplete"):
        publish(capsys, tiny_bundle, version, smoke_dir)
    client, bucket = model_env.s3_client(), model_env.bucket
    # After publication: a weights file changed in storage, another file lost.
    client.put_object(Bucket=bucket, Key=model_env.key("bottle", "tampered", "bundle/detector.safetensors"),
                      Body=b"\0" * 64)
    client.delete_object(Bucket=bucket, Key=model_env.key("bottle", "incomplete", "bundle/scheduler/scheduler_config.json"))
    activate(capsys, "v1")

    live = rollout.start(LiveRegistry())
    first = live.route("bottle")
    assert first.release == "v1" and first.detector.version == v1["bundle_version"]
    assert rollout.metrics.registry.get_sample_value(
        "invad_model_info", {"product": "bottle", "model_name": "tiny", "model_version": v1["bundle_version"],
                             "model_release": "v1"}) == 1

    activate(capsys, "corrupt")
    rollout.poll_once()
    assert refused(rollout.metrics, "bottle", "smoke_failed") == 1
    assert live.route("bottle").detector is first.detector  # the old one keeps serving
    rollout.poll_once()
    assert refused(rollout.metrics, "bottle", "smoke_failed") == 1  # not tried again until the pointer changes

    for version, reason in (("tampered", "checksum_mismatch"), ("incomplete", "file_missing")):
        activate(capsys, version)
        rollout.poll_once()
        assert refused(rollout.metrics, "bottle", reason) == 1, version
        assert live.route("bottle").detector is first.detector

    activate(capsys, "v2")
    batch_registry = live.current()  # what a batch routed before the switch holds on to
    rollout.poll_once()
    second = live.route("bottle")
    assert second.release == "v2" and second.detector.version == v2["bundle_version"]
    assert batch_registry.route("bottle").detector is first.detector  # a batch in flight keeps its detector
    assert rollout.metrics.registry.get_sample_value("invad_model_switches_total", {"product": "bottle"}) == 1

    released = weakref.ref(first.detector)
    del first, batch_registry
    gc.collect()
    assert released() is None, "the old detector is still held after the last batch using it went"

    # Activating the refused version again is a new pointer: it is tried (and refused) again.
    activate(capsys, "corrupt")
    rollout.poll_once()
    assert refused(rollout.metrics, "bottle", "smoke_failed") == 2
    assert live.route("bottle").release == "v2"


def test_a_version_that_cannot_load_is_refused_and_a_start_falls_back_to_the_last_good_one(
        model_env, rollout, tiny_bundle, smoke_dir, capsys):
    from worker.pipeline.errors import Misconfigured

    with pytest.raises(Misconfigured, match="has no active model version") as info:
        rollout.start(LiveRegistry())
    assert info.value.exit_code == 6
    publish(capsys, tiny_bundle, "v1", smoke_dir)
    publish(capsys, tiny_bundle, "broken", smoke_dir)
    # A file that is not a safetensors file at all, with a manifest that matches it: the loader refuses it.
    manifest_key = model_env.key("bottle", "broken")
    client, bucket = model_env.s3_client(), model_env.bucket
    import hashlib
    import json
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    junk = b"not a safetensors file"
    manifest["files"]["bundle/detector.safetensors"] = {"sha256": hashlib.sha256(junk).hexdigest(), "size": len(junk)}
    client.put_object(Bucket=bucket, Key=model_env.key("bottle", "broken", "bundle/detector.safetensors"), Body=junk)
    client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    activate(capsys, "v1")
    activate(capsys, "broken")

    live = rollout.start(LiveRegistry())  # the active version is refused: the newest earlier one serves
    assert live.route("bottle").release == "v1"
    assert refused(rollout.metrics, "bottle", "bundle_invalid") == 1
    rollout.poll_once()
    assert refused(rollout.metrics, "bottle", "bundle_invalid") == 1
