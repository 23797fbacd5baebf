"""Pipeline fixtures: the real tiny detector (one- and two-class) and generated image folders.

The real services' fixtures (``kafka_bootstrap``, ``redis_url``, ``s3_settings``) are in
tests/conftest.py. Every test gets its own topic, group, Redis prefix and bucket.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/pipeline first: its helper modules (helpers, proxy, kafka_helpers) are imported by name.
sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from helpers import write_images  # noqa: E402
from synthetic import write_mvtec_category  # noqa: E402


@pytest.fixture(scope="session")
def registry(tiny_bundle):
    """Every product -> the real tiny detector (tests/conftest.py), loaded once for the session."""
    from worker.pipeline.models import ModelRegistry
    return ModelRegistry.load([("*", str(tiny_bundle))], device="cpu")


@pytest.fixture(scope="session")
def two_class_bundle(tmp_path_factory) -> Path:
    """A real class-conditional bundle serving products ``default`` and ``other`` (64 px, briefly trained:
    for routing, not for accuracy)."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, train

    data = tmp_path_factory.mktemp("two_class_data")
    categories = [write_mvtec_category(data / name, n_train=12, size=64, seed=seed)
                  for seed, name in enumerate(("default", "other"), start=1)]
    out = tmp_path_factory.mktemp("bundles") / "two_class"
    train(categories, out, DetectorConfig(name="two-class", image_size=64),
          TrainConfig(iterations=20, batch_size=8, width=16, num_blocks=1, warmup=5), progress=False)
    return out


@pytest.fixture(scope="session")
def two_class_detector(two_class_bundle):
    from worker.core.detector import Detector
    return Detector.from_pretrained(two_class_bundle, "cpu")


@pytest.fixture
def private_broker(tmp_path):
    """A Kafka broker of the test's own (scripts/services.sh in its own run dir, on free ports), to stop,
    pause or restart without touching the shared one; not started yet, stopped at the end."""
    from worker.bench.services import PrivateService
    broker = PrivateService("kafka", tmp_path / "kafka-run")
    yield broker
    broker.stop()


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, dict[str, bool]]:
    folder = tmp_path / "images"
    return folder, write_images(folder, 6, 4)
