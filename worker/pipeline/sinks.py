"""The sink interface shared by Kafka and embedded mode, and the artefact layout every sink uses.

The loop calls ``write(batch)`` on every sink, then ``flush()`` on every sink, then commits. A sink
may do its I/O in either call, but when ``flush()`` returns the batch must be durable. Every write is
keyed by ``image_id`` so that a redelivered batch overwrites with the same content and never raises
a second alert. Transient I/O failures raise :class:`~worker.pipeline.errors.DependencyDown`; the
loop then retries the same batch (write and flush again), so both calls must be safe to repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

ORIGINAL = "original"
OVERLAY = "overlay.png"
RECORD = "record.json"

# Extensions kept for the stored original; anything else is stored as ".bin" (bytes untouched).
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp", "GIF": "gif"}


def original_extension(pil_format: str | None) -> str:
    """File extension for an original image of PIL format ``pil_format`` (e.g. "PNG" -> "png")."""
    return _EXTENSIONS.get((pil_format or "").upper(), "bin")


def artefact_key(prefix: str, product: str, line_id: str, image_id: str, name: str) -> str:
    """Deterministic artefact path ``{prefix}/{product}/{line_id}/{image_id}/{name}``.

    ``image_id``, ``line_id`` and ``product`` are safe path segments by schema (no "..", no leading
    slash), so the key is a pure function of the record and a redelivery lands on the same object.
    """
    parts = [prefix.strip("/")] if prefix.strip("/") else []
    return "/".join(parts + [product, line_id, image_id, name])


def artefact_keys(prefix: str, product: str, line_id: str, image_id: str, original_ext: str) -> dict[str, str]:
    """The keys of a flagged image's three artefacts, by kind: {"original", "overlay", "record"}.

    The one naming rule of every artefact store: S3 turns the keys into ``s3://bucket/key``, the
    embedded output folder into paths under itself.
    """
    names = {"original": f"{ORIGINAL}.{original_ext}", "overlay": OVERLAY, "record": RECORD}
    return {kind: artefact_key(prefix, product, line_id, image_id, name) for kind, name in names.items()}


@dataclass(frozen=True)
class ScoredImage:
    """One scored image as the sinks see it.

    Attributes:
        record: the :class:`schemas.ScoreRecord` (artefact URIs already filled in when flagged).
        original: the encoded bytes as fetched, kept only for flagged images (else None).
        original_ext: extension for the stored original ("png", "jpg", ...).
        overlay: PNG bytes of the heat-map overlay, only for flagged images (else None).
    """
    record: Any
    original: bytes | None = None
    original_ext: str = "bin"
    overlay: bytes | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.record.is_anomaly)


@runtime_checkable
class Sink(Protocol):
    """A destination for scored images; idempotent by ``image_id``."""

    def write(self, batch: Sequence[ScoredImage]) -> None:
        """Stage (or perform) the writes of ``batch``; may raise DependencyDown."""

    def flush(self) -> None:
        """Make everything written so far durable; may raise DependencyDown (then the loop retries)."""

    def close(self) -> None:
        """Release clients; never raises for a dependency that is down."""


class ArtefactStore(Protocol):
    """A sink that stores flagged images' artefacts and can say where, before writing them."""

    def artefact_uris(self, product: str, line_id: str, image_id: str, original_ext: str) -> dict[str, str]:
        """{"original": uri, "overlay": uri, "record": uri} for a flagged image."""


class DeadLetterWriter(Protocol):
    """Where dead letters go: the DLQ topic in Kafka mode, SQLite or a JSON-lines file when embedded."""

    def send(self, dead_letter: Any) -> None:
        """Queue one :class:`schemas.DeadLetter`; may raise DependencyDown."""

    def flush(self) -> None:
        """Block until every queued dead letter is durable; raise DependencyDown otherwise."""

    def close(self) -> None:
        """Release resources."""


def artefact_store(sinks: Sequence[Sink]) -> ArtefactStore | None:
    """The first sink that stores artefacts (S3 in Kafka mode, the output folder when embedded)."""
    for sink in sinks:
        if hasattr(sink, "artefact_uris"):
            return sink  # type: ignore[return-value]
    return None
