"""``invad bench pipeline`` end to end against the real services, with tiny settings.

Asserts the JSON's structure and that every image reached Redis in every configuration; never timing.
"""

from __future__ import annotations

import json

import pytest

from worker.bench.report import NATIVE
from worker.bench.stages import KAFKA_CLIENT, OTHER, PROFILER, STAGES
from worker.cli import main

KNOWN_STAGES = {*STAGES.values(), KAFKA_CLIENT, OTHER, PROFILER, NATIVE}


@pytest.fixture
def service_flags(kafka_bootstrap, redis_url, s3_settings) -> list[str]:
    return ["--bootstrap", kafka_bootstrap, "--redis-url", redis_url, "--s3-endpoint", s3_settings["endpoint"],
            "--s3-region", s3_settings["region"], "--s3-access-key", s3_settings["access_key"],
            "--s3-secret-key", s3_settings["secret_key"]]


def test_pipeline_bench_scores_every_image(service_flags, tiny_bundle, tmp_path):  # services first: skip untrained
    out = tmp_path / "pipeline_bench.json"
    code = main(["bench", "pipeline", "--model", str(tiny_bundle), "--images", "24", "--batch-sizes", "8",
                 "--repeats", "1", "--image-size", "64", "--out", str(out), "--device", "cpu", *service_flags])
    assert code == 0

    report = json.loads(out.read_text())
    assert set(report) == {"meta", "environment", "goals", "rows"}
    assert report["meta"]["batch_size"] == 8 and report["meta"]["images"] == 24
    names = [row["name"] for row in report["rows"]]
    assert names[:4] == ["detector alone", "pipeline, 1 worker", "1 worker, 1 core", "2 workers, 1 core each"]
    paced = report["rows"][4]
    assert names[4].startswith("1 worker, paced at") and paced["paced_rate"] > 0 and "paced" in paced["latency_kind"]
    for row in report["rows"]:
        expected = 16 if row is paced else 24  # the paced run streams max(2 batches, half the images)
        assert row["images"] == row["scored"] == expected, row["name"]
        assert row["images_per_second"] > 0
        assert set(row["latency_ms"]) == {"p50", "p95", "p99"}
    assert [row["workers"] for row in report["rows"]] == [0, 1, 1, 2, 1]
    assert len(report["rows"][3]["worker_ids"]) == 2  # both workers scored part of the images
    assert {"pipeline_vs_detector", "pipeline_goal_met", "two_vs_one_worker", "scaling_goal_met"} <= set(report["goals"])
    for row in report["rows"][1:]:  # CPU over each timed window (stages: sampled, so only known names)
        assert row["cpu_ms_per_image"]["workers"] > 0 and row["cpu_ms_per_image"]["bench"] > 0
        assert set(row.get("worker_cpu_ms_per_image_by_stage", {})) <= KNOWN_STAGES
    # what the bench created on the services (bucket, Redis keys, topic) is gone
    assert report["meta"]["left_behind"] == []


def test_plumbing_ceiling_with_the_null_detector(service_flags, tmp_path, capsys):
    out = tmp_path / "ceiling.json"
    # One worker per fraction: the two-worker scenario is the same code, run by the InvAD test above.
    code = main(["bench", "pipeline", "--detector", "null", "--flagged-fraction", "0,0.25", "--images", "40",
                 "--batch-sizes", "8", "--image-size", "64", "--workers-scaling", "off", "--out", str(out),
                 *service_flags])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| null detector, 25 % flagged, 1 worker |" in printed and "| CPU ms per image |" in printed

    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(row["name"], row["workers"]) for row in rows] == [
        ("null detector, 0 % flagged, 1 worker", 1), ("null detector, 25 % flagged, 1 worker", 1)]
    for row in rows:
        assert row["images"] == row["scored"] == 40, row["name"]
        assert row["cpu_ms_per_image"]["workers"] > 0 and row["cores_busy"] > 0
    assert rows[0]["flagged"] == 0
    # one image in four is flagged, counted per worker from its start (warm-up included): about 10 of 40
    assert 8 <= rows[1]["flagged"] <= 12, [row["flagged"] for row in rows]
    # 40 images are too few for every small stage to be sampled in each row; the names must be known
    by_stage = [row.get("worker_cpu_ms_per_image_by_stage", {}) for row in rows]
    assert all(set(stages) <= KNOWN_STAGES for stages in by_stage) and sum(sum(s.values()) for s in by_stage) > 0, by_stage
    assert "overlay render + PNG" not in by_stage[0]  # nothing flagged, no overlay
    assert {"ceiling_0pct_flagged", "ceiling_0pct_flagged_goal_met"} <= set(report["goals"])
    assert report["meta"]["detector"] == "null" and report["meta"]["left_behind"] == []


def test_wrong_s3_credentials_fail_in_one_line_before_the_slow_part(service_flags, capsys):
    flags = list(service_flags)
    flags[flags.index("--s3-secret-key") + 1] = "not-the-secret"
    assert main(["bench", "pipeline", "--detector", "null", "--images", "8", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "refused the bench (403)" in error and "--s3-secret-key" in error, error
    assert "not-the-secret" not in error


def test_flagged_fraction_needs_the_null_detector(service_flags, capsys):
    assert main(["bench", "pipeline", "--flagged-fraction", "0.1", *service_flags]) == 2
    assert "--flagged-fraction applies to --detector null" in capsys.readouterr().err


def test_missing_service_flag_names_it_and_its_variable(monkeypatch, capsys):
    monkeypatch.delenv("INVAD_KAFKA_BOOTSTRAP", raising=False)
    assert main(["bench", "pipeline", "--detector", "null", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "--bootstrap is required for the pipeline bench (or set INVAD_KAFKA_BOOTSTRAP)" in capsys.readouterr().err
