"""Training-free diversity by perturbing the positive prompt embedding: conditioning noise and CADS.

Both return a MODEL that carries the perturbation (see positive_edit), so they work with KSampler, the Seed
Diversity Grid and custom samplers alike, and every image's perturbation is a function of its own seed.
"""
from __future__ import annotations

from collections import OrderedDict

from comfy_api.latest import io

from ..sda_core.methods.condition_annealing import anneal, check_settings as check_annealing, gamma
from ..sda_core.methods.conditioning_noise import add_conditioning_noise, check_settings as check_noise
from ..sda_core.methods.per_image import gaussian
from ..sda_core.step_strengths import window_strengths
from .positive_edit import PositiveEdit

CATEGORY = "SDA/methods"
_DRAWS_KEPT = 64


class SDAConditioningNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDAConditioningNoise",
            display_name="SDA Conditioning Noise (early steps)",
            category=CATEGORY,
            description=("Training-free seed diversity (the SeedVarianceEnhancer idea): adds Gaussian noise to the "
                         "positive prompt embedding on the steps of a window, a different draw per image derived "
                         "from the image's own seed. Costs one small noise draw per image; no extra model call."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with (e.g. Z-Image-Turbo); it is not modified."),
                io.Float.Input("strength", default=0.2, min=0.0, max=4.0, step=0.01,
                               tooltip="Noise size relative to the embedding's own spread: the noise std is strength × "
                                       "the std of the image's prompt embedding. 0 turns it off; 0.1–0.5 is the useful "
                                       "range, larger values start to leave the prompt."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Window start as a fraction of the steps: step i is noised when "
                                       "start ≤ i/steps < end. 0 = from the first step."),
                io.Float.Input("end_percent", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Window end (exclusive). 0.25 of 8 steps = the first 2 steps, where the "
                                       "composition is set. start = end is an empty window (off)."),
                io.Int.Input("protect_tokens", default=0, min=0, max=4096,
                             tooltip="The first N tokens of the prompt embedding stay clean (e.g. a chat template's "
                                     "prefix or the subject at the start). 0 noises every token."),
            ],
            outputs=[io.Model.Output(display_name="MODEL",
                                     tooltip="The same model with the conditioning noise applied while sampling.")],
        )

    @classmethod
    def execute(cls, model, strength: float, start_percent: float, end_percent: float,
                protect_tokens: int) -> io.NodeOutput:
        check_noise(strength, protect_tokens)
        window_strengths(8, start_percent, end_percent)  # refuses a bad window now, not mid-sampling
        draws: OrderedDict = OrderedDict()

        def edit(y, key, step, steps, t):
            if strength == 0.0 or not window_strengths(steps, start_percent, end_percent)[step]:
                return y
            cache_key = (key, tuple(y.shape))
            if cache_key not in draws:
                draws[cache_key] = gaussian(key, y.shape, "conditioning_noise")
                while len(draws) > _DRAWS_KEPT:
                    draws.popitem(last=False)
            return add_conditioning_noise(y, draws[cache_key], strength, protect_tokens)

        return io.NodeOutput(PositiveEdit("sda_conditioning_noise", edit).install(model))


class SDAConditionAnnealing(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDAConditionAnnealing",
            display_name="SDA Condition Annealing (CADS)",
            category=CATEGORY,
            description=("CADS (Sadat et al., ICLR 2024): the positive prompt embedding is mixed with fresh Gaussian "
                         "noise that fades out as sampling goes on, γ(t) = 0 above τ2, 1 below τ1, linear between; "
                         "the noised embedding is rescaled toward the clean one's mean and std by ψ. Per-image "
                         "noise from each image's own seed. Costs a noise draw per image and step; no extra model call."),
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with; it is not modified."),
                io.Float.Input("tau1", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="τ1: at normalised time t ≤ τ1 (1 = pure noise, 0 = clean) the condition is "
                                       "clean. 0.6 as in the paper."),
                io.Float.Input("tau2", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="τ2: at t ≥ τ2 the condition is pure noise (times s). 0.9 as in the paper. "
                                       "Few-step schedules with a shift spend several steps above 0.9."),
                io.Float.Input("noise_scale", default=0.25, min=0.0, max=4.0, step=0.01,
                               tooltip="s: the std of the added noise, in the embedding's units. The paper uses "
                                       "0.025–0.25; 0 turns CADS off."),
                io.Float.Input("psi", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="ψ: how far the noised embedding is rescaled back to the clean one's mean and "
                                       "std (1 = fully, as the paper's default; 0 = not at all)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL",
                                     tooltip="The same model with condition annealing applied while sampling.")],
        )

    @classmethod
    def execute(cls, model, tau1: float, tau2: float, noise_scale: float, psi: float) -> io.NodeOutput:
        check_annealing(tau1, tau2, noise_scale, psi)

        def edit(y, key, step, steps, t):
            g = gamma(t, tau1, tau2)
            if g >= 1.0 or noise_scale == 0.0:
                return y
            return anneal(y, gaussian(key, y.shape, "cads", step), g, noise_scale, psi)

        return io.NodeOutput(PositiveEdit("sda_cads", edit).install(model))


NODES = [SDAConditioningNoise, SDAConditionAnnealing]
