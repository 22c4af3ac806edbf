"""The file side of placement: split each key into module name + factor role, and read the name's prefix.

Trainers disagree on both ends of a key. The suffix says which factor a tensor is (`lora_A.weight` and
`lora_down.weight` are the same thing); the prefix says who wrote the file (`transformer.` diffusers,
`lycoris_` LyCORIS, `lora_unet_` kohya/musubi ...). Underscore formats lose the dots, so they are matched
against the model's names with dots collapsed (see layout.underscore_names).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

# (suffix, role). Longest first where one suffix ends another.
SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "lora_down"),
    (".lora_B.default.weight", "lora_up"),
    (".lora_linear_layer.down.weight", "lora_down"),
    (".lora_linear_layer.up.weight", "lora_up"),
    (".lora_down.weight", "lora_down"),
    (".lora_up.weight", "lora_up"),
    (".lora_mid.weight", "lora_mid"),
    (".lora_A.weight", "lora_down"),
    (".lora_B.weight", "lora_up"),
    (".lora.down.weight", "lora_down"),
    (".lora.up.weight", "lora_up"),
    ("_lora.down.weight", "lora_down"),
    ("_lora.up.weight", "lora_up"),
    (".lora_A", "lora_down"),
    (".lora_B", "lora_up"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".hada_t1", "hada_t1"),
    (".hada_t2", "hada_t2"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_w1", "lokr_w1"),
    (".lokr_w2", "lokr_w2"),
    (".lokr_t2", "lokr_t2"),
    (".alpha", "alpha"),
    (".dora_scale", "dora_scale"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
    (".set_weight", "set_weight"),
    (".oft_blocks", "oft_blocks"),
    (".oft_diag", "oft_diag"),
    (".boft_blocks", "boft_blocks"),
    (".w_norm", "w_norm"),
    (".b_norm", "b_norm"),
    (".a1.weight", "glora"),
    (".a2.weight", "glora"),
    (".b1.weight", "glora"),
    (".b2.weight", "glora"),
)

LORA_ROLES = frozenset({"lora_down", "lora_up", "lora_mid"})
LOHA_ROLES = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"})
LOKR_ROLES = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
ALGO_ROLES = {"lora": LORA_ROLES, "loha": LOHA_ROLES, "lokr": LOKR_ROLES}

# Roles we recognise but do not apply: the module is reported as unplaced with this reason.
UNSUPPORTED = {
    "dora_scale": "DoRA (dora_scale) is not supported; applying it without the DoRA step would be wrong",
    "diff": "a full weight difference (.diff) is not supported",
    "diff_b": "a bias difference (.diff_b) is not supported",
    "set_weight": "a weight replacement (.set_weight) is not supported",
    "oft_blocks": "OFT is not supported",
    "oft_diag": "OFT is not supported",
    "boft_blocks": "BOFT is not supported",
    "w_norm": "norm adapters are not supported",
    "b_norm": "norm adapters are not supported",
    "glora": "GLoRA is not supported",
}

# Dotted prefixes, stripped repeatedly (PEFT can wrap a diffusers name: base_model.model.transformer.…).
DOTTED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "ai-toolkit/comfyui"),
    ("diffusion_model.", "ai-toolkit/comfyui"),
    ("base_model.model.", "peft"),
    ("transformer.", "diffusers"),
    ("unet.", "diffusers"),
)
UNDERSCORE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lycoris_", "lycoris"),
    ("lora_unet_", "kohya"),
    ("lora_transformer_", "onetrainer"),
)
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                         "text_encoders.", "te.", "te1.", "te2.")
BARE_FORMAT = "diffsynth"


@dataclass
class KeyGroup:
    """All tensors of one module of the file, by role."""

    source: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, role: str | None = None) -> str:
        """A file key of this module, for messages: `role`'s, else the first factor's."""
        if role is not None and role in self.keys:
            return self.keys[role]
        for r, k in self.keys.items():
            if r != "alpha":
                return k
        return next(iter(self.keys.values()))


def split_key(key: str) -> tuple[str, str] | None:
    """(module name, role) of a file key, or None when its suffix is unknown."""
    for suffix, role in SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    return None


def group_keys(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, KeyGroup], list[str]]:
    """Keys grouped by module, and the keys whose suffix is not one of ours."""
    groups: dict[str, KeyGroup] = {}
    unknown: list[str] = []
    for key in tensors:
        split = split_key(key)
        if split is None:
            unknown.append(key)
            continue
        module, role = split
        group = groups.setdefault(module, KeyGroup(module))
        group.tensors[role] = tensors[key]
        group.keys[role] = key
    return groups, unknown


def strip_prefix(source: str) -> tuple[str, str, bool]:
    """(format, name without prefixes, underscored?) of a module name as the file spells it."""
    for prefix, fmt in UNDERSCORE_PREFIXES:
        if source.startswith(prefix):
            return fmt, source[len(prefix):], True
    fmt = None
    name = source
    stripped = True
    while stripped:
        stripped = False
        for prefix, kind in DOTTED_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                fmt = fmt or kind
                stripped = True
                break
    return fmt or BARE_FORMAT, name, False


def is_text_encoder(source: str) -> bool:
    return source.startswith(TEXT_ENCODER_PREFIXES)
