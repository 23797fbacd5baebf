"""The multi-seed evaluation protocol: train N seeds on ELPV, report mean and spread of every metric.

For each hypothesis (a training, feature or class variant) and each seed:
1. split the ELPV training normals with the seed (as ``invad train elpv --seed N`` does; per cell type
   for the ``type`` hypotheses, as ``invad train elpv/mono elpv/poly`` does), standardise, train the
   denoiser with the real training code, fit position statistics and calibrate, per class;
2. score the ELPV test split (image AUROC, AP, and the calibrated threshold's false-positive rate on its
   603 normals) and the synthetic localisation set (pixel AUROC, AUPRO) with every *scoring variant*,
   which need no retraining: the shipped calibrated score at S = 3 and 5, the NLL, map_max, top-k of the
   map, NLL + top-16, and an ensemble of the latents x_1..x_S the inversion passes through; plus both
   baselines (reconstruction, per-position Gaussian) on the same features.
Backbone features are extracted once and cached (:mod:`worker.quality.features`), so a hypothesis costs
its denoiser trainings. The localisation set is for maps only: its image AUROC is reported, but the image
score is chosen on ELPV alone. Milliseconds per image count the denoiser and scoring on cached features
(the backbone, shared by every row, is timed once).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import DetectorConfig
from ..core.data import ELPV_TYPES, elpv_split, mvtec_test_set
from ..core.detector import Detector, ensemble_scores, standardised_scores
from ..core.evaluate import pixel_maps
from ..core.images import load_mask
from ..core.metrics import aupro, image_metrics, pixel_auroc
from ..core.scoring import class_standardisers
from ..core.train import (AUGMENTATIONS, TrainConfig, build_detector, calibrate, feature_statistics,
                          fit_feature_statistics, split_normals, train_members)
from .defects import localisation_sources, write_localisation_set
from .features import cache_root, raw_features

LOCALISATION_SET = "localisation-v1"
TOPK = (4, 16)


@dataclass(frozen=True)
class Hypothesis:
    """A variant that needs its own training: denoiser/optimiser overrides and a feature transform."""

    name: str
    train: dict = field(default_factory=dict)  # TrainConfig overrides
    detector: dict = field(default_factory=dict)  # DetectorConfig overrides (features: their own extraction)
    neighbourhood: int = 1  # average each grid position's features over a k x k neighbourhood
    by_type: bool = False  # one class per ELPV cell type (mono, poly): a class-conditional bundle
    clusters: int = 1  # split each class into this many by k-means on the cells' mean features
    # another hypothesis, trained on the same seed, whose map's top-16 mean joins this one's scores as a
    # further standardised part (rows "+companion"): an ensemble across feature extractors
    companion: str = ""
    what: str = ""


SHIPPED = {"feature_norm": "position", "score_components": ("nll", "map_top")}  # the sixth round's defaults
SHIPPED_ENS3 = {**SHIPPED, "members": 3}  # the seventh round's: the bundle defaults the eighth round varies
SHIPPED_MAP = {**SHIPPED_ENS3, "map_backbone": "efficientnet-lite2"}  # the ninth round's
HYPOTHESES = {
    "base": Hypothesis("base", what="the defaults before the sixth round (PROTOCOL_DETECTOR), one class"),
    "nbhd3": Hypothesis("nbhd3", neighbourhood=3, what="3x3 neighbourhood mean of the feature grid"),
    "type": Hypothesis("type", by_type=True, what="class-conditional on the cell type (mono, poly)"),
    "type-nbhd3": Hypothesis("type-nbhd3", neighbourhood=3, by_type=True,
                             what="class-conditional on the cell type, 3x3 neighbourhood mean"),
    "grid8": Hypothesis("grid8", detector={"grid_stride": 8}, what="32 x 32 latent grid (stride 8)"),
    "type-grid8": Hypothesis("type-grid8", detector={"grid_stride": 8}, by_type=True,
                             what="class-conditional on the cell type, 32 x 32 latent grid (stride 8)"),
    "lite2": Hypothesis("lite2", detector={"backbone": "efficientnet-lite2"}, what="EfficientNet-Lite2 features"),
    "type-lite2": Hypothesis("type-lite2", detector={"backbone": "efficientnet-lite2"}, by_type=True,
                             what="class-conditional on the cell type, EfficientNet-Lite2 features"),
    "type-full": Hypothesis("type-full", {"iterations": 1500, "batch_size": 32}, by_type=True,
                            what="class-conditional on the cell type, the former default (1500 steps of 32)"),
    "type-150it": Hypothesis("type-150it", {"iterations": 150}, by_type=True,
                             what="class-conditional on the cell type, 150 training steps"),
    "type-600it": Hypothesis("type-600it", {"iterations": 600}, by_type=True,
                             what="class-conditional on the cell type, 600 training steps"),
    "type-320": Hypothesis("type-320", detector={"image_size": 320}, by_type=True,
                           what="class-conditional on the cell type, 320 px inputs (20 x 20 grid)"),
    "type-flips": Hypothesis("type-flips", {"augment": "flips"}, by_type=True,
                             what="class-conditional on the cell type, the denoiser also learns mirrored cells"),
    "type-wide": Hypothesis("type-wide", {"width": 512}, by_type=True,
                            what="class-conditional on the cell type, denoiser width 512 (default 256)"),
    "type-narrow": Hypothesis("type-narrow", {"width": 128}, by_type=True,
                              what="class-conditional on the cell type, denoiser width 128 (default 256)"),
    "clusters2": Hypothesis("clusters2", clusters=2, what="two classes found by k-means, no type labels"),
    "clusters4": Hypothesis("clusters4", clusters=4, what="four classes found by k-means, no type labels"),
    "type-sub2": Hypothesis("type-sub2", by_type=True, clusters=2,
                            what="each cell type split in two by k-means (four classes)"),
    "type-k3": Hypothesis("type-k3", {"kernel_size": 3}, by_type=True,
                          what="class-conditional on the cell type, 3x3 conv denoiser (sees neighbouring positions)"),
    "type-pos": Hypothesis("type-pos", {"position_embedding": True}, by_type=True,
                           what="class-conditional on the cell type, a learned embedding per grid position"),
    "type-s2": Hypothesis("type-s2", detector={"strides": (2, 4, 8, 16)}, by_type=True,
                          what="class-conditional on the cell type, taps at strides 2, 4, 8, 16 (UniAD's, as the paper)"),
    "type-s32": Hypothesis("type-s32", detector={"strides": (4, 8, 16, 32), "grid_stride": 16}, by_type=True,
                           what="class-conditional on the cell type, taps at strides 4 to 32 (context), 16 x 16 grid"),
    "type-posnorm": Hypothesis("type-posnorm", detector={"feature_norm": "position"}, by_type=True,
                               what="class-conditional on the cell type, features standardised per class and position"),
    "type-ens3": Hypothesis("type-ens3", detector={"members": 3}, by_type=True,
                            what="class-conditional on the cell type, an ensemble of three denoisers"),
    "shipped": Hypothesis("shipped", detector=SHIPPED, by_type=True, what="the sixth round's bundle defaults: type-posnorm scored by NLL + map_top, one denoiser"),
    "type-posnorm-ens3": Hypothesis("type-posnorm-ens3", detector={"feature_norm": "position", "members": 3},
                                    by_type=True, what="type-posnorm, an ensemble of three denoisers"),
    "shipped-ens3": Hypothesis("shipped-ens3", detector=SHIPPED_ENS3, by_type=True,
                               what="the bundle defaults since the seventh round: shipped with an ensemble of three denoisers"),
    "shipped-ens5": Hypothesis("shipped-ens5", detector={**SHIPPED, "members": 5}, by_type=True,
                               what="the sixth round's bundle defaults with an ensemble of five denoisers"),
    "shipped-ens3-tgrid": Hypothesis("shipped-ens3-tgrid", {"timestep_grid": 3}, detector=SHIPPED_ENS3,
                                     by_type=True, what="shipped-ens3, each denoiser trained only at the 3 "
                                     "timesteps a 3-step inversion evaluates"),
    "shipped-ens3-lite2": Hypothesis("shipped-ens3-lite2", detector={**SHIPPED_ENS3, "backbone": "efficientnet-lite2"},
                                     by_type=True, what="shipped-ens3 on EfficientNet-Lite2 features"),
    "shipped-ens3-attn": Hypothesis("shipped-ens3-attn", {"attention_heads": 4}, detector=SHIPPED_ENS3,
                                    by_type=True, what="shipped-ens3 with self-attention over the grid in "
                                    "each denoiser block (4 heads)"),
    "shipped-ens3-bag": Hypothesis("shipped-ens3-bag", {"bootstrap": True}, detector=SHIPPED_ENS3,
                                   by_type=True, what="shipped-ens3, each denoiser trained on its own bootstrap "
                                   "resample of the training cells (bagging)"),
    "shipped-ens3-calib30": Hypothesis("shipped-ens3-calib30", {"calib_fraction": 0.3},
                                       detector=SHIPPED_ENS3, by_type=True,
                                       what="shipped-ens3 calibrated on 30 % of each type's normals (over 100 "
                                       "per type) instead of 20 %"),
    "shipped-ens3+lite2": Hypothesis("shipped-ens3+lite2", detector=SHIPPED_ENS3, by_type=True,
                                     companion="shipped-ens3-lite2",
                                     what="shipped-ens3 with the map of shipped-ens3-lite2 (its own three "
                                     "denoisers on EfficientNet-Lite2 features) as a further part of the score"),
    "shipped-ens3-maplite2": Hypothesis("shipped-ens3-maplite2", detector=SHIPPED_MAP, by_type=True,
                                        what="shipped-ens3 with an EfficientNet-Lite2 map backbone (its own three "
                                        "denoisers; its map's top 1/16 joins the score, the NLL stays Lite0's): "
                                        "the bundle defaults since the ninth round"),
    "shipped-ens3-maplite2-calib30": Hypothesis("shipped-ens3-maplite2-calib30", {"calib_fraction": 0.3},
                                                detector=SHIPPED_MAP, by_type=True,
                                                what="shipped-ens3-maplite2 calibrated on 30 % of each type's "
                                                "normals (over 100 per type) instead of 20 %"),
    "long": Hypothesis("long", {"iterations": 3000}, what="3000 training steps"),
    "wide": Hypothesis("wide", {"width": 512}, what="denoiser width 512"),
}


def aggregate(features: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over each position's k x k neighbourhood (edges average what exists): (N, C, g, g) -> same."""
    if k == 1:
        return features
    return F.avg_pool2d(features, k, stride=1, padding=k // 2, count_include_pad=False)


@dataclass
class Data:
    train_paths: list[Path]
    train: torch.Tensor  # raw features of every ELPV training normal
    test: torch.Tensor
    test_labels: np.ndarray
    loc: torch.Tensor
    loc_labels: np.ndarray
    loc_masks: np.ndarray  # (N, size, size) bool
    types: dict[str, torch.Tensor]  # {"train" | "test" | "loc": cell type index (N,) into ELPV_TYPES}


def load_data(config: DetectorConfig, progress: bool = True) -> Data:
    train_samples, test = elpv_split()
    loc_root = cache_root() / LOCALISATION_SET
    normals = [s.path for s in test if s.label == 0]
    if not (loc_root / "test").is_dir():
        write_localisation_set(loc_root, normals, seed=0)
    loc = mvtec_test_set(loc_root)
    size = config.image_size
    masks = np.stack([load_mask(s.mask, (size, size)) if s.mask else np.zeros((size, size), bool) for s in loc])
    paths = [s.path for s in train_samples]
    type_of = {s.path: ELPV_TYPES.index(s.cls) for s in train_samples + test}
    sources = localisation_sources(normals, seed=0)
    index = lambda paths: torch.tensor([type_of[p] for p in paths], dtype=torch.long)  # noqa: E731
    types = {"train": index(paths), "test": index([s.path for s in test]),
             "loc": index([sources[s.path.relative_to(loc_root).as_posix()] for s in loc])}
    return Data(paths, raw_features(config, "elpv-train", paths, progress=progress),
                raw_features(config, "elpv-test", [s.path for s in test], progress=progress),
                np.array([s.label for s in test]),
                raw_features(config, LOCALISATION_SET, [s.path for s in loc], progress=progress),
                np.array([s.label for s in loc]), masks, types)


def class_labels(data: Data, hypothesis: Hypothesis, seed: int) -> tuple[tuple[str, ...], dict[str, torch.Tensor]]:
    """The class names and each cell's class ({"train" | "test" | "loc": (N,)}): its cell type when the
    hypothesis is ``by_type`` (else one class), each split into ``clusters`` by k-means on the cells' mean
    feature vectors, fitted on that class's training normals only (test cells take the nearest centre),
    seeded: what a line could do with no labels at all."""
    base = data.types if hypothesis.by_type else {k: torch.zeros_like(v) for k, v in data.types.items()}
    names = ELPV_TYPES if hypothesis.by_type else ("all",)
    k = hypothesis.clusters
    if k <= 1:
        return tuple(names), base
    from sklearn.cluster import KMeans  # optional: only this protocol's cluster hypotheses use it

    described = {"train": data.train, "test": data.test, "loc": data.loc}
    described = {part: f.mean((2, 3)) for part, f in described.items()}
    centre, scale = described["train"].mean(0), described["train"].std(0) + 1e-6
    described = {part: ((d - centre) / scale).numpy() for part, d in described.items()}
    labels = {part: torch.empty_like(v) for part, v in base.items()}
    for c in range(len(names)):
        fit = KMeans(k, n_init=10, random_state=seed).fit(described["train"][(base["train"] == c).numpy()])
        for part, classes in base.items():
            chosen = (classes == c).numpy()
            if chosen.any():
                labels[part][torch.from_numpy(chosen)] = c * k + torch.from_numpy(
                    fit.predict(described[part][chosen]).astype(np.int64))
    return tuple(f"{name}-{j}" for name in names for j in range(k)), labels


# Every hypothesis is a change to this detector: the bundle defaults as every round before the sixth
# measured them (the denoiser's input standardised per channel only, the score NLL + map_max, one denoiser).
PROTOCOL_DETECTOR = DetectorConfig(feature_norm="channel", score_components=("nll", "map_max"), members=1,
                                   map_backbone="")


def train_seed(data: Data, config: DetectorConfig, hypothesis: Hypothesis, seed: int, base_train: TrainConfig,
               progress: bool = False) -> tuple[Detector, dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """A trained detector for one seed, its standardised feature sets and their class labels.

    A hypothesis ``by_type`` splits each cell type's normals as ``invad train elpv/mono elpv/poly`` does
    (a class-conditional bundle); otherwise all normals form one class. ``seed`` chooses the split; an
    ensemble's members are trained on it as ``invad train`` trains them (:func:`train_members`).
    """
    tc = replace(base_train, seed=seed, **hypothesis.train)
    index = {p: i for i, p in enumerate(data.train_paths)}
    names, classes = class_labels(data, hypothesis, seed)
    groups = [[p for p, t in zip(data.train_paths, classes["train"]) if t == k] for k in range(len(names))]
    splits = [split_normals(group, tc.calib_fraction, seed) for group in groups]
    parts = {"train": [p for tr, _ in splits for p in tr], "calib": [p for _, ca in splits for p in ca]}
    rows = {k: [index[p] for p in v] for k, v in parts.items()}  # into data.train
    raw = {k: data.train[v] for k, v in rows.items()} | {"test": data.test, "loc": data.loc}
    views = AUGMENTATIONS[tc.augment]
    if views > 1:  # the denoiser also learns the augmented views of its training part (view-major rows)
        every_view = raw_features(config, "elpv-train", data.train_paths, progress=progress, augment=tc.augment)
        rows["learn"] = [i + v * len(data.train_paths) for v in range(views) for i in rows["train"]]
        raw["learn"] = every_view[rows["learn"]]
        del every_view
    raw = {k: aggregate(v, hypothesis.neighbourhood) for k, v in raw.items()}
    if len(names) > 1:
        config = replace(config, classes=names)
    labels = {k: classes["train"][[i % len(data.train_paths) for i in v]] for k, v in rows.items()}
    labels |= {k: classes[k] for k in ("test", "loc")}
    detector = build_detector(config, tc)
    learn = "learn" if views > 1 else "train"  # what the denoiser learns; statistics use "train"
    mean, std = feature_statistics(raw[learn])
    detector.feature_mean.copy_(mean)
    detector.feature_std.copy_(std)
    feats = {k: (v - mean[:, None, None]) / std[:, None, None] for k, v in raw.items()}
    fit_feature_statistics(detector, feats["train"], labels["train"])  # as train() does, before the denoiser
    clock = time.perf_counter()
    train_members(detector, detector.denoiser_input(feats[learn], labels[learn]), labels[learn], tc,
                  torch.device("cpu"), progress=progress)
    feats.pop("learn", None)
    labels.pop("learn", None)
    return detector, feats, labels, time.perf_counter() - clock


@torch.no_grad()
def inversion_path(detector: Detector, x0: torch.Tensor, labels: torch.Tensor, steps: int,
                   batch: int = 128) -> list[dict[str, torch.Tensor]]:
    """[scores of x_1, ..., of x_S] of the DDIM inversion of x0 (S network evaluations per member), each
    {"norm": (N, g, g), "nll": (N,)} averaged over the members as :meth:`Detector.raw_maps` averages
    x_S's, and with a map backbone "map_norm", its ensemble's norm map."""
    out: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(steps)]
    for start in range(0, len(x0), batch):
        chunk = labels[start:start + batch]
        x = detector.denoiser_input(x0[start:start + batch], chunk)
        for k, latents in enumerate(detector.inversion_path(x, chunk, steps)):
            out[k].append(ensemble_scores(latents))
        if detector.config.map_backbone:
            for k, latents in enumerate(detector.inversion_path(x, chunk, steps, group=1)):
                out[k][-1]["map_norm"] = ensemble_scores(latents)["norm"]
    return [{key: torch.cat([c[key] for c in chunks]) for key in chunks[0]} for chunks in out]


def topk_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of the k highest positions of each map: (N, g, g) -> (N,) (k = 1: the maximum)."""
    return maps.flatten(1).topk(k, dim=1).values.mean(1)


Scored = dict[str, tuple[torch.Tensor, torch.Tensor]]  # {variant: (image scores (N,), grid maps (N, g, g))}


def shipped_row(config: DetectorConfig, steps: int) -> str:
    """The name of the row that scores as a bundle of ``config`` would, at ``steps``."""
    return f"S={steps} shipped ({'+'.join(config.score_columns)})"


def _inversion_rows(detector: Detector, x0: torch.Tensor, labels: torch.Tensor, steps: int,
                    stats: list[dict]) -> Scored:
    path = inversion_path(detector, x0, labels, steps)
    # each step's maps standardised with that step's statistics, as score_features does for the last
    scored = [standardised_scores(scores, step_stats, labels) for scores, step_stats in zip(path, stats)]
    components, last = scored[-1]
    ensemble = torch.stack([grid for _, grid in scored]).mean(0)
    nll = path[-1]["nll"]
    rows = {shipped_row(detector.config, steps): (detector.combine(components, labels), last),
            f"S={steps} nll": (nll, last), f"S={steps} map_max": (components["map_max"], last)}
    for k in TOPK:
        rows[f"S={steps} top{k} mean"] = (topk_mean(last, k), last)
    rows[f"S={steps} path ensemble max"] = (topk_mean(ensemble, 1), ensemble)
    for k in TOPK:
        rows[f"S={steps} path ensemble top{k}"] = (topk_mean(ensemble, k), ensemble)
    return rows


@torch.no_grad()
def scoring_variants(detector: Detector, feats: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                     steps_list: Sequence[int] = (3, 5),
                     reconstruction: bool = True) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """{set: {variant: (image scores (N,), grid maps (N, g, g), ms per image)}} for the test and loc sets,
    and {"thresholds": {variant: the calibrated threshold of each test image (N,)}} for the shipped score.

    Statistics are fitted per class on the training normals. The shipped score is the bundle's calibrated
    one; every other image score is standardised per class on the calibration normals, which leaves a
    one-class AUROC unchanged and makes the scores of several classes comparable, as calibration does.
    """
    base_config = detector.config
    classes = len(detector.classes)
    out: dict[str, dict] = {"test": {}, "loc": {}}
    scored: dict[str, Scored] = {"calib": {}, "test": {}, "loc": {}}
    ms: dict[str, float] = {}
    thresholds: dict[str, torch.Tensor] = {}  # the bundle's threshold of each test image, shipped rows only
    fit_feature_statistics(detector, feats["train"], labels["train"])  # as training fits them
    for steps in steps_list:
        detector.config = replace(base_config, steps=steps)
        # Per-position statistics of every step's latent norm on the training normals (the last step's
        # are the bundle's position statistics, as fit_statistics computes them), then calibration.
        train_path = inversion_path(detector, feats["train"], labels["train"], steps)
        stats = [{key: class_standardisers(scores[key], labels["train"], classes)
                  for key in detector.position_statistics} for scores in train_path]
        for key, buffers in detector.position_statistics.items():
            for buffer, fitted in zip(buffers, stats[-1][key]):
                buffer.copy_(fitted)
        del train_path
        calibrate(detector, feats["calib"], labels["calib"])
        thresholds[shipped_row(detector.config, steps)] = detector.thresholds[labels["test"]].clone()
        for name in scored:
            clock = time.perf_counter()
            rows = _inversion_rows(detector, feats[name], labels[name], steps, stats)
            scored[name].update(rows)
            ms.update(dict.fromkeys(rows, 1e3 * (time.perf_counter() - clock) / len(feats[name])))
    detector.config = base_config
    baselines = [("gaussian", "per-position gaussian")]
    if reconstruction:
        baselines.append(("reconstruction", "reconstruction t=400 S=10"))
    for kind, label in baselines:
        for name in scored:
            clock = time.perf_counter()
            comps, grid = detector.score_features(feats[name], labels[name], kind)
            scored[name][label] = (comps["map_max"], grid)
            ms[label] = 1e3 * (time.perf_counter() - clock) / len(feats[name])
    for variant, (calib_scores, _) in scored["calib"].items():
        mean, std = class_standardisers(calib_scores, labels["calib"], classes)
        for name in out:
            score, grid = scored[name][variant]
            if "shipped" not in variant:
                score = (score - mean[labels[name]]) / std[labels[name]]
            out[name][variant] = (score, grid, ms[variant])
    # The NLL with the map's top-16 mean, of the last latent or of the path's average map, each
    # standardised as above (the first is what the shipped score computes).
    for steps in steps_list:
        nll = f"S={steps} nll"
        for top, combined in ((f"S={steps} top16 mean", f"S={steps} nll+top16"),
                              (f"S={steps} path ensemble top16", f"S={steps} nll+path top16")):
            for name in out:
                out[name][combined] = ((out[name][nll][0] + out[name][top][0]) / 2, out[name][top][1], ms[nll])
    out["thresholds"] = thresholds
    # what a further standardisation needs (add_companion_rows): every variant's calibration maps
    out["calib"] = {"maps": {variant: grid for variant, (_, grid) in scored["calib"].items()},
                    "labels": labels["calib"], "classes": classes}
    out["labels"] = {name: labels[name] for name in ("test", "loc")}
    return out


def add_companion_rows(variants: dict, companion: dict, steps_list: Sequence[int]) -> None:
    """Rows of a detector scored with its companion's map (both :func:`scoring_variants` of the same
    images), added to ``variants``: the companion's top-16 mean alone; the NLL with it; the NLL with both
    maps' top-16 means (what a bundle with a map backbone computes: ``DetectorConfig.score_columns``); and
    the NLL with the top-16 mean of one *joint* map, the mean of both per-position standardised maps
    (measured, not kept), standardised per class on the calibration normals as every other row is. Each
    row is the mean of its standardised parts."""
    calib = variants["calib"]
    for steps in steps_list:
        nll, top = f"S={steps} nll", f"S={steps} top16 mean"
        joint_calib = topk_mean((calib["maps"][top] + companion["calib"]["maps"][top]) / 2, 16)
        mean, std = class_standardisers(joint_calib, calib["labels"], calib["classes"])
        for part in ("test", "loc"):
            rows, other = variants[part], companion[part]
            (own_nll, _, ms), (own_top, own_map, _), (its_top, its_map, its_ms) = rows[nll], rows[top], other[top]
            joint_map = (own_map + its_map) / 2
            labels = variants["labels"][part]
            joint = (topk_mean(joint_map, 16) - mean[labels]) / std[labels]
            rows[f"S={steps} companion top16 mean"] = other[top]
            rows[f"S={steps} nll+companion top16"] = ((own_nll + its_top) / 2, its_map, ms + its_ms)
            rows[f"S={steps} nll+top16+companion top16"] = ((own_nll + own_top + its_top) / 3, joint_map, ms + its_ms)
            rows[f"S={steps} nll+joint top16"] = ((own_nll + joint) / 2, joint_map, ms + its_ms)


def _metrics(variants: dict, data: Data, size: int, sigma: float) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    pixel_cache: dict[int, tuple[float, float]] = {}
    for name, (score, _, ms) in variants["test"].items():
        m = image_metrics(score.numpy(), data.test_labels)
        rows[name] = {"image_auroc": m["auroc"], "image_ap": m["ap"], "ms_per_image": ms}
        if name in variants.get("thresholds", {}):  # the calibrated threshold's rate on held-out normals
            normal = data.test_labels == 0
            rows[name]["test_fpr"] = float((score > variants["thresholds"][name]).numpy()[normal].mean())
    for name, (score, grid, _) in variants["loc"].items():
        key = id(grid)
        if key not in pixel_cache:
            maps = pixel_maps(grid.float(), size, sigma)
            # 2 M of the 19.7 M pixels for the AUROC (uniform, seeded): the sort dominates on 2 cores.
            pixel_cache[key] = (pixel_auroc(maps, data.loc_masks, max_pixels=2_000_000), aupro(maps, data.loc_masks))
            del maps
        rows[name].update(loc_image_auroc=image_metrics(score.numpy(), data.loc_labels)["auroc"],
                          pixel_auroc=pixel_cache[key][0], aupro=pixel_cache[key][1])
    return rows


METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro", "loc_image_auroc", "ms_per_image", "test_fpr")


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and the values themselves."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": float(np.min(values)), "max": float(np.max(values)), "values": list(values)}


def summarise(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """{hypothesis/variant: {metric: {mean, std, min, max, values}}} over the seeds of ``runs``."""
    grouped: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for variant, metrics in run["rows"].items():
            row = grouped.setdefault(f"{run['hypothesis']} / {variant}", {})
            for key in METRICS:
                if key in metrics:  # test_fpr: shipped rows of runs that measured it
                    row.setdefault(key, []).append(metrics[key])
    return {name: {key: spread(v) for key, v in row.items()} for name, row in grouped.items()}


def markdown(summary: dict, seeds: Sequence[int]) -> str:
    def cell(s, digits=3):
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    lines = [f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}.", "",
             "| hypothesis / scoring | ELPV image AUROC | ELPV AP | synthetic pixel AUROC | synthetic AUPRO | "
             "FPR on held-out normals | denoiser+scoring ms/image |", "|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        fpr = cell(row["test_fpr"]) if "test_fpr" in row else "-"
        lines.append(f"| {name} | {cell(row['image_auroc'])} | {cell(row['image_ap'])} | {cell(row['pixel_auroc'])} | "
                     f"{cell(row['aupro'])} | {fpr} | {row['ms_per_image']['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    figure, axes = plt.subplots(1, 3, figsize=(15, 0.32 * len(names) + 1.5), sharey=True)
    for axis, key, title in zip(axes, ("image_auroc", "pixel_auroc", "aupro"),
                                ("ELPV image AUROC", "synthetic pixel AUROC", "synthetic AUPRO")):
        for i, name in enumerate(names):
            values = summary[name][key]["values"]
            axis.scatter(values, [i] * len(values), s=12, color="tab:blue", alpha=0.6)
            axis.errorbar(summary[name][key]["mean"], i, xerr=summary[name][key]["std"], fmt="o", color="k", ms=3)
        axis.set_title(title, fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)))
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].invert_yaxis()
    path = out.with_suffix(".png")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def stored_train_config(run: dict) -> dict:
    """A stored run's training config, with the defaults of settings added since it was stored."""
    return {**asdict(TrainConfig()), **run["train_config"]}


