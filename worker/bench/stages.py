"""Where a worker process spends its CPU, by pipeline stage: a sampling profiler for the bench worker.

Every ``interval_s`` a thread reads each Python thread's CPU clock and charges the CPU it used since
the previous tick to the stage that thread is in now, found from its stack: the innermost frame whose
module is one of :data:`STAGES` (a thread found idle outside every stage, such as a fetch-pool thread
between tasks, is charged to the stage it was last seen in). The loop's own structure is not assumed, so the split stays valid when
stages move between threads. The error per stage is about one tick of CPU per stage change, small
over a run of thousands of images; the sampler reports its own CPU as the stage "profiler" (a dump of
a worker's 20 threads costs about 4 ms of CPU, as faulthandler writes byte by byte, so 5 ticks a
second cost about 2 % of a core).

Stacks are read with :func:`faulthandler.dump_traceback`, which walks every thread in C without
letting another thread run. Walking ``sys._current_frames()`` with ``f_back`` from Python instead
crashed CPython 3.11 under load (another thread returned from a frame mid-walk: a freed frame, a
segfault in the worker).

``request_mark()`` (safe in a signal handler) makes the sampler append one JSON line of the cumulative
totals to a file at its next tick; the bench marks the start and the end of its timed window and
subtracts. Linux only (thread CPU clocks); elsewhere no stage is charged.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

# module file -> stage, matched from the innermost frame outwards (a decode in images.py counts as
# "image decode"; a PNG encode of images.py under overlay.py as the overlay, see _ENCLOSED_BY). worker/pipeline/s3.py is left out: it is
# shared by fetch and the S3 sink, and its caller decides.
STAGES = {
    ("core", "overlay.py"): "overlay render + PNG",
    ("core", "images.py"): "image decode",
    ("pipeline", "fetch.py"): "fetch (S3 GET)",
    ("pipeline", "redis_sink.py"): "redis sink",
    ("pipeline", "s3_sink.py"): "s3 sink (PUT)",
    ("pipeline", "kafka_io.py"): "kafka (poll, commit, dead letters)",
    ("bench", "null_detector.py"): "detector",
    ("core", "detector.py"): "detector",
    ("pipeline", "loop.py"): "loop (routing, records, logging)",
}
KAFKA_CLIENT = "kafka client threads"
OTHER = "other"
PROFILER = "profiler"

_THREAD = re.compile(r"^(?:Current thread|Thread) 0x([0-9a-f]+)", re.MULTILINE)
_FILE = re.compile(r'^  File "(.*)", line \d+ in ', re.MULTILINE)


# A module whose work belongs to a caller when that caller is on the stack: images.py both decodes
# (under fetch) and encodes PNG (under overlay.py, where it is the overlay's cost).
_ENCLOSED_BY = {("core", "images.py"): ("core", "overlay.py")}


def _module(path: str) -> tuple[str, str]:
    return os.path.basename(os.path.dirname(path)), os.path.basename(path)


def stage_of(paths: Sequence[str]) -> str:
    """The stage of the first of ``paths`` (source files of a stack, innermost first) in a known module."""
    library = None
    for index, path in enumerate(paths):
        module = _module(path)
        stage = STAGES.get(module)
        if stage is not None:
            outer = _ENCLOSED_BY.get(module)
            if outer is not None and any(_module(p) == outer for p in paths[index + 1:]):
                return STAGES[outer]
            return stage
        if library is None and f"{os.sep}kafka{os.sep}" in path:
            library = KAFKA_CLIENT  # kafka-python's heartbeat and network threads
    return library or OTHER


def parse_stacks(dump: str) -> dict[int, list[str]]:
    """``faulthandler.dump_traceback`` text -> {thread ident: source files, innermost first}."""
    heads = list(_THREAD.finditer(dump))
    ends = [h.start() for h in heads[1:]] + [len(dump)]
    return {int(h.group(1), 16): _FILE.findall(dump, h.end(), end) for h, end in zip(heads, ends)}


def thread_cpu_clock(tid: int) -> int:
    """Linux's CPU-time clock id of thread ``tid`` (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)). Unlike
    ``time.pthread_getcpuclockid``, a thread that has ended gives EINVAL instead of undefined behaviour."""
    return ((~tid) << 3) | 6


class StageSampler:
    """Samples every thread of this process until :meth:`stop`."""

    def __init__(self, marks_path: str | os.PathLike, interval_s: float = 0.2):
        self.path, self.interval_s = Path(marks_path), interval_s
        self.cpu_s: Counter[str] = Counter()
        self._last: dict[int, float] = {}  # thread ident -> its CPU clock at the last tick
        self._seen: dict[int, str] = {}  # thread ident -> the last stage other than OTHER it was seen in
        self._dump = tempfile.TemporaryFile()
        self._mark = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stage-sampler", daemon=True)

    def start(self) -> "StageSampler":
        self._thread.start()
        return self

    def _stacks(self) -> dict[int, list[str]]:
        fd = self._dump.fileno()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        faulthandler.dump_traceback(fd, all_threads=True)
        return parse_stacks(os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace"))

    def _tick(self) -> None:
        native = {t.ident: t.native_id for t in threading.enumerate()}
        me = threading.get_ident()
        for ident, paths in self._stacks().items():
            if native.get(ident) is None:
                continue
            try:
                now = time.clock_gettime(thread_cpu_clock(native[ident]))
            except OSError:  # the thread ended since enumerate()
                continue
            used = now - self._last.get(ident, now)
            self._last[ident] = now
            stage = PROFILER if ident == me else stage_of(paths)
            if stage == OTHER:  # idle now (a pool thread between tasks): its CPU went where it was last seen
                stage = self._seen.get(ident, OTHER)
            else:
                self._seen[ident] = stage
            self.cpu_s[stage] += used
        for ident in set(self._last) - set(native):
            del self._last[ident]
            self._seen.pop(ident, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()
            if self._mark.is_set():
                self._mark.clear()
                self._write_mark()

    def request_mark(self) -> None:
        """Ask for a mark at the next tick; only sets a flag, so a signal handler may call it."""
        self._mark.set()

    def _write_mark(self) -> None:
        line = json.dumps({"process_cpu_s": time.process_time(), "stages_cpu_s": dict(self.cpu_s)})
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        if not self._thread.is_alive():  # else the daemon thread may still be dumping into it
            self._dump.close()


def read_marks(path: str | os.PathLike) -> list[dict]:
    """The marks written so far (an empty list when there are none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def window(start: dict, end: dict) -> dict:
    """CPU seconds between two marks: {"process_cpu_s": float, "stages_cpu_s": {stage: float}}."""
    stages = {name: end["stages_cpu_s"].get(name, 0.0) - start["stages_cpu_s"].get(name, 0.0)
              for name in end["stages_cpu_s"]}
    return {"process_cpu_s": end["process_cpu_s"] - start["process_cpu_s"],
            "stages_cpu_s": {name: s for name, s in stages.items() if s > 0}}
