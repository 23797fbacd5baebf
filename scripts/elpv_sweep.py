"""ELPV sweep: which denoiser size, training length, score components and step count to ship by default.

Backbone features of the fixed ELPV split are extracted once (cached under $INVAD_CACHE/sweep), then
each variant trains a denoiser with the real training code and is scored with the real detector code,
so a variant costs only its denoiser training. Prints a table and writes JSON:

    ~/.cache/invad/venv/bin/python scripts/elpv_sweep.py --out docs/elpv_sweep.json

Single trainings mislead (issue 8: AUROC moved by 0.2 between two seeds): for decisions use the
multi-seed protocol, ``invad quality seeds`` (worker/quality/protocol.py), which this script predates.

Caveat: choosing a default on the ELPV test split tunes on the test set; the figures say how much
each choice matters, the default must also be sane on data we do not have.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.core.config import DetectorConfig  # noqa: E402
from worker.core.data import elpv_split  # noqa: E402
from worker.core.metrics import image_metrics  # noqa: E402
from worker.core.train import (TrainConfig, build_detector, calibrate, extract_features,  # noqa: E402
                               feature_statistics, fit_statistics, split_normals, train_denoiser)


def cached_features(detector, name: str, paths, cache: Path) -> torch.Tensor:
    file = cache / f"{name}.pt"
    if file.is_file():
        return torch.load(file)
    features = extract_features(detector, paths, 16, name)
    torch.save(features, file)
    return features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="elpv_sweep.json")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=200, help="normal training cells (goal: 200)")
    parser.add_argument("--variants", default="base", help="comma list of variant names (see VARIANTS)")
    args = parser.parse_args()
    cache = Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache/invad")) / "sweep" / str(args.image_size)
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    train_samples, test_samples = elpv_split()
    train_paths, calib_paths = split_normals([s.path for s in train_samples][: args.train_images], 0.2, 0)
    config = DetectorConfig(image_size=args.image_size)
    base = build_detector(config, TrainConfig())
    raw = {name: cached_features(base, f"{name}-{args.train_images}", paths, cache)
           for name, paths in (("train", train_paths), ("calib", calib_paths))}
    raw["test"] = cached_features(base, "test", [s.path for s in test_samples], cache)
    labels = np.array([s.label for s in test_samples])
    mean, std = feature_statistics(raw["train"])
    feats = {k: (v - mean[:, None, None]) / std[:, None, None] for k, v in raw.items()}

    variants = {
        "base": TrainConfig(),
        "short": TrainConfig(iterations=600),
        "mid": TrainConfig(iterations=1000),
        "k1": TrainConfig(kernel_size=1, width=256),
        "small": TrainConfig(width=64),
        "long": TrainConfig(iterations=3000),
    }
    rows = []
    for name in args.variants.split(","):
        tc = variants[name]
        detector = build_detector(config, tc)
        detector.feature_mean.copy_(mean)
        detector.feature_std.copy_(std)
        zeros = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
        clock = time.perf_counter()
        torch.manual_seed(tc.seed)
        denoiser, losses = train_denoiser(detector.denoisers[0], feats["train"], zeros(len(feats["train"])), tc,
                                          detector.alphas_cumprod, torch.device("cpu"))
        train_s = time.perf_counter() - clock
        detector.set_denoisers([denoiser])
        for steps in (1, 2, 3, 5):
            detector.config = replace(config, steps=steps, score_components=("nll", "map_max"))
            fit_statistics(detector, feats["train"], zeros(len(feats["train"])))
            calibrate(detector, feats["calib"], zeros(len(feats["calib"])))
            clock = time.perf_counter()
            with torch.no_grad():
                comps, _ = detector.score_features(feats["test"], zeros(len(feats["test"])))
                combined = detector.combine(comps, zeros(len(feats["test"])))
            score_ms = 1e3 * (time.perf_counter() - clock) / len(feats["test"])
            row = {"variant": name, "steps": steps, "train_seconds": round(train_s, 1),
                   "final_loss": float(np.mean(losses[-50:])), "denoiser_ms_per_image": round(score_ms, 2),
                   "auroc": {k: round(image_metrics(v.numpy(), labels)["auroc"], 4) for k, v in comps.items()},
                   "auroc_combined": round(image_metrics(combined.numpy(), labels)["auroc"], 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        with torch.no_grad():
            for kind in ("gaussian", "reconstruction"):
                comps, _ = detector.score_features(feats["test"], zeros(len(feats["test"])), kind)
                row = {"variant": name, "method": kind,
                       "auroc": {k: round(image_metrics(v.numpy(), labels)["auroc"], 4) for k, v in comps.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"train_images": len(train_paths), "calib_images": len(calib_paths),
                                          "test_images": len(labels), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
