"""Which files are images, and the image files under a folder: one rule for every command that lists them
(`invad train/score/eval`, `invad produce`, `invad work --source`).

Standard library only: the producers import it, and they never load numpy, PIL or torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` ends in one of IMAGE_EXTENSIONS (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageFile:
    """An image under a folder: ``path`` (the folder joined with ``rel``) and ``rel``, the POSIX path
    relative to the folder that image ids and upload keys are built from."""

    path: Path
    rel: str


def list_image_files(folder: str | os.PathLike) -> list[ImageFile]:
    """Every image file under ``folder``, recursively, sorted by relative path (folder by folder).

    Symlinked files are listed, symlinked folders are not entered. Raises NotADirectoryError when
    ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a folder")
    paths = sorted(p for p in root.rglob("*") if is_image_file(p) and p.is_file())
    return [ImageFile(p, p.relative_to(root).as_posix()) for p in paths]
