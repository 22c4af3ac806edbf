"""One denoiser forward for many rows, each with its own cond.

Batching the no-grad forwards (z1 and z2 of the rollout, z1 and z2 of the teacher, cfg's positive
and negative) is where this trainer beats the published snippet's one-forward-per-prediction. Conds
are opaque to sda_core: the caller may pass `batch_conds(list_of_conds) -> cond`; without it, tensors
(and dicts/lists/tuples of them) are concatenated on dim 0, and anything else falls back to one
forward per row.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["concat_conds", "forward_batched", "Unbatchable"]


class Unbatchable(TypeError):
    """The default cond batching does not know how to concatenate these conds."""


def concat_conds(conds: Sequence[Any]) -> Any:
    """Concatenate per-row conds on dim 0 (tensors, and dicts/lists/tuples/None holding them)."""
    first = conds[0]
    if first is None:
        if any(c is not None for c in conds):
            raise Unbatchable("mixing None and non-None conds")
        return None
    if isinstance(first, torch.Tensor):
        if not all(isinstance(c, torch.Tensor) for c in conds):
            raise Unbatchable("mixing tensor and non-tensor conds")
        try:
            return torch.cat(list(conds), dim=0)
        except RuntimeError as e:  # e.g. different token counts
            raise Unbatchable(str(e)) from e
    if isinstance(first, dict):
        if not all(isinstance(c, dict) and c.keys() == first.keys() for c in conds):
            raise Unbatchable("cond dicts with different keys")
        return {k: concat_conds([c[k] for c in conds]) for k in first}
    if isinstance(first, (list, tuple)):
        if not all(type(c) is type(first) and len(c) == len(first) for c in conds):
            raise Unbatchable("cond sequences of different lengths")
        return type(first)(concat_conds([c[i] for c in conds]) for i in range(len(first)))
    raise Unbatchable(f"cannot batch conds of type {type(first).__name__}; pass batch_conds")


def forward_batched(
    denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    conds: Sequence[Any],
    batch_conds: Callable[[list], Any] | None = None,
) -> torch.Tensor:
    """denoise(x, sigma, cond) over rows whose conds are `conds[i]` (len == x.shape[0])."""
    if len(conds) != x.shape[0]:
        raise ValueError(f"{len(conds)} conds for a batch of {x.shape[0]} rows")
    try:
        cond = batch_conds(list(conds)) if batch_conds is not None else concat_conds(conds)
    except Unbatchable:
        outs = [denoise(x[i : i + 1], sigma[i : i + 1], conds[i]) for i in range(x.shape[0])]
        return torch.cat(outs, dim=0)
    return denoise(x, sigma, cond)
