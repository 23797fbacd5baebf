"""service_setting skips or fails without a service; private services get ports they can use."""

from __future__ import annotations

import os
import subprocess

import pytest

from services import service_setting
from worker.bench.services import SERVICES_SH, free_ports


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


def test_free_ports_are_distinct_even_when_many_are_asked_for():
    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8, ports


def test_services_sh_refuses_one_port_for_the_broker_and_its_controller(tmp_path):
    env = {**os.environ, "INVAD_RUN_DIR": str(tmp_path), "INVAD_KAFKA_PORT": "23456",
           "INVAD_KAFKA_CONTROLLER_PORT": "23456", "INVAD_TEST_REDIS_URL": "unused://127.0.0.1:9",
           "INVAD_TEST_S3_ENDPOINT": "unused://127.0.0.1:9"}
    env.pop("INVAD_TEST_KAFKA", None)
    done = subprocess.run(["bash", str(SERVICES_SH), "start"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "INVAD_KAFKA_PORT and INVAD_KAFKA_CONTROLLER_PORT are both 23456" in done.stderr
