"""Kafka over SASL_SSL and Redis over TLS with an ACL user, against servers that accept nothing else:
scripts/secure_services.sh starts, once for this module and on ports of its own, a broker with only a
SASL_SSL listener (SCRAM-SHA-512, client certificates required) and a Redis with only a TLS port
(client certificates required, no default user), each with a throwaway CA and random passwords.

The real `invad produce` and `invad work` run through them; a wrong SCRAM password, a missing CA or
a plaintext client fails at start with the dependency's exit code and one line naming the fix; and
no password appears in any output of the run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import free_ports
from kafka_helpers import (HERE, REPO, KafkaEnv, WorkerThread, all_committed, assert_each_image_scored_once,
                           produce, read_dlq, refs_for, start_worker_process, stored_records, texture_pngs, upload_images,
                           wait_for)
from services import unavailable

pytestmark = pytest.mark.services

SCRIPT = REPO / "scripts" / "secure_services.sh"


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> dict[str, str]:
    """The secure services' env file (addresses, users, passwords, CA and client certificate paths)."""
    for tool, why in (("openssl", "apt-get install -y openssl"), ("java", "a Java 17 runtime"),
                      ("redis-server", "scripts/services.sh install"), ("redis-cli", "scripts/services.sh install")):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found ({why}): scripts/secure_services.sh needs it")
    cache = Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad"))
    if not list(cache.glob("kafka-*/libs/.complete")):
        unavailable(f"no Kafka in {cache}: run scripts/services.sh install")
    run_dir = tmp_path_factory.mktemp("secure-run")
    kafka_port, controller_port, redis_port = free_ports(3)
    env = {**os.environ, "INVAD_RUN_DIR": str(run_dir), "INVAD_SECURE_KAFKA_PORT": str(kafka_port),
           "INVAD_SECURE_KAFKA_CONTROLLER_PORT": str(controller_port), "INVAD_SECURE_REDIS_PORT": str(redis_port)}

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=240)

    started = script("start")
    try:
        assert started.returncode == 0, f"secure_services.sh start failed:\n{started.stderr[-3000:]}"
        values = {}
        for line in (run_dir / "secure.env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                values[key] = value.strip("'")
        yield values
    finally:
        stopped = script("stop")
        assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not (run_dir / "tls").exists(), "stop must delete the keys"


def kafka_settings(secure: dict[str, str], **changes: str | None) -> dict[str, str]:
    """INVAD_KAFKA_* for the SASL_SSL broker (``changes`` replace or, as None, remove variables)."""
    env = {"INVAD_KAFKA_BOOTSTRAP": secure["INVAD_TEST_SECURE_KAFKA"], "INVAD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "INVAD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "INVAD_KAFKA_SASL_USERNAME": secure["INVAD_TEST_SECURE_KAFKA_USER"],
           "INVAD_KAFKA_SASL_PASSWORD": secure["INVAD_TEST_SECURE_KAFKA_PASSWORD"],
           "INVAD_KAFKA_SSL_CAFILE": secure["INVAD_TEST_SECURE_CA"],
           "INVAD_KAFKA_SSL_CERTFILE": secure["INVAD_TEST_SECURE_CLIENT_CERT"],
           "INVAD_KAFKA_SSL_KEYFILE": secure["INVAD_TEST_SECURE_CLIENT_KEY"]}
    env.update(changes)
    return {key: value for key, value in env.items() if value is not None}


def redis_settings(secure: dict[str, str], user: str = "WORKER", scheme: str = "rediss",
                   **changes: str | None) -> dict[str, str]:
    """INVAD_REDIS_* for the TLS Redis as the ACL user ``user`` (WORKER: least privilege; ADMIN)."""
    host = secure["INVAD_TEST_SECURE_REDIS_URL"].split("://", 1)[1]
    env = {"INVAD_REDIS_URL": f"{scheme}://{secure[f'INVAD_TEST_SECURE_REDIS_{user}']}:"
                              f"{secure[f'INVAD_TEST_SECURE_REDIS_{user}_PASSWORD']}@{host}",
           "INVAD_REDIS_SSL_CA_CERTS": secure["INVAD_TEST_SECURE_CA"],
           "INVAD_REDIS_SSL_CERTFILE": secure["INVAD_TEST_SECURE_CLIENT_CERT"],
           "INVAD_REDIS_SSL_KEYFILE": secure["INVAD_TEST_SECURE_CLIENT_KEY"]}
    env.update(changes)
    return {key: value for key, value in env.items() if value is not None}


def secrets(secure: dict[str, str], s3_settings: dict[str, str]) -> list[str]:
    return [value for key, value in secure.items() if key.endswith("PASSWORD")] + [s3_settings["secret_key"]]


@pytest.fixture
def kenv(secure, s3_settings, tiny_bundle) -> KafkaEnv:
    """A topic, DLQ, group, bucket and Redis prefix of this test's own; the test's clients use the
    Kafka user over SASL_SSL and the Redis admin user (the worker gets the least-privilege one)."""
    from worker.common import kafka_security, redis_client
    from worker.pipeline.config import read_settings

    admin = redis_settings(secure, "ADMIN")
    security = kafka_security.client_kwargs(read_settings(kafka_security.SETTINGS, {}, kafka_settings(secure)))
    # the worker's ACL user may touch keys matching INVAD_TEST_SECURE_REDIS_PREFIX_PATTERN only
    prefix = secure["INVAD_TEST_SECURE_REDIS_PREFIX_PATTERN"].rstrip("*") + f"-{uuid.uuid4().hex[:10]}"
    env = KafkaEnv(secure["INVAD_TEST_SECURE_KAFKA"], admin["INVAD_REDIS_URL"], s3_settings, models=str(tiny_bundle),
                   prefix=prefix, security=security,
                   redis_tls=redis_client.tls_settings(read_settings(redis_client.SETTINGS, {}, admin)))
    return env.setup()


def produce_with_cli(kenv: KafkaEnv, secure: dict[str, str], lines: list[bytes]) -> subprocess.CompletedProcess:
    """`invad produce -` over SASL_SSL: the security settings as flags, the password as its variable."""
    settings = kafka_settings(secure)
    flags = [f"--{name[len('INVAD_'):].lower().replace('_', '-')}={value}" for name, value in settings.items()
             if name not in ("INVAD_KAFKA_SASL_PASSWORD",)]
    environ = {**os.environ, "INVAD_KAFKA_SASL_PASSWORD": settings["INVAD_KAFKA_SASL_PASSWORD"],
               "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "worker.cli", "produce", "-", "--topic", kenv.topic, "--create-topic",
                           "--partitions", str(kenv.partitions), "--quiet", *flags],
                          input=b"\n".join(lines) + b"\n", env=environ, cwd=str(REPO), capture_output=True,
                          timeout=120)


