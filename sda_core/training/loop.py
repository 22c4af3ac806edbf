"""The SDA training loop over plain denoiser callables: draw, roll out, loss, AdamW on the LoKr only.

All randomness of step s comes from a generator seeded from (config.seed, s): which prompt, the two
noise seeds, the schedule index k. A run stopped after any step and resumed from its checkpoint
therefore continues the identical loss curve. Non-finite steps are skipped (no optimiser step) and
counted; `max_bad_steps` of them in a row restore the last good weights and raise `TrainingDiverged`.
A stop (the caller's `should_stop`, or one of its `interrupts` raised anywhere inside a step: a forward,
a backward) drops the unfinished step whole and checkpoints the state after the last complete one. Any other
error (out of memory, a failing forward) does the same before it ends the run as `TrainingFault`.
Callers own grad mode: call from outside `torch.inference_mode()`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .checkpoint import Checkpoint, save_checkpoint
from .config import SDAConfig, SDAModels
from .loss import uses_diversity
from .trajectory import rollout
from .step import LossTerms, sda_loss
from .teacher_batch import Prepared, TeacherBatch

__all__ = ["train", "train_step", "make_optimizer", "TrainResult", "TrainingDiverged", "TeacherNotFinite", "TrainingFault",
           "LastGood", "StepDraw", "draw_step", "step_seed"]

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


def rollout_draw(models: SDAModels, config: SDAConfig, draw: StepDraw,
                 sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_t(z1) and x_t(z2) of `draw` on the student's own trajectory (x_t(z2) None on a pure-anchor step)."""
    conds = [models.conds[i] for i in draw.cond_indices]
    z1, z2 = draw.z1.to(models.device), draw.z2.to(models.device)
    zs = [z1, z2] if uses_diversity(draw.k, config.div_skip) else [z1]  # a pure-anchor step never reads z2
    # x_t on the trajectory users sample: the student (LoKr on) without the training-only assistant adapter
    assistant_off = models.assistant is not None and not config.rollout_with_assistant
    with models.assistant() if assistant_off else contextlib.nullcontext():
        x_t1, *x_t2 = rollout(models.student, zs, sigmas, draw.k, conds, models.batch_conds, config.noise_scale)
    return x_t1, (x_t2[0] if x_t2 else None)


def train_step(
    models: SDAModels,
    config: SDAConfig,
    draw: StepDraw,
    sigmas: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    prepared: Prepared | None = None,
) -> tuple[LossTerms, bool]:
    """One optimiser step on `draw`; skipped (returns ok=False) when the loss or gradient is non-finite.

    prepared: the step's x_t and teacher targets made ahead by a teacher batch; else they are made here.
    """
    conds = [models.conds[i] for i in draw.cond_indices]
    optimizer.zero_grad(set_to_none=True)
    if prepared is None:
        (x_t1, x_t2), teacher = rollout_draw(models, config, draw, sigmas), None
    else:
        x_t1, x_t2, teacher = prepared.x_t1, prepared.x_t2, prepared.teacher
    terms = sda_loss(models, config, x_t1, x_t2, float(sigmas[draw.k]), draw.k, conds, backward=True,
                     teacher=teacher)
    if not torch.isfinite(terms.total):
        return terms, False
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, max_norm)):
        return terms, False
    optimizer.step()
    return terms, True


def _rolled(models: SDAModels, config: SDAConfig, step: int, sigmas: torch.Tensor) -> tuple:
    """(k, conds, x_t1, x_t2) of step `step` rolled out now: a teacher batch's member."""
    draw = draw_step(config, step, len(models.conds))
    return (draw.k, [models.conds[i] for i in draw.cond_indices], *rollout_draw(models, config, draw, sigmas))


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps with no good full step between them; the LoKr holds the last good step's weights."""

    def __init__(self, message: str, step: int, last_good_step: int) -> None:
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step


class TeacherNotFinite(TrainingDiverged):
    """The teacher's predictions were non-finite on `max_bad_steps` steps in a row that used it: a broken teacher,
    not a training problem; nothing trained is worth saving."""


class TrainingFault(RuntimeError):
    """An error ended the run; the checkpoint (when the run writes one) and the LoKr hold the state after step
    `steps`, the last complete one. `__cause__` is the error."""

    def __init__(self, message: str, steps: int, checkpoint_path: str | None) -> None:
        super().__init__(message)
        self.steps = steps
        self.checkpoint_path = checkpoint_path


