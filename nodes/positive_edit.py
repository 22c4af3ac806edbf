"""Glue shared by the methods that edit the positive prompt embedding while sampling (conditioning noise, CADS).

Two wrappers ride on a clone of the model, so they go wherever the MODEL goes (KSampler, the Seed Diversity
Grid, custom samplers) and vanish with it:
- OUTER_SAMPLE sees each sampling run's starting noise and latent and keys every image by its own start
  (sda_core.methods.per_image), so an image's edit never depends on its batch;
- APPLY_MODEL edits the rows of c_crossattn that belong to the positive prompt (cond_or_uncond 0) before
  each model call. The negative prompt is left as it is.
"""
from __future__ import annotations

import uuid
from typing import Callable

import torch

import comfy.patcher_extension

from ..sda_core.methods.per_image import image_keys
from ..sda_core.step_strengths import step_of_sigma

POSITIVE = 0

# (one image's positive embedding [T, D], its key, step, steps, normalised time t) -> edited embedding, or the
# same tensor object when this call leaves it alone
Edit = Callable[[torch.Tensor, int, int, int, float], torch.Tensor]


def normalised_time(model_sampling, sigma: float) -> float:
    """t in [0, 1] of a model call: the model's own timestep of sigma over that of its largest sigma (1 = noise)."""
    now = float(model_sampling.timestep(torch.tensor(sigma)))
    top = float(model_sampling.timestep(torch.as_tensor(model_sampling.sigma_max)))
    return min(max(now / top, 0.0), 1.0) if top > 0 else 0.0


def step_of(sigma: float, sigmas) -> tuple[int, int]:
    """(step, steps) of a model call at sigma on the sampler's schedule (step 0 of 1 when no schedule is known)."""
    if sigmas is None or len(sigmas) < 2:
        return 0, 1
    return step_of_sigma(sigma, sigmas), len(sigmas) - 1


class PositiveEdit:
    """The per-run image keys and the two wrappers that apply `edit` to the positive rows."""

    def __init__(self, name: str, edit: Edit):
        self.name = name
        self.edit = edit
        self.keys: list[int] | None = None

    def install(self, model):
        """A clone of `model` carrying both wrappers; the input MODEL is never modified."""
        patched = model.clone()
        suffix = f"{self.name}_{uuid.uuid4().hex}"
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, suffix, self._outer_sample)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, suffix, self._apply_model)
        return patched

    def _outer_sample(self, executor, noise, latent_image, *args, **kwargs):
        previous = self.keys
        self.keys = image_keys(noise, latent_image)
        try:
            return executor(noise, latent_image, *args, **kwargs)
        finally:
            self.keys = previous

    def _apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                     **kwargs):
        edited = self._edited(executor.class_obj, x, t, c_crossattn, transformer_options)
        return executor(x, t, c_concat, edited, control, transformer_options, **kwargs)

    def _edited(self, base_model, x, t, context, transformer_options):
        order = list(transformer_options.get("cond_or_uncond") or [])
        keys = self.keys
        if keys is None or context is None or POSITIVE not in order or x.shape[0] % len(order):
            return context
        sigma = float(t.flatten()[0])
        step, steps = step_of(sigma, transformer_options.get("sample_sigmas"))
        time = normalised_time(base_model.model_sampling, sigma)
        per_chunk = x.shape[0] // len(order)
        rows = list(context.unbind(0))
        changed = False
        for chunk, which in enumerate(order):
            if which != POSITIVE:
                continue
            for b in range(per_chunk):
                r = chunk * per_chunk + b
                new = self.edit(rows[r], keys[b % len(keys)], step, steps, time)
                if new is not rows[r]:
                    rows[r] = new
                    changed = True
        return torch.stack(rows) if changed else context
