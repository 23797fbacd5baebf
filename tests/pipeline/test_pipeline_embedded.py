"""Embedded mode end to end with the real tiny detector: folder/JSON-lines/stdin sources, SQLite and
folder sinks, resume after a partial run, dead letters, exactly-once alerts."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from worker.pipeline.cli import run_embedded
from worker.pipeline.embedded import StdinSource


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _assert_model_separates(flags: dict[str, bool], labels: dict[str, bool]) -> None:
    """The tiny model flags most drawn defects and few normals (what it says, not a hard-coded answer)."""
    bad = [flags[n] for n, defective in labels.items() if defective]
    good = [flags[n] for n, defective in labels.items() if not defective]
    assert sum(bad) >= len(bad) - 1 and sum(good) <= 1, f"flags {flags} for labels {labels}"


def test_folder_to_sqlite_and_folder(image_folder, registry, tmp_path):
    folder, labels = image_folder
    summary = run_embedded(folder, registry, tmp_path / "s.db", tmp_path / "out", batch_size=4)
    assert summary["scored"] == len(labels) and summary["dead_lettered"] == {}
    scores = dict(_rows(tmp_path / "s.db", "SELECT image_id, is_anomaly FROM scores"))
    assert all(image_id.startswith("local/") for image_id in scores)  # the default line id, as in `invad produce`
    flags = {image_id.removeprefix("local/"): bool(flag) for image_id, flag in scores.items()}
    assert sorted(flags) == sorted(labels) and summary["flagged"] == sum(flags.values())
    _assert_model_separates(flags, labels)
    alerts = _rows(tmp_path / "s.db", "SELECT image_id, overlay_uri FROM alerts ORDER BY seq")
    assert sorted(a[0] for a in alerts) == sorted(f"local/{n}" for n, flagged in flags.items() if flagged)
    out = tmp_path / "out" / "default" / "local"
    for image_id, overlay_uri in alerts:
        name = image_id.removeprefix("local/")
        base = out / image_id
        assert (base / "original.png").read_bytes() == (folder / name).read_bytes()
        assert (base / "overlay.png").read_bytes().startswith(b"\x89PNG")
        record = json.loads((base / "record.json").read_text())
        assert record["artefacts"]["overlay"] == overlay_uri == (base / "overlay.png").as_uri()
        assert record["source"] == {"name": f"folder:{folder.resolve()}", "position": sorted(labels).index(name)}
    # nothing written for images that were not flagged
    assert not any((out / "local" / n).exists() for n, flagged in flags.items() if not flagged)


def test_rerun_resumes_and_never_alerts_twice(image_folder, registry, tmp_path):
    folder, labels = image_folder
    first = run_embedded(folder, registry, tmp_path / "s.db", None, batch_size=3)
    again = run_embedded(folder, registry, tmp_path / "s.db", None, batch_size=3)
    assert first["scored"] == len(labels) and again["scored"] == 0 and again["skipped"] == len(labels)
    flagged = _rows(tmp_path / "s.db", "SELECT image_id FROM scores WHERE is_anomaly = 1 ORDER BY image_id")
    assert flagged and _rows(tmp_path / "s.db", "SELECT image_id FROM alerts ORDER BY image_id") == flagged
    # forget the progress: everything is rescored, rows are overwritten, alerts stay one per image
    (tmp_path / "s.db.progress.json").unlink()
    third = run_embedded(folder, registry, tmp_path / "s.db", None, batch_size=3)
    assert third["scored"] == len(labels) and third["flagged"] == len(flagged)
    assert _rows(tmp_path / "s.db", "SELECT COUNT(*) FROM scores") == [(len(labels),)]
    assert _rows(tmp_path / "s.db", "SELECT image_id FROM alerts ORDER BY image_id") == flagged


def test_stop_midway_then_resume(image_folder, registry, tmp_path):
    import threading
    folder, labels = image_folder
    stop = threading.Event()

    class StopAfterFirst:  # a sink that asks the loop to stop after the first batch
        def write(self, batch): stop.set()
        def flush(self): ...
        def close(self): ...

    from worker.pipeline import embedded, loop as loop_module
    from worker.pipeline.config import WorkerConfig
    from worker.pipeline.fetch import Fetcher
    progress = embedded.ProgressStore(tmp_path / "p.json")
    source = embedded.folder_source(folder, progress)
    # Two in flight at most: with 10 images in batches of 4, three would hold the whole folder.
    config = WorkerConfig(mode="embedded", batch_size=4, max_in_flight=2, file_roots=(str(folder.resolve()),))
    sink = embedded.SqliteSink(tmp_path / "s.db")
    loop = loop_module.Loop(source=source, fetcher=Fetcher.from_config(config), registry=registry,
                            sinks=[sink, StopAfterFirst()], dead_letters=sink.dead_letter_writer(), config=config, stop=stop)
    stats = loop.run()
    # The stop drains what is in flight (the first batch and at most max_in_flight - 1 more), no further.
    assert stats.scored in range(4, 4 * config.max_in_flight + 1, 4) and stats.scored < len(labels)
    assert json.loads((tmp_path / "p.json").read_text()) == {source.name: stats.scored}
    rest = run_embedded(folder, registry, tmp_path / "s.db", None, progress_path=tmp_path / "p.json")
    assert rest["skipped"] == stats.scored and rest["scored"] == len(labels) - stats.scored


def _ref_line(image_id: str, uri: str, product: str = "default") -> str:
    from schemas import ImageRef
    return ImageRef(image_id=image_id, uri=uri, line_id="L1", product=product, producer="test",
                    captured_at=datetime(2025, 1, 1, tzinfo=timezone.utc)).to_json().decode()


def test_jsonl_with_poison_lines(image_folder, two_class_detector, tmp_path):
    from worker.pipeline.models import ModelRegistry
    registry = ModelRegistry({"*": two_class_detector})  # serves "default" and "other": "nosuch" is unknown
    folder, labels = image_folder
    (folder / "junk.png").write_bytes(b"not an image at all")
    names = sorted(labels)
    lines = [_ref_line("a", (folder / names[0]).as_uri()),
             "{not json",
             json.dumps({"schema_version": "1.0", "image_id": "x"}),
             json.dumps({**json.loads(_ref_line("v", (folder / names[0]).as_uri())), "schema_version": "2.0"}),
             _ref_line("missing", (folder / "nope.png").as_uri()),
             _ref_line("junk", (folder / "junk.png").as_uri()),
             _ref_line("outside", "file:///etc/passwd"),
             _ref_line("product", (folder / names[1]).as_uri(), product="nosuch"),
             "",
             _ref_line("b", (folder / names[1]).as_uri())]
    (folder / "refs.jsonl").write_text("\n".join(lines) + "\n")
    summary = run_embedded(folder / "refs.jsonl", registry, tmp_path / "s.db", tmp_path / "out", batch_size=4,
                           file_roots=(str(folder),))
    assert summary["scored"] == 2
    assert summary["dead_lettered"] == {"invalid_json": 1, "schema_invalid": 1, "unsupported_version": 1,
                                        "object_missing": 1, "image_invalid": 1, "uri_not_allowed": 1,
                                        "unknown_product": 1}
    rows = _rows(tmp_path / "s.db", "SELECT position, reason, dead_letter FROM dead_letters ORDER BY position")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert json.loads(rows[0][2])["payload"] == "{not json"


def test_stdin_source_honours_wait_and_eof(image_folder, tmp_path):
    folder, labels = image_folder
    names = sorted(labels)
    text = "".join(_ref_line(f"s{i}", (folder / n).as_uri()) + "\n" for i, n in enumerate(names))
    source = StdinSource(io.StringIO(text))
    batch = source.poll_batch(4, 1.0)
    assert [m.offset for m in batch] == [0, 1, 2, 3]
    rest = source.poll_batch(100, 1.0)
    assert len(rest) == len(names) - 4
    assert source.poll_batch(100, 0.05) == [] and source.exhausted


def test_produce_and_embedded_mode_give_a_file_the_same_id(registry, tmp_path, capsys, monkeypatch):
    """`invad produce DIR` and `invad work --source DIR` name every file alike, odd names included, so
    Redis records, alerts and artefact keys of both paths line up."""
    from helpers import write_images
    from schemas.image_ref import IMAGE_ID_RE
    from worker.cli import main

    folder = tmp_path / "images"
    write_images(folder / "good", 2, 0)
    write_images(folder / "cam 1", 1, 1)
    (folder / "x..y.png").write_bytes((folder / "good" / "good_000.png").read_bytes())
    monkeypatch.delenv("INVAD_KAFKA_BOOTSTRAP", raising=False)
    capsys.readouterr()
    assert main(["produce", str(folder), "--line-id", "line-7", "--dry-run", "--quiet"]) == 0
    produced = sorted(json.loads(line)["image_id"] for line in capsys.readouterr().out.splitlines())
    run_embedded(folder, registry, tmp_path / "s.db", None, line_id="line-7")
    embedded = sorted(row[0] for row in _rows(tmp_path / "s.db", "SELECT image_id FROM scores"))
    assert embedded == produced and len(produced) == 5
    assert "line-7/good/good_000.png" in produced and all(IMAGE_ID_RE.match(i) for i in produced)


def test_run_embedded_needs_a_sink(image_folder, registry):
    with pytest.raises(ValueError, match="sqlite_path and/or out_dir"):
        run_embedded(image_folder[0], registry, None, None)


def test_jsonl_refs_may_name_any_local_file_unless_roots_are_set(image_folder, registry, tmp_path):
    folder, labels = image_folder
    name = sorted(labels)[0]
    refs = tmp_path / "elsewhere" / "refs.jsonl"
    refs.parent.mkdir()
    refs.write_text(_ref_line("a", (folder / name).as_uri()) + "\n")
    assert run_embedded(refs, registry, tmp_path / "a.db", None)["scored"] == 1
    narrowed = run_embedded(refs, registry, tmp_path / "b.db", None, file_roots=(str(refs.parent),))
    assert narrowed["dead_lettered"] == {"uri_not_allowed": 1}


def test_invad_work_embedded_cli_with_the_real_model(image_folder, tiny_bundle, tmp_path, monkeypatch, capsys):
    import argparse
    from worker.pipeline.cli import add_arguments, run
    folder, labels = image_folder
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setenv("INVAD_MODELS", str(tiny_bundle))
    args = parser.parse_args(["--source", str(folder), "--sqlite", str(tmp_path / "s.db"), "--out", str(tmp_path / "o"),
                              "--device", "cpu", "--batch-size", "4"])
    assert run(args) == 0  # it configures JSON logging on stderr (reset after the test by tests/conftest.py)
    summary = json.loads(capsys.readouterr().out)
    assert summary["scored"] == len(labels) and summary["dead_lettered"] == {}
    flagged = _rows(tmp_path / "s.db", "SELECT COUNT(*) FROM scores WHERE is_anomaly = 1")[0][0]
    assert _rows(tmp_path / "s.db", "SELECT COUNT(*) FROM alerts") == [(flagged,)] and summary["flagged"] == flagged


def test_scores_and_dead_letters_written_from_two_threads_at_once_all_land(tmp_path):
    """The overlapped loop writes scores from its writer thread while the loop thread writes dead letters.
    On one shared SQLite connection the second thread's statement fell into the first one's transaction
    ("cannot start a transaction within a transaction"); each writer has its own connection now."""
    import threading

    from helpers import scored
    from schemas import DeadLetter
    from worker.pipeline.embedded import SqliteSink

    sink = SqliteSink(tmp_path / "both.sqlite")
    dead_letters = sink.dead_letter_writer()
    errors: list[BaseException] = []

    def scores():
        try:
            for i in range(150):
                sink.write([scored(f"L1/img{i}", 0.5 + (i % 3))])
                sink.flush()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    writer = threading.Thread(target=scores)
    writer.start()
    try:
        for i in range(150):
            dead_letters.send(DeadLetter.for_message("invalid_json", "bad", value=b"x", key=None, topic="stdin",
                                                     partition=None, offset=i, worker_id="w"))
            dead_letters.flush()
    finally:
        writer.join()
    assert not errors, errors
    sink.close()
    dead_letters.close()
    db = sqlite3.connect(tmp_path / "both.sqlite")
    counts = [db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("scores", "alerts", "dead_letters")]
    assert counts == [150, 100, 150]  # two of every three scores are over the threshold
