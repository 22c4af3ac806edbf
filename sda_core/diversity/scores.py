"""Batch scores for seed diversity: what each number means is in DEFINITIONS.

The SDA card judges a model by two numbers over 16 seeds of one prompt: average pairwise LPIPS
(diversity) and pixel std (magnitude; a guard against the grey/blurry collapse of naive ODE
fine-tuning). Sharpness and the Vendi score are added as a second guard and a second view of
diversity.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .clip_score import DEFINITION as CLIP_SCORE_DEFINITION
from .images import prepare_images, validate_images
from .lpips_pairs import PairwiseLPIPS, avg_pairwise, offdiagonal

LUMA_601 = (0.299, 0.587, 0.114)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))

DEFINITIONS: dict[str, str] = {
    "avg_lpips": "Average pairwise LPIPS: mean of LPIPS(i, j) over all pairs i < j of the batch, images "
    "resized so the short side is 256 px (bilinear, antialiased) unless stated; higher = more diverse.",
    "pixel_std": "Pixel std: for each image, the population standard deviation (ddof = 0) of all its "
    "pixel values in [0, 1] over H, W and RGB; averaged over the images. Guards against grey/dark collapse.",
    "sharpness": "Sharpness: for each image, the population variance of the 3x3 Laplacian "
    "[[0,1,0],[1,-4,1],[0,1,0]] over the valid region (no padding) of its ITU-R 601 luma "
    "(0.299 R + 0.587 G + 0.114 B, [0, 1] scale, native resolution); averaged over the images. "
    "Guards against blur; compare it only at equal resolution.",
    "clip_score": CLIP_SCORE_DEFINITION,
    "vendi": "Vendi score: exp of the Shannon entropy of the eigenvalues of K/N, with kernel "
    "K_ij = exp(-LPIPS_ij / tau) (tau = 0.5 unless stated); the effective number of distinct images, "
    "1 for N identical images, N for N entirely different ones.",
    "recovery": "Recovery: (candidate - baseline) / (teacher - baseline) of average pairwise LPIPS; "
    "the share of the diversity lost by distillation that the candidate gets back. Shown only when the teacher "
    "is more diverse than the baseline by more than the scores' noise: teacher - baseline must exceed "
    "max(0.01, 2 x sqrt(SE_baseline^2 + SE_teacher^2)), else 'n/a' with the reason. SE is the jackknife "
    "standard error of a grid's avg LPIPS (leave one image out; pairs sharing an image are not independent, "
    "so the plain std/sqrt(pairs) would understate it; needs >= 3 images). The 0.01 floor keeps the 3-decimal "
    "LPIPS values of the table from moving the percentage by more than 10 points.",
}

RECOVERY_FLOOR = 0.01  # smallest teacher - baseline gap turned into a percentage (see DEFINITIONS)
RECOVERY_SIGMAS = 2.0  # the gap must exceed this many standard errors of the difference


def definitions_markdown() -> str:
    """DEFINITIONS as a Markdown bullet list, for reports and the README."""
    return "\n".join(f"- {text}" for text in DEFINITIONS.values())


def pixel_std(images: torch.Tensor) -> float:
    """Mean over images of each image's population std (ddof=0, numpy's default) of pixels in [0, 1]."""
    x = validate_images(images, what="pixel std").to("cpu", torch.float64)
    return float(x.flatten(1).std(dim=1, correction=0).mean())


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma [N, H, W] of an IMAGE batch, same scale as the input."""
    x = validate_images(images, what="luma").to("cpu", torch.float64)
    return (x * x.new_tensor(LUMA_601)).sum(dim=-1)


def sharpness(images: torch.Tensor) -> float:
    """Mean over images of the population variance of the Laplacian of the luma (valid region)."""
    grey = luma(images)
    if min(grey.shape[1:]) < 3:
        raise ValueError(f"sharpness needs images of at least 3x3 pixels, got {tuple(grey.shape[1:])}")
    kernel = grey.new_tensor(LAPLACIAN)[None, None]
    lap = F.conv2d(grey[:, None], kernel)  # no padding: valid region only
    return float(lap.flatten(1).var(dim=1, correction=0).mean())


