"""The pipeline bench's numbers: latency percentiles, CPU per image, markdown tables, the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .detector import environment
from .stages import window

NATIVE = "unsampled (native threads, window edges)"


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """{"p50", "p95", "p99"} of ``values_ms``, rounded to 0.1 ms (NaN for an empty list)."""
    if not values_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values_ms, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


def cpu_fields(images: int, seconds: float, before: Mapping[str, float | None], after: Mapping[str, float | None],
               marks: Sequence[Sequence[dict]]) -> dict[str, Any]:
    """CPU of one timed window, per image.

    Args:
        images: images timed; seconds: the window's wall time.
        before, after: cumulative CPU seconds per process name ("workers", "bench", watched services)
            at the window's start and end; a None (unreadable process) leaves that name out.
        marks: per worker, its stage sampler's [start, end] marks ([] when it ran without one).

    Returns:
        {"cpu_ms_per_image": {process: ms}, "cores_busy": CPU seconds / wall seconds of those processes,
         "worker_cpu_ms_per_image_by_stage": {stage: ms}} (the last only with marks); CPU the sampler
        cannot see (threads outside Python) is the stage :data:`NATIVE`.
    """
    used = {name: after[name] - before[name] for name in after
            if before.get(name) is not None and after[name] is not None}
    out: dict[str, Any] = {"cpu_ms_per_image": {name: round(1e3 * s / images, 3) for name, s in used.items()},
                           "cores_busy": round(sum(used.values()) / seconds, 2) if seconds > 0 else None}
    by_stage: dict[str, float] = {}
    for start, end in (m for m in marks if len(m) == 2):
        span = window(start, end)
        for stage, s in span["stages_cpu_s"].items():
            by_stage[stage] = by_stage.get(stage, 0.0) + s
        native = span["process_cpu_s"] - sum(span["stages_cpu_s"].values())
        if native > 0:
            by_stage[NATIVE] = by_stage.get(NATIVE, 0.0) + native
    if by_stage:
        ordered = sorted(by_stage.items(), key=lambda item: -item[1])
        out["worker_cpu_ms_per_image_by_stage"] = {stage: round(1e3 * s / images, 3) for stage, s in ordered}
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: images/s, latency percentiles and each row's ratio to its reference row."""
    lines = ["| configuration | images/s | flagged | p50 ms | p95 ms | p99 ms | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        ratio = f"{r['ratio']:.2f}x {r['ratio_of']}" if r.get("ratio_of") else "-" if r.get("paced_rate") else "1.00"
        flagged = f"{r['flagged'] / r['scored']:.1%}" if r.get("flagged") is not None and r.get("scored") else "-"
        lines.append(f"| {r['name']} | {r['images_per_second']:.2f} | {flagged} | {lat['p50']:.0f} | "
                     f"{lat['p95']:.0f} | {lat['p99']:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def format_cpu_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of CPU ms per image, one column per row with CPU figures: per process, the
    cores they kept busy, then per worker stage ("" when no row has CPU figures)."""
    rows = [r for r in rows if r.get("cpu_ms_per_image")]
    if not rows:
        return ""
    processes = list(dict.fromkeys(name for r in rows for name in r["cpu_ms_per_image"]))
    stages = list(dict.fromkeys(s for r in rows for s in r.get("worker_cpu_ms_per_image_by_stage", {})))

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"
    lines = ["| CPU ms per image | " + " | ".join(r["name"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    lines += [f"| {p} | " + " | ".join(cell(r["cpu_ms_per_image"].get(p)) for r in rows) + " |" for p in processes]
    lines.append("| (cores busy) | " + " | ".join(cell(r.get("cores_busy")) for r in rows) + " |")
    lines += [f"| worker: {s} | " + " | ".join(cell(r.get("worker_cpu_ms_per_image_by_stage", {}).get(s)) for r in rows)
              + " |" for s in stages]
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, meta: dict, goals: dict, rows: Sequence[dict]) -> Path:
    """Write {"meta", "environment", "goals", "rows"} as JSON to ``out`` (folders created); returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "environment": environment(), "goals": goals, "rows": list(rows)},
                               indent=2) + "\n")
    return path
