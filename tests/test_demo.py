"""``invad demo`` (the README's first command) end to end with tiny settings: real ELPV cells, a model of
one class per cell type, calibration per type, the embedded pipeline, the summary, and the cache."""

import json

import pytest

from worker.cli import main

pytest.importorskip("elpv_dataset")

TINY = ["--train-images", "30", "--iterations", "3", "--test-images", "3", "--calibration-images", "4",
        "--device", "cpu"]


def test_demo_trains_calibrates_each_cell_type_streams_and_reuses_its_model(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "runs"
    assert main(["demo", "--out", str(out), "--cache", str(cache), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "one class per cell type" in printed and "false positives   " in printed
    summary = json.loads(next(out.glob("run-*/summary.json")).read_text())
    assert summary["images"] == 6 and not summary["dead_lettered"]
    assert set(summary["calibration"]) == {"mono", "poly"}
    assert all(c["calibration_images"] == 4 and c["warning"] for c in summary["calibration"].values())
    assert summary["target_fpr"] == 0.01 and 0 <= summary["normal_fpr"] <= 1

    assert main(["demo", "--out", str(out), "--cache", str(cache), *TINY]) == 0  # the cached model
    assert "reusing the cached model" in capsys.readouterr().out


def test_demo_names_a_calibration_request_the_split_cannot_meet(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--cache", str(tmp_path / "c"), "--train-images", "16",
            "--calibration-images", "5000", "--iterations", "1", "--device", "cpu"]
    assert main(args) == 2
