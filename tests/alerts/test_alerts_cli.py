"""``invad alerts`` as a process: output, exit codes, SIGTERM, and SIGKILL mid-stream with restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alert_entries import anomaly_fields
from webhook_server import WebhookServer

ROOT = Path(__file__).parents[2]


def start(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("INVAD_ALERTS_WEBHOOK", None)
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "alerts", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(*args: str) -> subprocess.CompletedProcess:
    proc = start(*args)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_once_prints_every_alert_on_stdout_and_logs_on_stderr(redis_url, redis_client, stream_names):
    stream, group = stream_names
    for i in range(3):
        redis_client.xadd(stream, anomaly_fields(i))
    done = run("--redis-url", redis_url, "--stream", stream, "--group", group, "--from-start", "--once")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["image_id"] for line in done.stdout.splitlines()] == \
        [f"line-1/img_{i:04d}.png" for i in range(3)]
    assert '"alerts_consumer_stopped"' in done.stderr
    again = run("--redis-url", redis_url, "--stream", stream, "--group", group, "--once")
    assert again.returncode == 0 and again.stdout == ""  # acknowledged: never printed twice


@pytest.mark.parametrize("args, message", [
    (["--webhook", "ftp://example.com/x"], "not an http:// or https:// URL"),
    (["--redis-url", "http://localhost:6379"], "--redis-url must start with redis://"),
    (["--prefix", "bad prefix"], "Redis key prefix 'bad prefix' is not allowed"),
    (["--group", "a b"], "--group 'a b'"),
    (["--timeout", "40"], "--claim-idle-ms 60000 must be at least twice --timeout"),
    (["--count", "0"], "is not a positive integer"),
])
def test_bad_arguments_exit_2_naming_the_problem(redis_url, stream_names, args, message):
    done = run("--redis-url", redis_url, "--stream", stream_names[0], *args, "--once")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_redis_exits_69_in_one_line():
    done = run("--redis-url", "redis://user:hunter22@127.0.0.1:1/0", "--stream", "never:alerts", "--once")
    assert done.returncode == 69, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "unreachable" in done.stderr
    assert "hunter22" not in done.stderr


def test_a_key_that_is_not_a_stream_exits_3(redis_url, redis_client, stream_names):
    redis_client.set(stream_names[0], "not a stream")
    done = run("--redis-url", redis_url, "--stream", stream_names[0], "--once")
    assert done.returncode == 3 and "is not a stream" in done.stderr, done.stderr


def test_sigterm_finishes_the_alert_in_hand_and_exits_0(redis_url, redis_client, stream_names):
    stream, group = stream_names
    for i in range(3):
        redis_client.xadd(stream, anomaly_fields(i))
    with WebhookServer(delay_s=1.0) as server:
        proc = start("--redis-url", redis_url, "--stream", stream, "--group", group, "--from-start",
                     "--webhook", server.url, "--block-ms", "200")
        wait_for(lambda: len(server.received) == 1, "the first POST")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert server.image_ids() == ["line-1/img_0000.png"]
    stopped = [json.loads(line) for line in err.splitlines() if '"alerts_consumer_stopped"' in line]
    assert stopped and stopped[0]["delivered"] == 1
    # the one in hand was acknowledged; the other two wait, pending, for the next run of this consumer
    assert redis_client.xpending(stream, group)["pending"] == 2


def test_killed_mid_stream_and_restarted_every_alert_arrives_duplicates_only_in_flight(redis_url, redis_client,
                                                                                      stream_names):
    stream, group = stream_names
    n = 30
    for i in range(n):
        redis_client.xadd(stream, anomaly_fields(i))
    common = ["--redis-url", redis_url, "--stream", stream, "--group", group, "--from-start", "--count", "4",
              "--block-ms", "200", "--timeout", "0.5", "--claim-idle-ms", "1000", "--once"]
    with WebhookServer(delay_s=0.1) as server:
        kills = 0
        for consumer, killed_after in (("c1", 8), ("c1", 16)):
            proc = start(*common, "--webhook", server.url, "--consumer", consumer)
            wait_for(lambda: len(server.received) >= killed_after, f"{killed_after} POSTs")
            proc.kill()  # SIGKILL: no handler runs, whatever was in flight stays unacknowledged
            proc.communicate(timeout=30)
            kills += 1
        # c1 is never coming back: another consumer takes its pending alerts over once they are idle
        time.sleep(1.2)
        done = run(*common, "--webhook", server.url, "--consumer", "c2")
        assert done.returncode == 0, done.stderr
        assert '"claimed_idle_entries"' in done.stderr
    received = server.image_ids()
    expected = {f"line-1/img_{i:04d}.png" for i in range(n)}
    assert set(received) == expected  # none lost
    duplicates = len(received) - len(set(received))
    assert duplicates <= kills  # at most the one POST in flight at each kill
    assert redis_client.xpending(stream, group)["pending"] == 0
    assert redis_client.xlen(f"{stream}:dead:{group}") == 0
