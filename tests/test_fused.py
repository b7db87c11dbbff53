"""conv2d_fused / fastconv.fused.conv2d_bias_act on the CPU against the unfused torch composition
relu?(F.conv2d(x, w) · scale + bias + residual): forward, every gradient, gradcheck, opcheck, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.fused import conv2d_bias_act
from helpers import assert_close, check_against_torch

ops = torch.ops.fastconv


def _ref(x, w, scale, bias, residual, stride, padding, dilation, groups, relu):
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def _inputs(n, c, h, w, k, r, s, stride, padding, dilation, groups, parts, dtype, cl):
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(n, c, h, w, dtype=dtype).contiguous(memory_format=fmt)
    wt = torch.randn(k, c // groups, r, s, dtype=dtype).contiguous(memory_format=fmt)
    p = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    scale = torch.rand(k, dtype=dtype) + 0.5 if "scale" in parts else None
    bias = torch.randn(k, dtype=dtype) if "bias" in parts else None
    res = torch.randn(n, k, p, q, dtype=dtype).contiguous(memory_format=fmt) if "res" in parts else None
    return [x, wt, scale, bias, res]


# (algo, N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONFIGS = [
    ("direct", 2, 4, 7, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    ("im2col", 2, 4, 8, 7, 6, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    ("gemm1x1", 2, 6, 5, 5, 4, 1, 1, (2, 2), (0, 0), (1, 1), 1),
]
PARTS = [("scale", "bias", "res"), ("bias",), ("scale",), ("res",), ()]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("parts", PARTS, ids=["-".join(p) or "none" for p in PARTS])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_against_torch(cfg, parts, relu, dtype, cl):
    algo, n, c, h, w, k, r, s, stride, padding, dilation, groups = cfg
    inputs = _inputs(n, c, h, w, k, r, s, stride, padding, dilation, groups, parts, dtype, cl)

    def ours(x, wt, sc, b, res):
        return conv2d_bias_act(x, wt, sc, b, res, stride, padding, dilation, groups, relu, algo=algo)

    def ref(x, wt, sc, b, res):
        return _ref(x, wt, sc, b, res, stride, padding, dilation, groups, relu)

    check_against_torch(ours, ref, inputs, [i for i, t in enumerate(inputs) if t is not None])


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_memory_format_and_dtype_follow_torch(cl):
    x, w, sc, b, res = _inputs(2, 4, 6, 6, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1, ("scale", "bias", "res"),
                               torch.float32, cl)
    y = conv2d_bias_act(x, w, sc, b, res.contiguous(), padding=1, relu=True)
    ref = _ref(x, w, sc, b, res, (1, 1), (1, 1), (1, 1), 1, True)
    assert y.dtype == ref.dtype
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert_close(y, ref)


def test_float64_params_with_float32_conv():
    # scale/bias are applied in the conv's dtype whatever their own dtype (a folded BN kept in float64).
    x, w, sc, b, _ = _inputs(1, 3, 5, 5, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1, ("scale", "bias"), torch.float32, False)
    y = conv2d_bias_act(x, w, sc.double(), b.double(), padding=1)
    assert y.dtype == torch.float32
    assert_close(y, _ref(x, w, sc, b, None, (1, 1), (1, 1), (1, 1), 1, False))


def test_unbatched_and_auto():
    x, w, sc, b, res = _inputs(1, 4, 6, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, ("scale", "bias", "res"),
                               torch.float64, False)
    y = conv2d_bias_act(x[0], w, sc, b, res[0], padding=1, relu=True)
    assert y.shape == res.shape[1:]
    assert_close(y, _ref(x, w, sc, b, res, (1, 1), (1, 1), (1, 1), 1, True)[0])


def test_relu_nan_passes_and_grad_masks_zero():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    res = torch.tensor([[[[float("nan"), -1.0], [0.0, 2.0]]]], dtype=torch.float64, requires_grad=True)
    y = conv2d_bias_act(x, w, residual=res, relu=True)
    ref = F.relu(res.detach())
    torch.testing.assert_close(y.detach(), ref, equal_nan=True)
    (g,) = torch.autograd.grad(y, res, torch.ones_like(y))
    torch.testing.assert_close(g, torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64))


def test_empty_batch():
    x = torch.randn(0, 4, 5, 5)
    w = torch.randn(6, 4, 3, 3)
    y = conv2d_bias_act(x, w, torch.ones(6), torch.zeros(6), padding=1, relu=True)
    assert y.shape == (0, 6, 5, 5)


@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck(relu):
    x, w, sc, b, res = _inputs(1, 2, 5, 4, 3, 3, 2, (2, 1), (1, 1), (1, 1), 1, ("scale", "bias", "res"),
                               torch.float64, False)
    args = [t.requires_grad_() for t in (x, w, sc, b, res)]

    def f(x, w, sc, b, res):
        return ops.conv2d_fused(x, w, sc, b, res, [2, 1], [1, 1], [1, 1], 1, relu, "direct")

    assert torch.autograd.gradcheck(f, args)


def _opcheck_samples():
    x, w, sc, b, res = _inputs(2, 4, 6, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 2, ("scale", "bias", "res"),
                               torch.float64, False)
    for t in (x, w, sc, b, res):
        t.requires_grad_()
    yield (x, w, sc, b, res, [1, 1], [1, 1], [1, 1], 2, True, "direct")
    yield (x.detach().contiguous(memory_format=torch.channels_last), w, None, b, None, [2, 2], [1, 1], [1, 1], 2,
           False, "im2col")
    w1 = torch.randn(6, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    yield (x, w1, sc, None, res, [1, 1], [0, 0], [1, 1], 1, True, "gemm1x1")


@pytest.mark.parametrize("args", list(_opcheck_samples()), ids=["direct", "im2col", "gemm1x1"])
def test_opcheck(args):
    torch.library.opcheck(ops.conv2d_fused, args)


def test_errors():
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(8, 4, 3, 3)
    with pytest.raises(RuntimeError, match="scale"):
        conv2d_bias_act(x, w, scale=torch.ones(7), padding=1)
    with pytest.raises(RuntimeError, match="bias"):
        conv2d_bias_act(x, w, bias=torch.ones(8, 1), padding=1)
    with pytest.raises(RuntimeError, match="residual of size"):
        conv2d_bias_act(x, w, residual=torch.ones(2, 8, 5, 6), padding=1)
    with pytest.raises(RuntimeError, match="residual type"):
        conv2d_bias_act(x, w, residual=torch.ones(2, 8, 6, 6, dtype=torch.float64), padding=1)
    with pytest.raises(ValueError, match="unknown"):
        ops.conv2d_fused(x, w, None, None, None, [1, 1], [1, 1], [1, 1], 1, False, "nope")
    with pytest.raises(TypeError, match="algo"):
        conv2d_bias_act(x, w, algo=3)
    assert "conv2d_bias_act" in fastconv.fused.__all__


def test_conv2d_bias_act_under_cpu_autocast_matches_torch():
    # A bfloat16 activation under CPU autocast: the conv computes from bf16-rounded operands like torch's.
    import torch.nn.functional as F

    from fastconv.fused import conv2d_bias_act

    x = torch.randn(2, 4, 8, 8).bfloat16()
    w, b = torch.randn(6, 4, 3, 3), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = conv2d_bias_act(x, w, None, b, None, padding=1, relu=True)
        ref = torch.relu(F.conv2d(x, w, b, padding=1))
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)
