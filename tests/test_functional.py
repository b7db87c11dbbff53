"""fastconv.functional vs torch.nn.functional on the CPU: forward and every gradient, each algorithm,
float32 and float64, NCHW and channels_last, over a grid of awkward shapes."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
import fastconv.functional as FF
from helpers import assert_close, check_against_torch

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 3, 9, 7, 4, 3, 3, 1, 1, 1, 1),       # C=3 stem-like, odd sizes
    (1, 4, 1, 1, 5, 1, 1, 1, 0, 1, 1),       # 1x1 map, 1x1 kernel
    (2, 6, 8, 8, 6, 3, 3, 2, 1, 1, 3),       # groups
    (2, 4, 7, 9, 4, 3, 3, 1, 1, 1, 4),       # depthwise
    (1, 4, 8, 8, 8, 3, 3, 1, 2, 1, 4),       # depthwise multiplier 2
    (2, 3, 11, 10, 2, 3, 2, 1, (2, 1), 2, 1),  # dilation, asymmetric padding
    (1, 2, 9, 9, 3, 2, 2, 3, 0, 1, 1),       # stride > kernel
    (2, 5, 6, 7, 3, 1, 1, 2, 0, 1, 1),       # strided 1x1
    (1, 2, 5, 5, 3, 5, 5, (2, 1), 2, 1, 1),  # kernel = input, asymmetric stride
    (0, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1),       # empty batch
]


def _algos(case):
    n, c, h, w, k, r, s, stride, padding, dil, g = case
    algos = ["direct", "im2col"]
    if r == 1 and s == 1 and padding == 0:
        algos.append("gemm1x1")
    return algos


PARAMS = [(case, algo) for case in CONV_CASES for algo in ["auto"] + _algos(case)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case,algo", PARAMS)
def test_conv2d_matches_torch(case, algo, layout, dtype):
    n, c, h, w, k, r, s, stride, padding, dil, g = case
    x = torch.randn(n, c, h, w, dtype=dtype)
    wt = torch.randn(k, c // g, r, s, dtype=dtype)
    b = torch.randn(k, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    check_against_torch(
        lambda x, wt, b: FF.conv2d(x, wt, b, stride, padding, dil, g, algo=algo),
        lambda x, wt, b: F.conv2d(x, wt, b, stride, padding, dil, g),
        [x, wt, b], grad_idx=[0, 1, 2] if n > 0 else [1, 2])


@pytest.mark.parametrize("weight_cl", [False, True])
@pytest.mark.parametrize("input_cl", [False, True])
def test_conv2d_memory_format_follows_torch(input_cl, weight_cl):
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(8, 4, 3, 3)
    if input_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if weight_cl:
        w = w.contiguous(memory_format=torch.channels_last)
    ours, ref = FF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert ours.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt)
    assert_close(ours, ref)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("ksize,dil", [(3, 1), (4, 1), (2, 3), ((2, 5), 1)])
def test_conv2d_string_padding(padding, ksize, dil):
    kh, kw = (ksize, ksize) if isinstance(ksize, int) else ksize
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    w = torch.randn(4, 3, kh, kw, dtype=torch.float64)
    check_against_torch(lambda x, w: FF.conv2d(x, w, None, 1, padding, dil),
                        lambda x, w: F.conv2d(x, w, None, 1, padding, dil), [x, w], [0, 1])


def test_conv2d_unbatched_and_noncontiguous():
    x = torch.randn(3, 10, 12, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    check_against_torch(lambda x, w: FF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), [x, w], [0, 1])
    big = torch.randn(2, 6, 10, 12, dtype=torch.float64)
    sliced = big[:, ::2, 1:, ::2]  # non-contiguous in every dimension
    assert not sliced.is_contiguous()
    assert_close(FF.conv2d(sliced, w, padding=1, algo="direct"), F.conv2d(sliced, w, padding=1))
    assert_close(FF.conv2d(sliced, w, padding=1, algo="im2col"), F.conv2d(sliced, w, padding=1))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), cg=st.integers(1, 3), kg=st.integers(1, 3), g=st.integers(1, 2),
       h=st.integers(1, 9), w=st.integers(1, 9), r=st.integers(1, 4), s=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dh=st.integers(1, 2), dw=st.integers(1, 2), algo=st.sampled_from(["auto", "direct", "im2col"]))
def test_conv2d_property_matches_torch(n, cg, kg, g, h, w, r, s, sh, sw, ph, pw, dh, dw, algo):
    # Only configurations torch accepts: a non-empty output.
    if h + 2 * ph - dh * (r - 1) - 1 < 0 or w + 2 * pw - dw * (s - 1) - 1 < 0:
        return
    x = torch.randn(n, cg * g, h, w, dtype=torch.float64)
    wt = torch.randn(kg * g, cg, r, s, dtype=torch.float64)
    b = torch.randn(kg * g, dtype=torch.float64)
    check_against_torch(lambda x, wt, b: FF.conv2d(x, wt, b, (sh, sw), (ph, pw), (dh, dw), g, algo=algo),
                        lambda x, wt, b: F.conv2d(x, wt, b, (sh, sw), (ph, pw), (dh, dw), g), [x, wt, b], [0, 1, 2])


POOL_CASES = [  # (shape, kernel, stride, padding, dilation, ceil_mode)
    ((2, 3, 9, 7), 3, 2, 1, 1, False),
    ((2, 3, 9, 7), 3, 2, 1, 1, True),
    ((1, 2, 8, 8), 2, None, 0, 1, False),
    ((1, 2, 10, 11), (3, 2), (2, 3), (1, 0), (2, 1), True),
    ((2, 2, 1, 1), 1, 1, 0, 1, False),
    ((1, 3, 5, 5), 2, 3, 1, 1, True),        # stride > kernel
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOL_CASES)
def test_max_pool2d_matches_torch(shape, k, s, p, d, ceil, layout, dtype):
    x = torch.randn(shape, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    check_against_torch(lambda x: FF.max_pool2d(x, k, s, p, d, ceil), lambda x: F.max_pool2d(x, k, s, p, d, ceil),
                        [x], [0])
    yi, ii = FF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    yr, ir = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    assert torch.equal(ii, ir)
    assert yi.is_contiguous(memory_format=torch.channels_last) == yr.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor", [None, 3])
@pytest.mark.parametrize("shape,k,s,p,ceil", [((2, 3, 9, 7), 3, 2, 1, False), ((2, 3, 9, 7), 3, 2, 1, True),
                                              ((1, 2, 10, 11), (3, 2), (2, 3), (1, 0), True),
                                              ((1, 2, 6, 6), 2, None, 0, False)])
def test_avg_pool2d_matches_torch(shape, k, s, p, ceil, divisor, count_include_pad, layout, dtype):
    x = torch.randn(shape, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    check_against_torch(lambda x: FF.avg_pool2d(x, k, s, p, ceil, count_include_pad, divisor),
                        lambda x: F.avg_pool2d(x, k, s, p, ceil, count_include_pad, divisor), [x], [0])


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape,out", [((2, 3, 9, 7), (3, 2)), ((2, 3, 7, 7), 1), ((1, 2, 5, 6), (5, 6)),
                                       ((1, 2, 4, 5), (7, 3)), ((1, 2, 9, 7), (None, 2))])
def test_adaptive_avg_pool2d_matches_torch(shape, out, layout):
    x = torch.randn(shape, dtype=torch.float64)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    check_against_torch(lambda x: FF.adaptive_avg_pool2d(x, out), lambda x: F.adaptive_avg_pool2d(x, out), [x], [0])


def test_pooling_unbatched():
    x = torch.randn(3, 8, 9, dtype=torch.float64)
    assert_close(FF.max_pool2d(x, 2), F.max_pool2d(x, 2))
    assert_close(FF.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1))
    assert_close(FF.adaptive_avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (5, 4), (3, 2, 7), (2, 3, 2, 3, 4)])
def test_batch_norm_matches_torch(shape, affine, training, relu, dtype):
    c = shape[1]
    x = torch.randn(shape, dtype=dtype) * 2 + 0.5
    w = torch.rand(c, dtype=dtype) + 0.5 if affine else None
    b = torch.randn(c, dtype=dtype) if affine else None
    rm_a, rv_a = torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5
    rm_b, rv_b = rm_a.clone(), rv_a.clone()
    fn = FF.batch_norm_relu if relu else FF.batch_norm

    def ref(x, w, b):
        y = F.batch_norm(x, rm_b, rv_b, w, b, training, 0.3, 1e-3)
        return F.relu(y) if relu else y

    grad_idx = [0, 1, 2] if affine else [0]
    check_against_torch(lambda x, w, b: fn(x, rm_a, rv_a, w, b, training, 0.3, 1e-3), ref, [x, w, b], grad_idx)
    assert_close(rm_a, rm_b)
    assert_close(rv_a, rv_b)


def test_batch_norm_channels_last_and_large_mean():
    x = (torch.randn(4, 3, 6, 5) + 1e3).contiguous(memory_format=torch.channels_last)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = FF.batch_norm(x, rm, rv, None, None, True)
    ref = F.batch_norm(x.double(), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                       None, None, True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), ref, rtol=1e-3, atol=1e-3)


def test_batch_norm_training_needs_more_than_one_value():
    with pytest.raises(ValueError, match="more than 1 value"):
        FF.batch_norm(torch.randn(1, 3), None, None, training=True)


def test_available_algorithms_cpu():
    algos = fastconv.available_algorithms("cpu")
    assert algos[0] == "auto"
    assert {"direct", "im2col", "gemm1x1"} <= set(algos)


def test_meta_tensors_give_torchs_shapes_and_strides():
    # Shape inference without data: every op's fake kernel answers on the meta device with the sizes
    # and strides torch's CPU kernels produce (torch's own meta conv ignores channels_last).
    def cases(dev):
        x = torch.zeros(2, 3, 17, 15, device=dev).contiguous(memory_format=torch.channels_last)
        w = torch.zeros(8, 3, 3, 3, device=dev)
        ours = [FF.conv2d(x, w, None, 2, 1), FF.max_pool2d(x, 3, 2, 1, ceil_mode=True), FF.avg_pool2d(x, 2),
                FF.adaptive_avg_pool2d(x, 4)]
        ref = [F.conv2d(x, w, None, 2, 1), F.max_pool2d(x, 3, 2, 1, ceil_mode=True), F.avg_pool2d(x, 2),
               F.adaptive_avg_pool2d(x, 4)]
        return ours, ref

    meta, _ = cases("meta")
    _, cpu_ref = cases("cpu")
    for ours, ref in zip(meta, cpu_ref):
        assert ours.device.type == "meta" and ours.shape == ref.shape and ours.stride() == ref.stride()
    from fastconv.models import resnet18

    model = resnet18().to("meta")
    assert model(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, 1000)
