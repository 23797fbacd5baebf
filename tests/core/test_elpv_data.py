"""The packaged ELPV set: the fixed split, its cell types as classes, and the localisation set's sources."""

import numpy as np
import pytest
from PIL import Image

from worker.core import data
from worker.core.data import ELPV_TYPES, DatasetLayoutError, elpv_split, normal_training_images
from worker.quality.defects import KINDS, localisation_sources, write_localisation_set

pytest.importorskip("elpv_dataset")


def test_every_cell_carries_its_type_and_elpv_slash_type_selects_one():
    train, test = elpv_split()
    assert {s.cls for s in train} == {s.cls for s in test} == set(ELPV_TYPES)
    mono, poly = normal_training_images("elpv/mono"), normal_training_images("elpv/poly")
    assert sorted(mono + poly) == sorted(normal_training_images("elpv")) == sorted(s.path for s in train)
    assert set(mono) == {s.path for s in train if s.cls == "mono"}
    one = data.test_samples("elpv/poly", ("cells",))
    assert {s.cls for s in one} == {"cells"} and len(one) == sum(s.cls == "poly" for s in test)
    both = data.test_samples("elpv", ELPV_TYPES)  # a class-conditional bundle: each cell scored as its own type
    assert [(s.path, s.cls) for s in both] == [(s.path, s.cls) for s in test]
    with pytest.raises(DatasetLayoutError):
        normal_training_images("elpv/amorphous")  # not a type, and no such folder


def test_localisation_sources_name_the_cell_each_image_is_drawn_on(tmp_path):
    normals = [s.path for s in elpv_split()[1] if s.label == 0][:12]
    plan = localisation_sources(normals, seed=3, n_good=4, per_kind=2)
    assert len(plan) == 4 + 2 * len(KINDS) and len(set(plan.values())) == len(plan)
    root = write_localisation_set(tmp_path / "loc", normals, seed=3, n_good=4, per_kind=2)
    written = sorted(p.relative_to(root).as_posix() for p in (root / "test").rglob("*.png"))
    assert written == sorted(plan)
    good = root / "test" / "good" / "0000.png"  # an untouched cell is its source, in grey
    assert np.array_equal(np.asarray(Image.open(good)), np.asarray(Image.open(plan["test/good/0000.png"]).convert("L")))
