"""Trainable LoKr adapters, one per weight (or per row slice of a fused weight).

The maths is LyCORIS's: factor shapes from `lycoris.functional.general.factorization`, init as
LyCORIS's `weight_gen` (w1 kaiming-uniform, w2 zeros so the delta starts at exactly zero), and the
delta from `lycoris.functional.lokr.kron_weight`. A `TrainableLoKr` is a plain ``weight -> weight``
module: the shape ComfyUI's `ModelPatcher.add_weight_wrapper` and `torch.nn.utils.parametrize` call.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import torch
from lycoris.functional.general import factorization
from lycoris.functional.lokr import kron_weight
from torch import nn

from ..adapters.algorithms import BACKEND  # one LyCORIS kernel everywhere: what the CPU tests ran

__all__ = ["TrainableLoKr", "LoKrSet", "SlicedLoKr", "lokr_shapes"]


def lokr_shapes(out_dim: int, in_dim: int, factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(w1 shape, w2 shape) of a linear LoKr, exactly as LyCORIS factorises (out = a*c, in = b*d)."""
    out_l, out_k = factorization(out_dim, factor)
    in_m, in_n = factorization(in_dim, factor)
    return (out_l, in_m), (out_k, in_n)


class TrainableLoKr(nn.Module):
    """ΔW = kron(w1, w2) for one (out_dim, in_dim) weight; w2 full, or w2_a @ w2_b when `rank` is set.

    `enabled=False` makes the module contribute exactly zero: the frozen-student baseline forward of
    the SDA anchor runs the same model with every LoKr disabled.
    """

    def __init__(
        self,
        out_dim: int,
        in_dim: int,
        factor: int = 8,
        rank: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        (a, b), (c, d) = lokr_shapes(out_dim, in_dim, factor)
        self.out_dim, self.in_dim, self.factor, self.rank = int(out_dim), int(in_dim), int(factor), rank
        self.enabled = True
        self.w1 = nn.Parameter(torch.empty(a, b))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5), generator=generator)
        if rank is None:
            self.w2 = nn.Parameter(torch.zeros(c, d))
            self.w2_a = self.w2_b = None
        else:
            if rank < 1:
                raise ValueError(f"LoKr rank must be >= 1 (or None for a full w2), got {rank}")
            self.w2 = None
            self.w2_a = nn.Parameter(torch.empty(c, rank))
            nn.init.kaiming_uniform_(self.w2_a, a=math.sqrt(5), generator=generator)
            self.w2_b = nn.Parameter(torch.zeros(rank, d))
        # alpha = rank -> scale alpha/rank = 1, the LyCORIS/ComfyUI convention for a decomposed w2.
        self.alpha = float(rank) if rank is not None else None

    @property
    def full_matrix(self) -> bool:
        return self.w2 is not None

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """ΔW (out_dim, in_dim) through LyCORIS's kron_weight; differentiable w.r.t. the factors."""
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        d = kron_weight(self.w1, None, None, self.w2, self.w2_a, self.w2_b, None, scale=scale, backend=BACKEND)
        return d if dtype is None else d.to(dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """weight + ΔW (cast to the weight's dtype/device) when enabled, else the weight unchanged."""
        if not self.enabled:
            return weight
        if weight.shape[0] != self.out_dim or weight[0].numel() != self.in_dim:
            raise ValueError(
                f"LoKr built for ({self.out_dim}, {self.in_dim}) applied to a weight of shape {tuple(weight.shape)}"
            )
        return weight + self.delta().reshape(weight.shape).to(weight)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Factors under the names LyCORIS/ComfyUI files use, and alpha.

        With full w1 and w2 every loader uses scale 1 whatever alpha says, but LyCORIS's loader refuses a
        LoKr without one: alpha 1 is written, the scale it stands for.
        """
        out = {"lokr_w1": self.w1.detach()}
        if self.w2 is not None:
            out["lokr_w2"] = self.w2.detach()
        else:
            out["lokr_w2_a"] = self.w2_a.detach()
            out["lokr_w2_b"] = self.w2_b.detach()
        out["alpha"] = torch.tensor(1.0 if self.alpha is None else self.alpha)
        return out

    def extra_repr(self) -> str:
        return f"out={self.out_dim}, in={self.in_dim}, factor={self.factor}, rank={self.rank}, enabled={self.enabled}"


def _key(name: str) -> str:
    # nn.ModuleDict keys may not contain "."; the mapping is reversible because names never hold "__".
    if "__" in name:
        raise ValueError(f"module name may not contain '__': {name!r}")
    return name.replace(".", "__")


class LoKrSet(nn.Module):
    """Named LoKrs `{module_name: TrainableLoKr}` in diffusers-style Z-Image names (layers.N.attention.to_q …).

    `parameters()` (in sorted name order, so optimiser state and checkpoints line up) is what the
    optimiser trains; `disabled()` turns every LoKr off for the frozen-student baseline.
    """

    def __init__(self, lokrs: Mapping[str, TrainableLoKr] | None = None) -> None:
        super().__init__()
        self._lokrs = nn.ModuleDict()
        for name in sorted(lokrs or {}):
            self._lokrs[_key(name)] = lokrs[name]

    @classmethod
    def build(
        cls,
        shapes: Mapping[str, tuple[int, int]],
        factor: int = 8,
        rank: int | None = None,
        seed: int = 0,
    ) -> "LoKrSet":
        """One fresh LoKr per (out_dim, in_dim), initialised from one generator in sorted name order."""
        if not shapes:
            raise ValueError("LoKrSet.build needs at least one target module")
        gen = torch.Generator().manual_seed(int(seed))
        return cls({n: TrainableLoKr(*shapes[n], factor=factor, rank=rank, generator=gen) for n in sorted(shapes)})

    def names(self) -> list[str]:
        return [k.replace("__", ".") for k in self._lokrs.keys()]

    def items(self) -> Iterator[tuple[str, TrainableLoKr]]:
        for k, m in self._lokrs.items():
            yield k.replace("__", "."), m

    def __getitem__(self, name: str) -> TrainableLoKr:
        return self._lokrs[_key(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and "__" not in name and _key(name) in self._lokrs

    def __len__(self) -> int:
        return len(self._lokrs)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """`{module.param: tensor}` of every trainable factor, the checkpoint's view of the set."""
        out = {}
        for name, m in self.items():
            for pname, p in m.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p
        return out

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """All LoKrs off inside; each one's previous flag restored on exit, also on exception."""
        before = [(m, m.enabled) for _, m in self.items()]
        try:
            for m, _ in before:
                m.enabled = False
            yield
        finally:
            for m, flag in before:
                m.enabled = flag


class SlicedLoKr(nn.Module):
    """Weight wrapper for a fused weight (ComfyUI's `attention.qkv`): one LoKr per row slice.

    A Kronecker product over the fused rows does not factor into per-slice LoKrs, so training keeps
    one LoKr per to_q/to_k/to_v slice and this wrapper adds each delta to its rows.
    `slices`: (row_offset, TrainableLoKr) pairs; rows not covered pass through unchanged.
    """

    def __init__(self, slices: Sequence[tuple[int, TrainableLoKr]]) -> None:
        super().__init__()
        order = sorted(slices, key=lambda s: s[0])
        self.offsets = [int(o) for o, _ in order]
        self.parts = nn.ModuleList([m for _, m in order])
        end = -1
        for off, m in zip(self.offsets, self.parts):
            if off < end:
                raise ValueError("LoKr row slices overlap")
            end = off + m.out_dim

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        pieces, row = [], 0
        for off, m in zip(self.offsets, self.parts):
            if off > row:
                pieces.append(weight[row:off])
            pieces.append(m(weight[off : off + m.out_dim]))
            row = off + m.out_dim
        if row > weight.shape[0]:
            raise ValueError(f"LoKr row slices end at {row}, beyond the weight's {weight.shape[0]} rows")
        if row < weight.shape[0]:
            pieces.append(weight[row:])
        return torch.cat(pieces, dim=0)
