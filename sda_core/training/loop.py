"""The SDA training loop over plain denoiser callables: draw, roll out, loss, AdamW on the LoKr only.

All randomness of step s comes from a generator seeded from (config.seed, s): which prompt, the two
noise seeds, the schedule index k. A run stopped after any step and resumed from its checkpoint
therefore continues the identical loss curve. Non-finite steps are skipped (no optimiser step) and
counted; `max_bad_steps` of them in a row restore the last good weights and raise `TrainingDiverged`.
Callers own grad mode: call from outside `torch.inference_mode()`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .checkpoint import Checkpoint, save_checkpoint
from .config import SDAConfig, SDAModels
from .loss import uses_diversity
from .trajectory import flow_sigmas, rollout
from .step import LossTerms, sda_loss

__all__ = ["train", "train_step", "make_optimizer", "TrainResult", "TrainingDiverged", "StepDraw", "draw_step", "step_seed"]

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed for (run seed, step) (splitmix64), so neighbouring runs don't share draws."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(step) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass
class StepDraw:
    """The random choices of one step: prompt per row, the two noise seeds, schedule index k, noises."""

    cond_indices: list[int]
    seeds: tuple[int, int]
    k: int
    z1: torch.Tensor
    z2: torch.Tensor


def draw_step(config: SDAConfig, step: int, n_conds: int) -> StepDraw:
    """Draw step `step`'s randomness from its own generator (CPU; ComfyUI also draws noise on the CPU)."""
    g = torch.Generator().manual_seed(step_seed(config.seed, step))
    cond_indices = torch.randint(0, n_conds, (config.batch,), generator=g).tolist()
    s1, s2 = torch.randint(0, 2**62, (2,), generator=g).tolist()
    if s2 == s1:
        s2 = s1 + 1
    k = int(torch.randint(0, config.student_steps, (1,), generator=g))
    shape = (config.batch, *config.latent_shape)
    z1 = torch.randn(shape, generator=torch.Generator().manual_seed(s1))
    z2 = torch.randn(shape, generator=torch.Generator().manual_seed(s2))
    return StepDraw(cond_indices, (s1, s2), k, z1, z2)


