"""The three kinds of failure the loop distinguishes (STYLE.md rule 6).

- :class:`BadRecord`: this one message can never succeed; it is dead-lettered and committed.
- :class:`DependencyDown`: Redis, S3, the broker or an image store is unreachable or overloaded; the
  batch waits and is retried, nothing is committed past it.
- :class:`Misconfigured`: a dependency answered and refused our configuration (credentials, a missing
  bucket or topic, no permission); waiting cannot help, so the worker exits at start with a one-line fix.
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


# Exit codes of `invad work`, one per kind of start-up failure, so an operator (or a pod's restart
# reason) tells at once which setting to fix ("models": no servable version of a product that follows
# a pointer). 75 (EX_TEMPFAIL) is the abandoned drain.
EXIT_CODES = {"config": 2, "redis": 3, "s3": 4, "kafka": 5, "models": 6}


class Misconfigured(Exception):
    """A dependency is reachable and says our configuration is wrong. ``dependency`` is a key of
    EXIT_CODES; ``problem`` says what it refused, ``fix`` what to change."""

    def __init__(self, dependency: str, problem: str, fix: str):
        super().__init__(f"{dependency}: {problem}; fix: {fix}")
        self.dependency, self.problem, self.fix = dependency, problem, fix

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.dependency]
