"""What the soak watches while it runs, from outside the workers: committed offsets and lag (Kafka),
each worker's resident memory (``/proc/PID/status``), and workers that exit on their own (restarted,
as Kubernetes would, and counted)."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kafka import KafkaConsumer, TopicPartition

from .workers import WorkerProcess


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in kB (``VmRSS`` of /proc/PID/status); None when unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class OffsetReader:
    """Committed and end offsets of one group on one topic, read as an outside observer (no group join)."""

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int):
        self.bootstrap, self.group = bootstrap, group
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer: KafkaConsumer | None = None

    def read(self) -> tuple[dict[int, int], dict[int, int]] | None:
        """({partition: committed offset, 0 when none}, {partition: end offset}), or None while the
        broker does not answer (the client is made again on the next call)."""
        try:
            if self._consumer is None:
                self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                               enable_auto_commit=False, request_timeout_ms=5_000,
                                               client_id="invad-soak-observer")
            ends = self._consumer.end_offsets(self.tps, timeout_ms=3_000)
            committed = {tp.partition: self._consumer.committed(tp, timeout_ms=3_000) or 0 for tp in self.tps}
            return committed, {tp.partition: offset for tp, offset in ends.items()}
        except Exception:  # noqa: BLE001 - the broker is restarting; the next sample tries again
            self.close()
            return None

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001
                pass
            self._consumer = None


class Pool:
    """The soak's worker processes by name; ``env_for(name)`` gives each its environment."""

    def __init__(self, names: list[str], env_for: Callable[[str], dict[str, str]], logs: Path):
        self.env_for, self.logs = env_for, logs
        self.lock = threading.Lock()
        self.workers: dict[str, WorkerProcess] = {}
        self.started: dict[int, float] = {}  # pid -> monotonic start
        self.exits: list[dict] = []  # exits the soak did not cause
        for name in names:
            self._start(name)

    def _start(self, name: str) -> None:
        worker = WorkerProcess(self.env_for(name), ["--detector", "invad"], log=self.logs / f"{name}.log")
        self.workers[name] = worker
        self.started[worker.proc.pid] = time.monotonic()

    def kill(self, name: str) -> None:
        """SIGKILL worker ``name`` and start it again at once (same name), as Kubernetes would."""
        with self.lock:
            worker = self.workers[name]
            worker.proc.kill()
            worker.proc.wait()
            self._start(name)

    def restart_exited(self) -> None:
        """Start again every worker that exited on its own, recording its exit code and last lines."""
        with self.lock:
            for name, worker in list(self.workers.items()):
                if worker.proc.poll() is not None:
                    self.exits.append({"worker": name, "pid": worker.proc.pid, "exit_code": worker.proc.returncode,
                                       "last_lines": list(worker.tail)[-8:]})
                    self._start(name)

    def busiest(self) -> str:
        """The worker holding the most partitions (by its own log), the first one when none hold any."""
        with self.lock:
            return max(self.workers, key=lambda name: len(self.workers[name].partitions))

    def pids(self) -> dict[str, int]:
        with self.lock:
            return {name: worker.proc.pid for name, worker in self.workers.items()}

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every worker (drain, commit, leave); {name: exit code}."""
        with self.lock:
            for worker in self.workers.values():
                worker.stop()
            return {name: worker.proc.returncode for name, worker in self.workers.items()}


@dataclass
class Sample:
    t: float  # seconds since the watch started
    committed: dict[int, int]
    ends: dict[int, int]

    @property
    def lag(self) -> int:
        return sum(max(0, self.ends[p] - self.committed.get(p, 0)) for p in self.ends)


@dataclass
class Watcher:
    """Samples offsets every second and RSS every ``rss_every_s`` in a thread; restarts exited workers."""
    offsets: OffsetReader
    pool: Pool
    rss_every_s: float = 5.0
    samples: list[Sample] = field(default_factory=list)
    rss: list[dict] = field(default_factory=list)  # {"t", "worker", "pid", "rss_mb"}
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-watch", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.offsets.close()

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        next_rss = 0.0
        while not self._stop.is_set():
            read = self.offsets.read()
            if read is not None:
                self.samples.append(Sample(self.now(), *read))
            if self.now() >= next_rss:
                next_rss = self.now() + self.rss_every_s
                for name, pid in self.pool.pids().items():
                    kb = rss_kb(pid)
                    if kb is not None:
                        self.rss.append({"t": round(self.now(), 1), "worker": name, "pid": pid, "rss_mb": round(kb / 1024, 1)})
            self.pool.restart_exited()
            self._stop.wait(1.0)

    def wait_sample_after(self, t: float, timeout_s: float) -> Sample | None:
        """The first offsets sample taken at or after ``t`` (watch time), waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            index = bisect.bisect_left(self.samples, t, key=lambda sample: sample.t)
            if index < len(self.samples):
                return self.samples[index]
            time.sleep(0.2)
        return None
