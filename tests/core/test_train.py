"""The training loop on its own: one default denoiser shape, resumable checkpoints, schedule and EMA."""

import json

import pytest
import torch

from worker.core.denoiser import FeatureDenoiser
from worker.core.inversion import make_scheduler, q_sample
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


@pytest.mark.parametrize("position_grid", [0, 4])
def test_a_denoiser_with_positions_knows_where_normal_content_belongs(position_grid):
    """Normal parts are aligned: each grid position holds its own pattern. A per-position MLP cannot tell
    positions apart, so it predicts the noise on normal content moved elsewhere as well as in place; one
    that learnt a position embedding predicts it much worse there (the content is not normal *there*)."""
    generator = torch.Generator().manual_seed(2)
    pattern = 2.0 * torch.randn(1, 8, 4, 4, generator=generator)
    features = pattern + 0.5 * torch.randn(64, 8, 4, 4, generator=generator)
    torch.manual_seed(0)
    model = FeatureDenoiser(in_channels=8, width=32, num_blocks=2, position_grid=position_grid)
    config = TrainConfig(iterations=300, batch_size=16, warmup=20, learning_rate=3e-3, checkpoint_every=1000)
    alphas_cumprod = make_scheduler().alphas_cumprod
    model, _ = train_denoiser(model, features, torch.zeros(len(features), dtype=torch.long), config,
                              alphas_cumprod, torch.device("cpu"), progress=False)
    model.eval()
    normal = pattern + 0.5 * torch.randn(32, 8, 4, 4, generator=generator)
    noise = torch.randn(normal.shape, generator=generator)
    t = 500

    def error(x0):
        with torch.no_grad():
            return ((model(q_sample(x0, noise, alphas_cumprod[t]), torch.tensor(t)) - noise) ** 2).mean()

    ratio = error(normal.flip(-1)) / error(normal)  # the same content at the mirrored positions
    if position_grid:
        assert ratio > 1.5
    else:
        assert 0.9 < ratio < 1.1


def test_a_denoiser_with_positions_refuses_another_grid():
    model = FeatureDenoiser(in_channels=8, width=16, num_blocks=1, position_grid=4)
    with pytest.raises(ValueError, match="4 x 4 grid; got a 5 x 5 grid"):
        model(torch.randn(1, 8, 5, 5), torch.tensor([10]))


@pytest.mark.parametrize("grid, expected", [(0, None), (3, {0, 333, 666})])
def test_training_noise_levels_follow_the_timestep_grid(grid, expected):
    """timestep_grid = S trains the denoiser only at the S timesteps an S-step inversion evaluates it;
    0 draws from every timestep of the schedule."""
    features = torch.randn(16, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    model = FeatureDenoiser(in_channels=4, width=16, num_blocks=1)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda module, args, output: seen.append(args[1].clone()))
    config = TrainConfig(iterations=40, batch_size=8, warmup=2, checkpoint_every=1000, timestep_grid=grid)
    train_denoiser(model, features, torch.zeros(16, dtype=torch.long), config, make_scheduler().alphas_cumprod,
                   torch.device("cpu"), progress=False)
    drawn = set(torch.cat(seen).tolist())
    if expected is None:
        assert len(drawn) > 100 and min(drawn) >= 0 and max(drawn) <= 999
    else:
        assert drawn == expected


def test_a_timestep_grid_beyond_the_inversion_limit_is_refused():
    with pytest.raises(ValueError, match="timestep_grid"):
        TrainConfig(timestep_grid=11)


def test_attention_starts_as_the_identity_and_survives_a_round_trip(tmp_path):
    """Attention sub-layers start as the identity (zero output projection), so a denoiser with them
    computes what the same weights without them compute; saved and loaded, it keeps its heads and weights."""
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([10, 500])
    torch.manual_seed(0)
    with_attention = FeatureDenoiser(in_channels=8, width=16, num_blocks=2, attention_heads=2).eval()
    plain = FeatureDenoiser(in_channels=8, width=16, num_blocks=2).eval()
    missing, unexpected = plain.load_state_dict(with_attention.state_dict(), strict=False)
    assert not missing and unexpected and all(".attention." in key for key in unexpected)
    for p in with_attention.blocks[-1].conv2.parameters():  # out of the all-identity start
        p.data.add_(0.1)
    plain.load_state_dict(with_attention.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(with_attention(x, t), plain(x, t))
    with_attention.save_pretrained(tmp_path / "d")
    loaded = FeatureDenoiser.from_pretrained(tmp_path / "d").eval()
    assert loaded.config.attention_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), with_attention(x, t))


def test_attention_heads_that_do_not_divide_the_width_are_refused():
    with pytest.raises(ValueError, match="attention_heads"):
        TrainConfig(width=256, attention_heads=3)
    with pytest.raises(ValueError, match="attention_heads"):
        FeatureDenoiser(in_channels=8, width=16, attention_heads=3)
