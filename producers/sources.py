"""Where ImageRefs come from: a local folder, a glob, an S3 prefix, or lines on stdin.

Image ids follow :func:`schemas.image_id.derive_image_id`, "{line_id}/{relative path}" with the path
taken from the source root (the folder; the fixed part of a glob; the S3 prefix up to its last "/"; a
stdin path as written, without a leading "/"). They are deterministic, so publishing the same images again
overwrites the same Redis records and never raises a second alert, and embedded mode gives a folder's
files the same ids.

captured_at is the file's modification time (S3: LastModified; remote URIs on stdin: now), in UTC.
Only files with an image extension (worker.core.imagefiles, any case) are picked up, in sorted path
order.
"""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Mapping, Protocol
from urllib.parse import unquote, urlsplit

from schemas import ImageRef, SchemaError
from schemas.image_id import derive_image_id
from worker.core.imagefiles import IMAGE_EXTENSIONS, ImageFile, is_image_file, list_image_files

from .s3 import S3, parse_s3_uri

OnError = Callable[[str, str], None]  # (what, message): a per-item problem that was skipped


class SourceError(ValueError):
    """A source that cannot be read at all (missing folder, bad S3 URI); the message says which and why."""


class Uploader(Protocol):
    def __call__(self, path: Path, image_id: str) -> str:
        """Upload ``path`` for ``image_id`` and return its URI."""


@dataclass(frozen=True)
class RefTemplate:
    """The fields a source does not know, shared by every ImageRef it builds (from CLI flags)."""

    producer: str
    line_id: str | None = None
    product: str = "default"
    camera_id: str | None = None
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def build(self, image_id: str, uri: str, captured_at: datetime) -> ImageRef:
        """An ImageRef with these defaults. Raises SourceError when no line id is set, SchemaError on bad fields."""
        return ImageRef(image_id=image_id, uri=uri, line_id=_need_line_id(self), camera_id=self.camera_id,
                        product=self.product, captured_at=captured_at, producer=self.producer,
                        attributes=self.attributes)


def _need_line_id(template: RefTemplate) -> str:
    if template.line_id is None:
        raise SourceError("a line id is required for paths and URIs (only ImageRef JSON carries its own): "
                          "pass --line-id")
    return template.line_id


@dataclass
class Source:
    """refs: the ImageRefs, lazily (uploads happen while iterating); total: count when known up front."""

    refs: Iterator[ImageRef]
    total: int | None
    description: str


def list_folder(root: str | Path) -> list[ImageFile]:
    """Image files under ``root`` (recursive; a single file gives itself), sorted by relative path.

    Raises:
        SourceError: ``root`` does not exist.
    """
    root = Path(root).expanduser().resolve()
    if root.is_file():
        return [ImageFile(root, root.name)]
    if not root.is_dir():
        raise SourceError(f"{str(root)!r} is not a folder or file")
    return list_image_files(root)


def list_glob(pattern: str) -> list[ImageFile]:
    """Image files matching ``pattern`` ("**" recurses), relative to its fixed leading folder, sorted."""
    parts = Path(pattern).expanduser().parts
    first_magic = next((i for i, part in enumerate(parts) if globlib.has_magic(part)), len(parts))
    base = Path(*parts[:first_magic]) if first_magic else Path(".")
    matches = globlib.glob(str(Path(pattern).expanduser()), recursive=True)
    files = sorted(Path(m) for m in matches if is_image_file(m) and os.path.isfile(m))
    return [ImageFile(p.resolve(), p.relative_to(base).as_posix()) for p in files]


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def local_ref(file: ImageFile, template: RefTemplate, upload: Uploader | None) -> ImageRef:
    """The ImageRef of a local file: uploaded first when ``upload`` is given, else a file:// URI."""
    image_id = derive_image_id(_need_line_id(template), file.rel)
    uri = upload(file.path, image_id) if upload else file.path.as_uri()
    return template.build(image_id, uri, _mtime(file.path))


def local_refs(files: Iterable[ImageFile], template: RefTemplate, upload: Uploader | None,
               on_error: OnError) -> Iterator[ImageRef]:
    """ImageRefs of ``files``; an unreadable file is reported to ``on_error`` and skipped."""
    for file in files:
        try:
            yield local_ref(file, template, upload)
        except (OSError, SchemaError) as exc:
            on_error(str(file.path), str(exc))


def s3_refs(s3: S3, uri: str, template: RefTemplate, on_error: OnError) -> Iterator[ImageRef]:
    """ImageRefs of the images under an s3://bucket/prefix, in key order.

    A key that makes no valid ImageRef is reported to ``on_error`` and skipped; a failed listing raises
    producers.s3.S3Error.
    """
    line_id = _need_line_id(template)
    bucket, prefix = parse_s3_uri(uri)
    root = prefix[: prefix.rfind("/") + 1]
    for obj in s3.list_objects(bucket, prefix):
        if not is_image_file(obj.key):
            continue
        try:
            yield template.build(derive_image_id(line_id, obj.key[len(root):]), f"s3://{bucket}/{obj.key}",
                                 obj.last_modified.astimezone(timezone.utc))
        except SchemaError as exc:
            on_error(f"s3://{bucket}/{obj.key}", str(exc))


def line_ref(line: str, template: RefTemplate, upload: Uploader | None) -> ImageRef:
    """The ImageRef of one stdin line: a full ImageRef JSON object, a URI, or a local path.

    Raises:
        SchemaError: bad JSON line or field; SourceError: unusable path or URI; OSError: unreadable file.
    """
    text = line.strip()
    if text.startswith("{"):
        return ImageRef.from_json(text)
    if text.startswith(("s3://", "https://")):
        parts = urlsplit(text)
        rel = unquote(parts.path if text.startswith("s3://") else parts.netloc + parts.path)
        return template.build(derive_image_id(_need_line_id(template), rel), text, datetime.now(timezone.utc))
    if text.startswith("file://"):
        text = unquote(urlsplit(text).path)
    elif "://" in text:
        raise SourceError(f"{text!r}: unsupported URI scheme; use s3://, https://, file:// or a local path")
    path = Path(text).expanduser()
    if not path.is_file():
        raise SourceError(f"{text!r} is not a readable file")
    rel = PurePosixPath(os.path.normpath(text)).as_posix().lstrip("/")
    return local_ref(ImageFile(path.resolve(), rel), template, upload)


def stdin_refs(lines: Iterable[str], template: RefTemplate, upload: Uploader | None,
               on_error: OnError) -> Iterator[ImageRef]:
    """ImageRefs of non-blank, non-# lines; a bad line is reported to ``on_error`` ("line N") and skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield line_ref(line, template, upload)
        except (SchemaError, SourceError, OSError) as exc:
            on_error(f"line {number}", str(exc))


def open_source(spec: str, template: RefTemplate, *, on_error: OnError, upload: Uploader | None = None,
                s3: S3 | None = None, stdin: Iterable[str] | None = None) -> Source:
    """The Source for a CLI SOURCE argument: "-" (stdin), "s3://bucket/prefix", a glob, a folder or a file.

    Raises:
        SourceError: the source cannot be read at all.
    """
    if spec == "-":
        return Source(stdin_refs(stdin or (), template, upload, on_error), None, "stdin")
    if spec.startswith("s3://"):
        if s3 is None:
            raise SourceError("an S3 source needs an S3 client")
        return Source(s3_refs(s3, spec, template, on_error), None, spec)
    files = list_glob(spec) if globlib.has_magic(spec) else list_folder(spec)
    if not files:
        raise SourceError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {spec!r}")
    return Source(local_refs(files, template, upload, on_error), len(files), spec)
