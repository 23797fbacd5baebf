"""No message content can stop the loop: hundreds (or, on demand, tens of thousands) of fuzzed and hostile values through the real loop,
fetcher, tiny detector and embedded sinks end as scores or dead letters, each exactly once; an
exception while scoring one image dead-letters that image only."""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from helpers import InstrumentedDetector, write_images
from hostile import fuzz_values, named_cases
from schemas import DEAD_LETTER_REASONS, ImageRef
from worker.pipeline.config import WorkerConfig
from worker.pipeline.embedded import SqliteSink
from worker.pipeline.fetch import Fetcher
from worker.pipeline.loop import Loop, Message
from worker.pipeline.models import ModelRegistry


class ValuesSource:
    """An in-memory source of raw message values (the loop's Source protocol), positions 0..n-1."""

    def __init__(self, values: Sequence[bytes | None]):
        self.messages = [Message(v, b"k", "fuzz", 0, i, embedded=True) for i, v in enumerate(values)]
        self.next, self.committed, self.exhausted = 0, 0, not self.messages

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        batch = self.messages[self.next:self.next + max_records]
        self.next += len(batch)
        self.exhausted = self.next >= len(self.messages)
        return batch

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.committed = max(self.committed, *offsets.values())

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def keepalive(self) -> None: ...
    def keepalive_if_due(self) -> None: ...
    def give_back(self, messages) -> None: ...
    def take_revoked(self) -> set[tuple[str, int]]:
        return set()
    def healthy(self) -> bool:
        return True
    def close(self) -> None: ...


def run_values(values: Sequence[bytes | None], registry: Any, root: Path, db: Path) -> tuple[ValuesSource, Any]:
    config = WorkerConfig(mode="embedded", worker_id="fuzz").replace(file_roots=(str(root),), batch_size=16,
                                                                     device="cpu")
    source, sink, fetcher = ValuesSource(values), SqliteSink(db), Fetcher.from_config(config)
    try:
        stats = Loop(source=source, fetcher=fetcher, registry=registry, sinks=[sink],
                     dead_letters=sink.dead_letter_writer(), config=config).run()
    finally:
        fetcher.close()
        sink.close()
    return source, stats


def ref(uri: str, image_id: str = "L1/good") -> dict[str, Any]:
    return json.loads(ImageRef(image_id=image_id, uri=uri, line_id="L1", producer="fuzz",
                               captured_at=datetime(2025, 1, 1, tzinfo=timezone.utc)).to_json())


def hostile_files(folder: Path) -> dict[str, str]:
    """Files that are not images, or images built to hurt: name -> file:// URI."""
    good = next(folder.glob("good_*.png")).read_bytes()
    files = {"truncated.png": good[: len(good) // 2], "text.png": b"not an image at all",
             "empty.png": b"", "header_only.png": good[:40]}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: (folder / name).as_uri() for name in files}


# The suite runs 600 fuzzed values; the acceptance run is INVAD_FUZZ_MESSAGES=10000 (see docs/RELIABILITY.md).
FUZZ_MESSAGES = int(os.environ.get("INVAD_FUZZ_MESSAGES", "600"))


def test_thousands_of_hostile_values_end_as_scores_or_dead_letters(registry, tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 2, 1)
    valid = ref((folder / "good_000.png").as_uri())
    values = list(named_cases(valid).values())
    values += [json.dumps({**valid, "uri": uri, "image_id": f"L1/{name}"}).encode()
               for name, uri in hostile_files(folder).items()]
    values += [json.dumps({**valid, "image_id": f"L1/ok{i}"}).encode() for i in range(8)]
    values += list(fuzz_values(valid, FUZZ_MESSAGES, seed=int(os.environ.get("INVAD_FUZZ_SEED", "7"))))
    source, stats = run_values(values, registry, tmp_path, tmp_path / "fuzz.sqlite")

    assert source.committed == len(values), "the loop stopped before the end of its source"
    assert set(stats.dead_lettered) <= set(DEAD_LETTER_REASONS)
    with sqlite3.connect(tmp_path / "fuzz.sqlite") as db:
        letters = db.execute("SELECT position FROM dead_letters").fetchall()
        scored = db.execute("SELECT count(*) FROM scores").fetchone()[0]
    assert len(letters) == sum(stats.dead_lettered.values()) and len({p for (p,) in letters}) == len(letters)
    assert stats.scored + sum(stats.dead_lettered.values()) == len(values)
    assert scored >= 9 and stats.scored >= 9  # the valid references were scored (ids repeat, rows upsert)
    assert stats.dead_lettered["invalid_json"] > FUZZ_MESSAGES // 20 and stats.dead_lettered["schema_invalid"] > FUZZ_MESSAGES // 20
    assert stats.dead_lettered["image_invalid"] >= 4


