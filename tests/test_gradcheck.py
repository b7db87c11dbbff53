"""torch.autograd.gradcheck (float64) for every op, and gradgradcheck where double backward is
supported (convolution and pooling)."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastconv.functional as FF


def _rand(*shape, cl=False):
    t = torch.randn(*shape, dtype=torch.float64)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("algo,cfg", [
    ("direct", dict(stride=2, padding=1, dilation=1, groups=1, k=3)),
    ("direct", dict(stride=1, padding=2, dilation=2, groups=2, k=3)),
    ("im2col", dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=2, k=3)),
    ("im2col", dict(stride=1, padding=1, dilation=(1, 2), groups=1, k=2)),
    ("gemm1x1", dict(stride=2, padding=0, dilation=1, groups=1, k=1)),
    ("gemm1x1", dict(stride=1, padding=0, dilation=1, groups=2, k=1)),
])
def test_conv2d_gradcheck(algo, cfg, cl):
    g, k = cfg["groups"], cfg["k"]
    x, w, b = _rand(2, 4, 6, 5, cl=cl), _rand(4, 4 // g, k, k), _rand(4)

    def fn(x, w, b):
        return FF.conv2d(x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], g, algo=algo)

    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_max_pool2d_gradcheck():
    x = _rand(2, 3, 7, 6)
    fn = lambda x: FF.max_pool2d(x, 3, 2, 1, 1, True)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("count_include_pad,divisor", [(True, None), (False, None), (True, 5)])
def test_avg_pool2d_gradcheck(count_include_pad, divisor):
    x = _rand(2, 3, 7, 6)
    fn = lambda x: FF.avg_pool2d(x, 3, 2, 1, True, count_include_pad, divisor)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_adaptive_avg_pool2d_gradcheck():
    x = _rand(2, 3, 7, 6)
    fn = lambda x: FF.adaptive_avg_pool2d(x, (3, 4))  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(training, relu):
    x, w, b = _rand(3, 4, 3, 2), _rand(4), _rand(4)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    fn = FF.batch_norm_relu if relu else FF.batch_norm
    # training updates running stats in place: give each call its own copy so the function is pure.
    assert gradcheck(lambda x, w, b: fn(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5), (x, w, b))
