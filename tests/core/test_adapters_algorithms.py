"""Per-algorithm maths: our deltas equal LyCORIS's functional results and hand-written torch, scales follow
LyCORIS/ComfyUI, and +s then -s restores a weight to within one ulp."""
from __future__ import annotations

import pytest
import torch
from lycoris.functional import locon as ly_locon
from lycoris.functional import loha as ly_loha
from lycoris.functional import lokr as ly_lokr

from sda_core.adapters import LoHaModule, LoKrModule, LoRAModule, apply_deltas
from sda_core.adapters.algorithms import FactorError, fits
from sda_core.stack import inversion_deviation

TOL = 1e-6


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------- LoKr
def test_lokr_full_w1_w2_equals_lycoris_and_torch_kron():
    w1, w2 = rand(4, 4, seed=1), rand(8, 6, seed=2)
    m = LoKrModule("m", {"lokr_w1": w1, "lokr_w2": w2})
    assert m.shape == (32, 24) and m.scale == 1.0 and not m.alpha_ignored
    ours = m.delta((32, 24))
    assert max_diff(ours, ly_lokr.kron_weight(w1, None, None, w2, None, None)) < TOL
    assert max_diff(ours, torch.kron(w1, w2)) < TOL
    assert ours.abs().max() > 0.1


def test_lokr_w1_decomposed_scales_by_alpha_over_w1_rank():
    w1a, w1b, w2 = rand(4, 2, seed=1), rand(2, 4, seed=2), rand(8, 6, seed=3)
    m = LoKrModule("m", {"lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2": w2}, alpha=3.0)
    assert m.rank == 2 and m.scale == pytest.approx(1.5) and not m.alpha_ignored
    ours = m.delta((32, 24))
    assert max_diff(ours, ly_lokr.diff_weight(None, w1a, w1b, w2, None, None, None, gamma=3.0)) < TOL
    assert max_diff(ours, 1.5 * torch.kron(w1a @ w1b, w2)) < TOL


def test_lokr_w2_decomposed_scales_by_alpha_over_w2_rank():
    w1, w2a, w2b = rand(4, 4, seed=1), rand(8, 3, seed=2), rand(3, 6, seed=3)
    m = LoKrModule("m", {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b}, alpha=6.0)
    assert m.rank == 3 and m.scale == pytest.approx(2.0)
    ours = m.delta((32, 24))
    assert max_diff(ours, ly_lokr.diff_weight(w1, None, None, None, w2a, w2b, None, gamma=6.0)) < TOL
    assert max_diff(ours, 2.0 * torch.kron(w1, w2a @ w2b)) < TOL


def test_lokr_both_decomposed_uses_w2_rank_like_comfyui():
    f = {"lokr_w1_a": rand(4, 2, seed=1), "lokr_w1_b": rand(2, 4, seed=2),
         "lokr_w2_a": rand(8, 3, seed=3), "lokr_w2_b": rand(3, 6, seed=4)}
    m = LoKrModule("m", f, alpha=1.5)
    assert m.rank == 3 and m.scale == pytest.approx(0.5)
    hand = 0.5 * torch.kron(f["lokr_w1_a"] @ f["lokr_w1_b"], f["lokr_w2_a"] @ f["lokr_w2_b"])
    assert max_diff(m.delta((32, 24)), hand) < TOL


def test_lokr_tucker_t2_on_a_conv_kernel():
    """Tucker w2 (t2 with w2_a: rank×out, w2_b: rank×in) as LyCORIS stores it for a 3×3 conv."""
    w1, t2 = rand(2, 2, seed=1), rand(3, 3, 3, 3, seed=2)
    w2a, w2b = rand(3, 4, seed=3), rand(3, 5, seed=4)
    m = LoKrModule("m", {"lokr_w1": w1, "lokr_t2": t2, "lokr_w2_a": w2a, "lokr_w2_b": w2b}, alpha=1.5)
    assert m.shape == (8, 10, 3, 3)
    assert m.rank == 3 and m.scale == pytest.approx(0.5)  # rank from w2_b, as ComfyUI does
    ours = m.delta((8, 10, 3, 3))
    w2 = torch.einsum("i j k l, i p, j r -> p r k l", t2, w2a, w2b).contiguous()
    hand = 0.5 * torch.kron(w1[:, :, None, None], w2)
    assert max_diff(ours, hand) < TOL
    assert max_diff(ours, ly_lokr.kron_weight(w1, None, None, None, w2a, w2b, t2, scale=0.5)) < TOL


