"""Producers against a real Kafka broker (and a real S3 store for uploads)."""

from __future__ import annotations

import json
from itertools import chain, zip_longest

import pytest

from producers.admin import TopicError, describe_topic, ensure_topic
from producers.publisher import Publisher, PublishError
from producers.sources import RefTemplate, list_folder, local_refs
from schemas import ImageRef


def _fail(what, message):
    raise AssertionError(f"{what}: {message}")


def test_ensure_topic_creates_partitions_once(kafka_bootstrap, topic):
    assert describe_topic(kafka_bootstrap, topic) is None
    first = ensure_topic(kafka_bootstrap, topic, partitions=4)
    assert (first.partitions, first.created) == (4, True)
    again = ensure_topic(kafka_bootstrap, topic, partitions=3)
    assert (again.partitions, again.created) == (4, False)
    assert describe_topic(kafka_bootstrap, topic) == 4
    with pytest.raises(TopicError, match=r"already exists with 4 partitions, fewer than the 6 asked for.*--partitions 4"):
        ensure_topic(kafka_bootstrap, topic, partitions=6)
    with pytest.raises(ValueError, match="not a valid Kafka topic name"):
        ensure_topic(kafka_bootstrap, "bad topic", partitions=1)


def test_each_line_lands_on_one_partition_in_order(kafka_bootstrap, topic, make_pngs, consume_all):
    ensure_topic(kafka_bootstrap, topic, partitions=4)
    lines = [f"line-{n}" for n in range(5)]
    per_line = []
    for line in lines:
        folder = make_pngs(line, [f"cam1/{i:03d}.png" for i in range(12)])
        per_line.append(list(local_refs(list_folder(folder), RefTemplate(producer="test", line_id=line), None, _fail)))
    # Interleave the lines, as cameras on several lines would.
    refs = [r for r in chain.from_iterable(zip_longest(*per_line)) if r is not None]

    with Publisher(kafka_bootstrap, topic, linger_ms=5) as publisher:
        reports = list(publisher.publish(refs))
        assert publisher.partitions() == {0, 1, 2, 3}

    assert [r.image_id for r in reports] == [r.image_id for r in refs]
    assert all(r.ok and r.topic == topic and r.offset is not None for r in reports), reports[:3]
    records = consume_all(kafka_bootstrap, topic, expected=len(refs))
    assert len(records) == len(refs)
    at = {(rec.partition, rec.offset): rec for rec in records}
    for report in reports:  # delivery reports point at the stored record
        rec = at[(report.partition, report.offset)]
        assert ImageRef.from_json(rec.value).image_id == report.image_id
        assert rec.key == report.line_id.encode()
    for line, sent in zip(lines, per_line):
        got = sorted((r for r in records if r.key == line.encode()), key=lambda r: r.offset)
        assert len({r.partition for r in got}) == 1, f"{line} spread over partitions"
        assert [ImageRef.from_json(r.value) for r in got] == sent


def test_cli_publishes_a_folder(kafka_bootstrap, topic, make_pngs, run_cli, consume_all):
    folder = make_pngs("imgs", ["a.png", "b.JPG", "notes.txt", "sub/c.png"])
    (folder / "b.JPG").write_bytes(b"not really a jpeg, the producer does not decode")
    result = run_cli([str(folder), "--bootstrap", kafka_bootstrap, "--topic", topic, "--create-topic",
                      "--partitions", "3", "--line-id", "line-7", "--camera-id", "cam-2", "--product", "bottle",
                      "--attr", "shift=B", "--producer", "edge-1", "--quiet"])
    assert result.code == 0, result.err
    assert "sent 3, failed 0, skipped 0, partitions used [" in result.err
    assert "file:// URIs" in result.err  # the warning for remote workers
    refs = [ImageRef.from_json(r.value) for r in consume_all(kafka_bootstrap, topic, expected=3)]
    assert sorted(r.image_id for r in refs) == ["line-7/a.png", "line-7/b.JPG", "line-7/sub/c.png"]
    assert {(r.line_id, r.camera_id, r.product, r.producer) for r in refs} == {("line-7", "cam-2", "bottle", "edge-1")}
    assert all(r.attributes == {"shift": "B"} and r.uri.startswith("file:///") for r in refs)
    assert describe_topic(kafka_bootstrap, topic) == 3


