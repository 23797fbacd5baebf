"""`invad produce` flag checking, rate parsing and the token bucket (no services needed)."""

from __future__ import annotations

import json

import pytest

from producers.rate import TokenBucket, parse_rate


@pytest.mark.parametrize("text, rate", [("50", 50.0), ("2.5", 2.5), (" 10/s ", 10.0), ("600/min", 10.0),
                                        ("3600/h", 1.0), ("1e3", 1000.0), (".5", 0.5)])
def test_parse_rate(text, rate):
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["0", "-5", "fast", "", "10/day", "nan", "inf", "1e999"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError, match="positive number of images per second"):
        parse_rate(text)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_caps_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    for _ in range(51):
        bucket.acquire()
    assert clock.now == pytest.approx(5.0)  # the first is free, then one every 0.1 s


def test_token_bucket_allows_bursts_after_idle_time():
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=4, clock=clock, sleep=clock.sleep)
    clock.now = 100.0
    assert [bucket.acquire() for _ in range(4)] == [0.0] * 4
    assert bucket.acquire() == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": float("inf")}, {"rate": 1, "burst": 0.5}])
def test_token_bucket_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        TokenBucket(**kwargs)


@pytest.mark.parametrize("flags, shown", [
    (["--rate", "0"], "--rate: rate '0' is not a positive number of images per second"),
    (["--rate", "fast"], "'fast'"),
    (["--create-topic", "--partitions", "0"], "--partitions: '0' is not a positive integer (a whole number >= 1)"),
    (["--attr", "novalue"], "'novalue' is not key=value"),
    (["--attr", "bad key=1"], "'bad key=1' is not key=value"),
    (["--line-id", "line 3"], "--line-id 'line 3' is not allowed"),
    (["--product", "bad product"], "--product 'bad product' is not allowed"),
    (["--upload", "s3://Bad_Bucket/x"], "bucket 'Bad_Bucket' is not a valid S3 bucket name"),
    (["--upload", "/tmp/x"], "'/tmp/x' is not an S3 URI"),
    (["--s3-endpoint", "localhost:8333"], "'localhost:8333' is not an http(s) URL"),
])
def test_bad_flag_values_exit_2_naming_the_value(run_cli, tmp_path, flags, shown):
    result = run_cli([str(tmp_path), "--line-id", "l1", "--dry-run", *flags])
    assert result.code == 2
    assert shown in result.err


@pytest.mark.parametrize("argv, shown", [
    (["{folder}"], "--line-id is required"),
    (["{folder}", "--line-id", "l1"], "no Kafka broker given: pass --bootstrap"),
    (["{folder}", "--line-id", "l1", "--bootstrap", "localhost"], "--bootstrap 'localhost': expected host:port"),
    (["{folder}", "--line-id", "l1", "--dry-run", "--partitions", "3"], "only apply with --create-topic"),
    (["{folder}", "--line-id", "l1", "--dry-run", "--topic", "bad topic"], "'bad topic' is not a valid Kafka topic"),
    (["s3://bucket-a/x", "--line-id", "l1", "--dry-run", "--upload", "s3://bucket-b/y"], "--upload is for local"),
    (["{folder}", "--line-id", "l1", "--dry-run", "--attr", "a=1", "--attr", "a=2"], "--attr keys given twice: ['a']"),
    (["{folder}/missing", "--line-id", "l1", "--dry-run"], "/missing' is not a folder or file"),
    (["{folder}/*.gif", "--line-id", "l1", "--dry-run"], "no image files"),
])
def test_bad_flag_combinations_exit_2(run_cli, make_pngs, argv, shown):
    folder = make_pngs("f", ["a.png"])
    result = run_cli([a.replace("{folder}", str(folder)) for a in argv])
    assert result.code == 2, result.err
    assert "invad produce: error:" in result.err and shown in result.err


def test_environment_defaults_are_checked(run_cli, make_pngs, monkeypatch):
    folder = make_pngs("f", ["a.png"])
    monkeypatch.setenv("INVAD_TOPIC", "no spaces allowed")
    result = run_cli([str(folder), "--line-id", "l1", "--dry-run"])
    assert result.code == 2 and "from --topic or INVAD_TOPIC" in result.err


def test_dry_run_prints_valid_image_refs(run_cli, make_pngs):
    folder = make_pngs("dry", ["b.png", "a.png", "c d.png"])
    result = run_cli([str(folder), "--line-id", "l1", "--dry-run", "--rate", "1000", "--upload", "s3://bkt/pre",
                      "--quiet"])
    assert result.code == 0, result.err
    refs = [json.loads(line) for line in result.out.splitlines()]
    assert [r["image_id"] for r in refs][:2] == ["l1/a.png", "l1/b.png"]  # sorted by path
    assert refs[2]["image_id"].startswith("l1/c_d-") and refs[2]["uri"] == f"s3://bkt/pre/{refs[2]['image_id']}"
    assert "printed 3, failed 0, skipped 0" in result.err
