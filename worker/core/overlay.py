"""Heat-map overlays: an anomaly map blended over its image, for people and for S3 artefacts."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import encode_png

# A compact perceptual colour ramp (dark blue -> cyan -> yellow -> red), interpolated linearly.
_RAMP = np.array([[0, 0, 80], [0, 90, 200], [0, 200, 200], [240, 230, 0], [255, 90, 0], [200, 0, 0]], np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] of shape (H, W) to uint8 RGB (H, W, 3)."""
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def render_overlay(image: Image.Image, anomaly_map: np.ndarray, *, vmin: float = 0.0,
                   vmax: float | None = None, alpha: float = 0.5) -> Image.Image:
    """Blend ``anomaly_map`` (H', W') over ``image``, resized to the image's size.

    The colour scale is fixed by ``vmin``/``vmax`` (defaults: 0 and the map's maximum) so that
    overlays rendered with the same bounds are comparable across images.
    """
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W), got shape {anomaly_map.shape}")
    high = float(anomaly_map.max()) if vmax is None else vmax
    scaled = (anomaly_map - vmin) / max(high - vmin, 1e-6)
    heat = Image.fromarray(colorize(scaled)).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat, alpha)


def overlay_png(image: Image.Image, anomaly_map: np.ndarray, threshold: float | None = None) -> bytes:
    """PNG bytes of the overlay; with ``threshold`` the colour scale runs from 0 to 2x the threshold,
    so red always means "well past the alarm level" whatever the image."""
    vmax = None if threshold is None or threshold <= 0 else 2.0 * threshold
    return encode_png(render_overlay(image, anomaly_map, vmax=vmax))