class LastGood:
    """The LoKr factors after the last good step, to undo an update found to overflow the weights; AdamW's state
    (moments, step count) is rolled back with them, so the next step does not count an update that never happened.

    The moments are rolled back by inverting AdamW's update of them from that step's gradients (still in .grad),
    exact to rounding: a second copy of both moments would cost two more LoKr sizes of device memory every step
    for an event that is rare.
    """

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.params, self.optimizer = params, optimizer
        self.weights = [p.detach().clone() for p in params]

    @torch.no_grad()
    def take(self) -> None:
        torch._foreach_copy_(self.weights, [p.detach() for p in self.params])

    @torch.no_grad()
    def restore_weights(self) -> None:
        """The factors of the last good step, AdamW's state as it is (an error stopped the step before its update)."""
        torch._foreach_copy_([p.detach() for p in self.params], self.weights)

    @torch.no_grad()
    def put_back(self) -> None:
        """Weights of the last good step; AdamW's state as before the update just made (call before zero_grad)."""
        torch._foreach_copy_([p.detach() for p in self.params], self.weights)
        for group in self.optimizer.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.optimizer.state.get(p)
                if not state or p.grad is None:
                    continue  # AdamW did not update this one
                if float(state["step"]) <= 1:
                    del self.optimizer.state[p]  # its first update: AdamW starts afresh next time
                    continue
                g = p.grad
                state["exp_avg"].sub_(g, alpha=1 - beta1).div_(beta1)
                state["exp_avg_sq"].addcmul_(g, g, value=-(1 - beta2)).div_(beta2).clamp_(min=0)
                state["step"] -= 1


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
    stopped: str | None = None  # where an interrupted run stopped, e.g. "during step 6: not applied, resume redoes it"


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
    interrupts: tuple[type[BaseException], ...] = (),
) -> TrainResult:
    """Train `models.lokr` with the SDA loss for `config.steps` steps (counting those of `resume`).

    on_step(step, entry): after each step (1-based), entry = {total, anchor, diversity, k, sigma,
    skipped}; non-finite values are None. should_stop(): polled before each step; when it returns
    true, a checkpoint is written (if `checkpoint_path`) and the result has interrupted=True.
    Checkpoints also go to `checkpoint_path` every `config.checkpoint_every` steps and at the end;
    checkpoint_extra() supplies the JSON `extra` each one carries (the caller's own resumable state).
    interrupts: exception types that mean "stop now" (ComfyUI's Cancel raises one inside model forwards).
    Raised inside a step, the step is dropped: no optimiser step happened, its gradients are cleared and
    the CPU RNG is put back, so the checkpoint is the state after the last complete step. Raised by
    on_step, the step is complete and kept. Either way the result has interrupted=True and `stopped` says where.
    """
    config.validate()
    models.validate(config)
    t0 = time.perf_counter()
    lokr = models.lokr
    params = list(lokr.named_tensors().values())
    for p in params:
        p.requires_grad_(True)
    optimizer = make_optimizer(params, config)
    sigmas = config.schedule()
    history: list[dict] = []
    start = 0
    if resume is not None:
        resume.restore(lokr, optimizer)
        for g in optimizer.param_groups:  # the config of THIS call rules (e.g. a changed lr)
            g["lr"], g["weight_decay"] = config.lr, config.weight_decay
        history = [dict(h) for h in resume.history]
        start = resume.step
        torch.set_rng_state(resume.rng_state)
    batch = TeacherBatch(config.teacher_batch) if config.teacher_batch > 1 else None
    if batch is not None and resume is not None and resume.pending:
        batch.restore(resume.pending, models.device)  # stopped inside a batch: its remaining steps as made
    last_good = LastGood(params, optimizer)
    last_good_step = start
    bad_streak = bad_total = teacher_streak = 0
    written: str | None = None

    def checkpoint(step: int) -> None:
        nonlocal written
        if checkpoint_path:
            extra = checkpoint_extra() if checkpoint_extra is not None else None
            ckpt = Checkpoint.capture(step, history, config.to_dict(), lokr, optimizer, extra=extra,
                                      pending=batch.state() if batch is not None else None)
            written = save_checkpoint(checkpoint_path, ckpt)

    def result(step: int, stopped: str | None = None) -> TrainResult:
        return TrainResult(
            steps=step, history=history, interrupted=stopped is not None, bad_steps=bad_total,
            checkpoint_path=written, elapsed_s=time.perf_counter() - t0,
            resumed_from=None if resume is None else resume.step, stopped=stopped,
        )

    def fault(step: int, where: str, error: BaseException) -> TrainingFault:
        """The state after `step` checkpointed (when possible) for an error raised `where`; the fault names the
        checkpoint only if this one was written."""
        optimizer.zero_grad(set_to_none=True)
        path = None
        try:
            checkpoint(step)
            path = written
        except Exception as exc:  # e.g. the disk is full: the error that ended the run stays the one reported
            log.warning("SDA: the checkpoint after step %d could not be written: %s", step, exc)
        return TrainingFault(f"{type(error).__name__} {where}: {error}", step, path)

    def checkpoint_or_fault(step: int) -> None:
        """A scheduled checkpoint; one that cannot be written ends the run as a fault (the LoKr is still saved)."""
        try:
            checkpoint(step)
        except Exception as exc:
            raise fault(step, f"writing the checkpoint after step {step}", exc) from exc

    def stop(step: int, where: str) -> TrainResult:
        optimizer.zero_grad(set_to_none=True)
        checkpoint_or_fault(step)
        return result(step, where)

    for step in range(start, config.steps):
        if should_stop is not None and should_stop():
            return stop(step, f"before step {step + 1}")
        draw = draw_step(config, step, len(models.conds))
        rng_before = torch.get_rng_state()
        try:
            prepared = None
            if batch is not None:  # a stop while the batch is made leaves it to be made again
                batch.prepare(models, config, sigmas, step, lambda s: _rolled(models, config, s, sigmas))
                prepared = batch.get(step)
            terms, ok = train_step(models, config, draw, sigmas, optimizer, params, prepared)
        except interrupts:
            torch.set_rng_state(rng_before)  # the dropped step never happened
            return stop(step, f"during step {step + 1}: not applied, resume redoes it")
        except Exception as exc:
            torch.set_rng_state(rng_before)
            last_good.restore_weights()  # an error inside optimizer.step may have left some factors updated
            raise fault(step, f"during step {step + 1}", exc) from exc
        if batch is not None:
            batch.done(step)
        if ok and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):  # one sync
            ok = False  # a finite step that overflowed the weights: undo it, AdamW's moments and count too
            last_good.put_back()
        entry = {
            "total": _finite(terms.total), "anchor": _finite(terms.anchor),
            "diversity": _finite(terms.diversity), "k": terms.k, "sigma": terms.sigma, "skipped": not ok,
        }
        history.append(entry)
        if terms.teacher_finite is not None:  # pure-anchor steps do not run the teacher: they leave the count
            teacher_streak = 0 if terms.teacher_finite else teacher_streak + 1
        if teacher_streak >= config.max_bad_steps:
            optimizer.zero_grad(set_to_none=True)
            raise TeacherNotFinite(
                f"the teacher's predictions were non-finite (NaN or inf) on {teacher_streak} steps in a row that use "
                f"it (up to step {step + 1}): the teacher is broken (NaN weights, or a dtype that overflows), so the "
                "diversity targets are garbage and nothing was trained toward them.",
                step=step + 1, last_good_step=last_good_step)
        if ok:
            last_good_step = step + 1
            last_good.take()
            if uses_diversity(terms.k, config.div_skip) or config.div_skip == 0:
                bad_streak = 0  # a pure-anchor step that succeeds says nothing about the failing diversity steps
        else:
            bad_streak += 1
            bad_total += 1
            log.warning("SDA step %d: non-finite loss, gradient or update; step skipped (%d since the last good "
                        "full step)", step + 1, bad_streak)
            if bad_streak >= config.max_bad_steps:
                # skipped steps never touched the weights and a non-finite update was undone above:
                # the LoKr already holds the weights of the last good step.
                optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(
                    f"SDA training diverged: {bad_streak} steps with a non-finite loss, gradient or update and no good "
                    f"step using every term between them (the last at step {step + 1}). The LoKr weights are those "
                    f"of step {last_good_step}, the last good one. Lower lr (now {config.lr:g}) or check the models "
                    "(dtype overflow, a broken teacher).",
                    step=step + 1,
                    last_good_step=last_good_step,
                )
        if on_step is not None:
            try:
                on_step(step + 1, dict(entry))
            except interrupts:
                return stop(step + 1, f"after step {step + 1}")
            except Exception as exc:
                raise fault(step + 1, f"after step {step + 1} (in the step's callback)", exc) from exc
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            checkpoint_or_fault(step + 1)

    final = max(start, config.steps)
    checkpoint_or_fault(final)
    optimizer.zero_grad(set_to_none=True)
    return result(final)
