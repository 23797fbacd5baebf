"""Model roll-out fixtures: real bundles (the tiny one, a second version of it, a corrupt copy), smoke
images, and a private bucket and Redis prefix on the shared services with `invad models` pointed at them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "pipeline"))  # helpers, kafka_helpers
sys.path.insert(0, str(Path(__file__).parent))  # rollout_helpers

from helpers import unique  # noqa: E402
from rollout_helpers import ModelEnv  # noqa: E402


@pytest.fixture
def model_env(redis_url, s3_settings, monkeypatch) -> ModelEnv:
    env = ModelEnv(redis_url, s3_settings, unique("models").lower(), unique("p"))
    env.s3_client().create_bucket(Bucket=env.bucket)
    for name, value in env.environ().items():
        monkeypatch.setenv(name, value)
    for name in ("INVAD_S3_BUCKET", "INVAD_MODEL_POINTERS"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture(scope="session")
def smoke_dir(texture_category) -> Path:
    """Held-out normal images of the tiny bundle's product (its category's test/good)."""
    return texture_category / "test" / "good"


@pytest.fixture(scope="session")
def bundle_v2(tiny_bundle, tmp_path_factory) -> Path:
    """A second version of the tiny bundle: its thresholds raised by 0.5 (other weights file, other hash)."""
    from worker.core.detector import Detector
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    detector.thresholds += 0.5
    out = tmp_path_factory.mktemp("bundles") / "tiny_v2"
    detector.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def corrupt_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with every byte of its detector tensors flipped: the files still parse (a
    safetensors header carries no checksum), the weights are garbage."""
    out = tmp_path_factory.mktemp("bundles") / "tiny_corrupt"
    shutil.copytree(tiny_bundle, out)
    path = out / "detector.safetensors"
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, then the JSON header, then the data
    raw[start:] = bytes(b ^ 0xFF for b in raw[start:])
    path.write_bytes(bytes(raw))
    return out
