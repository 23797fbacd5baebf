"""WorkerConfig validation, the model registry's routing, and the loop's retry logic (no services)."""

from __future__ import annotations

import argparse
import threading

import pytest

from helpers import InstrumentedDetector
from worker.pipeline.config import WorkerConfig, add_config_arguments
from worker.pipeline.errors import BadRecord, DependencyDown

BASE = {"INVAD_KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "INVAD_REDIS_URL": "redis://:hunter2@r:6379/0",
        "INVAD_S3_BUCKET": "art-bucket", "INVAD_MODELS": "/models/a", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}


def test_defaults_and_derived_values():
    config = WorkerConfig.from_sources({}, BASE)
    assert config.kafka_bootstrap == ("k1:9092", "k2:9092")
    assert config.topic == "invad.images" and config.group == "invad-workers" and config.dlq_topic == "invad.images.dlq"
    assert config.models == (("*", "/models/a"),) and config.device is None and config.worker_id
    assert WorkerConfig.from_sources({}, {**BASE, "INVAD_TOPIC": "cams"}).dlq_topic == "cams.dlq"
    mapped = WorkerConfig.from_sources({}, {**BASE, "INVAD_MODELS": "bottle=/m/b, *=/m/all"})
    assert mapped.models == (("bottle", "/m/b"), ("*", "/m/all"))


def test_flags_win_over_variables():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--batch-size", "32", "--topic", "other"])
    config = WorkerConfig.from_sources(args, {**BASE, "INVAD_BATCH_SIZE": "8"})
    assert config.batch_size == 32 and config.topic == "other"


@pytest.mark.parametrize("var, value, expected", [
    ("INVAD_BATCH_SIZE", "0", r"INVAD_BATCH_SIZE='0': must be in \[1, 4096\]"),
    ("INVAD_BATCH_SIZE", "many", "INVAD_BATCH_SIZE='many': must be an integer"),
    ("INVAD_KAFKA_BOOTSTRAP", "localhost", "INVAD_KAFKA_BOOTSTRAP='localhost': 'localhost' is not host:port"),
    ("INVAD_REDIS_URL", "http://r", "INVAD_REDIS_URL=\\*\\*\\*: must be a URL with scheme redis or rediss or unix"),
    ("INVAD_S3_BUCKET", "Bad_Bucket", "INVAD_S3_BUCKET='Bad_Bucket': must match an S3 bucket name"),
    ("INVAD_MODELS", "a=/x,a=/y", "product 'a' is mapped twice"),
    ("INVAD_FILE_ROOTS", "relative/dir", "'relative/dir' is not an absolute path"),
    ("INVAD_HTTPS_ALLOW", "http://host", "is not a host name"),
    ("INVAD_DEVICE", "tpu", "must be auto, cpu, cuda, cuda:N or mps"),
    ("INVAD_S3_CREATE_BUCKET", "maybe", "must be one of 1/0"),
    ("INVAD_REDIS_PREFIX", ":bad", "INVAD_REDIS_PREFIX=':bad'"),
    ("INVAD_BATCH_WAIT_MS", "200000", "at most a quarter of INVAD_MAX_POLL_INTERVAL_MS"),
    ("INVAD_HEARTBEAT_INTERVAL_MS", "20000", "at most a third of INVAD_SESSION_TIMEOUT_MS"),
    ("INVAD_DLQ_TOPIC", "invad.images", "must differ from INVAD_TOPIC"),
])
def test_bad_values_name_the_variable_value_and_rule(var, value, expected):
    with pytest.raises(ValueError, match=expected):
        WorkerConfig.from_sources({}, {**BASE, var: value})


def test_required_in_kafka_mode_only():
    for var in ("INVAD_KAFKA_BOOTSTRAP", "INVAD_REDIS_URL", "INVAD_S3_BUCKET", "INVAD_MODELS"):
        env = {k: v for k, v in BASE.items() if k != var}
        with pytest.raises(ValueError, match=f"{var} .* is required in kafka mode"):
            WorkerConfig.from_sources({}, env)
    assert WorkerConfig.from_sources({}, {}, mode="embedded").mode == "embedded"


def test_redacted_hides_secrets():
    shown = WorkerConfig.from_sources({}, {**BASE, "AWS_ACCESS_KEY_ID": "AKIA123"}).redacted()
    text = repr(shown)
    assert "hunter2" not in text and "s3cr3t" not in text and "AKIA123" not in text
    assert shown["redis_url"] == "redis://:***@r:6379/0" and shown["aws_secret_access_key"] == "***"
    assert "hunter2" not in repr(WorkerConfig.from_sources({}, BASE))


