"""The training loop on its own: one default denoiser shape, resumable checkpoints, schedule and EMA."""

import json

import pytest
import torch

from worker.core.denoiser import FeatureDenoiser
from worker.core.inversion import make_scheduler
from worker.core.train import TrainConfig, train_denoiser


def test_one_default_denoiser_shape():
    """Training builds the denoiser the class documents as its default: a per-position MLP."""
    config = TrainConfig()
    model = FeatureDenoiser(in_channels=8)
    assert (config.width, config.num_blocks, config.kernel_size) == \
        (model.config.width, model.config.num_blocks, model.config.kernel_size) == (256, 4, 1)
    assert model.blocks[0].conv1.kernel_size == (1, 1)


def _run(features, config, checkpoint, resume):
    torch.manual_seed(0)
    model = FeatureDenoiser(in_channels=features.shape[1], width=16, num_blocks=1)
    alphas_cumprod = make_scheduler().alphas_cumprod
    labels = torch.zeros(len(features), dtype=torch.long)
    return train_denoiser(model, features, labels, config, alphas_cumprod, torch.device("cpu"), checkpoint,
                          resume, progress=False)


def test_resuming_from_a_checkpoint_is_bit_identical(tmp_path):
    features = torch.randn(24, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    config = TrainConfig(iterations=30, batch_size=4, warmup=5, checkpoint_every=10, ema_decay=0.9)
    whole, losses = _run(features, config, tmp_path / "ckpt", resume=False)
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["step"] == 20 and state["schedule"]["last_epoch"] == 20 and state["ema"]["optimization_step"] == 20
    resumed, rest = _run(features, config, tmp_path / "ckpt", resume=True)
    assert rest == losses[20:]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    trained = FeatureDenoiser(in_channels=8, width=16, num_blocks=1)
    assert any(not torch.equal(a, b) for a, b in zip(whole.parameters(), trained.parameters()))


def test_schedule_warms_up_then_decays_to_zero(tmp_path):
    features = torch.randn(8, 4, 2, 2)
    config = TrainConfig(iterations=12, batch_size=2, warmup=4, learning_rate=1e-2, checkpoint_every=11)
    _run(features, config, tmp_path / "ckpt", resume=False)
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    lr = state["param_groups"][0]["lr"]  # after 11 steps: one step before the end of the cosine
    assert 0 < lr < 0.05 * config.learning_rate
    assert state["schedule"]["base_lrs"] == [config.learning_rate]


def test_a_checkpoint_of_an_older_format_is_refused_with_a_fix(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"step": 10, "param_groups": []}))
    with pytest.raises(ValueError, match="without --resume"):
        _run(torch.randn(8, 4, 2, 2), TrainConfig(iterations=20, batch_size=2), folder, resume=True)
