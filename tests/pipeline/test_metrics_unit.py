"""Metrics and health without services: the loop's no-op hooks, true counts from an embedded run of the
real tiny model, bounded labels, dependency down time, and the HTTP endpoints' answers."""

from __future__ import annotations

import inspect
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest

from helpers import free_port
from worker.pipeline import metrics as metrics_module
from worker.pipeline.config import WorkerConfig
from worker.pipeline.errors import Misconfigured
from worker.pipeline.health_http import HealthServer
from worker.pipeline.metrics import STAGES, NoMetrics, WorkerMetrics


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of everything the registry exposes."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() for s in family.samples}


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_no_metrics_has_every_hook_and_a_loop_runs_with_it(registry, image_folder, tmp_path):
    from worker.pipeline.cli import run_embedded
    hooks = {name for name, _ in inspect.getmembers(NoMetrics, inspect.isfunction) if not name.startswith("_")}
    assert hooks >= {"alive", "source_ready", "batch_polled", "stage_done", "scored", "dead_lettered",
                     "dependency_down", "dependency_up", "batch_committed"}
    for name in hooks:  # WorkerMetrics implements each hook itself: none falls back to doing nothing
        assert getattr(WorkerMetrics, name) is not getattr(NoMetrics, name), name
    folder, labels = image_folder
    summary = run_embedded(folder, registry, tmp_path / "s.db", None, batch_size=4)  # metrics: the default no-op
    assert summary["scored"] == len(labels) and summary["dead_lettered"] == {}


def test_embedded_run_counts_what_it_scored(registry, image_folder, tmp_path):
    from worker.pipeline.cli import run_embedded
    folder, labels = image_folder
    (folder / "junk.png").write_bytes(b"not an image at all")
    metrics = WorkerMetrics()
    summary = run_embedded(folder, registry, tmp_path / "s.db", None, batch_size=4, line_id="L7", product="bolt",
                           metrics=metrics)
    where = {"line_id": "L7", "product": "bolt"}
    assert value(metrics, "invad_messages_scored_total", **where) == summary["scored"] == len(labels)
    assert value(metrics, "invad_messages_flagged_total", **where) == summary["flagged"]
    assert value(metrics, "invad_messages_dead_lettered_total", reason="image_invalid", **where) == 1
    assert value(metrics, "invad_messages_consumed_total") == len(labels) + 1
    batches = summary["batches"]
    assert value(metrics, "invad_batches_committed_total") == value(metrics, "invad_batch_size_count") == batches
    assert value(metrics, "invad_batch_size_sum") == len(labels) + 1
    assert value(metrics, "invad_batches_in_flight") == 0
    for stage in STAGES:
        assert value(metrics, "invad_stage_seconds_count", stage=stage) == batches
    assert not any(name == "invad_consumer_lag" for name, _ in samples(metrics))  # embedded: no lag


def test_label_values_are_capped(monkeypatch):
    monkeypatch.setitem(metrics_module.MAX_LABEL_VALUES, "line_id", 2)
    metrics = WorkerMetrics()
    for line in ("L0", "L1", "L2", "L3", "L0"):
        metrics.scored(line, "p", flagged=False)
    lines = {dict(labels)["line_id"]: v for (name, labels), v in samples(metrics).items()
             if name == "invad_messages_scored_total"}
    assert lines == {"L0": 2, "L1": 1, "_other": 2}


def test_dependency_down_time_grows_during_the_outage_and_stops_after():
    metrics = WorkerMetrics()
    assert value(metrics, "invad_dependency_down", dependency="redis") == 0
    metrics.dependency_down("redis")
    metrics.dependency_down("redis")  # a second failure of the same outage changes nothing
    assert value(metrics, "invad_dependency_down", dependency="redis") == 1
    first = value(metrics, "invad_dependency_down_seconds_total", dependency="redis")
    assert value(metrics, "invad_dependency_down_seconds_total", dependency="redis") >= first > 0
    metrics.dependency_up("redis")
    after = value(metrics, "invad_dependency_down_seconds_total", dependency="redis")
    assert value(metrics, "invad_dependency_down", dependency="redis") == 0
    assert value(metrics, "invad_dependency_down_seconds_total", dependency="redis") == after
    metrics.dependency_down("https")  # a dependency outside the usual three appears once seen
    assert value(metrics, "invad_dependency_down", dependency="https") == 1


