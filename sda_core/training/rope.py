"""Autograd for a rotary-embedding kernel that has none (e.g. a fused inference kernel).

RoPE turns each pair of channels by a 2x2 matrix R (freqs_cis[..., i, j], in the layout
`out_pair = R @ x_pair`). The map is linear in x, so its vector-Jacobian product is the same map with
every matrix transposed: grad_x_pair = R^T @ grad_out_pair. The backward therefore calls the very kernel
it wraps, with `freqs_cis.transpose(-1, -2)`; nothing is recomputed and nothing but freqs_cis is saved.

Two kernel shapes exist in ComfyUI: `apply_rope(xq, xk, freqs_cis) -> (q, k)` (Flux, Z-Image) and
`apply_rope1(x, freqs_cis) -> x` (Qwen-Image).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["with_rotation_backward", "with_rotation_backward1"]

RopeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Rope1Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


class _Rotation(torch.autograd.Function):
    """kernel(*xs, freqs_cis), differentiable in xs through the transposed rotation."""

    @staticmethod
    def forward(ctx, kernel: Callable, freqs_cis: torch.Tensor, *xs: torch.Tensor):
        ctx.kernel = kernel
        ctx.save_for_backward(freqs_cis)
        return _as_tuple(kernel(*xs, freqs_cis))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        (freqs_cis,) = ctx.saved_tensors
        transposed = freqs_cis.transpose(-1, -2).contiguous()
        return (None, None, *_as_tuple(ctx.kernel(*(g.contiguous() for g in grads), transposed)))


def _differentiable(kernel: Callable, *xs: torch.Tensor, freqs_cis: torch.Tensor) -> tuple:
    """The kernel's outputs, through `_Rotation` only when a gradient is wanted (and freqs_cis needs none)."""
    wants_grad = torch.is_grad_enabled() and any(x.requires_grad for x in xs)
    if not wants_grad or freqs_cis.requires_grad:
        return _as_tuple(kernel(*xs, freqs_cis))
    return _Rotation.apply(kernel, freqs_cis, *xs)


def with_rotation_backward(apply_rope: RopeFn) -> RopeFn:
    """`apply_rope(xq, xk, freqs_cis)` made differentiable in xq and xk through the transposed rotation.

    Calls without grad (or with a freqs_cis that itself needs a gradient) go to `apply_rope` unchanged.
    """
    def rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor):
        return _differentiable(apply_rope, xq, xk, freqs_cis=freqs_cis)

    rope.wrapped = apply_rope  # type: ignore[attr-defined]
    return rope


def with_rotation_backward1(apply_rope1: Rope1Fn) -> Rope1Fn:
    """`apply_rope1(x, freqs_cis)` (one tensor) made differentiable in x, as `with_rotation_backward`."""
    def rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        return _differentiable(apply_rope1, x, freqs_cis=freqs_cis)[0]

    rope1.wrapped = apply_rope1  # type: ignore[attr-defined]
    return rope1
