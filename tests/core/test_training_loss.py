"""Each SDA term against what docs/method.md says: sign, pooling, detach, masking, time segmentation, Huber delta."""
import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sda_core.training import loss as L
from sda_core.training.config import SDAConfig
from sda_core.training.trajectory import flow_sigmas, rollout
from sda_core.training.step import sda_loss, teacher_x0
from sdatest.toy_training import toy_problem


# --- pure terms --------------------------------------------------------------------------------------

def test_x0_projection_is_x_t_minus_sigma_v_and_card_form_at_sigma_one():
    x_t, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([0.5, 1.0])
    x0 = L.x0_from_velocity(x_t, v, sigma)
    assert torch.allclose(x0[0], x_t[0] - 0.5 * v[0]) and torch.allclose(x0[1], x_t[1] - v[1])  # z - v at sigma 1
    assert torch.allclose(L.velocity_from_x0(x_t, x0, sigma), v, atol=1e-6)


def test_huber_delta_is_0_08_quadratic_below_linear_above():
    assert SDAConfig().huber_delta == 0.08
    zero = torch.zeros(10)
    small, large = L.anchor_loss(zero + 0.04, zero), L.anchor_loss(zero + 0.2, zero)
    assert torch.isclose(small, torch.tensor(0.5 * 0.04**2))
    assert torch.isclose(large, torch.tensor(0.08 * (0.2 - 0.5 * 0.08)))
    assert torch.isclose(L.anchor_loss(zero - 0.2, zero), large)  # symmetric


def test_anchor_baseline_carries_no_gradient():
    v_pol, v_base = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    L.anchor_loss(v_pol, v_base).backward()
    assert v_pol.grad is not None and v_base.grad is None


def test_direction_sign_identical_zero_opposite_two_orthogonal_one():
    d = torch.randn(3, 4, 16, 16)
    assert L.direction_loss(d, d).item() == pytest.approx(0.0, abs=1e-6)
    assert L.direction_loss(-d, d).item() == pytest.approx(2.0, abs=1e-6)
    assert L.direction_loss(5 * d, d).item() == pytest.approx(0.0, abs=1e-6)  # magnitude-free
    a = torch.zeros(1, 1, 16, 16)
    a[..., :8, :] = 1
    b = torch.zeros(1, 1, 16, 16)
    b[..., 8:, :] = 1
    assert L.direction_loss(a, b).item() == pytest.approx(1.0, abs=1e-6)


def test_diversity_delta_is_seed2_minus_seed1_for_both_models():
    s1, s2 = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    assert L.diversity_loss(s1, s2, s1, s2).item() == pytest.approx(0.0, abs=1e-6)
    assert L.diversity_loss(s2, s1, s1, s2).item() == pytest.approx(2.0, abs=1e-6)  # swapped seeds: opposite


def test_pooling_hides_high_frequency_and_flattens_per_sample():
    g = torch.Generator().manual_seed(0)
    delta_t = F.interpolate(torch.randn(2, 4, 2, 2, generator=g), scale_factor=8)  # low frequency only
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1.0  # zero mean per 8x8 block
    delta_s = delta_t + 3.0 * checker
    assert L.direction_loss(delta_s, delta_t, kernel=8).item() == pytest.approx(0.0, abs=1e-6)
    assert L.direction_loss(delta_s, delta_t, kernel=1).item() > 0.3  # visible without the low-pass
    assert L.lowpass(delta_t, 8).shape == (2, 4 * 2 * 2)
    # per sample: one aligned, one opposite and 3x larger -> mean(0, 2) = 1 (a batch-flattened cosine gives 1.8)
    mixed = torch.cat([delta_t[:1], -3 * delta_t[:1]])
    assert L.direction_loss(mixed, delta_t[:1].expand(2, -1, -1, -1)).item() == pytest.approx(1.0, abs=1e-5)


