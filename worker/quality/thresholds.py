"""How far a calibrated false-positive rate can be trusted, and recalibration of a bundle on fresh normals.

A threshold set on n calibration normals with m of them above it has a true false-positive rate that is
itself uncertain: for continuous scores, the exceedance probability of the (m + 1)-th largest of n
scores is Beta(m + 1, n - m) distributed. Its 95 % quantile is an honest upper bound: with 40 normals
and none above the threshold it is 7.2 %, whatever the target (the ELPV demo's threshold "at 1 %" flagged
8 % of held-out normals). Below :data:`MIN_CALIBRATION_IMAGES` a warning says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import beta

MIN_CALIBRATION_IMAGES = 100


def fpr_upper_bound(n: int, above: int, confidence: float = 0.95) -> float:
    """Upper ``confidence`` bound of the false-positive rate of a threshold with ``above`` of ``n`` normals over it."""
    if n < 1 or not 0 <= above < n:
        raise ValueError(f"need n >= 1 calibration scores and 0 <= above < n, got n={n}, above={above}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(beta.ppf(confidence, above + 1, n - above))


def images_needed(target_fpr: float, factor: float = 2.0, confidence: float = 0.95) -> int:
    """Fewest calibration normals for which a threshold with none above it is within ``factor`` x target."""
    # 1 - (1 - confidence)^(1/n) <= factor * target  <=>  n >= log(1 - confidence) / log(1 - factor * target)
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - min(factor * target_fpr, 0.999)))


def describe(scores: Sequence[float], threshold: float, target_fpr: float) -> dict:
    """What calibration can promise: counts, the empirical and bounded rates, and a warning if too few images."""
    scores = np.asarray(scores, np.float64)
    n, above = int(scores.size), int((scores > threshold).sum())
    summary = {"calibration_images": n, "above_threshold": above, "empirical_fpr": above / n if n else None,
               "fpr_upper_95": fpr_upper_bound(n, min(above, n - 1)) if n else None, "target_fpr": target_fpr,
               "warning": None}
    if n < MIN_CALIBRATION_IMAGES:
        summary["warning"] = (f"only {n} calibration images: the false-positive rate may be up to "
                              f"{summary['fpr_upper_95']:.1%} (95 % bound) against a target of {target_fpr:.1%}; "
                              f"calibrate on at least {max(MIN_CALIBRATION_IMAGES, images_needed(target_fpr))} "
                              "normal images (invad calibrate BUNDLE NORMALS/)")
    return summary


def recalibrate(bundle: str | Path, normals: str | Path, out: str | Path | None = None, device: str | None = None,
                target_fpr: float | None = None, batch: int = 16, progress: bool = True) -> dict:
    """Re-standardise a bundle's score and reset its thresholds on fresh normal images (a new camera, new
    lighting), keeping its denoiser and training statistics; writes ``out`` (default: over ``bundle``).

    Raises:
        BundleError: the bundle cannot be read. DatasetLayoutError: no images in ``normals``.
        ValueError: a class-conditional bundle (calibrate each product's normals into its own bundle).
    """
    from dataclasses import replace

    import torch

    from ..core.data import normal_training_images
    from ..core.detector import Detector
    from ..core.train import _combined, calibrate, component_matrix, extract_features

    detector = Detector.from_pretrained(bundle, device)
    if len(detector.classes) > 1:
        raise ValueError(f"{bundle} serves several products {list(detector.classes)}; recalibration of "
                         "class-conditional bundles is not supported yet: retrain with --calib-fraction")
    if target_fpr is not None:
        detector.config = replace(detector.config, target_fpr=target_fpr, threshold_method="fpr")
    paths = normal_training_images(normals)
    if len(paths) < 2:
        raise ValueError(f"{normals} holds {len(paths)} image(s): calibration needs at least 2 normal images")
    features = extract_features(detector, paths, batch, "calibration", progress).to(detector.device)
    labels = torch.zeros(len(paths), dtype=torch.long)
    calibrate(detector, features, labels)
    scores = _combined(detector, component_matrix(detector, features, labels), labels)
    summary = describe(scores, float(detector.thresholds[0]), detector.config.target_fpr)
    detector.save_pretrained(out or bundle)
    summary.update(bundle=str(out or bundle), version=detector.version, threshold=float(detector.thresholds[0]))
    return summary
