"""Seed grids, LPIPS heat-maps and model-comparison sheets as ComfyUI IMAGE tensors.

Pure functions: tensors in, one [1, H, W, 3] float tensor in [0, 1] out. Text is drawn with
Pillow on a canvas; the image tiles are then copied in as exact float values (no 8-bit round
trip), so a grid shows the images exactly as generated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .images import validate_images
from .palette import BACKGROUND, FRAME, MUTED, TEXT, VIRIDIS
from .text import MIN_PX, draw_lines, draw_text, line_height, text_width, wrap

__all__ = [
    "GridLayout",
    "RowsLayout",
    "grid_shape",
    "layout_seed_grid",
    "draw_seed_grid",
    "draw_heatmap",
    "layout_rows",
    "compose_rows",
]



def font_px_for(size: int, fraction: float = 0.055, max_px: int = 64) -> int:
    """Font size that scales with a tile/row of `size` pixels, never below MIN_PX."""
    return int(min(max(MIN_PX, round(size * fraction)), max_px))


def grid_shape(n: int, columns: int | None = None) -> tuple[int, int]:
    """(columns, rows) for n tiles; default columns = ceil(sqrt(n))."""
    if n < 1:
        raise ValueError(f"a grid needs at least 1 image, got {n}")
    if columns is None:
        columns = math.ceil(math.sqrt(n))
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    columns = min(columns, n)
    return columns, math.ceil(n / columns)


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a seed grid; positions are (x, y) top-left corners, in input order."""

    columns: int
    rows: int
    tile_w: int
    tile_h: int
    header_h: int
    label_h: int
    gap: int
    width: int
    height: int
    font_px: int
    header_px: int
    header_lines: list[str] = field(default_factory=list)  # after wrapping to the grid width
    labels: list[list[str]] = field(default_factory=list)  # per tile, after wrapping
    positions: list[tuple[int, int]] = field(default_factory=list)
    label_positions: list[tuple[int, int]] = field(default_factory=list)


def _canvas(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), BACKGROUND)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None].contiguous()


