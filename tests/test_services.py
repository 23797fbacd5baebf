"""service_setting: a missing service skips a test locally and fails it where services are required."""

from __future__ import annotations

import pytest

from services import service_setting


def test_a_set_variable_is_returned(monkeypatch):
    monkeypatch.setenv("INVAD_TEST_SOMETHING", "127.0.0.1:1")
    assert service_setting("INVAD_TEST_SOMETHING") == "127.0.0.1:1"


def test_a_missing_variable_skips_with_the_fix(monkeypatch):
    monkeypatch.delenv("INVAD_REQUIRE_SERVICES", raising=False)
    monkeypatch.setenv("INVAD_TEST_SOMETHING", "")
    with pytest.raises(pytest.skip.Exception, match="INVAD_TEST_SOMETHING is not set: run `scripts/services.sh start`"):
        service_setting("INVAD_TEST_SOMETHING")


def test_a_missing_variable_fails_when_services_are_required(monkeypatch):
    monkeypatch.setenv("INVAD_REQUIRE_SERVICES", "1")
    monkeypatch.delenv("INVAD_TEST_SOMETHING", raising=False)
    with pytest.raises(pytest.fail.Exception, match="INVAD_TEST_SOMETHING is not set.*INVAD_REQUIRE_SERVICES=1"):
        service_setting("INVAD_TEST_SOMETHING")
