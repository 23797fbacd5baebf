"""A cost-free detector for the plumbing-ceiling benchmark (``invad bench pipeline --detector null``).

It honours the detector contract the worker loop relies on (``predict(images, classes)`` returning a
:class:`~worker.core.detector.Prediction`, plus ``name``, ``version``, ``classes``, ``device``) and does
no work beyond allocating its outputs, so a worker serving it measures what Kafka, fetch, decode,
records, overlays, Redis, S3 and commits cost. It lives here, not in the core: nothing in production
may route images to it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from worker.core.detector import Prediction

NORMAL_SCORE = 0.0
FLAGGED_SCORE = 1.0
THRESHOLD = 0.5


class NullDetector:
    """Constant scores; exactly ``flagged_fraction`` of the images it has seen are flagged.

    Image ``k`` (counted from 0 over the life of this object, across batches) is flagged when
    ``floor((k + 1) * f) > floor(k * f)``: for f = 0.1, images 9, 19, 29, ... So every stretch of
    ``1 / f`` consecutive images holds one flagged image, whatever the batch sizes.

    Args:
        flagged_fraction: in [0, 1].
        map_size: side of the (constant, all-zero) anomaly map, like a real detector's input size,
            so rendering the overlay of a flagged image costs what it costs in production.

    Raises:
        ValueError: a fraction outside [0, 1] or a map size below 1.
    """

    name = "null-detector"
    version = "bench"
    classes: tuple[str, ...] = ()  # unconditional: serves every product mapped to it
    device = "cpu"

    def __init__(self, flagged_fraction: float, map_size: int = 256):
        if not 0.0 <= flagged_fraction <= 1.0 or math.isnan(flagged_fraction):
            raise ValueError(f"flagged_fraction must be in [0, 1], got {flagged_fraction!r}")
        if map_size < 1:
            raise ValueError(f"map_size must be a positive number of pixels, got {map_size!r}")
        self.flagged_fraction, self.map_size = float(flagged_fraction), int(map_size)
        self.seen = 0

    def predict(self, images: Sequence[object], classes: Sequence[str] | None = None) -> Prediction:
        """One Prediction for ``images`` (never looked at); ``classes`` is accepted and ignored."""
        if not images:
            raise ValueError("predict() needs at least one image")
        k = np.arange(self.seen, self.seen + len(images), dtype=np.float64)  # (B,)
        self.seen += len(images)
        f = self.flagged_fraction
        pred_label = np.floor((k + 1) * f) > np.floor(k * f)  # (B,) bool
        pred_score = np.where(pred_label, FLAGGED_SCORE, NORMAL_SCORE).astype(np.float32)
        anomaly_map = np.zeros((len(images), self.map_size, self.map_size), dtype=np.float32)  # (B, S, S)
        threshold = np.full(len(images), THRESHOLD, dtype=np.float32)
        return Prediction(pred_score, pred_label, anomaly_map, threshold, timings_ms={})
