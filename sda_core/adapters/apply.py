"""Adding deltas to a weight the way ComfyUI does (fp32 intermediate, cast back once), for checks and tests."""
from __future__ import annotations

from typing import Sequence

import torch

from .algorithms import AdapterModule, check_finite_delta


def apply_deltas(weight: torch.Tensor, patches: Sequence[tuple[AdapterModule, float]],
                 rows: tuple[int, int] | None = None) -> torch.Tensor:
    """`weight` with each strength·delta added in order in fp32 (on `rows` only, if given), cast back to its dtype."""
    out = weight.detach().to(torch.float32, copy=True)
    region = out if rows is None else out.narrow(0, int(rows[0]), int(rows[1]))
    for module, strength in patches:
        delta = module.delta(tuple(region.shape), dtype=torch.float32, device=out.device)
        change = delta.mul_(float(strength))
        check_finite_delta(change.to(weight.dtype), module.source, module.name, weight.dtype)
        region += change
    return out.to(weight.dtype)
