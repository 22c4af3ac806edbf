"""CADS maths against the paper's equations (Sadat et al., ICLR 2024, eqs. 2–4), computed here in numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sda_core.methods.condition_annealing import AnnealingError, anneal, check_settings, gamma


@pytest.mark.parametrize("t, expected", [
    (0.0, 1.0), (0.6, 1.0), (0.61, 29 / 30), (0.75, 0.5), (0.87, 0.1), (0.9, 0.0), (1.0, 0.0),
])
def test_gamma_is_one_below_tau1_zero_above_tau2_and_linear_between(t, expected):
    assert gamma(t, 0.6, 0.9) == pytest.approx(expected, abs=1e-12)


def _paper(y: np.ndarray, n: np.ndarray, g: float, s: float, psi: float) -> np.ndarray:
    noised = np.sqrt(g) * y + s * np.sqrt(1 - g) * n
    rescaled = (noised - noised.mean()) / noised.std(ddof=1) * y.std(ddof=1) + y.mean()
    return psi * rescaled + (1 - psi) * noised


@pytest.mark.parametrize("g, s, psi", [(0.5, 0.25, 1.0), (0.0, 0.1, 1.0), (0.3, 1.0, 0.0), (0.8, 0.5, 0.4)])
def test_anneal_equals_the_papers_noise_and_rescaling(g, s, psi):
    gen = np.random.default_rng(3)
    y = gen.normal(0.7, 2.0, size=(6, 5))
    n = gen.normal(size=(6, 5))
    out = anneal(torch.tensor(y, dtype=torch.float32), torch.tensor(n, dtype=torch.float32), g, s, psi)
    np.testing.assert_allclose(out.numpy(), _paper(y, n, g, s, psi), rtol=0, atol=1e-5)


def test_full_rescaling_restores_the_clean_mean_and_std():
    y = torch.linspace(-3, 5, 40).reshape(8, 5)
    out = anneal(y, torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), 0.2, 0.8, 1.0)
    assert out.mean().item() == pytest.approx(y.mean().item(), abs=1e-5)
    assert out.std().item() == pytest.approx(y.std().item(), rel=1e-5)
    assert (out - y).abs().max() > 0.1


def test_clean_steps_and_zero_noise_scale_return_the_condition_itself():
    y = torch.randn(4, 3)
    assert anneal(y, torch.randn(4, 3), 1.0, 0.5, 1.0) is y
    assert anneal(y, torch.randn(4, 3), 0.2, 0.0, 1.0) is y


def test_half_precision_condition_keeps_its_dtype():
    y = torch.randn(4, 3).to(torch.bfloat16)
    assert anneal(y, torch.randn(4, 3), 0.5, 0.3, 1.0).dtype == torch.bfloat16


@pytest.mark.parametrize("args, fragment", [
    ((0.9, 0.6, 0.1, 1.0), "tau1 (0.9) is not below tau2 (0.6)"),
    ((0.2, 1.5, 0.1, 1.0), "tau2 is 1.5; expected a value from 0 to 1"),
    ((0.2, 0.9, -0.1, 1.0), "noise_scale is -0.1"),
    ((0.2, 0.9, 0.1, 2.0), "psi is 2.0"),
])
def test_bad_settings_are_clear_errors(args, fragment):
    with pytest.raises(AnnealingError, match=None) as info:
        check_settings(*args)
    assert fragment in str(info.value)