def test_time_segmentation_threshold_and_cfg_combine():
    assert [L.uses_diversity(k, 7) for k in range(8)] == [True] * 7 + [False]
    pos, neg = torch.full((1,), 3.0), torch.full((1,), 1.0)
    assert L.cfg_combine(pos, neg, 1.0).item() == 3.0 and L.cfg_combine(pos, neg, 2.5).item() == 6.0
    sft, div = torch.tensor(0.5), torch.tensor(0.25)
    assert L.combine(sft, div, 2.0).item() == 1.0 and L.combine(sft, None, 2.0) is sft


# --- the assembled step with spies ---------------------------------------------------------------------

class Spy:
    """Wraps a denoiser and records, per call, what state the model was in."""

    def __init__(self, name, fn, tp, log):
        self.name, self.fn, self.tp, self.log = name, fn, tp, log
        self.raise_when = None

    def __call__(self, x, sigma, cond):
        rec = {
            "who": self.name, "rows": x.shape[0], "grad": torch.is_grad_enabled(),
            "lokr": self.tp.models.lokr["mix"].enabled,
            "assistant": None if self.tp.assistant is None else self.tp.assistant.enabled,
        }
        if self.raise_when is not None and self.raise_when(rec):
            raise RuntimeError("forward failed")
        out = self.fn(x, sigma, cond)
        rec["out"] = out
        self.log.append(rec)
        return out


def _spied(with_assistant=True, **cfg):
    tp = toy_problem(with_assistant=with_assistant, **cfg)
    with torch.no_grad():  # a non-zero LoKr, so on/off states differ
        tp.models.lokr["mix"].w2.normal_(0, 0.05, generator=torch.Generator().manual_seed(9))
    log = []
    student, teacher = Spy("student", tp.student, tp, log), Spy("teacher", tp.teacher, tp, log)
    tp.models = dataclasses.replace(tp.models, student=student, teacher=teacher)
    return tp, log, student


def _inputs(tp, k, batch=2):
    cfg = tp.config
    g = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn(batch, *cfg.latent_shape, generator=g) for _ in range(2))
    conds = [tp.models.conds[i % len(tp.models.conds)] for i in range(batch)]
    sig = flow_sigmas(cfg.student_steps, cfg.shift)
    x1, x2 = rollout(tp.models.student, [z1, z2], sig, k, conds)
    return x1, x2, float(sig[k]), conds


def test_forwards_and_masking_per_term():
    tp, log, _ = _spied()
    x1, x2, s, conds = _inputs(tp, 3)
    log.clear()
    sda_loss(tp.models, tp.config, x1, x2, s, 3, conds)
    got = [(r["who"], r["rows"], r["grad"], r["lokr"], r["assistant"]) for r in log]
    assert got == [
        ("student", 2, False, False, True),  # baseline: frozen student (LoKr off), assistant on, no grad
        ("student", 2, True, True, True),    # anchor/policy on z1: LoKr on, assistant on, grad
        ("teacher", 4, False, True, True),   # teacher: z1 and z2 in ONE forward, no grad
        ("student", 2, True, True, False),   # diversity on z2: assistant OFF exactly here, grad
    ]
    assert tp.assistant.enabled and tp.models.lokr["mix"].enabled  # both restored


def test_without_an_assistant_anchor_and_diversity_are_one_grad_forward():
    tp, log, _ = _spied(with_assistant=False)
    x1, x2, s, conds = _inputs(tp, 3)
    log.clear()
    terms = sda_loss(tp.models, tp.config, x1, x2, s, 3, conds)
    assert [(r["who"], r["rows"], r["grad"], r["lokr"]) for r in log] == [
        ("student", 2, False, False),  # baseline
        ("teacher", 4, False, True),   # teacher z1 + z2
        ("student", 4, True, True),    # anchor (z1) and diversity (z2): same weights, ONE forward
    ]
    pol, s2 = log[2]["out"].split(2)
    assert torch.equal(log[2]["out"], tp.student(torch.cat([x1, x2]), torch.full((4,), s), torch.cat(conds * 2)))
    t1, t2 = teacher_x0(tp.models, [x1, x2], s, conds)
    assert torch.allclose(terms.diversity, L.direction_loss(s2 - pol, t2 - t1, 8))


