"""Tiny random CLIP towers built from ComfyUI's own classes and configs, for the CLIP score tests.

The text tower is ComfyUI's SD1 clip_l (`SD1ClipModel`, config sd1_clip_config.json with smaller widths through
the `clip_l_model_config` model option) or SDXL's clip_g, with the real CLIP tokenizer; the image tower is
ComfyUI's `ClipVisionModel` from clip_vision_config_vitl.json at small widths. clip_l projects to its own width,
so a text width equal to the vision `projection_dim` gives a matching pair and any other width a mismatch.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

from sdatest.tiny_models import _init_

TEXT_CONFIG = {"num_hidden_layers": 3, "num_attention_heads": 2}  # clip_g reads layer -2: 3 layers
VISION_CONFIG = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 2,
                 "image_size": 32, "patch_size": 16}


class _Target:
    params: dict = {}


def tiny_clip_text(seed: int = 0, width: int = 32, kind: str = "clip_l", dtype: torch.dtype = torch.float32):
    """A ComfyUI CLIP object holding only `kind` (clip_l or clip_g) at `width`, seeded random weights in `dtype`."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip

    target = _Target()
    if kind == "clip_l":
        target.clip, target.tokenizer = comfy.sd1_clip.SD1ClipModel, comfy.sd1_clip.SD1Tokenizer
    elif kind == "clip_g":
        target.clip, target.tokenizer = comfy.sdxl_clip.SDXLRefinerClipModel, comfy.sdxl_clip.SDXLTokenizer
    else:
        raise ValueError(f"tiny_clip_text: kind {kind!r}, expected clip_l or clip_g")
    config = dict(TEXT_CONFIG, hidden_size=width, intermediate_size=2 * width, projection_dim=width)
    clip = comfy.sd.CLIP(target, model_options={f"{kind}_model_config": config, "dtype": dtype})
    _init_(clip.cond_stage_model, seed, std=0.1)
    clip.cond_stage_model.to(dtype)
    return clip


def tiny_clip_vision(seed: int = 0, projection_dim: int = 32, dtype: torch.dtype = torch.float32):
    """ComfyUI's ClipVisionModel from its ViT-L/14 config at small widths (32 px, 2x2 patches of 16), seeded weights
    stored in `dtype` (ComfyUI computes in the input's float32 either way)."""
    import comfy.clip_vision

    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")) as f:
        config = json.load(f)
    config.update(VISION_CONFIG, projection_dim=projection_dim)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tiny_clip_vision.json")
        with open(path, "w") as f:
            json.dump(config, f)
        clip_vision = comfy.clip_vision.ClipVisionModel(path)
    _init_(clip_vision.model, seed, std=0.1)
    clip_vision.model.to(dtype)
    return clip_vision


def random_images(seed: int = 0, count: int = 4, size: int = 32) -> torch.Tensor:
    """An IMAGE batch [count, size, size, 3] of 8-bit values (k / 255), so CLIP's 8-bit rounding changes nothing."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size, 3), generator=gen).float() / 255.0
