"""The synthetic-defect generator: masks that mark exactly what changed, reproducible by seed."""

import numpy as np
import pytest
from PIL import Image

from worker.core.data import mvtec_test_set
from worker.quality.defects import KINDS, draw_defect, write_localisation_set


def _cell(size=48, seed=0):
    """A small grey cell with dark horizontal busbars and faint vertical fingers, like an EL image."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 180.0) + rng.normal(0, 6, (size, size))
    image[:, ::4] -= 12
    image[size // 3] = image[2 * size // 3] = 70
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_mask_is_not_empty_and_pixels_change_only_inside_it(kind, seed):
    image = _cell()
    out, mask = draw_defect(image, kind, seed)
    assert out.shape == image.shape and out.dtype == np.uint8 and mask.dtype == bool
    assert mask.any(), "every defect has a mask"
    changed = out != image
    assert changed.any(), "the defect is visible"
    assert not (changed & ~mask).any(), "pixels outside the mask are untouched"
    assert mask.mean() < 0.5, "a defect covers a minority of the cell"


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_defect_other_seed_other_defect(kind):
    image = _cell()
    first, mask = draw_defect(image, kind, 7)
    again, mask_again = draw_defect(image, kind, 7)
    other, other_mask = draw_defect(image, kind, 8)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert not np.array_equal(mask, other_mask)


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match="unknown defect kind 'hole'"):
        draw_defect(_cell(), "hole", 0)
    with pytest.raises(ValueError, match="greyscale uint8"):
        draw_defect(np.zeros((16, 16, 3), np.uint8), "crack", 0)


def test_localisation_set_is_an_mvtec_category_that_eval_reads(tmp_path):
    normals = []
    for i in range(10):
        path = tmp_path / "normals" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(_cell(seed=i)).save(path)
        normals.append(path)
    root = write_localisation_set(tmp_path / "loc", normals, seed=3, n_good=2, per_kind=2)
    samples = mvtec_test_set(root)
    assert sorted({s.defect for s in samples}) == sorted(["good", *KINDS])
    assert sum(s.label for s in samples) == 2 * len(KINDS)
    for s in samples:
        if s.label:
            mask = np.asarray(Image.open(s.mask)) > 0
            assert mask.any() and mask.shape == (48, 48)
    with pytest.raises(ValueError, match="needs 22 normal images, got 10"):
        write_localisation_set(tmp_path / "small", normals, n_good=2, per_kind=5)
