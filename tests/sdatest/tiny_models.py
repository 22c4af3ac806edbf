"""Tiny random-weight models of the real architectures, built through ComfyUI's own classes.

ComfyUI recognises Z-Image from a checkpoint only at full size, so the model config is built directly
(comfy.supported_models.ZImage with Z-Image's settings at small sizes). ComfyUI creates its layers without
initialising them: every parameter is set here from a seeded generator, or outputs are garbage.
"""
from __future__ import annotations

import torch

TINY_ZIMAGE = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 256,
    "cap_feat_dim": 32,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 4,
    "n_kv_heads": 4,
    "axes_dims": [16, 24, 24],
    "axes_lens": [64, 64, 64],
    "qk_norm": True,
    "ffn_dim_multiplier": 8.0 / 3.0,
    "rope_theta": 256.0,
    "z_image_modulation": True,
    "time_scale": 1000.0,
}


def _init_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
        for name, b in module.named_buffers():  # SD3's pos_embed is made with torch.empty
            if name.endswith("pos_embed") and b.is_floating_point():
                b.copy_(std * torch.randn(b.shape, generator=gen))


def tiny_zimage(seed: int = 0, dtype: torch.dtype = torch.float32, manual_cast: torch.dtype | None = None,
                values: torch.dtype | None = None, **overrides):
    """A ModelPatcher around ComfyUI's Z-Image (NextDiT, z_image_modulation) with a few small layers.

    Weights are stored in `dtype` (the values of the fp32 model of the same seed, rounded) and computed in
    `manual_cast` (None: in `dtype`, as a GPU runs bf16/fp16 weights). fp8 weights cannot be computed in: they
    get the compute dtype ComfyUI's loader picks for them (`unet_manual_cast`), as UNETLoader's weight_dtype does.
    `values`: round the weights through this dtype first (an fp32 model holding a bf16 model's exact weights).
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = dict(TINY_ZIMAGE, **overrides)
    model_config = comfy.supported_models.ZImage(config)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and manual_cast is None:
        manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({})
    model.diffusion_model.to(torch.float32)
    _init_(model.diffusion_model, seed)
    if values is not None:
        model.diffusion_model.to(values)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def tiny_vae(seed: int = 0, channels: int = 16):
    """ComfyUI's AutoencoderKL at a few channels, 16 latent channels like Z-Image's (Flux) VAE (4: SDXL's)."""
    import comfy.sd

    ddconfig = {
        "double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    }
    vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": ddconfig, "embed_dim": channels}})
    vae.latent_channels = channels
    _init_(vae.first_stage_model, seed, std=0.05)
    return vae


def tiny_conditioning(seed: int = 0, tokens: int = 8, cap_feat_dim: int = 32):
    """A CONDITIONING as KSampler takes it: [[context [1, T, cap_feat_dim], {}]]."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, cap_feat_dim, generator=gen), {}]]


def tiny_zimage_shapes(seed: int = 0) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the tiny Z-Image, as adapter files for it need them."""
    return {k: tuple(v.shape) for k, v in tiny_zimage(seed).model.diffusion_model.state_dict().items()}


def write_lpips_backbone(folder, seed: int = 0):
    """A random AlexNet backbone in torchvision's layout as models/lpips/alexnet.safetensors: the real loading
    code runs, on test weights (nothing is downloaded here)."""
    from pathlib import Path

    import torchvision
    from safetensors.torch import save_file

    path = Path(folder) / "alexnet.safetensors"
    if not path.exists():
        torch.manual_seed(seed)
        state = torchvision.models.alexnet(weights=None).state_dict()
        save_file({k: v.contiguous() for k, v in state.items() if k.startswith("features.")}, str(path))
    return path
