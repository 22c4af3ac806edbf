"""All-pairs LPIPS for a batch with one backbone pass per image.

`lpips.LPIPS` compares two images at a time, so N images cost N(N-1) backbone passes. Its distance
is, per layer l, mean_hw sum_c w_lc (f_ic - f_jc)^2 over unit-normalised features f, which expands
into a weighted Gram matrix:  d_ij = a_i + a_j - 2 G_ij  with  G_ij = mean_hw sum_c w_c f_ic f_jc
and a_i = G_ii.  Running the backbone once per image and summing the per-layer Grams gives every
pair exactly (to float rounding) what the package gives pair by pair.
"""
from __future__ import annotations

import lpips
import torch

from .images import prepare_images, stack_images

__all__ = ["PairwiseLPIPS", "prepare_images", "stack_images", "avg_pairwise", "offdiagonal"]

# Feature values per float32 Gram product; the products are accumulated in float64. BLAS sums a
# thin product (few images) almost sequentially, so short runs keep its float32 rounding small;
# wide products are summed in blocks and long runs keep them fast.
GRAM_RUN_FEW, GRAM_RUN_MANY, MANY_IMAGES = 4096, 262144, 32


class PairwiseLPIPS(torch.nn.Module):
    """Pairwise LPIPS matrix of an IMAGE batch, equal to `lpips.LPIPS()(img_i, img_j)` per pair.

    Wraps a given `lpips.LPIPS` (so callers choose the backbone and its weights); only the default
    `spatial=False` form is supported. Dropout in the heads is ignored, i.e. eval-mode semantics.
    """

    def __init__(self, model: lpips.LPIPS, batch_size: int = 8) -> None:
        super().__init__()
        if getattr(model, "spatial", False):
            raise ValueError("PairwiseLPIPS supports only lpips.LPIPS(spatial=False)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size

    @property
    def net_name(self) -> str:
        """Backbone name as lpips calls it: 'alex', 'vgg' or 'squeeze'."""
        return str(self.model.pnet_type)

    @property
    def device(self) -> torch.device:
        return next(self.model.net.parameters()).device

    def forward(self, images: torch.Tensor, resize_short_side: int | None = 256) -> torch.Tensor:
        """ComfyUI IMAGE [N, H, W, C] in [0, 1] -> symmetric [N, N] float64 matrix, zero diagonal."""
        return self.distances(prepare_images(images, resize_short_side))

    @torch.no_grad()
    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Pairwise matrix for prepared inputs [N, 3, H, W] in [-1, 1] (see `prepare_images`)."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] < 2:
            raise ValueError(f"expected prepared images [N>=2, 3, H, W], got {tuple(x.shape)}")
        n = x.shape[0]
        total = torch.zeros(n, n, dtype=torch.float64)
        weights = self.layer_weights()
        for feats, weight in zip(self.features(x), weights):
            total += self._layer_distances(feats, weight.to(feats.device))
        total = (total + total.T) / 2
        if all(bool((w >= 0).all()) for w in weights):
            total.clamp_(min=0)  # round-off only; uncalibrated signed heads can truly go negative
        total.fill_diagonal_(0.0)
        return total

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised backbone features per layer, [N, C, H*W]; one pass per image, in chunks."""
        layers: list[torch.Tensor] = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size].to(self.device, torch.float32)
            if self.model.version == "0.1":
                chunk = self.model.scaling_layer(chunk)
            outs = self.model.net(chunk)
            if not layers:
                layers = [out.new_empty(x.shape[0], out.shape[1], out.shape[2] * out.shape[3]) for out in outs]
            for store, out in zip(layers, outs):
                store[start : start + out.shape[0]] = lpips.normalize_tensor(out).flatten(2)
        return layers

    def layer_weights(self) -> list[torch.Tensor]:
        """Per-layer channel weights w_lc: the 1x1 heads, or ones for the `lpips=False` baseline."""
        if self.model.lpips:
            return [lin.model[-1].weight.detach().flatten() for lin in self.model.lins]
        return [torch.ones(c, device=self.device) for c in self.model.chns]

    def _layer_distances(self, feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """mean_hw sum_c w_c (f_i - f_j)^2 for all pairs from one weighted Gram matrix (consumes feats).

        Features are centred on the batch mean (the distance is shift-invariant; centring keeps
        a_i + a_j - 2 G_ij from cancelling) and scaled in place by sqrt(|w_c| / HW), so the Gram
        is z z^T, summed over runs of feature values: float32 products within a run
        (float32 speed; GPUs are slow at float64 and MPS has none), float64 across runs, which
        keeps rounding to ~1e-8 of the package's values.
        """
        n, c, hw = feats.shape
        feats -= feats.mean(dim=0, keepdim=True)
        feats *= (weight.abs() / hw).sqrt()[None, :, None]
        z = feats.flatten(1)
        signs = None if bool((weight >= 0).all()) else weight.sign().repeat_interleave(hw)
        on = torch.device("cpu") if z.device.type == "mps" else z.device  # where float64 exists
        gram = torch.zeros(n, n, dtype=torch.float64, device=on)
        run = GRAM_RUN_MANY if n >= MANY_IMAGES else GRAM_RUN_FEW
        for k in range(0, z.shape[1], run):
            right = z[:, k : k + run]
            left = right if signs is None else right * signs[k : k + run]
            gram += (left @ right.T).to(on, torch.float64)
        gram = gram.cpu()
        diag = gram.diagonal()
        return diag[:, None] + diag[None, :] - 2 * gram


def offdiagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The N(N-1)/2 entries above the diagonal of a square pairwise matrix."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"expected a square pairwise matrix with N >= 2, got {tuple(matrix.shape)}")
    i, j = torch.triu_indices(matrix.shape[0], matrix.shape[1], offset=1)
    return matrix[i, j]


def avg_pairwise(matrix: torch.Tensor) -> float:
    """Mean over pairs i < j: the 'avg pairwise LPIPS' diversity number of the SDA card."""
    return float(offdiagonal(matrix).double().mean())
