"""The one module that imports boto3: an S3 client factory and S3 error classification.

Shared by the image fetcher (``s3://`` references) and the S3 sink, so timeouts, retries and the
S3-compatible-store settings live in one place.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from .errors import DependencyDown

# Error codes that mean "this object or bucket is not there", a permanent answer for one message.
MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
# Error codes that mean "the store is overloaded or briefly unhealthy": wait and retry.
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                   "ServiceUnavailable", "InternalError", "503", "500", "502", "504", "RequestLimitExceeded"}


def make_client(*, endpoint: str | None, region: str | None, access_key: str | None, secret_key: str | None,
                session_token: str | None = None, timeout_s: float = 10.0, pool_size: int = 16) -> Any:
    """An S3 client with bounded timeouts and few retries.

    Timeouts are short and retries few because the loop has its own backoff and must keep each
    attempt well inside Kafka's max.poll.interval.ms. Checksums are computed only when an operation
    requires them: boto3 >= 1.36 otherwise sends CRC32 trailers that several S3-compatible stores
    (SeaweedFS, s3proxy before 4.0, older MinIO, lakeFS) store as part of the object or reject.
    """
    config = Config(
        connect_timeout=min(timeout_s, 5.0),
        read_timeout=timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=pool_size,
        s3={"addressing_style": "path"} if endpoint else {},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                    aws_session_token=session_token, region_name=region or "us-east-1")
    return session.client("s3", endpoint_url=endpoint, config=config)


def client_from_config(config: Any) -> Any:
    """An S3 client for a :class:`~worker.pipeline.config.WorkerConfig`."""
    return make_client(endpoint=config.s3_endpoint, region=config.s3_region, access_key=config.aws_access_key_id,
                       secret_key=config.aws_secret_access_key, session_token=config.aws_session_token,
                       timeout_s=config.fetch_timeout_s, pool_size=max(16, config.fetch_concurrency * 2))


def error_code(error: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (e.g. "NoSuchKey", "503"), else None."""
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or (str(status) if status else None)
    return None


def is_missing(error: BaseException) -> bool:
    """True when the error says the key or bucket does not exist."""
    return error_code(error) in MISSING_CODES


def is_transient(error: BaseException) -> bool:
    """True for connection failures, timeouts, throttling and 5xx answers."""
    # botocore's ConnectionError covers refused/timeout/proxy/TLS; HTTPClientError covers a connection
    # closed mid-response, read timeouts and broken response streams.
    if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                          botocore.exceptions.IncompleteReadError, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        code = error_code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in TRANSIENT_CODES or int(status) >= 500
    # urllib3/http.client failures that botocore passes through unwrapped.
    return type(error).__module__.split(".")[0] in ("urllib3", "http")


def as_dependency_down(error: BaseException, what: str) -> DependencyDown:
    """Wrap a transient S3 error for the loop, keeping the S3 code in the message."""
    code = error_code(error)
    return DependencyDown("s3", f"{what}: {type(error).__name__}{f' ({code})' if code else ''}: {error}")


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create ``bucket`` unless it exists; transient failures raise DependencyDown."""
    try:
        client.head_bucket(Bucket=bucket)
        return
    except Exception as error:  # noqa: BLE001 - classified below
        if is_transient(error):
            raise as_dependency_down(error, f"head_bucket {bucket}") from error
        if not is_missing(error):
            raise
    try:
        client.create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as error:
        if error_code(error) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            if is_transient(error):
                raise as_dependency_down(error, f"create_bucket {bucket}") from error
            raise
    except Exception as error:  # noqa: BLE001
        if is_transient(error):
            raise as_dependency_down(error, f"create_bucket {bucket}") from error
        raise
