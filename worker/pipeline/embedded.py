"""Embedded mode: the same loop with no services, for a laptop or a small site.

Sources: a folder of images, a JSON-lines file of ImageRefs, or stdin. Sinks: :class:`SqliteSink`
(every score, alerts exactly once, dead letters) and :class:`FolderSink` (flagged originals, overlays
and records under the same deterministic layout as S3). "Commit" writes the next position of each
source to a small JSON progress file, atomically, after the sinks flushed: a rerun resumes there.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence, TextIO

from schemas import ImageRef
from schemas.image_id import derive_image_id
from worker.core.imagefiles import list_image_files

from .loop import Message
from .sinks import ScoredImage, artefact_keys


class ProgressStore:
    """``{source name: next position}`` in a JSON file, replaced atomically on every save."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._data: dict[str, int] = {}
        if self.path is not None and self.path.exists():
            self._data = {str(k): int(v) for k, v in json.loads(self.path.read_text()).items()}

    def get(self, name: str) -> int:
        return self._data.get(name, 0)

    def save(self, name: str, position: int) -> None:
        self._data[name] = position
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _ListSource:
    """Shared poll/commit logic of the sources whose messages are known up front."""
    exhausted = False

    def __init__(self, name: str, messages: Sequence[Message], progress: ProgressStore):
        self.name, self._messages, self._progress = name, list(messages), progress
        # Resume at the first message at or after the saved position (positions may have gaps).
        saved = progress.get(name)
        self._next = next((i for i, m in enumerate(self._messages) if m.offset >= saved), len(self._messages))
        self.skipped = self._next  # already done by an earlier run
        self.exhausted = self._next >= len(self._messages)

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        batch = self._messages[self._next:self._next + max_records]
        self._next += len(batch)
        self.exhausted = self._next >= len(self._messages)
        return batch

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        for (name, _), position in offsets.items():
            self._progress.save(name, position)

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def keepalive(self) -> None: ...
    def keepalive_if_due(self) -> None: ...
    def give_back(self, messages) -> None: ...  # nothing is ever revoked from an embedded source
    def take_revoked(self) -> set[tuple[str, int]]:
        return set()
    def healthy(self) -> bool:
        return True
    def close(self) -> None: ...


def folder_source(folder: str | os.PathLike, progress: ProgressStore, *, product: str = "default",
                  line_id: str = "local", producer: str = "invad-embedded") -> _ListSource:
    """Every image file under ``folder`` (recursively, sorted by relative path) as an ImageRef message.

    Ids are "{line_id}/{path relative to folder}" by :func:`schemas.image_id.derive_image_id`, the rule
    `invad produce` follows, so both paths name a file alike; ``captured_at`` is the file's mtime.
    Raises ValueError when ``folder`` is not a directory.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ValueError(f"--source {str(folder)!r} is not a directory, a .jsonl file or '-'")
    name = f"folder:{root}"
    messages = []
    for position, file in enumerate(list_image_files(root)):
        ref = ImageRef(image_id=derive_image_id(line_id, file.rel), uri=file.path.as_uri(),
                       line_id=line_id, product=product, producer=producer,
                       captured_at=datetime.fromtimestamp(file.path.stat().st_mtime, timezone.utc))
        messages.append(Message(ref.to_json(), ref.kafka_key(), name, 0, position, embedded=True))
    return _ListSource(name, messages, progress)


def jsonl_source(path: str | os.PathLike, progress: ProgressStore) -> _ListSource:
    """One message per line of a JSON-lines file of ImageRefs (blank lines keep their position)."""
    path = Path(path).resolve()
    name = f"jsonl:{path}"
    lines = path.read_bytes().splitlines()
    messages = [Message(line, None, name, 0, position, embedded=True)
                for position, line in enumerate(lines) if line.strip()]
    return _ListSource(name, messages, progress)


class StdinSource(_ListSource):
    """ImageRef lines from a stream (stdin by default), read by a thread so polls honour their wait."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__("stdin", [], ProgressStore(None))
        self._queue: queue.Queue = queue.Queue(maxsize=10_000)
        self._position = 0
        self._eof = False
        self.exhausted = False
        stream = stream if stream is not None else sys.stdin
        threading.Thread(target=self._read, args=(stream,), daemon=True, name="invad-stdin").start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self._queue.put(line.encode("utf-8") if isinstance(line, str) else line)
        self._queue.put(None)

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        batch: list[Message] = []
        deadline = time.monotonic() + max_wait_s
        while len(batch) < max_records and not self._eof:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()) if not batch else 0.0)
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                break
            position, self._position = self._position, self._position + 1
            if line.strip():
                batch.append(Message(line.rstrip(b"\r\n"), None, "stdin", 0, position, embedded=True))
        self.exhausted = self._eof and not batch
        return batch


