"""Atomic safetensors writes: a crash or a full disk never leaves a half-written file under the final name."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from ..atomic import atomic_path

__all__ = ["atomic_save_safetensors", "reserve_new_path"]


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views into shared storage; one contiguous CPU copy per tensor.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Write to a temp file in the same folder, then os.replace onto `path` (which is then complete or absent).

    Replaces whatever `path` holds: callers that must not overwrite claim a new name first (`reserve_new_path`).
    """
    with atomic_path(path) as tmp:
        save_file(_prepare(tensors), tmp, metadata=metadata)


def reserve_new_path(path: str) -> str:
    """Create an empty placeholder at `path`, or `stem_1.ext`, `stem_2.ext`…: the first name nobody holds.

    O_CREAT|O_EXCL makes the claim race-free, so two saves never write the same name.
    """
    stem, ext = os.path.splitext(path)
    n = 0
    while True:
        candidate = path if n == 0 else f"{stem}_{n}{ext}"
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return candidate