def test_lokr_alpha_ignored_for_full_w1_and_w2():
    w1, w2 = rand(4, 4, seed=1), rand(8, 6, seed=2)
    m = LoKrModule("m", {"lokr_w1": w1, "lokr_w2": w2}, alpha=1.0)
    assert m.alpha == 1.0 and m.scale == 1.0 and m.alpha_ignored
    assert max_diff(m.delta((32, 24)), torch.kron(w1, w2)) < TOL
    assert m.describe()["alpha_ignored"] is True and m.describe()["full_rank"] is True
    big = LoKrModule("m", {"lokr_w1": w1, "lokr_w2": w2}, alpha=1e10)  # ai-toolkit's placeholder alpha
    assert big.scale == 1.0 and big.alpha_ignored


def test_lokr_decomposed_without_alpha_has_scale_one():
    m = LoKrModule("m", {"lokr_w1": rand(4, 4), "lokr_w2_a": rand(8, 3), "lokr_w2_b": rand(3, 6)})
    assert m.scale == 1.0 and not m.alpha_ignored


# ---------------------------------------------------------------- LoRA
def test_lora_alpha_over_rank_equals_lycoris_and_matmul():
    down, up = rand(4, 12, seed=1), rand(10, 4, seed=2)
    m = LoRAModule("m", {"lora_down": down, "lora_up": up}, alpha=2.0)
    assert m.rank == 4 and m.scale == pytest.approx(0.5) and m.shape == (10, 12)
    ours = m.delta((10, 12))
    assert max_diff(ours, 0.5 * up @ down) < TOL
    assert max_diff(ours, ly_locon.diff_weight(down, up, None, gamma=0.5)) < TOL
    assert LoRAModule("m", {"lora_down": down, "lora_up": up}).scale == 1.0


def test_lora_with_tucker_mid_on_a_conv_kernel():
    down, up, mid = rand(3, 6, 1, 1, seed=1), rand(5, 3, 1, 1, seed=2), rand(3, 3, 3, 3, seed=3)
    m = LoRAModule("m", {"lora_down": down, "lora_up": up, "lora_mid": mid}, alpha=3.0)
    assert m.shape == (5, 6, 3, 3) and m.scale == 1.0
    hand = torch.einsum("i j k l, p i, j r -> p r k l", mid, up.flatten(1), down.flatten(1))
    assert max_diff(m.delta((5, 6, 3, 3)), hand) < TOL


