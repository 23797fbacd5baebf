"""Ensembles: a bundle of several denoisers, each inverting the features, their maps and NLLs averaged."""

import hashlib
import json
import shutil

import pytest
import torch

from synthetic import make_texture_images
from worker.cli import DEFAULT_MEMBERS, MAX_MEMBERS, build_parser
from worker.core.bundle import BundleError, bundle_version
from worker.core.config import DEFAULT_MEMBERS as CONFIG_DEFAULT_MEMBERS
from worker.core.config import MAX_MEMBERS as CONFIG_MAX_MEMBERS
from worker.core.config import DetectorConfig
from worker.core.detector import Detector
from worker.core.inversion import ddim_invert, inversion_timesteps
from worker.core.scoring import latent_nll, latent_norm_map
from worker.core.train import MEMBER_SEED_STEP, TrainConfig, build_detector, calibrate, fit_statistics, train_members

TINY = TrainConfig(iterations=8, batch_size=4, width=16, num_blocks=1, warmup=2)


def _trained_pair(tmp_path=None):
    """A two-member detector trained (briefly) on generated textures, with its features and labels."""
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(image_size=64, members=2, map_backbone=""), TINY)
    images, _ = make_texture_images(16, size=64)
    features = detector.features(detector.to_pixels(images))
    labels = torch.zeros(len(features), dtype=torch.long)
    train_members(detector, features[:10], labels[:10], TINY, torch.device("cpu"), progress=False)
    return detector, features, labels


def test_the_ensemble_averages_its_members_latent_maps_and_nlls():
    detector, features, labels = _trained_pair()
    first, second = detector.denoisers
    assert not torch.equal(first.proj_in.weight, second.proj_in.weight)
    raw = detector.raw_maps(features, labels)
    x = detector.denoiser_input(features, labels)
    timesteps = inversion_timesteps(detector.config.steps, len(detector.alphas_cumprod))
    latents = [ddim_invert(detector.eps_fn(labels, member), x, detector.alphas_cumprod, timesteps) for member in (0, 1)]
    torch.testing.assert_close(raw["norm"], (latent_norm_map(latents[0]) + latent_norm_map(latents[1])) / 2)
    torch.testing.assert_close(raw["nll"], (latent_nll(latents[0]) + latent_nll(latents[1])) / 2)
    # each member alone is the one-denoiser detector of that denoiser
    for member, denoiser in enumerate(detector.denoisers):
        alone = Detector(DetectorConfig(image_size=64, members=1, map_backbone=""), detector.extractor, [denoiser],
                         detector.alphas_cumprod)
        alone.load_state_dict({k: v for k, v in detector.state_dict().items() if not k.startswith("denoisers.")},
                              strict=False)
        torch.testing.assert_close(alone.raw_maps(features, labels)["nll"], latent_nll(latents[member]))
    recon = detector.raw_maps(features, labels, "reconstruction")["norm"]
    expected = [latent_norm_map(x - detector.reconstruct(x, labels, member)) for member in (0, 1)]
    torch.testing.assert_close(recon, (expected[0] + expected[1]) / 2)


def test_member_zero_is_the_single_denoiser_of_the_seed_and_the_others_have_their_own():
    single = build_detector(DetectorConfig(image_size=64, members=1, map_backbone=""), TINY)
    pair = build_detector(DetectorConfig(image_size=64, members=2, map_backbone=""), TINY)
    features = torch.randn(12, single.extractor.channels, single.extractor.grid, single.extractor.grid)
    labels = torch.zeros(12, dtype=torch.long)
    seed = 5
    config = TrainConfig(**{**TINY.__dict__, "seed": seed})
    train_members(single, features, labels, config, torch.device("cpu"), progress=False)
    train_members(pair, features, labels, config, torch.device("cpu"), progress=False)
    assert torch.equal(single.denoisers[0].proj_in.weight, pair.denoisers[0].proj_in.weight)
    third = build_detector(DetectorConfig(image_size=64, members=1, map_backbone=""), TINY)
    moved = TrainConfig(**{**TINY.__dict__, "seed": seed + MEMBER_SEED_STEP})
    train_members(third, features, labels, moved, torch.device("cpu"), progress=False)
    assert torch.equal(third.denoisers[0].proj_in.weight, pair.denoisers[1].proj_in.weight)


def test_resuming_keeps_finished_members_without_training_them_again(tmp_path, monkeypatch):
    from worker.core import train as core_train

    detector = build_detector(DetectorConfig(image_size=64, members=2, map_backbone=""), TINY)
    features = torch.randn(12, detector.extractor.channels, detector.extractor.grid, detector.extractor.grid)
    labels = torch.zeros(12, dtype=torch.long)
    checkpoint = tmp_path / "b.checkpoint"
    train_members(detector, features, labels, TINY, torch.device("cpu"), checkpoint, progress=False)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["member-0-final", "member-1-final"]
    weights = [d.proj_in.weight.clone() for d in detector.denoisers]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished member was trained again")

    monkeypatch.setattr(core_train, "train_denoiser", refuse)
    again = build_detector(DetectorConfig(image_size=64, members=2, map_backbone=""), TINY)
    train_members(again, features, labels, TINY, torch.device("cpu"), checkpoint, resume=True, progress=False)
    assert all(torch.equal(d.proj_in.weight, w) for d, w in zip(again.denoisers, weights))
    with pytest.raises(AssertionError, match="trained again"):  # without --resume every member trains
        train_members(again, features, labels, TINY, torch.device("cpu"), checkpoint, progress=False)


