"""Reading adapter files: safetensors only, validated before anything trusts them.

Pickled checkpoints can run code when unpickled, so they are refused by extension and by their magic bytes.
A damaged safetensors file (empty, cut short, not safetensors at all) gets a message saying which, instead
of a low-level parser error; non-finite values are caught here because one NaN in a factor turns every
image black far from the cause.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import torch
from safetensors.torch import load_file

from ..paths import PathEscapes, path_inside
from .errors import AdapterError, AdapterFileMissing

PICKLE_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
# safetensors itself refuses headers above 100 MB; a larger length means the bytes are not a header.
MAX_HEADER_BYTES = 100_000_000
_CONVERT_HINT = ("convert it to .safetensors (for example `safetensors.torch.save_file(torch.load(path, "
                 "weights_only=True), 'out.safetensors')` in a trusted environment) and load that")


def read_safetensors(path: str | os.PathLike, *, label: str | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, after checking it is one, complete, and finite."""
    path = os.fspath(path)
    label = label or os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTENSIONS:
        raise AdapterError(f"{label}: {ext} files are pickled PyTorch checkpoints, which can run code when "
                           f"loaded, so they are refused; {_CONVERT_HINT}")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(9)
            header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
            _check_head(label, head, size, header_len)
            raw_header = head[8:] + f.read(header_len - 1)  # the header's first byte came with `head`
    except OSError as exc:
        raise AdapterError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    header = _parse_header(label, raw_header)
    _check_data_size(label, header, size - 8 - header_len)
    metadata = header.get("__metadata__")
    metadata = metadata if isinstance(metadata, dict) else {}
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types; all mean "unreadable"
        raise AdapterError(f"{label}: not a readable safetensors file ({exc})") from None
    check_finite(tensors, label)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _check_head(label: str, head: bytes, size: int, header_len: int) -> None:
    if size == 0:
        raise AdapterError(f"{label}: the file is empty (0 bytes); an interrupted download or copy? "
                           "Download it again.")
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise AdapterError(f"{label}: this is a pickled PyTorch checkpoint (torch.save format), not a "
                           f"safetensors file; pickles can run code when loaded, so it is refused; {_CONVERT_HINT}")
    if len(head) < 9 or head[8:9] != b"{" or header_len > MAX_HEADER_BYTES or header_len < 2:
        raise AdapterError(f"{label}: not a safetensors file (it does not start with a safetensors header); "
                           "adapters must be .safetensors files")
    if 8 + header_len > size:
        raise AdapterError(f"{label}: the file is truncated: its safetensors header alone should be "
                           f"{header_len} bytes but the file has {size} bytes in all; download it again")


def _parse_header(label: str, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{label}: not a safetensors file (its header is not valid JSON); "
                           "adapters must be .safetensors files") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{label}: not a safetensors file (its header is not a JSON object)")
    return header


def _check_data_size(label: str, header: dict, available: int) -> None:
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            needed = max(needed, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise AdapterError(f"{label}: not a valid safetensors file (entry {name!r} has no data offsets)") from None
    if needed > available:
        raise AdapterError(f"{label}: the file is truncated: its header describes {needed} bytes of tensor data "
                           f"but only {available} are present; download it again")


def check_finite(tensors: Mapping[str, torch.Tensor], label: str) -> None:
    """AdapterError naming the tensors that hold NaN or Inf."""
    bad = []
    for name in sorted(tensors):
        t = tensors[name]
        if not torch.is_tensor(t) or not t.is_floating_point() or t.numel() == 0:
            continue
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            t = t.float()  # fp8 and friends: isfinite is not implemented for every one of them
        if bool(torch.isfinite(t).all()):
            continue
        kinds = []
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        if n_nan:
            kinds.append(f"{n_nan} NaN")
        if n_inf:
            kinds.append(f"{n_inf} Inf")
        bad.append(f"{name!r} ({' and '.join(kinds)} of {t.numel()} values)")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
        raise AdapterError(f"{label}: non-finite values in tensor {shown}; the file is damaged or the "
                           "training diverged, and it would turn every image black")


def resolve_in_folder(root: str, name: str) -> str:
    """`name` (a widget's file name) joined onto the models folder `root`, refused if it leaves that folder."""
    try:
        real = path_inside(root, name)
    except PathEscapes as exc:
        raise AdapterError(str(exc)) from None
    if not os.path.isfile(real):
        raise AdapterFileMissing(f"{name}: no such file in {root}")
    return real
