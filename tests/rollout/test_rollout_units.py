"""Pure parts of model roll-out: the settings, the smoke check's bound, manifests, the live registry."""

from __future__ import annotations

import json
import math

import pytest

from worker.pipeline.config import WorkerConfig, read_settings
from worker.pipeline.model_smoke import SMOKE_TAIL, allowed_flags
from worker.pipeline.model_store import Manifest, Refused
from worker.pipeline.models import LiveRegistry, ModelRegistry

KAFKA = {"INVAD_KAFKA_BOOTSTRAP": "127.0.0.1:1", "INVAD_REDIS_URL": "redis://127.0.0.1:1/0", "INVAD_S3_BUCKET": "bucket"}


def test_pointer_settings_are_checked_and_stand_in_for_invad_models(tmp_path):
    config = WorkerConfig.from_sources({}, {**KAFKA, "INVAD_MODEL_POINTERS": "bottle, cap"}, mode="kafka")
    assert config.model_pointers == ("bottle", "cap") and config.models == ()
    assert config.model_bucket == "bucket" and config.model_cache_dir.endswith("invad-models")
    config = WorkerConfig.from_sources({}, {**KAFKA, "INVAD_MODEL_POINTERS": "*", "INVAD_MODEL_BUCKET": "models",
                                            "INVAD_MODEL_CACHE_DIR": str(tmp_path)}, mode="kafka")
    assert (config.model_pointers, config.model_bucket, config.model_cache_dir) == (("*",), "models", str(tmp_path))
    for value, expected in (("*,bottle", "cannot be combined"), ("bad product", "is not a product key")):
        with pytest.raises(ValueError, match=f"INVAD_MODEL_POINTERS=.*{expected}"):
            WorkerConfig.from_sources({}, {**KAFKA, "INVAD_MODEL_POINTERS": value}, mode="kafka")
    with pytest.raises(ValueError, match="INVAD_MODEL_CACHE_DIR='relative': .* absolute"):
        WorkerConfig.from_sources({}, {**KAFKA, "INVAD_MODEL_POINTERS": "a", "INVAD_MODEL_CACHE_DIR": "relative"},
                                  mode="kafka")
    with pytest.raises(ValueError, match="INVAD_MODELS .* or INVAD_MODEL_POINTERS .* is required"):
        WorkerConfig.from_sources({}, KAFKA, mode="kafka")
    with pytest.raises(ValueError, match=r"INVAD_MODEL_POINTERS=a \(--model-pointers\): needs kafka mode"):
        WorkerConfig.from_sources({}, {"INVAD_MODEL_POINTERS": "a", "INVAD_MODELS": "/m"}, mode="embedded")
    with pytest.raises(ValueError, match="INVAD_MODEL_WATCH_S='0': must be a finite number >= 0.1"):
        WorkerConfig.from_sources({}, {**KAFKA, "INVAD_MODEL_POINTERS": "a", "INVAD_MODEL_WATCH_S": "0"}, mode="kafka")


def test_read_settings_reads_flags_over_variables_with_the_same_checks():
    got = read_settings(("redis_prefix", "model_bucket", "s3_prefix"), {"redis_prefix": "flag"},
                        {"INVAD_REDIS_PREFIX": "env", "INVAD_MODEL_BUCKET": "models"})
    assert vars(got) == {"redis_prefix": "flag", "model_bucket": "models", "s3_prefix": "invad"}
    with pytest.raises(ValueError, match="INVAD_MODEL_BUCKET='No_Such': must match"):
        read_settings(("model_bucket",), {}, {"INVAD_MODEL_BUCKET": "No_Such"})


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(X > k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1, n + 1))


@pytest.mark.parametrize("n, fpr", [(1, 0.01), (8, 0.01), (16, 0.01), (16, 0.1), (64, 0.02), (30, 0.5)])
def test_the_smoke_bound_is_the_smallest_a_sound_bundle_passes_with_probability_999_in_1000(n, fpr):
    k, p = allowed_flags(n, fpr), max(fpr, 0.05)
    assert binomial_tail(n, p, k) <= SMOKE_TAIL
    assert k == 0 or binomial_tail(n, p, k - 1) > SMOKE_TAIL
    assert k < n or n == 1  # a bundle that flags every normal image never passes (with more than one image)


def manifest_json(**changes) -> bytes:
    body = {"format": 1, "product": "bottle", "version": "v1", "bundle_version": "abc", "model_name": "m",
            "classes": ["default"], "target_fpr": 0.01, "published_at": "t", "published_by": "me",
            "files": {"bundle/detector_config.json": {"sha256": "0" * 64, "size": 1},
                      "smoke/000.png": {"sha256": "1" * 64, "size": 2}}}
    body.update(changes)
    return json.dumps(body).encode()


def test_a_manifest_is_refused_when_it_could_write_outside_its_folder_or_lacks_what_a_worker_needs():
    assert Manifest.from_json(manifest_json(), "bottle", "v1").smoke_files() == ["smoke/000.png"]
    bad = {"../escape": manifest_json(files={"bundle/../../x": {"sha256": "0", "size": 1},
                                             "smoke/000.png": {"sha256": "1", "size": 2}}),
           "absolute": manifest_json(files={"/etc/passwd": {"sha256": "0", "size": 1}}),
           "no smoke": manifest_json(files={"bundle/detector_config.json": {"sha256": "0", "size": 1}}),
           "other version": manifest_json(version="v2"),
           "newer format": manifest_json(format=2),
           "not json": b"{", "no size": manifest_json(files={"bundle/detector_config.json": {"sha256": "0"}})}
    for what, raw in bad.items():
        with pytest.raises(Refused) as info:
            Manifest.from_json(raw, "bottle", "v1")
        assert info.value.reason == "manifest_invalid", what


class Named:
    def __init__(self, name: str):
        self.name, self.version, self.classes = name, name, ("default",)


def test_a_live_registry_swaps_whole_registries_and_routes_carry_their_release():
    static = Named("static")
    live = LiveRegistry(ModelRegistry({"*": static, "bottle": Named("b1")}, {"bottle": "v1"}))
    before = live.current()
    assert live.route("bottle").release == "v1" and live.route("other").release is None
    old = live.swap("bottle", Named("b2"), "v2")
    assert old.name == "b1" and live.route("bottle").detector.name == "b2" and live.route("bottle").release == "v2"
    assert before.route("bottle").detector is old  # a batch routed before the swap keeps its detector
    assert live.route("other").detector is static and live.swap("cap", Named("c1"), "c-1") is None
    assert live.served() == ["*", "bottle", "cap"] and live.release("cap") == "c-1"
    empty = LiveRegistry()  # what the sinks are given before the pointers are read
    assert empty.by_product() == {} and empty.detectors() == []
    with pytest.raises(RuntimeError, match="no model is loaded yet"):
        empty.current()
    empty.replace(before)
    assert empty.route("bottle").detector is old
