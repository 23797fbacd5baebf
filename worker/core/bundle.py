"""Model bundles: one folder, safetensors only, loadable with one call.

    BUNDLE/
      detector_config.json              DetectorConfig (format version, image size, backbone, classes, ...)
      detector.safetensors              backbone weights + fitted statistics, calibration, thresholds
      denoiser/config.json              FeatureDenoiser (diffusers ModelMixin/ConfigMixin)
      denoiser/diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json   the training noise schedule (diffusers DDIMScheduler)

A bundle is written to a temporary sibling folder and renamed into place, so readers never see a
partial one. Anything missing, corrupt or of a newer format is refused with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import FeatureExtractor
from .config import FORMAT_VERSION, DetectorConfig
from .denoiser import FeatureDenoiser
from .inversion import make_scheduler

CONFIG_FILE = "detector_config.json"
TENSORS_FILE = "detector.safetensors"
DENOISER_DIR = "denoiser"
DENOISER_WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_DIR = "scheduler"
REQUIRED = (CONFIG_FILE, TENSORS_FILE, f"{DENOISER_DIR}/config.json", f"{DENOISER_DIR}/{DENOISER_WEIGHTS}",
            f"{SCHEDULER_DIR}/scheduler_config.json")


class BundleError(ValueError):
    """A bundle that cannot be loaded: missing, partial, corrupt or of an unsupported format."""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is corrupt: {error}; re-export the bundle with `invad train`") from error
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return data


def bundle_version(path: Path) -> str:
    """A content hash of the weight files: equal bundles have equal versions on every worker."""
    digest = hashlib.sha256()
    for name in (TENSORS_FILE, f"{DENOISER_DIR}/{DENOISER_WEIGHTS}"):
        with open(path / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def save_bundle(detector, path: str | os.PathLike) -> None:
    if not torch.isfinite(detector.thresholds).all() or not torch.isfinite(detector.calib_std).all():
        raise BundleError("the detector is not calibrated (non-finite thresholds): calibrate it on normal images "
                          "before saving, e.g. with worker.core.train.calibrate")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / CONFIG_FILE).write_text(json.dumps(detector.config.to_dict(), indent=2) + "\n")
        tensors = {name: buffer.detach().cpu().contiguous() for name, buffer in detector.named_buffers()
                   if not name.startswith(("extractor.", "denoiser."))}
        tensors.update({f"extractor.{k}": v.detach().cpu().contiguous()
                        for k, v in detector.extractor.state_dict().items()})
        save_file(tensors, str(staging / TENSORS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        detector.denoiser.save_pretrained(staging / DENOISER_DIR, safe_serialization=True)
        make_scheduler(**_schedule_args(detector.scheduler_config)).save_pretrained(staging / SCHEDULER_DIR)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    detector.version = bundle_version(path)


def _schedule_args(scheduler_config: dict) -> dict:
    keys = ("num_train_timesteps", "beta_start", "beta_end")
    return {k: scheduler_config[k] for k in keys if k in scheduler_config}


def load_bundle(path: str | os.PathLike, device: torch.device):
    from .detector import Detector

    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist or is not a folder; train one with `invad train`")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is incomplete: missing {', '.join(missing)}")
    raw = _read_json(path / CONFIG_FILE)
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{path / CONFIG_FILE} has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {path} has format {version}, newer than this invad supports "
                          f"({FORMAT_VERSION}); upgrade invad to load it")
    try:
        config = DetectorConfig.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{path / CONFIG_FILE} is invalid: {error}") from error
    scheduler_config = _read_json(path / SCHEDULER_DIR / "scheduler_config.json")
    try:
        tensors = load_file(str(path / TENSORS_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{path / TENSORS_FILE} is corrupt: {error}") from error
    try:
        denoiser = FeatureDenoiser.from_pretrained(str(path / DENOISER_DIR), local_files_only=True,
                                                   low_cpu_mem_usage=False)
    except Exception as error:  # diffusers raises OSError, ValueError, SafetensorError, ...
        raise BundleError(f"{path / DENOISER_DIR} cannot be loaded: {error}") from error
    extractor = FeatureExtractor(config.backbone_spec)
    schedule = make_scheduler(**_schedule_args(scheduler_config))
    detector = Detector(config, extractor, denoiser, schedule.alphas_cumprod, scheduler_config)
    state = {k: v for k, v in tensors.items()}
    expected = set(detector.state_dict()) - {k for k in detector.state_dict() if k.startswith("denoiser.")}
    missing_keys = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing_keys or unexpected:
        raise BundleError(f"{path / TENSORS_FILE} does not match {CONFIG_FILE}: missing {missing_keys[:5]}, "
                          f"unexpected {unexpected[:5]}")
    try:
        detector.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise BundleError(f"{path / TENSORS_FILE} has tensors of the wrong shape: {error}") from error
    detector.version = bundle_version(path)
    detector.to(device)
    if device.type == "cuda":
        detector.extractor.to(memory_format=torch.channels_last)
    return detector.eval()