def run_steps(run: dict) -> set[int]:
    """The step counts a stored run was scored at (runs stored before "steps" was recorded: from its rows)."""
    if "steps" in run:
        return set(run["steps"])
    return {int(row.split()[0][2:]) for row in run["rows"] if row.startswith("S=")}


def run(hypotheses: Sequence[str], seeds: Sequence[int], out: str | Path, base_train: TrainConfig | None = None,
        steps_list: Sequence[int] = (3, 5), reconstruction: bool = True, progress: bool = True) -> dict:
    """Train and score every hypothesis x seed; writes OUT.json (every run, appended as it finishes),
    OUT.md and OUT.png. Runs already in OUT.json (same hypothesis, seed and training config) are reused."""
    unknown = [h for h in hypotheses if h not in HYPOTHESES]
    if unknown:
        raise ValueError(f"unknown hypotheses {unknown}; choose from {', '.join(HYPOTHESES)}")
    if not seeds:
        raise ValueError("give at least one seed")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base_train = base_train or TrainConfig()
    loaded: dict[DetectorConfig, Data] = {}

    def data_for(config: DetectorConfig, keep: Sequence[DetectorConfig]) -> Data:
        for other in [c for c in loaded if c not in keep]:  # only the feature sets this hypothesis uses
            del loaded[other]
        if config not in loaded:
            loaded[config] = load_data(config, progress)
        return loaded[config]

    done = json.loads(out.read_text())["runs"] if out.is_file() else []
    runs = []
    for name in hypotheses:
        hypothesis = HYPOTHESES[name]
        for seed in seeds:
            tc = asdict(replace(base_train, seed=seed, **hypothesis.train))
            previous = [r for r in done if r["hypothesis"] == name and stored_train_config(r) == tc
                        and run_steps(r) == set(steps_list)]
            if previous:
                runs.append(previous[0])
                continue
            config = replace(PROTOCOL_DETECTOR, **hypothesis.detector)
            companion = HYPOTHESES[hypothesis.companion] if hypothesis.companion else None
            companion_config = replace(PROTOCOL_DETECTOR, **companion.detector) if companion else None
            data = data_for(config, keep=(config, companion_config))
            detector, feats, labels, train_s = train_seed(data, config, hypothesis, seed, base_train, progress)
            variants = scoring_variants(detector, feats, labels, steps_list, reconstruction=reconstruction)
            if companion:
                other = train_seed(data_for(companion_config, keep=(config, companion_config)), companion_config,
                                   companion, seed, base_train, progress)
                add_companion_rows(variants, scoring_variants(*other[:3], steps_list, reconstruction=False),
                                   steps_list)
                train_s += other[3]
            rows = _metrics(variants, data, config.image_size, config.map_sigma)
            runs.append({"hypothesis": name, "what": hypothesis.what, "seed": seed, "train_config": tc,
                         "detector_config": hypothesis.detector, "steps": list(steps_list),
                         "neighbourhood": hypothesis.neighbourhood,
                         "by_type": hypothesis.by_type, "train_seconds": train_s, "rows": rows})
            if progress:
                head = rows[shipped_row(config, steps_list[0])]
                print(f"{name} seed {seed}: trained in {train_s:.0f} s, image AUROC {head['image_auroc']:.3f}, "
                      f"pixel AUROC {head['pixel_auroc']:.3f}, AUPRO {head['aupro']:.3f}", flush=True)
            kept = [r for r in done if not (r["hypothesis"] == name and stored_train_config(r) == tc)]
            done = kept + [runs[-1]]
            out.write_text(json.dumps({"runs": done}, indent=1) + "\n")
    summary = summarise(runs)
    out.write_text(json.dumps({"seeds": list(seeds), "hypotheses": list(hypotheses), "summary": summary,
                               "runs": done}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(summary, seeds))
    plot(summary, out)
    return summary
