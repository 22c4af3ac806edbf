"""Stacking adapters on one model: the LORA_STACK convention of other packs, overlap, and inversion checks.

Adapters that patch the same layers add up there; a diversity LoKr stacked with a style LoRA at full
strength each can overshoot. The report says how much they share so the user can balance strengths.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import torch

from .adapters import AdapterModule, LoadedAdapter, apply_deltas

SDA_STACKED_STRENGTH = "0.5–0.7"
# The strength widgets stop here; a stack or schedule from elsewhere is held to the same range, since an adapter
# at a larger multiple overshoots into noise and is far more often a typo (20 for 2.0) than an intent.
MAX_STRENGTH = 2.0


def check_strength(value: float, where: str) -> float:
    """`value` when it is within ±MAX_STRENGTH, else a ValueError naming `where`."""
    if abs(value) > MAX_STRENGTH:
        raise ValueError(f"{where}: strength {value:g} is outside −{MAX_STRENGTH:g}…{MAX_STRENGTH:g}, the range of "
                         f"the strength widgets; expected a multiplier from −{MAX_STRENGTH:g} to {MAX_STRENGTH:g}")
    return value


def _strength(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real):
        if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
            value = value.item()
        else:
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def normalize_lora_stack(stack: Any) -> list[tuple[str, float, float]]:
    """A LORA_STACK from any pack as [(lora_name, model_strength, clip_strength)]; extra items are dropped.

    Comfyroll, Efficiency and others pass lists of 3-tuples, some with a 4th element (trigger words).
    """
    if stack is None:
        return []
    if not isinstance(stack, (list, tuple)):
        raise ValueError(f"lora_stack: expected a list of (lora_name, model_strength, clip_strength), "
                         f"got {type(stack).__name__}")
    out = []
    for i, item in enumerate(stack, start=1):
        where = f"lora_stack item {i} ({item!r})"
        if not isinstance(item, (list, tuple)) or len(item) < 3:
            raise ValueError(f"{where}: expected (lora_name, model_strength, clip_strength[, ...])")
        name, model_strength, clip_strength = item[0], _strength(item[1]), _strength(item[2])
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: the first element must be a LoRA file name")
        if model_strength is None or clip_strength is None:
            raise ValueError(f"{where}: model_strength and clip_strength must be finite numbers")
        check_strength(model_strength, f"{where} model_strength")
        out.append((name, model_strength, clip_strength))
    return out


def overlap_report(entries: Sequence[tuple[str, LoadedAdapter, float]]) -> str:
    """Per adapter of a stack: how many model layers it patches and how many of those others patch too."""
    if not entries:
        return "empty stack"
    sets = [loaded.patched_params for _, loaded, _ in entries]
    lines = [f"stack of {len(entries)} adapters, applied in order:"]
    any_shared = False
    for i, (name, loaded, strength) in enumerate(entries):
        others = set().union(*(s for j, s in enumerate(sets) if j != i)) if len(sets) > 1 else set()
        shared = sets[i] & others
        any_shared = any_shared or bool(shared)
        with_whom = [entries[j][0] for j, s in enumerate(sets) if j != i and sets[i] & s]
        line = f"  {i + 1}. {name} at {strength:g}: patches {len(sets[i])} layers"
        if shared:
            line += f", shares {len(shared)} with {', '.join(with_whom)}"
        else:
            line += ", shares none with the others"
        lines.append(line)
    if any_shared:
        lines.append(f"  shared layers receive the sum of the adapters' changes: balance the strengths "
                     f"(the SDA card suggests SDA at {SDA_STACKED_STRENGTH} when stacked with style LoRAs)")
    return "\n".join(lines)


def inversion_deviation(weight: torch.Tensor, module: AdapterModule, rows: tuple[int, int] | None,
                        strength: float) -> float:
    """max |W − (W +s·Δ then −s·Δ)|, each step exactly as apply_deltas does it and stored in W's dtype.

    This is what inverting a merged training adapter leaves behind: rounding only, about one unit in the
    last place of the weights.
    """
    merged = apply_deltas(weight, [(module, strength)], rows)
    restored = apply_deltas(merged, [(module, -strength)], rows)
    return float((restored.double() - weight.detach().double()).abs().max())