def test_worker_scores_over_sasl_ssl_into_tls_redis_as_an_acl_user(kenv, secure, s3_settings, tmp_path):
    images = texture_pngs(4, 2, seed=41)
    upload_images(kenv, images)
    produced = produce_with_cli(kenv, secure, [value for _, value in refs_for(kenv, images)])
    output = produced.stdout.decode() + produced.stderr.decode()
    assert produced.returncode == 0, output
    assert f"sent {len(images)}, failed 0" in output and "found with 3 partition(s)" in output
    produce(kenv, [(b"L0", b"{not json")])  # for the dead-letter producer (the test's client: SASL_SSL too)

    log = tmp_path / "worker.log"
    worker = start_worker_process(kenv, log, cli=True, **kafka_settings(secure), **redis_settings(secure))
    try:
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv) or worker.poll() is not None,
                 240, "every image scored and committed")
        assert worker.poll() is None, log.read_text()[-3000:]
        assert_each_image_scored_once(kenv, images)
        (letter,) = read_dlq(kenv, 1)  # the dead-letter producer works over SASL_SSL too
        assert letter.reason == "invalid_json"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log.read_text() + output
    assert '"kafka_sasl_password": "***"' in text and "invad-worker:***@" in text
    leaked = [secret for secret in secrets(secure, s3_settings) if secret in text]
    assert not leaked, "a password is in the logs of the run"


def test_wrong_scram_password_exits_5_at_start_with_one_line(kenv, secure, s3_settings):
    wrong = f"wrong-{uuid.uuid4().hex}"
    environ = {**os.environ, **kenv.environ(**kafka_settings(secure, INVAD_KAFKA_SASL_PASSWORD=wrong),
                                            **redis_settings(secure)),
               "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "work"], env=environ, cwd=str(REPO),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 5, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("invad work:")]
    assert len(lines) == 1 and "refused SASL SCRAM-SHA-512 authentication" in lines[0], done.stderr[-3000:]
    assert "INVAD_KAFKA_SASL_PASSWORD" in lines[0]
    leaked = [secret for secret in [wrong, *secrets(secure, s3_settings)] if secret in done.stdout + done.stderr]
    assert not leaked, "a password is in the output"


@pytest.mark.parametrize("case, code, words", [
    ("kafka plaintext client", 5, "speaks TLS, but INVAD_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ("kafka without the CA", 5, "certificate is not trusted"),
    ("kafka without a client certificate", 5, "INVAD_KAFKA_SSL_CERTFILE"),
    ("redis plaintext client", 3, "speaks TLS, but INVAD_REDIS_URL is redis://"),
    ("redis without the CA", 3, "certificate is not trusted"),
    ("redis wrong ACL password", 3, "authentication refused"),
])
def test_a_misconfigured_secure_client_exits_at_start_with_the_fix(kenv, secure, registry, capsys, case, code, words):
    kafka, redis = kafka_settings(secure), redis_settings(secure)
    if case == "kafka plaintext client":
        kafka = kafka_settings(secure, **{name: None for name in kafka if name != "INVAD_KAFKA_BOOTSTRAP"})
    elif case == "kafka without the CA":
        kafka = kafka_settings(secure, INVAD_KAFKA_SSL_CAFILE=None)
    elif case == "kafka without a client certificate":
        kafka = kafka_settings(secure, INVAD_KAFKA_SSL_CERTFILE=None, INVAD_KAFKA_SSL_KEYFILE=None)
    elif case == "redis plaintext client":
        redis = redis_settings(secure, scheme="redis", INVAD_REDIS_SSL_CA_CERTS=None, INVAD_REDIS_SSL_CERTFILE=None,
                               INVAD_REDIS_SSL_KEYFILE=None)
    elif case == "redis without the CA":
        redis = redis_settings(secure, INVAD_REDIS_SSL_CA_CERTS=None)
    else:
        redis["INVAD_REDIS_URL"] = redis["INVAD_REDIS_URL"].replace(secure["INVAD_TEST_SECURE_REDIS_WORKER_PASSWORD"],
                                                                    "not-the-password")
    worker = WorkerThread(kenv.config(**kafka, **redis), registry)
    worker.thread.join(120)
    assert not worker.thread.is_alive(), f"{case}: the worker kept waiting on a refusal it cannot outwait"
    if worker.error is not None:
        raise worker.error
    err = capsys.readouterr().err
    assert worker.exit_code == code, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("invad work:")]
    assert len(lines) == 1 and words in lines[0], err[-3000:]