def layout_seed_grid(
    n: int, tile_w: int, tile_h: int, seeds: Sequence, header_lines: Sequence[str], columns: int | None = None
) -> GridLayout:
    """Compute where tiles, seed labels and header go (no drawing)."""
    cols, rows = grid_shape(n, columns)
    px = font_px_for(min(tile_w, tile_h))
    header_px = round(px * 1.2)
    gap = max(2, px // 3)
    width = cols * tile_w + (cols + 1) * gap
    header = [ln for text in header_lines for ln in wrap(str(text), header_px, width - 2 * gap)]
    header_h = len(header) * line_height(header_px) + gap if header else 0
    labels = [wrap(f"seed {s}", px, tile_w) for s in seeds]
    label_h = max(len(lines) for lines in labels) * line_height(px) + gap
    cell_h = tile_h + label_h
    top = header_h + gap
    positions = [(gap + (k % cols) * (tile_w + gap), top + (k // cols) * (cell_h + gap)) for k in range(n)]
    return GridLayout(
        columns=cols,
        rows=rows,
        tile_w=tile_w,
        tile_h=tile_h,
        header_h=header_h,
        label_h=label_h,
        gap=gap,
        width=width,
        height=top + rows * (cell_h + gap),
        font_px=px,
        header_px=header_px,
        header_lines=header,
        labels=labels,
        positions=positions,
        label_positions=[(x, y + tile_h) for x, y in positions],
    )


def draw_seed_grid(
    images: torch.Tensor, seeds: Sequence, header_lines: Sequence[str], columns: int | None = None
) -> tuple[torch.Tensor, GridLayout]:
    """Tile an IMAGE batch, each tile labelled with its seed, under a header of the given lines.

    Returns the grid [1, H, W, 3] and its GridLayout.
    """
    images = validate_images(images, what="seed grid")
    n, tile_h, tile_w, _ = images.shape
    if len(seeds) != n:
        raise ValueError(f"seed grid: {n} images but {len(seeds)} seeds")
    layout = layout_seed_grid(n, tile_w, tile_h, seeds, header_lines, columns)
    canvas = _canvas(layout.width, layout.height)
    draw_lines(canvas, (layout.gap, layout.gap // 2), layout.header_lines, layout.header_px, TEXT)
    for lines, (x, y) in zip(layout.labels, layout.label_positions):
        draw_lines(canvas, (x, y + layout.gap // 3), lines, layout.font_px, TEXT, center_width=tile_w)
    out = _to_tensor(canvas)
    tiles = images.detach().to("cpu", torch.float32)
    for tile, (x, y) in zip(tiles, layout.positions):
        out[0, y : y + tile_h, x : x + tile_w] = tile
    return out, layout


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 on the viridis anchors (linear in between)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(VIRIDIS) - 1)
    lo = np.minimum(np.floor(v).astype(int), len(VIRIDIS) - 2)
    t = (v - lo)[..., None]
    return np.round(VIRIDIS[lo] * (1 - t) + VIRIDIS[lo + 1] * t).astype(np.uint8)


def draw_heatmap(
    matrix: torch.Tensor,
    labels: Sequence[str],
    title: str,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Heat-map of a pairwise LPIPS matrix: labelled rows/columns, colour bar, values if N <= 16.

    The colour scale runs from 0 to the largest pair (or `value_range`, to compare several
    heat-maps on one scale); the diagonal (always 0) is drawn grey.
    """
    m = np.asarray(torch.as_tensor(matrix, dtype=torch.float64).cpu())
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"heat-map needs a square matrix with N >= 2, got shape {m.shape}")
    n = m.shape[0]
    if len(labels) != n:
        raise ValueError(f"heat-map: {n} rows but {len(labels)} labels")
    off = m[~np.eye(n, dtype=bool)]
    lo, hi = value_range if value_range is not None else (0.0, float(off.max()))
    if hi <= lo:
        hi = lo + 1.0
    cell = int(min(64, max(12, 640 // n)))
    label_px = font_px_for(cell, 0.3, 24)
    value_px = next((p for p in range(24, 7, -1) if text_width("0.000", p) <= cell - 4), 0)
    show_values = n <= 16 and value_px > 0
    labels = [str(s) for s in labels]
    pad = max(4, label_px // 2)
    row_label_w = max(text_width(s, label_px) for s in labels) + pad
    col_label_h = row_label_w  # column labels are the same strings, drawn vertically
    bar_w = max(12, cell // 2)
    ticks = [f"{v:.3f}" for v in (hi, (lo + hi) / 2, lo)]
    legend_w = bar_w + pad + max(text_width(t, label_px) for t in ticks) + pad
    grid_x = pad + row_label_w
    width = grid_x + n * cell + 2 * pad + legend_w
    title_px = round(label_px * 1.3)
    title_lines = wrap(title, title_px, width - 2 * pad) if title else []
    title_h = len(title_lines) * line_height(title_px) + pad
    grid_y = title_h + col_label_h + pad
    height = grid_y + n * cell + pad
    canvas = _canvas(width, height)
    draw_lines(canvas, (pad, pad // 2), title_lines, title_px, TEXT)

    pixels = np.asarray(canvas).copy()
    colours = colormap((m - lo) / (hi - lo))
    for i in range(n):
        for j in range(n):
            y, x = grid_y + i * cell, grid_x + j * cell
            pixels[y : y + cell - 1, x : x + cell - 1] = FRAME if i == j else colours[i, j]
    bar_x, bar_h = grid_x + n * cell + 2 * pad, n * cell
    ramp = colormap(np.linspace(1.0, 0.0, bar_h))
    pixels[grid_y : grid_y + bar_h, bar_x : bar_x + bar_w] = ramp[:, None, :]
    canvas = Image.fromarray(pixels)

    lh = line_height(label_px)
    stride = math.ceil(lh / cell)  # label every row while they fit, else every stride-th
    for k, name in enumerate(labels):
        if k % stride:
            continue
        y = grid_y + k * cell + (cell - lh) // 2
        draw_text(canvas, (grid_x - pad - text_width(name, label_px), y), name, label_px, TEXT)
        strip = _canvas(text_width(name, label_px), lh)
        draw_text(strip, (0, 0), name, label_px, TEXT)
        strip = strip.rotate(90, expand=True)
        canvas.paste(strip, (grid_x + k * cell + (cell - strip.width) // 2, grid_y - pad - strip.height))
    if show_values:
        vlh = line_height(value_px)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                r, g, b = (int(c) for c in colours[i, j])
                ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
                text = f"{m[i, j]:.3f}"
                x = grid_x + j * cell + (cell - 1 - text_width(text, value_px)) // 2
                draw_text(canvas, (x, grid_y + i * cell + (cell - vlh) // 2), text, value_px, ink)
    for k, tick in enumerate(ticks):
        y = grid_y + int(k * (bar_h - lh) / 2)
        draw_text(canvas, (bar_x + bar_w + pad, y), tick, label_px, MUTED)
    return _to_tensor(canvas)


@dataclass(frozen=True)
class RowsLayout:
    """Geometry of a comparison sheet: per row, (x, y) of its grid and of its side text."""

    width: int
    height: int
    title_h: int
    panel_w: int
    font_px: int
    gap: int
    title_lines: list[str]
    grid_positions: list[tuple[int, int]]
    text_positions: list[tuple[int, int]]
    side_lines: list[list[str]]


def _row_image(image: torch.Tensor, k: int) -> torch.Tensor:
    if image.dim() == 3:
        image = image[None]
    image = validate_images(image, what=f"comparison row {k}")
    if image.shape[0] != 1:
        raise ValueError(f"comparison row {k}: expected one grid image [1, H, W, 3], got {tuple(image.shape)}")
    return image[0]


def layout_rows(
    sizes: Sequence[tuple[int, int]], side_texts: Sequence[Sequence[str]], title_lines: Sequence[str]
) -> RowsLayout:
    """Place rows (given their grid (H, W)) under a title, each with a side panel on the left."""
    if not sizes:
        raise ValueError("compose_rows needs at least one row")
    px = font_px_for(int(np.median([h for h, _ in sizes])), 0.035, 48)
    gap = max(4, px // 2)
    side = [[str(s) for s in lines] for lines in side_texts]
    panel_w = max([text_width(s, px) for lines in side for s in lines] + [0]) + 2 * gap
    width = panel_w + max(w for _, w in sizes) + gap
    title_px = round(px * 1.3)
    title = [ln for t in title_lines for ln in wrap(str(t), title_px, width - 2 * gap)]
    title_h = len(title) * line_height(title_px) + gap if title else 0
    y = title_h + gap
    grid_positions, text_positions = [], []
    for h, _ in sizes:
        grid_positions.append((panel_w, y))
        text_positions.append((gap, y + gap))
        y += max(h, len(side[len(text_positions) - 1]) * line_height(px) + 2 * gap) + gap
    return RowsLayout(width, y, title_h, panel_w, px, gap, title, grid_positions, text_positions, side)


def compose_rows(rows: Sequence[tuple[torch.Tensor, Sequence[str]]], title_lines: Sequence[str]) -> torch.Tensor:
    """Stack one grid per model, in the given order, each with its scores in a side panel.

    Rows of different widths are padded on the right with the background colour.
    """
    images = [_row_image(img, k) for k, (img, _) in enumerate(rows)]
    layout = layout_rows([tuple(img.shape[:2]) for img in images], [text for _, text in rows], title_lines)
    canvas = _canvas(layout.width, layout.height)
    draw_lines(canvas, (layout.gap, layout.gap // 2), layout.title_lines, round(layout.font_px * 1.3), TEXT)
    for lines, xy in zip(layout.side_lines, layout.text_positions):
        draw_lines(canvas, xy, lines, layout.font_px, TEXT)
    out = _to_tensor(canvas)
    for img, (x, y) in zip(images, layout.grid_positions):
        out[0, y : y + img.shape[0], x : x + img.shape[1]] = img.detach().to("cpu", torch.float32)
    return out
