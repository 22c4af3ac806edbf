"""Conditioning noise and the per-image keys that make every method's randomness follow the image's seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sda_core.methods.conditioning_noise import (ConditioningNoiseError, add_conditioning_noise, check_settings,
                                                 embedding_scale)
from sda_core.methods.per_image import gaussian, image_keys


def test_noise_is_strength_times_the_embeddings_own_std_and_spares_protected_tokens():
    gen = np.random.default_rng(0)
    y = gen.normal(0.3, 1.7, size=(5, 4))
    n = gen.normal(size=(5, 4))
    out = add_conditioning_noise(torch.tensor(y, dtype=torch.float32), torch.tensor(n, dtype=torch.float32), 0.4, 2)
    expected = y + 0.4 * y.std() * np.concatenate([np.zeros((2, 4)), n[2:]])
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
    assert embedding_scale(torch.tensor(y)).item() == pytest.approx(y.std(), rel=1e-6)


def test_strength_zero_returns_the_embedding_itself():
    y = torch.randn(3, 2)
    assert add_conditioning_noise(y, torch.randn(3, 2), 0.0, 0) is y


@pytest.mark.parametrize("strength, protect, fragment", [(-0.1, 0, "strength is -0.1"), (0.1, -1, "protect_tokens is -1")])
def test_bad_settings_are_clear_errors(strength, protect, fragment):
    with pytest.raises(ConditioningNoiseError) as info:
        check_settings(strength, protect)
    assert fragment in str(info.value)


def test_an_images_key_depends_on_its_own_rows_only():
    noises = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3, 4)]
    latent = torch.zeros(1, 4, 8, 8)
    alone = [image_keys(n, latent)[0] for n in noises]
    batched = image_keys(torch.cat(noises), latent.expand(4, -1, -1, -1))
    assert batched == alone
    assert len(set(alone)) == 4
    assert image_keys(torch.zeros(1, 4, 8, 8), noises[0]) != image_keys(torch.zeros(1, 4, 8, 8), noises[1])


def test_draws_are_a_fixed_function_of_key_and_tags():
    a = gaussian(123, (3, 5), "cads", 2)
    torch.testing.assert_close(a, gaussian(123, (3, 5), "cads", 2), rtol=0, atol=0)
    assert not torch.equal(a, gaussian(123, (3, 5), "cads", 3))
    assert not torch.equal(a, gaussian(124, (3, 5), "cads", 2))
    assert a.dtype == torch.float32 and abs(gaussian(5, (200, 200)).std().item() - 1.0) < 0.02
