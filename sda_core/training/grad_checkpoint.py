"""Gradient checkpointing of transformer blocks that replays the adapter switches when it recomputes.

Checkpointing drops a block's activations in the forward and recomputes them during backward. SDA flips
switches between a forward and its backward: the assistant adapter is OFF for the diversity forward and
back ON by the time that forward's backward runs. A plain checkpoint would recompute with the assistant ON
and silently give the gradient of a different function. Here every checkpointed call records the switches
and sets them back to those values for its recompute.

A checkpoint keeps each block's inputs for its recompute, and some blocks add their residual into their input
in place (ComfyUI's FLUX.1 blocks: `img += …`), which would change the kept input before the recompute reads
it. The block therefore runs on copies of its tensor inputs, made inside the checkpointed region (so the
recompute copies again and nothing more is kept).

Installed as an instance `forward` on each block and removed on exit, so a shared model is left as it was.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

__all__ = ["Switches", "checkpointed", "checkpoint_blocks"]

_MISSING = object()


class Switches:
    """Attributes that change what a forward computes (`TrainableLoKr.enabled`, an adapter's strength…)."""

    def __init__(self, flags: Sequence[tuple[object, str]] = ()) -> None:
        self.flags = list(flags)

    def snapshot(self) -> tuple:
        return tuple(getattr(obj, attr) for obj, attr in self.flags)

    @contextlib.contextmanager
    def replay(self, state: tuple) -> Iterator[None]:
        """The switches as in `state` inside; their values before restored on exit, also on exception."""
        before = self.snapshot()
        try:
            for (obj, attr), value in zip(self.flags, state):
                setattr(obj, attr, value)
            yield
        finally:
            for (obj, attr), value in zip(self.flags, before):
                setattr(obj, attr, value)


def checkpointed(forward: Callable[..., Any], switches: Switches) -> Callable[..., Any]:
    """`forward` under non-reentrant checkpointing whose recompute sees the switches of the original call.

    Without grad (no-grad forwards: rollout, baseline, teacher) it is `forward` itself. Dict arguments
    (e.g. transformer_options, which the caller mutates between blocks) are copied so the recompute sees
    them as they were; tensors are copied inside the region (see the module docstring).
    """
    def on_copies(*args: Any, **kwargs: Any) -> Any:
        return forward(*map(_copy, args), **{k: _copy(v) for k, v in kwargs.items()})

    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        state = switches.snapshot()
        kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}

        def contexts():
            return contextlib.nullcontext(), switches.replay(state)

        return torch.utils.checkpoint.checkpoint(on_copies, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    return run


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


@contextlib.contextmanager
def checkpoint_blocks(blocks: Iterable[nn.Module], switches: Switches) -> Iterator[int]:
    """Checkpoint each block's forward inside the context (yields how many); every block restored on exit."""
    installed: list[tuple[nn.Module, Any]] = []
    try:
        for block in blocks:
            previous = vars(block).get("forward", _MISSING)
            block.forward = checkpointed(block.forward, switches)
            installed.append((block, previous))
        yield len(installed)
    finally:
        for block, previous in reversed(installed):
            if previous is _MISSING:
                del block.forward
            else:
                block.forward = previous
