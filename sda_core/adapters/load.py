"""load_adapter: file -> format -> names normalised onto the model's parameters -> modules holding factors.

Every way an adapter can silently do nothing in ComfyUI (keys that match no layer, a LoKr whose shape does
not fit and is only logged) is an error here, naming the file and what was expected.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Mapping

import torch

from .algorithms import MODULE_TYPES, AdapterModule, FactorError, LoRAModule, _fmt, algorithm_of, fits
from .arch import describe_layout, guess_architecture, same_family
from .errors import AdapterError
from .file_reading import check_finite, read_safetensors
from .keys import UNSUPPORTED, group_keys, is_text_encoder, strip_prefix
from .layout import ModelLayout, Target, key_map_targets, module_targets, underscore_names
from .loaded import LoadedAdapter
from .metadata import peft_config


def _alpha(group, label: str) -> float | None:
    t = group.tensors.get("alpha")
    if t is None:
        return None
    if t.numel() != 1:
        raise AdapterError(f"{label}: {group.keys['alpha']}: alpha must be a single number, got shape "
                           f"{tuple(t.shape)}")
    return float(t.reshape(-1)[0].float())


def _where(target: Target) -> str:
    if target.rows is None:
        return target.param
    start, length = target.rows
    return f"{target.param} rows {start}:{start + length}"


def load_adapter(source: str | os.PathLike | Mapping[str, torch.Tensor], layout: ModelLayout, *,
                 label: str | None = None, metadata: Mapping[str, str] | None = None) -> LoadedAdapter:
    """Parse an adapter (a .safetensors path or a state dict) onto `layout`; refuses files that patch nothing."""
    if isinstance(source, Mapping):
        label = label or "<state dict>"
        tensors = dict(source)
        meta: dict[str, str] = {}
        check_finite(tensors, label)
    else:
        label = label or os.path.basename(os.fspath(source))
        tensors, meta = read_safetensors(source, label=label)
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    if not tensors:
        raise AdapterError(f"{label}: the file holds no tensors, so it is no adapter")

    model_name = describe_layout(layout)
    host_map = layout.key_map is not None
    targets = key_map_targets(layout) if host_map else module_targets(layout)
    underscored = {} if host_map else underscore_names(targets)
    peft = peft_config(meta, label)
    groups, unknown = group_keys(tensors)

    placements: list[tuple[Target, AdapterModule]] = []
    unplaced: list[str] = []
    reasons: dict[str, str] = {}
    formats: Counter = Counter()
    mismatches: list[tuple[str, Target, tuple[int, ...]]] = []

    def skip(name: str, reason: str) -> None:
        unplaced.append(name)
        reasons[name] = reason

    for key in unknown:
        skip(key, "unknown key")
    for source_name, group in groups.items():
        fmt, name, is_underscored = strip_prefix(source_name)
        if is_text_encoder(source_name):
            skip(source_name, "text encoder (only the diffusion model is patched)")
            continue
        if host_map and source_name in layout.key_map_skipped:
            skip(source_name, layout.key_map_skipped[source_name])
            continue
        if host_map:  # ComfyUI's key map holds the names with their prefixes, as files spell them
            dotted, target = name, targets.get(source_name)
        else:
            dotted = underscored.get(name.lower()) if is_underscored else name
            target = targets.get(dotted) if dotted else None
        if target is None:
            skip(source_name, f"not a name ComfyUI maps for {model_name}" if host_map else f"no such layer in {model_name}")
            continue
        unsupported = sorted({UNSUPPORTED[r] for r in group.tensors if r in UNSUPPORTED})
        if unsupported:
            skip(source_name, "; ".join(unsupported))
            continue
        try:
            algo = algorithm_of(group.tensors)
            if algo is None:
                skip(source_name, "an alpha without factors")
                continue
            alpha = _alpha(group, label)
            if algo == "lora" and alpha is None and peft is not None:
                meta_alpha, meta_key = peft.alpha_for(name)
                module = LoRAModule(dotted, group.tensors, meta_alpha, group.keys,
                                    alpha_source="metadata", rslora=peft.use_rslora, alpha_key=meta_key)
            else:
                module = MODULE_TYPES[algo](dotted, group.tensors, alpha, group.keys)
        except FactorError as exc:
            raise AdapterError(f"{label}: {exc}") from None
        module.source = label
        module.transform = target.transform
        if not fits(module.shape, target.shape):
            mismatches.append((group.key(), target, module.shape))
            continue
        placements.append((target, module))
        formats[fmt] += 1

    if mismatches:
        key, target, got = mismatches[0]
        more = f"; {len(mismatches) - 1} more modules do not fit either" if len(mismatches) > 1 else ""
        arch = guess_architecture(tensors.keys(), tensors)
        hint = f" (its names look like {arch})" if arch else ""
        raise AdapterError(f"{label}: {key}: the adapter's delta has shape {_fmt(got)} but {model_name} layer "
                           f"{_where(target)} expects {_fmt(target.shape)}{more}; the adapter was made for a "
                           f"different model or model size{hint}")
    if not placements:
        arch = guess_architecture(tensors.keys(), tensors)
        n = len(groups) + len(unknown)
        sample = ", ".join(list(groups)[:3] or unknown[:3])
        if same_family(arch, layout.family):
            mapper = "ComfyUI's key map" if host_map else "this pack"
            why = (f"its names look like {arch}, which {model_name} is, but none of them is a name {mapper} places "
                   f"on it (they look like: {sample}), so they come from a key format or model variant neither "
                   "ComfyUI's LoRA loader nor this pack reads")
        elif arch:
            why = f"it looks like an adapter for {arch}, not for {model_name}"
        else:
            why = f"its module names look like: {sample}"
        detail = sorted(Counter(reasons.values()).items(), key=lambda kv: -kv[1])
        counts = "; ".join(f"{c} × {r}" for r, c in detail[:3])
        raise AdapterError(f"{label}: none of its {n} modules matches a layer of {model_name}, so it would "
                           f"patch nothing; {why} ({counts})")
    fmt = "+".join(f for f, _ in formats.most_common())
    return LoadedAdapter(label=label, format=fmt, placements=placements, unplaced=unplaced, metadata=meta,
                         unplaced_reasons=reasons, model_name=model_name)