def test_health_endpoints(registry):
    metrics, stop, calls = WorkerMetrics(), threading.Event(), []

    def redis_check() -> bool:
        calls.append(1)
        return True

    config = WorkerConfig(mode="embedded", metrics_port=free_port(), metrics_bind="127.0.0.1", ready_check_s=3600)
    server = HealthServer.start(config, metrics, checks={"redis": redis_check, "s3": lambda: 1 / 0}, stop=stop)
    try:
        status, body = get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
        metrics._last_alive -= config.health_stale_s + 1  # as if the loop had not turned for that long
        assert get(server.port, "/healthz")[0] == 503
        metrics.alive()
        assert get(server.port, "/healthz")[0] == 200

        status, body = get(server.port, "/readyz")
        checks = json.loads(body)["checks"]
        assert status == 503 and checks == {"models_loaded": False, "in_consumer_group": False, "loop_alive": True,
                                             "not_stopping": True, "redis_reachable": True, "s3_reachable": False}
        server.checks.checks["s3"] = lambda: True
        server.checks._at = float("-inf")  # as if ready_check_s had passed
        metrics.models_loaded(registry)
        metrics.source_ready(True)
        assert get(server.port, "/readyz")[0] == 200
        assert get(server.port, "/readyz")[0] == 200
        assert len(calls) == 2  # checked once per ready_check_s, not once per request
        stop.set()
        assert get(server.port, "/readyz")[0] == 503

        status, body = get(server.port, "/metrics")
        assert status == 200 and b'invad_model_info{model_name="tiny"' in body
        assert get(server.port, "/nothing")[0] == 404
    finally:
        server.close()


def test_a_taken_port_is_a_configuration_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = WorkerConfig(mode="embedded", metrics_port=taken.getsockname()[1], metrics_bind="127.0.0.1")
        with pytest.raises(Misconfigured) as caught:
            HealthServer.start(config, WorkerMetrics())
    assert caught.value.exit_code == 2 and "INVAD_METRICS_PORT" in str(caught.value)
    assert HealthServer.start(config.replace(metrics_port=0), WorkerMetrics()) is None


def test_metrics_settings():
    assert WorkerConfig(mode="embedded").metrics_port == 0
    kafka = WorkerConfig.from_sources({}, {"INVAD_KAFKA_BOOTSTRAP": "k:9092", "INVAD_REDIS_URL": "redis://r:6379/0",
                                           "INVAD_S3_BUCKET": "bucket", "INVAD_MODELS": "/m",
                                           "INVAD_MAX_POLL_INTERVAL_MS": "200000"})
    assert (kafka.metrics_port, kafka.metrics_bind, kafka.health_stale_s) == (9400, "0.0.0.0", 200.0)
    for variable, bad, allowed in (("INVAD_METRICS_PORT", "70000", "[0, 65535]"),
                                   ("INVAD_METRICS_BIND", "no such host!", "IP address"),
                                   ("INVAD_HEALTH_STALE_S", "0", ">= 1")):
        with pytest.raises(ValueError) as caught:
            WorkerConfig.from_sources({}, {variable: bad}, mode="embedded")
        assert variable in str(caught.value) and allowed in str(caught.value)


@pytest.mark.gpu
def test_gpu_memory_gauges():
    import torch
    block = torch.ones(1024, 1024, device="cuda")  # 4 MiB held while the gauges are read
    metrics = WorkerMetrics()
    assert value(metrics, "invad_gpu_memory_bytes", device="cuda:0", kind="allocated") >= block.numel() * 4
    assert value(metrics, "invad_gpu_memory_bytes", device="cuda:0", kind="total") > 0
