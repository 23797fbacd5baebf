"""The image id of a file: the one rule `invad produce` and embedded mode (`invad work --source`) share.

    image_id = "{line_id}/{relative path}"

The relative path is taken from the source root: the folder given on the command line (a single file:
its name), the fixed part of a glob, the S3 prefix up to its last "/", or a stdin path as written. The
line id is part of the id because Redis keys records and alert markers by image id alone: two lines
whose cameras both write ``cam1/000001.png`` must not overwrite each other's scores or suppress each
other's alerts.

A path that is already a valid id segment by segment is kept verbatim. Otherwise characters outside
[A-Za-z0-9_:.-] become "_", runs of dots and leading/trailing dots in a segment become "_", empty
segments are dropped, and "-" plus the first 8 hex digits of the SHA-256 of the unsanitised
"{line_id}/{relative path}" are added before the extension, so distinct files keep distinct ids. An id
longer than 256 characters is truncated the same way (tag and extension kept).
"""

from __future__ import annotations

import hashlib
import re

from .image_ref import IMAGE_ID_MAX_LEN

_UNSAFE = re.compile(r"[^A-Za-z0-9_:.-]")
_DOTS = re.compile(r"\.{2,}")
_MAX_EXT = 8  # a longer "extension" is part of the name, not a file type


def _segment(text: str) -> str:
    text = _DOTS.sub("_", _UNSAFE.sub("_", text))
    if text.startswith("."):
        text = "_" + text[1:]
    if text.endswith("."):
        text = text[:-1] + "_"
    return text


def derive_image_id(line_id: str, relative: str) -> str:
    """The image id of the file at ``relative`` (POSIX, "/"-separated) under a source root on ``line_id``.

    Deterministic: the same line and path give the same id on every machine and in every mode, so a
    republished image overwrites its records instead of adding new ones. The result always matches the
    image_ref schema's ``image_id`` pattern.
    """
    original = "/".join([line_id, *[part for part in relative.split("/") if part]])
    image_id = "/".join(_segment(part) for part in original.split("/"))
    if image_id == original and len(image_id) <= IMAGE_ID_MAX_LEN:
        return image_id
    tag = "-" + hashlib.sha256(original.encode("utf-8")).hexdigest()[:8]
    head, _, last = image_id.rpartition("/")
    stem, dot, ext = last.rpartition(".")
    if not dot or not stem or len(ext) > _MAX_EXT:
        stem, ext = last, ""
    ext = "." + ext if ext else ""
    body = (head + "/" if head else "") + stem
    # Truncation may end a segment on "/" or "."; strip those so the result stays a valid id.
    body = body[: IMAGE_ID_MAX_LEN - len(tag) - len(ext)].rstrip("/.")
    return body + tag + ext
