"""S3 access for producers: list a prefix, upload a file (the producer side's only boto3 importer).

Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE, instance roles); ``endpoint_url`` points at an S3-compatible store such as MinIO or s3proxy.
"""

from __future__ import annotations

import mimetypes
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"{uri!r}: bucket {bucket!r} is not a valid S3 bucket name (3-63 characters of [a-z0-9.-])")
    return bucket, rest


def content_type(path: str | Path) -> str:
    """MIME type for an image file name (application/octet-stream when unknown)."""
    return mimetypes.guess_type(str(path))[0] or "application/octet-stream"


class S3:
    """A thin boto3 S3 client. Nothing connects until the first call.

    Args:
        endpoint_url: e.g. "http://127.0.0.1:18333" for the test s3proxy; None for AWS.
        region: defaults to AWS_REGION / AWS_DEFAULT_REGION, else "us-east-1".
        max_attempts: boto3 standard-mode retry attempts per call.
    """

    def __init__(self, endpoint_url: str | None = None, region: str | None = None, *, max_attempts: int = 5):
        import boto3
        from botocore.config import Config

        self.endpoint_url = endpoint_url
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # S3-compatible stores on a host:port rarely resolve virtual-host bucket names.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            connect_timeout=10,
            read_timeout=60,
        )
        self._client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise S3Error(f"{what} failed: {code}: {exc}") from None
        except BotoCoreError as exc:  # endpoint unreachable, no credentials, ...
            where = f" at {self.endpoint_url}" if self.endpoint_url else ""
            raise S3Error(f"{what} failed{where}: {exc}") from None

    def list_objects(self, bucket: str, prefix: str, *, page_size: int = 1000) -> Iterator[S3Object]:
        """Every object under ``prefix`` in key order, following pagination (``page_size`` keys per request).

        Raises:
            S3Error: listing failed (missing bucket, denied, unreachable).
        """
        token = None
        while True:
            kwargs = dict(Bucket=bucket, Prefix=prefix, MaxKeys=page_size)
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"listing s3://{bucket}/{prefix}", self._client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield S3Object(key=item["Key"], size=int(item["Size"]), last_modified=item["LastModified"])
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def upload_file(self, path: str | Path, bucket: str, key: str) -> str:
        """Upload a local file to ``bucket/key`` (overwriting) and return its "s3://bucket/key" URI.

        Raises:
            S3Error: the upload failed.
            OSError: the local file cannot be read.
        """
        with open(path, "rb") as body:
            self._call(
                f"uploading {path} to s3://{bucket}/{key}",
                self._client.put_object,
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type(path),
            )
        return f"s3://{bucket}/{key}"

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The content of ``bucket/key``."""
        response = self._call(f"reading s3://{bucket}/{key}", self._client.get_object, Bucket=bucket, Key=key)
        return response["Body"].read()

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist (dev and tests; production buckets are provisioned)."""
        from botocore.exceptions import ClientError

        try:
            self._client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise S3Error(f"creating bucket {bucket!r} failed: {exc}") from None

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many (test cleanup)."""
        keys = [obj.key for obj in self.list_objects(bucket, prefix)]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start:start + 1000]]
            self._call("deleting objects", self._client.delete_objects, Bucket=bucket, Delete={"Objects": chunk})
        return len(keys)

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object in ``bucket`` and then the bucket (test cleanup)."""
        self.delete_prefix(bucket, "")
        self._call(f"deleting bucket {bucket!r}", self._client.delete_bucket, Bucket=bucket)
