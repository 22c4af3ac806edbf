"""Test-only ComfyUI nodes: tiny models and probes. Loaded by the integration tests, never shipped.

They let tests run real prompts through ComfyUI's validation and executor with models that fit a CPU.
"""
from __future__ import annotations

import torch

from sdatest import registry, tiny_archs, tiny_clip, tiny_models

class _AnyType(str):
    """Matches every socket type in ComfyUI's validation (the '*' convention custom packs use)."""

    def __ne__(self, other):  # noqa: D105
        return False


ANY = _AnyType("*")


_SHARED_MODELS: dict = {}
# Stored weight dtypes (UNETLoader's weight_dtype options): bf16/fp16 computed in their own dtype, as on a GPU;
# fp8 computed in what ComfyUI's loader picks for fp8 weights on this device.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8_e4m3fn": torch.float8_e4m3fn}
VALUES = {"fp32 (bf16 values)": torch.bfloat16, "fp32 (fp16 values)": torch.float16}  # fp32 references of those


class TinyZImage:
    """A tiny Z-Image; `shared` returns one patcher per (seed, dtype) across prompts, as a cached loader does."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "dtype": (list(DTYPES) + list(VALUES), {"default": "fp32"}),
        }, "optional": {"shared": ("BOOLEAN", {"default": False})}}

    def build(self, seed, dtype, shared=False):
        key = (seed, dtype)
        if shared and key in _SHARED_MODELS:
            return (_SHARED_MODELS[key],)
        model = tiny_models.tiny_zimage(seed, DTYPES.get(dtype, torch.float32), values=VALUES.get(dtype))
        if shared:
            _SHARED_MODELS[key] = model
        return (model,)


class TinyZImageVariant:
    """A tiny Z-Image that a trainer must refuse: another model type (EDM: neither flow, eps nor v), other input
    channels, another width (`dim`, heads of 64) or NaN weights."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "model_type": (["FLOW", "EPS", "EDM"], {"default": "FLOW"}),
            "in_channels": ("INT", {"default": 16, "min": 1, "max": 64}),
        }, "optional": {
            "dim": ("INT", {"default": 256, "min": 256, "max": 1024, "step": 64}),
            "nan_weights": ("BOOLEAN", {"default": False}),
            "cap_feat_dim": ("INT", {"default": 32, "min": 8, "max": 256}),
        }}

    def build(self, seed, model_type, in_channels, dim=256, nan_weights=False, cap_feat_dim=32):
        if model_type == "FLOW":
            model = tiny_models.tiny_zimage(seed, in_channels=in_channels, dim=dim, n_heads=dim // 64,
                                            n_kv_heads=dim // 64, cap_feat_dim=cap_feat_dim)
            if nan_weights:
                with torch.no_grad():
                    for name, p in model.model.diffusion_model.named_parameters():
                        if name.startswith("layers.") and name.endswith(".weight"):
                            p.fill_(float("nan"))
            return (model,)
        import comfy.model_base
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models

        config = comfy.supported_models.ZImage(dict(tiny_models.TINY_ZIMAGE, in_channels=in_channels))
        config.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.Lumina2(config, model_type=comfy.model_base.ModelType[model_type])
        tiny_models._init_(model.diffusion_model, seed)
        return (comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device()),)


class TinyVAE:
    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def build(self, seed):
        return (tiny_models.tiny_vae(seed),)


class TinyConditioning:
    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "tokens": ("INT", {"default": 8, "min": 1, "max": 64}),
        }}

    def build(self, seed, tokens):
        return (tiny_models.tiny_conditioning(seed, tokens),)