def make_optimizer(params: list[torch.Tensor], config: SDAConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay 0.001 by default) over the LoKr factors only, as the card trains."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def train_step(
    models: SDAModels,
    config: SDAConfig,
    draw: StepDraw,
    sigmas: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
) -> tuple[LossTerms, bool]:
    """One optimiser step on `draw`; skipped (returns ok=False) when the loss or gradient is non-finite."""
    conds = [models.conds[i] for i in draw.cond_indices]
    z1, z2 = draw.z1.to(models.device), draw.z2.to(models.device)
    optimizer.zero_grad(set_to_none=True)
    zs = [z1, z2] if uses_diversity(draw.k, config.div_skip) else [z1]  # a pure-anchor step never reads z2
    x_t1, *x_t2 = rollout(models.student, zs, sigmas, draw.k, conds, models.batch_conds)
    x_t2 = x_t2[0] if x_t2 else None
    terms = sda_loss(models, config, x_t1, x_t2, float(sigmas[draw.k]), draw.k, conds, backward=True)
    if not torch.isfinite(terms.total):
        return terms, False
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, max_norm)):
        return terms, False
    optimizer.step()
    return terms, True


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the LoKr holds the weights of the last good step."""

    def __init__(self, message: str, step: int, last_good_step: int) -> None:
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step


@dataclass
class TrainResult:
    """What a run did. `history[i]` describes step i+1 (1-based, like `steps`)."""

    steps: int
    history: list[dict]
    interrupted: bool = False
    bad_steps: int = 0
    checkpoint_path: str | None = None
    elapsed_s: float = 0.0
    resumed_from: int | None = None


def _finite(x: torch.Tensor | float | None) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def train(
    models: SDAModels,
    config: SDAConfig,
    *,
    on_step: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: Checkpoint | None = None,
    checkpoint_path: str | None = None,
    checkpoint_extra: Callable[[], dict] | None = None,
) -> TrainResult:
    """Train `models.lokr` with the SDA loss for `config.steps` steps (counting those of `resume`).

    on_step(step, entry): after each step (1-based), entry = {total, anchor, diversity, k, sigma,
    skipped}; non-finite values are None. should_stop(): polled before each step; when it returns
    true, a checkpoint is written (if `checkpoint_path`) and the result has interrupted=True.
    Checkpoints also go to `checkpoint_path` every `config.checkpoint_every` steps and at the end;
    checkpoint_extra() supplies the JSON `extra` each one carries (the caller's own resumable state).
    """
    config.validate()
    models.validate(config)
    t0 = time.perf_counter()
    lokr = models.lokr
    params = list(lokr.named_tensors().values())
    for p in params:
        p.requires_grad_(True)
    optimizer = make_optimizer(params, config)
    sigmas = flow_sigmas(config.student_steps, config.shift)
    history: list[dict] = []
    start = 0
    if resume is not None:
        resume.restore(lokr, optimizer)
        for g in optimizer.param_groups:  # the config of THIS call rules (e.g. a changed lr)
            g["lr"], g["weight_decay"] = config.lr, config.weight_decay
        history = [dict(h) for h in resume.history]
        start = resume.step
        torch.set_rng_state(resume.rng_state)
    last_good = [p.detach().clone() for p in params]
    last_good_step = start
    bad_streak = bad_total = 0
    written: str | None = None

    def checkpoint(step: int) -> None:
        nonlocal written
        if checkpoint_path:
            extra = checkpoint_extra() if checkpoint_extra is not None else None
            ckpt = Checkpoint.capture(step, history, config.to_dict(), lokr, optimizer, extra=extra)
            written = save_checkpoint(checkpoint_path, ckpt)

    def result(step: int, interrupted: bool) -> TrainResult:
        return TrainResult(
            steps=step, history=history, interrupted=interrupted, bad_steps=bad_total,
            checkpoint_path=written, elapsed_s=time.perf_counter() - t0,
            resumed_from=None if resume is None else resume.step,
        )

    for step in range(start, config.steps):
        if should_stop is not None and should_stop():
            checkpoint(step)
            return result(step, True)
        draw = draw_step(config, step, len(models.conds))
        terms, ok = train_step(models, config, draw, sigmas, optimizer, params)
        if ok and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):  # one sync
            ok = False  # a finite step that overflowed the weights: undo it
            with torch.no_grad():
                for p, good in zip(params, last_good):
                    p.copy_(good)
        entry = {
            "total": _finite(terms.total), "anchor": _finite(terms.anchor),
            "diversity": _finite(terms.diversity), "k": terms.k, "sigma": terms.sigma, "skipped": not ok,
        }
        history.append(entry)
        if ok:
            bad_streak = 0
            last_good_step = step + 1
            with torch.no_grad():
                for p, good in zip(params, last_good):
                    good.copy_(p)
        else:
            bad_streak += 1
            bad_total += 1
            log.warning("SDA step %d: non-finite loss, gradient or update; step skipped (%d in a row)",
                        step + 1, bad_streak)
            if bad_streak >= config.max_bad_steps:
                # skipped steps never touched the weights and a non-finite update was undone above:
                # the LoKr already holds the weights of the last good step.
                optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(
                    f"SDA training diverged: {bad_streak} consecutive steps with a non-finite loss, gradient or update "
                    f"(steps {step + 2 - bad_streak}-{step + 1}). The LoKr weights were restored to step "
                    f"{last_good_step}, the last good one. Lower lr (now {config.lr:g}) or check the models "
                    "(dtype overflow, a broken teacher).",
                    step=step + 1,
                    last_good_step=last_good_step,
                )
        if on_step is not None:
            on_step(step + 1, dict(entry))
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            checkpoint(step + 1)

    final = max(start, config.steps)
    checkpoint(final)
    optimizer.zero_grad(set_to_none=True)
    return result(final, False)
