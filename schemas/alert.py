"""AlertEntry: one entry of the Redis alert stream (contract: alert.v1.json, documented in REDIS_LAYOUT.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Mapping

from ._validate import (
    SCHEMA_VERSION,
    SchemaError,
    check_finite,
    check_version,
    format_timestamp,
    parse_timestamp,
    validate,
)
from .score_record import ScoreRecord


@dataclass(frozen=True)
class AlertEntry:
    """A flagged image, as added once to ``{prefix}:alerts``.

    Redis stream entries are flat string maps: ``to_fields()`` writes numbers as decimal strings
    (``repr`` of the float, which round-trips exactly) and a missing overlay as "".

    Attributes:
        image_id, line_id, product: of the flagged image.
        score, threshold: finite floats; score > threshold.
        captured_at: timezone-aware capture time.
        record_key: Redis key of the full ScoreRecord (``RedisLayout.score_key(image_id)``).
        overlay_uri: URI of the heat-map overlay, or None.
        model_version: the bundle version that scored it.
    """

    SCHEMA_VERSION: ClassVar[str] = SCHEMA_VERSION

    image_id: str
    line_id: str
    product: str
    score: float
    threshold: float
    captured_at: datetime
    record_key: str
    overlay_uri: str | None
    model_version: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", check_finite(self.score, "score"))
        object.__setattr__(self, "threshold", check_finite(self.threshold, "threshold"))
        validate("alert", self.to_fields())

    @property
    def schema_version(self) -> str:
        """The version this code writes ("1.0")."""
        return self.SCHEMA_VERSION

    @classmethod
    def from_record(cls, record: ScoreRecord, record_key: str) -> "AlertEntry":
        """The alert for a flagged record stored under ``record_key``."""
        return cls(
            image_id=record.image_id,
            line_id=record.line_id,
            product=record.product,
            score=record.score,
            threshold=record.threshold,
            captured_at=record.captured_at,
            record_key=record_key,
            overlay_uri=record.artefacts.get("overlay"),
            model_version=record.model_version,
        )

    def to_fields(self) -> dict[str, str]:
        """The XADD field map: str -> str."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "image_id": self.image_id,
            "line_id": self.line_id,
            "product": self.product,
            "score": repr(self.score),
            "threshold": repr(self.threshold),
            "captured_at": format_timestamp(self.captured_at, "captured_at"),
            "record_key": self.record_key,
            "overlay_uri": self.overlay_uri or "",
            "model_version": self.model_version,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> "AlertEntry":
        """Decode a stream entry's field map as redis-py returns it (bytes or str keys and values).

        Unknown fields are ignored.

        Raises:
            SchemaError: "invalid_json" when a key or value is not UTF-8, "unsupported_version" for
                another MAJOR, "schema_invalid" otherwise.
        """
        try:
            obj = {_text(k): _text(v) for k, v in fields.items()}
        except UnicodeDecodeError as exc:
            raise SchemaError("invalid_json", f"alert entry is not UTF-8: {exc}") from None
        check_version(obj)
        validate("alert", obj)
        return cls(
            image_id=obj["image_id"],
            line_id=obj["line_id"],
            product=obj["product"],
            score=float(obj["score"]),
            threshold=float(obj["threshold"]),
            captured_at=parse_timestamp(obj["captured_at"], "captured_at"),
            record_key=obj["record_key"],
            overlay_uri=obj["overlay_uri"] or None,
            model_version=obj["model_version"],
        )


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value