class Denoise:
    """x0 = model.apply_model(x, sigma, context) for a seeded x: the denoiser output the tests compare."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "conditioning": ("CONDITIONING",),
            "key": ("STRING", {"default": "x0"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "sigma": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
            "size": ("INT", {"default": 16, "min": 8, "max": 128, "step": 8}),
        }}

    def run(self, model, conditioning, key, seed, sigma, size):
        import comfy.model_management as mm

        mm.load_models_gpu([model])
        device = model.load_device
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 16, size, size, generator=gen).to(device)
        context = conditioning[0][0].to(device)
        out = model.model.apply_model(x, torch.tensor([sigma], device=device), c_crossattn=context,
                                      num_tokens=context.shape[1])
        registry.CAPTURED[key] = out.detach().float().cpu().clone()
        return {}


class Capture:
    """Keeps any value under a key for the test that queued the prompt."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY, {}), "key": ("STRING", {"default": "value"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def run(self, value, key):
        registry.CAPTURED[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        return {}


class TrainingForward:
    """A forward of the SDA trainer's own session on `model` (the student), captured for the test.

    output "lokr_delta": the student's forward with its LoKr set from `lokr_name` minus the same forward with the
    LoKr off (the output delta the trainer sees). output "teacher" / "student": the session's teacher / student
    forward (with the LoKr and `assistant_name` loaded as training would), and the session's residency line under
    `<key>_residency`.
    Runs the pack's session (clone, compute dtype, LoKr placement, residency), nothing else.
    """

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "conditioning": ("CONDITIONING",),
            "key": ("STRING", {"default": "delta"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "sigma": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
            "size": ("INT", {"default": 16, "min": 8, "max": 128, "step": 8}),
        }, "optional": {
            "lokr_name": ("STRING", {"default": ""}),
            "output": (["lokr_delta", "teacher", "student"], {"default": "lokr_delta"}),
            "teacher": ("MODEL",),
            "assistant_name": ("STRING", {"default": ""}),
        }}

    def run(self, model, conditioning, key, seed, sigma, size, lokr_name="", output="lokr_delta", teacher=None,
            assistant_name=""):
        import sys

        import folder_paths
        import nodes
        from safetensors.torch import load_file

        package = nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__.rsplit(".", 1)[0]
        session_mod, checks = sys.modules[package + ".session"], sys.modules[package + ".checks"]
        assistant = session_mod.host.load_for_model(model, assistant_name, widget="assistant") if assistant_name else None
        config = session_mod.SDAConfig(steps=1, pool_kernel=8, latent_shape=(16, size, size))
        with torch.inference_mode(False), torch.no_grad():
            session = session_mod.Session.open(model, teacher if teacher is not None else model, config,
                                               checks.lokr_targets(model, False)[1], [conditioning], None, assistant, False)
            try:
                if lokr_name:
                    factors = load_file(folder_paths.get_full_path_or_raise("loras", lokr_name))
                    for name, lokr in session.lokr.items():
                        lokr.w1.copy_(factors[f"diffusion_model.{name}.lokr_w1"])
                        lokr.w2.copy_(factors[f"diffusion_model.{name}.lokr_w2"])
                session.start()
                device = session.models.device
                x = torch.randn(1, 16, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
                sigmas = torch.tensor([sigma], device=device)
                cond = session.models.conds[0]
                if output in ("teacher", "student"):
                    result = getattr(session.models, output)(x, sigmas, cond).float()
                    registry.CAPTURED[key + "_residency"] = session.residency.describe()
                else:
                    on = session.models.student(x, sigmas, cond).float()
                    with session.lokr.disabled():
                        result = on - session.models.student(x, sigmas, cond).float()
            finally:
                session.close()
        registry.CAPTURED[key] = result.cpu().clone()
        return {}


class TrainingRollout:
    """The SDA trainer's x_t: seed `seed`'s noise rolled out by the session's student to step `k` of the node's
    own schedule (sigmas, noise scale, latent shape as SDA Train LoKr computes them), returned as KSampler returns
    a latent with leftover noise (inverse noise scaling, then process_latent_out), for comparison with
    KSamplerAdvanced stopped at step k."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "conditioning": ("CONDITIONING",),
            "key": ("STRING", {"default": "x_t"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "steps": ("INT", {"default": 4, "min": 1, "max": 100}),
            "k": ("INT", {"default": 2, "min": 0, "max": 100}),
            "scheduler": ("STRING", {"default": "simple"}),
            "size": ("INT", {"default": 64, "min": 32, "max": 512, "step": 32}),
        }}

    def run(self, model, conditioning, key, seed, steps, k, scheduler, size):
        import sys

        import nodes
        from sda_core.training.trajectory import rollout

        package = nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__.rsplit(".", 1)[0]
        session_mod, checks = sys.modules[package + ".session"], sys.modules[package + ".checks"]
        schedule = checks.student_schedule(model, steps, scheduler)
        config = session_mod.SDAConfig(steps=1, pool_kernel=4, div_skip=0, student_steps=steps, shift=schedule.shift,
                                       sigmas=schedule.sigmas, noise_scale=schedule.noise_scale,
                                       latent_shape=checks.latent_shape(model, size, size, 4))
        with torch.inference_mode(False), torch.no_grad():
            session = session_mod.Session.open(model, model, config, checks.lokr_targets(model, False)[1],
                                               [conditioning], None, None, False)
            try:
                session.start()
                z = torch.randn(1, *config.latent_shape, generator=torch.Generator().manual_seed(seed))
                (x,) = rollout(session.models.student, [z.to(session.models.device)], config.schedule(), k,
                               session.models.conds[:1], session.models.batch_conds, config.noise_scale)
                sigma_k = config.schedule()[k:k + 1]  # KSampler hands leftover noise back inverse-scaled
                x = model.get_model_object("model_sampling").inverse_noise_scaling(sigma_k, x.float().cpu())
                result = model.model.process_latent_out(x)
            finally:
                session.close()
        registry.CAPTURED[key] = result.cpu().clone()
        return {}


class LoraStack:
    """A LORA_STACK as other packs emit it (Comfyroll, Efficiency): JSON list of [name, model, clip, ...] or null."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("LORA_STACK",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"stack_json": ("STRING", {"default": "[]"})}}

    def build(self, stack_json):
        import json

        value = json.loads(stack_json)
        return (None if value is None else [tuple(item) for item in value],)


class TinyCLIPText:
    """A tiny clip_l (or clip_g, for the mismatch errors) as a CLIP object, ComfyUI's classes and tokenizer."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "width": ("INT", {"default": 32, "min": 8, "max": 256}),
            "kind": (["clip_l", "clip_g"], {"default": "clip_l"}),
        }, "optional": {"dtype": (["fp32", "bf16"], {"default": "fp32"})}}

    def build(self, seed, width, kind, dtype="fp32"):
        return (tiny_clip.tiny_clip_text(seed, width, kind, torch.float32 if dtype == "fp32" else torch.bfloat16),)


class TinyCLIPVision:
    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "projection_dim": ("INT", {"default": 32, "min": 8, "max": 256}),
        }, "optional": {"dtype": (["fp32", "bf16"], {"default": "fp32"})}}

    def build(self, seed, projection_dim, dtype="fp32"):
        return (tiny_clip.tiny_clip_vision(seed, projection_dim, torch.float32 if dtype == "fp32" else torch.bfloat16),)


class RandomImages:
    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "count": ("INT", {"default": 4, "min": 1, "max": 64}),
            "size": ("INT", {"default": 32, "min": 8, "max": 512}),
        }}

    def build(self, seed, count, size):
        return (tiny_clip.random_images(seed, count, size),)


NODE_CLASS_MAPPINGS = {
    "SDATest_TinyCLIPText": TinyCLIPText,
    "SDATest_TinyCLIPVision": TinyCLIPVision,
    "SDATest_RandomImages": RandomImages,
    "SDATest_LoraStack": LoraStack,
    "SDATest_TinyZImage": TinyZImage,
    "SDATest_TinyZImageVariant": TinyZImageVariant,
    "SDATest_TinyVAE": TinyVAE,
    "SDATest_TinyConditioning": TinyConditioning,
    "SDATest_Denoise": Denoise,
    "SDATest_Capture": Capture,
    "SDATest_TrainingForward": TrainingForward,
    "SDATest_TrainingRollout": TrainingRollout,
    **tiny_archs.NODES,
}