def test_cli_exits_2_on_bad_config(monkeypatch, capsys):
    from worker.pipeline.cli import add_arguments, run
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for key, value in {**BASE, "INVAD_FETCH_CONCURRENCY": "-1"}.items():
        monkeypatch.setenv(key, value)
    assert run(parser.parse_args([])) == 2
    assert "INVAD_FETCH_CONCURRENCY='-1'" in capsys.readouterr().err


def test_registry_routes_products(registry, two_class_detector):
    from worker.pipeline.models import ModelRegistry

    single, multi = registry.detectors()[0], two_class_detector
    assert multi.classes == ("default", "other") and len(single.classes) <= 1
    routes = ModelRegistry({"default": multi, "other": multi, "screw": single})
    assert routes.route("default").cls == "default" and routes.route("screw").cls is None
    with pytest.raises(BadRecord, match="unknown_product"):
        routes.route("wood")
    fallback = ModelRegistry({"*": multi})
    assert fallback.route("other").detector is multi and fallback.route("other").cls == "other"
    with pytest.raises(BadRecord) as info:
        fallback.route("bottle")
    assert info.value.reason == "unknown_product" and "other" in info.value.message
    with pytest.raises(ValueError, match="classes are"):
        ModelRegistry({"wood": multi})
    loads = []
    ModelRegistry.load([("a", "/p"), ("b", "/p")], loader=lambda path, device: loads.append(path) or single)
    assert loads == ["/p"]  # one bundle path, loaded once


class FlakySink:
    """Fails ``failures`` flushes with DependencyDown, then succeeds; counts writes."""

    def __init__(self, failures: int):
        self.failures, self.flushed = failures, []

    def write(self, batch):
        self.staged = [item.record.image_id for item in batch]

    def flush(self):
        if self.failures:
            self.failures -= 1
            raise DependencyDown("redis", "connection refused")
        self.flushed.extend(self.staged)

    def close(self): ...


def test_loop_retries_a_down_sink_without_committing(image_folder, registry, tmp_path):
    from worker.pipeline import embedded
    from worker.pipeline.fetch import Fetcher
    from worker.pipeline.loop import Loop
    from worker.pipeline.models import ModelRegistry
    detector = InstrumentedDetector(registry.detectors()[0])  # the real detector, counting its batches
    folder, labels = image_folder
    progress = embedded.ProgressStore(tmp_path / "p.json")
    source = embedded.folder_source(folder, progress)
    commits = []
    original_commit = source.commit
    source.commit = lambda offsets: (commits.append(dict(offsets)), original_commit(offsets))
    config = WorkerConfig(mode="embedded", batch_size=20, backoff_max_s=0.05, file_roots=(str(folder.resolve()),))
    sink = FlakySink(failures=3)
    loop = Loop(source=source, fetcher=Fetcher.from_config(config), registry=ModelRegistry({"*": detector}),
                sinks=[sink], dead_letters=embedded.JsonlDeadLetters(tmp_path / "dl.jsonl"), config=config)
    stats = loop.run()
    assert stats.retries == 3 and stats.scored == len(labels)
    assert sorted(sink.flushed) == sorted(f"local/{n}" for n in labels)  # ids: {line}/{relative path}
    assert len(commits) == 1  # committed once, after the flush
    assert detector.calls == [len(labels)]  # retry resumed at the sink stage: scored once


def test_loop_abandons_a_drain_when_the_dependency_stays_down(image_folder, registry, tmp_path):
    from worker.pipeline import embedded
    from worker.pipeline.fetch import Fetcher
    from worker.pipeline.loop import Loop
    folder, _ = image_folder
    stop = threading.Event()
    stop.set()  # stop requested while the batch waits for a dependency
    source = embedded.folder_source(folder, embedded.ProgressStore(tmp_path / "p.json"))
    config = WorkerConfig(mode="embedded", backoff_max_s=0.05, drain_timeout_s=0.2, file_roots=(str(folder.resolve()),))
    loop = Loop(source=source, fetcher=Fetcher.from_config(config), registry=registry, sinks=[FlakySink(10**6)],
                dead_letters=embedded.JsonlDeadLetters(tmp_path / "dl.jsonl"), config=config, stop=stop)
    with pytest.raises(Exception) as info:
        loop.process(source.poll_batch(4, 0))
    assert type(info.value).__name__ == "Abandoned"
    assert not (tmp_path / "p.json").exists()  # nothing committed