def lpips_kernel(matrix: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Similarity kernel exp(-D / tau) from a pairwise LPIPS matrix (ones on the diagonal).

    LPIPS (spatial=False, non-negative heads) is a squared Euclidean distance between weighted
    feature vectors, so this is a Gaussian kernel and positive semi-definite, as Vendi requires.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return torch.exp(-torch.as_tensor(matrix, dtype=torch.float64) / tau)


def vendi_score(kernel: torch.Tensor | np.ndarray) -> float:
    """exp(Shannon entropy of the eigenvalues of K/N); negative round-off eigenvalues count as 0."""
    k = np.asarray(torch.as_tensor(kernel, dtype=torch.float64).cpu())
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < 1:
        raise ValueError(f"vendi_score needs a square kernel matrix, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("vendi_score: kernel has NaN/Inf entries")
    w = np.clip(np.linalg.eigvalsh(k / k.shape[0]), 0.0, None)
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


def jackknife_se(matrix: torch.Tensor) -> float | None:
    """Jackknife standard error of the average pairwise value of a square matrix (leave one image out).

    None for fewer than 3 images (leaving one out of 2 leaves no pair).
    """
    m = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    n = m.shape[0]
    if n < 3:
        return None
    off = m * (1 - torch.eye(n, dtype=torch.float64))
    total = off.sum() / 2
    row = off.sum(dim=1)  # the pairs each image is part of
    loo = (total - row) / ((n - 1) * (n - 2) / 2)
    return float(math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum())))


@dataclass(frozen=True)
class Recovery:
    """The recovery of one candidate, or why it is not given (value None, reason set)."""

    value: float | None
    reason: str = ""

    def text(self) -> str:
        return f"{self.value * 100:.1f} %" if self.value is not None else f"n/a ({self.reason})"


def recovery_threshold(baseline_se: float | None, teacher_se: float | None) -> float | None:
    """Smallest teacher - baseline gap worth a percentage; None when a grid's noise is unknown."""
    if baseline_se is None or teacher_se is None:
        return None
    return max(RECOVERY_FLOOR, RECOVERY_SIGMAS * math.hypot(baseline_se, teacher_se))


def recovery(baseline: float, candidate: float, teacher: float, baseline_se: float | None,
             teacher_se: float | None) -> Recovery:
    """(candidate - baseline) / (teacher - baseline) when the gap is above the noise, else n/a and why."""
    gap = teacher - baseline
    if gap <= 0:
        return Recovery(None, f"the teacher ({teacher:.3f}) is not more diverse than the baseline ({baseline:.3f}): "
                              "nothing lost to recover")
    threshold = recovery_threshold(baseline_se, teacher_se)
    if threshold is None:
        return Recovery(None, "a grid of 2 images has no noise estimate for its avg LPIPS; use 3 seeds or more")
    if gap <= threshold:
        return Recovery(None, f"teacher - baseline = {gap:.3g} is within the scores' noise (threshold "
                              f"{threshold:.3g})")
    return Recovery((candidate - baseline) / gap)


@dataclass
class DiversityScores:
    """All numbers for one batch (one model/setting), as reported in grids and tables."""

    avg_lpips: float
    pixel_std: float
    sharpness: float
    vendi: float
    n_images: int
    net: str
    resize: int | None
    tau: float
    lpips_min: float
    lpips_max: float
    lpips_mean: float
    lpips_std: float
    lpips_se: float | None  # jackknife standard error of avg_lpips (None below 3 images)

    def to_dict(self) -> dict:
        return asdict(self)


def score_batch(
    images: torch.Tensor, lpips_model: PairwiseLPIPS, resize_short_side: int | None = 256, tau: float = 0.5
) -> tuple[DiversityScores, torch.Tensor]:
    """Score an IMAGE batch; returns the scores and the [N, N] pairwise LPIPS matrix.

    LPIPS runs at `resize_short_side`; pixel std and sharpness on the images as given.
    """
    matrix = lpips_model.distances(prepare_images(images, resize_short_side))
    pairs = offdiagonal(matrix)
    scores = DiversityScores(
        avg_lpips=avg_pairwise(matrix),
        pixel_std=pixel_std(images),
        sharpness=sharpness(images),
        vendi=vendi_score(lpips_kernel(matrix, tau)),
        n_images=int(matrix.shape[0]),
        net=lpips_model.net_name,
        resize=resize_short_side,
        tau=tau,
        lpips_min=float(pairs.min()),
        lpips_max=float(pairs.max()),
        lpips_mean=float(pairs.mean()),
        lpips_std=float(pairs.std(correction=0)),
        lpips_se=jackknife_se(matrix),
    )
    return scores, matrix
