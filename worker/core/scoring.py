"""Anomaly scores of an inverted latent, and their calibration on normal images.

Pure tensor functions. For z = x_S (B, C, h, w) from :func:`worker.core.inversion.ddim_invert`:
    NLL(z)    = 0.5 * ||z||^2 + (d / 2) * log(2 pi),  d = C * h * w       (Gaussian prior N(0, I))
    m(i, j)   = ||z[:, i, j]||_2                                          (latent-norm map)
    range(z)  = max(m) - min(m)                                           (spatial range)
    map_max   = max((m - mu_ij) / sigma_ij)  with mu, sigma per position fitted on normal latents;
    map_top   = the mean of that map's highest 1/16 of positions (16 of a 16 x 16 grid).
The paper min-max normalises NLL and range over the test set; we standardise every component with
statistics of held-out normal images instead, so a score means the same thing online and offline.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta

from .images import pixel_shape

COMPONENTS = ("nll", "range", "map_max", "map_mean", "map_top")
# Components of a map: with a map backbone each is also computed on its map, as a column of its own
# named with this prefix ("map_backbone.map_top"), standardised and averaged like the others.
MAP_COMPONENTS = ("map_max", "map_mean", "map_top")
MAP_BACKBONE_PREFIX = "map_backbone."
# map_top's share of the grid: 16 positions of 16 x 16. A defect covers a few positions, and one noisy
# position (often at the border) moves the maximum but not this mean; on ELPV NLL + map_top beat
# NLL + map_max in each of 3 seeds, with either feature_norm (docs/BENCHMARKS.md, sixth round).
MAP_TOP_FRACTION = 1 / 16


def latent_nll(z: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of z (B, C, h, w) under N(0, I), summed over all entries: (B,)."""
    d = z[0].numel()
    return 0.5 * z.flatten(1).pow(2).sum(dim=1) + 0.5 * d * math.log(2 * math.pi)


def latent_norm_map(z: torch.Tensor) -> torch.Tensor:
    """Per-position L2 norm over channels: (B, C, h, w) -> (B, h, w)."""
    return z.pow(2).sum(dim=1).sqrt()


def spatial_range(m: torch.Tensor) -> torch.Tensor:
    """max(m) - min(m) per image: (B, h, w) -> (B,)."""
    flat = m.flatten(1)
    return flat.max(dim=1).values - flat.min(dim=1).values


def image_components(maps: torch.Tensor, nll: torch.Tensor | None = None,
                     raw_norm: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every image-level component available for a (B, h, w) map (and the latent's NLL and raw norm map)."""
    flat = maps.flatten(1)
    k = max(1, round(flat.shape[1] * MAP_TOP_FRACTION))
    components = {"map_max": flat.max(dim=1).values, "map_mean": flat.mean(dim=1),
                  "map_top": flat.topk(k, dim=1).values.mean(dim=1)}
    if nll is not None:
        components["nll"] = nll
    if raw_norm is not None:
        components["range"] = spatial_range(raw_norm)
    return components


def score_components(maps: torch.Tensor, nll: torch.Tensor, raw_norm: torch.Tensor,
                     map_backbone_maps: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The components of an inversion's per-position standardised map (B, h, w), NLL and raw norm map,
    and with a map backbone its standardised map's :data:`MAP_COMPONENTS` (prefixed with
    :data:`MAP_BACKBONE_PREFIX`); and the anomaly map: the map, or the mean of both maps."""
    components = image_components(maps, nll, raw_norm)
    if map_backbone_maps is None:
        return components, maps
    theirs = image_components(map_backbone_maps)
    components.update({MAP_BACKBONE_PREFIX + name: theirs[name] for name in MAP_COMPONENTS})
    return components, (maps + map_backbone_maps) / 2


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(round(4 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def upsample_map(m: torch.Tensor, size: int | tuple[int, int], sigma: float = 0.0) -> torch.Tensor:
    """Bilinear upsampling of (B, h, w) maps to (B, H, W) = ``size`` (one side for a square), then optional
    Gaussian smoothing (pixels)."""
    up = F.interpolate(m[:, None].float(), size=pixel_shape(size), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = _gaussian_kernel(sigma, up.device, up.dtype)
        pad = kernel.numel() // 2
        up = F.conv2d(F.pad(up, (pad, pad, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        up = F.conv2d(F.pad(up, (0, 0, pad, pad), mode="replicate"), kernel.view(1, 1, -1, 1))
    return up[:, 0]  # (B, H, W)


def fit_standardiser(values: torch.Tensor, min_std: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the first axis (N, ...) -> (...), (...)."""
    if values.shape[0] < 2:
        raise ValueError(f"need at least 2 normal samples to fit statistics, got {values.shape[0]}")
    return values.mean(dim=0), values.std(dim=0).clamp_min(min_std)


def class_standardisers(values: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_standardiser` of ``values`` (N, ...) per class ``labels`` (N,): two (classes, ...) tensors."""
    pairs = [fit_standardiser(values[labels == k]) for k in range(classes)]
    return torch.stack([mean for mean, _ in pairs]), torch.stack([std for _, std in pairs])


def threshold_at_fpr(normal_scores: np.ndarray, target_fpr: float, min_tail: int = 5) -> float:
    """The score above which a fraction ``target_fpr`` of normal images is expected to lie.

    With enough normals to see the tail (``n * target_fpr >= min_tail``) this is the empirical quantile.
    With fewer (typically a few dozen calibration images at 1 %) the empirical maximum is an optimistic
    estimate, so the threshold is the larger of it and a Gaussian fit's quantile, mean + z * std.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size < 2:
        raise ValueError(f"need at least 2 normal scores to set a threshold, got {scores.size}")
    empirical = float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
    if scores.size * target_fpr >= min_tail:
        return empirical
    z = NormalDist().inv_cdf(1.0 - target_fpr)
    return max(empirical, float(scores.mean() + z * scores.std(ddof=1)))


def threshold_f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > threshold`` on a labelled set (labels: 1 = anomalous)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("F1-max calibration needs both normal and anomalous validation images")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels)
    fp = np.cumsum(~sorted_labels)
    precision = tp / (tp + fp)
    recall = tp / labels.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # Only cut between distinct scores; the threshold sits halfway to the next lower score.
    distinct = np.r_[sorted_scores[1:] < sorted_scores[:-1], True]
    best = int(np.argmax(np.where(distinct, f1, -1.0)))
    below = sorted_scores[best + 1] if best + 1 < len(sorted_scores) else sorted_scores[best] - 1.0
    return float((sorted_scores[best] + below) / 2), float(f1[best])


MIN_CALIBRATION_IMAGES = 100


# Calibration: a threshold set on n normals with m above it has a true false-positive rate distributed as
# Beta(m + 1, n - m) (continuous scores); its 95 % quantile is what the count of normals can promise.
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


def describe_threshold(scores: Sequence[float], threshold: float, target_fpr: float) -> dict:
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
