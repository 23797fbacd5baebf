"""The drift watch sink against a real Redis: the tests and their state machine on generated scores, then a
real shift (brighter images) scored by the real tiny detector."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from helpers import SEED, unique
from PIL import ImageEnhance
from structlog.testing import capture_logs
from synthetic import make_texture_images

from schemas import NO_ARTEFACTS, DriftEntry, RedisLayout, ScoreRecord, decode_alert, kafka_source
from worker.pipeline.drift import Baseline, DriftSettings, DriftSink, registry_baselines, window_p_values
from worker.pipeline.errors import DependencyDown
from worker.pipeline.sinks import ScoredImage

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
THRESHOLD = 2.33  # the 1 % quantile of N(0, 1): what the generated calibration below sets
RNG_CALIBRATION = np.random.default_rng(0).normal(size=200)


def scored(image_id: str, score: float, threshold: float = THRESHOLD, line: str = "L1", version: str = "v1",
           model_name: str = "m") -> ScoredImage:
    record = ScoreRecord(image_id=image_id, uri=f"file:///x/{image_id}.png", line_id=line, product="default",
                         captured_at=T0 + timedelta(seconds=1), scored_at=T0, score=float(score),
                         is_anomaly=bool(score > threshold), threshold=threshold, model_name=model_name,
                         model_version=version, map_stats={"max": 1.0, "mean": 0.5, "p99": 0.9, "peak_x": 1, "peak_y": 2},
                         timings_ms={"infer": 1.0}, worker_id="w", source=kafka_source("t", 0, 1),
                         artefacts=dict(NO_ARTEFACTS))
    return ScoredImage(record)


def baselines(scores=RNG_CALIBRATION, version: str = "v1"):
    return lambda product: Baseline(version, 0.01, None if scores is None else np.sort(scores))


@pytest.fixture
def layout():
    return RedisLayout(prefix=unique("drift"), alerts_maxlen=1000)


@pytest.fixture
def make_sink(redis_url, layout):
    made = []

    def make(baseline=None, window: int = 100, min_count: int = 50, p: float = 1e-4, url: str = redis_url):
        sink = DriftSink(url, layout, baseline or baselines(), DriftSettings(window, min_count, p))
        made.append(sink)
        return sink
    yield make
    for sink in made:
        sink.close()
    import redis
    client = redis.Redis.from_url(redis_url)
    client.delete(layout.alerts_key, layout.drift_key("L1", "default"), layout.drift_key("L2", "default"))
    client.close()


def feed(sink: DriftSink, items: list[ScoredImage], batch: int = 10) -> None:
    for start in range(0, len(items), batch):
        sink.write(items[start:start + batch])
        sink.flush()


def drift_entries(sink: DriftSink) -> list[DriftEntry]:
    return [decode_alert(fields) for _, fields in sink._client.xrange(sink.layout.alerts_key)]


def normals(n: int, seed: int, shift: float = 0.0, prefix: str = "n", **kwargs) -> list[ScoredImage]:
    values = np.random.default_rng(seed).normal(size=n) + shift
    return [scored(f"{prefix}{seed}-{i}", v, **kwargs) for i, v in enumerate(values)]


def test_the_binomial_test_fires_only_on_a_real_excess():
    scores = np.zeros(500)
    assert window_p_values(scores, 5, 0.01, None)[0] > 0.3  # the expected count
    assert window_p_values(scores, 0, 0.01, None)[0] == 1.0
    assert window_p_values(scores, 12, 0.01, None)[0] > 1e-4  # above expectation, not yet beyond chance
    assert window_p_values(scores, 20, 0.01, None)[0] < 1e-4


def test_a_flagged_excess_turns_the_line_drifting_once_with_a_status_key(make_sink):
    sink = make_sink()
    feed(sink, normals(100, seed=1))
    assert sink.statuses()[0].state == "ok" and drift_entries(sink) == []
    excess = [scored(f"bad{i}", 4.0) for i in range(15)]
    feed(sink, excess)
    [entry] = drift_entries(sink)
    assert (entry.state, entry.previous_state, entry.line_id, entry.product) == ("drifting", "ok", "L1", "default")
    assert "flag_rate" in entry.tests and entry.flag_rate_p < 1e-4 and entry.window == 100
    status = sink._client.hgetall(sink.layout.drift_key("L1", "default"))
    assert status[b"state"] == b"drifting" and status[b"event_id"].decode() == entry.event_id
    assert sink.statuses()[0].drifting
    feed(sink, excess)  # the same batch again (a redelivery): nothing new
    feed(sink, [scored(f"bad{i}", 4.0) for i in range(15, 20)])  # still drifting: no second entry
    assert len(drift_entries(sink)) == 1


def test_a_shifted_score_range_fires_the_two_sample_test_even_without_flags(make_sink):
    sink = make_sink()
    feed(sink, normals(100, seed=2, shift=-1.5))  # scores fell (e.g. blur): nothing is flagged at all
    [entry] = drift_entries(sink)
    assert entry.tests == ("score_shift",) and entry.flagged == 0 and entry.score_shift_p < 1e-4


def test_no_drift_on_normals_and_nothing_before_min_count(make_sink):
    sink = make_sink(min_count=50)
    feed(sink, [scored(f"x{i}", 5.0) for i in range(49)])  # all flagged, but too few to judge
    assert drift_entries(sink) == [] and sink.statuses()[0].flag_rate_p is None
    sink = make_sink(window=200, min_count=50)
    feed(sink, normals(600, seed=3, line="L2"))
    assert drift_entries(sink) == []
    [status] = [s for s in sink.statuses() if s.line_id == "L2"]
    assert status.state == "ok" and status.flag_rate_p > 1e-4 and status.score_shift_p > 1e-4


def test_a_restarted_worker_resumes_the_stored_state_and_reports_the_recovery(make_sink):
    first = make_sink()
    feed(first, [scored(f"bad{i}", 4.0) for i in range(60)])
    assert [e.state for e in drift_entries(first)] == ["drifting"]
    restarted = make_sink()  # a new process: it learns "drifting" from Redis, not from a new alert
    feed(restarted, [scored(f"bad{i}", 4.0) for i in range(60, 120)])
    assert [e.state for e in drift_entries(restarted)] == ["drifting"]
    feed(restarted, normals(100, seed=4))  # the window refills with normal images
    entries = drift_entries(restarted)
    assert [e.state for e in entries] == ["drifting", "ok"] and entries[1].tests == ()
    assert restarted._client.hget(restarted.layout.drift_key("L1", "default"), "state") == b"ok"


def test_redelivered_images_count_once(make_sink):
    sink = make_sink(min_count=50)
    for _ in range(20):
        feed(sink, [scored(f"same{i}", 5.0) for i in range(5)])
    assert sink.statuses()[0].window == 5 and drift_entries(sink) == []


def test_a_new_model_version_restarts_the_window(make_sink):
    versions = {"version": "v1"}
    sink = make_sink(baseline=lambda product: Baseline(versions["version"], 0.01, np.sort(RNG_CALIBRATION)))
    feed(sink, [scored(f"a{i}", 4.0) for i in range(30)])
    versions["version"] = "v2"
    feed(sink, [scored(f"b{i}", 0.0, version="v2") for i in range(30)])
    assert sink.statuses()[0].window == 30 and sink.statuses()[0].model_version == "v2"


def test_a_bundle_without_calibration_scores_runs_the_flag_rate_test_only(make_sink):
    sink = make_sink(baseline=baselines(scores=None))
    with capture_logs() as logs:
        feed(sink, normals(100, seed=5, shift=-1.5))
        feed(sink, [scored(f"bad{i}", 4.0) for i in range(20)])
    assert [log["event"] for log in logs].count("drift_score_shift_test_off") == 1
    [entry] = drift_entries(sink)
    assert entry.tests == ("flag_rate",) and entry.score_shift_p is None


def test_redis_down_is_a_dependency_failure_and_the_retry_is_clean(make_sink, redis_url):
    down = make_sink(url="redis://127.0.0.1:1/0")
    down.write(normals(60, seed=6))
    with pytest.raises(DependencyDown):
        down.flush()
    with pytest.raises(DependencyDown):
        down.flush()  # the loop's retry: still staged, windows keyed by image id, counted once
    assert down._windows[("L1", "default")].arrays()[0].size == 60


# -- a real shift, scored by the real tiny detector --------------------------------------------------

def score_images(registry, images, prefix: str) -> list[ScoredImage]:
    detector = registry.route("default").detector
    prediction = detector.predict(images)
    return [scored(f"{prefix}{i}", float(s), threshold=float(t), version=detector.version, model_name=detector.name)
            for i, (s, t) in enumerate(zip(prediction.pred_score, prediction.threshold))]


def test_brighter_images_turn_the_line_drifting_and_unshifted_normals_do_not(registry, make_sink):
    sink = make_sink(baseline=registry_baselines(registry), window=48, min_count=32)
    images, _ = make_texture_images(48, size=128, seed=SEED)  # normals the bundle never saw
    feed(sink, score_images(registry, images, "normal-"), batch=16)
    [status] = sink.statuses()
    assert status.state == "ok" and drift_entries(sink) == []
    assert status.score_shift_p is not None and status.score_shift_p > 1e-4 and status.flag_rate_p > 1e-4

    brighter = [ImageEnhance.Brightness(image).enhance(1.4) for image in images]  # the lighting changed
    feed(sink, score_images(registry, brighter, "bright-"), batch=16)
    [status] = sink.statuses()
    assert status.state == "drifting"
    assert status.flag_rate_p < 1e-4 and status.score_shift_p < 1e-4  # once the window is all brighter images
    [entry] = drift_entries(sink)  # one entry: the first test to fire (usually the flag rate) marks the change
    assert entry.state == "drifting" and entry.previous_state == "ok" and entry.tests
    assert entry.model_version == registry.route("default").detector.version
    assert sink._client.hget(sink.layout.drift_key("L1", "default"), "state") == b"drifting"


def test_a_kafka_worker_raises_one_drift_alert_beside_its_anomaly_alerts(kafka_bootstrap, redis_url, s3_settings,
                                                                         tiny_bundle, registry):
    from kafka_helpers import (KafkaEnv, WorkerThread, alert_ids, all_committed, png, produce, ref_json,
                               stored_records, upload_images, wait_for)

    env = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, models=str(tiny_bundle)).setup()
    images, _ = make_texture_images(12, size=128, seed=SEED + 7)
    pngs = {f"bright_{i:03d}.png": png(ImageEnhance.Brightness(im).enhance(1.6)) for i, im in enumerate(images)}
    upload_images(env, pngs)
    produce(env, [(b"L1", ref_json(env, f"img/{name}", name, "L1")) for name in sorted(pngs)])
    worker = WorkerThread(env.config(INVAD_DRIFT_WINDOW="10", INVAD_DRIFT_MIN_COUNT="10"), registry)
    try:
        wait_for(lambda: len(stored_records(env)) == len(pngs) and all_committed(env), 120, "every image")
    finally:
        assert worker.stop() == 0
    entries = [decode_alert(fields) for _, fields in env.redis().xrange(f"{env.prefix}:alerts")]
    drifts = [e for e in entries if e.kind == "drift"]
    assert [(d.line_id, d.product, d.state) for d in drifts] == [("L1", "default", "drifting")]
    flagged = sorted(i for i, r in stored_records(env).items() if r.is_anomaly)
    assert sorted(alert_ids(env)) == flagged  # the anomaly alerts are untouched by the drift entry
    assert env.redis().hget(f"{env.prefix}:drift:L1:default", "state") == b"drifting"
