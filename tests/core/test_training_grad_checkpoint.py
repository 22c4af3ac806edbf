"""Gradient checkpointing with switch replay: same gradients as no checkpointing, even when a switch flips
between a forward and its backward (the assistant adapter's OFF-then-ON in the SDA step)."""
import pytest
import torch
from torch import nn

from sda_core.training.grad_checkpoint import Switches, checkpoint_blocks


class Switchable(nn.Module):
    """weight + delta when on: a stand-in for the assistant adapter's weight wrapper."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(dim, dim, generator=g) / dim**0.5)
        self.register_buffer("delta", torch.randn(dim, dim, generator=g))
        self.on = True

    def forward(self, x: torch.Tensor, options: dict) -> torch.Tensor:
        options["seen"] = options.get("seen", 0) + 1  # callers mutate option dicts between blocks
        w = self.weight + self.delta if self.on else self.weight
        return torch.tanh(x @ w.T)


def _model():
    return nn.ModuleList([Switchable(8, 1), Switchable(8, 2)])


def _grads(blocks, checkpoint: bool, replay: bool = True):
    """Forward with the switches OFF, backward after switching them back ON (as the SDA step does)."""
    switches = Switches([(b, "on") for b in blocks] if replay else [])
    for p in blocks.parameters():
        p.grad = None
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    ctx = checkpoint_blocks(blocks, switches) if checkpoint else torch.enable_grad()
    with ctx:
        for b in blocks:
            b.on = False
        options: dict = {}
        h = x
        for b in blocks:
            h = b(h, options)
        for b in blocks:
            b.on = True
        h.square().sum().backward()
    return [p.grad.clone() for p in blocks.parameters()]


def test_checkpointed_gradients_equal_plain_ones_when_a_switch_flips_before_backward():
    blocks = _model()
    plain = _grads(blocks, checkpoint=False)
    ckpt = _grads(blocks, checkpoint=True)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_without_replay_the_recompute_sees_the_flipped_switch_and_the_gradient_is_wrong():
    # what the replay prevents: the test above would fail if checkpoint_blocks ignored the switches
    blocks = _model()
    plain = _grads(blocks, checkpoint=False)
    wrong = _grads(blocks, checkpoint=True, replay=False)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(plain, wrong))


def test_blocks_are_restored_on_exit_and_no_grad_calls_bypass_checkpointing():
    blocks = _model()
    switches = Switches([(b, "on") for b in blocks])
    with checkpoint_blocks(blocks, switches) as n:
        assert n == 2 and all("forward" in vars(b) for b in blocks)
        with torch.no_grad():
            out = blocks[0](torch.ones(1, 8), {})
        assert not out.requires_grad
    assert all("forward" not in vars(b) for b in blocks)


def test_restored_even_when_the_body_raises_and_an_existing_instance_forward_survives():
    blocks = _model()
    custom = blocks[1].forward
    blocks[1].forward = custom  # e.g. another tool's own instance forward
    with pytest.raises(RuntimeError):
        with checkpoint_blocks(blocks, Switches()):
            raise RuntimeError("boom")
    assert "forward" not in vars(blocks[0])
    assert vars(blocks[1])["forward"] is custom


def test_replay_restores_the_switches_it_changed():
    blocks = _model()
    switches = Switches([(b, "on") for b in blocks])
    with switches.replay((False, True)):
        assert [b.on for b in blocks] == [False, True]
    assert [b.on for b in blocks] == [True, True]


def test_a_block_that_adds_into_its_input_in_place_checkpoints_with_the_same_gradient():
    """FLUX.1's blocks do `img += …` on their input, which a checkpoint keeps for the recompute."""
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            y = self.lin(torch.tanh(x))
            x += y  # the residual into the input
            return x

    torch.manual_seed(0)
    blocks = nn.ModuleList([InPlace() for _ in range(3)])

    def grads():
        for p in blocks.parameters():
            p.grad = None
        h = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))  # no grad: a model's first block input
        for b in blocks:
            h = b(h)
        h.square().sum().backward()
        return [p.grad.clone() for p in blocks.parameters()]

    plain = grads()
    with checkpoint_blocks(blocks, Switches()):
        checkpointed_ = grads()
    assert len(plain) == len(checkpointed_) == 6
    for a, b in zip(plain, checkpointed_):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
