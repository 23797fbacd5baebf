"""Training augmentation: the views each setting names, and what a bundle trained with them fits."""

import pytest
import torch

from synthetic import write_mvtec_category
from worker.cli import AUGMENT_CHOICES, build_parser
from worker.core.config import DetectorConfig
from worker.core.data import normal_training_images
from worker.core.train import (AUGMENTATIONS, TrainConfig, augmented_views, extract_features, fit_statistics,
                               split_normals, train)


@pytest.mark.parametrize("augment", list(AUGMENTATIONS))
def test_each_setting_gives_its_count_of_distinct_pixel_permutations_the_batch_first(augment):
    pixels = torch.randn(2, 3, 8, 8)
    views = augmented_views(pixels, augment)
    assert len(views) == AUGMENTATIONS[augment]
    assert views[0] is pixels
    assert len({tuple(v.flatten().tolist()) for v in views}) == len(views)  # no view twice
    for view in views:  # the same pixels, each image moved as a whole
        assert view.shape == pixels.shape
        assert torch.equal(view.flatten(1).sort(1).values, pixels.flatten(1).sort(1).values)


def test_dihedral_holds_the_quarter_turns():
    pixels = torch.randn(1, 3, 6, 6)
    views = [tuple(v.flatten().tolist()) for v in augmented_views(pixels, "dihedral")]
    for turns in (1, 2, 3):
        assert tuple(torch.rot90(pixels, turns, (-2, -1)).flatten().tolist()) in views


def test_an_unknown_augmentation_names_the_choices():
    with pytest.raises(ValueError, match="augment must be one of none, flips, dihedral, got 'rotate'"):
        TrainConfig(augment="rotate")


def test_the_cli_offers_exactly_the_augmentations():
    assert AUGMENT_CHOICES == tuple(AUGMENTATIONS)
    args = build_parser().parse_args(["train", "data", "--out", "bundle", "--augment", "dihedral"])
    assert args.augment == "dihedral"


def test_augmented_training_fits_position_statistics_on_the_images_as_they_are(tmp_path):
    folders = [write_mvtec_category(tmp_path / name, n_train=12, n_good=0, n_bad=0, size=64, seed=seed)
               for seed, name in enumerate(("alpha", "beta"))]
    config = TrainConfig(iterations=10, batch_size=8, width=16, num_blocks=1, warmup=2, augment="flips")
    detector, summary = train(folders, tmp_path / "bundle", DetectorConfig(image_size=64), config, progress=False)
    splits = [split_normals(normal_training_images(f), config.calib_fraction, config.seed)[0] for f in folders]
    assert summary["train_views"] == 4
    assert summary["train_images"] == sum(map(len, splits))
    assert summary["train_config"]["augment"] == "flips"

    features = [extract_features(detector, paths, 8, "", progress=False) for paths in splits]
    labels = torch.cat([torch.full((len(f),), k) for k, f in enumerate(features)])
    shipped = detector.position_mean.clone(), detector.position_std.clone()
    fit_statistics(detector, torch.cat(features), labels)
    assert torch.allclose(detector.position_mean, shipped[0], atol=1e-4)
    assert torch.allclose(detector.position_std, shipped[1], atol=1e-4)
