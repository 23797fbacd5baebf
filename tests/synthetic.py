"""Generated industrial-looking textures with drawn defects, so the suite needs no download."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A woven-looking grey texture (H, W) in [0, 255]: two crossed gratings with random phase + noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 8
    phase = rng.uniform(0, 2 * np.pi, size=2)
    base = 128 + 40 * np.sin(2 * np.pi * x / period + phase[0]) * np.sin(2 * np.pi * y / period + phase[1])
    base += rng.normal(0, 6, size=(size, size))
    return base.clip(0, 255)


def draw_defect(image: Image.Image, rng: np.random.Generator, kind: str) -> tuple[Image.Image, np.ndarray]:
    """Draw a scratch, spot or hole; returns the image and its boolean mask (H, W)."""
    size = image.size[0]
    mask = Image.new("L", image.size, 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.25 * size, 0.75 * size, size=2)
    r = size * rng.uniform(0.06, 0.1)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 2.5 * r, np.sin(angle) * 2.5 * r
        line = [(cx - dx, cy - dy), (cx + dx, cy + dy)]
        width = max(2, size // 40)
        draw.line(line, fill=(250, 250, 250), width=width)
        mask_draw.line(line, fill=255, width=width)
    elif kind == "spot":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=(30, 30, 30))
        mask_draw.ellipse(box, fill=255)
    elif kind == "hole":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=(0, 0, 0), outline=(255, 255, 255), width=max(1, size // 64))
        mask_draw.ellipse(box, fill=255)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return image, np.asarray(mask) > 0


def make_texture_images(n: int, defect: bool = False, size: int = 128, seed: int = 0):
    """``n`` RGB images; with ``defect`` each has one defect. Returns (images, masks or None)."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    kinds = ("scratch", "spot", "hole")
    for i in range(n):
        image = Image.fromarray(texture(rng, size).astype(np.uint8), mode="L").convert("RGB")
        if defect:
            image, mask = draw_defect(image, rng, kinds[i % len(kinds)])
            masks.append(mask)
        images.append(image)
    return images, (masks if defect else None)


def write_mvtec_category(root, n_train: int = 40, n_good: int = 8, n_bad: int = 8, size: int = 128, seed: int = 0):
    """An MVTec AD layout category under ``root`` with generated images and masks; returns its path."""
    from pathlib import Path

    root = Path(root)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    train, _ = make_texture_images(n_train, size=size, seed=seed)
    for i, im in enumerate(train):
        im.save(root / "train/good" / f"{i:03d}.png")
    good, _ = make_texture_images(n_good, size=size, seed=seed + 1)
    for i, im in enumerate(good):
        im.save(root / "test/good" / f"{i:03d}.png")
    bad, masks = make_texture_images(n_bad, defect=True, size=size, seed=seed + 2)
    for i, (im, mask) in enumerate(zip(bad, masks)):
        im.save(root / "test/spot" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth/spot" / f"{i:03d}_mask.png")
    return root
