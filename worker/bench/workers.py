"""Bench worker subprocesses (:mod:`worker.bench.worker`): start, watch partitions, mark, stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from . import stages

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One worker subprocess; a thread drains its JSON log lines and tracks its partitions.

    Args:
        env: the complete environment (the worker's ``INVAD_*`` settings).
        worker_args: flags of :mod:`worker.bench.worker` (detector, flagged fraction, CPU pin).
        marks: file for the stage sampler's marks (None: no sampler).
    """

    def __init__(self, env: dict[str, str], worker_args: Sequence[str], marks: Path | None = None):
        command = [sys.executable, "-m", "worker.bench.worker", *worker_args]
        if marks is not None:
            command += ["--stage-marks", str(marks)]
        self.marks = marks
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.partitions: set[int] = set()
        self.tail: deque[str] = deque(maxlen=30)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.tail.append(line.rstrip())
            try:
                event = json.loads(line)
            except ValueError:
                continue  # kafka-python's own log lines are not JSON
            if not isinstance(event, dict):
                continue
            parts = {int(p.rsplit(":", 1)[1]) for p in event.get("partitions", ())}
            if event.get("event") == "partitions_assigned":
                self.partitions |= parts
            elif event.get("event") in ("partitions_revoked", "partitions_lost"):
                self.partitions -= parts

    def check(self) -> None:
        """Raise RuntimeError (with its last log lines) when the worker has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n" + "\n".join(self.tail))

    def mark(self) -> None:
        """Ask the stage sampler for a mark (no-op without one)."""
        if self.marks is not None:
            self.proc.send_signal(signal.SIGUSR1)

    def read_marks(self, count: int, timeout_s: float = 5.0) -> list[dict]:
        """The first ``count`` marks, waiting up to ``timeout_s`` for them; [] without a sampler.

        Raises:
            RuntimeError: the marks did not appear in time.
        """
        if self.marks is None:
            return []
        deadline = time.monotonic() + timeout_s
        while len(found := stages.read_marks(self.marks)) < count:
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"stage sampler wrote {len(found)} of {count} marks to {self.marks}")
            time.sleep(0.05)
        return found[:count]

    def logs(self, lines: int = 8) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def stop(self) -> None:
        """SIGTERM (drain and leave the group), then SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def joined(procs: Sequence[WorkerProcess], partitions: int, timeout_s: float) -> bool:
    """True once the workers hold the topic's ``partitions`` between them, each at least one."""
    deadline = time.monotonic() + timeout_s
    while not (all(w.partitions for w in procs) and sum(len(w.partitions) for w in procs) == partitions):
        for worker in procs:
            worker.check()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
