"""Tiny random-weight models of the other architectures ComfyUI runs: SDXL (eps and v), FLUX.1-schnell, SD3.5,
Qwen-Image — each built from ComfyUI's own config class in comfy/supported_models.py at a few small layers,
so the real model code, key maps, latent formats and samplers are exercised on a CPU in a second or two.

Every parameter (and SD3's pos_embed buffer, created with torch.empty) is set from a seeded generator:
ComfyUI leaves layers uninitialised, and garbage weights give NaN images.
"""
from __future__ import annotations

import dataclasses

import torch

from sdatest import tiny_models

ARCHS = ("sdxl", "sdxl_v", "flux_schnell", "sd35", "qwen_image")
# With the pack's first architecture, the tiny Z-Image of sdatest.tiny_models (the test nodes build it too).
EVERY_ARCH = (*ARCHS, "zimage")
CONTEXT_DIM = 32
POOLED_DIM = {"sdxl": 32, "sdxl_v": 32, "flux_schnell": 16, "sd35": 16, "qwen_image": None, "zimage": None}
LATENT_CHANNELS = {"sdxl": 4, "sdxl_v": 4, "flux_schnell": 16, "sd35": 16, "qwen_image": 16, "zimage": 16}
# The family name each architecture's LoRA keys carry (sda_core.adapters.guess_architecture's words).
FAMILY = {"sdxl": "SDXL", "sdxl_v": "SDXL", "flux_schnell": "Flux", "sd35": "SD3", "qwen_image": "Qwen-Image",
          "zimage": "Z-Image"}

_SDXL = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 64,
    "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1, "context_dim": CONTEXT_DIM, "num_head_channels": 32, "use_linear_in_transformer": True,
    "adm_in_channels": 32 + 1536, "num_classes": "sequential", "use_spatial_transformer": True, "legacy": False,
    "use_temporal_attention": False,
}
_FLUX = {
    "image_model": "flux", "guidance_embed": False, "hidden_size": 64, "num_heads": 2, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "context_in_dim": CONTEXT_DIM, "vec_in_dim": 16,
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "mlp_ratio": 4.0, "qkv_bias": True, "theta": 10000,
}
_SD3 = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "pos_embed_max_size": 16, "qk_norm": "rms",
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": CONTEXT_DIM, "out_features": 128}},
    "adm_in_channels": 16, "num_patches": 256, "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
}
_QWEN = {
    "image_model": "qwen_image", "num_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
    "joint_attention_dim": CONTEXT_DIM, "axes_dims_rope": (8, 12, 12), "in_channels": 64, "out_channels": 16,
    "patch_size": 2,
}


