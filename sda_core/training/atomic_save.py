"""Atomic safetensors writes (see `sda_core.atomic`)."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from ..atomic import atomic_path

__all__ = ["atomic_save_safetensors"]


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views into shared storage; one contiguous CPU copy per tensor.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Write to a temp file in the same folder, then os.replace onto `path` (which is then complete or absent).

    Replaces whatever `path` holds: callers that must not overwrite claim a new name first (`reserve_new_path`).
    """
    with atomic_path(path) as tmp:
        save_file(_prepare(tensors), tmp, metadata=metadata)
