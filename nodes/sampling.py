"""Many seeds through ComfyUI's own sampler, in batches, each image exactly what KSampler gives for its seed.

KSampler draws the noise of a batch-1 latent from torch.manual_seed(seed); here every seed's noise is drawn
the same way and the noises are stacked, so a batch holds the same starting points as one KSampler run per
seed. Samplers that draw fresh noise while sampling (ancestral, SDE, …) seed it once per batch, which would
give other images in a batch: those run one seed at a time.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

import comfy.model_management
import comfy.sample
import comfy.utils

LATENT_FACTOR = 8  # pixels per latent cell of EmptyLatentImage / EmptySD3LatentImage
STOCHASTIC_MARKERS = ("ancestral", "sde", "ddpm", "lcm", "seeds_", "sa_solver")


def draws_noise_while_sampling(sampler_name: str) -> bool:
    return any(marker in sampler_name for marker in STOCHASTIC_MARKERS)


def empty_latent(model, width: int, height: int) -> torch.Tensor:
    """The latent EmptySD3LatentImage (Z-Image's example) gives, fitted as KSampler fits it to the model's latent
    format (its channel count; 5-D [1, C, 1, h, w] for video-style formats such as Qwen-Image's)."""
    latent = torch.zeros([1, 16, height // LATENT_FACTOR, width // LATENT_FACTOR],
                         device=comfy.model_management.intermediate_device())
    return comfy.sample.fix_empty_latent_channels(model, latent)


def sample_seeds(model, positive, negative, seeds: Sequence[int], *, width: int, height: int, steps: int, cfg: float,
                 sampler_name: str, scheduler: str, batch_size: int,
                 on_batch: Callable[[list[int], torch.Tensor], None] | None = None) -> tuple[torch.Tensor, int]:
    """Latents [len(seeds), C, …] (the model's latent rank) in seed order, and the batch size actually used.

    One progress bar over every step of every seed; ComfyUI's interrupt is honoured between steps.
    """
    latent = empty_latent(model, width, height)
    if draws_noise_while_sampling(sampler_name):
        batch_size = 1
    pbar = comfy.utils.ProgressBar(len(seeds) * steps)
    out = []
    done = 0
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start:start + batch_size])
        noise = torch.cat([comfy.sample.prepare_noise(latent, seed) for seed in chunk])
        batch_latent = latent.expand(len(chunk), *latent.shape[1:]).contiguous()

        def callback(step, x0, x, total_steps, _done=done, _n=len(chunk)):
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(_done + (step + 1) * _n, len(seeds) * steps)

        samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                      batch_latent, denoise=1.0, callback=callback, disable_pbar=True, seed=chunk[0])
        done += len(chunk) * steps
        if on_batch is not None:
            on_batch(chunk, samples)
        out.append(samples)
    return torch.cat(out), batch_size
