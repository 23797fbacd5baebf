"""The producer's S3 client: the worker's settings, errors that name the call, and uploads that arrive
byte for byte in a real S3-compatible store."""

from __future__ import annotations

import socket

import pytest

from producers.s3 import S3, S3Error
from worker.common.s3client import make_client


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_producer_client_has_the_settings_s3_compatible_stores_need():
    config = S3(endpoint_url="http://127.0.0.1:8333")._client.meta.config
    # Without these, boto3 >= 1.36 sends CRC32 trailers that SeaweedFS and others store inside the object.
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.s3 == {"addressing_style": "path"}


def test_unreachable_store_is_an_s3_error_naming_the_call_and_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    s3 = S3(endpoint_url=endpoint, max_attempts=1)
    with pytest.raises(S3Error, match=rf"listing s3://bucket-x/p/ failed at {endpoint}"):
        list(s3.list_objects("bucket-x", "p/"))


def test_upload_arrives_byte_for_byte(s3_bucket, s3_env, tmp_path):
    s3, bucket = s3_bucket
    data = bytes(range(256)) * 300  # 75 kB: large enough for a chunked upload body
    (tmp_path / "a.png").write_bytes(data)
    assert s3.upload_file(tmp_path / "a.png", bucket, "line/a.png") == f"s3://{bucket}/line/a.png"
    # Read back with a plain client, as a worker would fetch it.
    reader = make_client(endpoint=s3_env)
    response = reader.get_object(Bucket=bucket, Key="line/a.png")
    assert response["Body"].read() == data and response["ContentType"] == "image/png"
    with pytest.raises(S3Error, match="NoSuchKey"):
        s3.get_bytes(bucket, "line/missing.png")
