"""ScoreRecord: the result of scoring one image (contract: score_record.v1.json)."""

from __future__ import annotations

import numbers
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Mapping, Union

from ._validate import (
    JsonMessage,
    check_finite,
    check_version,
    format_timestamp,
    parse_timestamp,
    validate,
)

ARTEFACT_KINDS = ("original", "overlay", "record")
NO_ARTEFACTS: Mapping[str, None] = {kind: None for kind in ARTEFACT_KINDS}

Source = Mapping[str, Union[str, int]]


def _as_float(value: Any) -> Any:
    # numpy floats/ints are numbers.Real; anything else is left for the schema to reject by name.
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value


def _as_int(value: Any) -> Any:
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def kafka_source(topic: str, partition: int, offset: int) -> dict[str, Union[str, int]]:
    """The ``source`` of a record consumed from Kafka."""
    return {"topic": topic, "partition": partition, "offset": offset}


def embedded_source(name: str, position: int) -> dict[str, Union[str, int]]:
    """The ``source`` of a record read in embedded mode (a folder or JSON-lines file and a 0-based position)."""
    return {"name": name, "position": position}


@dataclass(frozen=True)
class ScoreRecord(JsonMessage):
    """The score of one image, as written to Redis and (for flagged images) to S3.

    Construction validates every field against the schema (and that numbers are finite) and raises
    SchemaError("schema_invalid") naming the bad field.

    Attributes:
        image_id, uri, line_id, camera_id, product, captured_at: copied from the ImageRef.
        scored_at: timezone-aware time the score was computed.
        score: calibrated image score; higher is more anomalous.
        is_anomaly: score > threshold (strictly).
        threshold: the decision threshold of the model bundle.
        model_name, model_version: the bundle that scored the image (its name, a hash of its weights).
        model_release: the version it was published and activated under (``invad models``), or None
            for a bundle configured by path.
        map_stats: {"max", "mean", "p99": float, "peak_x", "peak_y": int}; peak in input-image pixels.
        artefacts: {"original", "overlay", "record"}: URIs of written artefacts, or None each.
        timings_ms: stage name -> milliseconds (e.g. fetch, decode, infer, sink, end_to_end).
        worker_id: the worker that scored it.
        source: kafka_source(...) or embedded_source(...).
        attributes: the ImageRef's attributes, carried through.
    """

    SCHEMA_VERSION: ClassVar[str] = "1.1"  # 1.1: model_release

    image_id: str
    uri: str
    line_id: str
    product: str
    captured_at: datetime
    scored_at: datetime
    score: float
    is_anomaly: bool
    threshold: float
    model_name: str
    model_version: str
    map_stats: Mapping[str, Union[float, int]] = field(hash=False)
    timings_ms: Mapping[str, float] = field(hash=False)
    worker_id: str
    source: Source = field(hash=False)
    artefacts: Mapping[str, str | None] = field(default_factory=lambda: dict(NO_ARTEFACTS), hash=False)
    camera_id: str | None = None
    attributes: Mapping[str, Union[str, int, float, bool]] = field(default_factory=dict, hash=False)
    model_release: str | None = None

    # from_dict validated the raw message already; skip the second, identical check.
    _trusted: InitVar[bool] = False

    def __post_init__(self, _trusted: bool) -> None:
        for name in ("map_stats", "timings_ms", "source", "artefacts", "attributes"):
            object.__setattr__(self, name, dict(getattr(self, name)))
        # Scores usually arrive as numpy scalars; store plain Python numbers so records encode.
        object.__setattr__(self, "score", _as_float(self.score))
        object.__setattr__(self, "threshold", _as_float(self.threshold))
        stats = self.map_stats
        for key in ("max", "mean", "p99"):
            if key in stats:
                stats[key] = _as_float(stats[key])
        for key in ("peak_x", "peak_y"):
            if key in stats:
                stats[key] = _as_int(stats[key])
        for key, value in self.timings_ms.items():
            self.timings_ms[key] = _as_float(value)
        if not _trusted:
            validate("score_record", self.to_dict())
        check_finite(self.score, "score")
        check_finite(self.threshold, "threshold")
        for key in ("max", "mean", "p99"):
            check_finite(self.map_stats[key], f"map_stats.{key}")
        for key, value in self.timings_ms.items():
            check_finite(value, f"timings_ms.{key}")


    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (timestamps as RFC 3339 text, mappings copied)."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "image_id": self.image_id,
            "uri": self.uri,
            "line_id": self.line_id,
            "camera_id": self.camera_id,
            "product": self.product,
            "captured_at": format_timestamp(self.captured_at, "captured_at"),
            "scored_at": format_timestamp(self.scored_at, "scored_at"),
            "score": self.score,
            "is_anomaly": self.is_anomaly,
            "threshold": self.threshold,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_release": self.model_release,
            "map_stats": dict(self.map_stats),
            "artefacts": dict(self.artefacts),
            "timings_ms": dict(self.timings_ms),
            "worker_id": self.worker_id,
            "source": dict(self.source),
            "attributes": dict(self.attributes),
        }


    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ScoreRecord":
        """Build from a decoded record; unknown fields (also inside nested objects) are ignored.

        Raises:
            SchemaError: "unsupported_version" for another MAJOR, "schema_invalid" otherwise.
        """
        check_version(obj)
        validate("score_record", obj)
        stats = obj["map_stats"]
        source = obj["source"]
        if all(k in source for k in ("topic", "partition", "offset")):
            source = kafka_source(source["topic"], source["partition"], source["offset"])
        else:
            source = embedded_source(source["name"], source["position"])
        return cls(
            image_id=obj["image_id"],
            uri=obj["uri"],
            line_id=obj["line_id"],
            camera_id=obj.get("camera_id"),
            product=obj["product"],
            captured_at=parse_timestamp(obj["captured_at"], "captured_at"),
            scored_at=parse_timestamp(obj["scored_at"], "scored_at"),
            score=float(obj["score"]),
            is_anomaly=obj["is_anomaly"],
            threshold=float(obj["threshold"]),
            model_name=obj["model_name"],
            model_version=obj["model_version"],
            model_release=obj.get("model_release"),
            map_stats={k: stats[k] for k in ("max", "mean", "p99", "peak_x", "peak_y")},
            artefacts={k: obj["artefacts"][k] for k in ARTEFACT_KINDS},
            timings_ms=dict(obj["timings_ms"]),
            worker_id=obj["worker_id"],
            source=source,
            attributes=obj.get("attributes") or {},
            _trusted=True,
        )

