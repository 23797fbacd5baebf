"""Published model bundles in S3: the files half of model roll-out (the pointers are model_pointers.py).

    s3://{bucket}/{prefix}/_models/{product}/{version}/bundle/...        the bundle folder's files
    s3://{bucket}/{prefix}/_models/{product}/{version}/smoke/NNN.ext     normal images for the smoke check
    s3://{bucket}/{prefix}/_models/{product}/{version}/manifest.json     written last: a version exists once it does

``_models`` because product keys start with a letter or digit: the artefact sink's
``{prefix}/{product}/...`` keys can never reach into it. The manifest lists every file with its size
and sha256. A worker downloads a version file by file, checks each against the manifest and the
manifest against the sha256 its pointer holds, so what it loads is, byte for byte, what was activated.
A published version is never changed: publishing other files under an existing version is refused.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from schemas.image_ref import PRODUCT_MAX_LEN, PRODUCT_RE
from worker.common import s3client

MODELS_DIR = "_models"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
SMOKE_DIR = "smoke"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")  # one folder or file name of a manifest path
_CHUNK = 1 << 20

# Why a worker refused a version (the ``reason`` label of invad_model_refused_total).
REFUSAL_REASONS = ("manifest_missing", "manifest_invalid", "manifest_mismatch", "file_missing",
                   "checksum_mismatch", "bundle_invalid", "wrong_product", "smoke_failed")


class Refused(Exception):
    """A published version that can never be served as it is; ``reason`` is one of REFUSAL_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class VersionConflict(ValueError):
    """Other files are already published under this product and version."""


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid product key or version name, else ValueError naming what is allowed."""
    if kind == "product":
        if not isinstance(value, str) or len(value) > PRODUCT_MAX_LEN or not PRODUCT_RE.match(value):
            raise ValueError(f"product {value!r} is not allowed: 1-{PRODUCT_MAX_LEN} characters of "
                             f"{PRODUCT_RE.pattern}")
    elif not isinstance(value, str) or not VERSION_RE.match(value):
        raise ValueError(f"version {value!r} is not allowed: 1-64 characters of {VERSION_RE.pattern}")
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def who() -> str:
    """user@host, for the record of who published or activated a version."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


def _safe_path(rel: Any) -> bool:
    parts = rel.split("/") if isinstance(rel, str) else []
    return len(parts) >= 2 and parts[0] in ("bundle", SMOKE_DIR) and all(_PART_RE.match(p) for p in parts)


