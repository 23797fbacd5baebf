"""The alert consumer in-process against a real Redis and a real HTTP server on loopback."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from alert_entries import anomaly_fields
from webhook_server import WebhookServer

from worker.alerts.consumer import AlertConsumer, ConsumerSettings
from worker.alerts.delivery import PrintDelivery, WebhookDelivery
from worker.alerts.stream import AlertStream, dead_stream_name


def make_stream(redis_url: str, names: tuple[str, str], consumer: str = "c1") -> AlertStream:
    stream, group = names
    alerts = AlertStream(redis_url, stream, group, consumer, dead_stream_name(stream, group))
    alerts.ensure_group("0")
    return alerts


def consume(alerts: AlertStream, delivery, stop: threading.Event | None = None, **settings):
    settings = {"once": True, "block_ms": 100, "claim_idle_ms": 60_000, "backoff_max_s": 0.05, **settings}
    return AlertConsumer(alerts, delivery, ConsumerSettings(**settings), stop or threading.Event()).run()


def webhook(url: str, stop: threading.Event | None = None, max_retries: int = 5) -> WebhookDelivery:
    return WebhookDelivery(url, timeout_s=5.0, max_retries=max_retries, backoff_max_s=0.05,
                           stop=stop or threading.Event())


def pending(redis_client, names) -> int:
    return redis_client.xpending(*names)["pending"]


def test_prints_each_alert_as_one_json_line_and_acks(redis_url, redis_client, stream_names):
    for i in range(3):
        redis_client.xadd(stream_names[0], anomaly_fields(i))
    out = io.StringIO()
    stats = consume(make_stream(redis_url, stream_names), PrintDelivery(out))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["image_id"] for line in lines] == [f"line-1/img_{i:04d}.png" for i in range(3)]
    assert lines[0]["kind"] == "anomaly" and lines[0]["score"] == 3.5 and lines[0]["overlay_uri"] is None
    assert stats.delivered == 3 and pending(redis_client, stream_names) == 0


def test_posts_json_with_an_idempotency_key(redis_url, redis_client, stream_names):
    redis_client.xadd(stream_names[0], anomaly_fields(7))
    with WebhookServer() as server:
        consume(make_stream(redis_url, stream_names), webhook(server.url))
    [(headers, body)] = server.received
    assert headers["Idempotency-Key"] == "line-1/img_0007.png" == body["image_id"]
    assert headers["Content-Type"] == "application/json" and headers["X-Invad-Alert-Kind"] == "anomaly"
    assert body["score"] == 10.5 and body["entry_id"]
    assert pending(redis_client, stream_names) == 0


def test_a_webhook_failing_with_503_then_200_receives_the_alert_once_delivered(redis_url, redis_client, stream_names):
    redis_client.xadd(stream_names[0], anomaly_fields(1))
    with WebhookServer(statuses=[503, 503, 500, 429]) as server:
        stats = consume(make_stream(redis_url, stream_names), webhook(server.url))
    assert server.image_ids() == ["line-1/img_0001.png"] * 5  # four failures, then the one that is delivered
    assert stats.delivered == 1 and not stats.dead
    assert pending(redis_client, stream_names) == 0
    assert redis_client.xlen(dead_stream_name(*stream_names)) == 0


def test_a_400_is_recorded_as_a_permanent_failure_acked_and_the_next_alert_goes_on(redis_url, redis_client,
                                                                                    stream_names):
    redis_client.xadd(stream_names[0], anomaly_fields(1))
    redis_client.xadd(stream_names[0], anomaly_fields(2))
    with WebhookServer(statuses=[400]) as server:
        stats = consume(make_stream(redis_url, stream_names), webhook(server.url))
    assert server.image_ids() == ["line-1/img_0001.png", "line-1/img_0002.png"]  # no retry of the 400
    assert stats.delivered == 1 and stats.dead == {"rejected": 1}
    [(_, dead)] = redis_client.xrange(dead_stream_name(*stream_names))
    assert dead[b"dead_reason"] == b"rejected" and b"HTTP 400" in dead[b"dead_message"]
    assert dead[b"image_id"] == b"line-1/img_0001.png"  # the original fields travel with it
    assert pending(redis_client, stream_names) == 0


def test_retries_are_bounded_then_the_alert_is_dead(redis_url, redis_client, stream_names):
    redis_client.xadd(stream_names[0], anomaly_fields(1))
    with WebhookServer(default=502) as server:
        stats = consume(make_stream(redis_url, stream_names), webhook(server.url, max_retries=2))
    assert len(server.received) == 3 and stats.dead == {"retries_exhausted": 1}
    assert pending(redis_client, stream_names) == 0


def test_an_unreachable_webhook_is_retried_like_a_5xx(redis_url, redis_client, stream_names):
    with WebhookServer() as server:
        url = server.url  # a port nobody listens on once the server is closed
    redis_client.xadd(stream_names[0], anomaly_fields(1))
    stats = consume(make_stream(redis_url, stream_names), webhook(url, max_retries=1))
    assert stats.dead == {"retries_exhausted": 1}
    [(_, dead)] = redis_client.xrange(dead_stream_name(*stream_names))
    assert b"URLError" in dead[b"dead_message"] or b"Connection" in dead[b"dead_message"]


def test_malformed_entries_are_reported_acked_and_never_stop_the_consumer(redis_url, redis_client, stream_names):
    stream = stream_names[0]
    redis_client.xadd(stream, {"schema_version": "1.0", "image_id": "x"})  # fields missing
    redis_client.xadd(stream, {**anomaly_fields(1), "score": "NaN"})
    redis_client.xadd(stream, {**anomaly_fields(2), "schema_version": "2.0"})
    redis_client.xadd(stream, {b"\xff\xfe": b"\x00"})
    redis_client.xadd(stream, anomaly_fields(3))
    out = io.StringIO()
    stats = consume(make_stream(redis_url, stream_names), PrintDelivery(out))
    assert [json.loads(line)["image_id"] for line in out.getvalue().splitlines()] == ["line-1/img_0003.png"]
    assert stats.dead == {"malformed": 4} and pending(redis_client, stream_names) == 0
    reasons = [fields[b"dead_message"].split(b":")[0] for _, fields in redis_client.xrange(dead_stream_name(*stream_names))]
    assert reasons == [b"schema_invalid", b"schema_invalid", b"unsupported_version", b"invalid_json"]


def test_drift_entries_are_delivered_with_their_kind(redis_url, redis_client, stream_names):
    from datetime import datetime, timezone

    from schemas import DriftEntry, drift_event_id

    since = datetime(2025, 3, 1, tzinfo=timezone.utc)
    event = drift_event_id("line-1", "bottle", "drifting", since)
    entry = DriftEntry(event_id=event, line_id="line-1", product="bottle", state="drifting", previous_state="ok",
                       since=since, tests=("flag_rate",), window=200, flagged=19, expected_fpr=0.01, flag_rate_p=1e-9,
                       score_shift_p=None, score_shift_statistic=None, p_threshold=1e-4, model_version="v1",
                       status_key="invad:drift:line-1:bottle", record_key=f"invad:score:{event}")
    redis_client.xadd(stream_names[0], entry.to_fields())
    with WebhookServer() as server:
        stats = consume(make_stream(redis_url, stream_names), webhook(server.url))
    [(headers, body)] = server.received
    assert headers["X-Invad-Alert-Kind"] == "drift" and headers["Idempotency-Key"] == event
    assert body["state"] == "drifting" and body["tests"] == ["flag_rate"] and body["score_shift_p"] is None
    assert stats.by_kind == {"drift": 1}


def test_a_restart_reads_its_own_pending_alerts_first(redis_url, redis_client, stream_names):
    for i in range(4):
        redis_client.xadd(stream_names[0], anomaly_fields(i))
    alerts = make_stream(redis_url, stream_names)
    read = alerts.read_new(2, None)  # a run that read two entries and died before handling them
    assert len(read) == 2 and pending(redis_client, stream_names) == 2
    out = io.StringIO()
    consume(make_stream(redis_url, stream_names), PrintDelivery(out))  # same consumer name, restarted
    ids = [json.loads(line)["image_id"] for line in out.getvalue().splitlines()]
    assert ids == [f"line-1/img_{i:04d}.png" for i in range(4)]
    assert pending(redis_client, stream_names) == 0


def test_a_dead_consumers_alerts_are_claimed_after_the_idle_time(redis_url, redis_client, stream_names):
    for i in range(3):
        redis_client.xadd(stream_names[0], anomaly_fields(i))
    make_stream(redis_url, stream_names, consumer="dead-one").read_new(10, None)
    out = io.StringIO()
    consume(make_stream(redis_url, stream_names, consumer="other"), PrintDelivery(out), claim_idle_ms=60_000)
    assert out.getvalue() == ""  # not idle long enough: the owner may still be working on them
    time.sleep(0.3)
    consume(make_stream(redis_url, stream_names, consumer="other"), PrintDelivery(out), claim_idle_ms=200)
    assert len(out.getvalue().splitlines()) == 3 and pending(redis_client, stream_names) == 0


def test_a_stop_while_waiting_to_retry_leaves_the_alert_pending(redis_url, redis_client, stream_names):
    redis_client.xadd(stream_names[0], anomaly_fields(1))
    stop = threading.Event()
    with WebhookServer(default=503) as server:
        delivery = WebhookDelivery(server.url, timeout_s=5.0, max_retries=100, backoff_max_s=0.2, stop=stop)
        threading.Timer(0.5, stop.set).start()
        stats = consume(make_stream(redis_url, stream_names), delivery, stop=stop, once=False)
    assert stats.handled == 0 and len(server.received) >= 1
    assert pending(redis_client, stream_names) == 1  # delivered by the next run


def test_max_alerts_stops_after_that_many(redis_url, redis_client, stream_names):
    for i in range(5):
        redis_client.xadd(stream_names[0], anomaly_fields(i))
    out = io.StringIO()
    stats = consume(make_stream(redis_url, stream_names), PrintDelivery(out), once=False, max_alerts=2)
    assert stats.delivered == 2 and len(out.getvalue().splitlines()) == 2
    assert pending(redis_client, stream_names) == 0  # it read only what it was going to handle


@pytest.mark.parametrize("url", ["ftp://host/x", "http://", "hooks.example.com/x", "file:///etc/passwd"])
def test_webhook_urls_are_checked(url):
    with pytest.raises(ValueError, match="not an http"):
        webhook(url)


def test_a_deleted_stream_is_waited_out_and_its_group_created_again(redis_url, redis_client, stream_names):
    alerts = make_stream(redis_url, stream_names)
    redis_client.delete(stream_names[0])  # someone deleted the stream, group and all
    redis_client.xadd(stream_names[0], anomaly_fields(1))  # and a worker wrote a new alert
    out = io.StringIO()
    stats = consume(alerts, PrintDelivery(out))
    assert [json.loads(line)["image_id"] for line in out.getvalue().splitlines()] == ["line-1/img_0001.png"]
    assert stats.delivered == 1