def test_one_grad_forward_equals_the_two_separate_ones():
    """Same terms and LoKr gradient as the anchor-then-diversity path (forced by a no-op assistant switch)."""
    tp, _, _ = _spied(with_assistant=False)
    x1, x2, s, conds = _inputs(tp, 2)
    w = list(tp.models.lokr.parameters())
    joint = sda_loss(tp.models, tp.config, x1, x2, s, 2, conds)
    g_joint = torch.autograd.grad(joint.total, w)
    separate_models = dataclasses.replace(tp.models, assistant=contextlib.nullcontext)
    separate = sda_loss(separate_models, tp.config, x1, x2, s, 2, conds)
    g_sep = torch.autograd.grad(separate.total, w)
    for a, b in ((joint.anchor, separate.anchor), (joint.diversity, separate.diversity), (joint.total, separate.total)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in g_sep)
    for a, b in zip(g_joint, g_sep):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    for p in w:  # backward=True lands the same gradient in .grad
        p.grad = None
    sda_loss(tp.models, tp.config, x1, x2, s, 2, conds, backward=True)
    for p, g in zip(w, g_joint):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)


def test_a_diversity_step_needs_x_t2_a_pure_anchor_step_does_not():
    tp, _, _ = _spied()
    x1, _, s, conds = _inputs(tp, 7)
    assert sda_loss(tp.models, tp.config, x1, None, s, 7, conds).diversity is None
    x1, _, s, conds = _inputs(tp, 2)
    with pytest.raises(ValueError, match="needs x_t\\(z2\\)"):
        sda_loss(tp.models, tp.config, x1, None, s, 2, conds)


def test_assistant_and_lokr_restored_when_a_forward_raises():
    tp, _, student = _spied()
    x1, x2, s, conds = _inputs(tp, 2)
    student.raise_when = lambda r: r["assistant"] is False
    with pytest.raises(RuntimeError, match="forward failed"):
        sda_loss(tp.models, tp.config, x1, x2, s, 2, conds)
    assert tp.assistant.enabled is True
    student.raise_when = lambda r: r["lokr"] is False
    with pytest.raises(RuntimeError):
        sda_loss(tp.models, tp.config, x1, x2, s, 2, conds)
    assert tp.models.lokr["mix"].enabled is True


def test_diversity_gradient_flows_only_through_the_z2_forward():
    tp, log, _ = _spied()
    x1, x2, s, conds = _inputs(tp, 1)
    log.clear()
    terms = sda_loss(tp.models, tp.config, x1, x2, s, 1, conds)
    anchor_out = next(r["out"] for r in log if r["who"] == "student" and r["grad"] and r["assistant"])
    div_out = next(r["out"] for r in log if r["who"] == "student" and r["assistant"] is False)
    assert torch.autograd.grad(terms.diversity, anchor_out, retain_graph=True, allow_unused=True) == (None,)
    assert torch.autograd.grad(terms.diversity, div_out, retain_graph=True)[0].abs().sum() > 0
    # x0_S(z1) is the anchor's own prediction, detached: same values, no graph
    x0_s1 = L.policy_x0_detached(x1, L.velocity_from_x0(x1, anchor_out, s), s)
    assert not x0_s1.requires_grad and torch.allclose(x0_s1, anchor_out.detach(), atol=1e-6)
    # the LoKr gradient of the diversity term equals the one computed with x0_S(z1) as a constant
    w = list(tp.models.lokr.parameters())
    g_div = torch.autograd.grad(terms.diversity, w, retain_graph=True)
    t1, t2 = teacher_x0(tp.models, [x1, x2], s, conds)
    ref = L.direction_loss(div_out - anchor_out.detach(), t2 - t1, 8)
    for a, b in zip(g_div, torch.autograd.grad(ref, w)):
        assert torch.allclose(a, b, atol=1e-7)


