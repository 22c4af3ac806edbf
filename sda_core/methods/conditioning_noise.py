"""Conditioning noise (the SeedVarianceEnhancer idea): each image gets its own nearby prompt embedding early on.

For one image with prompt embedding y [T, D] and a standard normal draw n [T, D] (one per image, fixed for
the whole window):

    ŷ = y + strength · σ(y) · n,   with n set to 0 on the first `protect_tokens` tokens,

where σ(y) is the standard deviation of all the image's embedding values. strength is therefore relative to
the embedding's own spread: 1 adds noise as large as the embedding varies, 0.1 a tenth of it.
"""
from __future__ import annotations

import torch


class ConditioningNoiseError(ValueError):
    """A conditioning noise widget holds an unusable value; the message names the widget."""


def check_settings(strength: float, protect_tokens: int) -> None:
    if not strength >= 0.0:
        raise ConditioningNoiseError(f"strength is {strength}; expected 0 or more (0 turns the noise off)")
    if protect_tokens < 0:
        raise ConditioningNoiseError(f"protect_tokens is {protect_tokens}; expected 0 or more")


def embedding_scale(y: torch.Tensor) -> torch.Tensor:
    """σ(y): the population std of every value of one image's embedding [T, D], as a 0-d float32 tensor."""
    return y.float().std(correction=0)


def add_conditioning_noise(y: torch.Tensor, noise: torch.Tensor, strength: float, protect_tokens: int = 0) -> torch.Tensor:
    """ŷ for one image: y [T, D], noise [T, D] standard normal; returns y's dtype. strength 0 returns y itself."""
    if strength == 0.0:
        return y
    noise = noise.to(device=y.device, dtype=torch.float32)
    if protect_tokens > 0:
        noise = noise.clone()
        noise[:protect_tokens] = 0.0
    return (y.float() + strength * embedding_scale(y) * noise).to(y.dtype)
