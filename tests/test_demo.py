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
    summaries = [json.loads(p.read_text()) for p in out.glob("run-*/summary.json")]
    assert len(summaries) == 2 and all(s["images"] == 6 for s in summaries)  # each run streams every cell


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """A second run within a second once reused the first run's store, found every cell already
    scored, and failed on an empty AUROC."""
    import datetime as real

    import worker.demo as demo

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 30, 12, 0, 0)

    monkeypatch.setattr(demo, "datetime", Frozen)
    runs = [demo._new_run_folder(tmp_path) for _ in range(3)]
    assert [r.name for r in runs] == ["run-20261130-120000", "run-20261130-120000-2", "run-20261130-120000-3"]


def test_demo_names_a_calibration_request_the_split_cannot_meet(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--cache", str(tmp_path / "c"), "--train-images", "16",
            "--calibration-images", "5000", "--iterations", "1", "--device", "cpu"]
    assert main(args) == 2
