"""Detection and segmentation metrics (image AUROC, AP, F1-max, pixel AUROC, AUPRO).

AUROC and AP come from scikit-learn (well tested, handles ties); AUPRO follows Bergmann et al.,
"The MVTec Anomaly Detection Dataset" (IJCV 2021): the mean per-region overlap of each ground-truth
connected component, integrated over the false-positive rate of normal pixels up to ``max_fpr`` and
divided by ``max_fpr``. Plain numpy otherwise (no ``np.trapezoid``, which numpy 1.x lacks).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from .scoring import threshold_f1_max


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC, AP and F1-max of image scores (labels: 1 = anomalous)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, int)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    _, f1 = threshold_f1_max(scores, labels)
    return {"auroc": float(roc_auc_score(labels, scores)), "ap": float(average_precision_score(labels, scores)),
            "f1_max": f1}


def _check_maps(maps: np.ndarray, masks: np.ndarray) -> None:
    if maps.shape != masks.shape:
        raise ValueError(f"anomaly maps {maps.shape} and masks {masks.shape} must have the same shape (N, H, W)")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps contain NaN or infinity")


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, max_pixels: int = 20_000_000, seed: int = 0) -> float:
    """AUROC over all pixels of (N, H, W) maps against boolean masks; uniformly subsampled past ``max_pixels``."""
    _check_maps(maps, masks)
    scores, truth = maps.reshape(-1), masks.reshape(-1).astype(bool)
    if scores.size > max_pixels:
        keep = np.random.default_rng(seed).choice(scores.size, max_pixels, replace=False)
        scores, truth = scores[keep], truth[keep]
    if truth.all() or not truth.any():
        raise ValueError("pixel AUROC needs both defect and normal pixels")
    return float(roc_auc_score(truth, scores))


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr``.

    A map that does not separate at all (a constant one) scores what random scores do, ``max_fpr / 2``
    (0.15 at the default 0.3).
    """
    maps = np.asarray(maps, np.float32)
    masks = np.asarray(masks, bool)
    _check_maps(maps, masks)
    regions = []  # (image index, flat pixel indices) of each ground-truth connected component
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask)
        regions += [(i, np.flatnonzero(labelled == k)) for k in range(1, count + 1)]
    if not regions:
        raise ValueError("AUPRO needs at least one defect region")
    normal_scores = maps[~masks]
    thresholds = np.unique(np.quantile(maps, np.linspace(0, 1, num_thresholds)))[::-1]
    flat = maps.reshape(len(maps), -1)
    fprs, pros = [0.0], [0.0]
    for threshold in thresholds:
        fpr = float((normal_scores > threshold).mean())
        pro = float(np.mean([(flat[i, idx] > threshold).mean() for i, idx in regions]))
        fprs.append(fpr)
        pros.append(pro)
        if fpr > max_fpr:
            break
    else:  # ties at the lowest score kept the rate within max_fpr: below every score, everything is flagged
        fprs.append(1.0)
        pros.append(1.0)
    fprs, pros = np.array(fprs), np.array(pros)
    if fprs[-1] > max_fpr:  # interpolate the last segment to end exactly at max_fpr
        pros[-1] = np.interp(max_fpr, fprs[-2:], pros[-2:])
        fprs[-1] = max_fpr
    area = np.sum(np.diff(fprs) * (pros[1:] + pros[:-1]) / 2)  # trapezoidal rule
    return float(area / max_fpr)
