"""The detector subcommands end to end: train, score, eval, and their argument errors (bench: tests/bench)."""

import json

import pytest
from PIL import Image

from worker.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_writes_json_lines_and_overlays(tiny_bundle, texture_category, tmp_path, capsys):
    broken = tmp_path / "inputs"
    broken.mkdir()
    (broken / "truncated.png").write_bytes((texture_category / "test/spot/000.png").read_bytes()[:200])
    code, out, err = run(["score", texture_category / "test", broken, "--model", tiny_bundle,
                          "--overlays", tmp_path / "overlays"], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    scored = [line for line in lines if "score" in line]
    assert len(scored) == 16 and {"path", "score", "is_anomaly", "threshold", "overlay"} <= set(scored[0])
    assert all(Image.open(line["overlay"]).size == (128, 128) for line in scored)
    flagged = [line["path"].split("/")[-2] for line in scored if line["is_anomaly"]]
    # A 1 % FPR threshold from 24 calibration images is coarse: allow one false alarm among 8 good images.
    assert flagged.count("spot") >= 7 and flagged.count("good") <= 1
    errors = [line for line in lines if "error" in line]
    assert errors == [{"path": str(broken / "truncated.png"), "error": "image_invalid", "message": errors[0]["message"]}]
    assert code == 1 and "truncated.png" in err, "an unreadable file is reported, the others are still scored"


def test_eval_report_with_baselines(tiny_bundle, texture_category, tmp_path, capsys):
    report = tmp_path / "report" / "eval.json"
    code, out, _ = run(["eval", texture_category, "--model", tiny_bundle, "--report", report, "--compare",
                        "--steps", "1,2"], capsys)
    assert code == 0 and "| method |" in out
    data = json.loads(report.read_text())
    assert data["image_auroc"] >= 0.9 and data["pixel_auroc"] > 0.5 and data["images_per_second"] > 0
    methods = [row["method"] for row in data["rows"]]
    assert methods[0] == "invad S=3" and "per-position gaussian" in methods and len(methods) == 5
    assert any(m.startswith("reconstruction") for m in methods)
    for suffix in (".md", "_roc.png", "_examples.png"):
        assert report.with_name("eval" + suffix).is_file()


@pytest.mark.parametrize("argv, message", [
    (["train", "nowhere", "--out", "x"], "not a folder"),
    (["train", ".", "--out", "x", "--steps", "0"], "positive integer"),
    (["train", ".", "--out", "x", "--target-fpr", "2"], "(0, 1)"),
    (["eval", "elpv", "--model", "/no/bundle", "--report", "r.json"], "does not exist"),
    (["score", "/no/such/file.png", "--model", "/no/bundle"], "neither a file nor a folder"),
    (["bench", "--batch-sizes", "a,b"], "comma-separated integers"),
])
def test_bad_arguments_name_the_problem(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own type checks
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
