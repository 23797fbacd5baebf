"""``invad bench`` (the detector) end to end on the tiny real bundle: structure of the table and JSON, never timing."""

from __future__ import annotations

import json

import pytest

from worker.cli import main


def test_bench_writes_table_and_json(tiny_bundle, tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    code = main(["bench", "--model", str(tiny_bundle), "--batch-sizes", "1,2", "--steps", "1,3",
                 "--repeats", "1", "--out", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0 and "images/s" in out and "vs reconstruction" in out
    rows = json.loads(out_file.read_text())["rows"]
    assert {(r["method"], r["steps"], r["batch_size"]) for r in rows} >= {("inversion", 3, 2), ("reconstruction", 10, 1)}
    inversion = next(r for r in rows if r["method"] == "inversion" and r["steps"] == 3)
    members = json.loads(out_file.read_text())["meta"]["members"]
    assert inversion["denoiser_evals"] == 3 * members  # S evaluations by each denoiser of the ensemble


def test_gpu_report_is_built_from_what_ran(tiny_bundle, tmp_path, capsys):
    """scripts/gpu_check.sh's report, from a real (CPU) detector run: tables of what ran, and the
    steps that did not run said to be missing, never filled in."""
    from worker.bench.gpu_report import main as report_main
    assert main(["bench", "--model", str(tiny_bundle), "--batch-sizes", "2", "--steps", "3", "--repeats", "1",
                 "--out", str(tmp_path / "detector-off.json")]) == 0
    (tmp_path / "pytest.txt").write_text("3 passed in 9.1s\n")
    assert report_main([str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    meta = json.loads((tmp_path / "detector-off.json").read_text())["meta"]
    assert meta["compile"] == "off" and meta["autocast"] == "off"
    assert "### compile = off" in report and "Best at S = 3" in report and "3 passed" in report
    assert "No pipeline benchmark ran" in report
    assert report_main([str(tmp_path / "missing")]) == 2
    capsys.readouterr()


def test_unknown_compile_mode_is_refused(tiny_bundle):
    import pytest

    from worker.core.detector import Detector
    with pytest.raises(ValueError, match="compile mode"):
        Detector.from_pretrained(tiny_bundle, "cpu").compile_networks("fastest")


def test_bench_of_the_untrained_architecture_on_a_finer_grid(tmp_path, capsys):
    out_file = tmp_path / "fine.json"
    assert main(["bench", "--image-size", "64", "--grid-stride", "8", "--batch-sizes", "2", "--steps", "1",
                 "--repeats", "1", "--out", str(out_file)]) == 0
    capsys.readouterr()
    meta = json.loads(out_file.read_text())["meta"]
    assert meta["model"] == "untrained default" and meta["grid"] == 8 and meta["backbone"] == "efficientnet-lite0"


@pytest.mark.parametrize("flags, expected", [([], "position"), (["--feature-norm", "channel"], "channel")])
def test_bench_of_the_untrained_architecture_with_either_denoiser_input(tmp_path, capsys, flags, expected):
    out_file = tmp_path / "norm.json"
    assert main(["bench", "--image-size", "64", "--batch-sizes", "2", "--steps", "1", "--repeats", "1",
                 "--out", str(out_file), *flags]) == 0
    capsys.readouterr()
    assert json.loads(out_file.read_text())["meta"]["feature_norm"] == expected


def test_bench_of_an_untrained_ensemble_counts_every_member_s_evaluations(tmp_path, capsys):
    out_file = tmp_path / "ensemble.json"
    assert main(["bench", "--image-size", "64", "--batch-sizes", "2", "--steps", "2", "--repeats", "1",
                 "--members", "2", "--out", str(out_file)]) == 0
    capsys.readouterr()
    report = json.loads(out_file.read_text())
    inversion = next(r for r in report["rows"] if r["method"] == "inversion")
    # two members of each backbone (the map backbone by default), two steps each
    assert report["meta"]["members"] == 2 and report["meta"]["map_backbone"] == "efficientnet-lite2"
    assert inversion["denoiser_evals"] == 8
