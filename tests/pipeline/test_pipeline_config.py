"""WorkerConfig: settings declared once (flags, variables, docs), validation, redaction of credentials in
every log line of a real ``invad work``; the model registry's routing, and the loop's retry logic."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import InstrumentedDetector
from worker.pipeline.config import OPTIONS, WorkerConfig, add_config_arguments, as_text
from worker.pipeline.errors import BadRecord, DependencyDown
from worker.pipeline.redact import SECRET_KEY, LogRedactor, redact_text

ROOT = Path(__file__).parents[2]

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
    with pytest.raises(ValueError, match=r"^--batch-size='0': must be in \[1, 4096\]"):  # the flag is named
        WorkerConfig.from_sources(parser.parse_args(["--batch-size", "0"]), {**BASE, "INVAD_BATCH_SIZE": "8"})
    # AWS_REGION first, AWS_DEFAULT_REGION second; an empty optional variable counts as unset
    assert WorkerConfig.from_sources({}, {**BASE, "AWS_DEFAULT_REGION": "eu-1"}).s3_region == "eu-1"
    assert WorkerConfig.from_sources({}, {**BASE, "AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-1"}).s3_region == "eu-1"
    assert WorkerConfig.from_sources({}, {**BASE, "AWS_REGION": "us-2", "AWS_DEFAULT_REGION": "eu-1"}).s3_region == "us-2"


def test_every_setting_is_a_flag_and_a_variable_from_one_declaration():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {action.dest: action for action in parser._actions}
    defaults = WorkerConfig(mode="embedded")
    for option in OPTIONS:
        if option.flag:
            assert flags[option.name].option_strings == [option.flag] and option.env[0] in flags[option.name].help
        else:
            assert option.secret or option.env[0].startswith("AWS_"), f"{option.name} has no flag"
        # each variable sets its field, through the same rule as the flag (the default written back as text)
        value = getattr(defaults, option.name)
        if value not in (None, "", ()):
            environ = {**BASE, option.env[-1]: as_text(value)}
            assert getattr(WorkerConfig.from_sources({}, environ), option.name) == value, option.name
    assert len({o.name for o in OPTIONS}) == len({o.env[0] for o in OPTIONS}) == len(OPTIONS)
    assert defaults.dlq_topic == "invad.images.dlq" and defaults.replace(topic="t", dlq_topic=None).dlq_topic == "t.dlq"


def test_python_callers_get_the_same_checks_and_normal_forms(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size='0': must be in \[1, 4096\]"):
        WorkerConfig(mode="embedded", batch_size=0)
    with pytest.raises(ValueError, match="is not an absolute path"):
        WorkerConfig(mode="embedded", file_roots=("relative",))
    with pytest.raises(ValueError, match="mode 'stream' is not one of"):
        WorkerConfig(mode="stream")
    config = WorkerConfig(mode="embedded", device="auto", file_roots=[str(tmp_path / "a" / "..")], models="/m")
    assert config.device is None and config.file_roots == (str(tmp_path.resolve()),)
    assert config.models == (("*", "/m"),)
    with pytest.raises(ValueError, match="must be at most a quarter of INVAD_MAX_POLL_INTERVAL_MS=300000"):
        config.replace(batch_wait_ms=100_000)


def test_configuration_doc_is_generated_from_the_declarations():
    from worker.pipeline.config_doc import markdown
    committed = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    assert committed == markdown(), "regenerate: python -m worker.pipeline.config_doc > docs/CONFIGURATION.md"
    for option in OPTIONS:
        assert f"`{option.env[0]}`" in committed


def test_deploy_files_name_only_declared_variables():
    # Names of settings other branches are adding are kept in one place, the chart's envNames; what the
    # chart and the compose file render is checked against the worker's parser in tests/deploy.
    import yaml

    pending = set(yaml.safe_load((ROOT / "deploy" / "helm" / "invad" / "values.yaml").read_text())["envNames"].values())
    known = {name for option in OPTIONS for name in option.env} | pending
    deploy = ROOT / "deploy"
    files = sorted(deploy.rglob("*.yaml")) + sorted(deploy.rglob("*.tpl")) + [deploy / "Dockerfile"]
    named = {name for path in files for name in re.findall(r"\b(?:INVAD|AWS)_[A-Z0-9_]+", path.read_text())}
    assert named and named <= known, f"not worker settings: {sorted(named - known)}"


@pytest.mark.parametrize("var, value, expected", [
    ("INVAD_BATCH_SIZE", "0", r"INVAD_BATCH_SIZE='0': must be in \[1, 4096\]"),
    ("INVAD_BATCH_SIZE", "many", "INVAD_BATCH_SIZE='many': must be an integer"),
    ("INVAD_KAFKA_BOOTSTRAP", "localhost", "INVAD_KAFKA_BOOTSTRAP='localhost': 'localhost' is not host:port"),
    ("INVAD_REDIS_URL", "http://:hunter2@r?password=pw99",
     r"INVAD_REDIS_URL='http://:\*\*\*@r\?password=\*\*\*': must be a URL with scheme redis or rediss or unix"),
    ("INVAD_S3_ENDPOINT", "https://ak:sk99@s3.local", r"INVAD_S3_ENDPOINT='https://ak:\*\*\*@s3.local': must not "
     r"carry a user, password"),
    ("INVAD_S3_ENDPOINT", "https://s3.local/?X-Amz-Security-Token=tk99", r"Token=\*\*\*': must not carry"),
    ("INVAD_FETCH_TIMEOUT_S", "nan", "must be a finite number >= 0.1"),
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
    with pytest.raises(ValueError, match=expected) as info:
        WorkerConfig.from_sources({}, {**BASE, var: value})
    assert not any(secret in str(info.value) for secret in ("hunter2", "pw99", "sk99", "tk99"))


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


@pytest.mark.parametrize("text, shown", [
    ("redis://ops:pw1-secret@r:6379/0", "redis://ops:***@r:6379/0"),
    ("rediss://tok1-secret@r", "rediss://***@r"),  # a lone userinfo may be a token
    ("redis://:p@ss1-secret@r/0", "redis://:***@r/0"),  # an unescaped "@" in the password
    ("redis://r/0?PassWord=pw2-secret&db=1", "redis://r/0?PassWord=***&db=1"),
    ("unix:///run/redis.sock?password=pw3-secret", "unix:///run/redis.sock?password=***"),
    ("kafka://b:9093?sasl_password=pw4-secret&sasl_mechanism=SCRAM-SHA-512",
     "kafka://b:9093?sasl_password=***&sasl_mechanism=SCRAM-SHA-512"),
    ("rediss://r?ssl_keyfile_password=pw5-secret", "rediss://r?ssl_keyfile_password=***"),
    ("https://h/a.png?X-Amz-Credential=AK%2Fcred6&X-Amz-Signature=sig6-secret&v=1",
     "https://h/a.png?X-Amz-Credential=***&X-Amz-Signature=***&v=1"),
    # a masked value runs to the next separator or space: better a lost closing quote than a leaked "'}"-ending secret
    ("failed: {'url': 'https://u:pw7-secret@h/x?token=tk7-secret'} retry", "failed: {'url': 'https://u:***@h/x?token=*** retry"),
    ("host 'u:pw10-secret@h.invalid' is not allowed", "host 'u:***@h.invalid' is not allowed"),  # a quoted netloc
    ("at 12:30 mail bob@example.com, {'a': 'b@c'}", "at 12:30 mail bob@example.com, {'a': 'b@c'}"),  # no credential
    ("AWS_SECRET_ACCESS_KEY=key8-secret api_key=key9-secret ok=1", "AWS_SECRET_ACCESS_KEY=*** api_key=*** ok=1"),
    ("s3://bucket/user@site/a.png?versionId=3", "s3://bucket/user@site/a.png?versionId=3"),  # no credential
])
def test_redact_text_masks_every_credential_form(text, shown):
    assert redact_text(text) == shown


def test_redacted_config_masks_every_form_and_settings_named_like_credentials_are_secret():
    env = {**BASE, "INVAD_REDIS_URL": "rediss://ops:pw1-secret@r:6380/0?password=pw2-secret&db=0",
           "AWS_ACCESS_KEY_ID": "AKIA-id-secret", "AWS_SESSION_TOKEN": "tok-secret",
           "INVAD_S3_ENDPOINT": "https://s3.local:9000", "INVAD_MODELS": "a=/m/a,*=/m/all"}
    config = WorkerConfig.from_sources({}, env)
    shown = json.dumps(config.redacted())
    assert not any(word in shown for word in ("pw1-secret", "pw2-secret", "AKIA-id-secret", "tok-secret", "s3cr3t"))
    assert config.redacted()["redis_url"] == "rediss://ops:***@r:6380/0?password=***&db=0"
    assert config.redacted()["s3_endpoint"] == "https://s3.local:9000"
    assert config.redacted()["models"] == [["a", "/m/a"], ["*", "/m/all"]]
    assert "pw1-secret" not in repr(config) and "AKIA-id-secret" not in str(config)
    assert set(config.secrets()) >= {"pw1-secret", "pw2-secret", "AKIA-id-secret", "tok-secret", "s3cr3t"}
    # a setting whose name says credential (kafka_sasl_password, a future tls_key_passphrase...) must be
    # secret; the path of a key file is not a credential (the file's permissions protect it)
    for option in OPTIONS:
        credential = SECRET_KEY.search(option.name) and not option.name.endswith("_keyfile")
        assert not credential or option.secret, f"{option.name} must be declared secret=True"
    password = next(option for option in OPTIONS if option.name == "kafka_sasl_password")
    assert password.secret and password.flag is None


def test_log_redactor_masks_known_secrets_anywhere_in_an_event():
    redactor = LogRedactor()
    redactor.add(["s3cr3t-value", "ab"])  # "ab" is too short to mask as a literal
    event = redactor(None, "warning", {"event": "x", "error": "auth failed for s3cr3t-value",
                                       "nested": {"uris": ["redis://:pw@h", ("s3cr3t-value",)]},
                                       "exc": ValueError("key=s3cr3t-value"), "n": 3, "about": "ab"})
    assert event == {"event": "x", "error": "auth failed for ***", "nested": {"uris": ["redis://:***@h", ["***"]]},
                     "exc": "ValueError('key=***')", "n": 3, "about": "ab"}


def _ref_line(image_id: str, uri: str) -> str:
    from schemas import ImageRef
    return ImageRef(image_id=image_id, uri=uri, line_id="L1", product="default", producer="test",
                    captured_at=datetime(2025, 1, 1, tzinfo=timezone.utc)).to_json().decode()


SECRETS = {  # every credential form a user may give; none may reach any output of the process
    "redis_userinfo": "RedisUserinfoPw-7f3a", "redis_query": "RedisQueryPw-91c2",
    "aws_key_id": "AKIAENVKEY-5d1e", "aws_secret": "AwsEnvSecret-0b8d", "aws_token": "AwsEnvToken-66af",
    "uri_signature": "UriSignature-3e9c", "uri_userinfo": "UriUserinfoPw-2a7b",
}


def _worker_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("INVAD_", "AWS_"))}
    return {**env, "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": SECRETS["aws_key_id"],
            "AWS_SECRET_ACCESS_KEY": SECRETS["aws_secret"], "AWS_SESSION_TOKEN": SECRETS["aws_token"],
            "INVAD_METRICS_PORT": "0",
            "INVAD_REDIS_URL": f"redis://ops:{SECRETS['redis_userinfo']}@redis.invalid:6379/0"
                               f"?password={SECRETS['redis_query']}", **extra}


def _assert_no_secret(output: str) -> None:
    leaked = [name for name, secret in SECRETS.items() if secret in output]
    assert not leaked, f"leaked {leaked} in:\n{output}"


def test_invad_work_logs_no_credential_in_any_form(image_folder, tiny_bundle, tmp_path):
    """A real ``invad work`` (embedded, then Kafka mode until its first dependency wait), secrets given as
    URL userinfo, query parameters and variables: the whole output holds none of them, yet shows that
    each was read (masked), so the test cannot pass because a secret never arrived."""
    folder, labels = image_folder
    refs = [_ref_line(name.replace(".png", ""), (folder / name).as_uri()) for name in sorted(labels)]
    refs.append(_ref_line("presigned", f"https://images.invalid/a.png?X-Amz-Signature={SECRETS['uri_signature']}"))
    refs.append(_ref_line("userinfo", f"https://u:{SECRETS['uri_userinfo']}@images.invalid/b.png"))
    (tmp_path / "refs.jsonl").write_text("\n".join(refs) + "\n")
    command = [sys.executable, "-m", "worker.cli", "work", "--models", str(tiny_bundle), "--device", "cpu"]
    embedded = subprocess.run(command + ["--source", str(tmp_path / "refs.jsonl"), "--sqlite", str(tmp_path / "s.db"),
                                         "--batch-size", "4"],
                              env=_worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = embedded.stdout + embedded.stderr
    assert embedded.returncode == 0, output
    _assert_no_secret(output)
    events = [json.loads(line) for line in embedded.stderr.splitlines() if line.startswith("{")]
    config = next(e for e in events if e["event"] == "config")
    assert config["redis_url"] == "redis://ops:***@redis.invalid:6379/0?password=***"
    assert config["aws_access_key_id"] == config["aws_secret_access_key"] == config["aws_session_token"] == "***"
    dead = [e for e in events if e["event"] == "dead_lettered"]
    assert {e["reason"] for e in dead} == {"uri_not_allowed"} and len(dead) == 2
    assert "X-Amz-Signature=***" in json.dumps(dead) and "https://u:***@images.invalid" in json.dumps(dead)
    assert json.loads(embedded.stdout)["scored"] == len(labels)

    # Kafka mode: the config line, then the bucket check waits for S3 (a closed port; nothing else is
    # contacted before it); SIGTERM ends the wait.
    kafka = subprocess.Popen(command, env=_worker_env(INVAD_KAFKA_BOOTSTRAP="127.0.0.1:9",
                                                       INVAD_S3_ENDPOINT="http://127.0.0.1:9", INVAD_S3_BUCKET="art-bucket",
                                                       INVAD_S3_CREATE_BUCKET="true", INVAD_FETCH_TIMEOUT_S="1"),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("dependency_down_at_start" in line for line in lines):
        line = kafka.stdout.readline()
        if not line:
            break
        lines.append(line)
    kafka.send_signal(signal.SIGTERM)
    rest, _ = kafka.communicate(timeout=60)
    output = "".join(lines) + rest
    assert kafka.returncode == 0 and "dependency_down_at_start" in output, output
    _assert_no_secret(output)
    assert '"redis_url": "redis://ops:***@redis.invalid:6379/0?password=***"' in output


def test_bad_config_messages_hold_no_credential(monkeypatch, capsys):
    from worker.cli import main
    for key, value in _worker_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("INVAD_REDIS_URL", f"http://ops:{SECRETS['redis_userinfo']}@r?password={SECRETS['redis_query']}")
    assert main(["work", "--source", ".", "--sqlite", "x.db", "--models", "/m"]) == 2
    err = capsys.readouterr().err
    assert "INVAD_REDIS_URL='http://ops:***@r?password=***': must be a URL with scheme redis" in err
    _assert_no_secret(err)


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
