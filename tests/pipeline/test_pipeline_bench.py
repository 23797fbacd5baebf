"""``invad bench pipeline`` end to end against the real services, with tiny settings.

Asserts the JSON's structure and that every image reached Redis in every configuration; never timing.
"""

from __future__ import annotations

import json


def test_pipeline_bench_scores_every_image(tiny_bundle, kafka_bootstrap, redis_url, s3_settings, tmp_path, monkeypatch):
    from worker.cli import main

    monkeypatch.setenv("INVAD_TEST_S3_ACCESS_KEY", s3_settings["access_key"])
    monkeypatch.setenv("INVAD_TEST_S3_SECRET_KEY", s3_settings["secret_key"])
    monkeypatch.setenv("INVAD_TEST_S3_REGION", s3_settings["region"])
    out = tmp_path / "pipeline_bench.json"
    code = main(["bench", "pipeline", "--model", str(tiny_bundle), "--images", "24", "--batch-sizes", "8",
                 "--repeats", "1", "--image-size", "64", "--out", str(out), "--device", "cpu",
                 "--bootstrap", kafka_bootstrap, "--redis-url", redis_url, "--s3-endpoint", s3_settings["endpoint"]])
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
    # what the bench created on the services (bucket, Redis keys, topic) is gone
    assert report["meta"]["left_behind"] == []
