"""Settings of the real services (Kafka, Redis, S3) that integration tests run against.

``scripts/services.sh start`` writes them to ``~/.cache/invad/run/services.env``. Without them a
service test is skipped, saying how to start them; under ``INVAD_REQUIRE_SERVICES=1`` (set by
``scripts/test.sh``, hence CI) it fails instead, so service tests can never be skipped silently.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

HINT = "run `scripts/services.sh start`, then `source ~/.cache/invad/run/services.env`"


def service_setting(name: str) -> str:
    """The non-empty value of environment variable ``name``.

    Skips the calling test when it is unset or empty; fails it instead when INVAD_REQUIRE_SERVICES=1.
    """
    value = os.environ.get(name)
    if value:
        return value
    unavailable(f"{name} is not set: {HINT}")


def unavailable(message: str) -> NoReturn:
    """Skip the calling test, saying what is missing (a service, a tool such as openssl); fail it
    instead when INVAD_REQUIRE_SERVICES=1."""
    if os.environ.get("INVAD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (INVAD_REQUIRE_SERVICES=1: the services are required here)", pytrace=False)
    pytest.skip(message)
