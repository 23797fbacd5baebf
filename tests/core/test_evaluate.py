"""Evaluation on what real images produce: huge and non-finite map values, constant maps, odd sizes."""

import shutil

import numpy as np
import pytest
from PIL import Image

from worker.core.data import test_samples as labelled_samples  # not collected as a test
from worker.core.detector import Detector
from worker.core.evaluate import evaluate
from worker.core.metrics import aupro, pixel_auroc

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@pytest.fixture
def detector(tiny_bundle):
    return Detector.from_pretrained(tiny_bundle, "cpu")


def _row(report, prefix):
    return next(row for row in report["rows"] if row["method"].startswith(prefix))


def test_maps_beyond_float16_range_keep_their_pixel_metrics(detector, texture_category):
    """A per-position Gaussian with a near-constant training channel reaches millions on a real image."""
    samples = labelled_samples(texture_category)
    before = evaluate(detector, samples, compare=True, progress=False)
    detector.gauss_std.mul_(1e-6)  # the same maps, a million times larger
    after = evaluate(detector, samples, compare=True, progress=False)
    gauss_before, gauss_after = _row(before, "per-position gaussian"), _row(after, "per-position gaussian")
    assert min(gauss_after["scores"]) > FLOAT16_MAX, "the test needs maps past float16's range"
    assert gauss_after["non_finite"] == {"scores": 0, "map_cells": 0}
    # AUROC and AUPRO depend on the order of values only: scaling must leave them unchanged.
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert gauss_after[key] == pytest.approx(gauss_before[key], abs=1e-4), key
    assert 0.5 < gauss_after["pixel_auroc"] <= 1.0


def test_non_finite_values_are_ranked_and_counted_not_fatal(detector, texture_category):
    samples = labelled_samples(texture_category)
    detector.gauss_mean[0, 0, 0, 0] = float("nan")  # every image's Gaussian map gets one NaN cell
    report = evaluate(detector, samples, compare=True, progress=False)
    gauss = _row(report, "per-position gaussian")
    assert gauss["non_finite"] == {"scores": len(samples), "map_cells": len(samples)}
    assert gauss["image_auroc"] == pytest.approx(0.5), "no image score is left to rank"
    assert np.isfinite([gauss["pixel_auroc"], gauss["aupro"]]).all()
    # The same statistics standardise the denoiser's input (feature_norm "position"): every InvAD score
    # and map turns NaN, is counted, and the report is still written.
    assert detector.config.feature_norm == "position"
    invad = _row(report, "invad")
    assert invad["non_finite"]["scores"] == len(samples) and invad["non_finite"]["map_cells"] > 0
    assert invad["image_auroc"] == pytest.approx(0.5)


def test_images_and_masks_of_other_sizes(detector, texture_category, tmp_path):
    """Non-square images of several sizes, masks stored at half their image's size."""
    category = tmp_path / "odd"
    shutil.copytree(texture_category, category)
    sizes = [(160, 96), (96, 200), (250, 130), (128, 128)]
    for i, path in enumerate(sorted((category / "test").rglob("*.png"))):
        width, height = sizes[i % len(sizes)]
        Image.open(path).resize((width, height)).save(path)
        mask = category / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if mask.is_file():
            Image.open(mask).resize((width // 2, height // 2), Image.NEAREST).save(mask)
    report = evaluate(detector, labelled_samples(category), compare=True, progress=False)
    assert report["image_auroc"] >= 0.8 and report["pixel_auroc"] > 0.7
    assert all(row["pixel_auroc"] is not None and row["aupro"] is not None for row in report["rows"])


def test_empty_masks_give_no_pixel_metrics_instead_of_an_error(detector, texture_category, tmp_path):
    category = tmp_path / "blank"
    shutil.copytree(texture_category, category)
    for mask in (category / "ground_truth").rglob("*.png"):
        Image.new("L", Image.open(mask).size).save(mask)
    report = evaluate(detector, labelled_samples(category), progress=False)
    assert report["pixel_auroc"] is None and report["aupro"] is None and report["image_auroc"] >= 0.8


def test_constant_and_perfect_maps():
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 4:12, 4:12] = True
    masks[1, 20:30, 2:6] = True
    assert pixel_auroc(np.zeros(masks.shape, np.float32), masks) == 0.5
    assert aupro(np.zeros(masks.shape, np.float32), masks) == pytest.approx(0.15), "what random scores give"
    assert aupro(masks.astype(np.float32) * 1e30, masks) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        aupro(np.zeros((2, 16, 16), np.float32), masks)
    with pytest.raises(ValueError, match="NaN or infinity"):
        pixel_auroc(np.full(masks.shape, np.inf, np.float32), masks)


def test_aupro_needs_no_numpy_2(monkeypatch):
    """numpy 1.x has no np.trapezoid; pyproject allows numpy >= 1.24."""
    monkeypatch.delattr(np, "trapezoid", raising=False)
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 40, 40), bool)
    masks[:, 10:20, 10:20] = True
    maps = rng.random(masks.shape).astype(np.float32) + 0.5 * masks
    value = aupro(maps, masks)
    assert 0.15 < value < 1.0
