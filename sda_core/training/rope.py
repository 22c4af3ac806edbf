"""Autograd for a rotary-embedding kernel that has none (e.g. a fused inference kernel).

RoPE turns each pair of channels by a 2x2 matrix R (freqs_cis[..., i, j], in the layout
`out_pair = R @ x_pair`). The map is linear in x, so its vector-Jacobian product is the same map with
every matrix transposed: grad_x_pair = R^T @ grad_out_pair. The backward therefore calls the very kernel
it wraps, with `freqs_cis.transpose(-1, -2)`; nothing is recomputed and nothing but freqs_cis is saved.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["with_rotation_backward"]

RopeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def with_rotation_backward(apply_rope: RopeFn) -> RopeFn:
    """`apply_rope(xq, xk, freqs_cis)` made differentiable in xq and xk through the transposed rotation.

    Calls without grad (or with a freqs_cis that itself needs a gradient) go to `apply_rope` unchanged.
    """
    class _Rope(torch.autograd.Function):
        @staticmethod
        def forward(ctx, xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor):
            ctx.save_for_backward(freqs_cis)
            return apply_rope(xq, xk, freqs_cis)

        @staticmethod
        def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor):
            (freqs_cis,) = ctx.saved_tensors
            transposed = freqs_cis.transpose(-1, -2).contiguous()
            gq, gk = apply_rope(grad_q.contiguous(), grad_k.contiguous(), transposed)
            return gq, gk, None

    def rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor):
        wants_grad = torch.is_grad_enabled() and (xq.requires_grad or xk.requires_grad)
        if not wants_grad or freqs_cis.requires_grad:
            return apply_rope(xq, xk, freqs_cis)
        return _Rope.apply(xq, xk, freqs_cis)

    rope.wrapped = apply_rope  # type: ignore[attr-defined]
    return rope
