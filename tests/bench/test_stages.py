"""The bench worker's CPU-by-stage sampler, on real work in real threads."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from PIL import Image

from worker.bench import stages
from worker.core.overlay import overlay_png


def _call_through(paths, innermost):
    """Call ``innermost`` through one function per path, each compiled as if it lived in that file."""
    call = innermost
    for path in reversed(paths):
        namespace: dict = {}
        exec(compile("def through(call):\n    return call()\n", path, "exec"), namespace)
        call = (lambda through, inner: lambda: through(inner))(namespace["through"], call)
    return call()


def test_stage_of_names_the_innermost_known_module():
    here = lambda: stages.stage_of(sys._getframe())  # noqa: E731
    assert _call_through(["/app/worker/pipeline/loop.py", "/app/worker/core/overlay.py"], here) == "overlay render + PNG"
    assert _call_through(["/app/worker/pipeline/loop.py", "/app/worker/pipeline/redis_sink.py"], here) == "redis sink"
    # s3.py is shared by fetch and the S3 sink: its caller decides
    assert _call_through(["/app/worker/pipeline/fetch.py", "/app/worker/pipeline/s3.py"], here) == "fetch (S3 GET)"
    assert _call_through(["/app/worker/pipeline/s3_sink.py", "/app/worker/pipeline/s3.py"], here) == "s3 sink (PUT)"
    assert _call_through(["/venv/site-packages/kafka/coordinator/heartbeat.py"], here) == stages.KAFKA_CLIENT
    assert here() == stages.OTHER  # a test module is no stage


def test_sampler_charges_a_busy_thread_to_its_stage_and_marks_windows(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    grid = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    stop = threading.Event()

    def render() -> None:
        while not stop.is_set():
            overlay_png(image, grid)

    marks = tmp_path / "marks.jsonl"
    sampler = stages.StageSampler(marks, interval_s=0.005).start()
    busy = threading.Thread(target=render)
    busy.start()
    try:
        sampler.request_mark()
        time.sleep(1.0)
        sampler.request_mark()
        deadline = time.monotonic() + 5
        while len(stages.read_marks(marks)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        busy.join()
        sampler.stop()
    start, end = stages.read_marks(marks)[:2]
    span = stages.window(start, end)
    by_stage = span["stages_cpu_s"]
    assert by_stage["overlay render + PNG"] > 0.2, by_stage  # about 1 s of one busy thread, on shared cores
    assert by_stage["overlay render + PNG"] > 0.8 * sum(by_stage.values()), by_stage
    assert span["process_cpu_s"] >= 0.95 * sum(by_stage.values())
