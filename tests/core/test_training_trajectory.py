"""The student's schedule equals ComfyUI's simple scheduler; the rollout is Euler, batched, no-grad."""
import pytest
import torch

from sda_core.training.trajectory import euler_step, flow_sigmas, rollout

# ComfyUI 0.3.75: simple_scheduler(ModelSamplingDiscreteFlow with shift=3.0, multiplier=1000, steps).tolist()
COMFY_SIMPLE_SHIFT3 = {
    8: [1.0, 0.9545454382896423, 0.8999999761581421, 0.8333333134651184, 0.75, 0.6428571343421936, 0.5,
        0.30000001192092896, 0.0],
    5: [1.0, 0.9230769872665405, 0.8181818127632141, 0.6666666865348816, 0.4285714626312256, 0.0],
    3: [1.0, 0.8573263883590698, 0.6007193922996521, 0.0],
}


@pytest.mark.parametrize("steps", sorted(COMFY_SIMPLE_SHIFT3))
def test_sigmas_equal_comfyui_simple_scheduler(steps):
    assert flow_sigmas(steps, 3.0).tolist() == COMFY_SIMPLE_SHIFT3[steps]


def test_sigmas_follow_the_shift_formula_for_8_steps():
    t = torch.linspace(1, 0, 9, dtype=torch.float64)
    expected = 3.0 * t / (1 + 2.0 * t)
    assert torch.allclose(flow_sigmas(8, 3.0).double(), expected, atol=1e-7)
    assert flow_sigmas(8, 1.0).tolist()[:3] == [1.0, 0.875, 0.75]


class Recorder:
    def __init__(self, x0_fn):
        self.x0_fn, self.calls = x0_fn, []

    def __call__(self, x, sigma, cond):
        self.calls.append({"rows": x.shape[0], "grad": torch.is_grad_enabled(), "sigma": sigma.tolist(),
                           "cond_rows": cond.shape[0]})
        return self.x0_fn(x, sigma, cond)


def test_rollout_is_exact_on_a_straight_flow_and_batches_both_noises():
    target = torch.randn(1, 4, 8, 8)
    den = Recorder(lambda x, s, c: target.expand_as(x) + c[:, :1, None, None] * 0)
    sig = flow_sigmas(8, 3.0)
    z1, z2 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    conds = [torch.zeros(1, 3), torch.ones(1, 3)]
    for k in (0, 1, 5, 7):
        den.calls.clear()
        x1, x2 = rollout(den, [z1, z2], sig, k, conds)
        s = float(sig[k])
        # a constant x0 makes the flow a straight line: Euler lands exactly on sigma*z + (1-sigma)*x0
        assert torch.allclose(x1, s * z1 + (1 - s) * target, atol=1e-5)
        assert torch.allclose(x2, s * z2 + (1 - s) * target, atol=1e-5)
        assert len(den.calls) == k  # ONE forward per Euler step for z1 and z2 together
        assert all(c["rows"] == 4 and c["cond_rows"] == 4 and not c["grad"] for c in den.calls)
        assert [c["sigma"][0] for c in den.calls] == sig[:k].tolist()


def test_euler_step_matches_comfy_sample_euler():
    x, x0 = torch.randn(3), torch.randn(3)
    d = (x - x0) / 0.9
    assert torch.allclose(euler_step(x, x0, 0.9, 0.5), x + d * (0.5 - 0.9))


def test_rollout_rejects_out_of_range_step():
    with pytest.raises(ValueError):
        rollout(lambda x, s, c: x, [torch.zeros(1, 1, 8, 8)], flow_sigmas(8), 9, [torch.zeros(1, 1)])
