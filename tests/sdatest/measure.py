"""Peak memory of a piece of code on the CPU, for benches and the memory plan's check."""
from __future__ import annotations

from typing import Callable


def peak_cpu_allocation(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by torch on the CPU during fn(), above the level at its start.

    From the profiler's allocation events (`profile_memory=True`): frees count negative, so tensors that
    live on from before fn() and are freed inside it lower the level. Python-heap and RSS are not counted.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    cur = peak = 0
    for _, size in sorted(events):
        cur += size
        peak = max(peak, cur)
    return peak
