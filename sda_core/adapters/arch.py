"""Guessing which architecture an adapter was made for, from its key names (and a shape or two).

Only used to explain a refusal: "this is an SDXL LoRA" tells the user what went wrong, where
"0 layers matched" does not. A guess, so it returns None rather than a wrong name when unsure.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from .layout import ModelLayout


def _context_dim(names: list[str], tensors: Mapping[str, torch.Tensor] | None) -> int | None:
    """Cross-attention input width of a UNet LoRA (768 SD1.x, 1024 SD2.x, 2048 SDXL)."""
    if not tensors:
        return None
    for name in names:
        if re.search(r"attn2[._]to_k", name) and re.search(r"(lora_down|lora_A|lora\.down|down)\.weight$", name):
            t = tensors.get(name)
            if t is not None and t.dim() >= 2:
                return int(t.shape[1])
    return None


def guess_architecture(keys: Iterable[str], tensors: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """A human name for the model family these adapter keys were trained on, or None."""
    names = list(keys)
    low = [k.lower() for k in names]

    def has(pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.search(k) for k in low)

    if has(r"double_stream_blocks|single_stream_blocks"):
        return "HiDream"
    if has(r"individual_token_refiner|txt_in[._]"):
        return "HunyuanVideo"
    if has(r"double_blocks[._]\d+[._]img_attn|single_blocks[._]\d+[._]linear|single_transformer_blocks"):
        return "Flux"
    if has(r"img_mlp|txt_mlp|img_mod[._]|txt_mod[._]"):
        return "Qwen-Image"
    if has(r"joint_blocks|context_block[._]"):
        return "SD3"
    if has(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn)[._]"):
        return "Wan"
    unet_sgm = has(r"input_blocks|output_blocks|middle_block")
    unet_diffusers = has(r"down_blocks|up_blocks|mid_block")
    if unet_sgm or unet_diffusers:
        ctx = _context_dim(names, tensors)
        if ctx == 2048 or has(r"lora_te2_|text_encoder_2|add_embedding|label_emb"):
            return "SDXL (UNet)"
        if ctx == 768:
            return "SD1.x (UNet)"
        if ctx == 1024:
            return "SD2.x (UNet)"
        return "SD1.x/SDXL (UNet)"
    if has(r"transformer_blocks[._]\d+[._]attn[._]add_q_proj|transformer_blocks[._]\d+[._]ff_context"):
        return "an MMDiT (SD3 or Flux)"
    if has(r"(^|[._])layers[._]\d+[._]attention[._]") and has(r"feed_forward"):
        return "Lumina 2 / Z-Image"
    if low and all(re.match(r"(lora_te\d?_|text_encoder|te\d?\.)", k) for k in low):
        return "a text encoder only"
    return None


# Which host model classes (ComfyUI's comfy.model_base names) each guess above stands for.
GUESS_FAMILIES: dict[str, frozenset[str]] = {
    "HiDream": frozenset({"HiDream"}),
    "HunyuanVideo": frozenset({"HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V"}),
    "Flux": frozenset({"Flux", "FluxInpaint"}),
    "Qwen-Image": frozenset({"QwenImage"}),
    "SD3": frozenset({"SD3"}),
    "Wan": frozenset({"WAN21", "WAN22"}),
    "SDXL (UNet)": frozenset({"SDXL", "SDXLRefiner", "SSD1B"}),
    "SD1.x (UNet)": frozenset({"BaseModel"}),
    "SD2.x (UNet)": frozenset({"BaseModel", "SD21UNCLIP"}),
    "SD1.x/SDXL (UNet)": frozenset({"BaseModel", "SDXL", "SDXLRefiner", "SSD1B"}),
    "an MMDiT (SD3 or Flux)": frozenset({"SD3", "Flux", "FluxInpaint"}),
    "Lumina 2 / Z-Image": frozenset({"Lumina2"}),
}


def same_family(guess: str | None, family: str | None) -> bool:
    """Whether the guessed adapter architecture is the model's own (so zero matches means unread names)."""
    return bool(guess and family and family in GUESS_FAMILIES.get(guess, ()))


def is_zimage(shapes) -> bool:
    """ComfyUI's NextDiT with Z-Image's fused attention.qkv and caption embedder."""
    return (any(re.fullmatch(r"layers\.\d+\.attention\.qkv\.weight", k) for k in shapes)
            and "cap_embedder.1.weight" in shapes)


def describe_layout(layout: ModelLayout) -> str:
    """A short name for the model a layout belongs to, for messages."""
    if is_zimage(layout.shapes):
        return "Z-Image"
    if layout.arch:
        return layout.arch if not layout.family or layout.family in layout.arch else f"{layout.arch} ({layout.family})"
    return "this model"
