"""Bench worker subprocesses (:mod:`worker.bench.worker`): their environment; start, watch partitions, mark, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from . import stages

REPO = Path(__file__).resolve().parents[2]


def worker_env(config: Any, name: str, device: str | None = None, single_core: bool = False,
               **overrides: str) -> dict[str, str]:
    """The complete environment of a bench worker named ``name``: this process's variables without any
    ``INVAD_*``/``AWS_*``, then the services, names and models of ``config`` (a WorkerConfig), then
    ``overrides`` (``INVAD_*`` settings)."""
    c = config
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVAD_", "AWS_"))}
    env.update(INVAD_KAFKA_BOOTSTRAP=",".join(c.kafka_bootstrap), INVAD_TOPIC=c.topic, INVAD_GROUP=c.group,
               INVAD_REDIS_URL=c.redis_url, INVAD_REDIS_PREFIX=c.redis_prefix, INVAD_S3_BUCKET=c.s3_bucket,
               INVAD_S3_PREFIX="results", INVAD_S3_ALLOW_BUCKETS=c.s3_bucket,
               INVAD_MODELS=",".join(f"{product}={path}" for product, path in c.models),
               INVAD_BATCH_SIZE=str(c.batch_size), INVAD_WORKER_ID=name, INVAD_LOG_LEVEL="info",
               # Stopped workers leave the group, so the session only matters for a killed one; 30 s
               # keeps a worker starved of CPU by a busy machine (heartbeats need the GIL) in the group.
               INVAD_SESSION_TIMEOUT_MS="30000", INVAD_HEARTBEAT_INTERVAL_MS="3000",
               AWS_ACCESS_KEY_ID=c.aws_access_key_id or "", AWS_SECRET_ACCESS_KEY=c.aws_secret_access_key or "",
               AWS_REGION=c.s3_region or "us-east-1",
               INVAD_METRICS_PORT="0",  # several workers on one machine: no HTTP server, no port to share
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if c.s3_endpoint:
        env["INVAD_S3_ENDPOINT"] = c.s3_endpoint
    if device:
        env["INVAD_DEVICE"] = device
    if single_core:  # the worker has no thread setting; torch and MKL read these at start-up
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(overrides)
    return env


class WorkerProcess:
    """One worker subprocess; a thread drains its JSON log lines and tracks its partitions.

    Args:
        env: the complete environment (the worker's ``INVAD_*`` settings).
        worker_args: flags of :mod:`worker.bench.worker` (detector, flagged fraction, CPU pin).
        marks: file for the stage sampler's marks (None: no sampler).
        log: file that every log line is appended to (None: only the last lines are kept).
    """

    def __init__(self, env: dict[str, str], worker_args: Sequence[str], marks: Path | None = None,
                 log: Path | None = None):
        command = [sys.executable, "-m", "worker.bench.worker", *worker_args]
        if marks is not None:
            command += ["--stage-marks", str(marks)]
        self.marks = marks
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.partitions: set[int] = set()
        self.tail: deque[str] = deque(maxlen=30)
        self.log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        sink = open(self.log, "a", encoding="utf-8") if self.log is not None else None
        try:
            self._follow(sink)
        finally:
            if sink is not None:
                sink.close()

    def _follow(self, sink: Any) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.tail.append(line.rstrip())
            if sink is not None:
                sink.write(line)
                sink.flush()
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
