"""The ELPV cell-pair set that measures tiles against squashing (parts twice as wide as tall)."""

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("elpv_dataset")

from worker.core.data import elpv_split  # noqa: E402
from worker.quality.pairs import markdown, write_pair_set  # noqa: E402


def test_pairs_are_two_cells_of_one_type_and_no_test_cell_is_trained_on(tmp_path):
    root = write_pair_set(tmp_path / "pairs", seed=0, limit=3)
    for kind in ("mono", "poly"):
        for folder in ("train/good", "test/good", "test/defect"):
            files = sorted((root / kind / folder).glob("*.png"))
            assert len(files) == 3, (kind, folder)
            assert all(Image.open(f).size == (600, 300) for f in files)
    test_pixels = {np.asarray(Image.open(s.path).convert("L")).tobytes() for s in elpv_split()[1] if s.cls == "mono"}
    for pair in (root / "mono/train/good").glob("*.png"):
        halves = np.asarray(Image.open(pair)).reshape(300, 2, 300).transpose(1, 0, 2)
        assert not any(half.tobytes() in test_pixels for half in halves)


def test_the_table_gives_mean_and_spread_per_layout():
    row = {"image_auroc": {"mean": 0.83, "std": 0.01}, "image_ap": {"mean": 0.88, "std": 0.02},
           "eval_ms_per_image": {"mean": 99.0, "std": 1.0}}
    table = markdown({"seeds": [0, 1, 2], "layouts": {"squash 1x1": row}})
    assert "| squash 1x1 | 0.830 ± 0.010 | 0.880 ± 0.020 | 99 |" in table
