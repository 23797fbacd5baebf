"""Shared fixtures: generated data and one real, tiny detector bundle trained once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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


@pytest.fixture(scope="session")
def texture_category(tmp_path_factory) -> Path:
    """An MVTec AD layout category of generated textures (80 train, 8 good + 8 defective test)."""
    return write_mvtec_category(tmp_path_factory.mktemp("data") / "texture", n_train=80, size=TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, texture_category) -> Path:
    """A real detector bundle: Lite0 features at 128 px, a small denoiser trained for a few hundred steps,
    calibrated on 24 held-out normals."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, train

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train([texture_category], out, DetectorConfig(name="tiny", image_size=TINY_IMAGE_SIZE),
          TrainConfig(iterations=300, batch_size=16, width=32, num_blocks=2, kernel_size=3, warmup=20,
                      checkpoint_every=1000, calib_fraction=0.3),
          progress=False)
    return out


__all__ = ["make_texture_images"]
