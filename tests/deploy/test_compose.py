"""deploy/compose.yaml, the laptop deployment: parsed and checked against the worker's own settings table.

No Docker here: the file is read with PyYAML (anchors and merge keys resolved as Compose does) and every
name, address and port in it is checked against what the other side listens on or reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from worker.pipeline.config import OPTIONS, WorkerConfig

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
CHART_VALUES = ROOT / "deploy" / "helm" / "invad" / "values.yaml"
INVAD_SERVICES = ("topics", "worker", "producer")  # run the invad image
# The service keys this file may use (a small schema of our own: a typo like `depend_on` fails here).
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "ports", "volumes", "depends_on",
                "healthcheck", "restart", "stop_grace_period", "deploy"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env(service: dict) -> dict[str, str]:
    return service.get("environment") or {}


def known_variables() -> set[str]:
    """Every variable a worker setting reads, plus the names of settings being added on other branches,
    kept in one place in the chart's values (envNames)."""
    pending = yaml.safe_load(CHART_VALUES.read_text())["envNames"].values()
    return {name for option in OPTIONS for name in option.env} | set(pending)


def listener_ports(kafka: dict) -> dict[str, int]:
    """Kafka listener name -> port, from KAFKA_LISTENERS."""
    return {name: int(port) for name, port in re.findall(r"(\w+)://[^:,]*:(\d+)", env(kafka)["KAFKA_LISTENERS"])}


def published(service: dict) -> list[tuple[int, int]]:
    """(host port, container port) of each "HOST:CONTAINER" entry."""
    pairs = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str) and re.fullmatch(r"\d+:\d+", entry), f"use \"HOST:CONTAINER\": {entry!r}"
        host, container = entry.split(":")
        pairs.append((int(host), int(container)))
    return pairs


def test_the_file_has_the_shape_compose_reads(compose, services):
    assert set(compose) - {"name", "services", "volumes", "networks"} <= {k for k in compose if k.startswith("x-")}
    assert {"kafka", "redis", "s3", *INVAD_SERVICES} <= set(services)
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        assert "image" in service or "build" in service, name
        for key, value in env(service).items():
            assert isinstance(value, str), f"{name}: {key} must be a quoted string, not {value!r}"
    for name in INVAD_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (COMPOSE.parent / services[name]["build"]["context"] / "deploy" / "Dockerfile").is_file()
    kafka_env = env(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, one node
    assert "minio" not in services["s3"]["image"]  # AGPL: not used (DESIGN.md)


@pytest.mark.parametrize("name", INVAD_SERVICES)
def test_every_variable_is_a_real_worker_setting(services, name):
    ours = {key for key in env(services[name]) if key.startswith(("INVAD_", "AWS_"))}
    unknown = ours - known_variables()
    assert not unknown, f"{name}: not settings of worker/pipeline/config.py: {sorted(unknown)}"


def test_the_worker_environment_is_accepted_by_the_worker(services):
    config = WorkerConfig.from_sources({}, env(services["worker"]))
    assert config.mode == "kafka" and config.models == (("*", "/models/default"),)
    assert config.s3_create_bucket  # the producer's upload bucket exists once the worker is ready


def test_depends_on_targets_exist_with_conditions_that_can_be_met(services):
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert spec["condition"] in CONDITIONS
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy: it has no check"
            if spec["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} must be a one-shot"


def test_ports_are_unique_and_each_is_one_the_service_listens_on(services):
    hosts = [host for service in services.values() for host, _ in published(service)]
    assert len(hosts) == len(set(hosts))
    kafka = services["kafka"]
    listeners = listener_ports(kafka)
    advertised = dict(re.findall(r"(\w+)://([^,]+)", env(kafka)["KAFKA_ADVERTISED_LISTENERS"]))
    for host, container in published(kafka):
        assert container == listeners["EXTERNAL"] and advertised["EXTERNAL"] == f"localhost:{host}"
    assert published(services["redis"]) == [(6379, 6379)]
    s3_port = urlsplit(env(services["s3"])["S3PROXY_ENDPOINT"]).port
    assert [container for _, container in published(services["s3"])] == [s3_port]
    metrics = int(env(services["worker"])["INVAD_METRICS_PORT"])
    assert [container for _, container in published(services["worker"])] == [metrics]
    assert f"127.0.0.1:{metrics}/readyz" in " ".join(services["worker"]["healthcheck"]["test"])


def test_every_address_points_at_a_service_that_listens_there(services):
    kafka_env = env(services["kafka"])
    internal = dict(re.findall(r"(\w+)://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"]))[
        kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    s3 = env(services["s3"])
    for name in INVAD_SERVICES:
        variables = env(services[name])
        assert variables["INVAD_KAFKA_BOOTSTRAP"] == internal, name
        assert variables["INVAD_TOPIC"] == env(services["worker"])["INVAD_TOPIC"], name
        if "INVAD_S3_ENDPOINT" in variables:
            endpoint = urlsplit(variables["INVAD_S3_ENDPOINT"])
            assert endpoint.hostname == "s3" and endpoint.port == urlsplit(s3["S3PROXY_ENDPOINT"]).port
            assert (variables["AWS_ACCESS_KEY_ID"], variables["AWS_SECRET_ACCESS_KEY"]) == (
                s3["S3PROXY_IDENTITY"], s3["S3PROXY_CREDENTIAL"])
    redis = urlsplit(env(services["worker"])["INVAD_REDIS_URL"])
    assert (redis.hostname, redis.port) == ("redis", 6379)


def test_the_producer_sends_what_the_worker_may_fetch(services):
    command = services["producer"]["command"]
    upload = urlsplit(command[command.index("--upload") + 1])
    allowed = env(services["worker"])["INVAD_S3_ALLOW_BUCKETS"].split(",")
    assert upload.scheme == "s3" and upload.hostname in allowed
    assert command[0] == "produce" and services["producer"]["entrypoint"][-1] == "invad"
    assert services["topics"]["command"][:2] == ["topics", "ensure"]
    assert int(services["topics"]["command"][services["topics"]["command"].index("--partitions") + 1]) >= 1


def test_the_worker_has_time_to_drain(services):
    worker = services["worker"]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) > float(env(worker)["INVAD_DRAIN_TIMEOUT_S"])
    assert "entrypoint" not in worker and "command" not in worker  # the image's `invad work`
    assert '"invad", "work"' in (ROOT / "deploy" / "Dockerfile").read_text()
