"""Alert entries 1.1: the ``kind`` field, drift entries that 1.0 readers still decode, and the drift
state-change script against a real Redis."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import jsonschema
import pytest

from schemas import DRIFT_ONCE_LUA, AlertEntry, DriftEntry, RedisLayout, SchemaError, decode_alert, drift_event_id
from schemas._validate import load_schema

SINCE = datetime(2025, 3, 1, 8, 30, tzinfo=timezone.utc)
V1_0_REQUIRED = ("schema_version", "image_id", "line_id", "product", "score", "threshold", "captured_at",
                 "record_key", "overlay_uri", "model_version")


def anomaly(**overrides) -> AlertEntry:
    fields = dict(image_id="line-3/a.png", line_id="line-3", product="bottle", score=5.0, threshold=3.0,
                  captured_at=SINCE, record_key="invad:score:line-3/a.png", overlay_uri=None, model_version="v1")
    return AlertEntry(**(fields | overrides))


def drift(state: str = "drifting", layout: RedisLayout = RedisLayout(), **overrides) -> DriftEntry:
    event = drift_event_id("line-3", "bottle", state, SINCE)
    fields = dict(event_id=event, line_id="line-3", product="bottle", state=state,
                  previous_state="ok" if state == "drifting" else "drifting", since=SINCE,
                  tests=("flag_rate", "score_shift") if state == "drifting" else (), window=500, flagged=31,
                  expected_fpr=0.01, flag_rate_p=2.5e-9, score_shift_p=1e-12, score_shift_statistic=0.61,
                  p_threshold=1e-4, model_version="v1", status_key=layout.drift_key("line-3", "bottle"),
                  record_key=layout.score_key(event))
    return DriftEntry(**(fields | overrides))


def as_redis(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_anomaly_entries_say_their_kind_and_1_0_entries_read_as_anomalies():
    fields = anomaly().to_fields()
    assert fields["kind"] == "anomaly" and fields["schema_version"] == "1.1"
    old = {k: v for k, v in fields.items() if k != "kind"} | {"schema_version": "1.0"}
    assert decode_alert(as_redis(old)) == anomaly() == AlertEntry.from_fields(old)


def test_drift_entries_round_trip_and_score_as_minus_log10_p():
    entry = drift()
    back = decode_alert(as_redis(entry.to_fields()))
    assert back == entry and isinstance(back, DriftEntry)
    assert entry.score == pytest.approx(12.0) and entry.threshold == pytest.approx(4.0)
    recovered = drift("ok", flag_rate_p=0.4, score_shift_p=None, score_shift_statistic=None)
    fields = recovered.to_fields()
    assert fields["tests"] == "" and fields["score_shift_p"] == ""
    assert decode_alert(fields) == recovered and recovered.score < recovered.threshold


def test_a_1_0_reader_decodes_a_drift_entry():
    # What a reader of 1.0 checks: every 1.0 field, valid by the 1.0 properties, unknown fields ignored.
    fields = drift().to_fields()
    assert set(V1_0_REQUIRED) <= set(fields)
    schema_1_0 = {key: value for key, value in load_schema("alert").items() if key != "allOf"}
    jsonschema.Draft202012Validator(schema_1_0).validate(fields)
    assert fields["overlay_uri"] == "" and fields["record_key"] == "invad:score:" + fields["image_id"]


def test_a_drift_entry_missing_a_drift_field_is_schema_invalid():
    fields = drift().to_fields()
    del fields["flag_rate_p"]
    with pytest.raises(SchemaError) as error:
        decode_alert(fields)
    assert error.value.reason == "schema_invalid" and "flag_rate_p" in error.value.message


def test_kinds_go_to_their_own_type():
    with pytest.raises(SchemaError, match="drift"):
        AlertEntry.from_fields(drift().to_fields())
    with pytest.raises(SchemaError, match="not a drift entry"):
        DriftEntry.from_fields(anomaly().to_fields())
    future = decode_alert(anomaly().to_fields() | {"kind": "maintenance", "schema_version": "1.4"})
    assert isinstance(future, AlertEntry) and future.kind == "maintenance"
    with pytest.raises(SchemaError):
        drift(state="ok", previous_state="ok")


def test_event_ids_are_valid_image_ids_even_for_awkward_line_ids():
    assert drift_event_id("line-3", "bottle", "ok", SINCE) == "drift:line-3:bottle:ok:1740817800000"
    odd = drift_event_id("line..3.", "bottle", "ok", SINCE)
    assert odd.startswith("drift:") and ".." not in odd
    drift(event_id=odd)  # validates


@pytest.fixture
def redis_client(redis_url):
    import redis
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_the_drift_script_records_each_change_once(redis_client):
    layout = RedisLayout(prefix=f"test-{uuid.uuid4().hex[:12]}", alerts_maxlen=1000)
    script = redis_client.register_script(DRIFT_ONCE_LUA)

    def change(entry: DriftEntry):
        keys, args = layout.drift_script_args("line-3", "bottle", entry.state, entry.status_fields(), entry.to_fields())
        return script(keys=keys, args=args)

    try:
        assert change(drift("ok", layout)) is None  # nothing stored means ok: no change, nothing written
        assert redis_client.exists(layout.drift_key("line-3", "bottle")) == 0
        first = change(drift("drifting", layout))
        assert first and change(drift("drifting", layout)) is None  # a replay adds nothing
        status = redis_client.hgetall(layout.drift_key("line-3", "bottle"))
        assert status[b"state"] == b"drifting" and status[b"alert_id"] == first
        assert status[b"tests"] == b"flag_rate,score_shift" and status[b"since"] == b"2025-03-01T08:30:00Z"
        assert change(drift("ok", layout))  # the recovery is a change of its own
        assert [decode_alert(f).state for _, f in redis_client.xrange(layout.alerts_key)] == ["drifting", "ok"]
    finally:
        redis_client.delete(layout.alerts_key, layout.drift_key("line-3", "bottle"))
