"""Tiny pure-torch flow denoisers for tests and benches, wired the way the node layer wires ComfyUI.

LoKrs and the assistant adapter are attached with `torch.nn.utils.parametrize`, which calls a
``weight -> weight`` module on every access exactly like ComfyUI's `ModelPatcher.add_weight_wrapper`;
the fused `attention.qkv` gets one LoKr per to_q/to_k/to_v row slice (`SlicedLoKr`).

* `toy_problem`: a problem whose answer is known. The teacher's x0 follows the low frequencies of
  its input (x0 = image + M·lowfreq(x_t)), the "collapsed" student's x0 barely depends on it
  (x0 = image + W0·x_t with a small random W0). SDA should turn W towards M.
* `tiny_dit_problem`: a small transformer with Z-Image's layer names for timing the training step.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sda_core.training.config import SDAConfig, SDAModels
from sda_core.training.lokr import LoKrSet, SlicedLoKr

__all__ = [
    "lowfreq",
    "FixedDelta",
    "assistant_switch",
    "ToyTeacher",
    "ToyStudent",
    "ToyProblem",
    "toy_problem",
    "TinyDiT",
    "tiny_dit_lokr_shapes",
    "attach_tiny_dit_lokr",
    "tiny_dit_problem",
]


def lowfreq(x: torch.Tensor, kernel: int = 8) -> torch.Tensor:
    """Block-average then nearest upsample: the part of x the SDA pooling sees."""
    return F.interpolate(F.avg_pool2d(x, kernel), scale_factor=kernel, mode="nearest")


class FixedDelta(nn.Module):
    """A frozen additive weight delta that can be switched off: a stand-in for the assistant adapter."""

    def __init__(self, delta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("delta", delta)
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta.to(weight) if self.enabled else weight


def assistant_switch(deltas: list[FixedDelta]) -> Callable[[], ContextManager]:
    """Factory of the context manager `SDAModels.assistant` wants: OFF inside, ON again on exit."""

    @contextlib.contextmanager
    def off() -> Iterator[None]:
        for d in deltas:
            d.enabled = False
        try:
            yield
        finally:
            for d in deltas:
                d.enabled = True

    return off


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ToyTeacher(nn.Module):
    """x0 = image + cond + gain·M·lowfreq(x_t): different seeds give different macro-compositions."""

    def __init__(self, channels: int, size: int, kernel: int, seed: int, gain: float = 1.0) -> None:
        super().__init__()
        g = _gen(seed)
        half = channels // 2 if channels % 2 == 0 else channels
        a = torch.randn(channels // half, channels // half, generator=g)
        b = torch.randn(half, half, generator=g) / math.sqrt(half)
        self.register_buffer("mix", torch.kron(a, b))  # LoKr-reachable (a Kronecker product)
        self.register_buffer("image", 0.5 * torch.randn(1, channels, size, size, generator=g))
        self.kernel, self.gain = kernel, gain

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        lf = lowfreq(x, self.kernel)
        return self.image + cond[:, :, None, None] + self.gain * torch.einsum("oc,bchw->bohw", self.mix, lf)


class ToyStudent(nn.Module):
    """x0 = image + cond + W·x_t (a 1x1 conv); W = W0 small and random: x0 hardly depends on the seed."""

    def __init__(self, channels: int, size: int, seed: int, w0_scale: float = 0.01) -> None:
        super().__init__()
        g = _gen(seed)
        self.mix = nn.Linear(channels, channels, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(w0_scale * torch.randn(channels, channels, generator=g))
        self.register_buffer("image", 0.5 * torch.randn(1, channels, size, size, generator=g))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.image + cond[:, :, None, None] + F.conv2d(x, self.mix.weight[:, :, None, None])


@dataclass
class ToyProblem:
    """A ready run: the callables for `train`, its config, and the modules behind them for inspection."""

    models: SDAModels
    config: SDAConfig
    student: nn.Module
    teacher: nn.Module
    assistant: FixedDelta | None


def toy_problem(
    channels: int = 16,
    size: int = 16,
    n_conds: int = 2,
    seed: int = 0,
    with_assistant: bool = False,
    **config_overrides,
) -> ToyProblem:
    """The known-answer problem, ready for `train` (config defaults to a fast toy setting)."""
    kernel = config_overrides.get("pool_kernel", 8)
    teacher = ToyTeacher(channels, size, kernel, seed + 1)
    student = ToyStudent(channels, size, seed + 2)
    lokr = LoKrSet.build({"mix": (channels, channels)}, factor=config_overrides.get("factor", 8),
                         rank=config_overrides.get("rank"), seed=seed + 3)
    assistant = None
    if with_assistant:
        assistant = FixedDelta(0.05 * torch.randn(channels, channels, generator=_gen(seed + 4)))
        parametrize.register_parametrization(student.mix, "weight", assistant)
    parametrize.register_parametrization(student.mix, "weight", lokr["mix"])
    g = _gen(seed + 5)
    conds = [0.1 * torch.randn(1, channels, generator=g) for _ in range(n_conds)]
    settings = dict(steps=200, lr=3e-2, latent_shape=(channels, size, size), seed=seed)
    settings.update(config_overrides)
    config = SDAConfig(**settings)
    models = SDAModels(
        student=student, teacher=teacher, lokr=lokr, conds=conds,
        assistant=assistant_switch([assistant]) if assistant is not None else None,
    )
    return ToyProblem(models, config, student, teacher, assistant)


# --- a tiny transformer with Z-Image's layer names -------------------------------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attention_norm1 = nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads)
        self.ffn_norm1 = nn.LayerNorm(dim)
        self.feed_forward = _FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm1(x) + t)
        return x + self.feed_forward(self.ffn_norm1(x))


class TinyDiT(nn.Module):
    """Flow transformer predicting v; `forward` returns the denoised x0 = x - sigma*v like apply_model.

    Layer names follow ComfyUI's Z-Image (`layers.N.attention.qkv|out`, `layers.N.feed_forward.w1|w2|w3`).
    """

    def __init__(self, channels: int = 16, dim: int = 64, heads: int = 4, n_layers: int = 2,
                 patch: int = 2, cond_dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.patch, self.channels, self.dim = patch, channels, dim
        self.hidden = int(dim * 8 / 3) // 8 * 8
        self.x_embedder = nn.Linear(channels * patch * patch, dim)
        self.t_embedder = nn.Linear(dim, dim)
        self.cap_embedder = nn.Linear(cond_dim, dim)
        self.layers = nn.ModuleList([_Block(dim, heads, self.hidden) for _ in range(n_layers)])
        self.final = nn.Linear(dim, channels * patch * patch)
        g = _gen(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.02 * torch.randn(p.shape, generator=g) if p.ndim > 1 else torch.zeros_like(p))
        self.requires_grad_(False)

    def _time(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
        ang = (sigma.float() * 1000.0)[:, None] * freqs[None]
        return torch.cat([ang.cos(), ang.sin()], dim=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        tokens = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        t = (self.t_embedder(self._time(sigma)) + self.cap_embedder(cond))[:, None, :]
        y = self.x_embedder(tokens)
        for layer in self.layers:
            y = layer(y, t)
        v = self.final(y).view(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return x - sigma.reshape(-1, 1, 1, 1).to(x) * v


def tiny_dit_lokr_shapes(model: TinyDiT) -> dict[str, tuple[int, int]]:
    """LoKr targets in diffusers Z-Image names (to_q/to_k/to_v are row slices of ComfyUI's qkv)."""
    d, hdn = model.dim, model.hidden
    shapes = {}
    for i in range(len(model.layers)):
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[f"layers.{i}.attention.{n}"] = (d, d)
        shapes[f"layers.{i}.feed_forward.w1"] = (hdn, d)
        shapes[f"layers.{i}.feed_forward.w3"] = (hdn, d)
        shapes[f"layers.{i}.feed_forward.w2"] = (d, hdn)
    return shapes


def attach_tiny_dit_lokr(model: TinyDiT, lokr: LoKrSet) -> None:
    """Wrap the model's weights with the set's LoKrs, mapping diffusers names to ComfyUI's fused layout."""
    d = model.dim
    for i, layer in enumerate(model.layers):
        pre = f"layers.{i}.attention."
        sliced = SlicedLoKr([(j * d, lokr[pre + n]) for j, n in enumerate(("to_q", "to_k", "to_v"))])
        parametrize.register_parametrization(layer.attention.qkv, "weight", sliced)
        parametrize.register_parametrization(layer.attention.out, "weight", lokr[pre + "to_out.0"])
        for n in ("w1", "w2", "w3"):
            parametrize.register_parametrization(getattr(layer.feed_forward, n), "weight", lokr[f"layers.{i}.feed_forward.{n}"])


def tiny_dit_problem(
    channels: int = 16,
    size: int = 16,
    dim: int = 64,
    n_layers: int = 2,
    n_conds: int = 2,
    seed: int = 0,
    with_assistant: bool = True,
    **config_overrides,
) -> ToyProblem:
    """Teacher and student TinyDiTs (different weights), LoKrs on every student block, an assistant delta."""
    cond_dim = 32
    teacher = TinyDiT(channels, dim, n_layers=n_layers, cond_dim=cond_dim, seed=seed + 1)
    student = TinyDiT(channels, dim, n_layers=n_layers, cond_dim=cond_dim, seed=seed + 2)
    lokr = LoKrSet.build(tiny_dit_lokr_shapes(student), factor=config_overrides.get("factor", 8),
                         rank=config_overrides.get("rank"), seed=seed + 3)
    assistant = None
    if with_assistant:
        w = student.layers[0].feed_forward.w2.weight
        assistant = FixedDelta(0.01 * torch.randn(w.shape, generator=_gen(seed + 4)))
        parametrize.register_parametrization(student.layers[0].feed_forward.w2, "weight", assistant)
    attach_tiny_dit_lokr(student, lokr)
    g = _gen(seed + 5)
    conds = [torch.randn(1, cond_dim, generator=g) for _ in range(n_conds)]
    settings = dict(steps=10, latent_shape=(channels, size, size), seed=seed)
    settings.update(config_overrides)
    config = SDAConfig(**settings)
    models = SDAModels(
        student=student, teacher=teacher, lokr=lokr, conds=conds,
        assistant=assistant_switch([assistant]) if assistant is not None else None,
    )
    return ToyProblem(models, config, student, teacher, assistant)
