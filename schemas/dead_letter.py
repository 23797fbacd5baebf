"""DeadLetter: a message that can never be scored, with why and its original bytes (contract: dead_letter.v1.json)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from dataclasses import InitVar, dataclass
from datetime import datetime
from typing import Any, ClassVar, Mapping

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
# The most of an original value a dead letter carries: base64 makes it at most 342 KiB, far below Kafka's
# default 1 MB message limit. Larger values keep their first bytes, their size and their SHA-256.
MAX_PAYLOAD_BYTES = 256 * 1024


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
        key, key_encoding: original key, same treatment (cut to ``max_payload_bytes``); None when absent.
        topic, partition, offset: where the message was read (partition/offset None when unknown).
        failed_at: timezone-aware time of the failure.
        worker_id: the worker that gave up on it.
        payload_truncated, payload_size, payload_sha256: set when the value was longer than
            ``max_payload_bytes``: payload then holds its first bytes only (see ``truncated``).
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
    payload_truncated: bool = False
    payload_size: int | None = None
    payload_sha256: str | None = None

    SCHEMA_VERSION: ClassVar[str] = "1.1"  # 1.1: reason processing_failed, payload truncation fields

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
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> "DeadLetter":
        """Dead letter for a raw message; ``failed_at`` defaults to now (UTC). A value longer than
        ``max_payload_bytes`` is cut to its first bytes, with the original's size and SHA-256.

        Raises:
            SchemaError("schema_invalid"): ``reason`` is not one of DEAD_LETTER_REASONS, or another field is bad.
        """
        # Error texts can quote message content: keep them valid Unicode, so the letter always encodes.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        key_text, key_encoding = encode_bytes(None if key is None else bytes(key)[:max_payload_bytes])
        letter = cls(
            reason=reason,
            message=message,
            payload=None,
            payload_encoding="utf-8",
            key=key_text,
            key_encoding=key_encoding,
            topic=topic,
            partition=partition,
            offset=offset,
            failed_at=failed_at or utc_now(),
            worker_id=worker_id,
            _trusted=True,
        )
        return letter._with_payload(None if value is None else bytes(value), max_payload_bytes)

    def truncated(self, max_payload_bytes: int) -> "DeadLetter":
        """This letter with at most ``max_payload_bytes`` of the original value and key (0: size and
        digest only), for a broker whose message limit refused it whole."""
        letter, key = self, self.key_bytes()
        if key is not None and len(key) > max_payload_bytes:
            key_text, key_encoding = encode_bytes(key[:max_payload_bytes])
            letter = dataclasses.replace(letter, key=key_text, key_encoding=key_encoding)
        held = letter.payload_bytes()
        if held is None or len(held) <= max_payload_bytes:
            return letter
        if not letter.payload_truncated:
            return letter._with_payload(held, max_payload_bytes)
        text, encoding = encode_bytes(held[:max_payload_bytes])  # size and digest still describe the original
        return dataclasses.replace(letter, payload=text, payload_encoding=encoding)

    def _with_payload(self, value: bytes | None, max_payload_bytes: int) -> "DeadLetter":
        fields: dict[str, Any] = {"payload_truncated": False, "payload_size": None, "payload_sha256": None}
        if value is not None and len(value) > max_payload_bytes:
            fields = {"payload_truncated": True, "payload_size": len(value),
                      "payload_sha256": hashlib.sha256(value).hexdigest()}
            value = value[:max_payload_bytes]
        fields["payload"], fields["payload_encoding"] = encode_bytes(value)
        return dataclasses.replace(self, **fields)

    def payload_bytes(self) -> bytes | None:
        """The original message value, byte for byte (its first bytes when ``payload_truncated``)."""
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
            **({"payload_truncated": True, "payload_size": self.payload_size, "payload_sha256": self.payload_sha256}
               if self.payload_truncated else {}),
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
            payload_truncated=bool(obj.get("payload_truncated", False)),
            payload_size=obj.get("payload_size"),
            payload_sha256=obj.get("payload_sha256"),
            _trusted=True,
        )

