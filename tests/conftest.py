"""Shared fixtures: generated data, one real, tiny detector bundle trained once per session, and the
settings of the real services.

Service tests read ``INVAD_TEST_KAFKA``, ``INVAD_TEST_REDIS_URL`` and ``INVAD_TEST_S3_*`` (written by
``scripts/services.sh`` to ``~/.cache/invad/run/services.env``) through ``services.service_setting``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from services import service_setting  # noqa: E402
from synthetic import make_texture_images, write_mvtec_category  # noqa: E402

TINY_IMAGE_SIZE = 128


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """Every test ends with structlog back at its defaults. A command run in-process configures logging
    for the whole process, and ``structlog.testing.capture_logs`` leaves structlog marked configured
    (with console output on stdout), so the next test's command would skip its own configuration and
    print log lines where a test reads its output."""
    import structlog
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def texture_category(tmp_path_factory) -> Path:
    """An MVTec AD layout category of generated textures (80 train, 8 good + 8 defective test)."""
    return write_mvtec_category(tmp_path_factory.mktemp("data") / "texture", n_train=80, size=TINY_IMAGE_SIZE)


def _cached_bundle(name: str, make) -> Path:
    """The bundle ``make(out)`` trains, reused across test sessions while the code that trains it is
    unchanged: keyed by the sources of worker/core, the test data generator, this file, and the torch
    and diffusers versions. Training it
    costs minutes on 2 cores, and every developer's pytest run would pay them again."""
    import fcntl
    import hashlib
    import os
    import shutil

    import diffusers
    import torch

    digest = hashlib.sha256(f"{name}|{torch.__version__}|{diffusers.__version__}".encode())
    here = Path(__file__).parent
    for source in [*sorted((here.parent / "worker" / "core").rglob("*.py")), here / "synthetic.py", here / "conftest.py"]:
        digest.update(source.read_bytes())
    cache = Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad")) / "test-bundles"
    final = cache / f"{name}-{digest.hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers (pytest -n) train it once, the others wait
        if not (final / ".complete").exists():
            building = cache / f".{final.name}.{os.getpid()}"
            shutil.rmtree(building, ignore_errors=True)
            make(building)
            (building / ".complete").touch()
            shutil.rmtree(final, ignore_errors=True)
            building.rename(final)
    return final


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, texture_category) -> Path:
    """A real detector bundle: Lite0 features at 128 px, a small denoiser trained for a few hundred steps,
    calibrated on 24 held-out normals (cached across sessions, see _cached_bundle). Without the default
    map backbone: the pipeline's tests need a real bundle, not the default's second backbone
    (tests/core/test_map_backbone.py, the CLI training test and the demo's test cover that)."""
    import shutil

    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, train

    def make(out: Path) -> None:
        train([texture_category], out, DetectorConfig(name="tiny", image_size=TINY_IMAGE_SIZE, map_backbone=""),
              TrainConfig(iterations=300, batch_size=16, width=32, num_blocks=2, kernel_size=3, warmup=20,
                          checkpoint_every=1000, calib_fraction=0.3),
              progress=False)

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    shutil.copytree(_cached_bundle("tiny", make), out, ignore=shutil.ignore_patterns(".complete"))
    return out


@pytest.fixture
def kafka_bootstrap() -> str:
    return service_setting("INVAD_TEST_KAFKA")


@pytest.fixture
def redis_url() -> str:
    return service_setting("INVAD_TEST_REDIS_URL")


@pytest.fixture
def s3_settings() -> dict[str, str]:
    return {"endpoint": service_setting("INVAD_TEST_S3_ENDPOINT"),
            "access_key": service_setting("INVAD_TEST_S3_ACCESS_KEY"),
            "secret_key": service_setting("INVAD_TEST_S3_SECRET_KEY"),
            "region": os.environ.get("INVAD_TEST_S3_REGION", "us-east-1")}


__all__ = ["make_texture_images"]
