"""/metrics, /healthz and /readyz of a real worker process on the real services: the counts scraped while
messages flow equal what was produced (poison messages included), the lag gauge covers every
partition, and /readyz follows a Redis outage (a TCP proxy that is cut; the shared Redis stays up)
while /healthz stays green."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections import Counter
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import free_port
from kafka_helpers import (KafkaEnv, all_committed, produce, ref_json, refs_for, start_worker_process, stored_records,
                           texture_pngs, upload_images, wait_for)
from proxy import TCPProxy

pytestmark = pytest.mark.services


@pytest.fixture
def kenv(kafka_bootstrap, redis_url, s3_settings, tiny_bundle) -> KafkaEnv:
    return KafkaEnv(kafka_bootstrap, redis_url, s3_settings, models=str(tiny_bundle)).setup()


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET; (0, reason) while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, repr(error)


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label pairs: value}} from the worker's /metrics."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by(series: dict[tuple, float], *names: str) -> Counter:
    """Sum a metric's samples by the label ``names`` (zeros dropped)."""
    out: Counter = Counter()
    for labels, value in series.items():
        labels = dict(labels)
        out[tuple(labels[name] for name in names)] += value
    return +out


def expected(kenv: KafkaEnv) -> tuple[Counter, Counter]:
    """Scored and flagged counts by (line_id, product), from the records in Redis."""
    records = stored_records(kenv).values()
    return (Counter((r.line_id, r.product) for r in records),
            +Counter((r.line_id, r.product) for r in records if r.is_anomaly))


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_scraped_counts_are_the_true_counts(kenv, tmp_path):
    images = texture_pngs(6, 3, seed=11)
    upload_images(kenv, images)
    refs = refs_for(kenv, images, lines=3)
    wrong_schema = json.dumps({"schema_version": "1.0", "image_id": "x"}).encode()
    poison = [(b"L0", b"{not json"), (b"L1", wrong_schema), (b"L2", ref_json(kenv, "gone", "missing.png", "L2"))]
    port = free_port()
    proc = start_worker_process(kenv, tmp_path / "worker.log", INVAD_METRICS_PORT=str(port),
                                INVAD_METRICS_BIND="127.0.0.1")
    try:
        wait_for(lambda: get(port, "/readyz")[0] == 200, 120, "the worker to be ready")
        produced = 0
        for part in (refs[:5] + poison, refs[5:]):  # scraped after each part, while the stream goes on
            produce(kenv, part)
            produced += len(part)
            wait_for(lambda: all_committed(kenv) and len(stored_records(kenv)) == produced - len(poison)
                     and scrape(port)["invad_batches_in_flight"][()] == 0, 120, "the part scored and committed")
            metrics = scrape(port)
            scored, flagged = expected(kenv)
            assert by(metrics["invad_messages_scored_total"], "line_id", "product") == scored
            assert by(metrics["invad_messages_flagged_total"], "line_id", "product") == flagged
            assert by(metrics["invad_messages_dead_lettered_total"], "reason", "line_id", "product") == Counter({
                ("invalid_json", "unknown", "unknown"): 1, ("schema_invalid", "unknown", "unknown"): 1,
                ("object_missing", "L2", "default"): 1})
            assert metrics["invad_messages_consumed_total"][()] >= produced  # a rebalance may redeliver
            assert metrics["invad_batch_size_sum"][()] == metrics["invad_messages_consumed_total"][()]
        assert flagged and sum(scored.values()) == len(images)
        committed_batches = metrics["invad_batches_committed_total"][()]
        assert by(metrics["invad_stage_seconds_count"], "stage") == Counter(
            {(stage,): committed_batches for stage in ("decode", "fetch", "score", "sinks", "dead_letters", "commit")})
        [info] = [dict(labels) for labels in metrics["invad_model_info"]]
        assert info["product"] == "*" and info["model_name"] == "tiny" and info["model_version"]
        lag = wait_for(lambda: (series := scrape(port).get("invad_consumer_lag", {})) and len(series) == 3
                       and series, 30, "a lag gauge per partition")
        assert sorted(dict(labels)["partition"] for labels in lag) == ["0", "1", "2"]
        assert all(dict(labels)["topic"] == kenv.topic for labels in lag)
        wait_for(lambda: set(scrape(port)["invad_consumer_lag"].values()) == {0}, 30, "no lag once all is committed")
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_readyz_follows_a_redis_outage_and_healthz_stays_green(kenv, tmp_path):
    images = texture_pngs(10, 2, seed=13)
    upload_images(kenv, images)
    refs = refs_for(kenv, images)
    parts = urlsplit(kenv.redis_url)
    port = free_port()
    with TCPProxy(parts.hostname, parts.port) as proxy:
        proc = start_worker_process(kenv, tmp_path / "worker.log", INVAD_METRICS_PORT=str(port),
                                    INVAD_METRICS_BIND="127.0.0.1", INVAD_READY_CHECK_S="0.5",
                                    INVAD_HEALTH_STALE_S="10", INVAD_REDIS_URL=f"redis://{proxy.address}{parts.path}",
                                    # small batches: the ones in flight cannot hold every waiting message
                                    INVAD_BATCH_SIZE="2", INVAD_MAX_IN_FLIGHT="2")
        try:
            wait_for(lambda: get(port, "/readyz")[0] == 200, 120, "the worker to be ready")
            produce(kenv, refs[:4])
            wait_for(lambda: len(stored_records(kenv)) == 4 and all_committed(kenv), 120, "a first part scored")

            proxy.cut()
            produce(kenv, refs[4:])  # the loop now waits for Redis with its batches in flight; the others stay behind
            status, body = wait_for(lambda: (reply := get(port, "/readyz"))[0] == 503 and reply, 30, "not ready")
            assert json.loads(body)["checks"]["redis_reachable"] is False

            def lag_counts_what_waits() -> bool:
                metrics = scrape(port)
                lag = sum(metrics.get("invad_consumer_lag", {}).values())
                return lag > 0 and lag + metrics["invad_messages_consumed_total"][()] == len(refs)
            wait_for(lag_counts_what_waits, 30, "the lag to count the messages not yet polled")
            # Waiting out the outage for longer than INVAD_HEALTH_STALE_S is not being stuck:
            def down_long_enough() -> bool:
                assert get(port, "/healthz")[0] == 200
                down = scrape(port)
                return (down["invad_dependency_down"][(("dependency", "redis"),)] == 1
                        and down["invad_dependency_down_seconds_total"][(("dependency", "redis"),)] > 12)
            wait_for(down_long_enough, 60, "12 s of Redis down time", interval_s=1)
            assert len(stored_records(kenv)) == 4

            proxy.restore()
            wait_for(lambda: get(port, "/readyz")[0] == 200, 60, "ready again")
            wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 60, "the rest scored")
            after = scrape(port)
            assert after["invad_dependency_down"][(("dependency", "redis"),)] == 0
            assert sum(after["invad_messages_scored_total"].values()) == len(images)
            assert get(port, "/healthz")[0] == 200
        finally:
            proxy.restore()
            stop(proc)
    assert proc.returncode == 0
