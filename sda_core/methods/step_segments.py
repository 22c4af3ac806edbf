"""Another model on some steps (Gandikota & Bau, 2025: the base model on the first step of a distilled model's
schedule restores much of its diversity): which stretches of a sampler's steps each model runs.

The schedule of n steps is cut into runs of consecutive steps; each run is sampled as its own segment, like
KSamplerAdvanced chained with start_at_step/end_at_step, so the result equals those chained samplers.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..step_strengths import window_strengths


@dataclass(frozen=True)
class Segment:
    """Steps start…end−1 of the schedule (sigmas[start] → sigmas[end]), on the early model or the main one."""

    start: int
    end: int
    early: bool


def segments(steps: int, start_percent: float, end_percent: float) -> list[Segment]:
    """The runs of a `steps`-step schedule: step i is on the early model when start ≤ i/steps < end.

    An empty window gives one main segment over every step.
    """
    on = [value > 0.0 for value in window_strengths(steps, start_percent, end_percent)]
    runs: list[Segment] = []
    for i, early in enumerate(on):
        if runs and runs[-1].early == early:
            runs[-1] = Segment(runs[-1].start, i + 1, early)
        else:
            runs.append(Segment(i, i + 1, early))
    return runs
