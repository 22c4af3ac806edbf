"""One SDA loss evaluation: the forwards of docs/method.md, in the cheapest order, feeding `loss`'s terms.

Forwards per step at x_t(z1), x_t(z2) (both on the student's own trajectory, rolled out with the LoKr on and
the assistant OFF unless `rollout_with_assistant`: see `loop.train_step` and `trajectory.rollout`):
  baseline   student, LoKr disabled, assistant on     no grad   z1
  teacher    teacher (cfg: pos+neg in the same batch) no grad   z1 and z2 in ONE forward   (k < div_skip)
  anchor     student, LoKr on,       assistant on     grad      z1
  diversity  student, LoKr on,       assistant OFF    grad      z2                         (k < div_skip)
Without an assistant adapter, anchor and diversity run the same weights: they are ONE forward over
z1 and z2 and one backward. With one, the two forwards differ (assistant on / off); with
`backward=True` the anchor is back-propagated before the diversity forward builds its graph (the terms
share no graph: x0_S(z1) is detached). Either way the gradient equals one backward of the sum.
On a pure-anchor step (k >= div_skip) x_t(z2) is not needed and may be None.
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
    teacher_finite: bool | None = None  # None: the step did not run the teacher (a pure-anchor step)


def _sigma_rows(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma for every row of x: one float for all, or a tensor with one per row."""
    if torch.is_tensor(sigma) and sigma.ndim == 1:
        if sigma.shape[0] != x.shape[0]:
            raise ValueError(f"{sigma.shape[0]} sigmas for a batch of {x.shape[0]} rows")
        return sigma.to(dtype=x.dtype, device=x.device)
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


@torch.no_grad()
def teacher_x0(
    models: SDAModels,
    xs: Sequence[torch.Tensor],
    sigma: float | torch.Tensor,
    conds: Sequence[Any],
    cfg: float = 1.0,
) -> list[torch.Tensor]:
    """Teacher x0 for each x in `xs` (rows conditioned on `conds`), every x (and cfg's negative) in ONE forward.

    sigma: one for every row, or a tensor with one per row of the xs concatenated.
    """
    n, rows = len(xs), xs[0].shape[0]
    x = torch.cat(list(xs), dim=0)
    row_conds = list(conds) * n
    sig = _sigma_rows(sigma, x)
    if cfg != 1.0:
        x, sig = torch.cat([x, x], dim=0), torch.cat([sig, sig], dim=0)
        row_conds = row_conds + [models.negative] * len(row_conds)
    x0 = forward_batched(models.teacher, x, sig, row_conds, models.batch_conds).float()
    if cfg != 1.0:
        pos, neg = x0.chunk(2, dim=0)
        x0 = L.cfg_combine(pos, neg, cfg)
    return list(x0.split(rows, dim=0))


def _student_x0(models: SDAModels, xs: Sequence[torch.Tensor], sigma: float, conds: Sequence[Any]) -> list[torch.Tensor]:
    """Student x0 for each x in `xs` in ONE forward, in the current grad mode."""
    x = xs[0] if len(xs) == 1 else torch.cat(list(xs), dim=0)
    x0 = forward_batched(models.student, x, _sigma_rows(sigma, x), list(conds) * len(xs), models.batch_conds)
    return list(x0.float().split(xs[0].shape[0], dim=0))


