"""Loading the JSON Schema files and validating messages against them: the one place that does either.

Every decoder follows the same steps, in this order, so a message fails with the most useful reason:
1. parse the bytes as a JSON object                      -> SchemaError("invalid_json")
2. read ``schema_version`` ("MAJOR.MINOR") and check MAJOR -> SchemaError("unsupported_version")
3. validate against the schema file of that MAJOR         -> SchemaError("schema_invalid")
"""

from __future__ import annotations

import json
import math
import numbers
import re
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any, ClassVar, Mapping

from jsonschema import Draft202012Validator

# The MAJOR version this code reads and writes. Readers accept any MINOR of it (new optional fields only).
SUPPORTED_MAJOR = 1
SCHEMA_VERSION = "1.0"
SCHEMA_NAMES = ("image_ref", "score_record", "dead_letter", "alert")
SCHEMA_REASONS = ("invalid_json", "schema_invalid", "unsupported_version")

_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


class SchemaError(ValueError):
    """A message that does not satisfy its contract.

    Attributes:
        reason: one of "invalid_json", "schema_invalid", "unsupported_version" (these are also
            dead-letter reasons, so a worker can forward them unchanged).
        message: what is wrong, naming the field path, e.g. "image_id: 'a b' does not match ...".
    """

    def __init__(self, reason: str, message: str):
        if reason not in SCHEMA_REASONS:
            raise ValueError(f"SchemaError reason {reason!r} is not one of {SCHEMA_REASONS}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def schema_filename(name: str) -> str:
    """File name of the v1 schema ``name`` inside this package (e.g. "image_ref.v1.json")."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; expected one of {SCHEMA_NAMES}")
    return f"{name}.v{SUPPORTED_MAJOR}.json"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The parsed JSON Schema ``name`` (see SCHEMA_NAMES), read from package data. Do not mutate it."""
    text = resources.files(__package__).joinpath(schema_filename(name)).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def _path(error, extra: str | None = None) -> str:
    parts = [str(p) for p in error.absolute_path] + ([extra] if extra else [])
    return ".".join(parts) if parts else "(message)"


_MAX_DESCRIPTION = 400
_REQUIRED_RE = re.compile(r"^'(.+)' is a required property$")


def _describe(error) -> str:
    """ "field.path: what is wrong" for one jsonschema error."""
    if error.validator == "required":
        match = _REQUIRED_RE.match(error.message)
        if match:
            return f"{_path(error, match.group(1))}: required field is missing"
    if error.context:  # anyOf: say what was expected rather than "not valid under any of the given schemas"
        deeper = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        if deeper:
            return _describe(min(deeper, key=lambda e: e.message))
        if all(e.validator == "type" for e in error.context):
            types = [e.validator_value for e in error.context]
            expected = ", ".join(repr(t) for t in types[:-1]) + f" or {types[-1]!r}" if len(types) > 1 else repr(types[0])
            return f"{_path(error)}: {error.instance!r} is not of type {expected}"
        patterns = [e for e in error.context if e.validator in ("pattern", "maxLength", "minLength", "enum")]
        if patterns:
            return _describe(patterns[0])
    return f"{_path(error)}: {error.message}"


def validate(name: str, obj: Any) -> None:
    """Validate ``obj`` against schema ``name``.

    Raises:
        SchemaError("schema_invalid"): naming the field path of the first problem (fields in
            document order) and what is wrong; further problems are counted in the message.
    """
    errors = sorted(_validator(name).iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        text = _describe(errors[0])
        if len(text) > _MAX_DESCRIPTION:  # values can be long; the message goes into logs and dead letters
            text = text[: _MAX_DESCRIPTION - 3] + "..."
        raise SchemaError("schema_invalid", text + more)


# Bounds of what a decoder accepts, so that no message can exhaust the stack, the CPU or the encoder.
MAX_JSON_BYTES = 1 << 20   # Kafka's default message size; a reference is a few hundred bytes
MAX_JSON_DEPTH = 32        # the deepest contract nests 3 levels
MAX_INT_DIGITS = 19        # anything longer is outside int64, and Python refuses > 4,300 digits anyway
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; the JSON standard (and every other language's parser) does not.
    raise SchemaError("invalid_json", f"{name} is not valid JSON (numbers must be finite)")


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise SchemaError("schema_invalid", f"an integer of {digits} digits is out of range "
                                            f"(at most {MAX_INT_DIGITS} digits, a 64-bit integer)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON syntax, but no 64-bit float holds it
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise SchemaError("schema_invalid", f"number {shown} is out of the range of a 64-bit float")
    return value


def _check_tree(obj: Any) -> None:
    """Reject nesting deeper than MAX_JSON_DEPTH and text that is not Unicode (lone surrogate escapes),
    walking iteratively so that the check itself cannot overflow the stack."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)) and depth > MAX_JSON_DEPTH:
            raise SchemaError("invalid_json", f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                stack.append((key, depth))
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, str) and _SURROGATE_RE.search(node):
            raise SchemaError("invalid_json", "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                                              "which is not Unicode text")


def parse_json_object(data: bytes | bytearray | str) -> dict[str, Any]:
    """Parse ``data`` (UTF-8 bytes or text) as one JSON object, within the bounds above.

    Raises:
        SchemaError("invalid_json"): not UTF-8, not JSON (NaN and Infinity included), not an object,
            larger than MAX_JSON_BYTES, nested deeper than MAX_JSON_DEPTH, or holding lone surrogates.
        SchemaError("schema_invalid"): a number out of range (more than MAX_INT_DIGITS digits, or a
            float that overflows to infinity, such as 1e400).
    """
    if len(data) > MAX_JSON_BYTES:
        raise SchemaError("invalid_json", f"message of {len(data)} bytes exceeds the limit of {MAX_JSON_BYTES} bytes")
    try:
        # Decode first: json.loads would also take UTF-16/32 bytes, which the contracts do not allow.
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError("invalid_json", f"not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise SchemaError("invalid_json", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise SchemaError("invalid_json", f"expected a JSON object, got {type(obj).__name__}")
    _check_tree(obj)
    return obj


def check_version(obj: Mapping[str, Any]) -> str:
    """Return ``obj["schema_version"]`` after checking its MAJOR is SUPPORTED_MAJOR.

    Raises:
        SchemaError("schema_invalid"): the field is missing or not "MAJOR.MINOR".
        SchemaError("unsupported_version"): MAJOR differs from SUPPORTED_MAJOR.
    """
    version = obj.get("schema_version")
    if version is None:
        raise SchemaError("schema_invalid", "schema_version: required field is missing")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise SchemaError("schema_invalid", f"schema_version: {version!r} is not a 'MAJOR.MINOR' string")
    major = int(version.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise SchemaError(
            "unsupported_version",
            f"schema_version {version!r} has MAJOR {major}; this reader supports {SUPPORTED_MAJOR}.x only",
        )
    return version


def decode_object(name: str, data: bytes | bytearray | str) -> dict[str, Any]:
    """Parse, version-check and validate one message of schema ``name``; returns the raw dict."""
    obj = parse_json_object(data)
    check_version(obj)
    validate(name, obj)
    return obj


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (no NaN/Infinity, which JSON cannot carry), keys in insertion order."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def format_timestamp(value: datetime, field: str) -> str:
    """RFC 3339 text of an aware datetime, keeping its offset ("Z" for UTC).

    Raises:
        SchemaError("schema_invalid"): ``value`` is not a timezone-aware datetime.
    """
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise SchemaError("schema_invalid", f"{field}: {value!r} must be a timezone-aware datetime")
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def parse_timestamp(text: str, field: str) -> datetime:
    """Aware datetime from RFC 3339 text (already pattern-checked by the schema).

    Fractions beyond microseconds are truncated, as Python datetimes cannot hold them.

    Raises:
        SchemaError("schema_invalid"): a date or time that does not exist (e.g. month 13).
    """
    norm = text.replace("t", "T").replace("z", "Z")
    match = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", norm)
    if match and match.group(2) and len(match.group(2)) > 7:
        norm = match.group(1) + match.group(2)[:7] + match.group(3)
    try:
        value = datetime.fromisoformat(norm)
    except ValueError as exc:
        raise SchemaError("schema_invalid", f"{field}: {text!r} is not a valid RFC 3339 timestamp ({exc})") from None
    if value.tzinfo is None:
        raise SchemaError("schema_invalid", f"{field}: {text!r} has no timezone offset")
    return value


def check_finite(value: float, field: str) -> float:
    """``value`` as a float, if it is a finite number (JSON has no NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SchemaError("schema_invalid", f"{field}: {value!r} is not a finite number")
    return float(value)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class JsonMessage:
    """What every JSON message type shares: its schema version and the bytes <-> object round trip.

    Subclasses (frozen dataclasses) provide ``to_dict`` and ``from_dict``; ``from_dict`` validates.
    """

    SCHEMA_VERSION: ClassVar[str] = SCHEMA_VERSION

    @property
    def schema_version(self) -> str:
        """The version this code writes; decoding any 1.x yields an object that re-encodes as it."""
        return self.SCHEMA_VERSION

    def to_json(self) -> bytes:
        """The message as compact UTF-8 JSON (a Kafka value, a Redis value, an S3 object)."""
        return encode_json(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | bytearray | str):
        """Decode JSON bytes or text.

        Raises:
            SchemaError: "invalid_json", "unsupported_version" or "schema_invalid".
        """
        return cls.from_dict(parse_json_object(data))
