"""CADS, condition-annealed sampling (Sadat et al., ICLR 2024, arXiv:2310.17347, section 3.1).

With t the normalised diffusion time (1 = pure noise at the start of sampling, 0 = clean at the end):

    γ(t) = 1                          for t ≤ τ1
           (τ2 − t) / (τ2 − τ1)       for τ1 < t < τ2                       (eq. 2)
           0                          for t ≥ τ2
    ŷ = √γ(t) · y + s · √(1 − γ(t)) · n,   n ~ N(0, I) drawn afresh at every step   (eq. 3)
    ŷ_rescaled = (ŷ − mean(ŷ)) / std(ŷ) · std(y) + mean(y)
    ŷ_final = ψ · ŷ_rescaled + (1 − ψ) · ŷ                                       (eq. 4)

So early, noisy steps see a heavily corrupted condition and the last steps the clean one. Means and stds are
over all values of one image's condition (here a prompt embedding [T, D]), so an image's result does not
depend on the other images of its batch.
"""
from __future__ import annotations

import math

import torch


class AnnealingError(ValueError):
    """A CADS widget holds an unusable value; the message names the widget."""


def check_settings(tau1: float, tau2: float, noise_scale: float, psi: float) -> None:
    for name, value in (("tau1", tau1), ("tau2", tau2), ("psi", psi)):
        if not 0.0 <= value <= 1.0:
            raise AnnealingError(f"{name} is {value}; expected a value from 0 to 1")
    if tau1 >= tau2:
        raise AnnealingError(f"tau1 ({tau1}) is not below tau2 ({tau2}); expected τ1 < τ2 (the condition is clean "
                             f"below τ1 and fully noised above τ2)")
    if not noise_scale >= 0.0:
        raise AnnealingError(f"noise_scale is {noise_scale}; expected 0 or more (0 turns CADS off)")


def gamma(t: float, tau1: float, tau2: float) -> float:
    """γ(t) of eq. 2: 1 for t ≤ τ1, 0 for t ≥ τ2, linear in between."""
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


def anneal(y: torch.Tensor, noise: torch.Tensor, gamma_t: float, noise_scale: float, psi: float) -> torch.Tensor:
    """ŷ_final (eqs. 3–4) for one image's condition y [T, D] and a standard normal noise of y's shape.

    Returns y itself when γ = 1 or s = 0 (CADS off at this step), so an off step costs nothing and is exact.
    """
    if gamma_t >= 1.0 or noise_scale == 0.0:
        return y
    clean = y.float()
    noise = noise.to(device=y.device, dtype=torch.float32)
    noised = math.sqrt(gamma_t) * clean + noise_scale * math.sqrt(1.0 - gamma_t) * noise
    if psi > 0.0:
        rescaled = (noised - noised.mean()) / noised.std().clamp_min(1e-12) * clean.std() + clean.mean()
        noised = psi * rescaled + (1.0 - psi) * noised
    return noised.to(y.dtype)
