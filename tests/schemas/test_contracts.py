"""Contracts: round trips, versioning rules, every SchemaError reason, and the schema files themselves."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from importlib import resources

import jsonschema
import numpy as np
import pytest

from schemas import (
    DEAD_LETTER_REASONS,
    SCHEMA_NAMES,
    AlertEntry,
    DeadLetter,
    ImageRef,
    SchemaError,
    ScoreRecord,
    embedded_source,
    kafka_source,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 125000, tzinfo=timezone.utc)
CEST = timezone(timedelta(hours=2))


def make_ref(**overrides) -> ImageRef:
    fields = dict(
        image_id="line-3/2024-05-01/cam1_000123.png",
        uri="s3://invad-images/line-3/cam1_000123.png",
        line_id="line-3",
        camera_id="cam1",
        product="bottle",
        captured_at=T0,
        producer="edge-01",
        attributes={"shift": "B", "exposure_ms": 4.5, "frame": 123, "rework": False},
    )
    fields.update(overrides)
    return ImageRef(**fields)


def make_record(**overrides) -> ScoreRecord:
    fields = dict(
        image_id="line-3/cam1_000123.png",
        uri="s3://invad-images/line-3/cam1_000123.png",
        line_id="line-3",
        camera_id=None,
        product="bottle",
        captured_at=T0,
        scored_at=T0 + timedelta(seconds=1),
        score=4.21875,
        is_anomaly=True,
        threshold=3.0,
        model_name="invad-effnet-lite0",
        model_version="2024.05.1",
        map_stats={"max": 9.5, "mean": 1.25, "p99": 7.0, "peak_x": 120, "peak_y": 33},
        artefacts={
            "original": "s3://invad-flagged/line-3/cam1_000123.png/original.png",
            "overlay": "s3://invad-flagged/line-3/cam1_000123.png/overlay.png",
            "record": "s3://invad-flagged/line-3/cam1_000123.png/record.json",
        },
        timings_ms={"fetch": 3.5, "decode": 1.0, "infer": 12.25, "sink": 2.0, "end_to_end": 30.0},
        worker_id="worker-0",
        source=kafka_source("invad.images", 3, 1042),
    )
    fields.update(overrides)
    return ScoreRecord(**fields)


def raw_schema(name: str) -> dict:
    """The schema file read straight from package data, independent of the code under test."""
    return json.loads(resources.files("schemas").joinpath(f"{name}.v1.json").read_text("utf-8"))


def reason_of(call) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        call()
    return info.value


# --- round trips --------------------------------------------------------------------------------


def test_image_ref_round_trip():
    ref = make_ref()
    assert ImageRef.from_json(ref.to_json()) == ref
    assert ImageRef.from_dict(ref.to_dict()) == ref
    assert ImageRef.from_json(ref.to_json().decode()) == ref
    assert ref.kafka_key() == b"line-3"
    assert json.loads(ref.to_json())["schema_version"] == "1.0"


def test_image_ref_keeps_offset_and_defaults():
    ref = make_ref(captured_at=datetime(2024, 5, 1, 14, 0, tzinfo=CEST), camera_id=None, attributes={})
    obj = json.loads(ref.to_json())
    assert obj["captured_at"] == "2024-05-01T14:00:00+02:00"
    del obj["product"], obj["camera_id"], obj["attributes"]
    back = ImageRef.from_dict(obj)
    assert back.product == "default" and back.camera_id is None and back.attributes == {}
    assert back.captured_at.utcoffset() == timedelta(hours=2)


def test_score_record_round_trip_both_sources():
    for source in (kafka_source("invad.images", 0, 0), embedded_source("samples.jsonl", 17)):
        record = make_record(source=source)
        assert ScoreRecord.from_json(record.to_json()) == record
    unflagged = make_record(is_anomaly=False, score=0.5, artefacts={"original": None, "overlay": None, "record": None})
    assert ScoreRecord.from_json(unflagged.to_json()) == unflagged


def test_score_record_accepts_numpy_numbers():
    record = make_record(score=np.float32(4.5), map_stats={"max": np.float64(2), "mean": 1, "p99": 2.0,
                                                            "peak_x": np.int64(7), "peak_y": 0})
    assert type(record.score) is float and type(record.map_stats["peak_x"]) is int
    assert ScoreRecord.from_json(record.to_json()) == record


def test_dead_letter_keeps_payload_bytes():
    text = DeadLetter.for_message("invalid_json", "not JSON", value=b"{oops", key=b"line-3",
                                  topic="invad.images", partition=2, offset=7, worker_id="w0")
    assert (text.payload, text.payload_encoding) == ("{oops", "utf-8")
    binary = DeadLetter.for_message("invalid_json", "not UTF-8", value=b"\xff\x00\xfe", key=None,
                                    topic="invad.images", partition=2, offset=8, worker_id="w0")
    assert binary.payload_encoding == "base64" and binary.key is None
    for letter in (text, binary):
        back = DeadLetter.from_json(letter.to_json())
        assert back == letter
    assert DeadLetter.from_json(binary.to_json()).payload_bytes() == b"\xff\x00\xfe"
    assert text.key_bytes() == b"line-3"


def test_dead_letter_truncates_long_messages():
    letter = DeadLetter.for_message("fetch_failed", "x" * 10_000, value=b"{}", key=None,
                                    topic="t", partition=0, offset=0, worker_id="w0")
    assert len(letter.message) == 4096 and letter.message.endswith("...")


def test_alert_entry_round_trip_through_redis_style_bytes():
    record = make_record()
    alert = AlertEntry.from_record(record, "invad:score:" + record.image_id)
    fields = alert.to_fields()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    as_redis = {k.encode(): v.encode() for k, v in fields.items()}
    assert AlertEntry.from_fields(as_redis) == alert
    no_overlay = AlertEntry.from_record(make_record(artefacts={"original": None, "overlay": None, "record": None}), "k")
    assert no_overlay.to_fields()["overlay_uri"] == ""
    assert AlertEntry.from_fields(no_overlay.to_fields()).overlay_uri is None


def test_alert_scores_round_trip_exactly():
    for score in (0.1, 1e-05, 123456789.123, -2.5, 1e16):
        alert = AlertEntry.from_record(make_record(score=score, threshold=-3.0), "k")
        assert AlertEntry.from_fields(alert.to_fields()).score == score


# --- versioning and unknown fields ---------------------------------------------------------------


@pytest.mark.parametrize("make, cls", [(make_ref, ImageRef), (make_record, ScoreRecord)])
def test_unknown_fields_are_ignored(make, cls):
    obj = make().to_dict()
    obj["added_in_1_3"] = {"anything": [1, 2]}
    if cls is ScoreRecord:
        obj["map_stats"]["p999"] = 8.0
        obj["source"]["leader_epoch"] = 4
    back = cls.from_json(json.dumps(obj))
    assert back == make()
    assert "added_in_1_3" not in json.loads(back.to_json())


def test_unknown_alert_fields_are_ignored():
    fields = AlertEntry.from_record(make_record(), "k").to_fields()
    assert AlertEntry.from_fields({**fields, "camera_id": "cam1"}) == AlertEntry.from_fields(fields)


@pytest.mark.parametrize("version", ["1.1", "1.42"])
def test_minor_versions_are_accepted_and_reencoded_as_1_0(version):
    obj = make_ref().to_dict() | {"schema_version": version}
    back = ImageRef.from_json(json.dumps(obj))
    assert back == make_ref() and back.schema_version == "1.0"
    record = make_record().to_dict() | {"schema_version": version}
    assert ScoreRecord.from_dict(record) == make_record()


@pytest.mark.parametrize("version", ["2.0", "0.9", "10.1"])
def test_other_major_versions_are_rejected(version):
    for obj, cls in ((make_ref().to_dict(), ImageRef), (make_record().to_dict(), ScoreRecord)):
        error = reason_of(lambda: cls.from_json(json.dumps(obj | {"schema_version": version})))
        assert error.reason == "unsupported_version"
        assert version in error.message
    fields = AlertEntry.from_record(make_record(), "k").to_fields() | {"schema_version": version}
    assert reason_of(lambda: AlertEntry.from_fields(fields)).reason == "unsupported_version"


@pytest.mark.parametrize("version", [None, 1, "1", "v1.0", "1.0.0", "01.0"])
def test_malformed_versions_are_schema_invalid(version):
    obj = make_ref().to_dict()
    if version is None:
        del obj["schema_version"]
    else:
        obj["schema_version"] = version
    error = reason_of(lambda: ImageRef.from_dict(obj))
    assert error.reason == "schema_invalid" and error.message.startswith("schema_version:")


# --- error reasons -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"not json", b"\xff\xfe{}", b"[1, 2]", b"", b'{"score": NaN}', "\"text\""])
def test_invalid_json(data):
    for cls in (ImageRef, ScoreRecord, DeadLetter):
        error = reason_of(lambda: cls.from_json(data))
        assert error.reason == "invalid_json"
        assert isinstance(error, ValueError)


def test_schema_invalid_names_the_field_and_problem():
    obj = make_ref().to_dict() | {"image_id": "a b"}
    error = reason_of(lambda: ImageRef.from_json(json.dumps(obj)))
    assert error.reason == "schema_invalid"
    assert error.message.startswith("image_id: 'a b' does not match ")
    assert str(error).startswith("schema_invalid: image_id:")

    obj = make_ref().to_dict()
    del obj["line_id"]
    assert reason_of(lambda: ImageRef.from_dict(obj)).message == "line_id: required field is missing"

    obj = make_record().to_dict()
    obj["map_stats"]["peak_x"] = -1
    assert reason_of(lambda: ScoreRecord.from_dict(obj)).message.startswith("map_stats.peak_x: -1 is less than")

    obj = make_ref().to_dict()
    obj["attributes"]["nested"] = {"a": 1}
    assert reason_of(lambda: ImageRef.from_dict(obj)).message.startswith("attributes.nested:")


@pytest.mark.parametrize("change, message", [
    (lambda o: o.update(camera_id=5), "camera_id: 5 is not of type 'string' or 'null'"),
    (lambda o: o["attributes"].update(x=[1]), "attributes.x: [1] is not of type 'string', 'number' or 'boolean'"),
    (lambda o: o.update(producer=""), "producer: ''"),  # "should be non-empty" or "is too short" by version
])
def test_schema_invalid_messages_for_alternatives(change, message):
    obj = make_ref().to_dict()
    change(obj)
    assert reason_of(lambda: ImageRef.from_dict(obj)).message.startswith(message)


def test_schema_invalid_messages_stay_short():
    obj = make_ref().to_dict()
    obj["attributes"]["note"] = "x" * 5000
    message = reason_of(lambda: ImageRef.from_dict(obj)).message
    assert message.startswith("attributes.note: 'xxx") and len(message) <= 400


def test_nested_missing_field_is_named():
    obj = make_record().to_dict()
    del obj["map_stats"]["p99"]
    assert reason_of(lambda: ScoreRecord.from_dict(obj)).message == "map_stats.p99: required field is missing"


def test_records_are_hashable_by_identity_fields():
    assert len({make_ref(), make_ref()}) == 1 and hash(make_record()) == hash(make_record())


@pytest.mark.parametrize("image_id", ["a", "line-3/2024-05-01/x.png", "a:b_c-d", "A.b.c/d.e"])
def test_valid_image_ids(image_id):
    assert make_ref(image_id=image_id).image_id == image_id


@pytest.mark.parametrize("image_id", ["", "a b", "a..b", "../x", "/a", "a/", "a//b", ".hidden", "x.", "é", "a" * 257])
def test_invalid_image_ids(image_id):
    assert reason_of(lambda: make_ref(image_id=image_id)).reason == "schema_invalid"


@pytest.mark.parametrize("uri", ["s3://invad-images/a/b c.png", "https://cdn.example.com/x.png?sig=1",
                                 "file:///data/line-3/a%20b.png"])
def test_valid_uris(uri):
    assert make_ref(uri=uri).uri == uri


@pytest.mark.parametrize("uri", ["ftp://host/x.png", "http://host/x.png", "s3://Bad_Bucket/x", "s3://bucket",
                                 "s3://bucket/", "file://relative/x.png", "/data/x.png", "https://"])
def test_invalid_uris(uri):
    error = reason_of(lambda: make_ref(uri=uri))
    assert error.reason == "schema_invalid" and error.message.startswith("uri:")


@pytest.mark.parametrize("captured_at", ["2024-05-01T12:00:00", "2024-05-01 12:00:00Z", "2024-13-01T12:00:00Z",
                                         "2024-02-30T12:00:00Z", "yesterday"])
def test_invalid_timestamps(captured_at):
    obj = make_ref().to_dict() | {"captured_at": captured_at}
    error = reason_of(lambda: ImageRef.from_dict(obj))
    assert error.reason == "schema_invalid" and error.message.startswith("captured_at:")


def test_timestamps_with_nanoseconds_and_lowercase_are_accepted():
    obj = make_ref().to_dict() | {"captured_at": "2024-05-01t12:00:00.123456789z"}
    assert ImageRef.from_dict(obj).captured_at == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def test_constructors_validate():
    assert reason_of(lambda: make_ref(captured_at=datetime(2024, 5, 1))).message.startswith("captured_at:")
    assert reason_of(lambda: make_ref(line_id="line 3")).message.startswith("line_id:")
    assert reason_of(lambda: make_ref(attributes={f"k{i}": i for i in range(65)})).message.startswith("attributes:")
    assert reason_of(lambda: make_record(score=float("nan"))).message.startswith("score:")
    assert reason_of(lambda: make_record(timings_ms={"infer": -1.0})).message.startswith("timings_ms.infer:")
    assert reason_of(lambda: make_record(artefacts={"original": "ftp://x/y", "overlay": None, "record": None})
                     ).message.startswith("artefacts.original:")
    assert reason_of(lambda: DeadLetter.for_message("flaky", "m", value=b"", key=None, topic="t",
                                                    partition=0, offset=0, worker_id="w")).message.startswith("reason:")


def test_schema_error_reasons_are_dead_letter_reasons():
    assert {"invalid_json", "schema_invalid", "unsupported_version"} <= set(DEAD_LETTER_REASONS)
    with pytest.raises(ValueError):
        SchemaError("flaky", "not a reason")
    error = SchemaError("invalid_json", "boom")
    assert isinstance(error, ValueError) and (error.reason, error.message) == ("invalid_json", "boom")


# --- the schema files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_files_are_valid_draft_2020_12(name):
    schema = raw_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_shared_definitions_agree_across_files():
    image_ref = raw_schema("image_ref")["$defs"]
    score = raw_schema("score_record")["$defs"]
    alert = raw_schema("alert")["properties"]
    for key in ("image_id", "line_id", "product", "timestamp"):
        assert score[key]["pattern"] == image_ref[key]["pattern"], key
    for key in ("image_id", "line_id", "product"):
        assert alert[key]["pattern"] == image_ref[key]["pattern"], key
    assert raw_schema("dead_letter")["properties"]["failed_at"]["pattern"] == image_ref["timestamp"]["pattern"]


def test_encoder_output_validates_against_the_files():
    outputs = {
        "image_ref": [make_ref(), make_ref(camera_id=None, attributes={})],
        "score_record": [make_record(), make_record(source=embedded_source("folder:/data", 0), is_anomaly=False,
                                                    artefacts={"original": None, "overlay": None, "record": None})],
        "dead_letter": [DeadLetter.for_message(reason, "m", value=b"\x00\xff", key=b"k", topic="t",
                                               partition=None, offset=None, worker_id="w")
                        for reason in DEAD_LETTER_REASONS],
    }
    for name, messages in outputs.items():
        validator = jsonschema.Draft202012Validator(raw_schema(name))
        for message in messages:
            validator.validate(json.loads(message.to_json()))
    jsonschema.Draft202012Validator(raw_schema("alert")).validate(
        AlertEntry.from_record(make_record(), "invad:score:x").to_fields())
