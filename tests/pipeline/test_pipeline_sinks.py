"""Redis and S3 sinks and the S3/file/https fetcher against the real services (and the TCP proxy)."""

from __future__ import annotations

import io
import os
from urllib.parse import urlsplit

import pytest
from PIL import Image

from helpers import scored, unique
from proxy import TCPProxy
from worker.pipeline.errors import BadRecord, DependencyDown

def png_bytes(size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def redis_sink(redis_url):
    from schemas import RedisLayout
    from worker.pipeline.redis_sink import RedisSink
    sink = RedisSink(redis_url, RedisLayout(prefix=unique("r"), record_ttl_s=600, recent_max=3, top_max=2))
    yield sink
    sink.close()


def test_redis_records_zsets_and_alerts_once(redis_sink):
    from schemas import AlertEntry, ScoreRecord
    layout = redis_sink.layout
    batch = [scored(f"img{i}", score) for i, score in enumerate([0.1, 2.0, 0.3, 5.0, 0.2])]
    for _ in range(3):  # redelivery: same writes, still one alert per flagged image
        redis_sink.write(batch)
        redis_sink.flush()
    client = redis_sink._client
    for item in batch:
        stored = ScoreRecord.from_json(client.get(layout.score_key(item.record.image_id)))
        assert stored == item.record
        assert 0 < client.ttl(layout.score_key(item.record.image_id)) <= 600
    entries = client.xrange(layout.alerts_key)
    alerts = [AlertEntry.from_fields(fields) for _, fields in entries]
    assert sorted(a.image_id for a in alerts) == ["img1", "img3"]
    assert alerts[0].record_key == layout.score_key(alerts[0].image_id)
    assert client.zrange(layout.line_top_key("L1"), 0, -1) == [b"img1", b"img3"]  # top 2 by score
    assert client.zcard(layout.line_recent_key("L1")) == 3


def test_redis_down_raises_dependency_down_then_recovers(redis_url):
    from schemas import RedisLayout
    from worker.pipeline.redis_sink import RedisSink
    parts = urlsplit(redis_url)
    with TCPProxy(parts.hostname, parts.port) as proxy:
        sink = RedisSink(f"redis://{proxy.address}{parts.path}", RedisLayout(prefix=unique("r")), socket_timeout_s=2)
        sink.write([scored("a", 3.0)])
        sink.flush()
        proxy.cut()
        sink.write([scored("b", 3.0)])
        with pytest.raises(DependencyDown) as info:
            sink.flush()
        assert info.value.dependency == "redis"
        proxy.restore()
        sink.flush()  # the staged batch is kept and sent on retry
        assert sink._client.xlen(sink.layout.alerts_key) == 2
        sink.close()


@pytest.fixture
def s3_client(s3_settings):
    from worker.common import s3client
    return s3client.make_client(endpoint=s3_settings["endpoint"], region=s3_settings["region"],
                                access_key=s3_settings["access_key"], secret_key=s3_settings["secret_key"], timeout_s=5)


def test_s3_sink_writes_flagged_artefacts_idempotently(s3_client):
    from schemas import ScoreRecord
    from worker.pipeline.s3_sink import S3Sink
    bucket = unique("b").lower()
    sink = S3Sink(s3_client, bucket, "pfx", create_bucket=True)
    batch = [scored("good", 0.2, store=sink), scored("cam/bad.1", 4.0, store=sink)]
    sink.write(batch)
    sink.write(batch)
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["pfx/default/L1/cam/bad.1/original.png", "pfx/default/L1/cam/bad.1/overlay.png",
                    "pfx/default/L1/cam/bad.1/record.json"]
    body = s3_client.get_object(Bucket=bucket, Key=keys[2])["Body"].read()
    record = ScoreRecord.from_json(body)
    assert record == batch[1].record and record.artefacts["overlay"] == f"s3://{bucket}/{keys[1]}"
    assert s3_client.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == b"\x89PNG-original"
    sink.close()


def test_fetcher_classifies_s3_file_and_https(s3_client, s3_settings, tmp_path):
    from worker.pipeline.fetch import Fetched, Fetcher
    bucket = unique("f").lower()
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_object(Bucket=bucket, Key="ok.png", Body=png_bytes())
    s3_client.put_object(Bucket=bucket, Key="junk.png", Body=b"not an image")
    noise = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noise, format="PNG")
    s3_client.put_object(Bucket=bucket, Key="big.png", Body=noise.getvalue())  # > max_bytes
    s3_client.put_object(Bucket=bucket, Key="wide.png", Body=png_bytes(128))  # > max_pixels
    (tmp_path / "a.png").write_bytes(png_bytes())
    fetcher = Fetcher(max_bytes=2000, max_pixels=10_000, concurrency=4, timeout_s=2, file_roots=[str(tmp_path)],
                      https_allow=["127.0.0.1:1"], s3_client_factory=lambda: s3_client)
    uris = [f"s3://{bucket}/ok.png", f"s3://{bucket}/missing.png", f"s3://{bucket}/junk.png", f"s3://{bucket}/big.png",
            f"s3://{bucket}/wide.png", (tmp_path / "a.png").as_uri(), "file:///etc/hostname", "https://example.com/x.png", "ftp://x/y"]
    out = fetcher.fetch_all(uris)
    assert isinstance(out[0], Fetched) and out[0].ext == "png" and out[0].image.size == (16, 16)
    assert [getattr(o, "reason", None) for o in out[1:]] == [
        "object_missing", "image_invalid", "image_too_large", "image_too_large", None, "uri_not_allowed", "uri_not_allowed",
        "uri_not_allowed"]
    with pytest.raises(DependencyDown):  # allow-listed host, nothing listening: transient
        fetcher.fetch_all(["https://127.0.0.1:1/x.png"])
    fetcher.close()


def test_fetcher_s3_down_is_transient(s3_settings):
    from worker.common import s3client
    from worker.pipeline.fetch import Fetcher
    parts = urlsplit(s3_settings["endpoint"])
    with TCPProxy(parts.hostname, parts.port) as proxy:
        proxy.cut()
        client = s3client.make_client(endpoint=f"http://{proxy.address}", region="us-east-1",
                                      access_key=s3_settings["access_key"], secret_key=s3_settings["secret_key"], timeout_s=1)
        fetcher = Fetcher(max_bytes=1000, max_pixels=1000, s3_client_factory=lambda: client)
        with pytest.raises(DependencyDown) as info:
            fetcher.fetch_all(["s3://somebucket/x.png"])
        assert info.value.dependency == "s3"
        fetcher.close()


def test_bad_record_reasons_are_dead_letter_reasons():
    from schemas import DEAD_LETTER_REASONS
    from worker.pipeline import errors
    reasons = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert reasons == set(DEAD_LETTER_REASONS)
    assert BadRecord("image_invalid", "x").reason == "image_invalid"
