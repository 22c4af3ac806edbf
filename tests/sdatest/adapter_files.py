"""Tiny adapter files in the real key formats of the trainers, written for tests (seeded, nonzero factors).

Shapes come from the model: pass its parameter shapes (`{name: shape}`, with or without the
`diffusion_model.` prefix; `zimage_layout()` gives those of a tiny Z-Image without building one).
Module names follow diffusers' Z-Image names (`attention.to_q/to_k/to_v` are thirds of the fused
`attention.qkv` rows, `attention.to_out.0` is `attention.out`); model-native names such as
`attention.qkv` work too. Every writer returns the keys it wrote.

Styles (how a module name becomes a key):
  "diffusers"  prefix + dotted name + `.lora_A.weight` / `.lora_B.weight` (LoKr: `.lokr_w1`, ...);
               prefix "diffusion_model." is ai-toolkit/ComfyUI, "transformer." diffusers,
               "base_model.model." PEFT, "" DiffSynth
  "lycoris"    `lycoris_` + underscored name + `.lora_down.weight` / `.lokr_w1`, ...
  "kohya"      `lora_unet_` + underscored name + `.lora_down.weight` / `.lora_up.weight`, ...
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Iterable, Mapping, Sequence

import torch
from safetensors.torch import save_file

MAIN_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
STYLES = ("diffusers", "lycoris", "kohya")
_FACTOR_SUFFIX = {
    "diffusers": {"lora_down": "lora_A.weight", "lora_up": "lora_B.weight"},
    "lycoris": {"lora_down": "lora_down.weight", "lora_up": "lora_up.weight"},
    "kohya": {"lora_down": "lora_down.weight", "lora_up": "lora_up.weight"},
}


def zimage_layout(dim: int = 256, n_layers: int = 2, n_refiner_layers: int = 1, n_heads: int = 4,
                  n_kv_heads: int | None = None, cap_feat_dim: int = 32, in_channels: int = 16, patch_size: int = 2,
                  multiple_of: int = 256, ffn_dim_multiplier: float = 8.0 / 3.0) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ComfyUI's Z-Image (NextDiT with z_image_modulation), without the `diffusion_model.` prefix."""
    head = dim // n_heads
    kv = (n_kv_heads or n_heads) * head
    hidden = int(ffn_dim_multiplier * dim)
    hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    mod = min(dim, 256)
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (dim, patch_size * patch_size * in_channels), "x_embedder.bias": (dim,),
        "t_embedder.mlp.0.weight": (min(dim, 1024), 256), "t_embedder.mlp.0.bias": (min(dim, 1024),),
        "t_embedder.mlp.2.weight": (256, min(dim, 1024)), "t_embedder.mlp.2.bias": (256,),
        "cap_embedder.0.weight": (cap_feat_dim,), "cap_embedder.1.weight": (dim, cap_feat_dim),
        "cap_embedder.1.bias": (dim,), "norm_final.weight": (dim,),
        "final_layer.linear.weight": (patch_size * patch_size * in_channels, dim),
        "final_layer.linear.bias": (patch_size * patch_size * in_channels,),
        "final_layer.adaLN_modulation.1.weight": (dim, mod), "final_layer.adaLN_modulation.1.bias": (dim,),
    }

    def block(prefix: str, modulated: bool) -> None:
        shapes.update({
            f"{prefix}.attention.qkv.weight": (dim + 2 * kv, dim), f"{prefix}.attention.out.weight": (dim, dim),
            f"{prefix}.attention.q_norm.weight": (head,), f"{prefix}.attention.k_norm.weight": (head,),
            f"{prefix}.feed_forward.w1.weight": (hidden, dim), f"{prefix}.feed_forward.w2.weight": (dim, hidden),
            f"{prefix}.feed_forward.w3.weight": (hidden, dim),
            f"{prefix}.attention_norm1.weight": (dim,), f"{prefix}.attention_norm2.weight": (dim,),
            f"{prefix}.ffn_norm1.weight": (dim,), f"{prefix}.ffn_norm2.weight": (dim,),
        })
        if modulated:
            shapes[f"{prefix}.adaLN_modulation.0.weight"] = (4 * dim, mod)
            shapes[f"{prefix}.adaLN_modulation.0.bias"] = (4 * dim,)

    for i in range(n_refiner_layers):
        block(f"noise_refiner.{i}", True)
        block(f"context_refiner.{i}", False)
    for i in range(n_layers):
        block(f"layers.{i}", True)
    return shapes


