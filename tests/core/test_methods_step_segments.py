"""Which steps SDA Model by Step gives to the early model: runs of consecutive steps."""
from __future__ import annotations

import pytest

from sda_core.methods.step_segments import Segment, segments


@pytest.mark.parametrize("steps, start, end, expected", [
    (8, 0.0, 0.125, [Segment(0, 1, True), Segment(1, 8, False)]),
    (8, 0.25, 0.5, [Segment(0, 2, False), Segment(2, 4, True), Segment(4, 8, False)]),
    (4, 0.0, 1.0, [Segment(0, 4, True)]),
    (8, 0.3, 0.3, [Segment(0, 8, False)]),
])
def test_model_by_step_cuts_the_schedule_into_runs(steps, start, end, expected):
    assert segments(steps, start, end) == expected