def _config(arch: str):
    """(ComfyUI's config class, its unet_config, the state-dict hints get_model reads) for `arch`."""
    import comfy.ldm.flux.model
    import comfy.supported_models as sm

    if arch in ("sdxl", "sdxl_v"):
        return sm.SDXL, dict(_SDXL), ({"v_pred": torch.tensor([])} if arch == "sdxl_v" else {})
    if arch == "flux_schnell":
        unet = dict(_FLUX)
        if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
            unet["txt_ids_dims"] = []  # 0.8.0 names the text-id axes; 0.3.75 has no such field
        return sm.FluxSchnell, unet, {}
    if arch == "sd35":
        return sm.SD3, dict(_SD3), {}
    if arch == "qwen_image":
        return sm.QwenImage, dict(_QWEN), {}
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def tiny_arch(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ModelPatcher around ComfyUI's model of `arch` at a few small layers, weights from `seed`."""
    import comfy.model_management as mm
    import comfy.model_patcher

    if arch == "zimage":
        return tiny_models.tiny_zimage(seed, dtype)
    cls, unet, hints = _config(arch)
    config = cls(unet)
    config.set_inference_dtype(dtype, None)
    model = config.get_model(hints)
    tiny_models._init_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def arch_conditioning(arch: str, seed: int = 0, tokens: int = 8):
    """A CONDITIONING for `arch` as its text encoder would give it: context [1, T, 32] (+ pooled_output)."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, CONTEXT_DIM, generator=gen)
    extra = {}
    if POOLED_DIM[arch]:
        extra["pooled_output"] = torch.randn(1, POOLED_DIM[arch], generator=gen)
    return [[context, extra]]


def arch_latent(arch: str, batch: int = 1, side: int = 64) -> dict:
    """An empty LATENT of the model's own layout for a `side`² image: Qwen-Image's is 5-D [B, 16, 1, h, w]."""
    shape = [batch, LATENT_CHANNELS[arch], side // 8, side // 8]
    if arch == "qwen_image":
        shape.insert(2, 1)
    return {"samples": torch.zeros(shape)}


def arch_vae(arch: str, seed: int = 0):
    """A tiny VAE of the family's kind: AutoencoderKL with the model's latent channels (Z-Image: Flux's 16), Qwen-Image's Wan 2.1 VAE
    (dim 8, found by ComfyUI from its state dict as a real file would be), weights from `seed`."""
    if arch != "qwen_image":
        return tiny_models.tiny_vae(seed, channels=LATENT_CHANNELS[arch])
    import comfy.ldm.wan.vae
    import comfy.sd

    wan = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    tiny_models._init_(wan, seed, std=0.05)
    return comfy.sd.VAE(sd=wan.state_dict())


class TinyArch:
    """Test node: a tiny model of another architecture (see tiny_arch)."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (list(EVERY_ARCH),), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def build(self, arch, seed):
        return (tiny_arch(arch, seed),)


class TinyArchConditioning:
    """Test node: a CONDITIONING for a tiny architecture (see arch_conditioning)."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (list(EVERY_ARCH),), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    def build(self, arch, seed, tokens):
        return (arch_conditioning(arch, seed, tokens),)


class TinyArchVAE:
    """Test node: the tiny VAE for a tiny architecture's latents (see arch_vae)."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (list(EVERY_ARCH),), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def build(self, arch, seed):
        return (arch_vae(arch, seed),)


class TinyArchLatent:
    """Test node: an empty LATENT in a tiny architecture's own layout (see arch_latent; Qwen-Image's is 5-D)."""

    CATEGORY = "SDA/testing"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (list(EVERY_ARCH),), "batch": ("INT", {"default": 1, "min": 1, "max": 16}),
                             "side": ("INT", {"default": 64, "min": 16, "max": 512, "step": 16})}}

    def build(self, arch, batch, side):
        return (arch_latent(arch, batch, side),)


def lora_key_map(arch: str) -> tuple[dict, dict]:
    """ComfyUI's LoRA key map for the tiny model of `arch` and its parameter shapes (the reference for file
    layout: which names a file may use, and the shape of the layer or row slice each lands on)."""
    import comfy.lora

    model = tiny_arch(arch).model
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return comfy.lora.model_lora_keys_unet(model, {}), shapes


def key_map_modules(pattern: str, key_map: dict, shapes: dict) -> dict[str, tuple[int, int]]:
    """{file module name: (out, in)} for the key map's names matching `pattern`, matrices only (a slice target's
    rows, a transformed target's whole weight)."""
    import math
    import re

    modules = {}
    for name, target in key_map.items():
        if not re.match(pattern, name):
            continue
        param, rows = (target, None) if isinstance(target, str) else target[:2]
        shape = shapes.get(param)
        if shape is None or len(shape) != 2:
            continue
        modules[name] = (rows[2] if rows else shape[0], math.prod(shape[1:]))
    return modules


NODES = {"SDATest_TinyArch": TinyArch, "SDATest_TinyArchConditioning": TinyArchConditioning,
         "SDATest_TinyArchVAE": TinyArchVAE, "SDATest_TinyArchLatent": TinyArchLatent}
