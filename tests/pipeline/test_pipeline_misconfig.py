"""Misconfiguration is not an outage: a wrong Redis password, a Redis user without the commands the
worker needs, a misspelt bucket, S3 credentials of nobody, a missing topic - each refused by the real
server - end `invad work` within seconds, before any message, with a one-line fix and an exit code
of its own (3 Redis, 4 S3, 5 Kafka)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from kafka_helpers import (HERE, REPO, KafkaEnv, WorkerThread, alert_ids, all_committed, produce, refs_for,
                           stored_records, texture_pngs, upload_images, wait_for)

pytestmark = pytest.mark.services


@pytest.fixture
def kenv(kafka_bootstrap, redis_url, s3_settings) -> KafkaEnv:
    return KafkaEnv(kafka_bootstrap, redis_url, s3_settings).setup()


@pytest.fixture
def redis_user(kenv):
    """A Redis ACL user of its own, removed afterwards: (name, password)."""
    name, password = f"invad-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    client = kenv.redis()
    yield client, name, password
    client.acl_deluser(name)


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def run_until_exit(kenv: KafkaEnv, registry, timeout_s: float = 60, **overrides: str) -> tuple[int, float]:
    started = time.monotonic()
    worker = WorkerThread(kenv.config(**overrides), registry)
    worker.thread.join(timeout_s)
    assert not worker.thread.is_alive(), "the worker kept waiting on a refusal it cannot outwait"
    if worker.error is not None:
        raise worker.error
    return worker.exit_code, time.monotonic() - started


def test_wrong_redis_password_exits_3(kenv, registry, redis_user):
    client, name, password = redis_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    code, seconds = run_until_exit(kenv, registry, INVAD_REDIS_URL=with_user(kenv.redis_url, name, "wrong"))
    assert code == 3 and seconds < 30


def test_redis_user_without_scripting_exits_3(kenv, registry, redis_user, capsys):
    client, name, password = redis_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all", "-@scripting"])
    code, _ = run_until_exit(kenv, registry, INVAD_REDIS_URL=with_user(kenv.redis_url, name, password))
    assert code == 3
    err = capsys.readouterr().err
    assert "may not run" in err and password not in err


def documented_worker_acl() -> list[str]:
    """The commands of the least-privilege ``ACL SETUSER`` in deploy/README.md (one source for the tests)."""
    import re
    text = (REPO / "deploy" / "README.md").read_text()
    block = re.search(r"ACL SETUSER invad-worker(.*?)```", text, re.S)
    assert block, "deploy/README.md lost its least-privilege ACL SETUSER block"
    return [word for word in block.group(1).split() if word.startswith("+")]


def test_the_secure_test_redis_grants_the_documented_acl():
    """scripts/secure_services.sh's worker user is the documented one, so the TLS tests prove that ACL."""
    script = (REPO / "scripts" / "secure_services.sh").read_text()
    line = next(line for line in script.splitlines() if line.startswith("user invad-worker on"))
    assert sorted(w for w in line.split() if w.startswith("+")) == sorted(documented_worker_acl())


def test_least_privilege_redis_user_passes_the_check(kenv, registry, redis_user):
    """The ACL that deploy/README.md documents is enough: the start-up check passes and records and
    alerts (MULTI/EXEC, the alert script) go through under it."""
    client, name, password = redis_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=[f"{kenv.prefix}:*"],
                       commands=documented_worker_acl())
    images = texture_pngs(3, 3, seed=31)
    upload_images(kenv, images)
    produce(kenv, refs_for(kenv, images))
    worker = WorkerThread(kenv.config(INVAD_REDIS_URL=with_user(kenv.redis_url, name, password)), registry)
    try:
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 120, "every image")
        assert alert_ids(kenv), "no alert went through the alert script under the restricted user"
    finally:
        assert worker.stop() == 0


def test_misspelt_bucket_exits_4(kenv, registry):
    code, seconds = run_until_exit(kenv, registry, INVAD_S3_BUCKET=kenv.bucket + "-misspelt")
    assert code == 4 and seconds < 30


def test_unknown_s3_credentials_exit_4(kenv, registry):
    code, _ = run_until_exit(kenv, registry, AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert code == 4


def test_missing_topic_exits_5(kenv, registry):
    code, _ = run_until_exit(kenv, registry, INVAD_TOPIC=kenv.topic + "-missing")
    assert code == 5


def test_cli_prints_one_line_with_the_fix(kenv, tiny_bundle):
    environ = {**os.environ, **kenv.environ(INVAD_S3_BUCKET=kenv.bucket + "-misspelt", INVAD_MODELS=str(tiny_bundle)),
               "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "work"], env=environ, cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 4
    lines = [line for line in done.stderr.splitlines() if line.startswith("invad work:")]
    assert len(lines) == 1 and "does not exist" in lines[0] and "INVAD_S3_CREATE_BUCKET" in lines[0]
