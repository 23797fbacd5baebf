"""The detector: images in, calibrated anomaly scores and maps out.

    images -> resize, cut into tiles, ImageNet-normalise -> frozen CNN features x0 (B, C, g, g) per tile,
           standardised per channel (and, with feature_norm "position", per class and grid position)
           -> S-step DDIM inversion z = x_S by each denoiser of the ensemble (``members``, three by default)
           -> NLL and latent-norm map, averaged over the members -> calibrated image score and map
    with a ``map_backbone``: its features join x0's channels and its own ensemble inverts them; its
    per-position standardised map adds score columns of its own and is averaged into the anomaly map
    (the NLL stays the first backbone's)

Fitted statistics (feature standardisation, per-position latent statistics, calibration, thresholds,
the Gaussian baseline) are buffers, so they travel with the weights in one bundle
(:mod:`worker.core.bundle`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backbone import FeatureExtractor
from .bundle import BundleError, load_bundle, restore_tensors, save_bundle
from .config import DetectorConfig
from .denoiser import FeatureDenoiser
from .images import model_input
from .inversion import ddim_invert, ddim_sample, inversion_timesteps, q_sample
from .scoring import image_components, latent_nll, latent_norm_map, score_components, upsample_map
from .tiles import image_max, join_tiles, split_tiles

# Floor of a position's standard deviation when the denoiser's input is standardised per position, in
# units of its channel's (features are standardised per channel first): a position that never varied
# on the training normals (a flat background) must not turn a small change into an enormous deviation.
# ELPV's smallest is 0.11 (mono cells, all training normals).
POSITION_STD_FLOOR = 0.1


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# state-dict keys of the denoisers (and the map backbone's), which the bundle stores on their own
DENOISERS_PREFIXES = ("denoisers.", "map_denoisers.")


def member_mean(values) -> torch.Tensor:
    """The mean of the ensemble members' tensors (an iterable of equal shapes)."""
    values = list(values)
    return values[0] if len(values) == 1 else torch.stack(values).mean(dim=0)