def test_cli_upload_puts_objects_in_s3(kafka_bootstrap, topic, make_pngs, run_cli, s3_bucket, s3_env, consume_all):
    s3, bucket = s3_bucket
    folder = make_pngs("upload", ["x/1.png", "x/2.png", "weird name.png"])
    result = run_cli([str(folder), "--bootstrap", kafka_bootstrap, "--topic", topic, "--create-topic",
                      "--line-id", "line-1", "--upload", f"s3://{bucket}/incoming/", "--s3-endpoint", s3_env,
                      "--quiet"])
    assert result.code == 0, result.err
    refs = [ImageRef.from_json(r.value) for r in consume_all(kafka_bootstrap, topic, expected=3)]
    assert len(refs) == 3
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}
    for ref in refs:
        assert ref.uri == f"s3://{bucket}/incoming/{ref.image_id}"
        key = ref.uri[len(f"s3://{bucket}/"):]
        rel = "weird name.png" if "weird" in ref.image_id else ref.image_id.removeprefix("line-1/")
        assert s3.get_bytes(bucket, key) == local[rel]

    # The uploaded prefix is itself a source: same objects, ids relative to the prefix.
    listed = run_cli([f"s3://{bucket}/incoming/line-1/x/", "--line-id", "line-1", "--s3-endpoint", s3_env,
                      "--dry-run", "--quiet"])
    assert listed.code == 0, listed.err
    from_s3 = [json.loads(line) for line in listed.out.splitlines()]
    assert [r["uri"] for r in from_s3] == [f"s3://{bucket}/incoming/line-1/x/1.png",
                                          f"s3://{bucket}/incoming/line-1/x/2.png"]
    assert [r["image_id"] for r in from_s3] == ["line-1/1.png", "line-1/2.png"]


def test_cli_reads_stdin_lines(kafka_bootstrap, topic, make_pngs, run_cli, consume_all):
    folder = make_pngs("stdin", ["p.png"])
    full = ImageRef.from_dict({"schema_version": "1.0", "image_id": "other/7", "uri": "https://cdn.example.com/7.png",
                               "line_id": "line-9", "captured_at": "2024-05-01T12:00:00Z", "producer": "mes"})
    stdin = "\n".join([str(folder / "p.png"), "", "# a comment", full.to_json().decode(),
                       "s3://invad-images/line-2/q.png", str(folder / "missing.png"), "{not json"]) + "\n"
    result = run_cli(["-", "--bootstrap", kafka_bootstrap, "--topic", topic, "--create-topic", "--line-id", "line-2",
                      "--quiet"], stdin=stdin)
    assert result.code == 1  # two bad lines were skipped
    assert "skipped line 6:" in result.err and "missing.png" in result.err
    assert "skipped line 7: invalid_json:" in result.err
    assert "sent 3, failed 0, skipped 2" in result.err
    records = consume_all(kafka_bootstrap, topic, expected=3)
    by_id = {ImageRef.from_json(r.value).image_id: r for r in records}
    assert set(by_id) == {"line-2/" + str(folder / "p.png").lstrip("/"), "other/7", "line-2/line-2/q.png"}
    assert by_id["other/7"].key == b"line-9" and ImageRef.from_json(by_id["other/7"].value) == full


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(PublishError, match="no Kafka broker reachable at '127.0.0.1:1'"):
        Publisher("127.0.0.1:1", "t", bootstrap_timeout_ms=1000).connect()


def test_a_rejected_record_is_reported_and_publishing_continues(kafka_bootstrap, topic, make_pngs):
    ensure_topic(kafka_bootstrap, topic, partitions=1)
    folder = make_pngs("big", ["a.png", "b.png"])
    small = list(local_refs(list_folder(folder), RefTemplate(producer="t", line_id="l"), None, _fail))
    big = ImageRef(image_id="l/big", uri="s3://bucket-x/big.png", line_id="l", captured_at=small[0].captured_at,
                   producer="t", attributes={f"k{i}": "x" * 1000 for i in range(40)})
    publisher = Publisher(kafka_bootstrap, topic)
    publisher._config["max_request_size"] = 4096  # white-box: make the 40 kB ref too large for this producer
    with publisher:
        reports = list(publisher.publish([small[0], big, small[1]]))
    assert [r.ok for r in reports] == [True, False, True]
    assert reports[1].error.startswith("MessageSizeTooLargeError") and reports[1].offset is None
