"""ELPV cell pairs: a real set of parts twice as wide as tall, to measure tiles against squashing.

Each image is two cells of one type side by side (600 x 300 px). Training pairs are two training normals;
test pairs are a held-out normal with another held-out normal (good) or with a defective cell on a random
side (defect). Cells come from the fixed ELPV split (:func:`worker.core.data.elpv_split`), so no test cell is
ever in a training pair. The set is written in the MVTec AD layout, one category per cell type
(``OUT/<type>/train/good``, ``OUT/<type>/test/{good,defect}``), which ``invad train OUT/mono OUT/poly`` and
``invad eval BUNDLE OUT`` read.

:func:`compare_layouts` trains and evaluates a class-per-type bundle per seed for each tile layout:
(1, 1) squashes a pair to one square (each cell to half its width), (1, 2) scores each cell as its own
square tile, the image score being the higher of the two.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..core.config import DetectorConfig
from ..core.data import ELPV_TYPES, elpv_split
from ..core.evaluate import evaluate_path
from ..core.train import TrainConfig, train
from .protocol import spread

LAYOUTS = {"squash 1x1": (1, 1), "tiles 1x2": (1, 2)}


def _pair(left: Path, right: Path) -> Image.Image:
    a, b = Image.open(left).convert("L"), Image.open(right).convert("L")
    pair = Image.new("L", (a.width + b.width, max(a.height, b.height)))
    pair.paste(a, (0, 0))
    pair.paste(b, (a.width, 0))
    return pair


def write_pair_set(out: Path, seed: int = 0, limit: int | None = None) -> Path:
    """Write the pair set under ``out`` (replacing an earlier one), at most ``limit`` images per folder
    (default: every cell); returns ``out``."""
    rng = np.random.default_rng(seed)
    train_cells, test_cells = elpv_split()
    shutil.rmtree(out, ignore_errors=True)
    for kind in ELPV_TYPES:
        folders = {name: out / kind / "test" / name for name in ("good", "defect")}
        folders["train"] = out / kind / "train" / "good"
        for folder in folders.values():
            folder.mkdir(parents=True)
        normals = [s.path for s in train_cells if s.cls == kind]
        order = rng.permutation(len(normals))
        for i in range(min(len(order) // 2, limit or len(order))):
            _pair(normals[order[2 * i]], normals[order[2 * i + 1]]).save(folders["train"] / f"{i:04d}.png")
        held_out = [s.path for s in test_cells if s.cls == kind and s.label == 0]
        for i, cell in enumerate(held_out[:limit]):  # each held-out normal beside another one
            other = held_out[(i + 1 + rng.integers(len(held_out) - 1)) % len(held_out)]
            _pair(cell, other).save(folders["good"] / f"{i:04d}.png")
        for i, cell in enumerate([s.path for s in test_cells if s.cls == kind and s.label == 1][:limit]):
            normal = held_out[rng.integers(len(held_out))]
            left, right = (cell, normal) if rng.random() < 0.5 else (normal, cell)
            _pair(left, right).save(folders["defect"] / f"{i:04d}.png")
    return out


def compare_layouts(root: Path, seeds: Sequence[int], out: Path, base: TrainConfig,
                    layouts: dict[str, tuple[int, int]] = LAYOUTS) -> dict:
    """Train and evaluate one bundle per (layout, seed) on the pair set at ``root``; writes ``out`` (JSON)
    and ``out`` with .md, and returns the summary (every run, and mean and spread per layout)."""
    runs = []
    scratch = out.with_suffix(".bundles")
    for name, tiles in layouts.items():
        for seed in seeds:
            clock = time.perf_counter()
            bundle = scratch / f"{name.split()[0]}-{seed}"
            detector, _ = train([root / kind for kind in ELPV_TYPES], bundle,
                                      DetectorConfig(name=bundle.name, tiles=tiles), replace(base, seed=seed),
                                      progress=False)
            trained = time.perf_counter()
            report = evaluate_path(detector, str(root), progress=False)
            runs.append({"layout": name, "tiles": list(tiles), "seed": seed, "image_auroc": report["image_auroc"],
                         "image_ap": report["image_ap"],
                         "component_auroc": report["rows"][0]["component_auroc"],
                         "eval_ms_per_image": 1e3 * (time.perf_counter() - trained) / report["n_images"],
                         "train_seconds": trained - clock, "n_images": report["n_images"],
                         "n_anomalous": report["n_anomalous"]})
            print(json.dumps(runs[-1]), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = {"set": str(root), "seeds": list(seeds), "train_config": asdict(base), "runs": runs,
               "layouts": {name: {key: spread([r[key] for r in runs if r["layout"] == name])
                                  for key in ("image_auroc", "image_ap", "eval_ms_per_image")} for name in layouts}}
    out.write_text(json.dumps(summary, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    lines = [f"ELPV cell pairs (600 x 300 px), seeds {', '.join(map(str, summary['seeds']))}: mean ± std\n",
             "| layout | image AUROC | image AP | eval ms / image |", "|---|---|---|---|"]
    for name, row in summary["layouts"].items():
        lines.append(f"| {name} | {row['image_auroc']['mean']:.3f} ± {row['image_auroc']['std']:.3f} "
                     f"| {row['image_ap']['mean']:.3f} ± {row['image_ap']['std']:.3f} "
                     f"| {row['eval_ms_per_image']['mean']:.0f} |")
    return "\n".join(lines) + "\n"
