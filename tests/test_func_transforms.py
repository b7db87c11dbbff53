"""torch.func transforms (grad, jacrev, jacfwd, jvp, vmap, per-sample gradients, forward-over-reverse) and
forward-mode AD over fastconv's functional API, each compared with the same transform over
torch.nn.functional in float64; and torch.jit.trace without TracerWarnings."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import fastconv
import fastconv.functional as FF
from fastconv.fused import conv2d_bias_act
from helpers import assert_close

D = torch.float64


@pytest.fixture(autouse=True)
def _no_vmap_fallback():
    # An op without a batching rule would otherwise run once per example (slow, correct): make it an
    # error, so that every vmap below is known to go through fastconv's vmap rules.
    was = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(was)


def _r(*shape):
    return torch.randn(*shape, dtype=D)


def _conv(algo, **kw):
    def fn(L, x, w, b):
        return L.conv2d(x, w, b, **kw, **({"algo": algo} if L is FF else {}))
    return fn


def _pool(name, *args, **kw):
    return lambda L, x: getattr(L, name)(x, *args, **kw)


def _bn(training, relu=False):
    # Evaluation normalises with running statistics; training here with none (updating them is
    # tested below: under vmap they must be vmapped too).
    rm, rv = (None, None) if training else (_r(4), torch.rand(4, dtype=D) + 0.5)

    def fn(L, x, w, b):
        if L is FF:
            return (FF.batch_norm_relu if relu else FF.batch_norm)(x, rm, rv, w, b, training)
        y = F.batch_norm(x, rm, rv, w, b, training)
        return F.relu(y) if relu else y
    return fn


def _fused(L, x, w, scale, bias, residual):
    if L is FF:
        return conv2d_bias_act(x, w, scale, bias, residual, padding=1, relu=True)
    return F.relu(F.conv2d(x, w, padding=1) * scale[:, None, None] + bias[:, None, None] + residual)


# name -> (fn(L, *tensors) with L fastconv.functional or torch.nn.functional, the tensors' shapes)
CASES = {
    "conv_direct": (_conv("direct", padding=1), [(2, 4, 5, 6), (6, 4, 3, 3), (6,)]),
    "conv_im2col_strided_grouped": (_conv("im2col", stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
                                    [(2, 4, 7, 8), (6, 2, 3, 2), (6,)]),
    "conv_gemm1x1": (_conv("gemm1x1", stride=2), [(2, 4, 5, 5), (3, 4, 1, 1), (3,)]),
    "max_pool": (_pool("max_pool2d", 3, 2, 1, ceil_mode=True), [(2, 3, 7, 6)]),
    "max_pool_dilated": (_pool("max_pool2d", 2, 1, 0, 2), [(2, 3, 6, 5)]),
    "avg_pool": (_pool("avg_pool2d", 3, 2, 1, ceil_mode=True, count_include_pad=False), [(2, 3, 7, 6)]),
    "avg_pool_divisor": (_pool("avg_pool2d", 2, 1, divisor_override=3), [(2, 3, 5, 4)]),
    "adaptive_avg_pool": (_pool("adaptive_avg_pool2d", (3, 2)), [(2, 3, 7, 5)]),
    "bn_train": (_bn(True), [(3, 4, 3, 2), (4,), (4,)]),
    "bn_eval": (_bn(False), [(3, 4, 3, 2), (4,), (4,)]),
    "bn_relu_train": (_bn(True, relu=True), [(3, 4, 3, 2), (4,), (4,)]),
    "bn_relu_eval": (_bn(False, relu=True), [(3, 4, 3, 2), (4,), (4,)]),
    "conv2d_bias_act": (_fused, [(2, 3, 5, 4), (4, 3, 3, 3), (4,), (4,), (2, 4, 5, 4)]),
}


def _case(name):
    fn, shapes = CASES[name]
    return fn, [_r(*s) for s in shapes]


def _assert_all_close(ours, ref):
    ours, ref = torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(ref)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape, (a.shape, b.shape)
        assert_close(a, b)


def _both(transform):
    """transform(L) for L = fastconv.functional and torch.nn.functional, compared."""
    _assert_all_close(transform(FF), transform(F))


def _weighted_sum(fn, L, cotangent):
    return lambda *a: (fn(L, *a) * cotangent).sum()


@pytest.mark.parametrize("name", CASES)
def test_grad(name):
    fn, xs = _case(name)
    g = torch.randn_like(fn(F, *xs))
    argnums = tuple(range(len(xs)))
    _both(lambda L: grad(_weighted_sum(fn, L, g), argnums=argnums)(*xs))


@pytest.mark.parametrize("jacobian", [jacrev, jacfwd])
@pytest.mark.parametrize("name", CASES)
def test_jacobian(name, jacobian):
    fn, xs = _case(name)
    _both(lambda L: jacobian(lambda *a: fn(L, *a), argnums=tuple(range(len(xs))))(*xs))


@pytest.mark.parametrize("name", CASES)
def test_jvp(name):
    fn, xs = _case(name)
    ts = [torch.randn_like(x) for x in xs]
    _both(lambda L: jvp(lambda *a: fn(L, *a), tuple(xs), tuple(ts)))


@pytest.mark.parametrize("name", CASES)
def test_forward_ad(name):
    fn, xs = _case(name)
    ts = [torch.randn_like(x) for x in xs]

    def run(L):
        with fwAD.dual_level():
            out = fn(L, *(fwAD.make_dual(x, t) for x, t in zip(xs, ts)))
            primal, tangent = fwAD.unpack_dual(out)
            return primal, tangent

    _both(run)


@pytest.mark.parametrize("name", CASES)
def test_vmap_every_argument(name):
    # Every tensor vmapped (for conv: a weight per example, folded into groups).
    fn, xs = _case(name)
    stacked = [torch.stack([x, torch.randn_like(x), torch.randn_like(x)]) for x in xs]
    _both(lambda L: vmap(lambda *a: fn(L, *a))(*stacked))


@pytest.mark.parametrize("name", CASES)
def test_vmap_input_only_channels_last(name):
    # Only the activation vmapped (folded into N, or C for training batch norm), here at dim 1 and
    # channels_last per example: "NYI: querying is_contiguous inside of vmap" must not be hit.
    fn, xs = _case(name)
    x = torch.stack([xs[0], torch.randn_like(xs[0])])  # [2, N, C, H, W] -> [N, 2, C, H, W], NHWC in memory
    x = x.permute(0, 1, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)
    assert x[:, 0].is_contiguous(memory_format=torch.channels_last)
    in_dims = (1,) + (None,) * (len(xs) - 1)
    _both(lambda L: vmap(lambda *a: fn(L, *a), in_dims=in_dims)(x, *xs[1:]))


@pytest.mark.parametrize("name", CASES)
def test_per_example_grad(name):
    # vmap(grad): each example's input gradient, and the parameters' gradient per example.
    fn, xs = _case(name)
    stacked = torch.stack([xs[0], torch.randn_like(xs[0])])
    g = torch.randn_like(fn(F, *xs))
    argnums = tuple(range(len(xs)))
    _both(lambda L: vmap(grad(_weighted_sum(fn, L, g), argnums=argnums), in_dims=(0,) + (None,) * (len(xs) - 1))(
        stacked, *xs[1:]))


@pytest.mark.parametrize("name", CASES)
def test_forward_over_reverse_and_reverse_over_reverse(name):
    # Hessian-vector products: jvp of grad, and grad of a function of grad.
    fn, xs = _case(name)
    g = torch.randn_like(fn(F, *xs))
    ts = [torch.randn_like(x) for x in xs]
    argnums = tuple(range(len(xs)))

    def hvp(L):
        return jvp(grad(lambda *a: (fn(L, *a) * g).sum().square(), argnums=argnums), tuple(xs), tuple(ts))

    def grad_of_grad(L):
        inner = grad(lambda *a: (fn(L, *a) * g).sum().square(), argnums=argnums)
        return grad(lambda *a: sum((d * t).sum() for d, t in zip(inner(*a), ts)), argnums=argnums)(*xs)

    _both(hvp)
    _both(grad_of_grad)


def test_unbatched_inputs_under_vmap():
    # vmap over a batch of [C, H, W] images: each example is an unbatched input, as in torch.
    x, w, b = _r(3, 4, 6, 5), _r(2, 4, 3, 3), _r(2)
    assert vmap(lambda x: FF.conv2d(x, w, b, padding=1))(x).shape == (3, 2, 6, 5)
    _both(lambda L: vmap(lambda x: L.max_pool2d(L.conv2d(x, w, b, padding=1), 2))(x))
    _both(lambda L: vmap(grad(lambda w, x: L.conv2d(x, w, b, padding=1).square().sum()), in_dims=(None, 0))(w, x))


def test_nested_vmap():
    x, w = _r(2, 3, 2, 4, 5, 5), _r(2, 6, 4, 3, 3)
    _both(lambda L: vmap(vmap(lambda x, w: L.conv2d(x, w), in_dims=(0, None)), in_dims=(0, 0))(x, w))


def test_vmap_over_the_ops_themselves():
    # The vmap rules live on torch.ops.fastconv.*: calling the ops directly under vmap works too.
    x, w = _r(3, 2, 4, 5, 5), _r(6, 4, 3, 3)
    ours = vmap(lambda x: torch.ops.fastconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, "direct"))(x)
    assert_close(ours, vmap(lambda x: F.conv2d(x, w, padding=1))(x))
    y, idx = vmap(lambda x: torch.ops.fastconv.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False))(x)
    ref_y, ref_idx = F.max_pool2d(x.flatten(0, 1), 2, return_indices=True)
    assert_close(y, ref_y.unflatten(0, (3, 2)))
    assert torch.equal(idx, ref_idx.unflatten(0, (3, 2)))


# ---- a small conv net: per-sample gradients against a loop over torch.nn ---------------------------------
def _net(lib, relu_fused=False):
    bn, act = (fastconv.BatchNormReLU2d(4), nn.Identity()) if relu_fused else (lib.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(lib.Conv2d(3, 4, 3, padding=1), bn, act, lib.MaxPool2d(2),
                         lib.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                         lib.AvgPool2d(2, ceil_mode=True), lib.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3)).to(D)


@pytest.mark.parametrize("relu_fused", [False, True])
def test_per_sample_gradients_of_a_conv_net_match_a_loop_over_torch_nn(relu_fused):
    ref = _net(nn)
    with torch.no_grad():  # non-trivial running statistics for the eval-mode batch norm
        ref[1].running_mean.uniform_(-0.5, 0.5)
        ref[1].running_var.uniform_(0.5, 2.0)
    ours = _net(fastconv, relu_fused)
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    x, target = _r(4, 3, 8, 8), torch.tensor([0, 2, 1, 2])

    params = {k: v.detach() for k, v in ours.named_parameters()}
    buffers = {k: v.detach() for k, v in ours.named_buffers()}

    def loss(params, buffers, x, t):
        return F.cross_entropy(functional_call(ours, (params, buffers), (x.unsqueeze(0),)), t.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, None, 0, 0))(params, buffers, x, target)
    for i in range(len(x)):
        ref.zero_grad()
        F.cross_entropy(ref(x[i:i + 1]), target[i:i + 1]).backward()
        for name, p in ref.named_parameters():
            assert_close(per_sample[name][i], p.grad, msg=f"{name}, sample {i}")


# ---- batch norm's running statistics under the transforms, as torch updates them -----------------------
def _transformed_batch_norm(L, transform, x, w, b):
    """(output, running_mean, running_var) after one training step of L.batch_norm under `transform`."""
    shape = (2, 4) if transform == "vmap" else (4,)  # under vmap the statistics are vmapped too
    rm = torch.linspace(-1, 1, 2 * 4 if transform == "vmap" else 4, dtype=D).view(shape)
    rv = torch.linspace(0.5, 2, rm.numel(), dtype=D).view(shape)

    def f(x, rm, rv):
        return L.batch_norm(x, rm, rv, w, b, True, 0.3)

    if transform == "grad":
        out = grad(lambda x: f(x, rm, rv).square().sum())(x)
    elif transform == "jvp":
        out = jvp(lambda x: f(x, rm, rv), (x,), (x.cos(),))
    else:
        out = vmap(f)(torch.stack([x, 2 * x]), rm, rv)
    return out, rm, rv


@pytest.mark.parametrize("transform", ["grad", "jvp", "vmap"])
def test_running_stats_updated_like_torch(transform):
    x, w, b = _r(3, 4, 3, 2), _r(4), _r(4)
    _both(lambda L: _transformed_batch_norm(L, transform, x, w, b))


def test_vmap_with_unbatched_running_stats_raises_like_torch():
    x, rm, rv = _r(2, 3, 4, 2, 2), torch.zeros(4, dtype=D), torch.ones(4, dtype=D)
    with pytest.raises(RuntimeError) as ref:
        vmap(lambda x: F.batch_norm(x, rm, rv, training=True))(x)
    with pytest.raises(RuntimeError, match="Batch norm got a batched tensor as input while the running_mean") as ours:
        vmap(lambda x: FF.batch_norm(x, rm, rv, training=True))(x)
    assert str(ref.value).startswith(str(ours.value).split("\n")[0])


# ---- torch.jit.trace ---------------------------------------------------------------------------------------
def _traceable_model():
    return nn.Sequential(
        fastconv.Conv2d(3, 4, 4, padding="same"), fastconv.BatchNorm2d(4), fastconv.BatchNormReLU2d(4),
        fastconv.MaxPool2d(3, 2, 1, ceil_mode=True), fastconv.Conv2d(4, 4, 3, padding=1, groups=2),
        fastconv.AvgPool2d(2, ceil_mode=True, divisor_override=3), fastconv.AdaptiveAvgPool2d((None, 1)))


@pytest.mark.parametrize("training", [True, False])
def test_jit_trace_emits_no_tracer_warning(training):
    model = _traceable_model().train(training)
    x = torch.randn(2, 3, 9, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x, check_trace=not training)
        traced_fused = torch.jit.trace(
            lambda x, w, s, b: conv2d_bias_act(x, w, s, b, padding=1, relu=True),
            (x, torch.randn(4, 3, 3, 3), torch.rand(4), torch.randn(4)))
    if not training:
        x2 = torch.randn(2, 3, 9, 8)
        torch.testing.assert_close(traced(x2), model(x2))
        args = (x2, torch.randn(4, 3, 3, 3), torch.rand(4), torch.randn(4))
        torch.testing.assert_close(traced_fused(*args), conv2d_bias_act(*args[:4], padding=1, relu=True))
