"""Procedurally drawn surface defects on normal cell images, with their masks, for localisation metrics.

Four kinds, drawn with numpy only (never copied from a data set), each as an opacity layer ``alpha``
in [0, 1] that is exactly zero outside its mask:
    crack     a branching dark polyline (random walk, 1-3 px wide), the way cell cracks run;
    dark      soft-edged low-intensity blobs (inactive, disconnected areas);
    finger    short gaps in the thin grid fingers: narrow soft dark bands, axis-aligned;
    scratch   a long thin straight-ish bright or dark line.
The image becomes ``image * (1 - strength * alpha)`` (dark) or ``image + (255 - image) * strength * alpha``
(bright), so pixels change only inside the mask. Everything is determined by the seed.

:func:`write_localisation_set` writes an MVTec AD layout (``test/good``, ``test/<kind>``,
``ground_truth/<kind>/<stem>_mask.png``) that ``invad eval`` reads. It is for localisation (pixel AUROC,
AUPRO) only, never for choosing the image score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

KINDS = ("crack", "dark", "finger", "scratch")


def _segment_distance(ys: np.ndarray, xs: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distance of every pixel (ys, xs grids) to the segment p-q (each (y, x))."""
    d = q - p
    length2 = float(d @ d) or 1e-9
    t = np.clip(((ys - p[0]) * d[0] + (xs - p[1]) * d[1]) / length2, 0.0, 1.0)
    return np.hypot(ys - (p[0] + t * d[0]), xs - (p[1] + t * d[1]))


def _polyline_alpha(shape, points: Sequence[np.ndarray], width: float) -> np.ndarray:
    """Opacity of a polyline of half-width ``width / 2``, anti-aliased over one pixel, zero beyond it."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    distance = np.full(shape, np.inf, np.float32)
    for p, q in zip(points[:-1], points[1:]):
        distance = np.minimum(distance, _segment_distance(ys, xs, p, q))
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, segments: int, step: tuple[float, float],
          turn: float) -> list[np.ndarray]:
    points = [start]
    for _ in range(segments):
        heading += rng.normal(0.0, turn)
        length = rng.uniform(*step)
        points.append(points[-1] + length * np.array([math.sin(heading), math.cos(heading)]))
    return points


def crack_alpha(shape, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    scale = min(h, w)
    start = np.array([rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w])
    heading = rng.uniform(0, 2 * math.pi)
    trunk = _walk(rng, start, heading, int(rng.integers(4, 8)), (0.04 * scale, 0.09 * scale), 0.35)
    alpha = _polyline_alpha(shape, trunk, rng.uniform(1.0, 2.5))
    for _ in range(int(rng.integers(1, 3))):  # branches leave the trunk at an angle
        at = trunk[int(rng.integers(1, len(trunk) - 1))]
        branch = _walk(rng, at, heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2),
                       int(rng.integers(2, 4)), (0.03 * scale, 0.07 * scale), 0.4)
        alpha = np.maximum(alpha, _polyline_alpha(shape, branch, rng.uniform(0.8, 1.8)))
    return alpha


def dark_alpha(shape, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros(shape, np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    for _ in range(int(rng.integers(1, 4))):  # a few overlapping anisotropic blobs near one centre
        y0, x0 = cy + rng.normal(0, 0.06 * h), cx + rng.normal(0, 0.06 * w)
        sy, sx = rng.uniform(0.03, 0.10) * h, rng.uniform(0.03, 0.10) * w
        field = np.maximum(field, np.exp(-0.5 * (((ys - y0) / sy) ** 2 + ((xs - x0) / sx) ** 2)))
    # Soft edge: full opacity in the core, a ramp to exactly zero at 15 % of the peak.
    return np.clip((field - 0.15) / 0.35, 0.0, 1.0)


def finger_alpha(shape, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.zeros(shape, np.float32)
    vertical = bool(rng.integers(2))
    for _ in range(int(rng.integers(1, 4))):
        length, half = rng.uniform(0.03, 0.09) * max(h, w), rng.uniform(1.0, 2.5)
        y0, x0 = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        along, across = (ys - y0, xs - x0) if vertical else (xs - x0, ys - y0)
        band = np.clip(half + 1.0 - np.abs(across), 0.0, 1.0) * np.clip(length / 2 + 1.0 - np.abs(along), 0.0, 1.0)
        alpha = np.maximum(alpha, band)
    return alpha


def scratch_alpha(shape, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    scale = min(h, w)
    start = np.array([rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w])
    heading = rng.uniform(0, 2 * math.pi)
    points = _walk(rng, start, heading, 3, (0.12 * scale, 0.2 * scale), 0.08)
    return _polyline_alpha(shape, points, rng.uniform(0.8, 1.6))


_DRAW = {"crack": crack_alpha, "dark": dark_alpha, "finger": finger_alpha, "scratch": scratch_alpha}


def draw_defect(image: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(defective image, bool mask) of a greyscale uint8 image (H, W); the same seed gives the same result."""
    if kind not in _DRAW:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {', '.join(KINDS)}")
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8 or min(image.shape) < 8:
        raise ValueError(f"draw_defect needs a greyscale uint8 image of at least 8 x 8, got {image.dtype} {image.shape}")
    rng = np.random.default_rng(seed)
    alpha = _DRAW[kind](image.shape, rng).astype(np.float32)
    if not alpha.any():  # a draw that left the frame: fall back to a blob in the middle
        alpha = dark_alpha(image.shape, np.random.default_rng(seed + 1))
    pixels = image.astype(np.float32)
    bright = kind == "scratch" and bool(rng.integers(2))
    strength = rng.uniform(0.35, 0.7)
    if bright:
        out = pixels + (255.0 - pixels) * strength * alpha
    else:
        out = pixels * (1.0 - strength * alpha)
    mask = alpha > 0
    out = np.where(mask, np.clip(np.rint(out), 0, 255), pixels).astype(np.uint8)
    return out, mask


