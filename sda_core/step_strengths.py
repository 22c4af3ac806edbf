"""Adapter strength by sampling step: parse what the user typed, resolve it per step, find the step of a sigma.

A step is an index into the sampler's own sigma schedule (sigmas[0] > … > sigmas[n], n steps). Samplers that
call the model between two schedule sigmas (Heun, DPM-2, …) use the step whose interval holds that sigma.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adapters import AdapterModule, check_finite_delta
from .stack import check_strength


class ScheduleError(ValueError):
    """A schedule widget holds something that is not a schedule; the message names the widget."""


def parse_step_strengths(text: str, widget: str = "step_strengths") -> list[float] | None:
    """'1,1,0.5,0' → [1.0, 1.0, 0.5, 0.0]; empty → None (use the window). Spaces and a trailing comma are fine."""
    text = (text or "").strip()
    if not text:
        return None
    items = [item.strip() for item in text.replace(";", ",").split(",")]
    if items and items[-1] == "":
        items.pop()
    values = []
    for position, item in enumerate(items, start=1):
        if item == "":
            raise ScheduleError(f"{widget}: item {position} is empty in {text!r}; expected numbers separated by commas, "
                                f"e.g. '1,1,0.5,0'")
        try:
            value = float(item)
        except ValueError:
            raise ScheduleError(f"{widget}: item {position} ({item!r}) is not a number; expected numbers separated by "
                                f"commas, e.g. '1,1,0.5,0'") from None
        if not math.isfinite(value):
            raise ScheduleError(f"{widget}: item {position} ({item!r}) is not finite")
        try:
            check_strength(value, f"{widget}: item {position}")
        except ValueError as exc:
            raise ScheduleError(str(exc)) from None
        values.append(value)
    return values


def window_strengths(steps: int, start_percent: float, end_percent: float) -> list[float]:
    """1 for step i when start ≤ i/steps < end, else 0: 'first 2 of 8 steps' is start 0, end 0.25."""
    if steps < 1:
        raise ScheduleError(f"the schedule has {steps} steps; expected at least 1")
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= value <= 1.0:
            raise ScheduleError(f"{name} is {value}; expected a value from 0 to 1")
    if start_percent > end_percent:
        raise ScheduleError(f"start_percent ({start_percent}) is after end_percent ({end_percent}); "
                            f"expected start ≤ end")
    eps = 1e-9
    return [1.0 if start_percent - eps <= i / steps < end_percent - eps else 0.0 for i in range(steps)]


@dataclass(frozen=True)
class ResolvedSchedule:
    """Multipliers per step (before the node's overall strength) and notes for the report."""

    multipliers: tuple[float, ...]
    notes: tuple[str, ...]

    def at(self, step: int) -> float:
        return self.multipliers[min(max(step, 0), len(self.multipliers) - 1)]


def resolve(steps: int, step_strengths: Sequence[float] | None, start_percent: float = 0.0,
            end_percent: float = 1.0) -> ResolvedSchedule:
    """Per-step multipliers for a sampler of `steps` steps; a short list holds its last value (said in the notes)."""
    if step_strengths is None:
        values = window_strengths(steps, start_percent, end_percent)
        return ResolvedSchedule(tuple(values), (f"window {start_percent:g}–{end_percent:g} of {steps} steps",))
    if not step_strengths:
        raise ScheduleError("step_strengths is empty; expected at least one number")
    values = list(step_strengths[:steps])
    notes = []
    if len(step_strengths) < steps:
        notes.append(f"step_strengths lists {len(step_strengths)} values for {steps} steps: "
                     f"steps {len(step_strengths)}–{steps - 1} hold the last value {step_strengths[-1]:g}")
        values += [step_strengths[-1]] * (steps - len(step_strengths))
    elif len(step_strengths) > steps:
        notes.append(f"step_strengths lists {len(step_strengths)} values for {steps} steps: the last "
                     f"{len(step_strengths) - steps} are unused")
    return ResolvedSchedule(tuple(values), tuple(notes))


def step_of_sigma(sigma: float, sigmas: Sequence[float] | torch.Tensor) -> int:
    """The step a model call at `sigma` belongs to, for a schedule sigmas[0] > … > sigmas[n].

    A call at exactly a schedule sigma is that step (the first one, where a sigma repeats); a call between
    sigmas[i] and sigmas[i+1] is step i. Sigmas above the first count as step 0, below the last as the last step.
    """
    values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    steps = max(len(values) - 1, 1)
    sigma = float(sigma)
    tolerance = 1e-6 * max(1.0, abs(sigma))
    for i, value in enumerate(values[:steps]):
        if abs(sigma - value) <= tolerance:
            return i
    for i in range(steps):
        hi, lo = values[i], values[i + 1]
        if lo < sigma < hi:
            return i
    return 0 if sigma > values[0] else steps - 1


class StepStrength:
    """The adapter's strength for the model call under way; set from the sigma before each call."""

    def __init__(self, strength: float, schedule_for: Callable[[int], ResolvedSchedule]):
        self.strength = strength
        self._schedule_for = schedule_for
        self.value = 0.0
        self.steps_seen: dict[int, float] = {}

    def update(self, sigma: float, sigmas: Sequence[float] | torch.Tensor | None) -> float:
        """Set and return the strength for a model call at `sigma` on the sampler's schedule `sigmas`."""
        if sigmas is None or len(sigmas) < 2:
            step, steps = 0, 1
        else:
            step, steps = step_of_sigma(sigma, sigmas), len(sigmas) - 1
        self.value = self.strength * self._schedule_for(steps).at(step)
        self.steps_seen[step] = self.value
        return self.value


class ScheduledWeight:
    """weight + s·ΔW for each adapted region of one weight, s read from a StepStrength at every forward.

    Returns a new tensor (the stored weight is never touched), and the weight itself when s is 0, so steps
    where the adapter is off cost nothing. The delta is rebuilt from the adapter's factors at each use rather
    than cached: a cache would hold a full-size copy of every adapted weight.
    """

    def __init__(self, regions: Sequence[tuple[tuple[int, int] | None, AdapterModule]], state: StepStrength):
        self.regions = list(regions)  # (rows (start, length) or None, module with .delta(shape, dtype, device))
        self.state = state

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        s = self.state.value
        if s == 0.0:
            return weight
        out = weight.clone()
        for rows, module in self.regions:
            region = out if rows is None else out.narrow(0, rows[0], rows[1])
            delta = module.delta(tuple(region.shape), dtype=torch.float32, device=weight.device)
            change = (s * delta).to(region.dtype)
            check_finite_delta(change, getattr(module, "source", "the adapter"), getattr(module, "name", "?"), region.dtype)
            region += change
        return out
