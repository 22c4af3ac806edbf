"""The little glue every node shares: files in ComfyUI's folders, adapters patched onto a ModelPatcher clone.

Patches go through ComfyUI's own ModelPatcher (add_patches), so its memory management, offloading, dtype
casting, low-VRAM patching and LoRA caching keep working. The delta itself is computed by sda_core, from
the adapter's small factors, at the moment ComfyUI patches that layer: never a full-size copy at load.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

import torch

import comfy.lora
import comfy.model_management
import comfy.utils
import comfy.weight_adapter
import folder_paths
from comfy_api.latest import io, ui

from ..sda_core.adapters import (AdapterError, AdapterFileMissing, AdapterModule, LoadedAdapter, ModelLayout,
                                 check_finite_delta, load_adapter, resolve_in_folder)
from ..sda_core.adapters.arch import describe_layout, is_zimage
from ..sda_core.adapters.layout import SWAP_HALVES
from ..sda_core.diversity.lpips_pairs import PairwiseLPIPS
from ..sda_core.step_strengths import ScheduledWeight
from ..sda_core.diversity.weights import load_lpips

MODEL_PREFIX = "diffusion_model."
NONE = "None"


def lora_names() -> list[str]:
    """The combo options of every adapter widget: ComfyUI's `loras` folder(s)."""
    return folder_paths.get_filename_list("loras")


ADAPTER_FILE = "adapter file"
ADAPTER_FILE_TOOLTIP = ("An adapter file in models/loras (.safetensors: LoRA, LoKr or LoHa, in the key names of "
                        "ComfyUI, diffusers, kohya, LyCORIS or ai-toolkit); the report says what it placed.")


def adapter_file_input(id: str, *, number: int | None = None, extra: str = "", none_option: bool = False,
                       optional: bool = False) -> io.Combo.Input:
    """The widget that picks a file in models/loras: one display name and wording on every node.

    Its input id stays what each node always called it (saved workflows hold the ids); only the name shown
    and the tooltip are shared.
    """
    options = ([NONE] if none_option else []) + lora_names()
    label = ADAPTER_FILE if number is None else f"{ADAPTER_FILE} {number}"
    tooltip = ADAPTER_FILE_TOOLTIP + (f" {extra}" if extra else "") + (" None: no adapter." if none_option else "")
    return io.Combo.Input(id, options=options, display_name=label, tooltip=tooltip, optional=optional,
                          **({"default": NONE} if none_option else {}))


def lora_path(name: str, widget: str = "lora_name") -> str:
    """A widget's file name resolved inside ComfyUI's loras folders, never outside them."""
    if not name or name == "None":
        raise AdapterError(f"{widget}: no file chosen; pick a file from models/loras")
    roots = folder_paths.get_folder_paths("loras")
    for root in roots:
        try:
            return resolve_in_folder(root, name)
        except AdapterFileMissing:
            continue
        except AdapterError as exc:
            raise AdapterError(f"{widget}: {exc}") from None
    raise AdapterError(f"{widget}: {name!r} is not in any loras folder ({', '.join(roots)})")


def model_layout(model) -> ModelLayout:
    """The diffusion model's parameter names and shapes, its architecture, and where adapter keys land.

    Z-Image keeps the pack's own map (from the shapes, plus the q/k/v row split of its fused qkv); every other
    architecture gets ComfyUI's key map (comfy.lora.model_lora_keys_unet, slice targets included) as a plain
    dict, so sda_core places each key exactly where ComfyUI's own LoRA loader would.
    """
    diffusion_model = model.model.diffusion_model
    shapes = {k: tuple(v.shape) for k, v in diffusion_model.state_dict().items()}
    config = getattr(model.model, "model_config", None)
    arch, family = type(config).__name__ if config is not None else None, type(model.model).__name__
    if is_zimage(shapes):
        unet = getattr(config, "unet_config", {}) or {}
        qkv_rows = None
        dim, heads = unet.get("dim"), unet.get("n_heads")
        if dim and heads:
            head_dim = dim // heads
            kv = (unet.get("n_kv_heads") or heads) * head_dim
            qkv_rows = (heads * head_dim, kv, kv)
        return ModelLayout(shapes=shapes, qkv_rows=qkv_rows, arch=arch, family=family)
    key_map, skipped = comfy_key_map(model)
    return ModelLayout(shapes=shapes, key_map=key_map, key_map_skipped=skipped, arch=arch, family=family)


def model_name(model) -> str:
    """The model's architecture as every message of the pack names it (Z-Image, SDXL, FluxSchnell, SD3, …)."""
    return describe_layout(model_layout(model))


def comfy_key_map(model) -> tuple[dict[str, tuple], dict[str, str]]:
    """ComfyUI's LoRA key map for the diffusion model as plain data: ({file module name: (parameter, rows or
    None[, transform])}, {name: why it is not placed}).

    Parameters lose their `diffusion_model.` prefix. A function ComfyUI applies to a target's change becomes its
    name in sda_core (swap_scale_shift, on Flux's and SD3's final modulation: SWAP_HALVES), so the change lands
    exactly as ComfyUI's loader lands it; targets with another function, or sliced along another dimension than
    the rows, are listed with the reason instead of being placed differently from ComfyUI.
    """
    out: dict[str, tuple] = {}
    skipped: dict[str, str] = {}
    for name, target in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        rows, transform = None, None
        if isinstance(target, tuple):
            target, offset, *function = target
            if function and function[0] is not None:
                transform = _transform_name(function[0])
                if transform is None:
                    skipped[name] = (f"ComfyUI changes this layer's delta with "
                                     f"{getattr(function[0], '__name__', 'a function')} first; not supported here")
                    continue
            if offset is not None:
                if len(offset) != 3 or offset[0] != 0:
                    skipped[name] = f"ComfyUI slices this layer along dimension {offset[0]}; not supported here"
                    continue
                rows = (int(offset[1]), int(offset[2]))
        if isinstance(target, str) and target.startswith(MODEL_PREFIX) and target.endswith(".weight"):
            param = target[len(MODEL_PREFIX):]
            out[name] = (param, rows, transform) if transform else (param, rows)
    return out, skipped