def localisation_sources(normals: Sequence[Path], seed: int = 0, n_good: int = 100,
                         per_kind: int = 50) -> dict[str, Path]:
    """{image path relative to the set's root: the normal image it is made from} of the set
    :func:`write_localisation_set` writes with the same arguments.

    Raises:
        ValueError: fewer normal images than the set needs.
    """
    needed = n_good + per_kind * len(KINDS)
    if len(normals) < needed:
        raise ValueError(f"the localisation set needs {needed} normal images, got {len(normals)}; "
                         "lower n_good or per_kind")
    chosen = [Path(normals[i]) for i in np.random.default_rng(seed).permutation(len(normals))[:needed]]
    plan = {f"test/good/{i:04d}.png": chosen[i] for i in range(n_good)}
    for k, kind in enumerate(KINDS):
        plan.update({f"test/{kind}/{j:04d}.png": chosen[n_good + k * per_kind + j] for j in range(per_kind)})
    return plan


def write_localisation_set(out: str | Path, normals: Sequence[Path], seed: int = 0, n_good: int = 100,
                           per_kind: int = 50) -> Path:
    """An MVTec AD category at ``out`` made of held-out normal images: ``n_good`` left untouched, then
    ``per_kind`` with each kind of defect. Returns ``out``.

    Raises:
        ValueError: fewer normal images than the set needs.
    """
    out = Path(out)
    for kind in ("good", *KINDS):
        (out / "test" / kind).mkdir(parents=True, exist_ok=True)
        if kind != "good":
            (out / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
    for relative, source in localisation_sources(normals, seed, n_good, per_kind).items():
        image = np.asarray(Image.open(source).convert("L"))
        kind, stem = Path(relative).parent.name, Path(relative).stem
        if kind != "good":
            k, j = KINDS.index(kind), int(stem)
            image, mask = draw_defect(image, kind, seed * 100_003 + k * 1_009 + j)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "ground_truth" / kind / f"{stem}_mask.png")
        Image.fromarray(image).save(out / relative)
    return out
