"""The LoKr on the compute side: layer output + x·kron(w1, w2)ᵀ in fp32, per row slice of a fused layer."""
from __future__ import annotations

import pytest
import torch

from sda_core.training.bypass import LoKrBypass, lokr_product
from sda_core.training.lokr import TrainableLoKr


def _lokr(out_dim: int, in_dim: int, rank: int | None = None, seed: int = 0) -> TrainableLoKr:
    gen = torch.Generator().manual_seed(seed)
    m = TrainableLoKr(out_dim, in_dim, factor=4, rank=rank, generator=gen)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return m


@pytest.mark.parametrize("rank", [None, 3])
def test_the_product_is_the_input_times_the_kronecker_delta(rank):
    m = _lokr(24, 32, rank)
    w2 = m.w2 if rank is None else m.w2_a @ m.w2_b
    delta = torch.kron(m.w1.detach(), w2.detach()).double()  # independent of LyCORIS and of the code under test
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(lokr_product(m, x).double(), x.double() @ delta.T, rtol=1e-5, atol=1e-5)


def test_a_bf16_layer_keeps_a_delta_far_below_its_rounding_step_when_computed_in_fp32():
    weight = (0.02 * torch.randn(16, 32)).bfloat16()
    m = _lokr(16, 32)
    with torch.no_grad():
        m.w2.mul_(1e-7)
    x = torch.randn(3, 32)
    out = LoKrBypass(lambda t: t @ weight.float().T, [(0, m)])(x)
    expected = x.double() @ (weight.double() + torch.kron(m.w1, m.w2).detach().double()).T
    base = x.double() @ weight.double().T
    cos = torch.nn.functional.cosine_similarity((out.double() - base).flatten(), (expected - base).flatten(), dim=0)
    assert cos > 0.999
    merged = x.bfloat16() @ (weight + torch.kron(m.w1, m.w2).to(weight)).T  # the weight-side add, in bf16
    assert torch.equal(merged.float(), (x.bfloat16() @ weight.T).float()), "the bf16 merge kept the delta?"


def test_slices_add_to_their_output_features_and_a_disabled_lokr_adds_nothing():
    q, v = _lokr(8, 12, seed=1), _lokr(8, 12, seed=2)
    layer = torch.nn.Linear(12, 24)
    x = torch.randn(4, 12)
    bypass = LoKrBypass(layer.forward, [(16, v), (0, q)])
    out = bypass(x)
    base = layer(x)
    torch.testing.assert_close(out[:, 0:8], base[:, 0:8] + lokr_product(q, x))
    torch.testing.assert_close(out[:, 8:16], base[:, 8:16], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 16:24], base[:, 16:24] + lokr_product(v, x))
    q.enabled = v.enabled = False
    assert torch.equal(bypass(x), base)
    out.sum().backward()
    assert q.w1.grad is not None and v.w2.grad is not None


def test_overlapping_or_oversized_slices_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        LoKrBypass(lambda t: t, [(0, _lokr(8, 12)), (4, _lokr(8, 12))])
    with pytest.raises(ValueError, match="beyond the layer's 8 output features"):
        LoKrBypass(torch.nn.Linear(12, 8).forward, [(4, _lokr(8, 12))])(torch.randn(1, 12))
