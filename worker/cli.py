"""The ``invad`` command: train, score, eval, bench, demo (detector), produce, topics, work, models (pipeline) and alerts.

Each subcommand validates its arguments up front; a bad value exits with status 2 and a message that
names it and how to fix it. torch is imported only inside the subcommands that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common.cliargs import UsageError, positive_int


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


# -- train ----------------------------------------------------------------------------------------
def _tiles(text: str) -> str | tuple[int, int]:
    """'auto' or 'ROWSxCOLS' (the range is checked by DetectorConfig)."""
    if text == "auto":
        return text
    try:
        rows, cols = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS (e.g. 1x2 for parts twice as wide as tall) or auto, "
                                         f"got {text!r}") from None
    return rows, cols


# worker.core.train.AUGMENTATIONS, worker.core.config.FEATURE_NORMS, DetectorConfig.members, MAX_MEMBERS and
# DetectorConfig.map_backbone (those modules import torch; tests keep the copies equal)
AUGMENT_CHOICES = ("none", "flips", "dihedral")
FEATURE_NORM_CHOICES = ("channel", "position")
DEFAULT_MEMBERS = 3
MAX_MEMBERS = 8
DEFAULT_MAP_BACKBONE = "efficientnet-lite2"


def _map_backbone(text: str) -> str:
    """A map backbone's name, or "none" (no map backbone: "")."""
    return "" if text.strip().lower() in ("none", "") else text.strip()


