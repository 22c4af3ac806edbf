"""TrainableLoKr / LoKrSet / SlicedLoKr: LyCORIS's maths, weight-wrapper behaviour, on/off switching."""
import math

import pytest
import torch
from lycoris.functional.general import factorization
from lycoris.functional.lokr import kron_weight, weight_gen
from torch.nn.utils import parametrize

from sda_core.training.lokr import LoKrSet, SlicedLoKr, TrainableLoKr, lokr_shapes


def _randomise(m: TrainableLoKr, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("out_dim,in_dim", [(64, 64), (168, 64), (64, 168), (48, 80), (127, 64)])
def test_factor_shapes_are_lycoris_weight_gen_shapes(out_dim, in_dim):
    w1, _, _, w2, _, _, _ = weight_gen(torch.empty(out_dim, in_dim), rank=10**6, factor=8)
    assert lokr_shapes(out_dim, in_dim, 8) == (tuple(w1.shape), tuple(w2.shape))
    m = TrainableLoKr(out_dim, in_dim, factor=8)
    assert tuple(m.w1.shape) == tuple(w1.shape) and tuple(m.w2.shape) == tuple(w2.shape)
    assert factorization(out_dim, 8)[0] * factorization(out_dim, 8)[1] == out_dim


def test_full_delta_equals_lycoris_and_hand_written_kron():
    m = TrainableLoKr(64, 96, factor=8)
    _randomise(m)
    ours = m.delta()
    lyco = kron_weight(m.w1, None, None, m.w2, None, None, None, scale=1.0)
    (a, b), (c, d) = m.w1.shape, m.w2.shape
    hand = torch.zeros(a * c, b * d)
    for i in range(a):
        for j in range(b):
            hand[i * c:(i + 1) * c, j * d:(j + 1) * d] = m.w1[i, j] * m.w2
    assert ours.shape == (64, 96)
    assert torch.equal(ours, lyco)
    assert torch.allclose(ours, torch.kron(m.w1, m.w2))
    assert torch.allclose(ours, hand.detach(), atol=1e-6)


def test_low_rank_delta_scale_one_and_matches_kron():
    m = TrainableLoKr(64, 64, factor=8, rank=4)
    assert m.w2 is None and m.w2_a.shape == (8, 4) and m.w2_b.shape == (4, 8)
    _randomise(m, 1)
    expected = torch.kron(m.w1, m.w2_a @ m.w2_b)  # alpha = rank -> scale 1
    assert torch.allclose(m.delta(), expected, atol=1e-6)
    st = m.state_tensors()
    assert set(st) == {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"} and float(st["alpha"]) == 4.0


def test_init_like_lycoris_zero_delta_kaiming_w1():
    m = TrainableLoKr(64, 64, factor=8)
    assert torch.count_nonzero(m.delta()) == 0  # w2 zeros: training starts from the base model exactly
    bound = 1 / math.sqrt(m.w1.shape[1])  # kaiming_uniform(a=sqrt 5) bound = 1/sqrt(fan_in)
    assert m.w1.abs().max() <= bound and m.w1.abs().max() > 0.3 * bound
    st = m.state_tensors()
    assert set(st) == {"lokr_w1", "lokr_w2", "alpha"} and float(st["alpha"]) == 1.0  # full: scale 1


def test_forward_adds_delta_in_weight_dtype_and_disabled_is_identity():
    m = TrainableLoKr(16, 16, factor=8)
    _randomise(m)
    w = torch.randn(16, 16, dtype=torch.bfloat16)
    out = m(w)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), (w + m.delta().to(torch.bfloat16)).float())
    m.enabled = False
    assert m(w) is w
    with pytest.raises(ValueError):
        TrainableLoKr(8, 16)(torch.zeros(16, 16))


def test_build_is_seeded_sorted_and_disabled_restores_on_exception():
    shapes = {"layers.1.feed_forward.w2": (16, 32), "layers.0.attention.to_q": (16, 16)}
    a, b = LoKrSet.build(shapes, seed=3), LoKrSet.build(dict(reversed(list(shapes.items()))), seed=3)
    assert a.names() == sorted(shapes) and "layers.0.attention.to_q" in a
    for (n1, p1), (n2, p2) in zip(a.named_tensors().items(), b.named_tensors().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert not torch.equal(a["layers.0.attention.to_q"].w1, LoKrSet.build(shapes, seed=4)["layers.0.attention.to_q"].w1)
    a["layers.1.feed_forward.w2"].enabled = False  # an individually-off LoKr stays off afterwards
    with pytest.raises(RuntimeError):
        with a.disabled():
            assert not any(m.enabled for _, m in a.items())
            raise RuntimeError("forward failed")
    assert a["layers.0.attention.to_q"].enabled and not a["layers.1.feed_forward.w2"].enabled


def test_sliced_lokr_adds_each_delta_to_its_rows():
    q, k, v = (TrainableLoKr(16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for i, m in enumerate((q, k, v)):
        _randomise(m, i)
    w = torch.randn(48, 16)
    out = SlicedLoKr([(16, k), (0, q), (32, v)])(w)
    assert torch.allclose(out, w + torch.cat([q.delta(), k.delta(), v.delta()]))
    partial = SlicedLoKr([(16, k)])(w)  # uncovered rows pass through
    assert torch.equal(partial[:16], w[:16]) and torch.equal(partial[32:], w[32:])
    with pytest.raises(ValueError):
        SlicedLoKr([(0, q), (8, k)])


def test_parametrized_linear_trains_only_lokr_params():
    lin = torch.nn.Linear(16, 16, bias=False)
    lin.requires_grad_(False)
    m = TrainableLoKr(16, 16)
    parametrize.register_parametrization(lin, "weight", m)
    with torch.no_grad():
        m.w2.fill_(0.1)
    lin(torch.randn(4, 16)).square().sum().backward()
    assert m.w1.grad is not None and m.w2.grad is not None
    assert lin.parametrizations.weight.original.grad is None


def test_training_pins_the_lycoris_kernel_the_adapter_code_pins(monkeypatch):
    """LyCORIS picks a kernel per call when none is named (a fused one on some GPUs): training names the same
    backend as the adapter loader, so a GPU run computes the delta the CPU tests checked."""
    import sda_core.training.lokr as lokr_module
    from sda_core.adapters.algorithms import BACKEND

    backends = []

    def spy(*args, backend=None, **kwargs):
        backends.append(backend)
        return kron_weight(*args, backend=backend, **kwargs)

    monkeypatch.setattr(lokr_module, "kron_weight", spy)
    TrainableLoKr(64, 48, factor=8).delta()
    TrainableLoKr(64, 48, factor=8, rank=2).delta()
    assert BACKEND == "torch" and backends == [BACKEND, BACKEND]