def _transform_name(function) -> str | None:
    """sda_core's name for a function ComfyUI's key map applies to a change (None: one we do not know)."""
    return SWAP_HALVES if function is getattr(comfy.utils, "swap_scale_shift", None) else None


_CACHE: "OrderedDict[tuple, LoadedAdapter]" = OrderedDict()
_CACHE_SIZE = 4


def load_for_model(model, name: str, widget: str = "lora_name") -> LoadedAdapter:
    """Parse an adapter file onto this model's layout; the last few are kept, keyed by file state and layout."""
    path = lora_path(name, widget)
    layout = model_layout(model)
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, hash(tuple(sorted(layout.shapes.items()))), layout.qkv_rows,
           layout.arch, layout.family, hash(tuple(sorted((layout.key_map or {}).items()))),
           hash(tuple(sorted(layout.key_map_skipped.items()))))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loaded = load_adapter(path, layout, label=name)
    _CACHE[key] = loaded
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return loaded


class SDAWeightPatch(comfy.weight_adapter.WeightAdapterBase):
    """One adapted layer as ComfyUI's patcher sees it: ComfyUI narrows the weight to the slice, we add the delta."""

    name = "sda"

    def __init__(self, module: AdapterModule):
        self.module = module
        self.loaded_keys = set()
        self.weights = []

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        if strength == 0.0:
            return weight
        delta = self.module.delta(tuple(weight.shape), dtype=intermediate_dtype, device=weight.device)
        change = function(strength * delta).type(weight.dtype)
        check_finite_delta(change, self.module.source, self.module.name, weight.dtype)
        weight += change
        return weight


def patch_key(target) -> str | tuple:
    key = MODEL_PREFIX + target.param
    if target.rows is None:
        return key
    start, length = target.rows
    return (key, (0, start, length))


def add_adapter(model, loaded: LoadedAdapter, strength: float):
    """Patch `loaded` onto `model` in place (call on a clone); every placement must land."""
    groups: list[dict] = [{}]
    for target, module in loaded.placements:
        key = patch_key(target)
        for group in groups:
            if key not in group:
                group[key] = SDAWeightPatch(module)
                break
        else:
            groups.append({key: SDAWeightPatch(module)})
    landed = 0
    for group in groups:
        landed += len(model.add_patches(group, strength))
    expected = sum(len(g) for g in groups)
    if landed != expected:
        raise AdapterError(f"{loaded.label}: only {landed} of {expected} patches landed on the model")
    return model


def apply_adapters(model, entries: Sequence[tuple[LoadedAdapter, float]]):
    """A clone of `model` with every adapter added in order; the input MODEL is never modified."""
    patched = model.clone()
    for loaded, strength in entries:
        add_adapter(patched, loaded, strength)
    return patched


def add_switched_weights(model, loaded: LoadedAdapter, state) -> None:
    """`loaded` on `model` (a clone) as weight wrappers whose strength is read from `state.value` at each use.

    One wrapper per patched weight, holding every region (q/k/v row slices) of it: the adapter is on, off or
    scaled per model call without touching the stored weights (Strength by Step, the training assistant).
    """
    regions: dict[str, list] = {}
    for target, module in loaded.placements:
        regions.setdefault(MODEL_PREFIX + target.param, []).append((target.rows, module))
    for key, key_regions in regions.items():
        model.add_weight_wrapper(key, ScheduledWeight(key_regions, state))


def original_weights(model) -> Callable[[str], torch.Tensor]:
    """param -> the model's weight before any patch ComfyUI may currently have merged into it."""
    state = model.model.state_dict()
    backups = getattr(model, "backup", {})

    def weight(param: str) -> torch.Tensor:
        key = MODEL_PREFIX + param
        backup = backups.get(key)
        return backup.weight if backup is not None else state[key]

    return weight


def _register_lpips_folder() -> None:
    """models/lpips/ holds LPIPS backbone files (see README) for machines that cannot download them."""
    if "lpips" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("lpips", os.path.join(folder_paths.models_dir, "lpips"))


_register_lpips_folder()


def lpips_model(net: str) -> PairwiseLPIPS:
    """All-pairs LPIPS on ComfyUI's torch device, backbone from models/lpips/ or torchvision's cache/download."""
    device = comfy.model_management.get_torch_device()
    return PairwiseLPIPS(load_lpips(net, folder_paths.get_folder_paths("lpips"), device=device))


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, 3] from latents, as VAEDecode gives it."""
    images = vae.decode(latents)
    if images.dim() == 5:
        images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
    return images


def image_and_text_ui(image: torch.Tensor, text: str, cls) -> dict:
    """An image preview and a text on the node at once (and in the prompt's history, for headless use)."""
    return {**ui.PreviewImage(image, cls=cls).as_dict(), "text": (text,)}


def throw_if_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


def join_lines(lines: Iterable[str]) -> str:
    return "\n".join(line for line in lines if line is not None)
