"""The smoke check a worker runs on a newly downloaded bundle before it serves a single message.

The bundle scores its own smoke images: normal images of its product, published with it
(``invad models publish --smoke``). It passes when every score, map value and threshold is finite and
no more of the images are flagged than a sound bundle would flag: the smallest k with
P(X > k) <= SMOKE_TAIL for X ~ Binomial(n, max(target FPR, SMOKE_MIN_RATE)). The floor on the rate
leaves room for smoke images that differ a little from the calibration images (another day, another
camera); a bundle with corrupt weights flags nearly everything or scores NaN, far past the bound.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from worker.core.images import ImageDecodeError, load_image

from .model_store import Refused
from .models import Route

SMOKE_TAIL = 1e-3  # the chance that a sound bundle fails the check
SMOKE_MIN_RATE = 0.05
SMOKE_BATCH = 16


def allowed_flags(n: int, target_fpr: float) -> int:
    """The most of ``n`` normal images a sound bundle may flag (see the module docstring)."""
    p = min(1.0, max(float(target_fpr), SMOKE_MIN_RATE))
    below = 0.0  # P(X <= k)
    for k in range(n + 1):
        below += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if 1.0 - below <= SMOKE_TAIL:
            return k
    return n


def smoke_check(route: Route, paths: list[Path]) -> dict[str, Any]:
    """Score the smoke images at ``paths`` with ``route``; returns what was seen.

    Raises:
        Refused: ``smoke_failed`` naming the image count, the flags allowed and what failed.
    """
    if not paths:
        raise Refused("smoke_failed", "the version has no smoke images")
    try:
        images = [load_image(path) for path in paths]
    except (ImageDecodeError, OSError) as error:
        raise Refused("smoke_failed", f"a smoke image cannot be read: {error}") from error
    scores, flagged = [], 0
    for start in range(0, len(images), SMOKE_BATCH):
        chunk = images[start:start + SMOKE_BATCH]
        classes = None if route.cls is None else [route.cls] * len(chunk)
        try:
            prediction = route.detector.predict(chunk, classes)
        except Exception as error:  # noqa: BLE001 - whatever a broken bundle raises, it is refused
            raise Refused("smoke_failed", f"scoring the smoke images raised {error!r}") from error
        for name in ("pred_score", "anomaly_map", "threshold"):
            if not np.isfinite(np.asarray(getattr(prediction, name), dtype=np.float64)).all():
                raise Refused("smoke_failed", f"non-finite {name} on the smoke images: the weights are corrupt")
        scores.extend(float(s) for s in prediction.pred_score)
        flagged += int(np.asarray(prediction.pred_label).sum())
    target_fpr = float(getattr(getattr(route.detector, "config", None), "target_fpr", SMOKE_MIN_RATE))
    allowed = allowed_flags(len(images), target_fpr)
    seen = {"images": len(images), "flagged": flagged, "allowed": allowed, "target_fpr": target_fpr,
            "score_median": round(float(np.median(scores)), 4), "score_max": round(float(np.max(scores)), 4)}
    if flagged > allowed:
        raise Refused("smoke_failed", f"{flagged} of {len(images)} normal smoke images flagged, at most {allowed} "
                      f"allowed at target FPR {target_fpr}: {seen}")
    return seen
