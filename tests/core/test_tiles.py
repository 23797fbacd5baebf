"""Tiles: non-square parts are cut into square tiles instead of being squashed to one square."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import make_texture_images
from worker.cli import main
from worker.core.config import DetectorConfig
from worker.core.detector import Detector
from worker.core.evaluate import evaluate_path
from worker.core.images import model_input
from worker.core.tiles import join_tiles, layout_for, split_tiles
from worker.core.train import TrainConfig, train

SIZE = 64


def test_split_and_join_are_inverse_and_keep_reading_order():
    pixels = torch.arange(2 * 3 * 128 * 192, dtype=torch.float32).reshape(2, 3, 128, 192)  # 2 x 3 tiles
    tiles = split_tiles(pixels, (2, 3))
    assert tiles.shape == (12, 3, 64, 64)
    # image 1, tile 4 = second row, second column
    assert torch.equal(tiles[6 + 4], pixels[1, :, 64:128, 64:128])
    assert torch.equal(join_tiles(tiles[:, 0], (2, 3)), pixels[:, 0])
    assert split_tiles(pixels, (1, 1)) is pixels


@pytest.mark.parametrize(("sizes", "layout"), [
    ([(300, 300), (310, 290)], (1, 1)),
    ([(400, 200), (390, 200), (1000, 100)], (1, 2)),
    ([(100, 310), (100, 290), (100, 300)], (3, 1)),
    ([(200, 150)], (1, 1)),  # 4:3 is closer to one square than to two
    ([(5000, 10)], (1, 8)),  # capped
    ([(250, 100)], (1, 3)),  # halves round up
])
def test_layout_follows_the_median_aspect_ratio(sizes, layout):
    assert layout_for(sizes) == layout


def test_a_layout_out_of_range_is_refused_with_its_limits():
    with pytest.raises(ValueError, match=r"1\.\.8 tiles per side"):
        DetectorConfig(tiles=(0, 2))
    with pytest.raises(ValueError, match=r"1\.\.8 tiles per side"):
        DetectorConfig(tiles=(1, 9))


def _wide_images(folder, n, seed, defect=False):
    """Images twice as wide as tall: two generated squares side by side; with ``defect`` the right one
    has a defect. Returns the masks (H, 2H) of the defective ones."""
    folder.mkdir(parents=True, exist_ok=True)
    left, _ = make_texture_images(n, size=SIZE, seed=seed)
    right, masks = make_texture_images(n, defect=defect, size=SIZE, seed=seed + 100)
    for i, (a, b) in enumerate(zip(left, right)):
        wide = Image.new("RGB", (2 * SIZE, SIZE))
        wide.paste(a, (0, 0))
        wide.paste(b, (SIZE, 0))
        wide.save(folder / f"{i:03d}.png")
    return [np.concatenate([np.zeros_like(m), m], axis=1) for m in masks] if defect else None


@pytest.fixture(scope="module")
def wide_category(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    _wide_images(root / "train/good", 40, seed=0)
    _wide_images(root / "test/good", 6, seed=1)
    masks = _wide_images(root / "test/spot", 6, seed=2, defect=True)
    (root / "ground_truth/spot").mkdir(parents=True)
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth/spot" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def tiled_bundle(wide_category, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiled"
    train([wide_category], out, DetectorConfig(name="tiled", image_size=SIZE, tiles=(1, 2)),
          TrainConfig(iterations=300, batch_size=8, width=16, num_blocks=1, warmup=10, calib_fraction=0.25),
          progress=False)
    return out


@pytest.fixture(scope="module")
def tiled(tiled_bundle):
    return Detector.from_pretrained(tiled_bundle, "cpu")


def test_an_image_scores_as_its_highest_tile_and_its_map_keeps_its_shape(tiled, wide_category):
    assert tiled.config.tiles == (1, 2) and tiled.config.input_shape == (SIZE, 2 * SIZE)
    # 30 training images, 10 calibration images: one calibration score per image, not per tile
    assert len(tiled.calibration_scores["default"]) == 10
    image = Image.open(sorted((wide_category / "test/spot").iterdir())[0]).convert("RGB")
    whole = tiled.predict([image])
    assert whole.anomaly_map.shape == (1, SIZE, 2 * SIZE)

    square = Detector(replace(tiled.config, tiles=(1, 1)), tiled.extractor, tiled.denoisers, tiled.alphas_cumprod,
                      map_extractor=tiled.map_extractor, map_denoisers=tiled.map_denoisers)
    square.load_state_dict(tiled.state_dict())
    halves = square.predict([image.crop((0, 0, SIZE, SIZE)), image.crop((SIZE, 0, 2 * SIZE, SIZE))])
    # the same numbers through other memory layouts (tiles cut from one tensor vs separate crops): float32
    # kernels may sum in another order, 1.7e-5 apart on a score of 1.3 with two torch threads
    assert whole.pred_score[0] == pytest.approx(halves.pred_score.max(), rel=1e-4)

    prepared = tiled.predict([model_input(image, tiled.config.input_shape)])  # as the worker's fetch pool does
    assert prepared.pred_score[0] == pytest.approx(whole.pred_score[0], abs=1e-5)
    with pytest.raises(ValueError, match=r"\(64, 128, 3\) uint8 array"):
        tiled.predict([model_input(image, SIZE)])


def test_the_streaming_worker_scores_tiled_parts_as_predict_does(tiled, tiled_bundle, wide_category, tmp_path):
    from worker.pipeline.cli import run_embedded

    folder = wide_category / "test/spot"
    summary = run_embedded(folder, str(tiled_bundle), tmp_path / "s.db", tmp_path / "out", batch_size=4)
    assert summary["scored"] == 6 and summary["dead_lettered"] == {}
    paths = sorted(folder.iterdir())
    expected = tiled.predict([Image.open(p).convert("RGB") for p in paths]).pred_score
    streamed = [summary["scores"][f"local/{p.name}"] for p in paths]
    assert streamed == pytest.approx(expected.tolist(), abs=1e-5)
    overlays = sorted((tmp_path / "out").rglob("overlay.png"))
    assert len(overlays) == summary["flagged"] >= 1, "the drawn defects are flagged"
    assert all(Image.open(o).size == (2 * SIZE, SIZE) for o in overlays)  # the map covers the whole part


def test_evaluation_measures_tiled_maps_against_masks_at_the_image_shape(tiled, wide_category):
    report = evaluate_path(tiled, str(wide_category), progress=False)
    assert report["model"]["tiles"] == [1, 2] and report["model"]["input_shape"] == [SIZE, 2 * SIZE]
    assert report["n_images"] == 12 and report["pixel_auroc"] is not None


def test_train_cli_picks_the_layout_from_the_images(wide_category, tmp_path, capsys):
    assert main(["train", str(wide_category), "--out", str(tmp_path / "auto"), "--image-size", str(SIZE),
                 "--tiles", "auto", "--iterations", "2", "--width", "8", "--blocks", "1"]) == 0
    assert '"tiles": [\n    1,\n    2\n  ]' in capsys.readouterr().out
    assert Detector.from_pretrained(tmp_path / "auto", "cpu").config.tiles == (1, 2)


@pytest.mark.parametrize(("value", "message"), [
    ("2by1", "expected ROWSxCOLS (e.g. 1x2 for parts twice as wide as tall) or auto, got '2by1'"),
    ("1x9", "tiles must be (rows, cols) with 1..8 tiles per side, got (1, 9)"),
])
def test_train_cli_names_a_bad_layout(value, message, wide_category, tmp_path, capsys):
    try:  # argparse exits on a malformed value; the range is checked after parsing
        code = main(["train", str(wide_category), "--out", str(tmp_path / "x"), "--tiles", value])
    except SystemExit as exit:
        code = exit.code
    assert code == 2 and message in capsys.readouterr().err
