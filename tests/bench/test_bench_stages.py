"""The bench worker's CPU-by-stage sampler, on real work in real threads."""

from __future__ import annotations

import faulthandler
import threading
import time

import numpy as np
from PIL import Image

from worker.bench import stages
from worker.core.overlay import overlay_png


def test_stage_of_names_the_innermost_known_module():
    assert stages.stage_of(["/venv/PIL/Image.py", "/app/worker/core/overlay.py", "/app/worker/pipeline/loop.py"]) \
        == "overlay render + PNG"
    assert stages.stage_of(["/venv/redis/client.py", "/app/worker/pipeline/redis_sink.py"]) == "redis sink"
    # s3.py is shared by fetch and the S3 sink: its caller decides
    assert stages.stage_of(["/app/worker/pipeline/s3.py", "/app/worker/pipeline/fetch.py"]) == "fetch (S3 GET)"
    assert stages.stage_of(["/venv/PIL/PngImagePlugin.py", "/app/worker/core/images.py", "/app/worker/core/overlay.py",
                            "/app/worker/pipeline/loop.py"]) == "overlay render + PNG"
    assert stages.stage_of(["/venv/PIL/Image.py", "/app/worker/core/images.py", "/app/worker/pipeline/fetch.py"]) \
        == "image decode"
    assert stages.stage_of(["/app/worker/pipeline/s3.py", "/app/worker/pipeline/s3_sink.py"]) == "s3 sink (PUT)"
    assert stages.stage_of(["/venv/site-packages/kafka/coordinator/heartbeat.py"]) == stages.KAFKA_CLIENT
    assert stages.stage_of(["/app/tests/test_x.py"]) == stages.OTHER


def test_parse_stacks_reads_every_thread_of_a_real_dump(tmp_path):
    namespace: dict = {}
    exec(compile("def wait_here(event):\n    event.wait(10)\n", "/app/worker/pipeline/redis_sink.py", "exec"), namespace)
    parked, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (parked.set(), namespace["wait_here"](release)))
    thread.start()
    parked.wait(5)
    try:
        with open(tmp_path / "dump.txt", "w+") as out:
            faulthandler.dump_traceback(out, all_threads=True)
            out.seek(0)
            found = stages.parse_stacks(out.read())
    finally:
        release.set()
        thread.join()
    assert stages.stage_of(found[thread.ident]) == "redis sink"
    assert __file__ in found[threading.get_ident()]  # the dumping thread itself, innermost first


def test_sampler_charges_a_busy_thread_to_its_stage_and_marks_windows(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    grid = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    stop = threading.Event()

    used = [0.0]  # CPU seconds the busy thread has had: the window ends on that, not on wall time

    def render() -> None:
        started = time.thread_time()
        while not stop.is_set():
            overlay_png(image, grid)
            used[0] = time.thread_time() - started

    marks = tmp_path / "marks.jsonl"
    sampler = stages.StageSampler(marks, interval_s=0.05).start()
    busy = threading.Thread(target=render)
    busy.start()
    try:
        sampler.request_mark()
        deadline = time.monotonic() + 120  # a loaded machine may give the thread little CPU per second
        while used[0] < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
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
    assert used[0] >= 1.0, "the busy thread never got 1 s of CPU"
    assert by_stage["overlay render + PNG"] > 0.5, by_stage  # about 1 s of CPU of one busy thread
    others = sum(s for stage, s in by_stage.items() if stage != stages.PROFILER)
    assert by_stage["overlay render + PNG"] > 0.8 * others, by_stage
    assert by_stage[stages.PROFILER] < 0.25 * by_stage["overlay render + PNG"], by_stage
    assert span["process_cpu_s"] >= 0.95 * sum(by_stage.values())


def test_cpu_of_a_thread_found_idle_goes_to_the_stage_it_was_last_seen_in(tmp_path):
    namespace: dict = {}
    exec(compile("def work(seconds):\n    end = time.thread_time() + seconds\n    while time.thread_time() < end:\n"
                 "        pass\n", "/app/worker/pipeline/fetch.py", "exec"), {"time": time}, namespace)
    busy, done = threading.Event(), threading.Event()

    def pool_thread() -> None:  # like a fetch-pool thread: busy in fetch.py, then idle outside every stage
        busy.set()
        namespace["work"](0.5)
        done.set()
        time.sleep(0.5)

    sampler = stages.StageSampler(tmp_path / "marks", interval_s=3600)  # ticks driven by hand below
    thread = threading.Thread(target=pool_thread)
    thread.start()
    try:
        busy.wait(10)
        time.sleep(0.1)  # well inside work()
        sampler._tick()  # seen busy in fetch.py
        done.wait(10)
        sampler._tick()  # seen idle: the CPU it used since the first tick still belongs to the fetch stage
    finally:
        thread.join()
    assert sampler.cpu_s["fetch (S3 GET)"] > 0.3 and sampler.cpu_s[stages.OTHER] < 0.05, dict(sampler.cpu_s)
