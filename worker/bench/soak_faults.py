"""The soak's faults: when each strikes, what it does, and how long the pipeline takes to recover.

A schedule is ``KIND@PROGRESS,...`` (``--faults``), PROGRESS the fraction of the references committed
when the fault strikes; faults run one after the other, each once the previous one recovered.

Recovery of a fault is measured from the moment its dependency is back (the broker, Redis or S3
serving again; for a killed worker, the moment its replacement was started): the partitions that
still had work then are watched until each one's committed offset moves. ``first_commit_s`` is the
first of them, ``recovered_s`` the last (every partition moving again), both read from the soak's
offset samples (one a second, so about a second of resolution).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from .soak_watch import Pool, Watcher

FAULT_KINDS = ("kill-worker", "restart-broker", "restart-redis", "stop-s3")
DEFAULT_FAULTS = "kill-worker@0.15,restart-broker@0.35,restart-redis@0.55,stop-s3@0.75"
RECOVERY_GOAL_S = 60.0


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # fraction of the references committed when it strikes


def parse_faults(text: str) -> list[Fault]:
    """``kind@fraction,...`` or ``none``; ValueError naming the bad entry and the choices."""
    if text.strip() in ("", "none"):
        return []
    faults = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, sep, at = part.partition("@")
        try:
            fraction = float(at) if sep else -1.0
        except ValueError:
            fraction = -1.0
        if kind not in FAULT_KINDS or not 0.0 <= fraction < 1.0:
            raise ValueError(f"--faults: {part!r} is not KIND@FRACTION with KIND one of {', '.join(FAULT_KINDS)} "
                             f"and FRACTION in [0, 1) (e.g. {DEFAULT_FAULTS})")
        faults.append(Fault(kind, fraction))
    return sorted(faults, key=lambda f: f.at)


class FaultRunner:
    """Strikes each fault of a schedule on the soak's services and workers and measures the recovery."""

    def __init__(self, services: dict[str, Any], pool: Pool, watcher: Watcher, sent: int, s3_down_s: float,
                 timeout_s: float, say: Callable[[str], None] = print):
        self.services, self.pool, self.watcher, self.sent = services, pool, watcher, sent
        self.s3_down_s, self.timeout_s, self.say = s3_down_s, timeout_s, say

    def progress(self) -> float:
        sample = self.watcher.latest()
        return sum(sample.committed.values()) / self.sent if sample else 0.0

    def run(self, fault: Fault) -> dict[str, Any]:
        """Wait for the fault's point of progress, strike, wait until every partition moves again."""
        deadline = time.monotonic() + self.timeout_s
        while self.progress() < fault.at and time.monotonic() < deadline:
            sample = self.watcher.latest()
            if sample is not None and sample.lag == 0 and sum(sample.ends.values()) >= self.sent:
                return {"fault": fault.kind, "at": fault.at, "skipped": "every reference was done before it"}
            time.sleep(0.5)
        row: dict[str, Any] = {"fault": fault.kind, "at": fault.at, "progress": round(self.progress(), 3)}
        struck = self.watcher.now()
        self.say(f"soak: {fault.kind} at {row['progress']:.0%} of the references committed")
        row.update(self._strike(fault.kind))
        back = self.watcher.now()
        row.update(struck_at_s=round(struck, 1), outage_s=round(back - struck, 1))
        row.update(self._recovery(back))
        self.say(f"soak: {fault.kind}: back after {row['outage_s']} s, every partition moving "
                 f"{row.get('recovered_s')} s later")
        return row

    def _strike(self, kind: str) -> dict[str, Any]:
        if kind == "kill-worker":
            victim = self.pool.busiest()
            self.pool.kill(victim)
            return {"detail": f"SIGKILL {victim}, restarted at once"}
        name = {"restart-broker": "kafka", "restart-redis": "redis", "stop-s3": "s3"}[kind]
        service = self.services[name]
        service.stop()
        if kind == "stop-s3":
            time.sleep(self.s3_down_s)
        service.start()
        return {"detail": f"{name} stopped" + (f" for {self.s3_down_s:g} s" if kind == "stop-s3" else "") +
                          ", started again"}

    def _recovery(self, back: float) -> dict[str, Any]:
        base = self.watcher.wait_sample_after(back, self.timeout_s)
        if base is None:
            return {"recovered_s": None, "note": "no offsets could be read after the fault"}
        waiting = {p for p, end in base.ends.items() if base.committed.get(p, 0) < end}
        if not waiting:
            return {"partitions_waiting": 0, "recovered_s": None, "note": "no partition had work left"}
        moved: dict[int, float] = {}
        deadline = time.monotonic() + self.timeout_s
        while set(moved) != waiting and time.monotonic() < deadline:
            sample = self.watcher.latest()
            for p in waiting - set(moved):
                if sample is not None and sample.committed.get(p, 0) > base.committed.get(p, 0):
                    moved[p] = sample.t - back
            time.sleep(0.2)
        return {"partitions_waiting": len(waiting),
                "first_commit_s": round(min(moved.values()), 1) if moved else None,
                "recovered_s": round(max(moved.values()), 1) if moved and set(moved) == waiting else None}
