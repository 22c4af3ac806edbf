"""Finding and loading the ImageNet backbone that LPIPS needs, without silent fallbacks.

The `lpips` package ships its small linear heads but takes the backbone (AlexNet, VGG16 or
SqueezeNet 1.1) from torchvision, which downloads it on first use. Offline that download fails,
and a random backbone would give plausible-looking but meaningless scores, so this module looks
in known places and otherwise raises `LPIPSWeightsError` saying exactly which file goes where.

Search order for `load_lpips(net, search_dirs)`:
  1. each folder of `search_dirs` (the node layer passes ComfyUI's `models/lpips/`), for the
     torchvision file name or its `.safetensors` twin (same keys as torchvision's state dict):
        alex    -> alexnet-owt-7be5be79.pth    or alexnet.safetensors
        vgg     -> vgg16-397923af.pth          or vgg16.safetensors
        squeeze -> squeezenet1_1-b8a52dc0.pth  or squeezenet1_1.safetensors
  2. torchvision's cache, `$TORCH_HOME/hub/checkpoints/<torchvision file name>`;
  3. torchvision's download URL (hash-checked, with a timeout, lands in that cache).
`.pth` files are read with `torch.load(weights_only=True)` only: no pickled code runs.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lpips
import torch

from ..atomic import atomic_path


class LPIPSWeightsError(RuntimeError):
    """The LPIPS backbone weights could not be found or read."""


@dataclass(frozen=True)
class Backbone:
    """Where one torchvision backbone comes from."""

    torchvision_name: str
    pth: str
    safetensors: str

    @property
    def url(self) -> str:
        return f"https://download.pytorch.org/models/{self.pth}"


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone("AlexNet", "alexnet-owt-7be5be79.pth", "alexnet.safetensors"),
    "vgg": Backbone("VGG16", "vgg16-397923af.pth", "vgg16.safetensors"),
    "squeeze": Backbone("SqueezeNet 1.1", "squeezenet1_1-b8a52dc0.pth", "squeezenet1_1.safetensors"),
}

_CACHE: dict[tuple, lpips.LPIPS] = {}
Folders = Sequence[str | os.PathLike] | str | os.PathLike  # one folder may be given bare


def _backbone(net: str) -> Backbone:
    if net not in BACKBONES:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[net]


def _folders(search_dirs: Folders) -> list[str | os.PathLike]:
    """search_dirs as a list; one folder passed bare would otherwise be iterated letter by letter."""
    return [search_dirs] if isinstance(search_dirs, (str, os.PathLike)) else list(search_dirs)


def hub_checkpoint_path(net: str) -> Path:
    """Where torchvision caches (and looks for) this backbone: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _backbone(net).pth


def find_backbone_file(net: str, search_dirs: Folders = ()) -> Path | None:
    """First existing backbone file: search_dirs (.safetensors, then .pth), then the hub cache."""
    bb = _backbone(net)
    for folder in _folders(search_dirs):
        for name in (bb.safetensors, bb.pth):
            path = Path(folder) / name
            if path.is_file():
                return path
    cached = hub_checkpoint_path(net)
    return cached if cached.is_file() else None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth file (the latter with weights_only=True)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled code, truncated download...
        raise LPIPSWeightsError(f"cannot read LPIPS backbone weights {path}: {e}") from e
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _missing_message(net: str, search_dirs: Folders, reason: str) -> str:
    bb = _backbone(net)
    places = [str(Path(d)) for d in _folders(search_dirs)] + [str(hub_checkpoint_path(net).parent)]
    return (
        f"LPIPS '{net}' needs the torchvision {bb.torchvision_name} backbone weights and none were found "
        f"({reason}). Put {bb.pth} (or {bb.safetensors} with the same keys) into one of: "
        + "; ".join(places)
        + f". Get it from {bb.url} . Random weights are never used instead."
    )


DOWNLOAD_TIMEOUT_S = 30.0
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")  # torchvision names its files <name>-<sha256 prefix>.pth


def download_state_dict(
    net: str,
    search_dirs: Folders = (),
    *,
    url: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> dict[str, torch.Tensor]:
    """torchvision's file into its hub cache, hash-checked and atomic, or LPIPSWeightsError.

    Unlike torch.hub's download this one has a `timeout` (seconds without a byte): behind a firewall that
    drops packets, a node would otherwise wait for ever instead of saying where to put the file.
    """
    url = url or _backbone(net).url
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
    try:
        _fetch(url, dest, timeout)
    except Exception as e:
        reason = f"no file found and the download of {url} failed, probably offline: {type(e).__name__}: {e}"
        raise LPIPSWeightsError(_missing_message(net, search_dirs, reason)) from e
    return read_state_dict(dest)


def _fetch(url: str, dest: Path, timeout: float) -> None:
    expected = _HASH_IN_NAME.search(dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise ValueError(f"sha256 {digest.hexdigest()[:12]}… does not match the {expected.group(1)} in its name")


def load_backbone(model: lpips.LPIPS, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy a torchvision `features.*` state dict into lpips' sliced copy of the same layers.

    lpips splits `features` into `slice1..sliceK` but keeps each layer's torchvision index as its
    name (`slice2.3.weight` is `features.3.weight`), so the mapping is a rename.
    """
    target = model.net.state_dict()
    mapped, missing, wrong = {}, [], []
    for key, param in target.items():
        src = "features." + key.split(".", 1)[1]
        if src not in state:
            missing.append(src)
        elif tuple(state[src].shape) != tuple(param.shape):
            wrong.append(f"{src} {tuple(state[src].shape)} != {tuple(param.shape)}")
        else:
            mapped[key] = state[src]
    if missing or wrong:
        raise LPIPSWeightsError(
            f"{source} does not look like torchvision's {model.pnet_type} weights: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(wrong)} shape mismatch(es) {wrong[:3]}"
        )
    model.net.load_state_dict(mapped, strict=True)


def build_lpips(net: str) -> lpips.LPIPS:
    """lpips.LPIPS with the package's calibrated heads and an as-yet random backbone (no download)."""
    _backbone(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)


def load_lpips(
    net: str = "alex",
    search_dirs: Folders = (),
    *,
    device: torch.device | str | None = None,
    allow_download: bool = True,
) -> lpips.LPIPS:
    """LPIPS model with real backbone weights, frozen and in eval mode.

    Cached per (net, device, file) and shared between callers: do not modify it. Raises
    LPIPSWeightsError when no file is found and the download fails, times out or is not allowed.
    """
    device = torch.device(device if device is not None else "cpu")
    path = find_backbone_file(net, search_dirs)
    key = (net, str(device), str(path), path.stat().st_mtime_ns if path else None)
    if key in _CACHE:
        return _CACHE[key]
    if path:
        state = read_state_dict(path)
    elif allow_download:
        state = download_state_dict(net, search_dirs)
    else:
        raise LPIPSWeightsError(_missing_message(net, search_dirs, "no file found and downloads are off"))
    model = build_lpips(net)
    load_backbone(model, state, source=str(path) if path else _backbone(net).url)
    model = model.to(device).eval().requires_grad_(False)
    _CACHE[key] = model
    return model


def clear_cache() -> None:
    """Forget cached models (tests; or after replacing a weights file in place)."""
    _CACHE.clear()
