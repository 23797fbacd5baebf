"""Model bundles: one folder, safetensors only, loadable with one call.

    BUNDLE/
      detector_config.json              DetectorConfig (format version, image size, backbone, classes, ...)
      detector.safetensors              backbone weights + fitted statistics, calibration, thresholds
      denoiser/config.json              FeatureDenoiser (diffusers ModelMixin/ConfigMixin)
      denoiser/diffusion_pytorch_model.safetensors
      denoiser_1/, denoiser_2/, ...     the other members of an ensemble (``members`` > 1), same layout
      map_denoiser/, map_denoiser_1/    with a ``map_backbone``: its ensemble (``members`` of them), same layout
      scheduler/scheduler_config.json   the training noise schedule (diffusers DDIMScheduler)
      calibration_scores.json           optional: each class's calibration normals' image scores (drift watch)

This module reads and writes the format; assembling a detector from it is
:meth:`worker.core.detector.Detector.from_pretrained`'s job. Anything missing, corrupt or of a newer
format is refused with a message naming the file.

Replacing a bundle never leaves a moment without one: the new bundle is written to a temporary
sibling folder, the old one is renamed aside (``.NAME.old``), the new one renamed into place, and only
then the old one deleted. A reader that finds ``NAME`` missing (a writer stopped between its two
renames) loads the aside copy, and the next save finishes the replacement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import FORMAT_VERSION, DetectorConfig
from .denoiser import FeatureDenoiser
from .inversion import make_scheduler

CONFIG_FILE = "detector_config.json"
TENSORS_FILE = "detector.safetensors"
DENOISER_DIR = "denoiser"
MAP_DENOISER_DIR = "map_denoiser"
DENOISER_WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_DIR = "scheduler"
# Optional, so bundles written before it load unchanged (without it the drift watch's score test is off);
# not part of the version hash, which stays that of the weights.
CALIBRATION_FILE = "calibration_scores.json"
REQUIRED = (CONFIG_FILE, TENSORS_FILE, f"{DENOISER_DIR}/config.json", f"{DENOISER_DIR}/{DENOISER_WEIGHTS}",
            f"{SCHEDULER_DIR}/scheduler_config.json")


def denoiser_dir(member: int, base: str = DENOISER_DIR) -> str:
    """The folder of the ensemble's ``member``: ``denoiser`` for the first (every bundle has it), then
    ``denoiser_1``, ``denoiser_2``, ...; with ``base`` MAP_DENOISER_DIR, those of the map backbone's."""
    return base if member == 0 else f"{base}_{member}"


def member_dirs(config: DetectorConfig) -> list[str]:
    """The folders of every denoiser of a bundle of ``config``: the ensemble's, then the map backbone's."""
    bases = (DENOISER_DIR, MAP_DENOISER_DIR) if config.map_backbone else (DENOISER_DIR,)
    return [denoiser_dir(m, base) for base in bases for m in range(config.members)]


def member_files(config: DetectorConfig) -> list[str]:
    """The files of every denoiser of a bundle of ``config``, in :func:`member_dirs` order."""
    return [f"{folder}/{name}" for folder in member_dirs(config) for name in ("config.json", DENOISER_WEIGHTS)]

log = logging.getLogger("invad.core.bundle")


class BundleError(ValueError):
    """A bundle that cannot be loaded: missing, partial, corrupt or of an unsupported format."""


@dataclass(frozen=True)
class BundleContents:
    """Everything one bundle folder holds, validated; ``folder`` is where it was actually read."""

    folder: Path
    config: DetectorConfig
    tensors: dict[str, torch.Tensor]  # state-dict keys of the detector, less its denoisers
    denoisers: tuple[FeatureDenoiser, ...]  # config.members of them
    map_denoisers: tuple[FeatureDenoiser, ...]  # config.members of them with a map_backbone, else none
    scheduler_config: dict
    alphas_cumprod: torch.Tensor  # (T,)
    version: str
    calibration_scores: dict[str, tuple[float, ...]] | None = None  # class -> calibration normals' scores


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is corrupt: {error}; re-export the bundle with `invad train`") from error
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return data


