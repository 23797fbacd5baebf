"""The decoder's bounds: no value, however hostile, raises anything but SchemaError, and every value it
accepts encodes again. Named inputs that once crashed workers, then hypothesis over bytes and JSON trees."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import fuzz_values, named_cases
from schemas import DeadLetter, ImageRef, SchemaError
from schemas._validate import MAX_JSON_BYTES, MAX_JSON_DEPTH

VALID = json.loads(ImageRef(image_id="L1/cell-0001", uri="s3://images/L1/cell-0001.png", line_id="L1",
                            producer="test", captured_at=datetime(2025, 1, 1, tzinfo=timezone.utc)).to_json())


def decode(value: bytes | None) -> ImageRef | SchemaError:
    try:
        ref = ImageRef.from_json(value if value is not None else b"null")
    except SchemaError as error:
        return error
    ref.to_json()  # whatever is accepted must encode again (no NaN, no surrogates)
    return ref


EXPECTED = {
    "nested_1000_top_level": ("invalid_json", "nested deeper"),
    "nested_1000_in_attributes": ("invalid_json", "nested deeper"),
    "nested_100000": ("invalid_json", "nested deeper"),
    "int_5000_digits": ("schema_invalid", "5000 digits"),
    "int_5000_digits_negative": ("schema_invalid", "5000 digits"),
    "float_1e400": ("schema_invalid", "1e400"),
    "float_minus_1e400": ("schema_invalid", "-1e400"),
    "nan_literal": ("invalid_json", "NaN"),
    "lone_surrogate_value": ("invalid_json", "surrogate"),
    "lone_surrogate_key": ("invalid_json", "surrogate"),
    "non_utf8_900k": ("invalid_json", "UTF-8"),
    "utf16": ("invalid_json", "UTF-8"),
    "huge_string_field": ("schema_invalid", "camera_id"),
    "version_2": ("unsupported_version", "MAJOR 2"),
}


# Valid messages by contract, refused later: the worker's allow-list (fetch stage) or nowhere (any 1.x).
ACCEPTED = {"uri_traversal", "version_huge"}


@pytest.mark.parametrize("name", sorted(named_cases(VALID)))
def test_named_hostile_values_are_schema_errors(name):
    value = named_cases(VALID)[name]
    outcome = decode(value)
    assert isinstance(outcome, ImageRef if name in ACCEPTED else SchemaError), f"{name}: {outcome!r}"
    if name in EXPECTED:
        reason, words = EXPECTED[name]
        assert outcome.reason == reason and words in outcome.message, outcome


def test_bounds_are_what_the_contracts_need():
    assert decode(json.dumps(VALID).encode()) == ImageRef.from_dict(VALID)
    at_depth = {**VALID, "attributes": {}}
    assert isinstance(decode(json.dumps(at_depth).encode()), ImageRef)
    big = b" " * (MAX_JSON_BYTES - len(json.dumps(VALID))) + json.dumps(VALID).encode()
    assert isinstance(decode(big), ImageRef)
    assert decode(b" " + big).reason == "invalid_json"
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # depth 32 with the object around it
    assert isinstance(decode(json.dumps(VALID)[:-1].encode() + b', "x": ' + nested.encode() + b"}"), ImageRef)
    assert "nested" in decode(json.dumps(VALID)[:-1].encode() + b', "x": [' + nested.encode() + b"]}").message
    assert decode(json.dumps({**VALID, "attributes": {"n": 10**18, "f": 1.7e308}}).encode()).attributes["n"] == 10**18


def test_fuzzed_values_never_raise_anything_else():
    outcomes = [decode(value) for value in fuzz_values(VALID, 3000, seed=1)]
    assert sum(isinstance(o, SchemaError) for o in outcomes) > 2500  # the fuzzer does reach the decoder's errors


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_raise_schema_error(data):
    decode(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(VALID) + ["extra"]), json_trees, max_size=12))
def test_any_json_object_decodes_or_raises_schema_error(fields):
    decode(json.dumps({**VALID, **fields}, allow_nan=True).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=4000))
def test_dead_letters_always_encode_and_keep_a_digest(value, limit):
    letter = DeadLetter.for_message("processing_failed", "score: ValueError: \udcff bad", value=value,
                                    key=value[:10], topic="t", partition=0, offset=1, worker_id="w",
                                    max_payload_bytes=limit)
    back = DeadLetter.from_json(letter.to_json())
    assert back == letter
    if len(value) > limit:
        assert back.payload_truncated and back.payload_size == len(value)
        assert back.payload_sha256 == hashlib.sha256(value).hexdigest()
        assert back.payload_bytes() == value[:limit]
    else:
        assert not back.payload_truncated and back.payload_bytes() == value
    smallest = letter.truncated(0)
    assert DeadLetter.from_json(smallest.to_json()) == smallest and len(smallest.payload_bytes() or b"") == 0
    if value:
        assert smallest.payload_size == len(value)
