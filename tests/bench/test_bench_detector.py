"""``invad bench`` (the detector) end to end on the tiny real bundle: structure of the table and JSON, never timing."""

from __future__ import annotations

import json

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
    assert inversion["denoiser_evals"] == 3
