"""Loss curves of an SDA run (total, anchor, diversity) and its eval diversity, as a ComfyUI IMAGE.

Pure Pillow/numpy: history entries in (as `train` records them: None where a term was not computed,
e.g. the diversity term on the pure-anchor step), one [1, H, W, 3] float tensor in [0, 1] out. Each term
gets its own panel and y-range: the anchor is orders of magnitude below the diversity term, so a shared
axis would flatten it. Raw values are drawn dim, an exponential moving average on top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..diversity.palette import BACKGROUND, FRAME, MUTED, TEXT
from ..diversity.text import draw_text, line_height, text_width

__all__ = ["CURVES", "draw_loss_curves", "ema", "summarize"]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
CURVES = {
    "total": ("total loss", (240, 240, 240)),
    "anchor": ("anchor (Huber to the frozen student)", (86, 180, 233)),
    "diversity": ("diversity (1 - cos of low-passed seed deltas)", (230, 159, 0)),
}
EVAL = ("eval avg LPIPS, fixed seeds (higher: more diverse)", (0, 158, 115))
FONT_PX = 13


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with alpha = 2/(span+1), seeded with the first value."""
    alpha = 2.0 / (max(1, span) + 1)
    out: list[float] = []
    for v in values:
        out.append(v if not out else out[-1] + alpha * (v - out[-1]))
    return out


def _points(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, entry in enumerate(history, start=1):
        v = entry.get(key)
        if v is not None and math.isfinite(v):
            xs.append(float(entry.get("step", i)))
            ys.append(float(v))
    return xs, ys


def _dim(colour: tuple[int, int, int], amount: float = 0.45) -> tuple[int, int, int]:
    return tuple(int(b + amount * (c - b)) for c, b in zip(colour, BACKGROUND))


@dataclass(frozen=True)
class _Panel:
    x0: int
    y0: int
    w: int
    h: int

    def plot_area(self) -> tuple[int, int, int, int]:
        top = self.y0 + line_height(FONT_PX) + 4
        return self.x0 + 8, top, self.x0 + self.w - 8, self.y0 + self.h - line_height(FONT_PX) - 6


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _draw_panel(canvas: Image.Image, panel: _Panel, label: str, colour, xs, ys, x_range, smooth: bool) -> None:
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([panel.x0, panel.y0, panel.x0 + panel.w - 1, panel.y0 + panel.h - 1], outline=FRAME)
    draw_text(canvas, (panel.x0 + 8, panel.y0 + 4), label, FONT_PX, colour)
    left, top, right, bottom = panel.plot_area()
    if not ys:
        draw_text(canvas, (left, top + 4), "no values yet", FONT_PX, MUTED)
        return
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-12)
    lo, hi = lo - pad, hi + pad
    x_lo, x_hi = x_range
    span = max(x_hi - x_lo, 1e-9)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x_lo) / span * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top)

    pts = [to_px(x, y) for x, y in zip(xs, ys)]
    if smooth and len(ys) > 2:
        draw.line(pts, fill=_dim(colour), width=1)
        pts = [to_px(x, y) for x, y in zip(xs, ema(ys, max(1, len(ys) // 20)))]
    if len(pts) == 1:
        draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
    else:
        draw.line(pts, fill=colour, width=2)
    if not smooth:
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour)
    y_text = bottom + 3
    draw_text(canvas, (left, y_text), f"step {x_lo:g}", FONT_PX, MUTED)
    end = f"step {x_hi:g}"
    draw_text(canvas, (right - text_width(end, FONT_PX), y_text), end, FONT_PX, MUTED)
    scale = f"last {_fmt(ys[-1])}   min {_fmt(min(ys))}   max {_fmt(max(ys))}"
    draw_text(canvas, (max(left, (left + right - text_width(scale, FONT_PX)) // 2), y_text), scale, FONT_PX, MUTED)


def draw_loss_curves(
    history: Sequence[Mapping],
    evals: Sequence[Mapping] | None = None,
    *,
    title: str = "",
    width: int = 900,
    panel_h: int = 150,
) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one panel per loss term, and the eval LPIPS panel beside them when `evals` exist.

    history[i] describes step i+1 (keys total, anchor, diversity; None = not computed or non-finite).
    evals: {"step", "avg_lpips"} per evaluation (step 0 = before training).
    """
    title_h = line_height(FONT_PX) + 10 if title else 4
    loss_w = width if not evals else int(width * 0.62)
    canvas = Image.new("RGB", (width, title_h + panel_h * len(CURVES)), BACKGROUND)
    if title:
        draw_text(canvas, (8, 5), title, FONT_PX, TEXT)
    x_range = (1.0, float(max(len(history), 1)))
    for row, (key, (label, colour)) in enumerate(CURVES.items()):
        xs, ys = _points(history, key)
        _draw_panel(canvas, _Panel(0, title_h + row * panel_h, loss_w, panel_h), label, colour, xs, ys, x_range, True)
    if evals:
        xs, ys = _points(evals, "avg_lpips")
        steps = [float(e.get("step", 0)) for e in evals] + [float(len(history))]
        eval_range = (min(steps), max(max(steps), min(steps) + 1))
        panel = _Panel(loss_w + 6, title_h, width - loss_w - 6, panel_h * len(CURVES))
        _draw_panel(canvas, panel, EVAL[0], EVAL[1], xs, ys, eval_range, False)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None].contiguous()


def summarize(history: Sequence[Mapping], window: int = 20) -> dict:
    """Mean of each term over the first and the last `window` steps where it was computed, and skip counts."""
    out: dict = {"steps": len(history), "skipped": sum(1 for h in history if h.get("skipped"))}
    for key in CURVES:
        _, ys = _points(history, key)
        if ys:
            out[key] = {"first": float(np.mean(ys[:window])), "last": float(np.mean(ys[-window:])), "n": len(ys)}
    return out
