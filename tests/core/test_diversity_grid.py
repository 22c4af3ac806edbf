"""Seed grids, heat-maps, comparison sheets and the Markdown table."""
import math

import numpy as np
import pytest
import torch
from PIL import ImageFont

from sda_core.diversity import text
from sda_core.diversity.palette import BACKGROUND
from sda_core.diversity.grid import (
    GridLayout,
    colormap,
    compose_rows,
    draw_heatmap,
    draw_seed_grid,
    layout_rows,
)

BG = torch.tensor(BACKGROUND, dtype=torch.float32) / 255


def tiles(n, h, w, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def has_ink(region: torch.Tensor) -> bool:
    """Something other than background was drawn here (text)."""
    return bool(((region - BG).abs().amax(-1) > 0.2).any())


ASPECTS = {"square": (64, 64), "16:9": (72, 128), "9:16": (128, 72)}


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
@pytest.mark.parametrize("aspect", sorted(ASPECTS))
def test_seed_grid_geometry(n, aspect):
    h, w = ASPECTS[aspect]
    images = tiles(n, h, w)
    seeds = [1000 + 17 * k for k in range(n)]
    grid, layout = draw_seed_grid(images, seeds, ["SDA LoKr 0.7 · 8 steps", "avg LPIPS 0.691 · pixel std 0.209"])
    assert isinstance(layout, GridLayout)
    assert layout.columns == math.ceil(math.sqrt(n)) and layout.rows == math.ceil(n / layout.columns)
    assert (layout.tile_w, layout.tile_h) == (w, h)
    assert grid.shape == (1, layout.height, layout.width, 3) and grid.dtype == torch.float32
    assert 0.0 <= float(grid.min()) and float(grid.max()) <= 1.0
    assert layout.header_h > 0 and layout.label_h > 0
    boxes = []
    for k, (x, y) in enumerate(layout.positions):
        assert (x, y) == (layout.positions[0][0] + (k % layout.columns) * (w + layout.gap),
                          layout.positions[0][1] + (k // layout.columns) * (h + layout.label_h + layout.gap))
        assert y >= layout.header_h  # tiles below the header
        assert x + w <= layout.width and y + h + layout.label_h <= layout.height
        assert torch.equal(grid[0, y : y + h, x : x + w], images[k])  # exact pixels, no 8-bit round trip
        lx, ly = layout.label_positions[k]
        assert (lx, ly) == (x, y + h)
        assert has_ink(grid[0, ly : ly + layout.label_h, lx : lx + w]), f"no seed label under tile {k}"
        assert " ".join(layout.labels[k]) == f"seed {seeds[k]}"
        boxes.append((x, y, x + w, y + h + layout.label_h))
    for i, a in enumerate(boxes):  # tiles + labels never overlap
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert has_ink(grid[0, : layout.header_h])
    assert " ".join(layout.header_lines).startswith("SDA LoKr 0.7")


def test_columns_override_and_clamp():
    _, layout = draw_seed_grid(tiles(6, 64, 64), list(range(6)), [], columns=6)
    assert (layout.columns, layout.rows, layout.header_h) == (6, 1, 0)
    _, layout = draw_seed_grid(tiles(3, 64, 64), list(range(3)), [], columns=10)
    assert layout.columns == 3
    with pytest.raises(ValueError, match="columns"):
        draw_seed_grid(tiles(3, 64, 64), list(range(3)), [], columns=0)


def test_font_scales_with_tile_size_and_stays_legible():
    small = draw_seed_grid(tiles(2, 64, 64), [1, 2], ["x"])[1]
    big = draw_seed_grid(torch.zeros(2, 1024, 1024, 3), [1, 2], ["x"])[1]
    assert small.font_px >= text.MIN_PX
    assert big.font_px >= 4 * small.font_px
    assert big.label_h > small.label_h and big.header_h > small.header_h


def test_long_seed_and_header_wrap_inside_the_grid():
    grid, layout = draw_seed_grid(tiles(2, 64, 64), [2**63 - 1, 5], ["a rather long header line " * 6])
    assert len(layout.labels[0]) > 1 and len(layout.header_lines) > 1
    assert all(text.text_width(line, layout.font_px) <= layout.tile_w for line in layout.labels[0])
    assert all(text.text_width(ln, layout.header_px) <= layout.width for ln in layout.header_lines)


def test_seed_grid_bad_inputs():
    with pytest.raises(ValueError, match="2 images but 3 seeds"):
        draw_seed_grid(tiles(2, 64, 64), [1, 2, 3], [])
    with pytest.raises(ValueError, match="4 channels"):
        draw_seed_grid(torch.rand(2, 64, 64, 4), [1, 2], [])
    bad = tiles(2, 64, 64)
    bad[1, 3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        draw_seed_grid(bad, [1, 2], [])


def test_bitmap_font_fallback_for_old_pillow(monkeypatch):
    real = ImageFont.load_default

    def old_pillow(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(ImageFont, "load_default", old_pillow)
    text._font.cache_clear()
    try:
        grid, layout = draw_seed_grid(torch.zeros(2, 512, 512, 3), [1, 2], ["header"])
        assert text._font(33)[1] == 3  # bitmap font enlarged x3
        lx, ly = layout.label_positions[0]
        assert has_ink(grid[0, ly : ly + layout.label_h, lx : lx + 512])
    finally:
        monkeypatch.setattr(ImageFont, "load_default", real)
        text._font.cache_clear()


def test_printable_replaces_missing_glyphs():
    assert text.printable("LPIPS — café") == "LPIPS - cafe"
    assert text.printable("plain ascii 0.691") == "plain ascii 0.691"


def matrix(n, seed=0):
    m = torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m = (m + m.T) / 2
    m.fill_diagonal_(0)
    return m


def contains_colour(image: torch.Tensor, rgb) -> bool:
    target = torch.tensor(rgb, dtype=torch.float32) / 255
    return bool(((image[0] - target).abs().amax(-1) < 1e-6).any())


@pytest.mark.parametrize("n", [2, 5, 16, 40])
def test_heatmap(n):
    m = matrix(n)
    image = draw_heatmap(m, [f"seed {k}" for k in range(n)], "pairwise LPIPS — baseline")
    assert image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] > 12 * n and image.shape[2] > 12 * n
    top = tuple(int(c) for c in colormap(np.array([1.0]))[0])
    assert contains_colour(image, top)  # the largest pair gets the top of the scale
    assert contains_colour(image, (90, 90, 90))  # grey diagonal


def test_heatmap_value_range_and_errors():
    m = matrix(3) * 0.5
    image = draw_heatmap(m, ["a", "b", "c"], "t", value_range=(0.0, 1.0))
    assert not contains_colour(image[:, :, : image.shape[2] * 2 // 3], tuple(int(c) for c in colormap(np.array([1.0]))[0]))
    with pytest.raises(ValueError, match="3 rows but 2 labels"):
        draw_heatmap(m, ["a", "b"], "t")
    with pytest.raises(ValueError, match="square"):
        draw_heatmap(torch.zeros(2, 3), ["a", "b"], "t")


def test_colormap_ends():
    ends = colormap(np.array([0.0, 1.0, -5.0, 7.0]))
    assert ends[0].tolist() == [68, 1, 84] and ends[1].tolist() == [253, 231, 37]
    assert ends[2].tolist() == ends[0].tolist() and ends[3].tolist() == ends[1].tolist()


def test_compose_rows_order_padding_and_side_text():
    narrow = draw_seed_grid(tiles(4, 64, 64, 1), [1, 2, 3, 4], ["baseline"])[0]
    wide = draw_seed_grid(tiles(3, 64, 112, 2), [5, 6, 7], ["teacher"], columns=3)[0]
    rows = [(narrow, ["8-step baseline", "avg LPIPS 0.564"]), (wide, ["50-step teacher", "avg LPIPS 0.745"])]
    sheet = compose_rows(rows, ["prompt: a red fox", "16 seeds"])
    layout = layout_rows([tuple(narrow.shape[1:3]), tuple(wide.shape[1:3])], [r[1] for r in rows], ["prompt: a red fox", "16 seeds"])
    assert sheet.shape == (1, layout.height, layout.width, 3)
    assert layout.width == layout.panel_w + wide.shape[2] + layout.gap
    (x0, y0), (x1, y1) = layout.grid_positions
    assert y0 < y1  # given order
    assert torch.equal(sheet[0, y0 : y0 + narrow.shape[1], x0 : x0 + narrow.shape[2]], narrow[0])
    assert torch.equal(sheet[0, y1 : y1 + wide.shape[1], x1 : x1 + wide.shape[2]], wide[0])
    pad = sheet[0, y0 : y0 + narrow.shape[1], x0 + narrow.shape[2] :]
    assert torch.allclose(pad, BG.expand_as(pad))  # narrower row padded with background
    assert has_ink(sheet[0, y0 : y0 + narrow.shape[1], : layout.panel_w])  # scores in the side panel
    assert has_ink(sheet[0, : layout.title_h])
    with pytest.raises(ValueError, match="one grid image"):
        compose_rows([(torch.rand(2, 8, 8, 3), [])], [])
    with pytest.raises(ValueError, match="at least one row"):
        compose_rows([], ["t"])
