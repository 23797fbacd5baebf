"""The one module that imports boto3: S3 client construction and S3 error classification.

Shared by the producers (listing, uploads) and the worker (image fetches, the artefact sink), so
timeouts, retries, addressing and checksum settings for S3-compatible stores live in one place.
Credentials come from the arguments or, when those are None, the standard AWS chain
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, instance roles).
"""

from __future__ import annotations

import os
import re
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

# A bucket name as S3 allows it (3-63 characters, no leading or trailing dot or dash).
BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
BUCKET_RE = re.compile(f"^{BUCKET_PATTERN}$")
# What a failed S3 call raises: an answer from the store (ClientError) or none at all (BotoCoreError:
# endpoint unreachable, no credentials, timeouts, ...).
S3_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
# Error codes that mean "this object or bucket is not there", a permanent answer for one message.
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
# Error codes that mean "the store is overloaded or briefly unhealthy": wait and retry.
TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                             "RequestTimeTooSkewed", "ServiceUnavailable", "InternalError", "503", "500", "502",
                             "504", "RequestLimitExceeded"})
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


def make_client(*, endpoint: str | None = None, region: str | None = None, access_key: str | None = None,
                secret_key: str | None = None, session_token: str | None = None, timeout_s: float = 10.0,
                max_attempts: int = 2, pool_size: int = 16) -> Any:
    """A boto3 S3 client; nothing connects until the first call.

    Args:
        endpoint: e.g. "http://127.0.0.1:18333" for the test s3proxy (then path-style addressing,
            since such stores on a host:port rarely resolve virtual-host bucket names); None for AWS.
        region: default AWS_REGION, then AWS_DEFAULT_REGION, then "us-east-1".
        timeout_s: read timeout of one attempt (the connect timeout is at most 5 s).
        max_attempts: attempts per call in botocore's standard retry mode.
        pool_size: connections kept for concurrent calls.

    Checksums are computed only when an operation requires them: boto3 >= 1.36 otherwise sends CRC32
    trailers that several S3-compatible stores (SeaweedFS, s3proxy before 4.0, older MinIO, lakeFS)
    store as part of the object or reject.
    """
    config = Config(
        connect_timeout=min(timeout_s, 5.0),
        read_timeout=timeout_s,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=pool_size,
        s3={"addressing_style": "path"} if endpoint else {},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                    aws_session_token=session_token, region_name=region)
    return session.client("s3", endpoint_url=endpoint, config=config)


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


def ensure_bucket(client: Any, bucket: str) -> bool:
    """Create ``bucket`` unless it exists (dev and tests; production buckets are provisioned).

    Returns True when this call created it. Any other failure propagates as botocore raised it, for the
    caller to classify.
    """
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except botocore.exceptions.ClientError as error:
        if not is_missing(error):
            raise
    try:
        client.create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as error:
        if error_code(error) not in _BUCKET_EXISTS_CODES:  # someone else created it meanwhile
            raise
        return False
    return True
