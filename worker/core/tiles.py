"""Tiles: how a bundle sees parts that are not square without squashing them.

A bundle's ``tiles`` = (rows, cols) is a fixed layout of square tiles of ``image_size`` pixels. Every
image is resized to (rows * size) x (cols * size) pixels (one resize, :func:`~worker.core.images.model_input`)
and cut into rows * cols squares, which the backbone, the denoiser and the per-position statistics see as
separate samples. An image's score is the highest score among its tiles; its map is the tiles' maps put
back side by side. (1, 1) is the plain square input.

Tiles are image-major everywhere: rows ``i * T .. i * T + T - 1`` of a batch belong to image ``i``, in
reading order (left to right, then top to bottom).
"""

from __future__ import annotations

from typing import Iterable

import torch

MAX_TILES_PER_SIDE = 8


def check_layout(layout: tuple[int, int]) -> None:
    if len(layout) != 2 or not all(isinstance(n, int) and 1 <= n <= MAX_TILES_PER_SIDE for n in layout):
        raise ValueError(f"tiles must be (rows, cols) with 1..{MAX_TILES_PER_SIDE} tiles per side, got {layout}")


def layout_for(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The layout that keeps images of these (width, height) sizes closest to their shape: the median
    aspect ratio, rounded to whole tiles along the long side. Square-ish images (ratio < 1.5) get (1, 1)."""
    ratios = sorted(w / h for w, h in sizes)
    if not ratios:
        raise ValueError("no images to choose a tile layout from")
    ratio = ratios[len(ratios) // 2]
    count = min(MAX_TILES_PER_SIDE, int(max(ratio, 1.0 / ratio) + 0.5))  # halves round up: 2.5 -> 3
    return (1, count) if ratio >= 1.0 else (count, 1)


def split_tiles(pixels: torch.Tensor, layout: tuple[int, int]) -> torch.Tensor:
    """(B, C, rows * s, cols * s) -> (B * rows * cols, C, s, s), image-major, tiles in reading order."""
    rows, cols = layout
    if rows == cols == 1:
        return pixels
    b, c, height, width = pixels.shape
    s = height // rows
    tiles = pixels.reshape(b, c, rows, s, cols, s).permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, s, s)
    return tiles.reshape(b * rows * cols, c, s, s)


def join_tiles(maps: torch.Tensor, layout: tuple[int, int]) -> torch.Tensor:
    """(B * rows * cols, h, w) tile maps -> (B, rows * h, cols * w): the inverse of :func:`split_tiles`."""
    rows, cols = layout
    if rows == cols == 1:
        return maps
    n, h, w = maps.shape
    grid = maps.reshape(n // (rows * cols), rows, cols, h, w).permute(0, 1, 3, 2, 4)  # (B, rows, h, cols, w)
    return grid.reshape(n // (rows * cols), rows * h, cols * w)


def image_max(values: torch.Tensor, count: int) -> torch.Tensor:
    """(B * count,) per-tile values -> (B,) the highest of each image's tiles."""
    return values if count == 1 else values.reshape(-1, count).amax(dim=1)
