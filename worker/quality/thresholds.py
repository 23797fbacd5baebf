"""Recalibration of a bundle on fresh normals (``invad calibrate``), reporting how far its rate can be trusted.

The bound lives in :mod:`worker.core.scoring` (training reports it too): a threshold set on n calibration
normals with m of them above it has a true false-positive rate that is itself uncertain: for continuous
scores, the exceedance probability of the (m + 1)-th largest of n scores is Beta(m + 1, n - m) distributed. Its 95 % quantile is an honest upper bound: with 40 normals
and none above the threshold it is 7.2 %, whatever the target (the ELPV demo's threshold "at 1 %" flagged
8 % of held-out normals). Below ``MIN_CALIBRATION_IMAGES`` a warning says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..core.data import normal_training_images
from ..core.detector import Detector
from ..core.scoring import describe_threshold
from ..core.train import _combined, calibrate, component_matrix, extract_features


def recalibrate(bundle: str | Path, normals: str | Path, out: str | Path | None = None, device: str | None = None,
                target_fpr: float | None = None, batch: int = 16, progress: bool = True,
                product: str | None = None) -> dict:
    """Re-standardise a bundle's score and reset its threshold on fresh normal images (a new camera, new
    lighting), keeping its denoiser and training statistics; writes ``out`` (default: over ``bundle``).
    A class-conditional bundle is recalibrated one ``product`` at a time; its other products keep theirs
    (a single-class bundle ignores ``product``: it serves whichever product it is mapped to).

    Raises:
        BundleError: the bundle cannot be read. DatasetLayoutError: no images in ``normals``.
        ValueError: fewer than 2 images, or ``product`` missing or unknown for a class-conditional bundle.
    """
    detector = Detector.from_pretrained(bundle, device)
    if product is None and len(detector.classes) > 1:
        raise ValueError(f"{bundle} serves several products {list(detector.classes)}: name the one whose normals "
                         "these are with --product (each product is recalibrated on its own)")
    if len(detector.classes) == 1:  # a single-class bundle serves whatever product it is mapped to
        product = detector.classes[0]
    elif product not in detector.classes:
        raise ValueError(f"--product {product!r} is not served by {bundle}; it serves {list(detector.classes)}")
    if target_fpr is not None:
        detector.config = replace(detector.config, target_fpr=target_fpr, threshold_method="fpr")
    paths = normal_training_images(normals)
    if len(paths) < 2:
        raise ValueError(f"{normals} holds {len(paths)} image(s): calibration needs at least 2 normal images")
    features = extract_features(detector, paths, batch, "calibration", progress).to(detector.device)
    k = detector.classes.index(product)
    labels = torch.full((len(features),), k, dtype=torch.long)  # a row per tile
    calibrate(detector, features, labels)
    scores = _combined(detector, component_matrix(detector, features, labels), labels)
    summary = describe_threshold(scores, float(detector.thresholds[k]), detector.config.target_fpr)
    detector.save_pretrained(out or bundle)
    summary.update(bundle=str(out or bundle), product=product, version=detector.version,
                   threshold=float(detector.thresholds[k]))
    return summary