@dataclass(frozen=True)
class Manifest:
    """What one published version holds. ``files``: path under the version (``bundle/...``,
    ``smoke/...``) -> {"sha256": hex, "size": bytes}; ``bundle_version`` is the bundle's own content
    hash (what every ScoreRecord's ``model_version`` shows)."""

    product: str
    version: str
    bundle_version: str
    model_name: str
    classes: tuple[str, ...]
    target_fpr: float
    files: Mapping[str, Mapping[str, Any]]
    published_at: str
    published_by: str

    def to_json(self) -> bytes:
        body = {"format": MANIFEST_FORMAT, "product": self.product, "version": self.version,
                "bundle_version": self.bundle_version, "model_name": self.model_name, "classes": list(self.classes),
                "target_fpr": self.target_fpr, "published_at": self.published_at, "published_by": self.published_by,
                "files": {name: dict(self.files[name]) for name in sorted(self.files)}}
        return (json.dumps(body, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, product: str, version: str) -> "Manifest":
        """Parse and check a manifest read from ``product``/``version``.

        Raises:
            Refused: ``manifest_invalid`` naming what is wrong (unreadable, another product or version,
                a newer format, an unsafe path, no bundle config or no smoke image).
        """
        try:
            body = json.loads(raw)
            manifest = cls(product=body["product"], version=body["version"], bundle_version=str(body["bundle_version"]),
                           model_name=str(body["model_name"]), classes=tuple(body["classes"]),
                           target_fpr=float(body["target_fpr"]), files=dict(body["files"]),
                           published_at=str(body["published_at"]), published_by=str(body["published_by"]))
            fmt = body["format"]
        except (ValueError, KeyError, TypeError) as error:
            raise Refused("manifest_invalid", f"manifest of {product}/{version} is unreadable: {error!r}") from error
        problem = None
        if fmt != MANIFEST_FORMAT:
            problem = f"format {fmt!r}, this invad reads {MANIFEST_FORMAT}: upgrade invad"
        elif (manifest.product, manifest.version) != (product, version):
            problem = f"it describes {manifest.product}/{manifest.version}"
        elif not all(_safe_path(name) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                     and isinstance(entry.get("size"), int) for name, entry in manifest.files.items()):
            problem = "a file entry has an unsafe path or no sha256 and size"
        elif "bundle/detector_config.json" not in manifest.files or not manifest.smoke_files():
            problem = "it lists no bundle/detector_config.json or no smoke/ image"
        if problem:
            raise Refused("manifest_invalid", f"manifest of {product}/{version}: {problem}")
        return manifest

    def smoke_files(self) -> list[str]:
        return sorted(name for name in self.files if name.startswith(f"{SMOKE_DIR}/"))

    def same_content(self, other: "Manifest") -> bool:
        """True when both list the same files with the same bytes (the publication times may differ)."""
        return {k: dict(v) for k, v in self.files.items()} == {k: dict(v) for k, v in other.files.items()}


def prepare(bundle_dir: str | os.PathLike, product: str, version: str | None, smoke_dir: str | os.PathLike | None,
            smoke_count: int) -> tuple[Manifest, dict[str, Path]]:
    """The manifest of a bundle folder about to be published, and its files (manifest path -> local file).

    The bundle is read and validated (as a worker will load it), every file under it except hidden ones
    and ``smoke/`` is included, and ``smoke_count`` images of ``smoke_dir`` (default: the bundle's own
    ``smoke/`` folder), evenly spaced in name order, become its smoke images. ``version`` defaults to
    the bundle's content hash.

    Raises:
        ValueError: an invalid bundle (BundleError), a product the bundle does not serve, a bad version
            name, or no smoke images; the message says which and how to fix it.
    """
    from worker.core.bundle import load_bundle  # torch: only the command that publishes pays for it
    from worker.core.imagefiles import list_image_files

    folder = Path(bundle_dir)
    contents = load_bundle(folder)
    check_name("product", product)
    version = check_name("version", version or contents.version)
    classes = tuple(contents.config.classes)
    if len(classes) > 1 and product not in classes:
        raise ValueError(f"bundle {folder} serves products {list(classes)}, not {product!r}: publish it for one "
                         "of those")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] != SMOKE_DIR and not any(p.startswith(".") for p in rel.parts):
            files[f"bundle/{rel.as_posix()}"] = path
    smoke_root = Path(smoke_dir) if smoke_dir else folder / SMOKE_DIR
    if not smoke_root.is_dir():
        raise ValueError(f"no smoke images: {smoke_root} is not a folder; give --smoke FOLDER of normal images of "
                         f"{product!r} (e.g. held-out train/good images), which workers score before switching")
    images = [image.path for image in list_image_files(smoke_root)]
    if not images:
        raise ValueError(f"no smoke images: {smoke_root} holds no image files (.png, .jpg, ...)")
    step = max(1, len(images) / smoke_count)
    chosen = [images[int(i * step)] for i in range(min(smoke_count, len(images)))]
    for index, path in enumerate(chosen):
        files[f"{SMOKE_DIR}/{index:03d}{path.suffix.lower()}"] = path
    for name in files:
        if not _safe_path(name):
            raise ValueError(f"bundle file {name!r} has a name S3 keys and manifests do not allow "
                             f"({_PART_RE.pattern} per folder); rename it or remove it from {folder}")
    entries = {name: {"sha256": sha256_file(path), "size": path.stat().st_size} for name, path in files.items()}
    manifest = Manifest(product=product, version=version, bundle_version=contents.version,
                        model_name=contents.config.name, classes=classes, target_fpr=contents.config.target_fpr,
                        files=entries, published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        published_by=who())
    return manifest, files