def _members(text: str) -> int:
    value = positive_int(text)
    if value > MAX_MEMBERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_MEMBERS} denoisers, got {value}: each costs a training "
                                         "and S network evaluations per image")
    return value


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a detector bundle on normal images",
                       description="DATA: a folder of normal images, an MVTec AD category folder (its train/good), "
                                   "'elpv' (the packaged solar-cell set, fixed split; elpv/mono or elpv/poly for one "
                                   "cell type), or several of these for one class-conditional bundle (class = "
                                   "folder name, e.g. elpv/mono elpv/poly).")
    p.add_argument("data", nargs="+", help="folder(s) of normal images, MVTec AD categories, 'elpv' or elpv/<type>")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--name", default=None, help="model name stored in the bundle (default: the --out folder name)")
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help="efficientnet-lite0..4 (packaged weights), efficientnet_b4 or wide_resnet50_2 (--backbone-weights)")
    p.add_argument("--backbone-weights", default=None, help="ImageNet weight file (.pth state dict or .safetensors)")
    p.add_argument("--map-backbone", type=_map_backbone, default=DEFAULT_MAP_BACKBONE,
                   help="a second extractor (packaged weights) whose own ensemble adds its map to the backbone's; "
                        f"none to go without (default {DEFAULT_MAP_BACKBONE or 'none'}; costs its backbone pass "
                        "and as many denoisers again)")
    p.add_argument("--strides", type=_int_list, default=[4, 8, 16], help="feature strides to tap (default 4,8,16)")
    p.add_argument("--grid-stride", type=int, choices=(4, 8, 16), default=None,
                   help="stride of the latent grid (default: the coarsest tap's; 8 gives 32 x 32 at 256 px)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--feature-norm", choices=FEATURE_NORM_CHOICES, default="position",
                   help="what the denoiser models: each position's deviation from the class's normal there "
                        "(position, default: aligned parts) or the features standardised per channel only "
                        "(channel: the paper's; parts that sit anywhere in the frame)")
    p.add_argument("--members", type=_members, default=DEFAULT_MEMBERS,
                   help=f"denoisers in the ensemble, each trained with its own seed; their latents' maps and NLLs "
                        f"are averaged (1..{MAX_MEMBERS}, default {DEFAULT_MEMBERS}; each costs a training and S "
                        "network evaluations per image)")
    p.add_argument("--steps", type=positive_int, default=3, help="DDIM inversion steps S (1..10, default 3)")
    p.add_argument("--score", default="nll,map_top",
                   help="score components: nll, range, map_max, map_mean, map_top (default nll,map_top); with a map "
                        "backbone each map component is also scored on its map, as a column of its own")
    p.add_argument("--target-fpr", type=_probability, default=0.01, help="false-positive rate on normals (default 0.01)")
    p.add_argument("--validation", default=None, help="labelled MVTec-layout category (or 'elpv'): F1-max threshold")
    p.add_argument("--iterations", type=positive_int, default=None, help="denoiser training steps (default 300)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="training batch (default 16)")
    p.add_argument("--width", type=positive_int, default=None, help="denoiser hidden channels")
    p.add_argument("--blocks", type=positive_int, default=None, help="denoiser residual blocks")
    p.add_argument("--kernel-size", type=int, choices=(1, 3, 5), default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--calib-fraction", type=_probability, default=None, help="held-out normal fraction (default 0.2)")
    p.add_argument("--augment", choices=AUGMENT_CHOICES, default=None,
                   help="training views that stay normal for this product: flips (mirror images), dihedral "
                        "(mirrors and 90-degree rotations, for textures), none (default; oriented objects)")
    p.add_argument("--tiles", type=_tiles, default=(1, 1), metavar="ROWSxCOLS|auto",
                   help="square tiles that cover each image, so that parts that are not square are not squashed: "
                        "1x2 for parts twice as wide as tall; auto picks it from the training images' median "
                        "aspect ratio (default 1x1: the image squashed to one square)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between checkpoints (default 250)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint after an interruption")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from dataclasses import replace

    from .core.config import DetectorConfig
    from .core.train import TrainConfig, tile_layout, train

    tiles = tile_layout(args.data) if args.tiles == "auto" else args.tiles
    detector_config = DetectorConfig(name=args.name or Path(args.out).name, image_size=args.image_size, tiles=tiles,
                                     backbone=args.backbone, map_backbone=args.map_backbone,
                                     strides=tuple(args.strides),
                                     grid_stride=args.grid_stride or 0, steps=args.steps,
                                     score_components=tuple(c.strip() for c in args.score.split(",") if c.strip()),
                                     target_fpr=args.target_fpr, feature_norm=args.feature_norm,
                                     members=args.members)
    overrides = {"iterations": args.iterations, "batch_size": args.batch_size, "width": args.width,
                 "num_blocks": args.blocks, "kernel_size": args.kernel_size, "learning_rate": args.lr,
                 "calib_fraction": args.calib_fraction, "checkpoint_every": args.checkpoint_every,
                 "augment": args.augment}
    train_config = replace(TrainConfig(seed=args.seed), **{k: v for k, v in overrides.items() if v is not None})
    _, summary = train(args.data, args.out, detector_config, train_config, args.backbone_weights,
                       args.validation, args.device, args.resume)
    print(json.dumps(summary, indent=2))
    return 0


# -- score ----------------------------------------------------------------------------------------
def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score image files or folders; JSON lines on stdout")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--model", required=True, help="bundle folder")
    p.add_argument("--product", default=None, help="product class for a class-conditional bundle")
    p.add_argument("--overlays", default=None, help="write heat-map overlay PNGs into this folder")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", default=None)
    p.set_defaults(run=_run_score)


def _run_score(args) -> int:
    from .core.data import list_images
    from .core.detector import Detector
    from .core.images import ImageDecodeError, load_image
    from .core.overlay import overlay_png

    files: list[Path] = []
    for entry in map(Path, args.paths):
        if entry.is_dir():
            files += list_images(entry)
        elif entry.is_file():
            files.append(entry)
        else:
            raise UsageError(f"{entry} is neither a file nor a folder")
    if not files:
        raise UsageError(f"no images found in {', '.join(args.paths)}")
    detector = Detector.from_pretrained(args.model, args.device)
    classes = None if args.product is None else [args.product]
    overlays = Path(args.overlays) if args.overlays else None
    if overlays:
        overlays.mkdir(parents=True, exist_ok=True)
    failures = 0
    for start in range(0, len(files), args.batch_size):
        batch, images = [], []
        for path in files[start:start + args.batch_size]:
            try:
                images.append(load_image(path))
                batch.append(path)
            except ImageDecodeError as error:
                failures += 1
                print(json.dumps({"path": str(path), "error": error.reason, "message": error.message}), flush=True)
                print(f"invad score: skipped {error.message}", file=sys.stderr)
        if not images:
            continue
        result = detector.predict(images, None if classes is None else classes * len(images))
        for i, path in enumerate(batch):
            record = {"path": str(path), "score": round(float(result.pred_score[i]), 6),
                      "is_anomaly": bool(result.pred_label[i]), "threshold": round(float(result.threshold[i]), 6)}
            if overlays:
                name = overlays / f"{path.stem}_{abs(hash(str(path.resolve()))) % 10**8:08d}.png"
                name.write_bytes(overlay_png(images[i], result.anomaly_map[i], float(result.threshold[i])))
                record["overlay"] = str(name)
            print(json.dumps(record), flush=True)
    return 1 if failures else 0


# -- eval -----------------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a bundle on an MVTec AD category or 'elpv'")
    p.add_argument("data", help="MVTec AD category folder (test/, ground_truth/) or 'elpv'")
    p.add_argument("--model", required=True)
    p.add_argument("--report", required=True, help="JSON report path; a .md table and PNG plots are written beside it")
    p.add_argument("--compare", action="store_true", help="add the reconstruction and per-position Gaussian baselines")
    p.add_argument("--steps", type=_int_list, default=None, help="also report these inversion step counts")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", default=None)
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    from .core.detector import Detector
    from .core.evaluate import evaluate_path, markdown_table, write_report

    detector = Detector.from_pretrained(args.model, args.device)
    report = evaluate_path(detector, args.data, compare=args.compare, steps=args.steps, batch_size=args.batch_size)
    paths = write_report(report, args.report)
    print(markdown_table(report), end="")
    print(json.dumps(paths))
    return 0


# -- bench ----------------------------------------------------------------------------------------
def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0,0.1, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in [0, 1], got {text!r}")
    return values


def _add_bench(sub) -> None:
    env = os.environ.get
    p = sub.add_parser("bench", help="throughput and per-stage latency (detector), or the pipeline through real services")
    p.add_argument("target", nargs="?", default="detector", choices=("detector", "pipeline"))
    p.add_argument("--model", default=None, help="bundle (default: the untrained default architecture)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32, 64],
                   help="batch sizes (default 1,8,32,64); the pipeline target uses only the largest")
    p.add_argument("--steps", type=_int_list, default=[1, 2, 3, 4, 5])
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--image-size", type=positive_int, default=256,
                   help="input size of the untrained default detector; with --detector null, of the images")
    p.add_argument("--grid-stride", type=int, choices=(4, 8, 16), default=None,
                   help="latent grid stride of the untrained default detector (default: 16, a 16 x 16 grid at 256 px)")
    p.add_argument("--backbone", default=None,
                   help="backbone of the untrained default detector (default efficientnet-lite0; packaged weights)")
    p.add_argument("--map-backbone", type=_map_backbone, default=None,
                   help=f"map backbone of the untrained default detector, or none (default "
                        f"{DEFAULT_MAP_BACKBONE or 'none'})")
    p.add_argument("--feature-norm", choices=FEATURE_NORM_CHOICES, default=None,
                   help="the untrained default detector's denoiser input (default position)")
    p.add_argument("--members", type=_members, default=None,
                   help=f"denoisers in the untrained default detector's ensemble (default {DEFAULT_MEMBERS})")
    p.add_argument("--out", default="bench.json", help="JSON file to write")
    p.add_argument("--device", default=None)
    p.add_argument("--compile", choices=("off", "default", "reduce-overhead", "max-autotune"), default="off",
                   help="detector target: torch.compile the backbone and denoiser first (reduce-overhead = "
                        "CUDA graphs); the warm-up run pays the compilation (default off)")
    pipe = p.add_argument_group("pipeline target (real Kafka, Redis and S3)")
    pipe.add_argument("--images", type=positive_int, default=200, help="images per pipeline run (default 200)")
    pipe.add_argument("--workers-scaling", choices=("on", "off"), default="on",
                      help="also run 2 workers (InvAD: 1 vs 2 limited to one core each) (default on)")
    pipe.add_argument("--detector", choices=("invad", "null"), default="invad",
                      help="null: a cost-free detector, to measure the plumbing's own ceiling (default invad)")
    pipe.add_argument("--flagged-fraction", type=_fractions, default=None,
                      help="--detector null: fractions of images flagged, one run each (default 0,0.1)")
    pipe.add_argument("--stage-profile", choices=("on", "off"), default="on",
                      help="sample each worker's CPU by stage (default on)")
    pipe.add_argument("--watch-pids", default=None, help="also report CPU of these processes: name=pid,...")
    pipe.add_argument("--bootstrap", default=env("INVAD_KAFKA_BOOTSTRAP"), help="Kafka bootstrap (default: $INVAD_KAFKA_BOOTSTRAP)")
    pipe.add_argument("--redis-url", default=env("INVAD_REDIS_URL"), help="Redis URL (default: $INVAD_REDIS_URL)")
    pipe.add_argument("--s3-endpoint", default=env("INVAD_S3_ENDPOINT"),
                      help="S3 endpoint (default: $INVAD_S3_ENDPOINT, else AWS)")
    pipe.add_argument("--s3-region", default=env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
                      help="S3 region (default: $AWS_REGION, else $AWS_DEFAULT_REGION, else us-east-1)")
    pipe.add_argument("--s3-access-key", default=env("AWS_ACCESS_KEY_ID"), help="(default: $AWS_ACCESS_KEY_ID)")
    pipe.add_argument("--s3-secret-key", default=env("AWS_SECRET_ACCESS_KEY"),
                      help="(default: $AWS_SECRET_ACCESS_KEY; prefer the variable for a real secret)")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    if args.target == "pipeline":
        from .bench import pipeline

        return pipeline.run(args)
    from .bench import detector

    return detector.run(args)


