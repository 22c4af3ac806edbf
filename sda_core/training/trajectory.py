"""The student's own sampling schedule and its no-grad Euler rollout.

The SDA loss is evaluated at x_t on the student's 8-step trajectory, so the sigmas must be the ones
ComfyUI samples with: `ModelSamplingDiscreteFlow(shift)` (1000 discrete sigmas,
sigma(t) = shift*t / (1 + (shift-1)*t)) read by the `simple` scheduler. Reproduced here in float32
exactly as ComfyUI computes them, without importing it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .batching import forward_batched

__all__ = ["flow_sigmas", "time_snr_shift", "initial_latent", "euler_step", "rollout"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """Flow-matching time shift; shift > 1 spends more of the schedule at high noise."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(steps: int, shift: float = 3.0, timesteps: int = 1000, multiplier: float = 1000.0) -> torch.Tensor:
    """`steps + 1` sigmas from 1 down to 0, identical to ComfyUI's simple scheduler on a shifted flow model."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    table = time_snr_shift(shift, ((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier) / multiplier)
    stride = len(table) / steps
    sigmas = [float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0]
    return torch.tensor(sigmas, dtype=torch.float32)


def initial_latent(z: torch.Tensor, sigma0: float) -> torch.Tensor:
    """Flow noise scaling onto an empty latent: sigma*z + (1-sigma)*0 (ComfyUI's CONST.noise_scaling).

    Other model samplings scale differently (eps at the largest sigma: z·√(1 + σ²)); `rollout` takes their
    factor as `noise_scale`.
    """
    return z * sigma0


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of ComfyUI's `sample_euler`: d = (x - x0)/sigma, x += d*(sigma_next - sigma)."""
    return x + (x - x0) / sigma * (sigma_next - sigma)


@torch.no_grad()
def rollout(
    denoise: Denoiser,
    zs: Sequence[torch.Tensor],
    sigmas: torch.Tensor,
    k: int,
    conds: Sequence[Any],
    batch_conds: Callable[[list], Any] | None = None,
    noise_scale: float | None = None,
) -> list[torch.Tensor]:
    """x_t at sigmas[k] for each noise in `zs`, all noises in ONE batched forward per Euler step.

    `conds[i]` is the cond of row i of each z (so every z shares the per-row conds). Returns one
    tensor per z, in order. k = 0 returns the initial latents without calling the model.
    noise_scale: x at sigmas[0] is noise_scale·z (None: sigmas[0], a flow model's).
    """
    if not 0 <= k < len(sigmas):
        raise ValueError(f"step index {k} outside the schedule of {len(sigmas) - 1} steps")
    n = len(zs)
    rows = zs[0].shape[0]
    z = torch.cat(list(zs), dim=0)
    x = initial_latent(z, float(sigmas[0])) if noise_scale is None else z * noise_scale
    all_conds = list(conds) * n
    for i in range(k):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        x0 = forward_batched(denoise, x, sigma, all_conds, batch_conds)
        x = euler_step(x, x0.to(x.dtype), s, s_next)
    return list(x.split(rows, dim=0))