class FailsOnFlatImages(InstrumentedDetector):
    """The real detector, but scoring raises for any batch holding a flat grey image (the worker hands
    the model prepared arrays): a stand-in for a model bug that only some inputs trigger."""

    def predict(self, images, classes=None):
        if any(np.ptp(np.asarray(image)) == 0 for image in images):
            raise RuntimeError("shape mismatch in a layer")
        return self.detector.predict(images, classes)


def test_an_exception_while_scoring_one_image_dead_letters_that_image_only(registry, tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    write_images(folder, 5, 0)
    Image.new("RGB", (200, 100), (90, 90, 90)).save(folder / "wide.png")  # flat
    uris = sorted(p.as_uri() for p in folder.glob("*.png"))
    values = [json.dumps(ref(uri, f"L1/{Path(uri).stem}")).encode() for uri in uris]
    detector = FailsOnFlatImages(registry.route("default").detector)
    source, stats = run_values(values, ModelRegistry({"*": detector}), tmp_path, tmp_path / "one.sqlite")
    assert source.committed == len(values)
    assert stats.scored == 5 and stats.dead_lettered == Counter({"processing_failed": 1})
    with sqlite3.connect(tmp_path / "one.sqlite") as db:
        (message,), = db.execute("SELECT message FROM dead_letters").fetchall()
    assert "RuntimeError: shape mismatch" in message and message.startswith("score:")


@pytest.mark.parametrize("attribute", ["1e400", "9" * 5000, '"\\ud800"'])
def test_values_that_once_crashed_the_record_encoder_are_dead_lettered(registry, tmp_path, attribute):
    folder = tmp_path / "images"
    write_images(folder, 1, 0)
    text = json.dumps(ref(next(folder.glob("*.png")).as_uri()))
    source, stats = run_values([(text[:-1] + ', "attributes": {"a": ' + attribute + "}}").encode()], registry,
                               tmp_path, tmp_path / "x.sqlite")
    assert source.committed == 1 and sum(stats.dead_lettered.values()) == 1 and stats.scored == 0


@pytest.mark.services
def test_three_workers_dead_letter_every_hostile_message_and_live(kafka_bootstrap, redis_url, s3_settings,
                                                                  tiny_bundle, tmp_path):
    """Issue 6's crash loop, through the real broker: each input that once killed every worker, plus
    fuzzed values, reaches three worker processes; all are dead-lettered (those over the DLQ topic's
    64 kB limit as digests), everything is committed, and every worker is still alive."""
    import signal

    from kafka_helpers import KafkaEnv, all_committed, produce, read_dlq, start_worker_process, upload_images, wait_for
    from schemas import SchemaError

    kenv = KafkaEnv(kafka_bootstrap, redis_url, s3_settings, partitions=6, models=str(tiny_bundle),
                    dlq_configs={"max.message.bytes": "65536"}).setup()
    write_images(tmp_path / "img", 1, 0)
    upload_images(kenv, {"good.png": next((tmp_path / "img").glob("*.png")).read_bytes()})
    valid = ref(f"s3://{kenv.bucket}/in/good.png", "img/good")
    values = list(named_cases(valid).values()) + list(fuzz_values(valid, 300, seed=11)) + [json.dumps(valid).encode()]
    produce(kenv, [(f"L{i % 6}".encode(), v) for i, v in enumerate(values) if v is not None])
    produce(kenv, [(b"L0", None)] if None in values else [])
    procs = [start_worker_process(kenv, tmp_path / f"w{i}.log", INVAD_WORKER_ID=f"w{i}") for i in range(3)]
    try:
        wait_for(lambda: all_committed(kenv), 240, "every hostile message committed")
        assert [proc.poll() for proc in procs] == [None, None, None], "a worker exited on message content"
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=60) for proc in procs] == [0, 0, 0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    def undecodable(value: bytes) -> bool:
        try:
            ImageRef.from_json(value)
        except SchemaError:
            return True
        return False

    must_fail = sum(1 for v in values if v is None or undecodable(v))
    letters = read_dlq(kenv, must_fail, timeout_s=60)
    assert len(letters) >= must_fail
    assert len({(d.partition, d.offset) for d in letters}) == len(letters), "a message was dead-lettered twice"
    assert any(d.payload_truncated and d.payload_size >= 900_000 for d in letters)
    for proc_log in tmp_path.glob("w*.log"):
        assert "Traceback" not in proc_log.read_text(errors="replace")
