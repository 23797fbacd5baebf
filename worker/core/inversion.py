"""Deterministic DDIM inversion and sampling over a schedule's ``alphas_cumprod``.

Pure tensor functions, no I/O. Notation follows Song et al., "Denoising Diffusion Implicit Models"
(eq. 12 with eta = 0): abar_t = prod_{s <= t} (1 - beta_s), and
    x0_hat = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)
    x_t'   = sqrt(abar_t') * x0_hat + sqrt(1 - abar_t') * eps.
Inversion runs t upwards (data -> prior), sampling runs it downwards (prior -> data).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler

# eps_fn(x_t (B, C, H, W), t (B,) long) -> eps (B, C, H, W)
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MAX_STEPS = 10


def make_scheduler(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDIMScheduler:
    """The training noise schedule, every argument written out (library defaults are not a design).

    Only ``alphas_cumprod`` is used at inference; the scheduler object exists so the schedule is saved
    and loaded with diffusers' config machinery.
    """
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        trained_betas=None,
        clip_sample=False,  # features are standardised, not bounded to [-1, 1]
        set_alpha_to_one=False,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="linspace",
        rescale_betas_zero_snr=False,
    )


def inversion_timesteps(num_steps: int, num_train_timesteps: int) -> list[int]:
    """S + 1 evenly spaced timesteps from 0 to T - 1: the first evaluation is at t = 0 on the clean
    features and the last state sits at the end of the schedule (diffusers' few-step grids do not)."""
    if not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps must be in 1..{MAX_STEPS}, got {num_steps}")
    last = num_train_timesteps - 1
    return [round(k * last / num_steps) for k in range(num_steps + 1)]


def _ddim_move(x: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    # 1. predicted clean sample (DDIM eq. 12, first term)
    x0_hat = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    # 2. re-noise it to the target level along the same eps (eta = 0: no fresh noise)
    return abar_to.sqrt() * x0_hat + (1 - abar_to).sqrt() * eps


def _ddim_walk(eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
    abar = alphas_cumprod.to(device=x.device, dtype=x.dtype)
    for t_from, t_to in zip(timesteps[:-1], timesteps[1:]):
        t = torch.full((x.shape[0],), t_from, device=x.device, dtype=torch.long)
        x = _ddim_move(x, eps_fn(x, t), abar[t_from], abar[t_to])
    return x


def ddim_invert(eps_fn: EpsFn, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
                timesteps: Sequence[int]) -> torch.Tensor:
    """Map clean features x0 (B, C, H, W) to the latent z = x_{t_S} along the probability-flow ODE.

    ``timesteps`` is increasing, t_0 first (see :func:`inversion_timesteps`); cost: len(timesteps) - 1
    calls of ``eps_fn``. Runs in the dtype of ``x0``; pass float32 for reproducible scores.
    """
    if list(timesteps) != sorted(set(timesteps)):
        raise ValueError(f"inversion timesteps must increase strictly, got {list(timesteps)}")
    return _ddim_walk(eps_fn, x0, alphas_cumprod, timesteps)  # (B, C, H, W)


def ddim_sample(eps_fn: EpsFn, x_t: torch.Tensor, alphas_cumprod: torch.Tensor,
                timesteps: Sequence[int]) -> torch.Tensor:
    """Denoise x_t (B, C, H, W) from ``timesteps[0]`` down to ``timesteps[-1]`` (strictly decreasing)."""
    if list(timesteps) != sorted(set(timesteps), reverse=True):
        raise ValueError(f"sampling timesteps must decrease strictly, got {list(timesteps)}")
    return _ddim_walk(eps_fn, x_t, alphas_cumprod, timesteps)


def q_sample(x0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Forward noising q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (DDPM eq. 4)."""
    return abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * noise
