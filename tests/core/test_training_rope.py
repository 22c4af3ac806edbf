"""with_rotation_backward: a RoPE kernel without autograd gets exactly the gradient of a differentiable RoPE."""
import pytest
import torch

from sda_core.training.rope import with_rotation_backward, with_rotation_backward1


def reference_rope(xq, xk, freqs_cis):
    """out_pair = R @ x_pair, differentiable (freqs_cis [..., T, D/2, 2, 2] broadcast over heads)."""
    def one(x):
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        return torch.einsum("...ij,...j->...i", freqs_cis, pairs).reshape(x.shape).type_as(x)

    return one(xq), one(xk)


def opaque_rope(xq, xk, freqs_cis):
    """The same numbers from a kernel autograd cannot see through (like a fused inference kernel)."""
    with torch.no_grad():
        q, k = reference_rope(xq, xk, freqs_cis)
    return q.detach(), k.detach()


def _freqs(tokens=5, half=4, seed=0):
    angles = torch.rand(1, 1, tokens, half, generator=torch.Generator().manual_seed(seed)) * 6.28
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [1,1,T,D/2,2,2]


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    xq = torch.randn(2, 3, 5, 8, generator=g, requires_grad=True)
    xk = torch.randn(2, 3, 5, 8, generator=g, requires_grad=True)
    return xq, xk


def test_gradient_equals_the_differentiable_reference():
    freqs = _freqs()
    xq, xk = _inputs()
    q, k = reference_rope(xq, xk, freqs)
    (q.sin().sum() + (k * k).sum()).backward()
    want = xq.grad.clone(), xk.grad.clone()

    rope = with_rotation_backward(opaque_rope)
    xq2, xk2 = _inputs()
    q2, k2 = rope(xq2, xk2, freqs)
    torch.testing.assert_close((q2, k2), (q.detach(), k.detach()))
    (q2.sin().sum() + (k2 * k2).sum()).backward()
    torch.testing.assert_close(xq2.grad, want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xk2.grad, want[1], rtol=1e-6, atol=1e-6)


def test_the_opaque_kernel_alone_has_no_gradient():
    # what the wrapper fixes: backward through the bare kernel fails
    xq, xk = _inputs()
    q, _ = opaque_rope(xq, xk, _freqs())
    with pytest.raises(RuntimeError):
        q.sum().backward()


def test_calls_without_grad_go_straight_to_the_kernel():
    calls = []

    def kernel(xq, xk, f):
        calls.append(torch.is_grad_enabled())
        return opaque_rope(xq, xk, f)

    rope = with_rotation_backward(kernel)
    with torch.no_grad():
        rope(*_inputs(), _freqs())
    rope(torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8), _freqs())  # inputs need no grad
    assert calls == [False, True] and rope.wrapped is kernel


def test_one_tensor_kernel_gets_the_gradient_of_the_differentiable_reference():
    # Qwen-Image's shape of the kernel: apply_rope1(x, freqs_cis)
    freqs = _freqs()
    x, _ = _inputs()
    out, _ = reference_rope(x, x, freqs)
    (out.cos() * 3).sum().backward()
    want = x.grad.clone()

    rope1 = with_rotation_backward1(lambda x, f: opaque_rope(x, x, f)[0])
    x2, _ = _inputs()
    out2 = rope1(x2, freqs)
    torch.testing.assert_close(out2, out.detach())
    (out2.cos() * 3).sum().backward()
    torch.testing.assert_close(x2.grad, want, rtol=1e-6, atol=1e-6)