def test_anchor_is_huber_of_velocities_at_0_08():
    tp, log, _ = _spied(with_assistant=False)
    x1, x2, s, conds = _inputs(tp, 4)
    log.clear()
    terms = sda_loss(tp.models, tp.config, x1, x2, s, 4, conds)
    base = log[0]["out"]
    pol = next(r["out"] for r in log if r["grad"])[: x1.shape[0]]  # the z1 rows of the policy forward
    v_pol, v_base = (x1 - pol) / s, (x1 - base) / s
    assert torch.allclose(terms.anchor, F.huber_loss(v_pol, v_base, delta=0.08))
    assert not torch.allclose(terms.anchor, F.huber_loss(v_pol, v_base, delta=1.0))


@pytest.mark.parametrize("k", [7])
def test_pure_anchor_step_makes_no_teacher_or_diversity_forward(k):
    tp, log, _ = _spied()
    x1, x2, s, conds = _inputs(tp, k)
    log.clear()
    terms = sda_loss(tp.models, tp.config, x1, x2, s, k, conds)
    assert [r["who"] for r in log] == ["student", "student"]
    assert all(r["assistant"] for r in log)
    assert terms.diversity is None and torch.equal(terms.total, terms.anchor)


def test_div_skip_is_configurable_and_lambda_weights_the_term():
    tp, log, _ = _spied(div_skip=3, lambda_div=2.0)
    x1, x2, s, conds = _inputs(tp, 3)
    log.clear()
    assert sda_loss(tp.models, tp.config, x1, x2, s, 3, conds).diversity is None
    x1, x2, s, conds = _inputs(tp, 2)
    terms = sda_loss(tp.models, tp.config, x1, x2, s, 2, conds)
    assert torch.allclose(terms.total, terms.anchor + 2.0 * terms.diversity)


def test_early_backward_equals_one_backward_of_the_sum():
    tp, _, _ = _spied()
    x1, x2, s, conds = _inputs(tp, 2)
    w = list(tp.models.lokr.parameters())
    terms = sda_loss(tp.models, tp.config, x1, x2, s, 2, conds)
    ref = torch.autograd.grad(terms.total, w)
    terms2 = sda_loss(tp.models, tp.config, x1, x2, s, 2, conds, backward=True)
    assert not terms2.total.requires_grad and torch.allclose(terms2.total, terms.total.detach())
    for p, r in zip(w, ref):
        assert torch.allclose(p.grad, r, atol=1e-7)


def test_teacher_cfg_batches_positive_and_negative_in_one_forward():
    tp, log, _ = _spied(teacher_cfg=3.0)
    neg = torch.zeros(1, 16)
    tp.models = dataclasses.replace(tp.models, negative=neg)
    x1, x2, s, conds = _inputs(tp, 1)
    log.clear()
    t1, t2 = teacher_x0(tp.models, [x1, x2], s, conds, cfg=3.0)
    assert [(r["who"], r["rows"]) for r in log] == [("teacher", 8)]
    sig = torch.full((2,), s)
    for x, t in ((x1, t1), (x2, t2)):
        pos = tp.teacher(x, sig, torch.cat(conds))
        ng = tp.teacher(x, sig, neg.expand(2, -1))
        assert torch.allclose(t, ng + 3.0 * (pos - ng), atol=1e-5)


def test_config_refuses_what_the_loss_cannot_honour():
    with pytest.raises(ValueError, match="pool_kernel"):
        SDAConfig(latent_shape=(16, 4, 4))
    with pytest.raises(ValueError, match="div_skip"):
        SDAConfig(div_skip=9)
    tp = toy_problem(teacher_cfg=2.0)
    with pytest.raises(ValueError, match="negative"):
        tp.models.validate(tp.config)
