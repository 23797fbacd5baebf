"""``invad eval``: metrics of a bundle on a labelled test set, with the two baselines side by side.

Backbone features are computed once per batch and shared by every method, so the rows of one report
differ only in what they measure. Throughput per row counts decoding, the backbone and that method;
upsampling grid maps to pixel maps, the same for every method, is reported once (``ms_per_image``).

Real images break naive evaluation in a few ways, each handled here: maps and scores are kept in
float32 (float16 overflows past 65,504, which a per-position Gaussian reaches on real surfaces);
pixel maps are rebuilt from the grid maps one method at a time, so memory stays small; a non-finite
score or map value (a method that breaks on an image) is ranked as the most anomalous and counted in
its row's ``non_finite``; images and masks of any size are resized to the bundle's input shape.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_curve
from tqdm.auto import tqdm

from .data import Sample, test_samples
from .detector import Detector
from .images import load_image, load_mask, pixel_shape
from .metrics import aupro, image_metrics, pixel_auroc
from .overlay import render_overlay
from .scoring import upsample_map


def _methods(detector: Detector, compare: bool, steps: Sequence[int] | None) -> list[tuple[str, str, int | None]]:
    """(row name, scoring kind, steps) for every row of the report; the bundle's own row first."""
    rows = [(f"invad S={detector.config.steps}", "inversion", None)]
    rows += [(f"invad S={s}", "inversion", s) for s in (steps or []) if s != detector.config.steps]
    if compare:
        rc = detector.config.reconstruction
        rows += [(f"reconstruction t={rc.t_start} S={rc.steps}", "reconstruction", None),
                 ("per-position gaussian", "gaussian", None)]
    return rows


