"""Another model on some steps (SDAModelByStep): e.g. the base Z-Image, with its own cfg, on the first step
of a Turbo schedule (Gandikota & Bau, 2025). Sampled as chained segments from inside the one sampling call,
so it equals KSamplerAdvanced chained with the same split, and works wherever a MODEL goes (Seed Diversity
Grid included)."""
from __future__ import annotations

import uuid

import torch

import comfy.patcher_extension
import comfy.samplers
from comfy_api.latest import io

from ..sda_core.methods.step_segments import segments
from ..sda_core.step_strengths import window_strengths
from . import host

CATEGORY = "SDA/methods"
ADDITIONAL_MODELS_KEY = "sda_model_by_step"


class ModelByStepError(ValueError):
    """The sampling run cannot be split as asked; the message says why and what to do."""


class _Split:
    """The OUTER_SAMPLE wrapper: runs the schedule's segments on the early model or on the wrapped sampler."""

    def __init__(self, model_early, cfg_early: float, start_percent: float, end_percent: float):
        self.model_early = model_early
        self.cfg_early = cfg_early
        self.start_percent = start_percent
        self.end_percent = end_percent

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                 disable_pbar=False, seed=None, **kwargs):
        steps = len(sigmas) - 1
        runs = segments(steps, self.start_percent, self.end_percent) if steps >= 1 else []
        if not any(run.early for run in runs):
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        shapes = kwargs.get("latent_shapes")
        if shapes is not None and len(shapes) > 1:
            raise ModelByStepError("SDA Model by Step: this latent holds several images of different shapes; "
                                   "sample them with two chained KSamplerAdvanced instead")
        early = self._early_guider(executor.class_obj)
        x, start_noise = latent_image, noise
        for run in runs:
            part = sigmas[run.start:run.end + 1]
            step_callback = _offset(callback, run.start, steps)
            if run.early:
                x = early.sample(start_noise, x, sampler, part, denoise_mask, step_callback, disable_pbar, seed)
            else:
                x = executor(start_noise, x, sampler, part, denoise_mask, step_callback, disable_pbar, seed, **kwargs)
            start_noise = torch.zeros_like(noise)  # later segments continue from x, as add_noise "disable" does
        return x

    def _early_guider(self, guider):
        conds = getattr(guider, "original_conds", {}) or {}
        if "positive" not in conds:
            raise ModelByStepError("SDA Model by Step: the sampler gives no positive conditioning to pass to "
                                   "model_early; use it with KSampler, the Seed Diversity Grid or a CFG guider")
        if "negative" not in conds and self.cfg_early != 1.0:
            raise ModelByStepError(f"SDA Model by Step: cfg_early is {self.cfg_early:g} but the sampler has no "
                                   f"negative conditioning; set cfg_early to 1 or use a sampler with a negative")
        early = comfy.samplers.CFGGuider(self.model_early)
        early.original_conds = {k: conds[k] for k in ("positive", "negative") if k in conds}
        early.set_cfg(self.cfg_early)
        return early


def check_same_latent_space(model, model_early) -> None:
    """Both models must denoise the same latents: one latent format (class, so scale and shift too)."""
    late, early = model.model.latent_format, model_early.model.latent_format
    if type(late) is type(early):
        return
    raise ModelByStepError(
        f"SDA Model by Step: model_early is {host.model_name(model_early)} (latent format {type(early).__name__}, "
        f"{early.latent_channels} channels) but model is {host.model_name(model)} ({type(late).__name__}, "
        f"{late.latent_channels} channels): the two models must share one latent space, e.g. the base Z-Image "
        "early and Z-Image-Turbo after; connect a model_early of model's family")


def _offset(callback, offset: int, total: int):
    if callback is None:
        return None
    return lambda step, x0, x, _steps: callback(step + offset, x0, x, total)


class SDAModelByStep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDAModelByStep",
            display_name="SDA Model by Step",
            category=CATEGORY,
            description=("Sample a window of steps with another model and its own cfg (e.g. the base Z-Image on "
                         "the first step of Z-Image-Turbo, after Gandikota & Bau 2025), the input model on the "
                         "rest. Equals two chained KSamplerAdvanced with the same split; both models are loaded "
                         "together by ComfyUI when they fit. Costs the early model's steps (×2 with its cfg > 1)."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model for the steps outside the window (e.g. Z-Image-Turbo)."),
                io.Model.Input("model_early", tooltip="The model for the steps inside the window (e.g. the base, "
                                                      "undistilled Z-Image). Same latent space as model."),
                io.Float.Input("cfg_early", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance of model_early on its steps (the sampler's cfg stays "
                                       "for model). Base models want cfg > 1 (Z-Image: about 4); 1 skips the "
                                       "negative pass and halves the early step's cost."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Window start as a fraction of the steps: step i runs on model_early when "
                                       "start ≤ i/steps < end."),
                io.Float.Input("end_percent", default=0.125, min=0.0, max=1.0, step=0.01,
                               tooltip="Window end (exclusive). 0.125 of 8 steps = the first step only. "
                                       "start = end is an empty window: model alone."),
            ],
            outputs=[io.Model.Output(display_name="MODEL",
                                     tooltip="model, switching to model_early inside the window while sampling.")],
        )

    @classmethod
    def execute(cls, model, model_early, cfg_early: float, start_percent: float, end_percent: float) -> io.NodeOutput:
        window_strengths(8, start_percent, end_percent)  # refuses a bad window now, not mid-sampling
        check_same_latent_space(model, model_early)
        patched = model.clone()
        patched.set_additional_models(ADDITIONAL_MODELS_KEY, [model_early])  # loaded with model when they fit
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
                                     f"{ADDITIONAL_MODELS_KEY}_{uuid.uuid4().hex}",
                                     _Split(model_early, cfg_early, start_percent, end_percent))
        return io.NodeOutput(patched)


NODES = [SDAModelByStep]
