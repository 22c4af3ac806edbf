"""Teacher targets made for K steps at once (`SDAConfig.teacher_batch`), for a teacher that is swapped in.

A teacher that does not fit beside the student is loaded for its forwards and freed before the student's next
one: a residency swap (moving and patching the teacher's weights) on every step that uses it. With K > 1 the
x_t of the next K steps (batches start at multiples of K) are rolled out with the current LoKr, the teacher
runs ONCE over all of them (per-row sigma and cond), and the K optimiser steps then train on those: one swap
per K steps. The price: step s of a batch trains on x_t and teacher targets made before the batch's first
update, i.e. up to K - 1 updates old.

A stop inside a batch keeps its remaining steps' x_t and targets (`state`), so a checkpoint written there
resumes the very same curve (`restore`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import SDAConfig, SDAModels
from .loss import uses_diversity
from .step import teacher_x0

__all__ = ["Prepared", "TeacherBatch"]

_FIELDS = ("x_t1", "x_t2", "x0_t1", "x0_t2")


@dataclass
class Prepared:
    """One step's inputs made ahead: x_t(z1), x_t(z2) (None on a pure-anchor step) and the teacher's x0 there."""

    x_t1: torch.Tensor
    x_t2: torch.Tensor | None
    teacher: tuple[torch.Tensor, torch.Tensor] | None


class TeacherBatch:
    """The pending steps of the current batch (made by `prepare`, read by `get`, dropped by `done`)."""

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError(f"a teacher batch needs K >= 2, got {size}")
        self.size = size
        self.pending: dict[int, Prepared] = {}

    def get(self, step: int) -> Prepared:
        return self.pending[step]

    def prepare(self, models: SDAModels, config: SDAConfig, sigmas: torch.Tensor, step: int,
                rollout: Callable[[int], tuple[int, list, torch.Tensor, torch.Tensor | None]]) -> None:
        """Make steps step .. (end of its batch) when `step` is not pending: rollouts, then ONE teacher forward.

        rollout(s) -> (k, conds, x_t1, x_t2 or None) for step s, with the current LoKr.
        """
        if step in self.pending:
            return
        end = min((step // self.size + 1) * self.size, config.steps)
        rolled = {s: rollout(s) for s in range(step, end)}
        made = {s: Prepared(x1, x2, None) for s, (_, _, x1, x2) in rolled.items()}
        used = [s for s, (k, _, _, x2) in rolled.items() if x2 is not None and uses_diversity(k, config.div_skip)]
        if used:
            self._teacher(models, config, sigmas, rolled, used, made)
        self.pending = made  # only once whole: a stop while making it leaves the batch to be made again

    @staticmethod
    def _teacher(models: SDAModels, config: SDAConfig, sigmas: torch.Tensor, rolled: dict, used: list[int],
                 made: dict[int, Prepared]) -> None:
        """One teacher forward over every used step's rows (each with its own sigma and cond)."""
        x1 = torch.cat([rolled[s][2] for s in used], dim=0)
        x2 = torch.cat([rolled[s][3] for s in used], dim=0)
        sig = torch.cat([torch.full((rolled[s][2].shape[0],), float(sigmas[rolled[s][0]])) for s in used])
        conds = [c for s in used for c in rolled[s][1]]
        x0_1, x0_2 = teacher_x0(models, [x1, x2], torch.cat([sig, sig]), conds, config.teacher_cfg)
        rows = [rolled[s][2].shape[0] for s in used]
        for s, a, b in zip(used, x0_1.split(rows), x0_2.split(rows)):
            made[s].teacher = (a, b)

    def done(self, step: int) -> None:
        self.pending.pop(step, None)

    def state(self) -> dict[str, torch.Tensor]:
        """The pending steps as flat tensors for a checkpoint: `<step>.<field>`."""
        out = {}
        for s, p in self.pending.items():
            values = (p.x_t1, p.x_t2, *(p.teacher or (None, None)))
            out.update({f"{s}.{name}": v for name, v in zip(_FIELDS, values) if v is not None})
        return out

    def restore(self, tensors: dict[str, torch.Tensor], device) -> None:
        """Pending steps back from `state()`'s tensors (a checkpoint written inside a batch)."""
        steps: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            s, _, name = key.partition(".")
            steps.setdefault(int(s), {})[name] = t.to(device)
        self.pending = {}
        for s, f in steps.items():
            teacher = (f["x0_t1"], f["x0_t2"]) if "x0_t1" in f else None
            self.pending[s] = Prepared(f["x_t1"], f.get("x_t2"), teacher)
