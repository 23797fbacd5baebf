"""A map backbone: a second extractor whose own ensemble adds its per-position map to the backbone's."""

import json
import shutil

import pytest
import torch

from synthetic import make_texture_images
from worker.cli import DEFAULT_MAP_BACKBONE, build_parser
from worker.core.backbone import BackboneWeightsError
from worker.core.bundle import BundleError
from worker.core.config import DetectorConfig
from worker.core.detector import Detector
from worker.core.inversion import ddim_invert, inversion_timesteps
from worker.core.scoring import latent_nll, latent_norm_map
from worker.core.train import (TrainConfig, build_detector, calibrate, fit_feature_statistics, fit_statistics,
                               train_members)

TINY = TrainConfig(iterations=8, batch_size=4, width=16, num_blocks=1, warmup=2)
LITE2 = "efficientnet-lite2"


def _trained(members: int = 1) -> tuple[Detector, torch.Tensor, torch.Tensor]:
    """A detector with a Lite2 map backbone trained (briefly) on generated textures, fitted and calibrated,
    with its features (rows 0-9 trained on, 10-13 calibrated on) and labels."""
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(image_size=64, members=members, map_backbone=LITE2), TINY)
    images, _ = make_texture_images(16, size=64)
    features = detector.features(detector.to_pixels(images))
    labels = torch.zeros(len(features), dtype=torch.long)
    fit_feature_statistics(detector, features[:10], labels[:10])
    train_members(detector, detector.denoiser_input(features[:10], labels[:10]), labels[:10], TINY,
                  torch.device("cpu"), progress=False)
    fit_statistics(detector, features[:10], labels[:10])
    calibrate(detector, features[10:14], labels[10:14])
    return detector, features, labels


def test_the_map_backbone_features_join_the_backbones_and_its_ensemble_inverts_only_them():
    detector, features, labels = _trained()
    lite0, lite2 = detector.channel_groups
    assert lite0.start == 0 and lite0.stop == lite2.start == detector.extractor.channels
    assert lite2.stop == features.shape[1] == detector.extractor.channels + detector.map_extractor.channels
    assert detector.map_denoisers[0].config.in_channels == detector.map_extractor.channels

    x = detector.denoiser_input(features, labels)
    timesteps = inversion_timesteps(detector.config.steps, len(detector.alphas_cumprod))
    own = ddim_invert(detector.eps_fn(labels, 0), x[:, lite0], detector.alphas_cumprod, timesteps)
    its = ddim_invert(detector.eps_fn(labels, 0, group=1), x[:, lite2], detector.alphas_cumprod, timesteps)
    raw = detector.raw_maps(features, labels)
    torch.testing.assert_close(raw["nll"], latent_nll(own))  # the NLL is the backbone's alone
    torch.testing.assert_close(raw["norm"], latent_norm_map(own))
    torch.testing.assert_close(raw["map_norm"], latent_norm_map(its))
    components, grid = detector.score_features(features, labels)
    expected = ((latent_norm_map(own) - detector.position_mean[labels]) / detector.position_std[labels]
                + (latent_norm_map(its) - detector.map_position_mean[labels]) / detector.map_position_std[labels]) / 2
    torch.testing.assert_close(grid, expected)
    torch.testing.assert_close(components["nll"], latent_nll(own))
    # the score averages the NLL, the backbone's map_top and the map backbone's, each standardised
    assert detector.config.score_columns == ("nll", "map_top", "map_backbone.map_top")
    theirs = (latent_norm_map(its) - detector.map_position_mean[labels]) / detector.map_position_std[labels]
    mine = (latent_norm_map(own) - detector.position_mean[labels]) / detector.position_std[labels]
    theirs, mine = theirs.flatten(1), mine.flatten(1)
    torch.testing.assert_close(components["map_backbone.map_top"], theirs.max(1).values)  # a 4 x 4 grid: top 1
    torch.testing.assert_close(components["map_top"], mine.max(1).values)
    columns = torch.stack([latent_nll(own), mine.max(1).values, theirs.max(1).values], dim=1)
    expected_score = ((columns - detector.calib_mean[labels]) / detector.calib_std[labels]).mean(1)
    torch.testing.assert_close(detector.combine(components, labels), expected_score)
    # the map backbone's statistics are those of its own norm maps on the training rows
    torch.testing.assert_close(detector.map_position_mean[0], latent_norm_map(its[:10]).mean(0))
    # the baselines: reconstruction by the backbone's ensemble on its channels, the Gaussian on all
    recon = detector.raw_maps(features, labels, "reconstruction")["norm"]
    torch.testing.assert_close(recon, latent_norm_map(x[:, lite0] - detector.reconstruct(x[:, lite0], labels, 0)))
    assert detector.score_features(features, labels, "gaussian")[1].shape == grid.shape


