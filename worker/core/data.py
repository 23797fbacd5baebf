"""Finding images on disk: folders of normal images, MVTec AD categories, and the ELPV solar-cell set.

MVTec AD layout (the de-facto standard):
    CATEGORY/train/good/*.png
    CATEGORY/test/good/*.png, CATEGORY/test/<defect>/*.png
    CATEGORY/ground_truth/<defect>/<stem>_mask.png

ELPV (``elpv-dataset`` on PyPI, 2,624 cells): cells labelled 0.0 are normal, 1.0 defective; 1/3 and
2/3 are left out. Fixed split: the normal cells sorted by file name and shuffled with
``numpy.random.default_rng(0)``; the first 60 % train, the remaining 40 % and every defective cell test.
Each ELPV sample's ``cls`` is its cell type, ``mono`` or ``poly`` (monocrystalline cells are uniform,
polycrystalline ones show a grain texture): ``elpv/mono`` and ``elpv/poly`` name one type's cells, so
``invad train elpv/mono elpv/poly`` trains a class-conditional bundle, as a line making one kind would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .imagefiles import IMAGE_EXTENSIONS, list_image_files

ELPV = "elpv"
ELPV_TYPES = ("mono", "poly")
ELPV_TRAIN_FRACTION = 0.6


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    mask: Path | None = None
    defect: str = "good"
    cls: str = "default"


class DatasetLayoutError(ValueError):
    """A data folder that is empty or not in a supported layout."""


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted for reproducibility."""
    return [file.path for file in list_image_files(folder)]


def is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def normal_training_images(data: str | os.PathLike) -> list[Path]:
    """Normal images for training from one DATA argument (a folder, an MVTec category, or ``elpv``).

    Raises:
        DatasetLayoutError: the folder does not exist, holds no images, or is an MVTec category
            without ``train/good``.
    """
    if str(data) == ELPV or is_elpv_type(data):
        return [s.path for s in elpv_samples(data, train=True)]
    folder = Path(data)
    if not folder.is_dir():
        raise DatasetLayoutError(f"training data {folder} is not a folder")
    if is_mvtec_category(folder):
        good = folder / "train" / "good"
        if not good.is_dir():
            raise DatasetLayoutError(f"{folder} looks like an MVTec AD category (it has train/ or test/) but has "
                                     f"no train/good folder; put the normal training images in {good}")
        folder = good
    images = list_images(folder)
    if not images:
        raise DatasetLayoutError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def mvtec_test_set(category: str | os.PathLike, cls: str = "default") -> list[Sample]:
    """Labelled test samples of an MVTec AD category, with mask paths where masks exist."""
    category = Path(category)
    test = category / "test"
    if not test.is_dir():
        raise DatasetLayoutError(f"{category} has no test/ folder: expected the MVTec AD layout "
                                 "CATEGORY/test/good and CATEGORY/test/<defect>")
    samples: list[Sample] = []
    for defect_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for path in list_images(defect_dir):
            mask = None
            if defect != "good":
                candidates = sorted((category / "ground_truth" / defect).glob(f"{path.stem}_mask.*"))
                mask = candidates[0] if candidates else None
            samples.append(Sample(path, 0 if defect == "good" else 1, mask, defect, cls))
    if not samples:
        raise DatasetLayoutError(f"no test images under {test}")
    if all(s.label == 0 for s in samples) or all(s.label == 1 for s in samples):
        raise DatasetLayoutError(f"{test} needs both good and defective images to evaluate")
    return samples


def elpv_root() -> Path:
    try:
        import elpv_dataset  # an optional extra (pip install invad[elpv]): only `elpv` data needs it
    except ImportError as error:
        raise DatasetLayoutError("the ELPV data set needs the elpv-dataset package: pip install elpv-dataset") from error
    return Path(elpv_dataset.__file__).parent / "data"


def is_elpv_type(data: str | os.PathLike) -> bool:
    """``data`` names one ELPV cell type (``elpv/mono``, ``elpv/poly``) rather than a folder."""
    parts = Path(data).parts
    return len(parts) == 2 and parts[0] == ELPV and parts[1] in ELPV_TYPES and not Path(data).exists()


def elpv_samples(data: str | os.PathLike, train: bool) -> list[Sample]:
    """The training or test samples that ``elpv`` (both cell types) or ``elpv/<type>`` names."""
    samples = elpv_split()[0 if train else 1]
    return samples if str(data) == ELPV else [s for s in samples if s.cls == Path(data).name]


def elpv_split() -> tuple[list[Sample], list[Sample]]:
    """(train, test) samples of the fixed ELPV split described in the module docstring; ``cls`` = cell type."""
    root = elpv_root()
    rows = np.genfromtxt(root / "labels.csv", dtype=["|S64", "<f8", "|S8"], names=["path", "probability", "type"])
    kinds = {p.decode(): t.decode() for p, t in zip(rows["path"], rows["type"])}
    normal = sorted(str(p.decode()) for p, prob in zip(rows["path"], rows["probability"]) if prob == 0.0)
    defective = sorted(str(p.decode()) for p, prob in zip(rows["path"], rows["probability"]) if prob == 1.0)
    order = np.random.default_rng(0).permutation(len(normal))
    cut = int(round(ELPV_TRAIN_FRACTION * len(normal)))
    train = [Sample(root / normal[i], 0, cls=kinds[normal[i]]) for i in order[:cut]]
    test = [Sample(root / normal[i], 0, cls=kinds[normal[i]]) for i in sorted(order[cut:])]
    test += [Sample(root / p, 1, None, "defect", kinds[p]) for p in defective]
    return train, test


def test_samples(data: str | os.PathLike, classes: Sequence[str] = ("default",)) -> list[Sample]:
    """Labelled samples of a bundle's ``classes``, each tagged with its class (``Sample.cls``).

    One class: ``data`` is ``elpv`` (or ``elpv/<type>``) or an MVTec AD category. Several (a class-conditional
    bundle): ``data`` holds one MVTec AD category per class, named like the class (``DATA/<class>/test/...``),
    or is ``elpv`` for a bundle of ELPV cell types (each test cell scored as its own type).

    Raises:
        DatasetLayoutError: a class has no category folder, or a category is not in the MVTec layout.
    """
    if str(data) == ELPV and set(classes) <= set(ELPV_TYPES) and len(classes) > 1:
        return [s for s in elpv_split()[1] if s.cls in classes]
    if len(classes) == 1:
        if str(data) == ELPV or is_elpv_type(data):
            samples = elpv_samples(data, train=False)
        else:
            samples = mvtec_test_set(data)
        return [replace(s, cls=classes[0]) for s in samples]
    root = Path(data)
    missing = [name for name in classes if not (root / name).is_dir()]
    if str(data) == ELPV or missing:
        raise DatasetLayoutError(f"labelled data for a bundle of classes {list(classes)} is one folder holding an "
                                 f"MVTec AD category per class, named like the class; {data} lacks "
                                 f"{', '.join(str(root / name) for name in missing or classes)}")
    return [sample for name in classes for sample in mvtec_test_set(root / name, name)]
