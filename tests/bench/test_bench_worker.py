"""The bench's worker process refuses a bad setting with exit status 2 and a message naming it."""

from __future__ import annotations

from worker.bench.worker import main


def test_missing_service_settings_exit_2_naming_the_variable(monkeypatch, capsys):
    for name in ("INVAD_KAFKA_BOOTSTRAP", "INVAD_REDIS_URL", "INVAD_S3_BUCKET", "INVAD_MODELS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--detector", "null", "--flagged-fraction", "0.1"]) == 2
    assert "INVAD_KAFKA_BOOTSTRAP" in capsys.readouterr().err


def test_bad_flagged_fraction_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("INVAD_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("INVAD_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("INVAD_S3_BUCKET", "bench-bucket")
    monkeypatch.setenv("INVAD_MODELS", "null-detector")
    assert main(["--detector", "null", "--flagged-fraction", "2"]) == 2
    assert "flagged_fraction must be in [0, 1]" in capsys.readouterr().err