def _plain(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    return {(k[len("diffusion_model."):] if k.startswith("diffusion_model.") else k): tuple(int(s) for s in v)
            for k, v in shapes.items()}


def module_shape(shapes: Mapping[str, Sequence[int]], module: str) -> tuple[int, ...]:
    """Weight shape of a (diffusers- or model-named) module: to_q/to_k/to_v are thirds of the fused qkv rows."""
    shapes = _plain(shapes)
    m = re.fullmatch(r"(.*\.attention)\.to_([qkv])", module)
    if m:
        rows, *rest = shapes[f"{m.group(1)}.qkv.weight"]
        return (rows // 3, *rest)
    if module.endswith(".attention.to_out.0"):
        return shapes[module[: -len("to_out.0")] + "out.weight"]
    return shapes[module + ".weight"]


def _layers(shapes: Mapping[str, Sequence[int]], layers: Iterable[int] | None) -> list[int]:
    if layers is not None:
        return list(layers)
    found = {int(m.group(1)) for k in _plain(shapes) if (m := re.match(r"layers\.(\d+)\.", k))}
    return sorted(found)


def key_base(module: str, *, style: str = "diffusers", prefix: str = "diffusion_model.") -> str:
    """How `style` spells a module name (before the factor suffix)."""
    if style == "diffusers":
        return prefix + module
    if style == "lycoris":
        return "lycoris_" + module.replace(".", "_")
    if style == "kohya":
        return "lora_unet_" + module.replace(".", "_")
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def _save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: Mapping[str, str] | None,
          dtype: torch.dtype) -> list[str]:
    out = {k: v.to(dtype).contiguous().clone() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    save_file(out, os.fspath(path), metadata=dict(metadata) if metadata else None)
    return list(out)


def _modules(shapes, targets, layers) -> list[str]:
    return [f"layers.{i}.{t}" for i in _layers(shapes, layers) for t in targets]


def write_sda_lokr(path: str | os.PathLike, shapes: Mapping[str, Sequence[int]], *, factor: int = 8,
                   prefix: str = "diffusion_model.", targets: Sequence[str] = MAIN_TARGETS,
                   layers: Iterable[int] | None = None, seed: int = 0, scale: float = 0.02, style: str = "diffusers",
                   alpha: float | None = None, metadata: Mapping[str, str] | None = None,
                   dtype: torch.dtype = torch.float32) -> list[str]:
    """A full-rank LoKr like the SDA release: lokr_w1 sized by LyCORIS's factorization(dim, factor), full lokr_w2.

    `alpha` writes `.alpha` tensors (LyCORIS and ComfyUI ignore them for a full-rank LoKr).
    """
    from lycoris.functional.general import factorization

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module in _modules(shapes, targets, layers):
        out_dim, in_dim = module_shape(shapes, module)[:2]
        out_l, out_k = factorization(out_dim, factor)
        in_m, in_n = factorization(in_dim, factor)
        base = key_base(module, style=style, prefix=prefix)
        tensors[f"{base}.lokr_w1"] = torch.randn(out_l, in_m, generator=gen)
        tensors[f"{base}.lokr_w2"] = torch.randn(out_k, in_n, generator=gen) * scale
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    return _save(path, tensors, metadata, dtype)


def write_lora(path: str | os.PathLike, shapes: Mapping[str, Sequence[int]], *, rank: int = 4,
               alpha: float | None = None, prefix: str = "diffusion_model.", style: str = "diffusers",
               targets: Sequence[str] = MAIN_TARGETS, layers: Iterable[int] | None = None, seed: int = 0,
               scale: float = 0.02, metadata: Mapping[str, str] | None = None,
               dtype: torch.dtype = torch.float32) -> list[str]:
    """A LoRA (down/up or lora_A/lora_B); `alpha` writes `.alpha` tensors, `metadata` the file's metadata."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module in _modules(shapes, targets, layers):
        out_dim, in_dim = module_shape(shapes, module)[:2]
        base = key_base(module, style=style, prefix=prefix)
        suffix = _FACTOR_SUFFIX[style]
        tensors[f"{base}.{suffix['lora_down']}"] = torch.randn(rank, in_dim, generator=gen) / math.sqrt(rank)
        tensors[f"{base}.{suffix['lora_up']}"] = torch.randn(out_dim, rank, generator=gen) * scale
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    return _save(path, tensors, metadata, dtype)


def write_loha(path: str | os.PathLike, shapes: Mapping[str, Sequence[int]], *, rank: int = 4,
               alpha: float | None = None, prefix: str = "diffusion_model.", style: str = "lycoris",
               targets: Sequence[str] = MAIN_TARGETS, layers: Iterable[int] | None = None, seed: int = 0,
               scale: float = 0.02, metadata: Mapping[str, str] | None = None,
               dtype: torch.dtype = torch.float32) -> list[str]:
    """A LoHa (hada_w1_a/b, hada_w2_a/b)."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    root = math.sqrt(scale)
    for module in _modules(shapes, targets, layers):
        out_dim, in_dim = module_shape(shapes, module)[:2]
        base = key_base(module, style=style, prefix=prefix)
        for half in ("1", "2"):
            tensors[f"{base}.hada_w{half}_a"] = torch.randn(out_dim, rank, generator=gen) * root
            tensors[f"{base}.hada_w{half}_b"] = torch.randn(rank, in_dim, generator=gen) / math.sqrt(rank)
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    return _save(path, tensors, metadata, dtype)


def diffusers_lora_metadata(lora_alpha: float, r: int, *, alpha_pattern: Mapping[str, float] | None = None,
                            rank_pattern: Mapping[str, int] | None = None, use_rslora: bool = False,
                            component: str = "transformer") -> dict[str, str]:
    """The safetensors metadata diffusers' save_lora_weights writes: PEFT's LoraConfig as JSON, keys prefixed."""
    cfg = {"r": r, "lora_alpha": lora_alpha, "alpha_pattern": dict(alpha_pattern or {}),
           "rank_pattern": dict(rank_pattern or {}), "use_rslora": use_rslora, "use_dora": False,
           "lora_dropout": 0.0, "peft_type": "LORA", "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    return {"lora_adapter_metadata": json.dumps({f"{component}.{k}": v for k, v in cfg.items()}),
            "format": "pt"}


def _write_lowrank(path, modules: Mapping[str, tuple[int, int]], style_suffix: Mapping[str, str], rank: int,
                   seed: int, alpha: float | None) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for base, (out_dim, in_dim) in modules.items():
        tensors[f"{base}.{style_suffix['lora_down']}"] = torch.randn(rank, in_dim, generator=gen) / math.sqrt(rank)
        tensors[f"{base}.{style_suffix['lora_up']}"] = torch.randn(out_dim, rank, generator=gen) * 0.02
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    return _save(path, tensors, None, torch.float16)


def write_sdxl_lora(path: str | os.PathLike, *, rank: int = 4, seed: int = 0) -> list[str]:
    """A kohya-format SDXL LoRA (UNet in SGM block names, cross-attention from 2048 wide, both text encoders)."""
    modules = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_out_0": (1280, 1280),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280),
    }
    return _write_lowrank(path, modules, _FACTOR_SUFFIX["kohya"], rank, seed, alpha=float(rank))


def write_flux_lora(path: str | os.PathLike, *, rank: int = 4, seed: int = 0, style: str = "diffusers") -> list[str]:
    """A Flux LoRA: diffusers names (`transformer.transformer_blocks…`, `single_transformer_blocks…`) or kohya."""
    if style == "diffusers":
        modules = {
            "transformer.transformer_blocks.0.attn.to_q": (3072, 3072),
            "transformer.transformer_blocks.0.attn.add_q_proj": (3072, 3072),
            "transformer.single_transformer_blocks.0.attn.to_q": (3072, 3072),
        }
    elif style == "kohya":
        modules = {
            "lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072),
            "lora_unet_double_blocks_0_txt_attn_proj": (3072, 3072),
            "lora_unet_single_blocks_0_linear2": (3072, 15360),
        }
    else:
        raise ValueError(f"style must be 'diffusers' or 'kohya', got {style!r}")
    return _write_lowrank(path, modules, _FACTOR_SUFFIX[style], rank, seed, alpha=None)


def write_named_adapter(path: str | os.PathLike, modules: Mapping[str, tuple[int, int]], *, algo: str = "lora",
                        suffixes: tuple[str, str] = ("lora_A.weight", "lora_B.weight"), rank: int = 4,
                        alpha: float | None = None, seed: int = 0, scale: float = 0.05) -> list[str]:
    """An adapter on the given module names as a file spells them ({name: (out, in)}), any architecture.

    algo "lora": `name.<down suffix>` / `name.<up suffix>` ("lora_A.weight"/"lora_B.weight" diffusers/PEFT,
    "lora_down.weight"/"lora_up.weight" kohya/LyCORIS, "_lora.down.weight" style via suffixes without a dot:
    give ("_lora.down.weight", "_lora.up.weight") and the name is joined without a dot);
    "lokr": full lokr_w1 ⊗ lokr_w2 (LyCORIS's full-rank form); "lokr_lowrank": lokr_w1 ⊗ (lokr_w2_a @ lokr_w2_b).
    `alpha` writes `.alpha` tensors.
    """
    from lycoris.functional.general import factorization

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def key(name: str, suffix: str) -> str:
        return name + suffix if suffix.startswith("_") else f"{name}.{suffix}"

    for name, (out_dim, in_dim) in modules.items():
        if algo == "lora":
            tensors[key(name, suffixes[0])] = torch.randn(rank, in_dim, generator=gen) / math.sqrt(rank)
            tensors[key(name, suffixes[1])] = torch.randn(out_dim, rank, generator=gen) * scale
        elif algo in ("lokr", "lokr_lowrank"):
            out_l, out_k = factorization(out_dim, 4)
            in_m, in_n = factorization(in_dim, 4)
            tensors[f"{name}.lokr_w1"] = torch.randn(out_l, in_m, generator=gen)
            if algo == "lokr":
                tensors[f"{name}.lokr_w2"] = torch.randn(out_k, in_n, generator=gen) * scale
            else:
                tensors[f"{name}.lokr_w2_a"] = torch.randn(out_k, rank, generator=gen) * math.sqrt(scale)
                tensors[f"{name}.lokr_w2_b"] = torch.randn(rank, in_n, generator=gen) * math.sqrt(scale)
        else:
            raise ValueError(f"algo must be lora, lokr or lokr_lowrank, got {algo!r}")
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    return _save(path, tensors, None, torch.float32)
