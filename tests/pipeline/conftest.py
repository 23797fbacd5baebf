"""Pipeline fixtures: a fast fake detector, generated image folders, and the real services.

Service tests read ``INVAD_TEST_KAFKA``, ``INVAD_TEST_REDIS_URL`` and ``INVAD_TEST_S3_*`` (written by
``scripts/services.sh`` to ``~/.cache/invad/run/services.env``) and skip, saying so, when absent.
Every test gets its own topic, group, Redis prefix and bucket.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/pipeline first: its helper modules (fakes, proxy, kafka_helpers) are imported by name.
sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeDetector, write_images  # noqa: E402


@pytest.fixture
def fake_registry():
    from worker.pipeline.models import ModelRegistry
    return ModelRegistry({"*": FakeDetector()})


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, dict[str, bool]]:
    folder = tmp_path / "images"
    return folder, write_images(folder, 6, 4)


def _need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"{var} is not set: run `source ~/.cache/invad/run/services.env` after scripts/services.sh start")
    return value


@pytest.fixture
def kafka_bootstrap() -> str:
    return _need("INVAD_TEST_KAFKA")


@pytest.fixture
def redis_url() -> str:
    return _need("INVAD_TEST_REDIS_URL")


@pytest.fixture
def s3_settings() -> dict[str, str]:
    return {"endpoint": _need("INVAD_TEST_S3_ENDPOINT"), "access_key": _need("INVAD_TEST_S3_ACCESS_KEY"),
            "secret_key": _need("INVAD_TEST_S3_SECRET_KEY"), "region": os.environ.get("INVAD_TEST_S3_REGION", "us-east-1")}
