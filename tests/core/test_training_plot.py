"""Loss-curve image: every term drawn in its own colour, gaps for steps without a term, the eval panel beside."""
import math

import numpy as np
import pytest
import torch

from sda_core.training.plot import CURVES, EVAL, draw_loss_curves, ema, summarize


def _history(n=40, div_every=8):
    out = []
    for i in range(n):
        div = None if i % div_every == div_every - 1 else 1.0 - 0.01 * i
        anchor = 1e-5 * (i + 1)
        out.append({"total": anchor + (div or 0.0), "anchor": anchor, "diversity": div, "k": i % 8, "skipped": False})
    return out


def _has_colour(image: torch.Tensor, rgb, tol=2) -> int:
    px = (image[0].numpy() * 255).round().astype(int)
    return int((np.abs(px - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_image_shape_range_and_every_curve_colour_present():
    img = draw_loss_curves(_history(), title="run")
    assert img.dtype == torch.float32 and img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    for key, (_, colour) in CURVES.items():
        assert _has_colour(img, colour) > 50, key
    assert _has_colour(img, EVAL[1]) == 0  # no eval panel without evals


def test_eval_panel_is_drawn_beside_the_losses():
    evals = [{"step": 0, "avg_lpips": 0.40}, {"step": 20, "avg_lpips": 0.45}, {"step": 40, "avg_lpips": 0.47}]
    with_evals = draw_loss_curves(_history(), evals)
    without = draw_loss_curves(_history())
    assert with_evals.shape == without.shape
    assert _has_colour(with_evals, EVAL[1]) > 50


def test_different_histories_draw_different_images_and_tiny_anchor_values_still_show():
    a = draw_loss_curves(_history())
    h = _history()
    h[-1]["anchor"] = 5e-4  # a jump only the anchor's own y-range can show
    b = draw_loss_curves(h)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("history", [[], [{"total": None, "anchor": None, "diversity": None, "skipped": True}],
                                     [{"total": 0.5, "anchor": 0.0, "diversity": 0.5}]])
def test_empty_skipped_and_single_step_histories_draw(history):
    img = draw_loss_curves(history, [{"step": 0, "avg_lpips": 0.3}])
    assert img.shape[0] == 1 and torch.isfinite(img).all()


def test_ema_and_summary():
    assert ema([1.0, 1.0, 1.0], 5) == [1.0, 1.0, 1.0]
    smoothed = ema([0.0, 1.0], 1)  # alpha 1: no smoothing
    assert smoothed == [0.0, 1.0]
    s = summarize(_history(n=40), window=5)
    assert s["steps"] == 40 and s["skipped"] == 0
    assert s["diversity"]["n"] == 35  # every 8th step has no diversity term
    assert math.isclose(s["anchor"]["first"], 3e-5) and s["anchor"]["last"] > s["anchor"]["first"]
