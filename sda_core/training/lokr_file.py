"""Save a trained LoKr set as a LyCORIS-style safetensors file that ComfyUI loads as is.

Keys `diffusion_model.{diffusers Z-Image module}.lokr_w1|lokr_w2` (or `lokr_w2_a`, `lokr_w2_b`, `alpha`):
the names ComfyUI maps onto its fused qkv row slices. Other architectures name modules as their
`targets.TargetTable` says (diffusers' `transformer.…`, kohya's `lora_unet_…`). Unlike core's trainer, the file says how it was
made: every SDA hyper-parameter, the step count, the base model, the LyCORIS algo info and a format
version. Files are never overwritten and never written outside the folder given.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import torch

from .config import X0_PROJECTION, SDAConfig
from ..atomic import claim_new_path
from ..paths import PathEscapes, path_inside
from .atomic_save import atomic_save_safetensors
from .lokr import LoKrSet

__all__ = [
    "FORMAT_VERSION", "KEY_PREFIX", "save_lokr", "training_metadata", "lokr_file_tensors", "lycoris_state_dict",
    "resolve_inside",
]

FORMAT_VERSION = "1"
KEY_PREFIX = "diffusion_model."
_ROLES = frozenset({"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"})  # what TrainableLoKr writes


def training_metadata(config: SDAConfig, steps_done: int, base_model: str, **extra: Any) -> dict[str, Any]:
    """The SDA run's description: every hyper-parameter, steps done, the base model (plus `extra`)."""
    meta: dict[str, Any] = {
        "sda_method": "SDA: teacher-guided semantic directional alignment (sda_diversity_loss_2026)",
        "sda_config": config.to_dict(),
        "sda_steps": int(steps_done),
        "sda_base_model": str(base_model),
        "sda_x0_projection": X0_PROJECTION,
        "sda_optimizer": {"name": "AdamW", "lr": config.lr, "weight_decay": config.weight_decay,
                          "grad_clip": config.grad_clip},
    }
    if config.teacher_batch > 1:
        meta["sda_teacher_batch"] = (f"{config.teacher_batch}: the teacher ran once per {config.teacher_batch} steps; "
                                     f"x_t and teacher targets were up to {config.teacher_batch - 1} updates old")
    for k, v in extra.items():
        meta[k if k.startswith(("sda_", "ss_", "modelspec.")) else f"sda_{k}"] = v
    return meta


def lokr_file_tensors(lokr: LoKrSet, dtype: torch.dtype | None = None,
                      module_key: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """`{<module key>.<lokr key>: tensor}` for the whole set (alpha kept in fp32).

    module_key: a trained module's name in the file (an architecture's `TargetTable.file_key`); by default
    `diffusion_model.<module>`, Z-Image's.
    """
    out = {}
    for name, m in lokr.items():
        module = module_key(name) if module_key is not None else KEY_PREFIX + name
        for key, t in m.state_tensors().items():
            out[f"{module}.{key}"] = t if (dtype is None or key == "alpha") else t.to(dtype)
    return out


def lycoris_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The saved file's tensors under LyCORIS's own names (`lycoris_layers_0_attention_to_q.lokr_w1`).

    The file keeps the names ComfyUI and diffusers map; LyCORIS's `create_lycoris_from_weights` only
    matches `lycoris_<module path with _>` against the wrapped module, here a diffusers Z-Image
    transformer: pass it `weights_sd=lycoris_state_dict(load_file(path))`.
    """
    out = {}
    for key, t in tensors.items():
        if not key.startswith(KEY_PREFIX):
            raise ValueError(f"not an SDA LoKr key (it should start with {KEY_PREFIX!r}): {key!r}")
        module, _, role = key[len(KEY_PREFIX):].rpartition(".")
        if not module or role not in _ROLES:
            raise ValueError(f"not an SDA LoKr key (a module, then one of {sorted(_ROLES)}): {key!r}")
        out[f"lycoris_{module.replace('.', '_')}.{role}"] = t
    return out


def _algo_info(lokr: LoKrSet) -> dict[str, str]:
    mods = [m for _, m in lokr.items()]
    factors = sorted({m.factor for m in mods})
    ranks = sorted({m.rank for m in mods}, key=lambda r: -1 if r is None else r)
    full = all(m.full_matrix for m in mods)
    args = {"algo": "lokr", "factor": ",".join(map(str, factors)), "full_matrix": str(full).lower()}
    info = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_args": json.dumps(args),
        "sda_format_version": FORMAT_VERSION,
        "sda_algo": "lokr",
    }
    if not full and len(ranks) == 1:
        info["ss_network_dim"] = str(ranks[0])
        info["ss_network_alpha"] = str(ranks[0])
    return info


def resolve_inside(root: str, name: str) -> str:
    """Absolute path of a file to write under `root`; ValueError if it escapes (.., absolute path, symlink)."""
    try:
        return path_inside(root, name)
    except PathEscapes as exc:
        raise ValueError(f"refusing to write {name!r}: {exc}") from None


def _encode(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}


def save_lokr(
    path: str,
    lokr: LoKrSet,
    metadata: Mapping[str, Any],
    *,
    root: str | None = None,
    dtype: torch.dtype | None = None,
    module_key: Callable[[str], str] | None = None,
) -> str:
    """Write the LoKr file atomically and return the path actually written.

    `path` is relative to `root` when given (and may not leave it); `.safetensors` is appended when
    missing. An existing file is never overwritten: the name gets `_1`, `_2`, … instead. Non-string
    metadata values are stored as JSON; the algo info and format version are always added.
    module_key: the file's name of each trained module (see `lokr_file_tensors`).
    """
    if len(lokr) == 0:
        raise ValueError("refusing to save an empty LoKr set")
    if os.path.basename(path).strip() in {"", ".", "..", ".safetensors"}:
        raise ValueError(f"invalid file name {path!r}")
    if not path.endswith(".safetensors"):
        path = path + ".safetensors"
    target = resolve_inside(root, path) if root is not None else os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    meta = {**_encode(metadata), **_algo_info(lokr)}
    tensors = lokr_file_tensors(lokr, dtype, module_key)
    with claim_new_path(target) as written:
        atomic_save_safetensors(tensors, written, meta)
    return written
