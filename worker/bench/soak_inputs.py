"""The soak's inputs: a tiny real model, the images it scores (uploaded once), and the references to them.

Images are ELPV solar cells when the ``elpv-dataset`` package is installed (else generated gratings),
resized to the model's input size; the defective ones are held-out normal cells with a defect drawn by
:func:`worker.quality.defects.draw_defect`. Each reference names one of them under an image id of its
own, so 20,000 references cost a few hundred uploads. About ``bad_fraction`` of the messages are bad
on purpose, one of :data:`BAD_KINDS` each, and carry ``soak-bad-NNNNNN`` in their bytes so that their
dead letters can be told apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from schemas import ImageRef
from worker.core.data import DatasetLayoutError, elpv_split
from worker.core.images import encode_png, load_image
from worker.quality.defects import KINDS, draw_defect

# What a bad message is, and the dead-letter reason the worker must give it.
BAD_KINDS = {"truncated_json": "invalid_json", "wrong_type": "schema_invalid", "missing_object": "object_missing",
             "not_an_image": "image_invalid", "foreign_bucket": "uri_not_allowed"}
NOT_AN_IMAGE_KEY = "in/not-an-image.png"


def normal_cells(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """``count`` normal greyscale images at ``size`` px: ELPV cells (training split first), or gratings."""
    try:
        train, test = elpv_split()
        paths = [s.path for s in train] + [s.path for s in test if s.label == 0]
        return [load_image(path).convert("L").resize((size, size), Image.BILINEAR) for path in paths[:count]]
    except DatasetLayoutError:  # the elpv-dataset package is not installed
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:size, 0:size] / size
        out = []
        for _ in range(count):
            fx, fy = rng.uniform(3, 6, 2)
            grid = 120 + 50 * np.cos(2 * np.pi * fx * x) * np.cos(2 * np.pi * fy * y) + rng.normal(0, 5, (size, size))
            out.append(Image.fromarray(grid.clip(0, 255).astype(np.uint8)))
        return out


def soak_images(size: int, n_train: int, n_good: int, n_bad: int) -> tuple[list[Image.Image], list[bytes], list[bytes]]:
    """(training normals, PNG bytes of good images, PNG bytes of defective ones), all distinct cells."""
    cells = normal_cells(n_train + n_good + n_bad, size)
    if len(cells) < n_train + n_good + n_bad:
        raise ValueError(f"only {len(cells)} normal images available for {n_train}+{n_good}+{n_bad}")
    train, good, held = cells[:n_train], cells[n_train:n_train + n_good], cells[n_train + n_good:]
    bad = [Image.fromarray(draw_defect(np.asarray(cell), KINDS[i % len(KINDS)], seed=i)[0]) for i, cell in enumerate(held)]
    return train, [encode_png(im.convert("RGB")) for im in good], [encode_png(im.convert("RGB")) for im in bad]


def train_tiny(images: Sequence[Image.Image], scratch: Path, size: int) -> Path:
    """Train a small real bundle on ``images`` (a minute or two on two cores) and return its folder."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, train

    folder = scratch / "train-normals"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.convert("RGB").save(folder / f"cell_{i:04d}.png")
    out = scratch / "soak-tiny"
    train([folder], out, DetectorConfig(name="soak-tiny", image_size=size),
          TrainConfig(iterations=300, batch_size=16, width=32, num_blocks=2, kernel_size=3, warmup=20,
                      checkpoint_every=100_000, calib_fraction=0.3), device="cpu", progress=False)
    return out


@dataclass(frozen=True)
class RawMessage:
    """Bytes published as they are, shaped like an ImageRef for :class:`producers.publisher.Publisher`."""
    image_id: str
    line_id: str
    value: bytes

    def to_json(self) -> bytes:
        return self.value

    def kafka_key(self) -> bytes:
        return self.line_id.encode("utf-8")


@dataclass(frozen=True)
class Reference:
    """One message of the soak: what was sent, and what must come of it."""
    image_id: str
    message: Any  # an ImageRef or a RawMessage
    kind: str  # "good", "defective", or one of BAD_KINDS
    image: int | None = None  # index into the uploaded images (good first, then defective)


def references(count: int, uris: Sequence[str], n_good: int, bucket: str, lines: int,
               bad_fraction: float) -> list[Reference]:
    """``count`` messages cycling over ``uris`` (the first ``n_good`` normal) and ``lines`` line ids; one
    in ``1 / bad_fraction`` is bad, the bad kinds taking turns."""
    every = round(1 / bad_fraction) if bad_fraction > 0 else 0
    now = datetime.now(timezone.utc)
    out, bad = [], 0
    for i in range(count):
        line = f"line-{i % lines:03d}"
        if every and i % every == every // 2:
            kind = list(BAD_KINDS)[bad % len(BAD_KINDS)]
            bad += 1
            image_id = f"soak-bad-{i:06d}"
            out.append(Reference(image_id, _bad_message(kind, image_id, line, bucket, now), kind))
            continue
        k = i % len(uris)
        ref = ImageRef(image_id=f"soak-{i:06d}", uri=uris[k], line_id=line, captured_at=now, producer="invad-soak")
        out.append(Reference(ref.image_id, ref, "good" if k < n_good else "defective", k))
    return out


def _bad_message(kind: str, image_id: str, line: str, bucket: str, now: datetime) -> Any:
    def ref(uri: str) -> ImageRef:
        return ImageRef(image_id=image_id, uri=uri, line_id=line, captured_at=now, producer="invad-soak")
    if kind == "truncated_json":
        return RawMessage(image_id, line, ref(f"s3://{bucket}/in/x.png").to_json()[:-7])
    if kind == "wrong_type":
        return RawMessage(image_id, line, json.dumps({**json.loads(ref(f"s3://{bucket}/in/x.png").to_json()),
                                                      "captured_at": 1234}).encode())
    if kind == "missing_object":
        return ref(f"s3://{bucket}/in/missing/{image_id}.png")
    if kind == "not_an_image":
        return ref(f"s3://{bucket}/{NOT_AN_IMAGE_KEY}")
    return ref(f"s3://{bucket}-elsewhere/in/{image_id}.png")
