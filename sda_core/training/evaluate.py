"""Held-out check of what SDA trains: does the student's cross-seed change point where the teacher's does?

Same quantities as the loss (low-passed x0 deltas between two seeds of one prompt, cosine), but on
noise pairs the training never drew, with the student as used at inference (LoKr on, assistant off).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from . import loss as L
from .batching import forward_batched
from .config import SDAConfig, SDAModels
from .trajectory import rollout
from .step import teacher_x0

__all__ = ["alignment"]


@torch.no_grad()
def alignment(
    models: SDAModels,
    config: SDAConfig,
    n_pairs: int = 8,
    seed: int = 12345,
    ks: Sequence[int] | None = None,
) -> dict[str, float]:
    """Mean cos(lowpass ΔS, lowpass ΔT) over `n_pairs` noise pairs at schedule steps `ks`.

    ks defaults to the steps the diversity term trains (0..div_skip-1). Also returns the student's x0
    std and mean |x0| (the magnitude the anchor must keep).
    """
    sigmas = config.schedule()
    ks = list(range(max(config.div_skip, 1))) if ks is None else list(ks)
    g = torch.Generator().manual_seed(seed)
    shape = (n_pairs, *config.latent_shape)
    z1 = torch.randn(shape, generator=g).to(models.device)
    z2 = torch.randn(shape, generator=g).to(models.device)
    conds = [models.conds[i % len(models.conds)] for i in range(n_pairs)]
    masked = models.assistant if models.assistant is not None else contextlib.nullcontext
    cos, xs = [], []
    with masked():
        for k in ks:
            x1, x2 = rollout(models.student, [z1, z2], sigmas, k, conds, models.batch_conds, config.noise_scale)
            sig = torch.full((2 * n_pairs,), float(sigmas[k]), dtype=x1.dtype, device=x1.device)
            s1, s2 = forward_batched(models.student, torch.cat([x1, x2]), sig, conds * 2, models.batch_conds).float().chunk(2)
            t1, t2 = teacher_x0(models, [x1, x2], float(sigmas[k]), conds, config.teacher_cfg)
            a = L.lowpass(s2 - s1, config.pool_kernel)
            b = L.lowpass(t2 - t1, config.pool_kernel)
            cos.append(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8))
            xs.append(torch.cat([s1, s2]))
    x0 = torch.cat(xs)
    return {"cos": float(torch.cat(cos).mean()), "std": float(x0.std()), "mean_abs": float(x0.abs().mean())}
