"""DDIM inversion against the closed-form optimal noise predictor of Gaussian data (DESIGN.md section 2)."""

import math

import numpy as np

import pytest
import torch

from worker.core.inversion import (ddim_invert, ddim_sample, inversion_timesteps, make_scheduler)
from worker.core.scoring import latent_nll, latent_norm_map, spatial_range, threshold_at_fpr, threshold_f1_max

MU, SIGMA = 0.7, 1.8


def oracle(alphas_cumprod):
    """eps*(x_t, t) for data ~ N(MU, SIGMA^2 I)."""

    def eps(x_t, t):
        abar = alphas_cumprod[t].view(-1, 1, 1, 1).to(x_t.dtype)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * MU) / (abar * SIGMA**2 + 1 - abar)

    return eps


@pytest.fixture(scope="module")
def abar():
    return make_scheduler().alphas_cumprod.double()


def test_timestep_grid_spans_the_whole_schedule():
    assert inversion_timesteps(3, 1000) == [0, 333, 666, 999]
    assert inversion_timesteps(1, 1000) == [0, 999]
    for bad in (0, 11):
        with pytest.raises(ValueError, match="num_steps"):
            inversion_timesteps(bad, 1000)


def test_scheduler_arguments_are_explicit():
    config = make_scheduler().config
    assert config.clip_sample is False and config.beta_schedule == "linear"
    assert (config.num_train_timesteps, config.beta_start, config.beta_end) == (1000, 1e-4, 0.02)


def test_many_step_inversion_recovers_the_standardised_input(abar):
    x0 = MU + SIGMA * torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = ddim_invert(oracle(abar), x0, abar, list(range(1000)))
    assert torch.allclose(z, (x0 - MU) / SIGMA, atol=0.01)


def test_three_step_inversion_preserves_the_ranking(abar):
    x0 = torch.linspace(-6, 8, 101, dtype=torch.float64).view(-1, 1, 1, 1)
    z = ddim_invert(oracle(abar), x0, abar, inversion_timesteps(3, 1000)).flatten()
    assert (z[1:] > z[:-1]).all(), "the 3-step map must stay strictly monotone"
    # Not standardised at 3 steps (DESIGN.md: spread about 0.2), but ranked like the truth.
    truth = ((x0.flatten() - MU) / SIGMA).abs()
    assert torch.equal(torch.argsort(z.abs()), torch.argsort(truth)) or \
        torch.corrcoef(torch.stack([z.abs(), truth]))[0, 1] > 0.99


def test_sampling_inverts_inversion_with_the_oracle(abar):
    x0 = MU + SIGMA * torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = list(range(1000))
    z = ddim_invert(oracle(abar), x0, abar, grid)
    back = ddim_sample(oracle(abar), z, abar, grid[::-1])
    assert torch.allclose(back, x0, atol=0.02)


def test_timesteps_must_be_monotone(abar):
    with pytest.raises(ValueError, match="increase"):
        ddim_invert(oracle(abar), torch.zeros(1, 1, 1, 1, dtype=torch.float64), abar, [0, 500, 400])
    with pytest.raises(ValueError, match="decrease"):
        ddim_sample(oracle(abar), torch.zeros(1, 1, 1, 1, dtype=torch.float64), abar, [0, 500])


def test_scores_match_their_equations():
    z = torch.zeros(2, 3, 4, 4)
    z[1, :, 1, 2] = torch.tensor([3.0, 4.0, 0.0])
    nll = latent_nll(z)
    d = 3 * 4 * 4
    assert nll[0].item() == pytest.approx(0.5 * d * math.log(2 * math.pi))
    assert (nll[1] - nll[0]).item() == pytest.approx(0.5 * 25.0)
    m = latent_norm_map(z)
    assert m.shape == (2, 4, 4) and m[1, 1, 2].item() == pytest.approx(5.0)
    assert spatial_range(m).tolist() == pytest.approx([0.0, 5.0])


def test_thresholds():
    normal = torch.arange(1000).double().numpy()
    assert threshold_at_fpr(normal, 0.01) == 990.0, "enough normals: the empirical quantile"
    assert (normal > threshold_at_fpr(normal, 0.05)).mean() <= 0.05
    few = np.random.default_rng(0).normal(size=10)
    assert threshold_at_fpr(few, 0.01) >= few.max(), "few normals: never below the largest one"
    assert threshold_at_fpr(few, 0.01) == pytest.approx(few.mean() + 2.326 * few.std(ddof=1), abs=1e-3)
    scores = [0.1, 0.2, 0.3, 0.9, 1.0]
    threshold, f1 = threshold_f1_max(scores, [0, 0, 0, 1, 1])
    assert 0.3 < threshold < 0.9 and f1 == 1.0
    with pytest.raises(ValueError, match="both"):
        threshold_f1_max(scores, [0] * 5)
