"""``invad quality``: the multi-seed ELPV protocol (``seeds``), the synthetic localisation set (``defects``)
and tiles against squashing on ELPV cell pairs (``pairs``)."""

from __future__ import annotations

import json
from pathlib import Path

# The names of worker.quality.protocol.HYPOTHESES (that module imports torch; a test keeps the two equal).
HYPOTHESIS_NAMES = ("base", "nbhd3", "type", "type-nbhd3", "grid8", "type-grid8", "lite2", "type-lite2",
                    "type-full", "type-150it", "type-600it", "type-320", "type-flips", "type-wide", "type-narrow",
                    "clusters2", "clusters4", "type-sub2", "type-k3", "type-pos", "type-s2", "type-s32",
                    "type-posnorm", "type-ens3", "shipped", "type-posnorm-ens3", "shipped-ens3", "shipped-ens5",
                    "shipped-ens3-tgrid", "shipped-ens3-lite2", "shipped-ens3-attn", "shipped-ens3-bag",
                    "shipped-ens3-calib30", "shipped-ens3+lite2", "shipped-ens3-maplite2",
                    "shipped-ens3-maplite2-calib30",
                    "long", "wide")


def add_quality(sub) -> None:
    p = sub.add_parser("quality", help="multi-seed ELPV evaluation protocol, synthetic-defect localisation set",
                       description="seeds: train and evaluate N seeds per hypothesis on ELPV (image AUROC, AP) and "
                                   "the synthetic-defect set (pixel AUROC, AUPRO), with both baselines; writes "
                                   "OUT.json, OUT.md, OUT.png. defects: write the localisation set (MVTec layout) "
                                   "that `invad eval` reads.")
    q = p.add_subparsers(dest="quality_command", required=True)
    s = q.add_parser("seeds", help="train and evaluate N seeds, mean and spread per metric")
    s.add_argument("--out", required=True, help="JSON report path (.md and .png written beside it)")
    s.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    s.add_argument("--hypotheses", default="base", help=f"comma list of {', '.join(HYPOTHESIS_NAMES)} (default base)")
    s.add_argument("--iterations", type=int, default=None, help="denoiser training steps (default: training's)")
    s.add_argument("--batch-size", type=int, default=None, help="denoiser training batch (default: training's)")
    s.add_argument("--no-reconstruction", action="store_true",
                   help="skip the reconstruction baseline (10 network evaluations per image: the costliest row)")
    s.add_argument("--steps", default="3,5", help="inversion step counts to score (default 3,5)")
    s.set_defaults(run=_run_seeds)
    d = q.add_parser("defects", help="write the ELPV synthetic-defect localisation set")
    d.add_argument("out", help="folder to write (MVTec AD layout: test/good, test/<kind>, ground_truth/<kind>)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--good", type=int, default=100, help="untouched held-out normal cells (default 100)")
    d.add_argument("--per-kind", type=int, default=50, help="cells per defect kind (default 50)")
    d.set_defaults(run=_run_defects)
    t = q.add_parser("pairs", help="tiles against squashing on ELPV cell pairs (parts twice as wide as tall)")
    t.add_argument("out", help="JSON report path (.md beside it); the pair set is written to OUT's stem + '-set'")
    t.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    t.add_argument("--iterations", type=int, default=None, help="denoiser training steps (default: training's)")
    t.set_defaults(run=_run_pairs)


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="recalibrate a bundle's threshold on fresh normal images, without retraining",
                       description="Re-standardises the bundle's image score and resets its threshold on NORMALS "
                                   "(a folder of normal images from the line: new camera, new lighting). Reports the "
                                   "95 %% upper bound of the false-positive rate, and warns below "
                                   "100 images.")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("normals", help="folder of normal images (or an MVTec category: its train/good)")
    p.add_argument("--out", default=None, help="bundle folder to write (default: overwrite BUNDLE)")
    p.add_argument("--target-fpr", type=float, default=None, help="new target false-positive rate (default: the bundle's)")
    p.add_argument("--product", default=None,
                   help="the product whose normals these are (required for a class-conditional bundle)")
    p.add_argument("--device", default=None)
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args) -> int:
    import sys

    from .thresholds import recalibrate

    if args.target_fpr is not None and not 0.0 < args.target_fpr < 1.0:
        raise ValueError(f"--target-fpr must be in (0, 1), got {args.target_fpr}")
    summary = recalibrate(args.bundle, args.normals, args.out, args.device, args.target_fpr, product=args.product)
    if summary["warning"]:
        print(f"invad calibrate: warning: {summary['warning']}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} takes comma-separated integers like 0,1,2, got {text!r}") from None


def _run_seeds(args) -> int:
    from dataclasses import replace

    from ..core.train import TrainConfig
    from .protocol import markdown, run

    overrides = {"iterations": args.iterations, "batch_size": args.batch_size}
    base = replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    seeds = _ints(args.seeds, "seeds")
    summary = run([h.strip() for h in args.hypotheses.split(",") if h.strip()], seeds, args.out, base,
                  _ints(args.steps, "steps"), reconstruction=not args.no_reconstruction)
    print(markdown(summary, seeds), end="")
    return 0


def _run_defects(args) -> int:
    from ..core.data import elpv_split
    from .defects import write_localisation_set

    normals = [s.path for s in elpv_split()[1] if s.label == 0]
    root = write_localisation_set(Path(args.out), normals, args.seed, args.good, args.per_kind)
    print(json.dumps({"written": str(root)}))
    return 0


def _run_pairs(args) -> int:
    from dataclasses import replace

    from ..core.train import TrainConfig
    from .pairs import compare_layouts, markdown, write_pair_set

    out = Path(args.out)
    base = TrainConfig() if args.iterations is None else replace(TrainConfig(), iterations=args.iterations)
    root = write_pair_set(out.with_name(out.stem + "-set"))
    print(markdown(compare_layouts(root, _ints(args.seeds, "seeds"), out, base)), end="")
    return 0
