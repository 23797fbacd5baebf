"""Recalibration of a bundle on fresh normals (``invad calibrate``), reporting how far its rate can be trusted.

The bound lives in :mod:`worker.core.scoring` (training reports it too): a threshold set on n calibration
normals with m of them above it has a true false-positive rate that is itself uncertain: for continuous
scores, the exceedance probability of the (m + 1)-th largest of n scores is Beta(m + 1, n - m) distributed. Its 95 % quantile is an honest upper bound: with 40 normals
and none above the threshold it is 7.2 %, whatever the target (the ELPV demo's threshold "at 1 %" flagged
8 % of held-out normals). Below ``MIN_CALIBRATION_IMAGES`` a warning says so.
"""

from __future__ import annotations

from pathlib import Path

from ..core.scoring import describe_threshold


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
    summary = describe_threshold(scores, float(detector.thresholds[0]), detector.config.target_fpr)
    detector.save_pretrained(out or bundle)
    summary.update(bundle=str(out or bundle), version=detector.version, threshold=float(detector.thresholds[0]))
    return summary
