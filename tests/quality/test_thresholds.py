"""Honest false-positive rates: the finite-sample bound, the small-sample warning, ``invad calibrate``."""

import json

import numpy as np
import pytest

from worker.cli import main
from worker.core.detector import Detector
from worker.core.scoring import MIN_CALIBRATION_IMAGES, describe_threshold as describe, fpr_upper_bound, images_needed


def test_bound_with_no_normal_above_is_the_closed_form():
    # P(all n normals below a threshold whose true rate is p) = (1 - p)^n; the 95 % bound solves it = 0.05.
    assert fpr_upper_bound(40, 0) == pytest.approx(1 - 0.05 ** (1 / 40))  # 7.2 %: the demo's 8 % is no surprise
    assert fpr_upper_bound(1000, 10) < fpr_upper_bound(100, 1) < fpr_upper_bound(40, 0)
    assert images_needed(0.01) == 149
    with pytest.raises(ValueError, match="0 <= above < n"):
        fpr_upper_bound(10, 10)


def test_bound_covers_the_true_rate_in_95_percent_of_calibrations():
    rng = np.random.default_rng(0)
    n, target, misses, trials = 60, 0.05, 0, 2000
    for _ in range(trials):
        scores = rng.normal(size=n)
        threshold = np.quantile(scores, 1 - target, method="higher")
        true_rate = 1 - __import__("scipy").stats.norm.cdf(threshold)
        misses += true_rate > fpr_upper_bound(n, int((scores > threshold).sum()))
    assert 0.03 < misses / trials < 0.07


def test_warning_below_the_minimum_count_names_the_bound_and_the_fix():
    few = describe(np.arange(40.0), 39.0, 0.01)
    assert few["above_threshold"] == 0 and few["empirical_fpr"] == 0.0
    assert "only 40 calibration images" in few["warning"] and "7.2%" in few["warning"]
    assert "invad calibrate" in few["warning"] and "149" in few["warning"]
    enough = describe(np.arange(float(MIN_CALIBRATION_IMAGES * 3)), 296.5, 0.01)
    assert enough["warning"] is None and enough["above_threshold"] == 3


def test_invad_calibrate_resets_the_threshold_on_fresh_normals(tiny_bundle, texture_category, tmp_path, capsys):
    out = tmp_path / "recalibrated"
    code = main(["calibrate", str(tiny_bundle), str(texture_category), "--out", str(out), "--target-fpr", "0.05",
                 "--device", "cpu", "--product", "any-product-this-bundle-is-mapped-to"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calibration_images"] == 80 and summary["warning"].startswith("only 80")
    before, after = Detector.from_pretrained(tiny_bundle, "cpu"), Detector.from_pretrained(out, "cpu")
    assert after.config.target_fpr == 0.05
    assert float(after.thresholds[0]) == pytest.approx(summary["threshold"])
    assert not np.isclose(float(after.thresholds[0]), float(before.thresholds[0]))
    assert main(["calibrate", str(tiny_bundle), str(tmp_path / "nothing")]) == 2
