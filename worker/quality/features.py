"""Raw backbone features of image lists, cached on disk so every hypothesis and seed reuses one extraction.

Cache: ``$INVAD_CACHE/elpv-features/<backbone>-<size>-<strides>/<name>-<digest>.pt`` (default
``~/.cache/invad``), where the digest covers the image paths and file sizes. Never committed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from ..core.config import DetectorConfig
from ..core.train import TrainConfig, build_detector, extract_features


def cache_root() -> Path:
    return Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad")) / "elpv-features"


def raw_features(config: DetectorConfig, name: str, paths: Sequence[Path], batch: int = 16,
                 progress: bool = True, augment: str = "none") -> torch.Tensor:
    """Unstandardised features (N, C, g, g) float32 of ``paths`` under ``config``'s backbone, cached;
    (V * N, C, g, g), view-major, with the V views of ``augment`` (:func:`worker.core.train.extract_features`).
    With a map backbone, each backbone's features (cached on their own) concatenated, as the detector's."""
    if config.map_backbone:
        alone = replace(config, map_backbone="")
        return torch.cat([raw_features(alone, name, paths, batch, progress, augment),
                          raw_features(replace(alone, backbone=config.map_backbone), name, paths, batch, progress,
                                       augment)], dim=1)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}|{Path(path).stat().st_size}\n".encode())
    grid = f"-g{config.grid_stride}" if config.grid_stride else ""
    folder = cache_root() / f"{config.backbone}-{config.image_size}-{'_'.join(map(str, config.strides))}{grid}"
    views = "" if augment == "none" else f"-{augment}"
    file = folder / f"{name}{views}-{digest.hexdigest()[:16]}.pt"
    if file.is_file():
        return torch.load(file)
    folder.mkdir(parents=True, exist_ok=True)
    detector = build_detector(config, TrainConfig())  # untrained: features() returns raw features
    features = extract_features(detector, list(paths), batch, name, progress, augment)
    staging = file.with_suffix(".tmp")
    torch.save(features, staging)
    staging.rename(file)
    return features
