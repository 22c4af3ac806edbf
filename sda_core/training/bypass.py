"""The trainable LoKr applied on the compute side ("bypass"): layer output + the LoKr's own product, in fp32.

Why not add ΔW to the weight. In a bf16 (or fp16, fp8→bf16) forward the weight a layer multiplies with is
a bf16 tensor, and a ΔW below half a bf16 step of the weight rounds away: `weight + ΔW.to(weight)` and
"ΔW added in fp32, then one cast of the sum" round the same way. Measured on the tiny Z-Image (weights
N(0, 0.02), every attention/feed-forward LoKr with |ΔW| ≈ 1e-5) the model output's delta keeps cosine 0.05
of the fp32 reference's for both; the same holds for a bypass whose sum is stored back in bf16 (0.06):
the delta also vanishes in bf16 activations. Training therefore runs the student's forwards in fp32
(ComfyUI casts each stored weight to fp32 as it uses it, the weights in memory stay as loaded), and in
fp32 every placement reaches cosine 1.0. Of those, the bypass is the one chosen:

- cost: the frozen layer is untouched, the LoKr adds x·kron(w1, w2)ᵀ computed as w1·X·w2ᵀ on the reshaped
  input (never forming ΔW); forward+backward of a 1920² layer at 512 tokens cost +30 % over the frozen layer,
  against +80 % for a ΔW added to the weight (whose backward needs the full out×in weight gradient);
- it never sums ΔW into a weight, so it stays exact where a matmul rounds its operands (TF32): the LoKr's
  product is rounded relative to itself, not to the weight.

The factors are fp32 parameters; the product is taken in fp32 and added to the layer output in fp32.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from .lokr import TrainableLoKr

__all__ = ["lokr_product", "LoKrBypass"]


def _w2(lokr: TrainableLoKr) -> torch.Tensor:
    if lokr.w2 is not None:
        return lokr.w2
    scale = 1.0 if lokr.alpha is None else lokr.alpha / lokr.rank
    return (lokr.w2_a @ lokr.w2_b) * scale


def lokr_product(lokr: TrainableLoKr, x: torch.Tensor) -> torch.Tensor:
    """x · ΔWᵀ for ΔW = kron(w1, w2) (LyCORIS's layout), in fp32, without forming ΔW.

    ΔW[i·c + k, j·d + l] = w1[i, j]·w2[k, l], so with x's last dim viewed as (b, d): y[…, i, k] =
    Σ_jl w1[i, j]·x[…, j, l]·w2[k, l].
    """
    w1, w2 = lokr.w1, _w2(lokr)
    (a, b), (c, d) = w1.shape, w2.shape
    if x.shape[-1] != b * d:
        raise ValueError(f"LoKr built for inputs of {b * d} features applied to an input of shape {tuple(x.shape)}")
    xs = x.float().reshape(*x.shape[:-1], b, d)
    y = torch.matmul(torch.matmul(w1, xs), w2.t())  # (…, a, d) then (…, a, c)
    return y.reshape(*x.shape[:-1], a * c)


class LoKrBypass:
    """A linear layer's forward plus its LoKrs' products: one LoKr, or one per row slice of a fused weight.

    `parts`: (row_offset, TrainableLoKr) pairs; output features outside every slice pass through. A LoKr
    with `enabled=False` adds nothing, so the frozen-student baseline (and a teacher sharing these modules)
    sees the layer exactly as loaded. A plain callable, not a module: installed as a layer's instance
    `forward`, it must not register the LoKr factors as the layer's parameters.
    """

    def __init__(self, forward: Callable[..., torch.Tensor], parts: Sequence[tuple[int, TrainableLoKr]]) -> None:
        order = sorted(parts, key=lambda s: s[0])
        self.layer_forward = forward
        self.offsets = [int(o) for o, _ in order]
        self.parts = [m for _, m in order]
        end = -1
        for off, m in zip(self.offsets, self.parts):
            if off < end:
                raise ValueError("LoKr row slices overlap")
            end = off + m.out_dim

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.layer_forward(x, *args, **kwargs)
        live = [(off, m) for off, m in zip(self.offsets, self.parts) if m.enabled]
        if not live:
            return out
        if self.offsets[-1] + self.parts[-1].out_dim > out.shape[-1]:
            raise ValueError(f"LoKr row slices end at {self.offsets[-1] + self.parts[-1].out_dim}, beyond the "
                             f"layer's {out.shape[-1]} output features")
        total = out.float()
        if len(live) == 1 and live[0][0] == 0 and live[0][1].out_dim == out.shape[-1]:
            return (total + lokr_product(live[0][1], x)).to(out.dtype)
        pieces, col = [], 0
        for off, m in live:
            if off > col:
                pieces.append(total[..., col:off])
            pieces.append(total[..., off:off + m.out_dim] + lokr_product(m, x))
            col = off + m.out_dim
        if col < out.shape[-1]:
            pieces.append(total[..., col:])
        return torch.cat(pieces, dim=-1).to(out.dtype)