# ---------------------------------------------------------------- LoHa
def test_loha_equals_lycoris_and_hadamard_of_products():
    f = {"hada_w1_a": rand(10, 3, seed=1), "hada_w1_b": rand(3, 12, seed=2),
         "hada_w2_a": rand(10, 3, seed=3), "hada_w2_b": rand(3, 12, seed=4)}
    m = LoHaModule("m", f, alpha=1.5)
    assert m.rank == 3 and m.scale == pytest.approx(0.5) and m.shape == (10, 12)
    ours = m.delta((10, 12))
    hand = 0.5 * (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    assert max_diff(ours, hand) < TOL
    lyc = ly_loha.diff_weight(f["hada_w1_b"], f["hada_w1_a"], f["hada_w2_b"], f["hada_w2_a"], None, None, gamma=0.5)
    assert max_diff(ours, lyc) < TOL


def test_loha_tucker():
    f = {"hada_t1": rand(2, 2, 3, 3, seed=1), "hada_w1_a": rand(2, 5, seed=2), "hada_w1_b": rand(2, 4, seed=3),
         "hada_t2": rand(2, 2, 3, 3, seed=4), "hada_w2_a": rand(2, 5, seed=5), "hada_w2_b": rand(2, 4, seed=6)}
    m = LoHaModule("m", f)
    assert m.shape == (5, 4, 3, 3)
    h1 = torch.einsum("i j k l, j r, i p -> p r k l", f["hada_t1"], f["hada_w1_b"], f["hada_w1_a"])
    h2 = torch.einsum("i j k l, j r, i p -> p r k l", f["hada_t2"], f["hada_w2_b"], f["hada_w2_a"])
    assert max_diff(m.delta((5, 4, 3, 3)), h1 * h2) < TOL


# ---------------------------------------------------------------- shapes, dtype, bad factors
def test_delta_in_requested_dtype_and_shape_checks():
    m = LoRAModule("m", {"lora_down": rand(2, 18), "lora_up": rand(4, 2)})
    assert m.delta((4, 18), dtype=torch.bfloat16).dtype == torch.bfloat16
    assert m.delta((4, 2, 3, 3)).shape == (4, 2, 3, 3)  # (out, in·k·k) onto a conv kernel
    with pytest.raises(ValueError, match="does not fit"):
        m.delta((18, 4))
    assert fits((4, 6), (4, 6, 1, 1)) and not fits((4, 6), (6, 4))


def test_mismatched_ranks_and_missing_factors_are_factor_errors():
    with pytest.raises(FactorError, match="ranks do not agree"):
        LoRAModule("m", {"lora_down": rand(3, 6), "lora_up": rand(4, 2)})
    with pytest.raises(FactorError, match="missing lora_down"):
        LoRAModule("m", {"lora_up": rand(4, 2)})
    with pytest.raises(FactorError, match="lokr_w2"):
        LoKrModule("m", {"lokr_w1": rand(2, 2)})
    with pytest.raises(FactorError, match="halves disagree"):
        LoHaModule("m", {"hada_w1_a": rand(4, 2), "hada_w1_b": rand(2, 6),
                         "hada_w2_a": rand(5, 2), "hada_w2_b": rand(2, 6)})


# ---------------------------------------------------------------- apply / invert within one ulp
def ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of x's dtype at |x| (float64 result)."""
    a = x.abs()
    return (torch.nextafter(a, torch.full_like(a, float("inf"))).double() - a.double())


MODULES = {
    "lokr": lambda: LoKrModule("m", {"lokr_w1": rand(4, 4, seed=5), "lokr_w2": rand(8, 8, seed=6) * 0.05}),
    "lora": lambda: LoRAModule("m", {"lora_down": rand(4, 32, seed=7), "lora_up": rand(32, 4, seed=8) * 0.05},
                               alpha=2.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("algo", sorted(MODULES))
@pytest.mark.parametrize("strength", [1.0, 0.7, -1.3])
def test_plus_then_minus_restores_within_one_ulp(dtype, algo, strength):
    module = MODULES[algo]()
    weight = (rand(96, 32, seed=9) * 0.02).to(dtype)
    rows = (32, 32)
    merged = apply_deltas(weight, [(module, strength)], rows)
    assert merged.dtype == dtype
    moved = (merged.double() - weight.double()).abs().max()
    assert moved > 1e-3, "the patch changed nothing: the test could not tell"
    # outside the slice nothing moves, bit for bit
    assert torch.equal(merged[:32], weight[:32]) and torch.equal(merged[64:], weight[64:])
    # the bound: one ulp at the larger of the weight and the merged weight (the magnitude the value passes)
    bound = torch.maximum(ulp(weight), ulp(merged))
    for restored in (apply_deltas(merged, [(module, -strength)], rows),           # merged, then inverted
                     apply_deltas(weight, [(module, strength), (module, -strength)], rows)):  # one pass
        assert restored.dtype == dtype
        diff = (restored.double() - weight.double()).abs()
        assert bool((diff <= bound).all()), f"max excess {(diff - bound).max():.3g}"
    deviation = inversion_deviation(weight, module, rows, strength)
    assert deviation == pytest.approx(float((apply_deltas(merged, [(module, -strength)], rows).double()
                                             - weight.double()).abs().max()))
    assert deviation <= float(bound.max())


def test_apply_deltas_adds_strength_times_delta_in_fp32():
    module = MODULES["lora"]()
    weight = rand(96, 32, seed=1) * 0.02
    out = apply_deltas(weight, [(module, 0.5), (module, 0.25)], rows=(0, 32))
    expected = weight.clone()
    expected[:32] += 0.75 * module.delta((32, 32))
    assert max_diff(out, expected) < 1e-6
    assert torch.equal(apply_deltas(weight, [], None), weight)
