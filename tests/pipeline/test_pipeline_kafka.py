"""Kafka mode against the real broker, Redis and S3: end to end, poison messages, and the embedded
mode giving the same scores as the Kafka path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kafka_helpers import (KafkaEnv, WorkerThread, alert_ids, all_committed, offsets, produce, read_dlq, ref_json,
                           refs_for, stored_records, texture_pngs, upload_images, wait_for)

pytestmark = pytest.mark.services


@pytest.fixture
def kenv(kafka_bootstrap, redis_url, s3_settings, tiny_bundle) -> KafkaEnv:
    return KafkaEnv(kafka_bootstrap, redis_url, s3_settings, models=str(tiny_bundle)).setup()


def check_artefacts(env: KafkaEnv, records) -> None:
    client = env.s3_client()
    for record in records.values():
        if record.is_anomaly:
            for kind in ("original", "overlay", "record"):
                uri = record.artefacts[kind]
                assert uri.startswith(f"s3://{env.bucket}/art/default/{record.line_id}/{record.image_id}/")
                key = uri.split("/", 3)[3]
                assert client.head_object(Bucket=env.bucket, Key=key)["ContentLength"] > 0
        else:
            assert set(record.artefacts.values()) == {None}


def test_end_to_end_real_model_and_embedded_equivalence(kenv, registry, tmp_path):
    from worker.pipeline.cli import run_embedded
    images = texture_pngs(8, 4)
    upload_images(kenv, images)
    produce(kenv, refs_for(kenv, images))
    worker = WorkerThread(kenv.config(INVAD_BATCH_SIZE="8"), registry)
    try:
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 120, "all records + commits")
    finally:
        assert worker.stop() == 0
    records = stored_records(kenv)
    assert sorted(records) == sorted(f"img/{n}" for n in images)
    flagged = sorted(i for i, r in records.items() if r.is_anomaly)
    assert sorted(alert_ids(kenv)) == flagged
    check_artefacts(kenv, records)
    committed, ends = offsets(kenv)
    assert all((committed[p] or 0) == ends[p] for p in ends) and sum(ends.values()) == len(images)

    folder = tmp_path / "same"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    summary = run_embedded(folder, registry, tmp_path / "e.db", None, batch_size=5)
    kafka_scores = {i.split("/", 1)[1]: r.score for i, r in records.items()}
    assert summary["scored"] == len(images)
    np.testing.assert_allclose([summary["scores"][f"local/{n}"] for n in sorted(images)],
                               [kafka_scores[n] for n in sorted(images)], rtol=1e-4, atol=1e-4)


def test_poison_messages_go_to_the_dlq_and_the_rest_is_scored(kenv, registry):
    images = texture_pngs(4, 2)
    upload_images(kenv, images)
    kenv.s3_client().put_object(Bucket=kenv.bucket, Key="in/junk.png", Body=b"definitely not a png")
    good = refs_for(kenv, images)
    wrong_schema = json.dumps({"schema_version": "1.0", "image_id": "x"}).encode()
    poison = [(b"L0", b"{not json"), (b"L1", wrong_schema), (b"L2", ref_json(kenv, "gone", "missing.png", "L2")),
              (b"L3", ref_json(kenv, "junk", "junk.png", "L3")), (None, b"\xff\xfe binary")]
    produce(kenv, good[:3] + poison + good[3:])
    worker = WorkerThread(kenv.config(), registry)
    try:
        wait_for(lambda: len(stored_records(kenv)) == len(images) and all_committed(kenv), 60, "records + commits")
    finally:
        assert worker.stop() == 0
    letters = read_dlq(kenv, len(poison))
    assert sorted(d.reason for d in letters) == sorted(
        ["invalid_json", "schema_invalid", "object_missing", "image_invalid", "invalid_json"])
    by_reason = {d.reason: d for d in letters}
    assert by_reason["schema_invalid"].payload_bytes() == wrong_schema
    assert {d.payload_bytes() for d in letters if d.reason == "invalid_json"} == {b"{not json", b"\xff\xfe binary"}
    assert all(d.topic == kenv.topic and d.offset is not None for d in letters)
    records = stored_records(kenv)
    assert sorted(records) == sorted(f"img/{n}" for n in images)
    assert sorted(alert_ids(kenv)) == sorted(i for i, r in records.items() if r.is_anomaly) != []
    check_artefacts(kenv, records)


def test_messages_dropped_after_a_revoke_are_read_again_when_the_partition_stays_ours(kenv):
    """Regression: a rebalance mid-batch drops the revoked partitions' messages; when the partition
    comes straight back to the same consumer, those messages must be delivered again, not skipped."""
    from worker.pipeline.kafka_io import KafkaSource

    produce(kenv, [(b"line-a", f"m{i}".encode()) for i in range(6)])
    source = KafkaSource(kenv.config())
    try:
        first = wait_for(lambda: source.poll_batch(6, 1.0), 30, "a first batch")
        assert {m.value for m in first} <= {f"m{i}".encode() for i in range(6)}
        # What the loop does with messages of a revoked partition that it will not process:
        source.give_back(first)
        again = wait_for(lambda: source.poll_batch(6, 1.0), 30, "the same messages again")
        assert [(m.partition, m.offset) for m in again][: len(first)] == [(m.partition, m.offset) for m in first]
    finally:
        source.close()
