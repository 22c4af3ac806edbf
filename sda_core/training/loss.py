"""The SDA loss, term by term, as pure tensor functions (docs/method.md, "The SDA loss").

Numbers refer to docs/method.md's list. Clean-space projection (1): x0 = x_t - sigma*v. The card writes
z - v, which is this at pure noise (sigma = 1); the loss is also applied at intermediate steps of the
student's schedule, where x_t - sigma*v is the deliberate generalisation. `step.sda_loss` runs the
forwards and assembles these terms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "velocity_from_x0",
    "x0_from_velocity",
    "prediction_from_x0",
    "x0_from_prediction",
    "anchor_loss",
    "policy_x0_detached",
    "lowpass",
    "direction_loss",
    "diversity_loss",
    "cfg_combine",
    "uses_diversity",
    "combine",
]


def _per_row(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like)
    return sigma


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """v = (x_t - x0)/sigma: ComfyUI's denoiser returns x0; the anchor compares velocities."""
    return (x_t - x0) / _per_row(sigma, x_t)


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x0 = x_t - sigma*v (1): generalises the card's z - v (sigma = 1) to every step of the schedule."""
    return x_t - _per_row(sigma, x_t) * v


def prediction_from_x0(x_t: torch.Tensor, x0: torch.Tensor, c_skip: torch.Tensor | float,
                       c_out: torch.Tensor | float) -> torch.Tensor:
    """The model's own output for x0 = c_skip·x_t − c_out·prediction: what the anchor compares for a model that
    does not predict a flow velocity (eps: c_skip 1, c_out σ, so ε = (x_t − x0)/σ; v-prediction: its v)."""
    return (_per_row(c_skip, x_t) * x_t - x0) / _per_row(c_out, x_t)


def x0_from_prediction(x_t: torch.Tensor, prediction: torch.Tensor, c_skip: torch.Tensor | float,
                       c_out: torch.Tensor | float) -> torch.Tensor:
    """x0 = c_skip·x_t − c_out·prediction: the inverse of `prediction_from_x0`."""
    return _per_row(c_skip, x_t) * x_t - _per_row(c_out, x_t) * prediction


def anchor_loss(v_policy: torch.Tensor, v_baseline: torch.Tensor, delta: float = 0.08) -> torch.Tensor:
    """Elastic anchor (6): Huber(v_pol, v_base.detach(), delta), mean over elements.

    Quadratic below `delta`, linear above: a constant pull towards the frozen student that polishes
    without snapping back to the collapsed mean.
    """
    return F.huber_loss(v_policy.float(), v_baseline.detach().float(), reduction="mean", delta=delta)


def policy_x0_detached(x_t1: torch.Tensor, v_policy: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x0_S(z1) = x_t(z1) - sigma*v_pol(z1).detach() (2): the anchor's own forward, carrying no gradient."""
    return x0_from_velocity(x_t1, v_policy.detach(), sigma)


def lowpass(delta: torch.Tensor, kernel: int = 8) -> torch.Tensor:
    """Spatial low-pass (3): avg_pool2d(kernel) then flatten per sample; only macro-composition remains.

    Pools the last two (spatial) axes; a latent with a time axis [B, C, T, H, W] is pooled frame by frame.
    """
    if delta.ndim > 4:
        delta = delta.flatten(1, -3)
    return F.avg_pool2d(delta.float(), kernel_size=kernel).flatten(1)


def direction_loss(delta_student: torch.Tensor, delta_teacher: torch.Tensor, kernel: int = 8) -> torch.Tensor:
    """Direction, not magnitude (4): mean(1 - cos(lowpass(delta_S), lowpass(delta_T))); 0 aligned, 2 opposite."""
    s, t = lowpass(delta_student, kernel), lowpass(delta_teacher, kernel)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


def diversity_loss(
    x0_s1: torch.Tensor,
    x0_s2: torch.Tensor,
    x0_t1: torch.Tensor,
    x0_t2: torch.Tensor,
    kernel: int = 8,
) -> torch.Tensor:
    """Two seeds, one prompt (2-4): delta_S = x0_S(z2) - x0_S(z1) against delta_T = x0_T(z2) - x0_T(z1)."""
    return direction_loss(x0_s2 - x0_s1, (x0_t2 - x0_t1).detach(), kernel)


def cfg_combine(x0_pos: torch.Tensor, x0_neg: torch.Tensor, cfg: float) -> torch.Tensor:
    """Teacher guidance in x0 space: neg + cfg*(pos - neg) (identical to guiding velocities at fixed x_t)."""
    return x0_neg + cfg * (x0_pos - x0_neg)


def uses_diversity(k: int, div_skip: int) -> bool:
    """Time segmentation (7): the diversity term only above the noise threshold, i.e. step index k < div_skip."""
    return k < div_skip


def combine(sft: torch.Tensor, div: torch.Tensor | None, lambda_div: float) -> torch.Tensor:
    """loss = sft + lambda_div*div above the threshold, else sft alone (7)."""
    return sft if div is None else sft + lambda_div * div
