"""``invad demo``: the whole product on one machine, with real images and no services.

1. real data: the ELPV electroluminescence solar-cell images that ship in the ``elpv-dataset`` package;
2. a model: one class per cell type (mono, poly: a line makes one kind), trained on normal cells of the
   fixed training split, its threshold calibrated on further normal cells of that split, enough for the
   rate to hold (``invad calibrate``); or reused from the cache;
3. a stream: ImageRefs (``file://``) of held-out normal and defective cells through the embedded
   pipeline, the same loop the Kafka worker runs, into SQLite and a folder of flagged artefacts;
4. a summary: images/s, flagged images, image AUROC, the false-positive rate on the held-out normals
   against its target, and where the overlays are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

DEMO_CONFIG_VERSION = 7  # bump when the demo's training recipe changes, so cached bundles are retrained


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train (or reuse) a model on real ELPV cells and stream test cells through "
                                    "the embedded pipeline")
    p.add_argument("--out", default="invad-demo", help="folder for the run's SQLite file and artefacts")
    p.add_argument("--cache", default=None, help="where the demo bundle is kept (default $INVAD_CACHE/demo)")
    p.add_argument("--train-images", type=int, default=200, help="normal cells to train on (default 200)")
    p.add_argument("--iterations", type=int, default=300, help="denoiser training steps (default 300, as invad train)")
    p.add_argument("--calibration-images", type=int, default=150,
                   help="further normal cells per cell type to calibrate the threshold on (default 150)")
    p.add_argument("--test-images", type=int, default=120, help="normal and as many defective cells to stream")
    p.add_argument("--retrain", action="store_true", help="ignore a cached bundle")
    p.add_argument("--device", default=None)
    p.set_defaults(run=run_demo)


def _cache_dir(args) -> Path:
    if args.cache:
        return Path(args.cache)
    return Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad")) / "demo"


def _new_run_folder(out: Path) -> Path:
    """out/run-<date>-<time>, with -2, -3, ... when a run of the same second has it: each run streams
    into a store of its own (a store that already holds a cell's record would skip the cell)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("run-%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        run = out / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise ValueError(f"{out} already holds 999 runs of {stamp}; choose another --out")


def _link_cells(folder: Path, samples) -> Path:
    """A plain folder of links to exactly ``samples``' images (what ``invad train`` and ``invad calibrate``
    read); links of an earlier recipe are removed first."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for sample in samples:
        (folder / sample.path.name).symlink_to(sample.path)
    return folder


def _bundle(args, cache: Path) -> tuple[Path, bool, dict]:
    """The demo bundle, trained and calibrated unless a cached one of the same recipe exists;
    (path, reused, calibration summary per cell type)."""
    from .core.config import DetectorConfig
    from .core.data import ELPV_TYPES, elpv_split
    from .core.train import TrainConfig, train
    from .quality.thresholds import recalibrate

    recipe = {"version": DEMO_CONFIG_VERSION, "train_images": args.train_images, "iterations": args.iterations,
              "calibration_images": args.calibration_images}
    bundle, stamp, calibration = cache / "bundle", cache / "recipe.json", cache / "calibration.json"
    if (not args.retrain and bundle.is_dir() and stamp.is_file() and calibration.is_file()
            and json.loads(stamp.read_text()) == recipe):
        return bundle, True, json.loads(calibration.read_text())
    train_split = elpv_split()[0]
    first = train_split[: args.train_images]  # the training cells, then the calibration cells of each type
    further = {kind: [s for s in train_split[args.train_images:] if s.cls == kind][: args.calibration_images]
               for kind in ELPV_TYPES}
    for kind, cells in further.items():
        if len(cells) < args.calibration_images:
            raise ValueError(f"--calibration-images {args.calibration_images}: ELPV's training split has only "
                             f"{len(cells)} further {kind} cells after the first {args.train_images}; lower either")
    folders = [_link_cells(cache / "train-normals" / kind, [s for s in first if s.cls == kind]) for kind in ELPV_TYPES]
    print(f"demo: training on {len(first)} normal ELPV cells ({args.iterations} steps, one class per cell type) ...",
          flush=True)
    _, summary = train(folders, bundle, DetectorConfig(name="elpv-demo"), TrainConfig(iterations=args.iterations),
                       device=args.device)
    print(f"demo: trained in {summary['seconds']['total']:.0f} s -> {bundle}", flush=True)
    report = {}
    for kind, cells in further.items():
        folder = _link_cells(cache / "calibration-normals" / kind, cells)
        report[kind] = recalibrate(bundle, folder, device=args.device, product=kind, progress=False)
        print(f"demo: {kind} threshold calibrated on {len(cells)} further normal cells "
              f"(95 % bound of its false-positive rate: {report[kind]['fpr_upper_95']:.1%})", flush=True)
    calibration.write_text(json.dumps(report, indent=2) + "\n")
    stamp.write_text(json.dumps(recipe))
    return bundle, False, report


def _write_refs(path: Path, samples) -> dict[str, int]:
    """A JSON-lines file of ImageRefs for ``samples``; returns image_id -> label."""
    from schemas import ImageRef

    labels = {}
    now = datetime.now(timezone.utc)
    with open(path, "w") as handle:
        for sample in samples:
            image_id = f"elpv-{sample.path.stem}"
            labels[image_id] = sample.label
            ref = ImageRef(image_id=image_id, uri=sample.path.resolve().as_uri(), line_id="elpv-demo",
                           captured_at=now, producer="invad-demo", product=sample.cls,
                           attributes={"label": sample.label})
            handle.write(ref.to_json().decode() + "\n")
    return labels


def run_demo(args: argparse.Namespace) -> int:
    from sklearn.metrics import roc_auc_score

    from .core.data import elpv_split
    from .pipeline.cli import configure_logging, run_embedded

    configure_logging("warning")  # the summary is the demo's output; a line per scored cell is noise here
    if args.train_images < 16 or args.iterations < 1 or args.test_images < 1 or args.calibration_images < 2:
        raise ValueError("--train-images must be >= 16, --calibration-images >= 2, --iterations and --test-images >= 1")
    started = time.perf_counter()
    cache = _cache_dir(args)
    cache.mkdir(parents=True, exist_ok=True)
    bundle, reused, calibration = _bundle(args, cache)
    if reused:
        print(f"demo: reusing the cached model {bundle} (--retrain to train again)", flush=True)

    test = elpv_split()[1]
    normal = [s for s in test if s.label == 0][: args.test_images]
    defective = [s for s in test if s.label == 1][: args.test_images]
    run = _new_run_folder(Path(args.out))
    refs = run / "refs.jsonl"
    labels = _write_refs(refs, normal + defective)
    print(f"demo: streaming {len(labels)} cells ({len(normal)} normal, {len(defective)} defective) "
          "through the embedded pipeline ...", flush=True)
    summary = run_embedded(refs, str(bundle), run / "scores.sqlite", run / "artefacts", device=args.device)
    scores = summary.pop("scores")
    ids = [i for i in labels if i in scores]
    scored_labels = [labels[i] for i in ids]
    auroc = roc_auc_score(scored_labels, [scores[i] for i in ids]) if len(set(scored_labels)) > 1 else None
    overlays = sorted((run / "artefacts").rglob("overlay.png"))
    flagged_defective = sum(1 for p in overlays if labels.get(p.parent.name) == 1)
    flagged_normal = sum(1 for p in overlays if labels.get(p.parent.name) == 0)
    target = next(iter(calibration.values()))["target_fpr"]
    result = {
        "images": summary["scored"], "images_per_second": summary["images_per_s"], "flagged": summary["flagged"],
        "flagged_defective": flagged_defective, "image_auroc": auroc, "dead_lettered": summary["dead_lettered"],
        "normal_fpr": flagged_normal / len(normal) if normal else None, "target_fpr": target,
        "calibration": calibration,
        "sqlite": summary["sqlite"], "artefacts": summary["out_dir"], "bundle": str(bundle),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    (run / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n=== invad demo ===")
    print(f"scored            {result['images']} images at {result['images_per_second']:.1f} images/s")
    print(f"flagged           {result['flagged']} ({flagged_defective} of them defective cells)")
    print(f"image AUROC       {auroc:.3f}" if auroc is not None else "image AUROC       n/a")
    bounds = ", ".join(f"{kind} {c['fpr_upper_95']:.1%} from {c['calibration_images']} cells"
                       for kind, c in calibration.items())
    print(f"false positives   {flagged_normal} of {len(normal)} normal cells ({result['normal_fpr']:.1%}); "
          f"target {target:.0%}, 95 % bound {bounds}")
    print(f"scores            {result['sqlite']}")
    print(f"overlays          {run / 'artefacts'} ({len(overlays)} files), e.g.")
    for path in overlays[:3]:
        print(f"                  {path}")
    print(f"summary           {run / 'summary.json'}  ({result['seconds_total']} s in all)")
    return 0
