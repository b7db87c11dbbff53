"""Double backward. conv2d's backward ops are themselves differentiable convolutions (dgrad and
wgrad map onto each other and onto fprop), pooling's backward ops are linear maps with registered
adjoints, and batch norm's backward switches to differentiable torch ops when a graph of the
gradient is requested; gradgradcheck passes for all of them and gradient-penalty training matches torch."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastconv.functional as FF
from integ_models import pair

FAST = dict(fast_mode=True)  # random-projection checks: exact enough, far fewer op calls

ops = torch.ops.fastconv


def _rand(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_(grad)


@pytest.mark.parametrize("algo,k,stride,pad,groups", [
    ("direct", 3, 2, 1, 2), ("im2col", 3, 1, 1, 1), ("gemm1x1", 1, 2, 0, 1)])
def test_conv_backward_ops_are_twice_differentiable(algo, k, stride, pad, groups):
    x_shape, w = [2, 2, 5, 4], _rand(2, 2 // groups, k, k)
    p = [(5 + 2 * pad - k) // stride + 1, (4 + 2 * pad - k) // stride + 1]
    gy, x = _rand(2, 2, *p), _rand(*x_shape)
    cfg = ([stride] * 2, [pad] * 2, [1, 1], groups, algo)

    def dgrad(gy, w):
        return ops.conv2d_dgrad(gy, w, x_shape, *cfg)

    def wgrad(gy, x):
        return ops.conv2d_wgrad(gy, x, list(w.shape), *cfg)

    assert gradcheck(dgrad, (gy, w), **FAST) and gradgradcheck(dgrad, (gy, w), **FAST)
    assert gradcheck(wgrad, (gy, x), **FAST) and gradgradcheck(wgrad, (gy, x), **FAST)


def test_max_pool_backward_op_twice_differentiable():
    x = _rand(2, 3, 7, 6)
    y, idx = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True)
    gy = _rand(*y.shape)
    fn = lambda gy: ops.max_pool2d_backward(gy, x.detach(), idx, [3, 3], [2, 2], [1, 1], [1, 1], True)  # noqa: E731
    assert gradcheck(fn, (gy,), **FAST) and gradgradcheck(fn, (gy,), **FAST)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradgradcheck(training, relu):
    x, w, b = _rand(3, 4, 3, 2), _rand(4), _rand(4)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    fn = FF.batch_norm_relu if relu else FF.batch_norm
    assert gradgradcheck(lambda x, w, b: fn(x, rm.clone(), rv.clone(), w, b, training), (x, w, b), **FAST)
    assert gradgradcheck(lambda x, b: fn(x, rm.clone(), rv.clone(), None, b, training), (x, b), **FAST)


def test_batch_norm_3d_input_double_backward():
    x, w = _rand(4, 3, 5), _rand(3)
    assert gradgradcheck(lambda x, w: FF.batch_norm(x, None, None, w, None, True), (x, w), **FAST)


@pytest.mark.parametrize("name", ["resnet_like", "inception_like"])
def test_gradient_penalty_matches_torch(name):
    # WGAN-GP / R1 style: loss + ||d out / d x||^2, trained through the gradient.
    ref, ours = pair(name, dtype=torch.float64)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    grads = []
    for model in (ours, ref):
        xi = x.clone().requires_grad_()
        out = model(xi).logsumexp(1).sum()
        (gx,) = torch.autograd.grad(out, xi, create_graph=True)
        loss = out + gx.square().sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
