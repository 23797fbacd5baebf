"""The entries of the Redis alert stream (contract: alert.v1.json, documented in REDIS_LAYOUT.md).

Since 1.1 an entry has a ``kind``: :class:`AlertEntry` ("anomaly", one flagged image; also any kind this
code does not know) or :class:`DriftEntry` ("drift", a line and product changing drift state).
:func:`decode_alert` reads either from a stream entry.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Mapping

from ._validate import (
    SchemaError,
    check_finite,
    check_version,
    format_timestamp,
    parse_timestamp,
    validate,
)
from .image_ref import IMAGE_ID_MAX_LEN, IMAGE_ID_RE
from .score_record import ScoreRecord

# 1.1: the ``kind`` field and drift entries. Entries of 1.0 (no kind) read as anomalies.
ALERT_SCHEMA_VERSION = "1.1"
ANOMALY, DRIFT = "anomaly", "drift"
DRIFT_STATES = ("ok", "drifting")


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
        kind: "anomaly"; another kind only when decoding an entry of a kind this code does not know.
    """

    SCHEMA_VERSION: ClassVar[str] = ALERT_SCHEMA_VERSION

    image_id: str
    line_id: str
    product: str
    score: float
    threshold: float
    captured_at: datetime
    record_key: str
    overlay_uri: str | None
    model_version: str
    kind: str = ANOMALY

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", check_finite(self.score, "score"))
        object.__setattr__(self, "threshold", check_finite(self.threshold, "threshold"))
        if self.kind == DRIFT:
            raise SchemaError("schema_invalid", "kind: a drift entry is a DriftEntry, not an AlertEntry")
        validate("alert", self.to_fields())

    @property
    def schema_version(self) -> str:
        """The version this code writes ("1.1")."""
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
            "kind": self.kind,
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

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready values (numbers as numbers, no overlay as None): what ``invad alerts``
        prints and posts."""
        return {"schema_version": self.SCHEMA_VERSION, "kind": self.kind, "image_id": self.image_id,
                "line_id": self.line_id, "product": self.product, "score": self.score, "threshold": self.threshold,
                "captured_at": format_timestamp(self.captured_at, "captured_at"), "record_key": self.record_key,
                "overlay_uri": self.overlay_uri, "model_version": self.model_version}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> "AlertEntry":
        """Decode a stream entry's field map as redis-py returns it (bytes or str keys and values).

        Unknown fields are ignored; an entry without ``kind`` (1.0) is an anomaly. A drift entry is
        refused here (it carries every field an AlertEntry has, but means something else): read
        entries of any kind with :func:`decode_alert`.

        Raises:
            SchemaError: "invalid_json" when a key or value is not UTF-8, "unsupported_version" for
                another MAJOR, "schema_invalid" otherwise.
        """
        return cls._from_obj(_checked_fields(fields))

    @classmethod
    def _from_obj(cls, obj: Mapping[str, str]) -> "AlertEntry":
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
            kind=obj.get("kind", ANOMALY),
        )


@dataclass(frozen=True)
class DriftEntry:
    """A line and product changing drift state, as added once per change to ``{prefix}:alerts``.

    It carries every 1.0 field, so a 1.0 reader decodes it (as an alert on the line and product):
    ``image_id`` is the event id (:func:`drift_event_id`), ``score`` and ``threshold`` are -log10 of the
    smallest p-value and of ``p_threshold`` (so score > threshold while drifting), ``captured_at`` is
    ``since``, ``record_key`` names a key that never exists (a GET finds nothing, like an expired
    record) and ``overlay_uri`` is empty.

    Attributes:
        event_id: unique per change; the idempotency key of a receiver.
        line_id, product: what drifted (or recovered).
        state, previous_state: "ok" or "drifting", different.
        since: timezone-aware time of the change.
        tests: names of the tests below ``p_threshold`` ("flag_rate", "score_shift"); empty for "ok".
        window, flagged: images in the tested window and how many of them were flagged.
        expected_fpr: the flagged fraction the bundle's calibration expects of normal images.
        flag_rate_p: one-sided binomial p-value of ``flagged`` out of ``window`` at ``expected_fpr``.
        score_shift_p, score_shift_statistic: Kolmogorov-Smirnov p-value and D of the window's scores
            against the calibration normals' scores; None when the bundle stores no such scores.
        p_threshold: a test fires below it.
        model_version: the bundle whose calibration the window was compared with.
        status_key, record_key: the status hash, and the never-existing record key.
    """

    SCHEMA_VERSION: ClassVar[str] = ALERT_SCHEMA_VERSION
    kind: ClassVar[str] = DRIFT

    event_id: str
    line_id: str
    product: str
    state: str
    previous_state: str
    since: datetime
    tests: tuple[str, ...]
    window: int
    flagged: int
    expected_fpr: float
    flag_rate_p: float
    score_shift_p: float | None
    score_shift_statistic: float | None
    p_threshold: float
    model_version: str
    status_key: str
    record_key: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "tests", tuple(self.tests))
        for name in ("expected_fpr", "flag_rate_p", "p_threshold"):
            object.__setattr__(self, name, check_finite(getattr(self, name), name))
        for name in ("score_shift_p", "score_shift_statistic"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_finite(getattr(self, name), name))
        if self.state == self.previous_state:
            raise SchemaError("schema_invalid", f"state: {self.state!r} equals previous_state; an entry is a change")
        validate("alert", self.to_fields())

    @property
    def score(self) -> float:
        """-log10 of the smallest p-value (capped at 300, for a p-value of 0)."""
        smallest = min(p for p in (self.flag_rate_p, self.score_shift_p) if p is not None)
        return _minus_log10(smallest)

    @property
    def threshold(self) -> float:
        return _minus_log10(self.p_threshold)

    def to_fields(self) -> dict[str, str]:
        """The XADD field map: str -> str (the 1.0 fields first, then the drift fields)."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "kind": DRIFT,
            "image_id": self.event_id,
            "line_id": self.line_id,
            "product": self.product,
            "score": repr(self.score),
            "threshold": repr(self.threshold),
            "captured_at": format_timestamp(self.since, "since"),
            "record_key": self.record_key,
            "overlay_uri": "",
            "model_version": self.model_version,
            **{k: v for k, v in self.status_fields().items() if k not in ("since", "event_id")},
        }

    def status_fields(self) -> dict[str, str]:
        """The drift fields, as also written to the status hash (with ``since``)."""
        return {
            "state": self.state,
            "previous_state": self.previous_state,
            "since": format_timestamp(self.since, "since"),
            "tests": ",".join(self.tests),
            "window": str(self.window),
            "flagged": str(self.flagged),
            "expected_fpr": repr(self.expected_fpr),
            "flag_rate_p": repr(self.flag_rate_p),
            "score_shift_p": "" if self.score_shift_p is None else repr(self.score_shift_p),
            "score_shift_statistic": "" if self.score_shift_statistic is None else repr(self.score_shift_statistic),
            "p_threshold": repr(self.p_threshold),
            "model_version": self.model_version,
            "event_id": self.event_id,
            "status_key": self.status_key,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (numbers as numbers, a disabled test as None), as ``invad alerts`` delivers."""
        return {"schema_version": self.SCHEMA_VERSION, "kind": DRIFT, "image_id": self.event_id,
                "line_id": self.line_id, "product": self.product, "state": self.state,
                "previous_state": self.previous_state, "since": format_timestamp(self.since, "since"),
                "tests": list(self.tests), "window": self.window, "flagged": self.flagged,
                "expected_fpr": self.expected_fpr, "flag_rate_p": self.flag_rate_p,
                "score_shift_p": self.score_shift_p, "score_shift_statistic": self.score_shift_statistic,
                "p_threshold": self.p_threshold, "model_version": self.model_version,
                "status_key": self.status_key}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> "DriftEntry":
        """Decode a drift entry as redis-py returns it.

        Raises:
            SchemaError: like :meth:`AlertEntry.from_fields`; "schema_invalid" for another kind.
        """
        return cls._from_obj(_checked_fields(fields))

    @classmethod
    def _from_obj(cls, obj: Mapping[str, str]) -> "DriftEntry":
        if obj.get("kind") != DRIFT:
            raise SchemaError("schema_invalid", f"kind: {obj.get('kind', ANOMALY)!r} is not a drift entry")
        optional = {name: float(obj[name]) if obj[name] else None for name in ("score_shift_p", "score_shift_statistic")}
        return cls(event_id=obj["image_id"], line_id=obj["line_id"], product=obj["product"], state=obj["state"],
                   previous_state=obj["previous_state"], since=parse_timestamp(obj["captured_at"], "captured_at"),
                   tests=tuple(t for t in obj["tests"].split(",") if t), window=int(obj["window"]),
                   flagged=int(obj["flagged"]), expected_fpr=float(obj["expected_fpr"]),
                   flag_rate_p=float(obj["flag_rate_p"]), p_threshold=float(obj["p_threshold"]),
                   model_version=obj["model_version"], status_key=obj["status_key"], record_key=obj["record_key"],
                   **optional)


def decode_alert(fields: Mapping[Any, Any]) -> AlertEntry | DriftEntry:
    """An alert stream entry of any kind: a DriftEntry for "drift", else an AlertEntry (its ``kind``
    says which; one of a kind this code does not know still has every 1.0 field).

    Raises:
        SchemaError: "invalid_json", "unsupported_version" or "schema_invalid", as the from_fields.
    """
    obj = _checked_fields(fields)
    return DriftEntry._from_obj(obj) if obj.get("kind") == DRIFT else AlertEntry._from_obj(obj)


def drift_event_id(line_id: str, product: str, state: str, since: datetime) -> str:
    """``drift:{line_id}:{product}:{state}:{epoch ms}``: unique per change and a valid image_id; a
    digest of line and product replaces them where they would not make one (".." in a line id)."""
    millis = int(round(since.timestamp() * 1000))
    readable = f"drift:{line_id}:{product}:{state}:{millis}"
    if IMAGE_ID_RE.match(readable) and len(readable) <= IMAGE_ID_MAX_LEN:
        return readable
    digest = hashlib.sha256(f"{line_id}\0{product}".encode()).hexdigest()[:16]
    return f"drift:{digest}:{state}:{millis}"


def _minus_log10(p: float) -> float:
    return 300.0 if p <= 0.0 else min(300.0, -math.log10(p)) + 0.0  # + 0.0: no "-0.0" for p = 1


def _checked_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    """The entry as str -> str, version-checked and validated against alert.v1.json."""
    if not isinstance(fields, Mapping) or not fields:  # a pending entry trimmed from the stream reads as nil
        raise SchemaError("invalid_json", "alert entry has no fields (trimmed from the stream?)")
    try:
        obj = {_text(k): _text(v) for k, v in fields.items()}
    except UnicodeDecodeError as exc:
        raise SchemaError("invalid_json", f"alert entry is not UTF-8: {exc}") from None
    check_version(obj)
    validate("alert", obj)
    return obj


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value
