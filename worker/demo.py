"""``invad demo``: the whole product on one machine, with real images and no services.

1. real data: the ELPV electroluminescence solar-cell images that ship in the ``elpv-dataset`` package;
2. a model: trained on normal cells of the fixed training split (or reused from the cache);
3. a stream: ImageRefs (``file://``) of held-out normal and defective cells through the embedded
   pipeline, the same loop the Kafka worker runs, into SQLite and a folder of flagged artefacts;
4. a summary: images/s, flagged images, image AUROC, and where the overlays are.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

DEMO_CONFIG_VERSION = 2  # bump when the demo's training recipe changes, so cached bundles are retrained


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train (or reuse) a model on real ELPV cells and stream test cells through "
                                    "the embedded pipeline")
    p.add_argument("--out", default="invad-demo", help="folder for the run's SQLite file and artefacts")
    p.add_argument("--cache", default=None, help="where the demo bundle is kept (default $INVAD_CACHE/demo)")
    p.add_argument("--train-images", type=int, default=200, help="normal cells to train on (default 200)")
    p.add_argument("--iterations", type=int, default=600, help="denoiser training steps (default 600)")
    p.add_argument("--test-images", type=int, default=120, help="normal and as many defective cells to stream")
    p.add_argument("--retrain", action="store_true", help="ignore a cached bundle")
    p.add_argument("--device", default=None)
    p.set_defaults(run=run_demo)


def _cache_dir(args) -> Path:
    if args.cache:
        return Path(args.cache)
    return Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad")) / "demo"


def _bundle(args, cache: Path) -> tuple[Path, bool]:
    """The demo bundle, trained unless a cached one of the same recipe exists; (path, reused)."""
    from .core.config import DetectorConfig
    from .core.data import elpv_split
    from .core.train import TrainConfig, train

    recipe = {"version": DEMO_CONFIG_VERSION, "train_images": args.train_images, "iterations": args.iterations}
    bundle, stamp = cache / "bundle", cache / "recipe.json"
    if not args.retrain and bundle.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return bundle, True
    train_samples = elpv_split()[0][: args.train_images]
    normals = cache / "train-normals"
    normals.mkdir(parents=True, exist_ok=True)
    for sample in train_samples:  # links keep the training folder a plain folder of normal images
        link = normals / sample.path.name
        if not link.exists():
            link.symlink_to(sample.path)
    print(f"demo: training on {len(train_samples)} normal ELPV cells ({args.iterations} steps) ...", flush=True)
    _, summary = train([normals], bundle, DetectorConfig(name="elpv-demo"), TrainConfig(iterations=args.iterations),
                       device=args.device)
    stamp.write_text(json.dumps(recipe))
    print(f"demo: trained in {summary['seconds']['total']:.0f} s -> {bundle}", flush=True)
    return bundle, False


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
                           captured_at=now, producer="invad-demo", product="default",
                           attributes={"label": sample.label})
            handle.write(ref.to_json().decode() + "\n")
    return labels


def run_demo(args: argparse.Namespace) -> int:
    from sklearn.metrics import roc_auc_score

    from .core.data import elpv_split
    from .pipeline.cli import configure_logging, run_embedded

    configure_logging("warning")  # the summary is the demo's output; a line per scored cell is noise here
    if args.train_images < 16 or args.iterations < 1 or args.test_images < 1:
        raise ValueError("--train-images must be >= 16, --iterations and --test-images >= 1")
    started = time.perf_counter()
    cache = _cache_dir(args)
    cache.mkdir(parents=True, exist_ok=True)
    bundle, reused = _bundle(args, cache)
    if reused:
        print(f"demo: reusing the cached model {bundle} (--retrain to train again)", flush=True)

    test = elpv_split()[1]
    normal = [s for s in test if s.label == 0][: args.test_images]
    defective = [s for s in test if s.label == 1][: args.test_images]
    run = Path(args.out) / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    run.mkdir(parents=True, exist_ok=True)
    refs = run / "refs.jsonl"
    labels = _write_refs(refs, normal + defective)
    print(f"demo: streaming {len(labels)} cells ({len(normal)} normal, {len(defective)} defective) "
          "through the embedded pipeline ...", flush=True)
    summary = run_embedded(refs, str(bundle), run / "scores.sqlite", run / "artefacts", device=args.device)
    scores = summary.pop("scores")
    ids = [i for i in labels if i in scores]
    auroc = roc_auc_score([labels[i] for i in ids], [scores[i] for i in ids]) if len(set(labels.values())) > 1 else None
    overlays = sorted((run / "artefacts").rglob("overlay.png"))
    flagged_defective = sum(1 for p in overlays if labels.get(p.parent.name) == 1)
    result = {
        "images": summary["scored"], "images_per_second": summary["images_per_s"], "flagged": summary["flagged"],
        "flagged_defective": flagged_defective, "image_auroc": auroc, "dead_lettered": summary["dead_lettered"],
        "sqlite": summary["sqlite"], "artefacts": summary["out_dir"], "bundle": str(bundle),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    (run / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n=== invad demo ===")
    print(f"scored            {result['images']} images at {result['images_per_second']:.1f} images/s")
    print(f"flagged           {result['flagged']} ({flagged_defective} of them defective cells)")
    print(f"image AUROC       {auroc:.3f}" if auroc is not None else "image AUROC       n/a")
    print(f"scores            {result['sqlite']}")
    print(f"overlays          {run / 'artefacts'} ({len(overlays)} files), e.g.")
    for path in overlays[:3]:
        print(f"                  {path}")
    print(f"summary           {run / 'summary.json'}  ({result['seconds_total']} s in all)")
    return 0
