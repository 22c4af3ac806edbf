"""One SDA loss evaluation: the forwards of SDA.md, in the cheapest order, feeding `loss`'s terms.

Forwards per step at x_t(z1), x_t(z2) (both on the student's own trajectory, see `schedule.rollout`):
  baseline   student, LoKr disabled, assistant on     no grad   z1
  anchor     student, LoKr on,       assistant on     grad      z1
  teacher    teacher (cfg: pos+neg in the same batch) no grad   z1 and z2 in ONE forward   (k < div_skip)
  diversity  student, LoKr on,       assistant OFF    grad      z2                         (k < div_skip)
With `backward=True` each grad term is back-propagated as soon as it exists, so the anchor's graph is
freed before the diversity forward builds its own (the terms share no graph: x0_S(z1) is detached).
The result equals one backward of their sum.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from . import loss as L
from .batching import forward_batched
from .config import SDAConfig, SDAModels

__all__ = ["LossTerms", "sda_loss", "teacher_x0"]


@dataclass
class LossTerms:
    """The step's loss and its parts (detached when `sda_loss` already ran the backward)."""

    total: torch.Tensor
    anchor: torch.Tensor
    diversity: torch.Tensor | None
    k: int
    sigma: float


def _sigma_rows(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


@torch.no_grad()
def teacher_x0(
    models: SDAModels,
    xs: Sequence[torch.Tensor],
    sigma: float,
    conds: Sequence[Any],
    cfg: float = 1.0,
) -> list[torch.Tensor]:
    """Teacher x0 for each x in `xs` (rows conditioned on `conds`), every x (and cfg's negative) in ONE forward."""
    n, rows = len(xs), xs[0].shape[0]
    x = torch.cat(list(xs), dim=0)
    row_conds = list(conds) * n
    if cfg != 1.0:
        x = torch.cat([x, x], dim=0)
        row_conds = row_conds + [models.negative] * len(row_conds)
    x0 = forward_batched(models.teacher, x, _sigma_rows(sigma, x), row_conds, models.batch_conds).float()
    if cfg != 1.0:
        pos, neg = x0.chunk(2, dim=0)
        x0 = L.cfg_combine(pos, neg, cfg)
    return list(x0.split(rows, dim=0))


def sda_loss(
    models: SDAModels,
    config: SDAConfig,
    x_t1: torch.Tensor,
    x_t2: torch.Tensor,
    sigma: float,
    k: int,
    conds: Sequence[Any],
    backward: bool = False,
) -> LossTerms:
    """The SDA loss at schedule step k (sigma = sigmas[k]) for noises z1, z2 already rolled to x_t1, x_t2.

    `conds[i]` conditions row i of both. With backward=True, gradients land in the LoKr params here and
    the returned terms are detached; a non-finite anchor stops the step early (total is then NaN/inf).
    """
    sig = _sigma_rows(sigma, x_t1)
    student = models.student
    bc = models.batch_conds

    with torch.no_grad(), models.lokr.disabled():
        x0_base = forward_batched(student, x_t1, sig, conds, bc).float()
    v_base = L.velocity_from_x0(x_t1, x0_base, sig)

    with torch.enable_grad():
        x0_pol = forward_batched(student, x_t1, sig, conds, bc).float()
        v_pol = L.velocity_from_x0(x_t1, x0_pol, sig)
        sft = L.anchor_loss(v_pol, v_base, config.huber_delta)
    if backward:
        if not torch.isfinite(sft):
            return LossTerms(sft.detach(), sft.detach(), None, k, float(sigma))
        sft.backward()
        sft = sft.detach()

    if not L.uses_diversity(k, config.div_skip):
        return LossTerms(L.combine(sft, None, config.lambda_div), sft, None, k, float(sigma))

    x0_t1, x0_t2 = teacher_x0(models, [x_t1, x_t2], sigma, conds, config.teacher_cfg)
    masked = models.assistant() if models.assistant is not None else contextlib.nullcontext()
    with torch.enable_grad():
        with masked:  # assistant OFF exactly for this forward: the raw collapsed manifold
            x0_s2 = forward_batched(student, x_t2, sig, conds, bc).float()
        x0_s1 = L.policy_x0_detached(x_t1, v_pol, sig)
        div = L.diversity_loss(x0_s1, x0_s2, x0_t1, x0_t2, config.pool_kernel)
    if backward:
        (config.lambda_div * div).backward()
        div = div.detach()
    return LossTerms(L.combine(sft, div, config.lambda_div), sft, div, k, float(sigma))
