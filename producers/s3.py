"""S3 access for producers: list a prefix, upload a file.

The client and its settings come from :mod:`worker.common.s3client` (shared with the worker).
Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE, instance roles); ``endpoint_url`` points at an S3-compatible store such as MinIO or s3proxy.
"""

from __future__ import annotations

import mimetypes
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from worker.common import s3client

class S3Error(RuntimeError):
    """An S3 call failed after the client's retries (unreachable endpoint, no credentials, denied, missing bucket)."""


@dataclass(frozen=True)
class S3Object:
    """One listed object: key, size in bytes, last-modified time (timezone-aware)."""

    key: str
    size: int
    last_modified: datetime


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key_or_prefix) of "s3://bucket[/key-or-prefix]"; the second part may be "".

    Raises:
        ValueError: not an s3:// URI or an invalid bucket name (3-63 of [a-z0-9.-]).
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an S3 URI; expected s3://bucket/prefix")
    bucket, _, rest = uri[len("s3://"):].partition("/")
    if not s3client.BUCKET_RE.match(bucket):
        raise ValueError(f"{uri!r}: bucket {bucket!r} is not a valid S3 bucket name (3-63 characters of [a-z0-9.-])")
    return bucket, rest


def content_type(path: str | Path) -> str:
    """MIME type for an image file name (application/octet-stream when unknown)."""
    return mimetypes.guess_type(str(path))[0] or "application/octet-stream"


class S3:
    """A thin S3 client for producers, on :func:`worker.common.s3client.make_client`. Nothing connects
    until the first call; every failed call raises :class:`S3Error`.

    Args:
        endpoint_url: e.g. "http://127.0.0.1:18333" for the test s3proxy; None for AWS.
        region: defaults to AWS_REGION / AWS_DEFAULT_REGION, else "us-east-1".
        max_attempts: retry attempts per call (standard mode); uploads may wait out a busy store.
    """

    def __init__(self, endpoint_url: str | None = None, region: str | None = None, *, max_attempts: int = 5):
        self.endpoint_url = endpoint_url
        self._client = s3client.make_client(endpoint=endpoint_url, region=region, timeout_s=60.0,
                                            max_attempts=max_attempts)

    @contextmanager
    def _failing_as(self, what: str) -> Iterator[None]:
        """Turn a botocore failure inside the block into S3Error("{what} failed...")."""
        try:
            yield
        except s3client.S3_ERRORS as exc:
            code = s3client.error_code(exc)
            if code:
                raise S3Error(f"{what} failed: {code}: {exc}") from None
            where = f" at {self.endpoint_url}" if self.endpoint_url else ""  # unreachable, no credentials, ...
            raise S3Error(f"{what} failed{where}: {exc}") from None

    def list_objects(self, bucket: str, prefix: str, *, page_size: int = 1000) -> Iterator[S3Object]:
        """Every object under ``prefix`` in key order, following pagination (``page_size`` keys per request).

        Raises:
            S3Error: listing failed (missing bucket, denied, unreachable).
        """
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        with self._failing_as(f"listing s3://{bucket}/{prefix}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield S3Object(key=item["Key"], size=int(item["Size"]), last_modified=item["LastModified"])

    def upload_file(self, path: str | Path, bucket: str, key: str) -> str:
        """Upload a local file to ``bucket/key`` (overwriting) and return its "s3://bucket/key" URI.

        Raises:
            S3Error: the upload failed.
            OSError: the local file cannot be read.
        """
        with open(path, "rb") as body, self._failing_as(f"uploading {path} to s3://{bucket}/{key}"):
            self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type(path))
        return f"s3://{bucket}/{key}"

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The content of ``bucket/key``."""
        with self._failing_as(f"reading s3://{bucket}/{key}"):
            return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist (dev and tests; production buckets are provisioned)."""
        with self._failing_as(f"creating bucket {bucket!r}"):
            s3client.ensure_bucket(self._client, bucket)

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many (test cleanup)."""
        keys = [obj.key for obj in self.list_objects(bucket, prefix)]
        with self._failing_as(f"deleting objects under s3://{bucket}/{prefix}"):
            for start in range(0, len(keys), 1000):
                chunk = [{"Key": k} for k in keys[start:start + 1000]]
                self._client.delete_objects(Bucket=bucket, Delete={"Objects": chunk})
        return len(keys)

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object in ``bucket`` and then the bucket (test cleanup)."""
        self.delete_prefix(bucket, "")
        with self._failing_as(f"deleting bucket {bucket!r}"):
            self._client.delete_bucket(Bucket=bucket)
