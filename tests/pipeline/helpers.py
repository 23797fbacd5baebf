"""Pipeline test helpers: generated image folders, unique resource names, and the real detector slowed
down or counted (never replaced)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from synthetic import make_texture_images
from worker.bench.services import free_port, free_ports  # noqa: F401 - the tests import them from here

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
IMAGE_SIZE = 128  # the tiny bundle's input size (tests/conftest.py), so its scores mean something
SEED = 100  # normals never seen in training (the tiny bundle trains on seed 0)


class InstrumentedDetector:
    """A real detector whose ``predict`` first sleeps ``delay_s`` (so a signal can land mid-batch), then
    delegates; records each batch size in ``calls``. Every other attribute is the real detector's."""

    def __init__(self, detector: Any, delay_s: float = 0.0):
        self.detector, self.delay_s = detector, delay_s
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.detector, name)

    def predict(self, images: Sequence[Any], classes: Sequence[str] | None = None) -> Any:
        self.calls.append(len(images))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.detector.predict(images, classes)


def write_images(folder: Path, n_good: int, n_bad: int, seed: int = SEED, size: int = IMAGE_SIZE) -> dict[str, bool]:
    """PNG textures in ``folder``: ``good_XXX.png`` and ``bad_XXX.png`` (one drawn defect each);
    returns {file name: defective}."""
    folder.mkdir(parents=True, exist_ok=True)
    good, _ = make_texture_images(n_good, size=size, seed=seed)
    bad, _ = make_texture_images(n_bad, defect=True, size=size, seed=seed + 1)
    labels = {}
    for prefix, images in (("good", good), ("bad", bad)):
        for i, image in enumerate(images):
            name = f"{prefix}_{i:03d}.png"
            image.save(folder / name)
            labels[name] = prefix == "bad"
    return labels


def unique(name: str) -> str:
    return f"t{uuid.uuid4().hex[:10]}-{name}"



def scored(image_id: str, score: float, line: str = "L1", flagged: bool | None = None, store=None) -> Any:
    """A ScoredImage as the loop hands it to the sinks (flagged: score > 1, with original and overlay)."""
    from schemas import NO_ARTEFACTS, ScoreRecord, kafka_source
    from worker.pipeline.sinks import ScoredImage

    flagged = score > 1.0 if flagged is None else flagged
    artefacts = store.artefact_uris("default", line, image_id, "png") if (flagged and store) else dict(NO_ARTEFACTS)
    record = ScoreRecord(image_id=image_id, uri=f"file:///x/{image_id}.png", line_id=line, product="default",
                         captured_at=T0 + timedelta(seconds=score), scored_at=T0, score=score, is_anomaly=flagged,
                         threshold=1.0, model_name="m", model_version="v1",
                         map_stats={"max": 1.0, "mean": 0.5, "p99": 0.9, "peak_x": 1, "peak_y": 2},
                         timings_ms={"infer": 1.0}, worker_id="w", source=kafka_source("t", 0, 1), artefacts=artefacts)
    return ScoredImage(record, b"\x89PNG-original" if flagged else None, "png", b"\x89PNG-overlay" if flagged else None)