# -- soak -----------------------------------------------------------------------------------------
def _add_soak(sub) -> None:
    p = sub.add_parser("soak", help="references through workers on private services while they fail; counts and figures",
                       description="Starts private Kafka, Redis and S3 (scripts/services.sh), trains a tiny model, "
                                   "runs worker processes through a worker kill, a broker restart, a Redis restart "
                                   "and an S3 outage, then checks where every reference went. Needs a checkout.")
    from .bench.soak import add_arguments

    add_arguments(p)
    p.set_defaults(run=_run_soak)


def _run_soak(args) -> int:
    from .bench import soak

    return soak.run(args)


# -- entry point ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_score(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_soak(sub)
    from .demo import add_demo

    add_demo(sub)
    from .quality.cli import add_calibrate, add_quality

    add_quality(sub)
    add_calibrate(sub)
    from producers import cli as produce_cli

    produce = sub.add_parser("produce", help="publish image references to Kafka")
    produce_cli.add_arguments(produce)
    produce.set_defaults(run=produce_cli.run)
    from producers import topics as topics_cli

    topics = sub.add_parser("topics", help="create the images and dead-letter topics, or show them")
    topics_cli.add_arguments(topics)
    topics.set_defaults(run=topics_cli.run)
    from .pipeline import cli as work_cli

    work = sub.add_parser("work", help="run the streaming worker (Kafka, or embedded with --source)")
    work_cli.add_arguments(work)
    work.set_defaults(run=work_cli.run)
    from .alerts import cli as alerts_cli

    alerts = sub.add_parser("alerts", help="consume the Redis alert stream: print each alert or POST it to a webhook")
    alerts_cli.add_arguments(alerts)
    alerts.set_defaults(run=alerts_cli.run)

    from .pipeline import models_cli

    models = sub.add_parser("models", help="publish, activate, roll back and list model versions (switched by "
                            "running workers without a restart)")
    models_cli.add_arguments(models)
    models.set_defaults(run=models_cli.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"invad {args.command}: interrupted", file=sys.stderr)
        return 130
    except ValueError as error:  # every validation error of the project is a ValueError subclass
        print(f"invad {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