class ModelStore:
    """Published versions under ``s3://{bucket}/{prefix}/_models/``. S3 failures propagate as botocore
    raised them (callers classify them with :mod:`worker.common.s3client`), except those named below."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self.client, self.bucket = client, bucket
        self.root = "/".join(part for part in (prefix.strip("/"), MODELS_DIR) if part)

    def key(self, product: str, version: str, name: str = MANIFEST_FILE) -> str:
        return f"{self.root}/{product}/{version}/{name}"

    def read_manifest(self, product: str, version: str) -> tuple[Manifest, str] | None:
        """(manifest, sha256 of its bytes) of a published version, None when there is none.

        Raises:
            Refused: ``manifest_invalid`` when it exists but cannot be used.
        """
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=self.key(product, version))["Body"].read()
        except s3client.S3_ERRORS as error:
            if s3client.is_missing(error):
                return None
            raise
        return Manifest.from_json(raw, product, version), hashlib.sha256(raw).hexdigest()

    def publish(self, manifest: Manifest, files: Mapping[str, Path]) -> bool:
        """Upload the files, then the manifest. Returns False (uploading nothing) when the very same
        files are already published under this version.

        Raises:
            VersionConflict: other files are published under this version.
        """
        existing = self.read_manifest(manifest.product, manifest.version)
        if existing is not None:
            if existing[0].same_content(manifest):
                return False
            raise VersionConflict(f"{manifest.product}/{manifest.version} is already published with other files "
                                  f"(bundle {existing[0].bundle_version}, published {existing[0].published_at}); "
                                  "a published version never changes: publish under a new --version")
        for name in sorted(files):
            with open(files[name], "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=self.key(manifest.product, manifest.version, name),
                                       Body=body)
        self.client.put_object(Bucket=self.bucket, Key=self.key(manifest.product, manifest.version),
                               Body=manifest.to_json(), ContentType="application/json")
        return True

    def _children(self, prefix: str) -> list[str]:
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                           Delimiter="/"):
            names += [entry["Prefix"][len(prefix):].rstrip("/") for entry in page.get("CommonPrefixes", [])]
        return sorted(names)

    def products(self) -> list[str]:
        """Products with at least one version folder."""
        return self._children(f"{self.root}/")

    def versions(self, product: str) -> list[tuple[str, Manifest | None]]:
        """(version, manifest) of each version folder of ``product``; None for a publication that never
        finished (no manifest)."""
        out = []
        for version in self._children(f"{self.root}/{product}/"):
            try:
                found = self.read_manifest(product, version)
            except Refused:
                found = None
            out.append((version, found[0] if found else None))
        return out

    def download(self, manifest_key: str, product: str, version: str, manifest_sha256: str,
                 cache_dir: str | os.PathLike) -> tuple[Manifest, Path]:
        """The version whose manifest is ``manifest_key``, in ``{cache_dir}/{product}/{version}-{sha12}/``
        (``bundle/``, ``smoke/``): every file checked against the manifest, the manifest against
        ``manifest_sha256``. A complete copy already there is checked again and reused.

        Raises:
            Refused: the manifest is missing, invalid or not the one activated; a file is missing or its
                bytes differ from the manifest.
        """
        base, _, name = manifest_key.rpartition("/")
        if name != MANIFEST_FILE:
            raise Refused("manifest_invalid", f"{manifest_key!r} does not name a {MANIFEST_FILE}")
        raw = self._get(manifest_key, "manifest_missing")
        if hashlib.sha256(raw).hexdigest() != manifest_sha256:
            raise Refused("manifest_mismatch", f"the manifest of {product}/{version} is not the one activated "
                          "(it was replaced after activation): activate the version again to accept it")
        manifest = Manifest.from_json(raw, product, version)
        final = Path(cache_dir) / product / f"{version}-{manifest_sha256[:12]}"
        if final.is_dir():
            try:
                self._verify(manifest, final)
                return manifest, final
            except Refused:
                shutil.rmtree(final, ignore_errors=True)
        staging = final.with_name(f".{final.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for name in sorted(manifest.files):
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                self._get_file(f"{base}/{name}", target)
            self._verify(manifest, staging)
            (staging / MANIFEST_FILE).write_bytes(raw)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest, final

    def _get(self, key: str, missing_reason: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except s3client.S3_ERRORS as error:
            if s3client.is_missing(error):
                raise Refused(missing_reason, f"s3://{self.bucket}/{key} does not exist") from error
            raise

    def _get_file(self, key: str, target: Path) -> None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except s3client.S3_ERRORS as error:
            if s3client.is_missing(error):
                raise Refused("file_missing", f"s3://{self.bucket}/{key} is in the manifest but not in S3") from error
            raise
        with open(target, "wb") as handle:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                handle.write(chunk)

    @staticmethod
    def _verify(manifest: Manifest, folder: Path) -> None:
        for name, entry in manifest.files.items():
            path = folder / name
            if not path.is_file():
                raise Refused("file_missing", f"{name} of {manifest.product}/{manifest.version} was not downloaded")
            if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                raise Refused("checksum_mismatch", f"{name} of {manifest.product}/{manifest.version} differs from "
                              "its manifest entry (corrupted in storage or in transit): publish it again under a "
                              "new version")


def prune_cache(cache_dir: str | os.PathLike, product: str, keep: set[Path]) -> None:
    """Delete the downloaded versions of ``product`` other than ``keep`` (folders in use)."""
    folder = Path(cache_dir) / product
    if not folder.is_dir():
        return
    keep = {path.resolve() for path in keep}
    for entry in folder.iterdir():
        if entry.resolve() not in keep and not entry.name.startswith("."):
            shutil.rmtree(entry, ignore_errors=True)
