"""Redis layout: key names, argument checks, and the exactly-once alert script against a real Redis."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone

import pytest

from schemas import ALERT_ONCE_LUA, AlertEntry, RedisLayout


def test_keys_follow_the_documented_layout():
    layout = RedisLayout(prefix="invad-staging")
    assert layout.score_key("line-3/a.png") == "invad-staging:score:line-3/a.png"
    assert layout.line_recent_key("line-3") == "invad-staging:line:line-3:recent"
    assert layout.line_top_key("line-3") == "invad-staging:line:line-3:top"
    assert layout.alerts_key == "invad-staging:alerts"
    assert layout.alerted_key("line-3/a.png") == "invad-staging:alerted:line-3/a.png"
    assert RedisLayout().alerts_key == "invad:alerts"


@pytest.mark.parametrize("kwargs", [{"prefix": ""}, {"prefix": "in vad"}, {"prefix": "invad:"}, {"record_ttl_s": 0},
                                    {"top_max": -1}, {"alerts_maxlen": 1.5}, {"recent_max": True}])
def test_bad_settings_name_the_argument(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RedisLayout(**kwargs)


@pytest.mark.parametrize("image_id", ["a b", "../x", ""])
def test_keys_refuse_unsafe_ids(image_id):
    with pytest.raises(ValueError, match="image_id"):
        RedisLayout().score_key(image_id)


def test_alert_script_args():
    layout = RedisLayout(prefix="p", record_ttl_s=60, alerts_maxlen=10)
    keys, args = layout.alert_script_args("img", {"a": "1", "b": "2"})
    assert keys == ["p:alerted:img", "p:alerts"]
    assert args == ["60", "10", "a", "1", "b", "2"]


@pytest.fixture
def redis_client():
    url = os.environ.get("INVAD_TEST_REDIS_URL")
    if not url:
        pytest.skip("INVAD_TEST_REDIS_URL is not set (source $HOME/.cache/invad/run/services.env after "
                    "scripts/services.sh start)")
    import redis

    client = redis.Redis.from_url(url)
    yield client
    client.close()


def test_alert_script_adds_once_per_image(redis_client):
    layout = RedisLayout(prefix=f"test-{uuid.uuid4().hex[:12]}", record_ttl_s=300, alerts_maxlen=1000)
    alert = AlertEntry(image_id="line-1/a.png", line_id="line-1", product="bottle", score=5.0, threshold=3.0,
                       captured_at=datetime(2024, 5, 1, tzinfo=timezone.utc),
                       record_key=layout.score_key("line-1/a.png"), overlay_uri=None, model_version="1")
    script = redis_client.register_script(ALERT_ONCE_LUA)
    try:
        keys, args = layout.alert_script_args(alert.image_id, alert.to_fields())
        first = script(keys=keys, args=args)
        again = script(keys=keys, args=args)  # a redelivered message
        assert first is not None and again is None
        entries = redis_client.xrange(layout.alerts_key)
        assert [entry_id for entry_id, _ in entries] == [first]
        assert AlertEntry.from_fields(entries[0][1]) == alert
        assert redis_client.get(layout.alerted_key(alert.image_id)) == first
        assert 0 < redis_client.ttl(layout.alerted_key(alert.image_id)) <= 300
    finally:
        redis_client.delete(layout.alerts_key, layout.alerted_key(alert.image_id))
