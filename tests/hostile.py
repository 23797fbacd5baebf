"""Hostile message values for the decoder, loop and worker tests: the inputs that once killed workers,
and a seeded fuzzer that mutates a valid ImageRef (bytes and structure) into many more.

Every value here must end as a dead letter (or, for the few mutations that stay valid, a score);
none may raise out of the loop or stop a worker.
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def named_cases(valid: dict[str, Any]) -> dict[str, bytes | None]:
    """The inputs of issue 6 and their relatives, each built around the valid ImageRef ``valid``."""

    def with_field(name: str, raw: str) -> bytes:
        text = json.dumps({k: v for k, v in valid.items() if k != name})
        return (text[:-1] + f', "{name}": {raw}}}').encode()

    return {
        "nested_1000_top_level": deep(1000).encode(),
        "nested_1000_in_attributes": with_field("attributes", '{"x": ' + deep(1000) + "}"),
        "nested_100000": deep(100_000).encode(),
        "int_5000_digits": with_field("attributes", '{"n": ' + "9" * 5000 + "}"),
        "int_5000_digits_negative": with_field("attributes", '{"n": -' + "9" * 5000 + "}"),
        "float_1e400": with_field("attributes", '{"temp": 1e400}'),
        "float_minus_1e400": with_field("attributes", '{"temp": -1e400}'),
        "nan_literal": with_field("attributes", '{"temp": NaN}'),
        "lone_surrogate_value": with_field("camera_id", '"cam\\ud800"'),
        "lone_surrogate_key": with_field("attributes", '{"\\udfff": 1}'),
        "non_utf8_900k": b"\xff\xfe" * 450_000,
        "null_value": None,
        "empty": b"",
        "json_array": b"[1, 2, 3]",
        "json_string": b'"just a string"',
        "utf16": json.dumps(valid).encode("utf-16"),
        "huge_string_field": with_field("camera_id", json.dumps("c" * 900_000)),
        "many_attributes": with_field("attributes", json.dumps({f"k{i}": i for i in range(5000)})),
        "version_2": json.dumps({**valid, "schema_version": "2.0"}).encode(),
        "version_huge": with_field("schema_version", '"1.' + "9" * 5000 + '"'),
        "uri_traversal": json.dumps({**valid, "uri": "file:///../../etc/passwd"}).encode(),
        "uri_other_scheme": json.dumps({**valid, "uri": "gopher://example.invalid/x"}).encode(),
        "uri_null_byte": json.dumps({**valid, "uri": "file:///tmp/a\u0000b.png"}).encode(),
        "captured_at_month_13": json.dumps({**valid, "captured_at": "2025-13-01T00:00:00Z"}).encode(),
        "captured_at_year_0": json.dumps({**valid, "captured_at": "0000-01-01T00:00:00Z"}).encode(),
        "captured_at_far_offset": json.dumps({**valid, "captured_at": "2025-01-01T00:00:00+99:99"}).encode(),
    }


_FRAGMENTS = ('{', '}', '[', ']', '"', '\\', ',', ':', 'null', 'true', '1e400', '-0', 'NaN', 'Infinity',
              '"\\ud800"', '9' * 30, '0.' + '0' * 400 + '1', '\u0000', '\xff', '"\\u0000"', deep(50))


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**18])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e-300, 1.7e308, 3.14])
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return rng.choice(["", "s3://", "file:///", "https://", "1.0", "2025-01-01T00:00:00Z", "x" * 3000])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["a", "uri", "image_id", "", "k" * 200]): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def fuzz_values(valid: dict[str, Any], n: int, seed: int = 0) -> Iterator[bytes]:
    """``n`` values derived from the valid ImageRef ``valid``: byte flips, cuts and splices of its
    JSON, fields replaced by random values of any type, fields dropped, and random bytes."""
    rng = random.Random(seed)
    base = json.dumps(valid).encode()
    fields = list(valid)
    for _ in range(n):
        kind = rng.randrange(7)
        if kind == 0:  # flip bytes
            data = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data)
        elif kind == 1:  # cut
            yield base[: rng.randrange(len(base))]
        elif kind == 2:  # splice a fragment in
            at = rng.randrange(len(base))
            yield base[:at] + rng.choice(_FRAGMENTS).encode("utf-8", "surrogatepass") + base[at:]
        elif kind == 3:  # a field of the wrong type or value
            obj = dict(valid)
            obj[rng.choice(fields)] = _random_value(rng)
            yield json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        elif kind == 4:  # a field dropped, or an unknown one added
            obj = dict(valid)
            if rng.random() < 0.5:
                obj.pop(rng.choice(fields))
            else:
                obj[f"extra{rng.randrange(100)}"] = _random_value(rng)
            yield json.dumps(obj).encode()
        elif kind == 5:  # attributes of any shape
            obj = dict(valid)
            obj["attributes"] = {f"k{i}": _random_value(rng) for i in range(rng.randrange(0, 70))}
            yield json.dumps(obj).encode()
        else:  # random bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
