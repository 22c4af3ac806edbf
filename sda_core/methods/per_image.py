"""Per-image randomness that follows the image, not its place in a batch.

A method that perturbs sampling must give seed k the same image whether k is sampled alone (KSampler) or in
a batch of four (Seed Diversity Grid). So its random numbers are drawn from a key computed from the image's
own starting point — its row of the initial noise and of the input latent — never from a batch-wide
generator. Same starting point, same key, same draws; a different seed gives a different key.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def image_keys(noise: torch.Tensor, latent: torch.Tensor | None = None) -> list[int]:
    """One 63-bit key per batch row of `noise` [B, ...], hashed from that row's bytes (and the latent's row).

    The latent counts too so that a second sampler fed zero noise (add_noise disabled) still tells images apart.
    A latent with fewer rows than the noise is broadcast the way ComfyUI broadcasts it (row b % rows).
    """
    rows = noise.detach().to("cpu", torch.float32).contiguous()
    lat = None if latent is None else latent.detach().to("cpu", torch.float32).contiguous()
    keys = []
    for b in range(rows.shape[0]):
        digest = hashlib.blake2b(rows[b].numpy().tobytes(), digest_size=8)
        if lat is not None and lat.numel():
            digest.update(lat[b % lat.shape[0]].numpy().tobytes())
        keys.append(int.from_bytes(digest.digest(), "little") >> 1)
    return keys


def gaussian(key: int, shape: Sequence[int], *tags: int | str) -> torch.Tensor:
    """Standard normal float32 numbers of `shape` on the CPU, a fixed function of (key, *tags).

    Tags separate independent draws for the same image (a method's name, a step index).
    """
    digest = hashlib.blake2b(str((key, *tags)).encode(), digest_size=8)
    generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
