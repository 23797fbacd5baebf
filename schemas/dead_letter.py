"""DeadLetter: a message that can never be scored, with why and its original bytes (contract: dead_letter.v1.json)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import InitVar, dataclass
from datetime import datetime
from typing import Any, Mapping

from ._validate import (
    JsonMessage,
    check_version,
    format_timestamp,
    load_schema,
    parse_timestamp,
    utc_now,
    validate,
)

# Every reason a message can be dead-lettered for; the first three are SchemaError reasons.
DEAD_LETTER_REASONS: tuple[str, ...] = tuple(load_schema("dead_letter")["properties"]["reason"]["enum"])
MAX_MESSAGE_CHARS = load_schema("dead_letter")["properties"]["message"]["maxLength"]


def encode_bytes(raw: bytes | None) -> tuple[str | None, str]:
    """(text, encoding) for raw Kafka bytes: the UTF-8 text when it decodes, else base64; None stays None."""
    if raw is None:
        return None, "utf-8"
    try:
        return bytes(raw).decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(bytes(raw)).decode("ascii"), "base64"


def decode_bytes(text: str | None, encoding: str) -> bytes | None:
    """The original bytes from encode_bytes' (text, encoding).

    Raises:
        ValueError: ``encoding`` is "base64" and ``text`` is not valid base64.
    """
    if text is None:
        return None
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"payload is not valid base64: {exc}") from None
    return text.encode("utf-8")


@dataclass(frozen=True)
class DeadLetter(JsonMessage):
    """A message that can never succeed, as published to the dead-letter topic.

    Build one from raw Kafka bytes with ``DeadLetter.for_message``; the original value and key are kept
    exactly (``payload_bytes()``/``key_bytes()`` give them back).

    Attributes:
        reason: one of DEAD_LETTER_REASONS.
        message: human-readable detail (at most 4096 characters; for_message truncates longer ones).
        payload, payload_encoding: original value as text, "utf-8" or "base64"; payload None for a null value.
        key, key_encoding: original key, same treatment; None when absent.
        topic, partition, offset: where the message was read (partition/offset None when unknown).
        failed_at: timezone-aware time of the failure.
        worker_id: the worker that gave up on it.
    """


    reason: str
    message: str
    payload: str | None
    payload_encoding: str
    key: str | None
    key_encoding: str
    topic: str
    partition: int | None
    offset: int | None
    failed_at: datetime
    worker_id: str

    # from_dict validated the raw message already; skip the second, identical check.
    _trusted: InitVar[bool] = False

    def __post_init__(self, _trusted: bool) -> None:
        if not _trusted:
            validate("dead_letter", self.to_dict())


    @classmethod
    def for_message(
        cls,
        reason: str,
        message: str,
        *,
        value: bytes | None,
        key: bytes | None,
        topic: str,
        partition: int | None,
        offset: int | None,
        worker_id: str,
        failed_at: datetime | None = None,
    ) -> "DeadLetter":
        """Dead letter for a raw message; ``failed_at`` defaults to now (UTC).

        Raises:
            SchemaError("schema_invalid"): ``reason`` is not one of DEAD_LETTER_REASONS, or another field is bad.
        """
        payload, payload_encoding = encode_bytes(value)
        key_text, key_encoding = encode_bytes(key)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        return cls(
            reason=reason,
            message=message,
            payload=payload,
            payload_encoding=payload_encoding,
            key=key_text,
            key_encoding=key_encoding,
            topic=topic,
            partition=partition,
            offset=offset,
            failed_at=failed_at or utc_now(),
            worker_id=worker_id,
        )

    def payload_bytes(self) -> bytes | None:
        """The original message value, byte for byte."""
        return decode_bytes(self.payload, self.payload_encoding)

    def key_bytes(self) -> bytes | None:
        """The original message key, byte for byte."""
        return decode_bytes(self.key, self.key_encoding)

    def to_dict(self) -> dict[str, Any]:
        """The dead letter as a JSON-ready dict."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "reason": self.reason,
            "message": self.message,
            "payload": self.payload,
            "payload_encoding": self.payload_encoding,
            "key": self.key,
            "key_encoding": self.key_encoding,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "failed_at": format_timestamp(self.failed_at, "failed_at"),
            "worker_id": self.worker_id,
        }


    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "DeadLetter":
        """Build from a decoded dead letter; unknown fields are ignored.

        Raises:
            SchemaError: "unsupported_version" for another MAJOR, "schema_invalid" otherwise.
        """
        check_version(obj)
        validate("dead_letter", obj)
        return cls(
            reason=obj["reason"],
            message=obj["message"],
            payload=obj["payload"],
            payload_encoding=obj["payload_encoding"],
            key=obj["key"],
            key_encoding=obj["key_encoding"],
            topic=obj["topic"],
            partition=obj["partition"],
            offset=obj["offset"],
            failed_at=parse_timestamp(obj["failed_at"], "failed_at"),
            worker_id=obj["worker_id"],
            _trusted=True,
        )