def rank_safe(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``values`` with NaN and +inf set just above the largest finite value, -inf just below the smallest.

    Returns the float32 tensor and how many entries were replaced. A method that produces no number for
    an image thereby counts as flagging it, which costs it on normal images and is never hidden.
    """
    values = values.float()
    bad = ~torch.isfinite(values)
    count = int(bad.sum())
    if count == 0:
        return values, 0
    finite = values[~bad]
    high, low = (finite.max(), finite.min()) if finite.numel() else (torch.tensor(0.0), torch.tensor(0.0))
    above = torch.nextafter(high, torch.tensor(float("inf")))
    below = torch.nextafter(low, torch.tensor(float("-inf")))
    out = torch.where(torch.isnan(values) | torch.isposinf(values), above, values)
    return torch.where(torch.isneginf(values), below, out), count


def pixel_maps(grid_maps: torch.Tensor, shape: int | tuple[int, int], sigma: float, batch: int = 64) -> np.ndarray:
    """float32 pixel maps (N, H, W) = ``shape`` (one side for a square) of grid maps (N, h, w), upsampled
    a batch at a time."""
    shape = pixel_shape(shape)
    out = np.empty((len(grid_maps), *shape), np.float32)
    for start in range(0, len(grid_maps), batch):
        out[start:start + batch] = upsample_map(grid_maps[start:start + batch], shape, sigma).numpy()
    return out


@torch.no_grad()
def evaluate(detector: Detector, samples: Sequence[Sample], compare: bool = False,
             steps: Sequence[int] | None = None, batch_size: int = 16, progress: bool = True) -> dict:
    """Run every method over ``samples``; returns the report dict (first row = the bundle as configured).

    Pixel AUROC and AUPRO are reported where masks mark at least one defect pixel, else None.
    """
    methods = _methods(detector, compare, steps)
    has_masks = any(s.mask is not None for s in samples)
    shape = detector.config.input_shape  # (H, W): maps and masks at the size the tiles were cut from
    seconds = {"decode": 0.0, "backbone": 0.0, **{name: 0.0 for name, _, _ in methods}}
    scores = {name: [] for name, _, _ in methods}
    components = {name: {} for name, _, _ in methods}
    grid_maps = {name: [] for name, _, _ in methods}  # (B, rows * g, cols * g) float32 each
    masks = []
    sync = torch.cuda.synchronize if detector.device.type == "cuda" else (lambda: None)
    for start in tqdm(range(0, len(samples), batch_size), desc="eval", unit="batch", disable=not progress):
        batch = samples[start:start + batch_size]
        clock = time.perf_counter()
        images = [load_image(s.path) for s in batch]
        pixels = detector.to_pixels(images)
        seconds["decode"] += time.perf_counter() - clock
        clock = time.perf_counter()
        x0 = detector.features(pixels)
        sync()
        seconds["backbone"] += time.perf_counter() - clock
        labels = detector.tile_labels(
            detector.class_indices([s.cls for s in batch] if len(detector.classes) > 1 else None, len(batch)))
        for name, kind, s in methods:
            clock = time.perf_counter()
            comps, grid_map = detector.score_features(x0, labels, kind, s)
            score = detector.combine(comps, labels) if (kind == "inversion" and s is None) else comps["map_max"]
            sync()
            seconds[name] += time.perf_counter() - clock
            scores[name].append(detector.per_image(score).float().cpu())
            grid_maps[name].append(detector.image_maps(grid_map).float().cpu())
            for key, value in comps.items():
                components[name].setdefault(key, []).append(detector.per_image(value).float().cpu())
        if has_masks:
            masks += [load_mask(s.mask, shape[::-1]) if s.mask else np.zeros(shape, bool) for s in batch]
    labels = np.array([s.label for s in samples])
    mask_array = np.stack(masks) if has_masks else None
    pixel_metrics = mask_array is not None and bool(mask_array.any())
    rows = []
    for name, kind, s in methods:
        score, bad_scores = rank_safe(torch.cat(scores[name]))
        grid, bad_cells = rank_safe(torch.cat(grid_maps[name]))
        grid_maps[name] = grid
        row = {"method": name, "kind": kind, "steps": s or (detector.config.steps if kind == "inversion" else None),
               **{f"image_{k}": v for k, v in image_metrics(score.numpy(), labels).items()},
               "component_auroc": {k: image_metrics(rank_safe(torch.cat(v))[0].numpy(), labels)["auroc"]
                                   for k, v in components[name].items()},
               "pixel_auroc": None, "aupro": None,
               "non_finite": {"scores": bad_scores, "map_cells": bad_cells},
               "images_per_second": len(samples) / (seconds["decode"] + seconds["backbone"] + seconds[name]),
               "method_ms_per_image": 1e3 * seconds[name] / len(samples)}
        if pixel_metrics:
            clock = time.perf_counter()
            pixel = pixel_maps(grid, shape, detector.config.map_sigma)
            seconds.setdefault("pixel_map", time.perf_counter() - clock)  # the same work for every method
            row.update(pixel_auroc=pixel_auroc(pixel, mask_array), aupro=aupro(pixel, mask_array))
            del pixel
        row["scores"] = score.tolist()
        rows.append(row)
    head = rows[0]
    return {
        "model": {"name": detector.name, "version": detector.version, "steps": detector.config.steps,
                  "backbone": detector.config.backbone, "image_size": detector.config.image_size,
                  "tiles": list(detector.config.tiles), "input_shape": list(shape)},
        "n_images": len(samples), "n_anomalous": int(labels.sum()),
        "image_auroc": head["image_auroc"], "image_ap": head["image_ap"], "image_f1_max": head["image_f1_max"],
        "pixel_auroc": head["pixel_auroc"], "aupro": head["aupro"], "images_per_second": head["images_per_second"],
        "ms_per_image": {key: 1e3 * seconds[key] / len(samples) for key in ("decode", "backbone", "pixel_map")
                         if key in seconds},
        "device": str(detector.device), "rows": rows,
        "_plot": {"labels": labels, "samples": list(samples), "grid_maps": grid_maps[methods[0][0]],
                  "sigma": detector.config.map_sigma, "masks": mask_array},
    }


def markdown_table(report: dict) -> str:
    def fmt(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| method | image AUROC | AP | F1-max | pixel AUROC | AUPRO | images/s | method ms/img |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {fmt(r['image_auroc'])} | {fmt(r['image_ap'])} | {fmt(r['image_f1_max'])} | "
                     f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {r['images_per_second']:.1f} | "
                     f"{r['method_ms_per_image']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | Path) -> dict:
    """Write OUT.json, OUT.md (table), OUT_roc.png and OUT_examples.png; returns the paths written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = report.pop("_plot")
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = out.with_suffix(".md")
    table.write_text(f"# Evaluation of {report['model']['name']} ({report['model']['version']})\n\n"
                     f"{report['n_images']} images, {report['n_anomalous']} anomalous, device {report['device']}\n\n"
                     + markdown_table(report))
    paths = {"json": str(out), "markdown": str(table)}
    paths.update(_plots(report, plot, out))
    return paths


def _plots(report: dict, plot: dict, out: Path) -> dict:
    # matplotlib only for the report's figures: importing pyplot costs seconds that scoring never needs.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = plot["labels"]
    figure, axis = plt.subplots(figsize=(5, 5))
    for row in report["rows"]:
        fpr, tpr, _ = roc_curve(labels, row["scores"])
        axis.plot(fpr, tpr, label=f"{row['method']} ({row['image_auroc']:.3f})")
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set(xlabel="false-positive rate", ylabel="true-positive rate", title="image-level ROC")
    axis.legend(fontsize=7, loc="lower right")
    roc_path = out.with_name(out.stem + "_roc.png")
    figure.savefig(roc_path, dpi=120, bbox_inches="tight")
    plt.close(figure)

    # Grid: the 4 highest-scoring anomalous images and the 2 highest-scoring normal ones (hardest negatives).
    scores = np.array(report["rows"][0]["scores"])
    order = np.argsort(-scores)
    chosen = [i for i in order if labels[i] == 1][:4] + [i for i in order if labels[i] == 0][:2]
    columns = 3 if plot["masks"] is not None else 2
    figure, axes = plt.subplots(len(chosen), columns, figsize=(3 * columns, 3 * len(chosen)), squeeze=False)
    height, width = report["model"]["input_shape"]
    pixel_maps = upsample_map(plot["grid_maps"][chosen], (height, width), plot["sigma"]).numpy()
    for row, index in enumerate(chosen):
        sample = plot["samples"][index]
        shown = load_image(sample.path).resize((width, height))
        axes[row, 0].imshow(shown)
        axes[row, 0].set_title(f"{sample.defect} score {scores[index]:.2f}", fontsize=8)
        axes[row, 1].imshow(render_overlay(shown, pixel_maps[row]))
        axes[row, 1].set_title("anomaly map", fontsize=8)
        if columns == 3:
            axes[row, 2].imshow(plot["masks"][index], cmap="gray")
            axes[row, 2].set_title("ground truth", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    grid_path = out.with_name(out.stem + "_examples.png")
    figure.savefig(grid_path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return {"roc": str(roc_path), "examples": str(grid_path)}


def evaluate_path(detector: Detector, data: str, **kwargs) -> dict:
    """:func:`evaluate` on the labelled data of every class of the bundle (see :func:`test_samples`)."""
    return evaluate(detector, test_samples(data, detector.classes), **kwargs)
