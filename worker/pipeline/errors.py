"""The three kinds of failure the loop distinguishes (STYLE.md rule 6).

- :class:`BadRecord`: this one message can never succeed; it is dead-lettered and committed.
- :class:`DependencyDown`: Redis, S3, the broker or an image store is unreachable or overloaded; the
  batch waits and is retried, nothing is committed past it.
- anything else is a bug: the loop lets it propagate, commits nothing, and the process exits non-zero.
"""

from __future__ import annotations

# Dead-letter reasons (the ``DeadLetter.reason`` enum of ``schemas``), spelled once here.
INVALID_JSON = "invalid_json"
SCHEMA_INVALID = "schema_invalid"
UNSUPPORTED_VERSION = "unsupported_version"
URI_NOT_ALLOWED = "uri_not_allowed"
OBJECT_MISSING = "object_missing"
FETCH_FAILED = "fetch_failed"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_INVALID = "image_invalid"
UNKNOWN_PRODUCT = "unknown_product"
PROCESSING_FAILED = "processing_failed"  # an unexpected error on this one message (scoring, building its record)


class BadRecord(Exception):
    """A permanent, per-message failure. ``reason`` is one of the dead-letter reasons above."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class DependencyDown(Exception):
    """A transient failure of an external dependency; ``dependency`` names it (redis, s3, kafka, https, file)."""

    def __init__(self, dependency: str, message: str):
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency
        self.message = message
