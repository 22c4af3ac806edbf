"""Which layers an SDA LoKr trains, per architecture, and the names its file gives them.

The default is the same for every model: attention (q, k, v, out, and the text stream's own projections where
a joint block has them) and the feed-forward layers of the transformer blocks, never embedders, norms or
modulation. Each architecture names those layers in the file format its users' tools read:

  Z-Image      diffusion_model.layers.N.attention.to_q …   the pack's own map (q/k/v: row slices of the fused qkv)
  FLUX.1       transformer.transformer_blocks.N.attn.to_q … diffusers names (fused qkv / linear1 sliced by rows)
  SD3.5        transformer.transformer_blocks.N.attn.to_q … diffusers names (fused qkv sliced by rows)
  Qwen-Image   transformer.transformer_blocks.N.attn.to_q … diffusers names (= ComfyUI's)
  SDXL         lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q …  kohya's names (sd-scripts, A1111)

The names (and where each lands, slices included) come from the host's key map, so a saved file loads
through ComfyUI's own loader exactly where training placed it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..adapters.layout import Target

__all__ = ["TargetTable", "TABLES", "table_for", "select_targets"]


@dataclass(frozen=True)
class TargetTable:
    """One architecture's trained layers: `pattern` over the file's module names (without `prefix`)."""

    family: str  # what reports and metadata call the architecture
    prefix: str  # the file's key prefix; the key map's names carry it
    pattern: re.Pattern
    blocks: str  # how the layers look, for the error when none is found

    def file_key(self, name: str) -> str:
        """The saved key of trained module `name` (without the `.lokr_w1` part)."""
        return self.prefix + name


_ATTN = r"(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
TABLES: dict[str, TargetTable] = {
    "zimage": TargetTable(
        "Z-Image", "diffusion_model.",
        re.compile(r"^(?P<block>layers|noise_refiner|context_refiner)\.\d+\."
                   r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])$"),
        "layers.N.attention.to_q … feed_forward.w3"),
    "flux": TargetTable(
        "FLUX.1", "transformer.",
        re.compile(r"^(?P<block>transformer_blocks)\.\d+\.(attn\." + _ATTN + r"|ff(_context)?\.net\.(0\.proj|2))$|"
                   r"^(?P<single>single_transformer_blocks)\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out)$"),
        "transformer_blocks.N.attn.to_q … single_transformer_blocks.N.proj_out"),
    "sd3": TargetTable(
        "SD3", "transformer.",
        re.compile(r"^(?P<block>transformer_blocks)\.\d+\.(attn2?\." + _ATTN + r"|ff(_context)?\.net\.(0\.proj|2))$"),
        "transformer_blocks.N.attn.to_q … ff_context.net.2"),
    "qwen_image": TargetTable(
        "Qwen-Image", "transformer.",
        re.compile(r"^(?P<block>transformer_blocks)\.\d+\.(attn\." + _ATTN + r"|(img|txt)_mlp\.net\.(0\.proj|2))$"),
        "transformer_blocks.N.attn.to_q … txt_mlp.net.2"),
    "sdxl": TargetTable(
        "SDXL", "lora_unet_",
        re.compile(r"^(?P<block>input_blocks|middle_block|output_blocks)_\d+_(\d+_)?transformer_blocks_\d+_"
                   r"(attn[12]_(to_q|to_k|to_v|to_out_0)|ff_net_(0_proj|2))$"),
        "input_blocks_N_1_transformer_blocks_N_attn1_to_q … ff_net_2"),
}

# ComfyUI's model classes (comfy.model_base) whose students the tables above train.
_BY_MODEL_CLASS = {"Lumina2": "zimage", "Flux": "flux", "SD3": "sd3", "QwenImage": "qwen_image", "SDXL": "sdxl"}


def table_for(model_class: str, zimage: bool) -> TargetTable | None:
    """The table of a host model class (Z-Image is a Lumina2 whose weights say Z-Image), or None."""
    key = _BY_MODEL_CLASS.get(model_class)
    if key == "zimage" and not zimage:
        return None
    return TABLES.get(key) if key else None


def select_targets(table: TargetTable, names: Mapping[str, Target], include_refiners: bool = False
                   ) -> dict[str, Target]:
    """The trained layers among `names` (file module names -> where they land), keyed without the prefix.

    include_refiners: Z-Image's noise and context refiner blocks too (its only optional group).
    """
    chosen = {}
    for name, target in names.items():
        if not name.startswith(table.prefix):
            continue
        short = name[len(table.prefix):]
        match = table.pattern.match(short)
        if match is None:
            continue
        if match.groupdict().get("block") in ("noise_refiner", "context_refiner") and not include_refiners:
            continue
        chosen[short] = target
    return chosen