def sda_loss(
    models: SDAModels,
    config: SDAConfig,
    x_t1: torch.Tensor,
    x_t2: torch.Tensor | None,
    sigma: float,
    k: int,
    conds: Sequence[Any],
    backward: bool = False,
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LossTerms:
    """The SDA loss at schedule step k (sigma = sigmas[k]) for noises z1, z2 already rolled to x_t1, x_t2.

    `conds[i]` conditions row i of both. With backward=True, gradients land in the LoKr params here and
    the returned terms are detached; a non-finite loss is not back-propagated (total is then NaN/inf).
    teacher: the teacher's x0 at (x_t1, x_t2) when already computed (teacher_batch), else the teacher runs here.
    """
    with torch.no_grad(), models.lokr.disabled():
        (x0_base,) = _student_x0(models, [x_t1], sigma, conds)
    v_base = _prediction(models, x_t1, x0_base, sigma)
    diversity = L.uses_diversity(k, config.div_skip)
    if diversity and x_t2 is None:
        raise ValueError(f"step {k} < div_skip {config.div_skip} uses the diversity term and needs x_t(z2)")

    if diversity and models.assistant is None:
        return _joint(models, config, x_t1, x_t2, v_base, sigma, k, conds, backward, teacher)
    return _anchor_then_diversity(models, config, x_t1, x_t2 if diversity else None, v_base, sigma, k, conds,
                                  backward, teacher)


def _anchor_then_diversity(models, config, x_t1, x_t2, v_base, sigma, k, conds, backward, teacher=None) -> LossTerms:
    """Anchor forward (assistant on), then, when x_t2 is given, the diversity forward with the assistant OFF."""
    with torch.enable_grad():
        (x0_pol,) = _student_x0(models, [x_t1], sigma, conds)
        v_pol = _prediction(models, x_t1, x0_pol, sigma)
        sft = L.anchor_loss(v_pol, v_base, config.huber_delta)
    if backward:
        if not torch.isfinite(sft):
            return LossTerms(sft.detach(), sft.detach(), None, k, float(sigma))
        sft.backward()
        sft = sft.detach()
    if x_t2 is None:
        return LossTerms(L.combine(sft, None, config.lambda_div), sft, None, k, float(sigma))
    if teacher is None:
        teacher = teacher_x0(models, [x_t1, x_t2], sigma, conds, config.teacher_cfg)
    x0_t1, x0_t2 = teacher
    teacher_ok = _all_finite(x0_t1, x0_t2)
    masked = models.assistant() if models.assistant is not None else contextlib.nullcontext()
    with torch.enable_grad():
        with masked:  # assistant OFF exactly for this forward: the raw collapsed manifold
            (x0_s2,) = _student_x0(models, [x_t2], sigma, conds)
        div = L.diversity_loss(_policy_x0(models, x_t1, v_pol, sigma), x0_s2, x0_t1, x0_t2, config.pool_kernel)
    if backward:
        (config.lambda_div * div).backward()
        div = div.detach()
    return LossTerms(L.combine(sft, div, config.lambda_div), sft, div, k, float(sigma), teacher_ok)


def _prediction(models: SDAModels, x_t: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """What the anchor compares: the student's own output for x0 (a flow model's velocity unless it says else)."""
    if models.parameterization is None:
        return L.velocity_from_x0(x_t, x0, sigma)
    c_skip, c_out = models.parameterization(_sigma_rows(sigma, x_t))
    return L.prediction_from_x0(x_t, x0, c_skip, c_out)


def _policy_x0(models: SDAModels, x_t1: torch.Tensor, v_pol: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0_S(z1) back from the anchor's own (detached) prediction (2)."""
    if models.parameterization is None:
        return L.policy_x0_detached(x_t1, v_pol, sigma)
    c_skip, c_out = models.parameterization(_sigma_rows(sigma, x_t1))
    return L.x0_from_prediction(x_t1, v_pol.detach(), c_skip, c_out)


def _all_finite(*xs: torch.Tensor) -> bool:
    return bool(torch.stack([torch.isfinite(x).all() for x in xs]).all())


def _joint(models, config, x_t1, x_t2, v_base, sigma, k, conds, backward, teacher=None) -> LossTerms:
    """No assistant: anchor (z1) and diversity (z2) run the same weights, so ONE grad forward and one backward."""
    if teacher is None:
        teacher = teacher_x0(models, [x_t1, x_t2], sigma, conds, config.teacher_cfg)
    x0_t1, x0_t2 = teacher
    teacher_ok = _all_finite(x0_t1, x0_t2)
    with torch.enable_grad():
        x0_pol, x0_s2 = _student_x0(models, [x_t1, x_t2], sigma, conds)
        v_pol = _prediction(models, x_t1, x0_pol, sigma)
        sft = L.anchor_loss(v_pol, v_base, config.huber_delta)
        div = L.diversity_loss(_policy_x0(models, x_t1, v_pol, sigma), x0_s2, x0_t1, x0_t2, config.pool_kernel)
        total = L.combine(sft, div, config.lambda_div)
    if backward:
        if torch.isfinite(total):
            total.backward()
        total, sft, div = total.detach(), sft.detach(), div.detach()
    return LossTerms(total, sft, div, k, float(sigma), teacher_ok)