_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
  image_id TEXT PRIMARY KEY, line_id TEXT NOT NULL, product TEXT NOT NULL, captured_at TEXT NOT NULL,
  scored_at TEXT NOT NULL, score REAL NOT NULL, is_anomaly INTEGER NOT NULL, threshold REAL NOT NULL,
  model_name TEXT NOT NULL, model_version TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS scores_line_time ON scores (line_id, captured_at);
CREATE TABLE IF NOT EXISTS alerts (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, image_id TEXT NOT NULL UNIQUE, line_id TEXT NOT NULL,
  product TEXT NOT NULL, score REAL NOT NULL, threshold REAL NOT NULL, captured_at TEXT NOT NULL,
  overlay_uri TEXT, model_version TEXT NOT NULL, alerted_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
  topic TEXT NOT NULL, position INTEGER NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
  dead_letter TEXT NOT NULL, PRIMARY KEY (topic, position));
"""


SQLITE_BUSY_TIMEOUT_S = 60.0  # a writer waits this long for the other connection's transaction


def _connect(path: str) -> sqlite3.Connection:
    """A connection of its own for one writer. The overlapped loop writes scores from its writer thread
    and dead letters from the loop thread at the same time: on one shared connection the second thread's
    statement lands inside the first one's open transaction ("cannot start a transaction within a
    transaction"); two connections take turns on SQLite's write lock instead (WAL, busy timeout)."""
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_S)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class SqliteSink:
    """Every score in ``scores`` (upsert by image_id), each flagged image once in ``alerts``.

    ``write`` stages rows in an open transaction; ``flush`` commits it (durable in WAL mode with
    synchronous=FULL). Also the embedded dead-letter writer: see :meth:`dead_letter_writer`.
    """

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = _connect(self.path)
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def write(self, batch: Sequence[ScoredImage]) -> None:
        now = datetime.now(timezone.utc).isoformat()
        for item in batch:
            r = item.record
            data = r.to_dict()
            self._db.execute(
                "INSERT INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(image_id) DO UPDATE SET "
                "line_id=excluded.line_id, product=excluded.product, captured_at=excluded.captured_at, "
                "scored_at=excluded.scored_at, score=excluded.score, is_anomaly=excluded.is_anomaly, "
                "threshold=excluded.threshold, model_name=excluded.model_name, "
                "model_version=excluded.model_version, record=excluded.record",
                (r.image_id, r.line_id, r.product, data["captured_at"], data["scored_at"], r.score,
                 int(r.is_anomaly), r.threshold, r.model_name, r.model_version, r.to_json().decode()))
            if r.is_anomaly:
                # UNIQUE(image_id) + OR IGNORE: a rerun or redelivery never adds a second alert.
                self._db.execute("INSERT OR IGNORE INTO alerts (image_id, line_id, product, score, threshold, "
                                 "captured_at, overlay_uri, model_version, alerted_at) VALUES (?,?,?,?,?,?,?,?,?)",
                                 (r.image_id, r.line_id, r.product, r.score, r.threshold, data["captured_at"],
                                  r.artefacts.get("overlay"), r.model_version, now))

    def flush(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def dead_letter_writer(self) -> "SqliteDeadLetters":
        """Dead letters into the same database, through a connection of their own (see :func:`_connect`)."""
        return SqliteDeadLetters(_connect(self.path))


class SqliteDeadLetters:
    """Dead letters in the ``dead_letters`` table, keyed by (source, position)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def send(self, dead_letter: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?,?)",
                         (dead_letter.topic, dead_letter.offset, dead_letter.reason, dead_letter.message,
                          dead_letter.to_json().decode()))

    def flush(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class JsonlDeadLetters:
    """Dead letters appended to a JSON-lines file (when no SQLite database is given)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._pending: list[bytes] = []

    def send(self, dead_letter: Any) -> None:
        self._pending.append(dead_letter.to_json())

    def flush(self) -> None:
        if self._pending:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(b"".join(line + b"\n" for line in self._pending))
                handle.flush()
                os.fsync(handle.fileno())
            self._pending = []

    def close(self) -> None: ...


class FolderSink:
    """Flagged images' original, overlay and record under ``{out}/{product}/{line}/{image_id}/``."""

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _paths(self, product: str, line_id: str, image_id: str, original_ext: str) -> dict[str, Path]:
        return {kind: self.root / key for kind, key in artefact_keys("", product, line_id, image_id, original_ext).items()}

    def artefact_uris(self, product: str, line_id: str, image_id: str, original_ext: str) -> dict[str, str]:
        return {kind: path.as_uri() for kind, path in self._paths(product, line_id, image_id, original_ext).items()}

    def write(self, batch: Sequence[ScoredImage]) -> None:
        for item in batch:
            if not item.flagged:
                continue
            r = item.record
            paths = self._paths(r.product, r.line_id, r.image_id, item.original_ext)
            paths["record"].parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(paths["original"], item.original or b"")
            _atomic_write(paths["overlay"], item.overlay or b"")
            _atomic_write(paths["record"], r.to_json())

    def flush(self) -> None: ...  # every file is fsynced and renamed in write()

    def close(self) -> None: ...
