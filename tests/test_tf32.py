"""float32 on TF32 tensor cores (fastconv.backends.allow_tf32): the sm_80 implicit GEMM
(algo "implicit_gemm", mma.sync m16n8k8 .tf32) in all three directions, on the CUDA device (a GPU or the
emulated one), against torch in float64 with TF32's error bound; off by default (float32 means float32).
The Hopper engine's TF32 path is in test_sm90_engine.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _devices import CUDA_DEVICE, EMULATED

import fastconv.functional as FF
from fastconv import algorithms, backends

pytestmark = [pytest.mark.cuda, pytest.mark.emulated,
              pytest.mark.skipif(CUDA_DEVICE is None, reason="needs a CUDA device (a GPU or the emulated one)")]

# (input, weight, stride, padding, dilation, groups): the 16-byte path (C, K multiples of 4) and the
# element-wise one (C = 3, K = 10), stride 2, dilation, groups.
CASES = [
    ((2, 12, 7, 7), (20, 12, 3, 3), 1, 1, 1, 1),
    ((1, 3, 9, 9), (10, 3, 3, 3), 2, 1, 1, 1),
    ((1, 8, 8, 8), (8, 8, 3, 3), 1, 2, 2, 1),
    ((2, 16, 6, 6), (24, 8, 3, 3), 1, 1, 1, 2),
]


def _bound(a, b, op):
    # Each operand truncated to TF32 is within 2^-10 relative, a product within ~2^-9; FP32 sums add
    # far less at these sizes: 2^-8·Σ|a·b| bounds both.
    return op(a.abs(), b.abs()) * 2.0 ** -8 + 1e-6


@pytest.mark.parametrize("case", CASES, ids=["vec", "elementwise_c3", "dilation2", "groups2"])
def test_implicit_gemm_tf32_all_directions(case):
    xs, ws, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(xs, generator=g, dtype=torch.float64), torch.randn(ws, generator=g, dtype=torch.float64)
    cl = torch.channels_last
    xd = x.float().to(CUDA_DEVICE).contiguous(memory_format=cl).requires_grad_()
    wd = w.float().to(CUDA_DEVICE).contiguous(memory_format=cl).requires_grad_()
    with backends.flags(allow_tf32=True):
        y = FF.conv2d(xd, wd, None, stride, padding, dilation, groups, algo="implicit_gemm")
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        y.backward(gy.float().to(CUDA_DEVICE))
    conv = lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, groups)  # noqa: E731
    ref = conv(x, w)
    ref_dx = torch.nn.grad.conv2d_input(xs, w, gy, stride, padding, dilation, groups)
    ref_dw = torch.nn.grad.conv2d_weight(x, ws, gy, stride, padding, dilation, groups)
    dx_bound = torch.nn.grad.conv2d_input(xs, w.abs(), gy.abs(), stride, padding, dilation, groups) * 2.0 ** -8 + 1e-6
    dw_bound = torch.nn.grad.conv2d_weight(x.abs(), ws, gy.abs(), stride, padding, dilation, groups) * 2.0 ** -8 + 1e-6
    for name, got, want, bound in (("fprop", y, ref, _bound(x, w, conv)), ("dgrad", xd.grad, ref_dx, dx_bound),
                                   ("wgrad", wd.grad, ref_dw, dw_bound)):
        err = (got.detach().cpu().double() - want).abs()
        assert bool((err <= bound).all()), f"{name}: TF32 error {float((err / bound).max()):.3g} x its bound"
    # TF32 really ran: the forward is farther from float64 than an FP32 product sum.
    fp32_err = (conv(x.float(), w.float()).double() - ref).abs().max()
    assert float((y.detach().cpu().double() - ref).abs().max()) > 4 * float(fp32_err)


def test_float32_is_not_tf32_by_default():
    assert backends.allow_tf32 is False
    x = torch.randn(1, 8, 6, 6).to(CUDA_DEVICE).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 8, 3, 3).to(CUDA_DEVICE).contiguous(memory_format=torch.channels_last)
    with pytest.raises(NotImplementedError, match="allow_tf32"):
        FF.conv2d(x, w, None, 1, 1, algo="implicit_gemm")
    # "auto" keeps float32 off the tensor cores whatever the switch (no TF32 rule until measured).
    p = algorithms.ConvProblem(8, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1, torch.float32, "cuda", True, None,
                               EMULATED)
    for allow in (False, True):
        with backends.flags(allow_tf32=allow):
            assert algorithms.heuristic(p) not in ("implicit_gemm", "implicit_gemm_sm90")
