"""The calibration normals' scores travel in the bundle (for the drift watch); bundles without them still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from worker.core import bundle
from worker.core.bundle import BundleError
from worker.core.detector import Detector


def test_training_stores_the_calibration_scores_and_a_round_trip_keeps_them(tiny_bundle, tmp_path):
    detector = Detector.from_pretrained(tiny_bundle, "cpu")
    scores = detector.calibration_scores["default"]
    assert len(scores) == 24  # 80 normals, calib_fraction 0.3 (tests/conftest.py)
    # the threshold was set on exactly these scores, at a 1 % target rate: at most one lies above it
    assert sum(s > float(detector.thresholds[0]) for s in scores) <= 1
    assert abs(np.mean(scores)) < 1.0  # standardised on themselves: mean about 0
    detector.save_pretrained(tmp_path / "copy")
    assert Detector.from_pretrained(tmp_path / "copy", "cpu").calibration_scores == detector.calibration_scores


def test_a_bundle_saved_before_the_scores_were_kept_loads_without_them(tiny_bundle, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    (old / bundle.CALIBRATION_FILE).unlink()
    detector = Detector.from_pretrained(old, "cpu")
    assert detector.calibration_scores is None
    assert detector.version == Detector.from_pretrained(tiny_bundle, "cpu").version  # weights decide the version


@pytest.mark.parametrize("content", ['{"scores": {"other": [1.0]}}', '{"scores": {"default": []}}',
                                     '{"scores": {"default": [1.0, "x"]}}', "not json"])
def test_a_corrupt_scores_file_is_refused_naming_it(tiny_bundle, tmp_path, content):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / bundle.CALIBRATION_FILE).write_text(content)
    with pytest.raises(BundleError, match=bundle.CALIBRATION_FILE):
        bundle.load_bundle(broken)


def test_the_file_is_plain_json(tiny_bundle):
    stored = json.loads((tiny_bundle / bundle.CALIBRATION_FILE).read_text())
    assert set(stored) == {"scores"} and all(isinstance(v, float) for v in stored["scores"]["default"])


def test_map_top_is_the_mean_of_the_highest_sixteenth_of_the_grid():
    """16 of a 16 x 16 map; one position of a 4 x 4 map (the maximum); a lone spike moves it 1/16 as much."""
    import torch

    from worker.core.scoring import image_components

    maps = torch.zeros(2, 16, 16)
    maps[0].view(-1)[:20] = torch.arange(20, dtype=torch.float)  # the highest 16 are 4..19
    maps[1, 0, 0] = 16.0  # one spike at the border
    top = image_components(maps)["map_top"]
    assert top.tolist() == [pytest.approx(11.5), pytest.approx(1.0)]
    small = torch.randn(3, 4, 4)
    assert torch.equal(image_components(small)["map_top"], small.flatten(1).max(1).values)
