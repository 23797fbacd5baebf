"""The detector's own configuration: what a bundle needs besides weights to reproduce every score."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .backbone import BackboneSpec
from .inversion import MAX_STEPS
from .scoring import COMPONENTS, MAP_BACKBONE_PREFIX, MAP_COMPONENTS
from .tiles import check_layout

FORMAT_VERSION = 1
# What the denoiser sees: "channel" = features standardised per channel (the paper's); "position" = each
# class's features also standardised per grid position, so the denoiser models each position's deviation
# from that class's normal there (ELPV over 3 seeds: docs/BENCHMARKS.md, sixth round).
FEATURE_NORMS = ("channel", "position")
# Denoisers of an ensemble: each trained on the same split with its own seed; their latents' norm maps and
# NLLs are averaged before scoring. More cost S network evaluations each at inference.
MAX_MEMBERS = 8
# Three by default: on ELPV better than one denoiser in every one of 3 seeds (docs/BENCHMARKS.md, seventh
# round); on CPU the two extra denoisers add about 8 ms per image to roughly 55 ms of backbone and the rest.
DEFAULT_MEMBERS = 3
# EfficientNet-Lite2 as the map backbone by default: on ELPV the NLL + both backbones' map_top beat the
# NLL + Lite0's map_top in every one of 3 seeds (0.904 against 0.885), and its averaged anomaly map
# localises better (docs/BENCHMARKS.md, ninth round); it costs a second backbone pass and ensemble.
DEFAULT_MAP_BACKBONE = "efficientnet-lite2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCORE_KINDS = ("inversion", "reconstruction", "gaussian")


@dataclass(frozen=True)
class ReconstructionConfig:
    """The reconstruction baseline: noise features to ``t_start``, DDIM-denoise back in ``steps``."""

    t_start: int = 400
    steps: int = 10
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.t_start <= 999 or not 1 <= self.steps <= self.t_start:
            raise ValueError(f"reconstruction needs 1 <= steps <= t_start <= 999, got {self}")


@dataclass(frozen=True)
class DetectorConfig:
    """Frozen settings of one detector bundle (``detector_config.json``).

    ``classes`` are the product keys the bundle serves (one class: an unconditional model).
    ``score_components`` are standardised on held-out normals and averaged into the image score.
    ``tiles`` (rows, cols) of ``image_size`` squares cover each image (:mod:`worker.core.tiles`).
    ``feature_norm`` is one of :data:`FEATURE_NORMS`; bundles saved before it existed are "channel".
    ``members`` denoisers form an ensemble (1 to :data:`MAX_MEMBERS`); bundles saved before it have one.
    ``map_backbone`` (optional, "" for none): a second feature extractor whose own ensemble of ``members``
    denoisers contributes its map only: each map component of ``score_components`` is also computed on
    its per-position standardised map, as a column of its own (:attr:`score_columns`); the anomaly map
    is the mean of both maps; the NLL stays the first backbone's. Bundles saved before it have none.
    """

    name: str = "invad"
    image_size: int = 256
    tiles: tuple[int, int] = (1, 1)
    normalize_mean: tuple[float, float, float] = IMAGENET_MEAN
    normalize_std: tuple[float, float, float] = IMAGENET_STD
    backbone: str = "efficientnet-lite0"
    map_backbone: str = DEFAULT_MAP_BACKBONE
    strides: tuple[int, ...] = (4, 8, 16)
    grid_stride: int = 0  # the latent grid's stride (0: the coarsest tap's, 16 by default)
    feature_norm: str = "position"
    members: int = DEFAULT_MEMBERS
    classes: tuple[str, ...] = ("default",)
    steps: int = 3
    score_components: tuple[str, ...] = ("nll", "map_top")
    map_sigma: float = 4.0
    target_fpr: float = 0.01
    threshold_method: str = "fpr"
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.backbone_spec  # validates the backbone, strides, image size and grid
        if not isinstance(self.map_backbone, str):
            raise ValueError(f"map_backbone must be a backbone's name or \"\" (none), got {self.map_backbone!r}")
        if self.map_backbone:
            if self.map_backbone == self.backbone:
                raise ValueError(f"map_backbone {self.map_backbone!r} is the backbone itself: name another "
                                 "extractor, or none")
            self.map_backbone_spec
        check_layout(self.tiles)
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {self.steps}")
        if not self.classes or len(set(self.classes)) != len(self.classes) or not all(self.classes):
            raise ValueError(f"classes must be distinct non-empty names, got {self.classes}")
        unknown = [c for c in self.score_components if c not in COMPONENTS]
        if unknown or not self.score_components:
            raise ValueError(f"score_components {list(self.score_components)}: choose from {', '.join(COMPONENTS)}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        if self.threshold_method not in ("fpr", "f1max"):
            raise ValueError(f"threshold_method must be 'fpr' or 'f1max', got {self.threshold_method!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {self.feature_norm!r}")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or not 1 <= self.members <= MAX_MEMBERS:
            raise ValueError(f"members must be a whole number of denoisers in 1..{MAX_MEMBERS}, got {self.members!r}")
        if self.map_sigma < 0:
            raise ValueError(f"map_sigma must be >= 0, got {self.map_sigma}")

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) in pixels of the resized image the tiles are cut from."""
        return self.tiles[0] * self.image_size, self.tiles[1] * self.image_size

    @property
    def tile_count(self) -> int:
        return self.tiles[0] * self.tiles[1]

    @property
    def backbone_spec(self) -> BackboneSpec:
        return BackboneSpec(self.backbone, tuple(self.strides), self.image_size, self.grid_stride)

    @property
    def score_columns(self) -> tuple[str, ...]:
        """What the image score averages, each standardised on held-out normals: ``score_components``,
        then with a map backbone its own column of each map component (:data:`MAP_COMPONENTS`)."""
        if not self.map_backbone:
            return tuple(self.score_components)
        theirs = [MAP_BACKBONE_PREFIX + c for c in self.score_components if c in MAP_COMPONENTS]
        return (*self.score_components, *theirs)

    @property
    def map_backbone_spec(self) -> BackboneSpec | None:
        """The map backbone's taps: the same strides, image size and grid as the backbone's; None without one."""
        if not self.map_backbone:
            return None
        return BackboneSpec(self.map_backbone, tuple(self.strides), self.image_size, self.grid_stride)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector config keys {unknown}; known: {sorted(known)}")
        data = dict(data)
        data.setdefault("feature_norm", "channel")  # written before the option existed: what it was then
        data.setdefault("members", 1)  # written before ensembles: one denoiser
        data.setdefault("map_backbone", "")  # written before map backbones: none
        for key in ("normalize_mean", "normalize_std", "strides", "classes", "score_components", "tiles"):
            if key in data:
                data[key] = tuple(data[key])
        if "reconstruction" in data:
            data["reconstruction"] = ReconstructionConfig(**data["reconstruction"])
        return cls(**data)
