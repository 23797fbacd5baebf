"""What ``invad bench pipeline`` runs: its inputs and its scenarios, for the InvAD and the null detector."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from worker.core.images import decode_image
from worker.core.images import encode_png

from . import detector as detector_bench
from .report import percentiles

NULL_MODELS = "null-detector"  # INVAD_MODELS of null-detector workers: the config requires one; never loaded
# Goals of the plumbing ceiling (issue 9): images/s of one worker at these flagged fractions.
CEILING_GOALS = {0.0: 1000.0, 0.1: 300.0}
# Goal of the pipeline with the real detector (issue 9): this fraction of the detector alone's rate.
PIPELINE_GOAL = 0.95


def detector_alone(detector: Any, encoded: Sequence[bytes], batch_size: int,
                   repeats: int) -> tuple[dict[str, Any], np.ndarray]:
    """Decode + predict over ``encoded`` in batches. Returns (row, scores of the last pass): images/s is
    the median of ``repeats`` full passes; latencies are per-batch wall times (ms) over every pass."""
    detector.predict([decode_image(data) for data in encoded[:batch_size]])  # warm-up: lazy init, kernels
    rates, batch_ms = [], []
    for _ in range(repeats):
        started, scores = time.perf_counter(), []
        for start in range(0, len(encoded), batch_size):
            clock = time.perf_counter()
            scores.append(detector.predict([decode_image(data) for data in encoded[start:start + batch_size]]).pred_score)
            batch_ms.append((time.perf_counter() - clock) * 1e3)
        rates.append(len(encoded) / (time.perf_counter() - started))
    return {"name": "detector alone", "workers": 0, "images": len(encoded), "scored": len(encoded),
            "images_per_second": round(statistics.median(rates), 2), "runs_images_per_second": [round(r, 2) for r in rates],
            "latency_ms": percentiles(batch_ms), "latency_kind": "per batch (decode + predict)"}, np.concatenate(scores)


def prepare_inputs(args: Any, scratch: Path, batch_size: int) -> tuple[str, list[bytes], list[dict], dict]:
    """The workers' INVAD_MODELS, the PNG bytes of ``args.images`` images, the rows so far, and meta.

    Null detector: the bench images resized to ``--image-size`` px (the input size the ceiling is
    quoted at). InvAD: the bench images as they are, the detector-alone row, and the bundle: ``--model``,
    or an untrained default saved to ``scratch`` whose threshold (inf until calibrated, which a
    ScoreRecord rejects) is set to the 95th percentile of its own scores, so about 5 % of images take
    the flagged path (original and overlay to S3, an alert) as in production.
    """
    if args.detector == "null":
        size = args.image_size
        images = [image.convert("RGB").resize((size, size), Image.BILINEAR)
                  for image in detector_bench.bench_images(args.images, size)]
        encoded = [encode_png(images[i % len(images)]) for i in range(args.images)]
        meta = {"model": f"null detector (constant scores, {size} px zero map)", "input_px": size,
                "mean_input_bytes": round(sum(map(len, encoded)) / len(encoded))}
        return NULL_MODELS, encoded, [], meta
    detector = detector_bench.build(args.model, args.image_size, args.device)
    images = detector_bench.bench_images(args.images, detector.config.image_size)
    encoded = [encode_png(images[i % len(images)]) for i in range(args.images)]
    row, scores = detector_alone(detector, encoded, batch_size, args.repeats)
    bundle = args.model
    if bundle is None:
        bundle = str(scratch / "untrained")
        detector.thresholds.fill_(float(np.percentile(scores, 95)))
        detector.save_pretrained(bundle)
    meta = {"model": args.model or f"untrained default ({args.image_size} px, threshold at its p95 score)",
            "repeats": args.repeats, "mean_input_bytes": round(sum(map(len, encoded)) / len(encoded))}
    return str(Path(bundle).resolve()), encoded, [row], meta


def detector_rows(bench: Any, args: Any, rows: list[dict]) -> tuple[list[dict], dict]:
    """The InvAD scenarios after the detector-alone row; returns (rows, goals)."""
    invad = ["--detector", "invad"]
    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    pinned = len(cpus) == 2
    # The pipeline row is the median of --repeats runs, like the detector-alone row it is compared with.
    runs = [bench.scenario("pipeline, 1 worker", f"p1r{k}", args.images, [invad], single_core=False)
            for k in range(max(1, args.repeats))]
    rates = [run["images_per_second"] for run in runs]
    median = sorted(runs, key=lambda run: run["images_per_second"])[len(runs) // 2]
    rows.append({**median, "runs_images_per_second": rates})
    scaling = args.workers_scaling == "on"
    if scaling:
        one = [[*invad, "--cpu", str(cpus[0])]] if pinned else [invad]
        two = [[*invad, "--cpu", str(cpu)] for cpu in cpus] if pinned else [invad, invad]
        rows.append(bench.scenario("1 worker, 1 core", "c1", args.images, one, single_core=True))
        rows.append(bench.scenario("2 workers, 1 core each", "c2", args.images, two, single_core=True))
    # Steady state: half the measured capacity, so latency is service time, not queueing.
    steady = round(0.5 * rows[1]["images_per_second"], 1)
    rows.append(bench.scenario(f"1 worker, paced at {steady} images/s", "s1", max(2 * bench.config.batch_size, args.images // 2),
                               [invad], single_core=False, rate=steady))
    rows[1].update(ratio=rows[1]["images_per_second"] / rows[0]["images_per_second"], ratio_of="detector alone")
    goals = {"pipeline_vs_detector": round(rows[1]["ratio"], 3), "pipeline_goal_met": rows[1]["ratio"] >= PIPELINE_GOAL}
    if scaling:
        rows[3].update(ratio=rows[3]["images_per_second"] / rows[2]["images_per_second"], ratio_of="1 worker, 1 core")
        goals.update(two_vs_one_worker=round(rows[3]["ratio"], 3), scaling_goal_met=rows[3]["ratio"] >= 1.8)
    return rows, goals


def ceiling_rows(bench: Any, args: Any) -> tuple[list[dict], dict]:
    """For each flagged fraction (default 0 and 0.1): one null-detector worker, then two; returns (rows, goals)."""
    rows: list[dict] = []
    goals: dict[str, Any] = {}
    for k, fraction in enumerate(args.flagged_fraction if args.flagged_fraction is not None else [0.0, 0.1]):
        worker = ["--detector", "null", "--flagged-fraction", repr(fraction), "--map-size", str(args.image_size)]
        label = f"null detector, {100 * fraction:g} % flagged"
        one = bench.scenario(f"{label}, 1 worker", f"n{k}a", args.images, [worker], single_core=False)
        rows.append(one)
        if fraction in CEILING_GOALS:
            key = f"ceiling_{100 * fraction:g}pct_flagged"
            goals.update({key: one["images_per_second"], f"{key}_goal_met": one["images_per_second"] >= CEILING_GOALS[fraction]})
        if args.workers_scaling == "on":
            two = bench.scenario(f"{label}, 2 workers", f"n{k}b", args.images, [worker, worker], single_core=False)
            two.update(ratio=two["images_per_second"] / one["images_per_second"], ratio_of="1 worker")
            rows.append(two)
    return rows, goals
