"""``invad bench``: detector throughput and per-stage latency, inversion and reconstruction side by side.

Every configuration runs ``repeats`` times and reports the median, after one warm-up run. Stages:
decode (PNG bytes -> RGB), preprocess (resize, to tensor), backbone, each denoiser evaluation, and
scoring (maps, components, calibration). The same image batch feeds every row, so ratios between rows
measured in one run are meaningful even on a noisy shared machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from worker.core.config import DetectorConfig
from worker.core.data import DatasetLayoutError, elpv_split
from worker.core.detector import Detector, select_device
from worker.core.images import decode_image, encode_png, load_image
from worker.core.scoring import upsample_map
from worker.core.train import TrainConfig, build_detector


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _EvalTimer:
    """Forward hooks on the denoisers that time each network evaluation (synchronising on CUDA)."""

    def __init__(self, modules: Sequence[torch.nn.Module], device: torch.device):
        self.device, self.log, self._start = device, [], 0.0
        self._handles = [handle for module in modules for handle in
                         (module.register_forward_pre_hook(self._before), module.register_forward_hook(self._after))]

    def _before(self, *_):
        _sync(self.device)
        self._start = time.perf_counter()

    def _after(self, *_):
        _sync(self.device)
        self.log.append(time.perf_counter() - self._start)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def run_once(detector: Detector, encoded: Sequence[bytes], kind: str, steps: int) -> dict[str, float]:
    """Seconds per stage for one batch through one method."""
    device = detector.device
    times: dict[str, float] = {}
    clock = time.perf_counter()
    images = [decode_image(data) for data in encoded]
    times["decode"] = time.perf_counter() - clock
    clock = time.perf_counter()
    pixels = detector.to_pixels(images)
    times["preprocess"] = time.perf_counter() - clock
    clock = time.perf_counter()
    x0 = detector.features(pixels)
    _sync(device)
    times["backbone"] = time.perf_counter() - clock
    labels = torch.zeros(len(x0), dtype=torch.long, device=device)  # a row per tile
    timer = _EvalTimer([*detector.denoisers, *detector.map_denoisers], device)
    try:
        clock = time.perf_counter()
        comps, grid_map = detector.score_features(x0, labels, kind, steps if kind == "inversion" else None)
        if kind == "inversion":
            detector.per_image(detector.combine(comps, labels))
        upsample_map(detector.image_maps(grid_map), detector.config.input_shape, detector.config.map_sigma).cpu()
        _sync(device)
        total = time.perf_counter() - clock
    finally:
        timer.remove()
    evals = timer.log
    times["denoiser"] = sum(evals)
    times["denoiser_evals"] = len(evals)
    times["denoiser_per_eval"] = sum(evals) / max(1, len(evals))
    times["scoring"] = total - sum(evals)
    return times


def benchmark(detector: Detector, images, batch_sizes: Sequence[int], steps: Sequence[int],
              repeats: int = 3, reconstruction: bool = True) -> list[dict]:
    """Rows of median timings for every (method, steps, batch size)."""
    rows = []
    for batch in batch_sizes:
        encoded = [encode_png(images[i % len(images)]) for i in range(batch)]
        configs = [("inversion", s) for s in steps]
        if reconstruction:
            configs.append(("reconstruction", detector.config.reconstruction.steps))
        for kind, s in configs:
            run_once(detector, encoded, kind, s)  # warm-up
            runs = [run_once(detector, encoded, kind, s) for _ in range(repeats)]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            end_to_end = median["decode"] + median["preprocess"] + median["backbone"] + median["denoiser"] + median["scoring"]
            rows.append({
                "method": kind, "steps": s, "batch_size": batch, "repeats": repeats,
                "images_per_second": batch / end_to_end,
                "denoiser_only_images_per_second": batch / median["denoiser"],
                "ms_per_batch": {k: 1e3 * v for k, v in median.items() if k != "denoiser_evals"},
                "denoiser_evals": int(median["denoiser_evals"]),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("| method | S | batch | images/s | denoiser-only images/s | decode ms | backbone ms | "
              "denoiser ms (per eval) | scoring ms |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms_per_batch"]
        lines.append(f"| {r['method']} | {r['steps']} | {r['batch_size']} | {r['images_per_second']:.1f} | "
                     f"{r['denoiser_only_images_per_second']:.1f} | {ms['decode']:.1f} | {ms['backbone']:.1f} | "
                     f"{ms['denoiser']:.1f} ({ms['denoiser_per_eval']:.2f}) | {ms['scoring']:.1f} |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write(rows: list[dict], out: str | Path, meta: dict) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "environment": environment(), "rows": rows}, indent=2) + "\n")


def ratio_summary(rows: list[dict], steps: int) -> list[dict]:
    """Inversion at ``steps`` vs reconstruction at each batch size: end-to-end and denoiser-only speed-ups."""
    out = []
    for batch in sorted({r["batch_size"] for r in rows}):
        inv = next((r for r in rows if r["batch_size"] == batch and r["method"] == "inversion" and r["steps"] == steps), None)
        rec = next((r for r in rows if r["batch_size"] == batch and r["method"] == "reconstruction"), None)
        if inv and rec:
            out.append({"batch_size": batch,
                        "end_to_end_speedup": inv["images_per_second"] / rec["images_per_second"],
                        "denoiser_speedup": inv["denoiser_only_images_per_second"] / rec["denoiser_only_images_per_second"]})
    return out


def bench_images(n: int, size: int, seed: int = 0):
    """Benchmark inputs: ELPV cells when the package is installed, else generated textures."""
    try:
        return [load_image(s.path) for s in elpv_split()[1][:n]]
    except DatasetLayoutError:  # the elpv-dataset package is not installed
        rng = np.random.default_rng(seed)
        return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def build(model: str | None, image_size: int, device: str | None, grid_stride: int | None = None,
          backbone: str | None = None, feature_norm: str | None = None, members: int | None = None,
          map_backbone: str | None = None) -> Detector:
    """The bundle at ``model``, else the untrained default architecture at ``image_size`` px, with
    ``grid_stride``, ``backbone``, ``feature_norm``, ``members`` and ``map_backbone`` ("": none) if given
    (what they cost does not depend on trained weights)."""
    selected = select_device(device)
    if model:
        return Detector.from_pretrained(model, selected)
    config = DetectorConfig(image_size=image_size, grid_stride=grid_stride or 0,
                            backbone=backbone or DetectorConfig.backbone,
                            feature_norm=feature_norm or DetectorConfig.feature_norm,
                            members=members or DetectorConfig.members,
                            map_backbone=DetectorConfig.map_backbone if map_backbone is None else map_backbone)
    return build_detector(config, TrainConfig()).to(selected)


def run(args: Any) -> int:
    """Entry point of ``invad bench`` (target ``detector``): prints the table, writes ``args.out``; returns 0."""
    detector = build(args.model, args.image_size, args.device, getattr(args, "grid_stride", None),
                     getattr(args, "backbone", None), getattr(args, "feature_norm", None),
                     getattr(args, "members", None), getattr(args, "map_backbone", None))
    compile_mode = getattr(args, "compile", "off")
    if compile_mode != "off":
        detector.compile_networks(compile_mode)
    images = bench_images(max(args.batch_sizes), detector.config.image_size)
    rows = benchmark(detector, images, args.batch_sizes, args.steps, args.repeats)
    ratios = ratio_summary(rows, detector.config.steps)
    write(rows, args.out, {"model": args.model or "untrained default", "device": str(detector.device),
                           "compile": compile_mode, "image_size": detector.config.image_size,
                           "grid": detector.extractor.grid, "backbone": detector.config.backbone,
                           "map_backbone": detector.config.map_backbone,
                           "feature_norm": detector.config.feature_norm, "members": detector.config.members,
                           "autocast": "bf16" if detector.device.type == "cuda" else "off",
                           "channels_last": detector.device.type == "cuda",
                           "ratios_vs_reconstruction": ratios, "torch_threads": torch.get_num_threads()})
    print(format_table(rows), end="")
    for r in ratios:
        print(f"batch {r['batch_size']}: inversion S={detector.config.steps} vs reconstruction: "
              f"{r['end_to_end_speedup']:.2f}x end to end, {r['denoiser_speedup']:.2f}x denoiser only")
    print(f"wrote {args.out}")
    return 0