def test_a_map_backbone_bundle_round_trips_and_refuses_a_missing_member(tmp_path):
    detector, _, _ = _trained(members=2)
    detector.save_pretrained(tmp_path / "b")
    for folder in ("denoiser", "denoiser_1", "map_denoiser", "map_denoiser_1"):
        assert (tmp_path / "b" / folder / "diffusion_pytorch_model.safetensors").is_file()
    loaded = Detector.from_pretrained(tmp_path / "b", "cpu")
    assert loaded.config.map_backbone == LITE2 and len(loaded.map_denoisers) == 2
    assert loaded.version == detector.version
    images, _ = make_texture_images(3, size=64, seed=9)
    before, after = detector.predict(images), loaded.predict(images)
    torch.testing.assert_close(torch.from_numpy(after.pred_score), torch.from_numpy(before.pred_score))
    torch.testing.assert_close(torch.from_numpy(after.anomaly_map), torch.from_numpy(before.anomaly_map))

    # the version covers the map backbone's denoisers
    changed = tmp_path / "changed"
    loaded.map_denoisers[1].proj_in.bias.data += 1.0
    loaded.save_pretrained(changed)
    assert Detector.from_pretrained(changed, "cpu").version != detector.version

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "b", broken)
    shutil.rmtree(broken / "map_denoiser_1")
    with pytest.raises(BundleError, match="map_backbone='efficientnet-lite2' but map_denoiser_1/config.json"):
        Detector.from_pretrained(broken, "cpu")
    # a config that names no map backbone does not match tensors that hold one
    config = json.loads((tmp_path / "b" / "detector_config.json").read_text())
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tmp_path / "b", mismatched)
    (mismatched / "detector_config.json").write_text(json.dumps({**config, "map_backbone": ""}))
    with pytest.raises(BundleError, match="does not match detector_config.json"):
        Detector.from_pretrained(mismatched, "cpu")
    # nor does a map backbone whose denoisers were trained on another extractor's channels
    (mismatched / "detector_config.json").write_text(json.dumps({**config, "map_backbone": "efficientnet-lite0",
                                                                "backbone": "efficientnet-lite2"}))
    with pytest.raises(BundleError, match="does not fit together: the denoisers take 176 channels"):
        Detector.from_pretrained(mismatched, "cpu")


def test_map_backbones_are_validated_where_they_enter():
    with pytest.raises(ValueError, match="unknown backbone 'lite9'"):
        DetectorConfig(map_backbone="lite9")
    with pytest.raises(ValueError, match="is the backbone itself"):
        DetectorConfig(map_backbone=DetectorConfig.backbone)
    for bad in (None, 5, ["efficientnet-lite2"]):  # what a hand-edited detector_config.json could hold
        with pytest.raises(ValueError, match="map_backbone must be a backbone's name"):
            DetectorConfig.from_dict({**DetectorConfig().to_dict(), "map_backbone": bad})
    assert DetectorConfig(map_backbone="", score_components=("nll", "map_max")).score_columns == ("nll", "map_max")
    assert DetectorConfig(map_backbone=LITE2, score_components=("nll", "range", "map_max", "map_top")).score_columns \
        == ("nll", "range", "map_max", "map_top", "map_backbone.map_max", "map_backbone.map_top")
    written_before = {k: v for k, v in DetectorConfig().to_dict().items() if k != "map_backbone"}
    assert DetectorConfig.from_dict(written_before).map_backbone == ""  # bundles before it have none
    detector = build_detector(DetectorConfig(image_size=64, members=1, map_backbone=LITE2), TINY)
    with pytest.raises(ValueError, match="got 0 map denoiser"):
        detector.set_denoisers(detector.denoisers)
    with pytest.raises(ValueError, match="take 192 channels, their features have"):
        detector.set_denoisers(detector.map_denoisers, detector.map_denoisers)

    with pytest.raises(BackboneWeightsError, match="map backbone efficientnet_b4: a map backbone takes packaged"):
        build_detector(DetectorConfig(image_size=64, members=1, map_backbone="efficientnet_b4"), TINY)

    assert DEFAULT_MAP_BACKBONE == DetectorConfig.map_backbone
    parser = build_parser()
    assert parser.parse_args(["train", "elpv", "--out", "b", "--map-backbone", "none"]).map_backbone == ""
    assert parser.parse_args(["train", "elpv", "--out", "b", "--map-backbone", LITE2]).map_backbone == LITE2
    assert parser.parse_args(["train", "elpv", "--out", "b"]).map_backbone == DEFAULT_MAP_BACKBONE
    assert parser.parse_args(["bench", "--map-backbone", "none"]).map_backbone == ""