def ensemble_scores(latents: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The members' latents (B, C, g, g) each -> ``norm`` (B, g, g), the mean of their latent-norm maps,
    and ``nll`` (B,), the mean of their NLLs."""
    return {"norm": member_mean(latent_norm_map(z) for z in latents),
            "nll": member_mean(latent_nll(z) for z in latents)}


def standardised_scores(raw: dict[str, torch.Tensor], statistics: dict[str, tuple[torch.Tensor, torch.Tensor]],
                        labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Image components and grid map (:func:`~worker.core.scoring.score_components`) of an inversion's
    raw outputs (:meth:`Detector.raw_maps`), each latent-norm map standardised per position with the
    (mean, std) (K, g, g) of its key in ``statistics`` (:attr:`Detector.position_statistics`)."""
    maps = {key: (raw[key] - mean[labels]) / std[labels] for key, (mean, std) in statistics.items()}
    return score_components(maps["norm"], raw["nll"], raw["norm"], maps.get("map_norm"))


@dataclass(frozen=True)
class Prediction:
    """Per-image results of one batch (field names follow anomalib's)."""

    pred_score: np.ndarray  # (B,) float32, calibrated image score (standard units of normal images)
    pred_label: np.ndarray  # (B,) bool, pred_score > threshold
    anomaly_map: np.ndarray  # (B, H, W) float32 at the bundle's input_shape, per-pixel standardised score
    threshold: np.ndarray  # (B,) float32, the threshold of each image's class
    timings_ms: dict[str, float]


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
    return device


class Detector(nn.Module):
    """InvAD detector. Build with :meth:`from_pretrained`, or :func:`worker.core.train.train` for a new one."""

    def __init__(self, config: DetectorConfig, extractor: FeatureExtractor, denoisers: Sequence[FeatureDenoiser],
                 alphas_cumprod: torch.Tensor, scheduler_config: dict | None = None,
                 map_extractor: FeatureExtractor | None = None, map_denoisers: Sequence[FeatureDenoiser] = ()):
        super().__init__()
        if bool(config.map_backbone) != (map_extractor is not None):
            raise ValueError(f"map_backbone={config.map_backbone!r} needs a map extractor exactly when it is set")
        if map_extractor is not None and map_extractor.grid != extractor.grid:
            raise ValueError(f"the map backbone's grid ({map_extractor.grid}) differs from the backbone's "
                             f"({extractor.grid})")
        self.config = config
        self.extractor = extractor
        self.map_extractor = map_extractor
        self.denoisers = nn.ModuleList()
        self.map_denoisers = nn.ModuleList()
        self.scheduler_config = scheduler_config or {}
        # channel ranges of x0: the backbone's, then the map backbone's
        widths = [extractor.channels] + ([map_extractor.channels] if map_extractor is not None else [])
        self.channel_groups = tuple(slice(sum(widths[:i]), sum(widths[:i + 1])) for i in range(len(widths)))
        k, c, g = len(config.classes), sum(widths), extractor.grid
        n = len(config.score_columns)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone())
        self.register_buffer("pixel_mean", torch.tensor(config.normalize_mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(config.normalize_std).view(1, 3, 1, 1))
        self.register_buffer("feature_mean", torch.zeros(c))
        self.register_buffer("feature_std", torch.ones(c))
        self.register_buffer("position_mean", torch.zeros(k, g, g))
        self.register_buffer("position_std", torch.ones(k, g, g))
        if map_extractor is not None:  # the map backbone's latent-norm statistics
            self.register_buffer("map_position_mean", torch.zeros(k, g, g))
            self.register_buffer("map_position_std", torch.ones(k, g, g))
        self.register_buffer("calib_mean", torch.zeros(k, n))
        self.register_buffer("calib_std", torch.ones(k, n))
        self.register_buffer("thresholds", torch.full((k,), float("inf")))
        self.register_buffer("gauss_mean", torch.zeros(k, c, g, g))
        self.register_buffer("gauss_std", torch.ones(k, c, g, g))
        # class -> image scores of the held-out calibration normals (set by calibrate(); None for a bundle
        # saved before they were stored): the drift watch compares live scores with them.
        self.calibration_scores: dict[str, tuple[float, ...]] | None = None
        self.version = "unsaved"
        self.set_denoisers(denoisers, map_denoisers)
        self.eval()

    # -- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def set_denoisers(self, denoisers: Sequence[FeatureDenoiser],
                      map_denoisers: Sequence[FeatureDenoiser] = ()) -> None:
        """Install the ensemble's denoisers (``config.members`` of them, one architecture) and, with a map
        backbone, its ensemble (as many, on its channels), on this device."""
        groups = {"denoiser": list(denoisers), "map denoiser": list(map_denoisers)}
        for group, (what, given) in enumerate(groups.items()):
            count = self.config.members if group < len(self.channel_groups) else 0
            if len(given) != count:
                raise ValueError(f"this detector's config has members={self.config.members}, got {len(given)} "
                                 f"{what}(s) (map_backbone {self.config.map_backbone or 'none'}: {count} expected)")
            if any(d.architecture != given[0].architecture for d in given[1:]):
                raise ValueError(f"the {what}s of an ensemble must share one configuration")
            if given:
                channels = self.channel_groups[group]
                if given[0].config.in_channels != channels.stop - channels.start:
                    raise ValueError(f"the {what}s take {given[0].config.in_channels} channels, their features "
                                     f"have {channels.stop - channels.start}")
        self.denoisers = nn.ModuleList(d.to(self.device).eval() for d in denoisers)
        self.map_denoisers = nn.ModuleList(d.to(self.device).eval() for d in map_denoisers)

    @property
    def position_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The per-position (mean, std) buffers (K, g, g) of each latent-norm map :meth:`raw_maps` gives:
        "norm", and with a map backbone "map_norm"."""
        statistics = {"norm": (self.position_mean, self.position_std)}
        if self.config.map_backbone:
            statistics["map_norm"] = (self.map_position_mean, self.map_position_std)
        return statistics

    def ensemble(self, group: int) -> nn.ModuleList:
        """The denoisers of channel group ``group``: 0, the backbone's; 1, the map backbone's."""
        return (self.denoisers, self.map_denoisers)[group]

    def class_indices(self, classes: Sequence[str] | None, batch: int) -> torch.Tensor:
        """(B,) class indices; ``None`` is allowed only for a single-class bundle."""
        if classes is None:
            if len(self.classes) > 1:
                raise ValueError(f"this bundle serves several products {list(self.classes)}: name one per image")
            return torch.zeros(batch, dtype=torch.long, device=self.device)
        if len(classes) != batch:
            raise ValueError(f"got {len(classes)} class names for {batch} images")
        lookup = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted({c for c in classes if c not in lookup})
        if unknown:
            raise ValueError(f"unknown product(s) {unknown}; this bundle serves {list(self.classes)}")
        return torch.tensor([lookup[c] for c in classes], dtype=torch.long, device=self.device)

    # -- stages ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_pixels(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """(B * T, 3, S, S) uint8 tiles of RGB images (T = the bundle's tile count, image-major): PIL
        images (any size) are resized here, uint8 arrays already made by
        :func:`~worker.core.images.model_input` at this bundle's ``input_shape`` are used as they are.
        Kept as uint8 (pinned for CUDA) so the copy to the device moves a quarter of the bytes;
        :meth:`features` converts and normalises on the device."""
        shape = self.config.input_shape
        arrays = []
        for image in images:
            if isinstance(image, np.ndarray):
                if image.shape != (*shape, 3) or image.dtype != np.uint8:
                    raise ValueError(f"a prepared image must be a ({shape[0]}, {shape[1]}, 3) uint8 array for this "
                                     f"bundle, got {image.shape} {image.dtype}")
                arrays.append(image)
            else:
                arrays.append(model_input(image, shape))
        pixels = split_tiles(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), self.config.tiles)
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def tile_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) image class indices -> (B * T,) one per tile."""
        count = self.config.tile_count
        return labels if count == 1 else labels.repeat_interleave(count)

    def per_image(self, tile_scores: torch.Tensor) -> torch.Tensor:
        """(B * T,) tile scores -> (B,) image scores: the highest tile's."""
        return image_max(tile_scores, self.config.tile_count)

    def image_maps(self, tile_maps: torch.Tensor) -> torch.Tensor:
        """(B * T, g, g) tile grid maps -> (B, rows * g, cols * g), the tiles side by side."""
        return join_tiles(tile_maps, self.config.tiles)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Standardised backbone features x0 (B, C, g, g) of pixels (B, 3, S, S): uint8 in [0, 255] (as
        :meth:`to_pixels` gives) or floats in [0, 1]."""
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            pixels = pixels.float().div_(255.0)
        x = (pixels - self.pixel_mean) / self.pixel_std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            raw = self.extractor(x)
            if self.map_extractor is not None:
                raw = torch.cat([raw, self.map_extractor(x)], dim=1)
        return (raw.float() - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]

    def eps_fn(self, labels: torch.Tensor, member: int, group: int = 0):
        """eps_theta of ``member`` of the ensemble of channel ``group`` (:meth:`ensemble`) as a function of
        (x_t, t) for fixed class labels; float32 in and out."""
        denoiser = self.ensemble(group)[member]
        class_labels = labels if denoiser.config.num_classes > 0 else None

        def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return denoiser(x_t, t, class_labels).float()

        return eps

    def inversion_path(self, x: torch.Tensor, labels: torch.Tensor, steps: int | None = None,
                       group: int = 0) -> list[list[torch.Tensor]]:
        """[x_1, ..., x_S] of the DDIM inversion of the denoiser's input x (B, C, g, g) by the ensemble of
        channel ``group`` (0: the backbone's, on its channels of x; 1: the map backbone's, on its), each a
        list of the members' states; x_S is the latent z. ``steps`` defaults to the bundle's."""
        timesteps = inversion_timesteps(steps or self.config.steps, len(self.alphas_cumprod))
        x = x[:, self.channel_groups[group]]
        per_member = []
        for member in range(self.config.members):
            state, eps, path = x, self.eps_fn(labels, member, group), []
            for step in range(len(timesteps) - 1):
                state = ddim_invert(eps, state, self.alphas_cumprod, timesteps[step:step + 2])
                path.append(state)
            per_member.append(path)
        return [list(states) for states in zip(*per_member)]

    def denoiser_input(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What the denoiser models, from features x0 (B, C, g, g) standardised per channel: x0 itself, or
        with ``feature_norm`` "position" each class's deviation from its normal at each position, in units
        of its spread there (the Gaussian baseline's statistics, fitted before the denoiser is trained)."""
        if self.config.feature_norm == "channel":
            return x0
        return (x0 - self.gauss_mean[labels]) / self.gauss_std[labels].clamp_min(POSITION_STD_FLOOR)

    def reconstruct(self, x0: torch.Tensor, labels: torch.Tensor, member: int) -> torch.Tensor:
        """The reconstruction baseline on the denoiser's input x0 by the ensemble's ``member``: noised to
        t_start with fixed noise, then DDIM-denoised to 0."""
        rc = self.config.reconstruction
        generator = torch.Generator().manual_seed(rc.seed)
        noise = torch.randn(x0.shape[1:], generator=generator).to(x0.device)  # same for every image
        x_t = q_sample(x0, noise.expand_as(x0), self.alphas_cumprod[rc.t_start])
        timesteps = [round(rc.t_start * (1 - k / rc.steps)) for k in range(rc.steps + 1)]
        return ddim_sample(self.eps_fn(labels, member), x_t, self.alphas_cumprod, timesteps)

    def raw_maps(self, x0: torch.Tensor, labels: torch.Tensor, kind: str = "inversion",
                 steps: int | None = None) -> dict[str, torch.Tensor]:
        """Unstandardised outputs of one scoring method on features x0 (B, C, g, g).

        inversion: ``norm`` (B, g, g) latent-norm map and ``nll`` (B,), and with a map backbone
        ``map_norm``, its ensemble's latent-norm map; reconstruction: ``norm``, the per-position feature
        error (the backbone's channels); all averaged over the ensemble's members. gaussian: ``norm``, the
        diagonal Mahalanobis distance per position (every channel).
        """
        if kind == "inversion":
            x = self.denoiser_input(x0, labels)
            out = ensemble_scores(self.inversion_path(x, labels, steps)[-1])
            if self.config.map_backbone:
                out["map_norm"] = ensemble_scores(self.inversion_path(x, labels, steps, group=1)[-1])["norm"]
            return out
        if kind == "reconstruction":
            x = self.denoiser_input(x0, labels)[:, self.channel_groups[0]]
            return {"norm": member_mean(latent_norm_map(x - self.reconstruct(x, labels, member))
                                        for member in range(self.config.members))}
        if kind == "gaussian":
            return {"norm": latent_norm_map((x0 - self.gauss_mean[labels]) / self.gauss_std[labels])}
        raise ValueError(f"unknown scoring method {kind!r}; choose inversion, reconstruction or gaussian")

    def score_features(self, x0: torch.Tensor, labels: torch.Tensor, kind: str = "inversion",
                       steps: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Image components {name: (B,)} and the grid map (B, g, g) of one method.

        For inversion the map is the latent norm standardised per position with normal statistics; with a
        map backbone, its ensemble's map so standardised adds its components, and the map is the mean of
        both (:func:`~worker.core.scoring.score_components`).
        """
        raw = self.raw_maps(x0, labels, kind, steps)
        if kind == "inversion":
            return standardised_scores(raw, self.position_statistics, labels)
        return image_components(raw["norm"]), raw["norm"]

    def combine(self, components: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Calibrated image score: the mean of the standardised configured components (with a map backbone,
        also its map's: ``config.score_columns``), (B,)."""
        stacked = torch.stack([components[name] for name in self.config.score_columns], dim=1)  # (B, n)
        return ((stacked - self.calib_mean[labels]) / self.calib_std[labels]).mean(dim=1)

    def compile_networks(self, mode: str = "default") -> "Detector":
        """torch.compile the backbone and the denoiser in place (state dict keys unchanged), for
        inference. ``mode``: "default", "reduce-overhead" (CUDA graphs) or "max-autotune". The first
        batch of each new shape pays the compilation; measured by ``invad bench --compile``."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        for network in [self.extractor, self.map_extractor, *self.denoisers, *self.map_denoisers]:
            if network is not None:
                network.compile(mode=mode, dynamic=False)
        return self

    # -- the one call the worker makes ----------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image | np.ndarray], classes: Sequence[str] | None = None) -> Prediction:
        """Score a batch of RGB images: PIL images of any size, or arrays already prepared by
        :func:`~worker.core.images.model_input` at this bundle's input_shape. Results do not depend on the
        batch's composition. Stage timings are synchronised with the device, so they are true on CUDA.

        Raises:
            ValueError: an unknown product class, class names missing for a multi-class bundle, or a
                prepared array of the wrong shape.
        """
        if not images:
            raise ValueError("predict() needs at least one image")
        labels = self.class_indices(classes, len(images))
        clock = self._clock()
        pixels = self.to_pixels(images)
        t_pre = self._clock()
        x0 = self.features(pixels)
        t_feat = self._clock()
        tile_labels = self.tile_labels(labels)
        components, grid_map = self.score_features(x0, tile_labels)
        scores = self.per_image(self.combine(components, tile_labels))
        t_inv = self._clock()
        pixel_map = upsample_map(self.image_maps(grid_map), self.config.input_shape, self.config.map_sigma)
        thresholds = self.thresholds[labels]
        pred_score, pred_label = scores.float().cpu().numpy(), (scores > thresholds).cpu().numpy()
        anomaly_map, threshold = pixel_map.float().cpu().numpy(), thresholds.float().cpu().numpy()
        done = time.perf_counter()  # .cpu() above already waited for the device
        timings = {"preprocess": 1e3 * (t_pre - clock), "backbone": 1e3 * (t_feat - t_pre),
                   "inversion": 1e3 * (t_inv - t_feat), "maps": 1e3 * (done - t_inv)}
        return Prediction(pred_score, pred_label, anomaly_map, threshold, timings)

    def _clock(self) -> float:
        """perf_counter after the device finished its queued work (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- bundles --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, device: str | torch.device | None = None) -> "Detector":
        """Load a bundle folder written by :meth:`save_pretrained` (see :mod:`worker.core.bundle`).

        Raises:
            BundleError: the bundle is missing, incomplete, corrupt or of a newer format.
        """
        torch_device = select_device(device)
        contents = load_bundle(path)
        config = contents.config
        map_extractor = FeatureExtractor(config.map_backbone_spec) if config.map_backbone else None
        try:
            detector = cls(config, FeatureExtractor(config.backbone_spec), contents.denoisers,
                           contents.alphas_cumprod, contents.scheduler_config, map_extractor, contents.map_denoisers)
        except ValueError as error:  # e.g. denoisers for other features than the config's backbones give
            raise BundleError(f"bundle {contents.folder} does not fit together: {error}; re-export it with "
                              "`invad train`") from error
        restore_tensors(detector, contents, skip_prefix=DENOISERS_PREFIXES)
        detector.version = contents.version
        detector.calibration_scores = contents.calibration_scores
        detector.to(torch_device)
        if torch_device.type == "cuda":
            for extractor in (detector.extractor, detector.map_extractor):
                if extractor is not None:
                    extractor.to(memory_format=torch.channels_last)
        return detector.eval()

    def save_pretrained(self, path) -> None:
        """Write this detector as a bundle folder; a crash at any point leaves the old or the new bundle.

        Raises:
            BundleError: the detector is not calibrated yet (non-finite thresholds).
        """
        if not torch.isfinite(self.thresholds).all() or not torch.isfinite(self.calib_std).all():
            raise BundleError("the detector is not calibrated (non-finite thresholds): calibrate it on normal "
                              "images before saving, e.g. with worker.core.train.calibrate")
        tensors = {k: v for k, v in self.state_dict().items() if not k.startswith(DENOISERS_PREFIXES)}
        self.version = save_bundle(path, self.config, tensors, list(self.denoisers), self.scheduler_config,
                                   self.calibration_scores, list(self.map_denoisers))
