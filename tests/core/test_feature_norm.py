"""feature_norm: what the denoiser models (features per channel, or each position's deviation per class)."""

import json

import pytest
import torch

from synthetic import make_texture_images, write_mvtec_category
from worker.cli import FEATURE_NORM_CHOICES, build_parser
from worker.core.config import FEATURE_NORMS, DetectorConfig
from worker.core.detector import POSITION_STD_FLOOR, Detector
from worker.core.train import TrainConfig, build_detector, fit_feature_statistics, train

TINY = TrainConfig(iterations=10, batch_size=8, width=16, num_blocks=1, warmup=2)


def test_new_bundles_standardise_per_position_and_older_ones_keep_what_they_had():
    assert DetectorConfig().feature_norm == "position"
    older = DetectorConfig(feature_norm="channel").to_dict()
    del older["feature_norm"]  # a bundle written before the option existed
    assert DetectorConfig.from_dict(older).feature_norm == "channel"
    with pytest.raises(ValueError, match="feature_norm must be one of channel, position, got 'pixel'"):
        DetectorConfig(feature_norm="pixel")
    assert FEATURE_NORM_CHOICES == FEATURE_NORMS
    args = build_parser().parse_args(["train", "elpv", "--out", "b", "--feature-norm", "channel"])
    assert args.feature_norm == "channel"


def test_the_denoiser_input_is_each_class_s_deviation_at_each_position_with_a_floor_on_the_spread():
    detector = build_detector(DetectorConfig(image_size=64, classes=("a", "b"), map_backbone=""), TINY)
    c, g = detector.extractor.channels, detector.extractor.grid
    features = torch.randn(40, c, g, g) * 2 + torch.arange(g, dtype=torch.float)  # each column its own mean
    labels = torch.tensor([0, 1] * 20)
    features[labels == 1] += 5.0
    features[:, 0, 0, 0] = 1.5  # a position that never varies
    fit_feature_statistics(detector, features, labels)
    x = detector.denoiser_input(features, labels)
    for k in (0, 1):
        chosen = x[labels == k][:, 1:]
        assert chosen.mean(0).abs().max() < 1e-4 and (chosen.std(0) - 1).abs().max() < 1e-4
    assert torch.equal(detector.gauss_std[:, 0, 0, 0], torch.full((2,), 1e-6))
    bumped = features[:1].clone()
    bumped[0, 0, 0, 0] += 0.2  # a small change where nothing ever changed: 2 floors, not 200,000 stds
    assert detector.denoiser_input(bumped, labels[:1])[0, 0, 0, 0] == pytest.approx(0.2 / POSITION_STD_FLOOR)
    channel = build_detector(DetectorConfig(image_size=64, feature_norm="channel"), TINY)
    assert channel.denoiser_input(features, torch.zeros(40, dtype=torch.long)) is features


@pytest.mark.parametrize("feature_norm", FEATURE_NORMS)
def test_training_fits_the_position_statistics_first_and_the_bundle_scores_as_trained(tmp_path, feature_norm,
                                                                                    monkeypatch):
    """The denoiser learns what the bundle will feed it; a saved bundle reloads with its feature_norm and
    scores images exactly as the trained detector did."""
    from worker.core import train as train_module

    learned = {}
    real = train_module.train_denoiser

    def spy(model, features, *args, **kwargs):
        learned["features"] = features
        return real(model, features, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_denoiser", spy)
    folder = write_mvtec_category(tmp_path / "cat", n_train=24, n_good=0, n_bad=0, size=64)
    config = DetectorConfig(image_size=64, feature_norm=feature_norm)
    detector, _ = train([folder], tmp_path / "bundle", config, TrainConfig(iterations=40, batch_size=8, width=16,
                                                                          num_blocks=1, warmup=2), progress=False)
    per_position = learned["features"].mean(0)  # the training part's features, as the denoiser saw them
    if feature_norm == "position":
        assert per_position.abs().max() < 1e-4  # every position's deviation averages to zero
    else:
        assert per_position.abs().max() > 0.1  # positions keep their own means
    saved = json.loads((tmp_path / "bundle" / "detector_config.json").read_text())
    assert saved["feature_norm"] == feature_norm
    loaded = Detector.from_pretrained(tmp_path / "bundle", "cpu")
    normal, _ = make_texture_images(4, size=64, seed=5)
    defective, _ = make_texture_images(2, defect=True, size=64, seed=6)
    scores = loaded.predict(normal + defective).pred_score
    reference = detector.predict(normal + defective).pred_score
    torch.testing.assert_close(torch.as_tensor(scores), torch.as_tensor(reference))


def test_training_warns_when_position_statistics_come_from_few_images(tmp_path):
    folder = write_mvtec_category(tmp_path / "cat", n_train=24, n_good=0, n_bad=0, size=64)
    for feature_norm in FEATURE_NORMS:
        _, summary = train([folder], tmp_path / feature_norm, DetectorConfig(image_size=64, feature_norm=feature_norm),
                           TINY, progress=False)
        note = summary["position_statistics"]["default"]
        assert note["train_images"] == summary["train_images"] < 50
        if feature_norm == "position":
            assert "add normal images (at least 50) or train with --feature-norm channel" in note["warning"]
        else:
            assert note["warning"] is None
