"""The model side of placement: which module names land on which parameter (or row slice of one).

Z-Image keeps the pack's own map, built from the model's parameter shapes, so its mapping does not depend on
the ComfyUI version (0.3.75 ignores `transformer.` keys, 0.8.0 maps them). Z-Image (ComfyUI's NextDiT)
fuses q, k and v into one `attention.qkv` weight; diffusers-style files name them apart, so `to_q`,
`to_k`, `to_v` become row slices of the fused weight.

Every other architecture is placed through the host's key map (ComfyUI's own, handed over by the nodes as a
plain dict: file module name -> parameter, or a row slice of one, and the change ComfyUI makes to the delta
first, by name), so each file ComfyUI's loader applies lands exactly where ComfyUI puts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

# Changes a host's key map makes to a delta before adding it, named as plain data (the host translates its own
# functions). SWAP_HALVES: the two row halves exchanged — diffusers orders a final modulation (Flux's and
# SD3's norm_out.linear, SD3's last norm1_context.linear) scale then shift, ComfyUI's models shift then scale.
SWAP_HALVES = "swap_halves"
TRANSFORMS = frozenset({SWAP_HALVES})


def transform_delta(delta: torch.Tensor, transform: str | None) -> torch.Tensor:
    """`delta` as the layer takes it: unchanged, or with its two row halves swapped (SWAP_HALVES)."""
    if transform is None:
        return delta
    if transform == SWAP_HALVES:
        first, second = delta.chunk(2, dim=0)
        return torch.cat([second, first], dim=0)
    raise ValueError(f"unknown delta transform {transform!r}; known: {sorted(TRANSFORMS)}")


@dataclass(frozen=True)
class ModelLayout:
    """Shapes of the diffusion model's parameters, named without the `diffusion_model.` prefix."""

    shapes: Mapping[str, tuple[int, ...]]
    qkv_rows: tuple[int, int, int] | None = None  # (q, k, v) rows of every attention.qkv; None -> equal thirds
    # The host's key map, when it places this model's keys: file module name (with the file's own prefix) ->
    # (parameter, (start, length) rows or None[, a TRANSFORMS name]). None: the pack's own map from the shapes
    # (Z-Image).
    key_map: Mapping[str, tuple] | None = None
    key_map_skipped: Mapping[str, str] = field(default_factory=dict)  # names the host maps but we do not: why
    arch: str | None = None  # the model's architecture as the host names it (e.g. "FluxSchnell"), for messages
    family: str | None = None  # the host's model class (e.g. "Flux"), to tell "wrong model" from "unread names"


@dataclass(frozen=True)
class Target:
    """Where one adapted module lands: a parameter, optionally a (start, length) slice of its rows, and the
    change the host makes to the delta first (a TRANSFORMS name, or None)."""

    param: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]
    transform: str | None = None


# Z-Image names used by diffusers (and so by most trainers) for ComfyUI's module names.
_QKV = ".attention.qkv"
_OUT = ".attention.out"
_RENAMED_PREFIXES = (("final_layer.", "all_final_layer.2-1."),)
_RENAMED_MODULES = (("x_embedder", "all_x_embedder.2-1"),)


def _qkv_split(rows: int, qkv_rows: tuple[int, int, int] | None, param: str) -> tuple[int, int, int] | None:
    if qkv_rows is not None:
        if sum(qkv_rows) != rows:
            raise ValueError(f"layout.qkv_rows {qkv_rows} do not add up to the {rows} rows of {param}")
        return tuple(int(r) for r in qkv_rows)
    if rows % 3:
        return None
    return (rows // 3,) * 3


def module_targets(layout: ModelLayout) -> dict[str, Target]:
    """Every dotted module name an adapter may use for a weight of this model, and where it lands."""
    table: dict[str, Target] = {}
    aliases: dict[str, Target] = {}
    for param, shape in layout.shapes.items():
        shape = tuple(int(s) for s in shape)
        if not param.endswith(".weight") or len(shape) < 2:
            continue  # adapters patch weight matrices (and conv kernels), not norms or biases
        module = param[: -len(".weight")]
        target = Target(param, None, shape)
        table[module] = target
        if module.endswith(_QKV):
            split = _qkv_split(shape[0], layout.qkv_rows, param)
            if split is not None:
                base = module[: -len("qkv")]
                start = 0
                for part, rows in zip(("to_q", "to_k", "to_v"), split):
                    aliases[base + part] = Target(param, (start, rows), (rows,) + shape[1:])
                    start += rows
        if module.endswith(_OUT):
            aliases[module[: -len("out")] + "to_out.0"] = target
        for ours, theirs in _RENAMED_PREFIXES:
            if module.startswith(ours):
                aliases[theirs + module[len(ours):]] = target
        for ours, theirs in _RENAMED_MODULES:
            if module == ours:
                aliases[theirs] = target
    for name, target in aliases.items():
        table.setdefault(name, target)  # the model's own names win over an alias
    return table


def key_map_targets(layout: ModelLayout) -> dict[str, Target]:
    """The host's key map as Targets; names of parameters the model does not have (or that are no matrix) dropped."""
    table: dict[str, Target] = {}
    for name, (param, rows, *rest) in (layout.key_map or {}).items():
        transform = rest[0] if rest else None
        if transform is not None and transform not in TRANSFORMS:
            raise ValueError(f"key map: {name} -> {param} with transform {transform!r}; known: {sorted(TRANSFORMS)}")
        shape = layout.shapes.get(param)
        if shape is None or len(shape) < 2:
            continue
        shape = tuple(int(s) for s in shape)
        if rows is None:
            table[name] = Target(param, None, shape, transform)
            continue
        start, length = int(rows[0]), int(rows[1])
        if start < 0 or length < 1 or start + length > shape[0]:
            raise ValueError(f"key map: {name} -> rows {start}:{start + length} of {param}, which has {shape[0]} rows")
        table[name] = Target(param, (start, length), (length,) + shape[1:], transform)
    return table


def underscore_names(names: Mapping[str, Target]) -> dict[str, str | None]:
    """kohya/LyCORIS spell module names with underscores: underscored (lower case) -> dotted, None if ambiguous."""
    out: dict[str, str | None] = {}
    for name in names:
        key = name.replace(".", "_").lower()
        out[key] = None if key in out and out[key] != name else name
    return out