def bundle_version(path: Path, denoisers: Sequence[str] = (DENOISER_DIR,)) -> str:
    """A content hash of the weight files (those of the ``denoisers`` folders in order, as
    :func:`member_dirs` lists them): equal bundles have equal versions on every worker; a one-denoiser
    bundle's is what it was before ensembles."""
    digest = hashlib.sha256()
    for name in [TENSORS_FILE, *(f"{folder}/{DENOISER_WEIGHTS}" for folder in denoisers)]:
        with open(path / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def aside_path(path: Path) -> Path:
    """Where a save keeps the previous bundle while it renames the new one in."""
    return path.with_name(f".{path.name}.old")


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED)


def _swap_in(staging: Path, path: Path) -> None:
    """Make ``staging`` the bundle at ``path``; at every instant ``path`` or its aside is a whole bundle."""
    aside = aside_path(path)
    if path.exists():
        if aside.exists():  # left by an earlier save that stopped after its new bundle was in place
            shutil.rmtree(aside)
        os.rename(path, aside)
    # Between these two renames only the aside copy exists: load_bundle reads it.
    os.rename(staging, path)
    shutil.rmtree(aside, ignore_errors=True)


def _schedule_args(scheduler_config: dict) -> dict:
    keys = ("num_train_timesteps", "beta_start", "beta_end")
    return {k: scheduler_config[k] for k in keys if k in scheduler_config}


