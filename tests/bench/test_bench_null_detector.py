"""The cost-free detector of the plumbing-ceiling bench: its contract, and that the real loop serves it."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from synthetic import make_texture_images
from worker.bench.null_detector import THRESHOLD, NullDetector
from worker.pipeline.cli import run_embedded
from worker.pipeline.models import ModelRegistry


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1.0])
def test_flags_exactly_the_fraction_whatever_the_batches(fraction):
    detector = NullDetector(fraction, map_size=8)
    labels = np.concatenate([detector.predict([None] * size).pred_label for size in (3, 7, 1, 29, 40)])  # 80 images
    assert labels.sum() == round(80 * fraction)
    if 0 < fraction < 1:  # spread out, not bunched at the start
        assert labels[: int(1 / fraction) - 1].sum() == 0 and labels[int(1 / fraction) - 1]


def test_prediction_follows_the_detector_contract():
    prediction = NullDetector(0.5, map_size=16).predict([None] * 4, ["any"] * 4)
    assert prediction.anomaly_map.shape == (4, 16, 16) and prediction.anomaly_map.dtype == np.float32
    assert prediction.pred_score.shape == prediction.threshold.shape == (4,)
    np.testing.assert_array_equal(prediction.pred_label, prediction.pred_score > THRESHOLD)
    np.testing.assert_array_equal(prediction.pred_label, [False, True, False, True])


@pytest.mark.parametrize("fraction, size, message", [(1.5, 8, "flagged_fraction"), (float("nan"), 8, "flagged_fraction"),
                                                     (0.1, 0, "map_size")])
def test_bad_settings_are_refused_by_name(fraction, size, message):
    with pytest.raises(ValueError, match=message):
        NullDetector(fraction, size)


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="at least one image"):
        NullDetector(0.1).predict([])


def test_the_real_loop_scores_records_and_overlays_through_it(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(make_texture_images(12, size=64, seed=5)[0]):
        image.save(folder / f"{i:02d}.png")
    registry = ModelRegistry({"*": NullDetector(0.25, map_size=64)})
    summary = run_embedded(folder, registry, tmp_path / "s.db", tmp_path / "out", batch_size=5)
    assert summary["scored"] == 12 and summary["flagged"] == 3 and summary["dead_lettered"] == {}
    overlays = sorted((tmp_path / "out").rglob("overlay.png"))
    assert len(overlays) == 3
    with sqlite3.connect(tmp_path / "s.db") as db:
        names = {row[0] for row in db.execute("SELECT DISTINCT model_name FROM scores")}
    assert names == {"null-detector"}