def test_an_ensemble_bundle_round_trips_and_a_missing_member_is_named(tmp_path):
    detector, features, labels = _trained_pair()
    fit_statistics(detector, features[:10], labels[:10])
    calibrate(detector, features[10:], labels[10:])
    detector.save_pretrained(tmp_path / "pair")
    assert (tmp_path / "pair" / "denoiser_1" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = Detector.from_pretrained(tmp_path / "pair", "cpu")
    assert loaded.config.members == 2 and len(loaded.denoisers) == 2 and loaded.version == detector.version
    images, _ = make_texture_images(3, size=64, seed=9)
    before, after = detector.predict(images), loaded.predict(images)
    torch.testing.assert_close(torch.from_numpy(after.pred_score), torch.from_numpy(before.pred_score))

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "pair", broken)
    shutil.rmtree(broken / "denoiser_1")
    with pytest.raises(BundleError, match="members=2 but denoiser_1/config.json"):
        Detector.from_pretrained(broken, "cpu")


def test_a_one_denoiser_bundle_keeps_its_layout_and_version(tmp_path, tiny_bundle):
    """Bundles written before ensembles: no members key (one denoiser), the version hashes the same two files."""
    config = json.loads((tiny_bundle / "detector_config.json").read_text())
    older = tmp_path / "older"
    shutil.copytree(tiny_bundle, older)
    config.pop("members", None)
    (older / "detector_config.json").write_text(json.dumps(config))
    for extra in older.glob("denoiser_*"):  # the tiny bundle is an ensemble (the default): keep its first member
        shutil.rmtree(extra)
    loaded = Detector.from_pretrained(older, "cpu")
    assert loaded.config.members == 1 and not (older / "denoiser_1").exists()
    digest = hashlib.sha256()
    for name in ("detector.safetensors", "denoiser/diffusion_pytorch_model.safetensors"):
        digest.update((older / name).read_bytes())
    assert loaded.version == bundle_version(older) == digest.hexdigest()[:12]


def test_members_are_validated_everywhere_they_enter():
    assert DEFAULT_MEMBERS == DetectorConfig.members == CONFIG_DEFAULT_MEMBERS == 3
    assert MAX_MEMBERS == CONFIG_MAX_MEMBERS
    for bad in (0, MAX_MEMBERS + 1, 2.0, True):
        with pytest.raises(ValueError, match="members must be a whole number of denoisers"):
            DetectorConfig(members=bad)
    detector = build_detector(DetectorConfig(image_size=64, members=2, map_backbone=""), TINY)
    with pytest.raises(ValueError, match="members=2, got 1 denoiser"):
        detector.set_denoisers(detector.denoisers[:1])
    wider = build_detector(DetectorConfig(image_size=64, members=1, map_backbone=""),
                           TrainConfig(width=32, num_blocks=1)).denoisers[0]
    with pytest.raises(ValueError, match="share one configuration"):
        detector.set_denoisers([detector.denoisers[0], wider])
    parser = build_parser()
    assert parser.parse_args(["train", "elpv", "--out", "b", "--members", "3"]).members == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "elpv", "--out", "b", "--members", str(MAX_MEMBERS + 1)])
    assert parser.parse_args(["bench", "--members", "2"]).members == 2


def test_bagged_members_each_learn_their_own_reproducible_resample(monkeypatch):
    from worker.core import train as core_train

    detector = build_detector(DetectorConfig(image_size=64, members=2, map_backbone=""), TINY)
    features = torch.arange(12.0)[:, None, None, None].expand(12, detector.extractor.channels,
                                                             detector.extractor.grid, detector.extractor.grid)
    labels = torch.arange(12) % 2
    seen = []
    real = core_train.train_denoiser

    def spy(model, learn, learn_labels, *args, **kwargs):
        seen.append((learn[:, 0, 0, 0].long(), learn_labels))
        return real(model, learn, learn_labels, *args, **kwargs)

    monkeypatch.setattr(core_train, "train_denoiser", spy)
    config = TrainConfig(**{**TINY.__dict__, "bootstrap": True, "seed": 3})
    train_members(detector, features, labels, config, torch.device("cpu"), progress=False)
    train_members(detector, features, labels, config, torch.device("cpu"), progress=False)
    (first, first_labels), (second, _), (again, _), _ = seen
    assert len(first) == len(second) == 12 and torch.equal(first_labels, first % 2)  # rows keep their class
    assert len(set(first.tolist())) < 12, "drawn with replacement"
    assert not torch.equal(first, second) and torch.equal(first, again)
    seen.clear()
    train_members(detector, features, labels, TINY, torch.device("cpu"), progress=False)
    assert all(torch.equal(rows, torch.arange(12)) for rows, _ in seen), "without bootstrap: every row once"
