"""Checking and preparing ComfyUI IMAGE batches for the diversity metrics.

ComfyUI hands images over as float tensors [N, H, W, C] in [0, 1]. Every metric in this package
goes through `validate_images` first, so a bad batch fails with one clear message instead of a
shape error deep inside a backbone.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# Below this the LPIPS backbones run out of spatial extent (AlexNet's stride-4 stem and pools).
MIN_SIDE = 32


def validate_images(images: torch.Tensor, *, min_images: int = 1, what: str = "this metric") -> torch.Tensor:
    """Return `images` as float [N, H, W, 3], or raise ValueError saying what is wrong.

    One channel is repeated to three (greyscale is unambiguous); any other channel count is refused,
    because silently dropping an alpha channel would score something the user did not see.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} expects an IMAGE tensor [N, H, W, C], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"{what} expects an IMAGE batch shaped [N, H, W, C], got {images.dim()}-D shape {tuple(images.shape)}"
        )
    n, h, w, c = images.shape
    if c == 1:
        images = images.expand(n, h, w, 3)
    elif c != 3:
        raise ValueError(
            f"{what} needs RGB images (3 channels, or 1 for greyscale); got {c} channels "
            f"in shape {tuple(images.shape)}" + (" — drop the alpha channel first" if c == 4 else "")
        )
    if n < min_images:
        raise ValueError(f"{what} needs at least {min_images} images, got {n}")
    if not images.is_floating_point():
        raise ValueError(f"{what} expects float pixels in [0, 1], got dtype {images.dtype}")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ValueError(f"{what}: {bad} pixel value(s) are NaN or Inf; the images are broken upstream")
    return images


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate IMAGE tensors ([H, W, C] or [n, H, W, C]) into one batch.

    One tensor cannot hold mixed sizes, so this is where mixed sizes are caught and reported.
    """
    if len(images) == 0:
        raise ValueError("stack_images got an empty list")
    batches = []
    for k, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4):
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"image {k}: expected [H, W, C] or [N, H, W, C], got {shape}")
        batches.append(img.unsqueeze(0) if img.dim() == 3 else img)
    sizes = {tuple(b.shape[1:]) for b in batches}
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}x{c}" for h, w, c in sorted(sizes))
        raise ValueError(
            f"cannot stack images of mixed sizes (H x W x C: {listed}); resize them to one size first"
        )
    return torch.cat(batches, dim=0)


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side equal to `short_side` and the aspect ratio kept."""
    scale = short_side / min(height, width)
    if height <= width:
        return short_side, max(1, round(width * scale))
    return max(1, round(height * scale)), short_side


def prepare_images(images: torch.Tensor, resize_short_side: int | None = 256) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, C] in [0, 1] -> LPIPS input [N, 3, H', W'] in [-1, 1].

    Resizing to a common short side (256 by default, bilinear with antialiasing) makes scores
    comparable across resolutions; None keeps the native size. Pixels are not clamped, so the
    result is exactly what `lpips.LPIPS(normalize=True)` would see for the same pixels.
    """
    images = validate_images(images, min_images=2, what="LPIPS pairwise diversity")
    x = images.permute(0, 3, 1, 2).float()
    if resize_short_side is not None:
        if resize_short_side < MIN_SIDE:
            raise ValueError(f"resize_short_side must be at least {MIN_SIDE}, got {resize_short_side}")
        size = resized_size(x.shape[2], x.shape[3], resize_short_side)
        if size != tuple(x.shape[2:]):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    if min(x.shape[2:]) < MIN_SIDE:
        raise ValueError(
            f"images of {x.shape[2]}x{x.shape[3]} are too small for LPIPS (short side >= {MIN_SIDE})"
        )
    return x * 2 - 1

