"""The worker's S3 seam: a client for a :class:`~worker.pipeline.config.WorkerConfig`, and S3 failures
turned into the loop's :class:`~worker.pipeline.errors.DependencyDown`.

Client settings and error classification are :mod:`worker.common.s3client`, shared with the producers.
"""

from __future__ import annotations

from typing import Any

from worker.common import s3client

from .errors import DependencyDown


def client_from_config(config: Any) -> Any:
    """An S3 client for a WorkerConfig: short timeouts and two attempts per call, because the loop has
    its own backoff and must keep each attempt well inside Kafka's max.poll.interval.ms."""
    return s3client.make_client(endpoint=config.s3_endpoint, region=config.s3_region,
                                access_key=config.aws_access_key_id, secret_key=config.aws_secret_access_key,
                                session_token=config.aws_session_token, timeout_s=config.fetch_timeout_s,
                                max_attempts=2, pool_size=max(16, config.fetch_concurrency * 2))


def as_dependency_down(error: BaseException, what: str) -> DependencyDown:
    """Wrap a transient S3 error for the loop, keeping the S3 code in the message."""
    code = s3client.error_code(error)
    return DependencyDown("s3", f"{what}: {type(error).__name__}{f' ({code})' if code else ''}: {error}")


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create ``bucket`` unless it exists; transient failures raise DependencyDown, others propagate."""
    try:
        s3client.ensure_bucket(client, bucket)
    except Exception as error:  # noqa: BLE001 - classified here
        if s3client.is_transient(error):
            raise as_dependency_down(error, f"ensuring bucket {bucket}") from error
        raise
