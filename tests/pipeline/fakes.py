"""A fast, deterministic stand-in for worker.core.detector.Detector (same predict() contract)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthetic import make_texture_images

IMAGE_SIZE = 64


@dataclass(frozen=True)
class FakePrediction:
    pred_score: np.ndarray
    pred_label: np.ndarray
    anomaly_map: np.ndarray
    threshold: np.ndarray
    timings_ms: dict = field(default_factory=dict)


class FakeDetector:
    """Deterministic stand-in with the Detector API: the score is the share of near-black or
    near-white pixels (drawn defects are both), in percent; flagged above 0.5."""
    name, version, classes, image_size, threshold = "fake", "fake-1", ("default",), 32, 0.5
    device = "cpu"

    def __init__(self, delay_s: float = 0.0):
        self.calls: list[int] = []
        self.delay_s = delay_s  # to make batches slow enough to be interrupted in tests

    def predict(self, images, classes=None):
        self.calls.append(len(images))
        if self.delay_s:
            time.sleep(self.delay_s)
        maps, scores = [], []
        for image in images:
            gray = np.asarray(image.convert("L"), dtype=np.float32)
            mask = ((gray < 40) | (gray > 235)).astype(np.float32)
            scores.append(mask.mean() * 100)
            rows = np.linspace(0, mask.shape[0] - 1, self.image_size).astype(int)
            cols = np.linspace(0, mask.shape[1] - 1, self.image_size).astype(int)
            maps.append(mask[np.ix_(rows, cols)])
        maps, scores = np.stack(maps), np.asarray(scores, dtype=np.float32)
        return FakePrediction(scores, scores > self.threshold, maps, np.full(len(images), self.threshold, np.float32))


def write_images(folder: Path, n_good: int, n_bad: int, seed: int = 0, size: int = IMAGE_SIZE) -> dict[str, bool]:
    """PNG textures in ``folder``: ``good_XXX.png`` and ``bad_XXX.png``; returns {file name: defective}."""
    folder.mkdir(parents=True, exist_ok=True)
    good, _ = make_texture_images(n_good, size=size, seed=seed)
    bad, _ = make_texture_images(n_bad, defect=True, size=size, seed=seed + 1)
    labels = {}
    for prefix, images in (("good", good), ("bad", bad)):
        for i, image in enumerate(images):
            name = f"{prefix}_{i:03d}.png"
            image.save(folder / name)
            labels[name] = prefix == "bad"
    return labels


def unique(name: str) -> str:
    return f"t{uuid.uuid4().hex[:10]}-{name}"