def save_bundle(path: str | os.PathLike, config: DetectorConfig, tensors: dict[str, torch.Tensor],
                denoisers: list[FeatureDenoiser], scheduler_config: dict,
                calibration_scores: dict[str, tuple[float, ...]] | None = None,
                map_denoisers: list[FeatureDenoiser] = ()) -> str:
    """Write a bundle folder at ``path``, replacing any bundle there (see the module docstring).

    ``tensors``: the detector's state dict less the denoisers (fitted statistics, backbone weights).
    ``denoisers``: the ensemble, ``config.members`` of them; ``map_denoisers``: the map backbone's, as many
    (none without one).
    ``calibration_scores``: class -> image scores of its calibration normals (written when given).
    Returns the new bundle's version.
    """
    path = Path(path)
    if len(denoisers) != config.members:
        raise BundleError(f"the config says members={config.members} but {len(denoisers)} denoiser(s) were given")
    if len(map_denoisers) != (config.members if config.map_backbone else 0):
        raise BundleError(f"the config says map_backbone={config.map_backbone!r} and members={config.members} but "
                          f"{len(map_denoisers)} map denoiser(s) were given")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    aside = aside_path(path)
    try:
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        cpu = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        save_file(cpu, str(staging / TENSORS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        for folder, denoiser in zip(member_dirs(config), [*denoisers, *map_denoisers]):
            denoiser.save_pretrained(staging / folder, safe_serialization=True)
        make_scheduler(**_schedule_args(scheduler_config)).save_pretrained(staging / SCHEDULER_DIR)
        if calibration_scores is not None:
            scores = {name: [float(v) for v in values] for name, values in calibration_scores.items()}
            (staging / CALIBRATION_FILE).write_text(json.dumps({"scores": scores}) + "\n")
        _swap_in(staging, path)
    except BaseException:
        if not path.exists() and _complete(aside):  # the new one could not be renamed in: put the old back
            os.rename(aside, path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return bundle_version(path, member_dirs(config))


def _bundle_folder(path: Path) -> Path:
    """``path``, or its aside copy when a save stopped between its two renames."""
    if path.is_dir():
        return path
    aside = aside_path(path)
    if _complete(aside):
        log.warning("bundle %s is missing but its previous version %s is complete (a save was interrupted): "
                    "loading that; the next save of %s finishes the replacement", path, aside, path)
        return aside
    raise BundleError(f"model bundle {path} does not exist or is not a folder; train one with `invad train`")


def load_bundle(path: str | os.PathLike) -> BundleContents:
    """Read and validate the bundle at ``path`` (on the CPU).

    Raises:
        BundleError: the folder is missing or incomplete, a file is corrupt, or its format is newer
            than this code supports; the message names the file.
    """
    folder = _bundle_folder(Path(path))
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"bundle {folder} is incomplete: missing {', '.join(missing)}")
    raw = _read_json(folder / CONFIG_FILE)
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{folder / CONFIG_FILE} has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {folder} has format {version}, newer than this invad supports "
                          f"({FORMAT_VERSION}); upgrade invad to load it")
    try:
        config = DetectorConfig.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{folder / CONFIG_FILE} is invalid: {error}") from error
    scheduler_config = _read_json(folder / SCHEDULER_DIR / "scheduler_config.json")
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{folder / TENSORS_FILE} is corrupt: {error}") from error
    missing = [name for name in member_files(config) if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"bundle {folder} is incomplete: its config says members={config.members}"
                          f"{f' and map_backbone={config.map_backbone!r}' if config.map_backbone else ''} but "
                          f"{', '.join(missing)} is missing; re-export the bundle with `invad train`")
    loaded = [load_denoiser(folder / name) for name in member_dirs(config)]
    denoisers, map_denoisers = tuple(loaded[:config.members]), tuple(loaded[config.members:])
    for group in (denoisers, map_denoisers):
        if any(d.architecture != group[0].architecture for d in group[1:]):
            raise BundleError(f"the denoisers of bundle {folder} differ in configuration; re-export it with "
                              "`invad train`")
    alphas_cumprod = make_scheduler(**_schedule_args(scheduler_config)).alphas_cumprod
    return BundleContents(folder, config, tensors, denoisers, map_denoisers, scheduler_config, alphas_cumprod,
                          bundle_version(folder, member_dirs(config)), _calibration_scores(folder, config))


def load_denoiser(folder: Path) -> FeatureDenoiser:
    """The denoiser saved in ``folder`` (diffusers layout), on the CPU; BundleError naming it if it cannot be read."""
    try:
        return FeatureDenoiser.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as error:  # diffusers raises OSError, ValueError, SafetensorError, ...
        raise BundleError(f"{folder} cannot be loaded: {error}") from error


def _calibration_scores(folder: Path, config: DetectorConfig) -> dict[str, tuple[float, ...]] | None:
    """The optional calibration scores, checked: a list of finite numbers for each class, or None."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    scores = _read_json(path).get("scores")
    if not isinstance(scores, dict) or set(scores) != set(config.classes):
        raise BundleError(f"{path} must hold {{\"scores\": {{class: [numbers]}}}} for the classes "
                          f"{list(config.classes)}; re-export the bundle with `invad calibrate`")
    out = {}
    for name, values in scores.items():
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise BundleError(f"{path}: the scores of class {name!r} must be a non-empty list of finite numbers")
        out[name] = tuple(float(v) for v in values)
    return out


def restore_tensors(module: nn.Module, contents: BundleContents, skip_prefix: str | tuple[str, ...]) -> None:
    """Load ``contents.tensors`` into ``module``, whose state-dict keys under ``skip_prefix`` (one or a
    tuple) are not in them.

    Raises:
        BundleError: a key is missing or unexpected, or a tensor has the wrong shape.
    """
    source = contents.folder / TENSORS_FILE
    expected = {k for k in module.state_dict() if not k.startswith(skip_prefix)}
    missing, unexpected = sorted(expected - set(contents.tensors)), sorted(set(contents.tensors) - expected)
    if missing or unexpected:
        raise BundleError(f"{source} does not match {CONFIG_FILE}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    try:
        module.load_state_dict(contents.tensors, strict=False)
    except RuntimeError as error:
        raise BundleError(f"{source} has tensors of the wrong shape: {error}") from error
