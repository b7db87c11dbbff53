"""CPU torch.ops.fastconv.conv2d / conv2d_dgrad / conv2d_wgrad against torch, every algorithm.

References are computed by torch in float64 from the same values (autograd for the gradients), so
float32 results are held to float32 rounding only and float64 results to a tight tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv.*)

ops = torch.ops.fastconv
ALGOS = ("direct", "im2col", "gemm1x1")
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-4}}


@dataclass(frozen=True)
class Cfg:
    id: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True

    def args(self):
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


CONFIGS = [
    Cfg("1x1map_1x1", 2, 3, 1, 1, 4, 1, 1),
    Cfg("1x1map_3x3pad", 2, 3, 1, 1, 4, 3, 3, padding=(1, 1)),
    Cfg("odd_C3", 3, 3, 7, 5, 5, 3, 3, padding=(1, 1)),
    Cfg("dilated", 2, 4, 9, 8, 6, 3, 3, padding=(2, 2), dilation=(2, 2)),
    Cfg("groups2", 2, 6, 7, 7, 4, 3, 3, padding=(1, 1), groups=2),
    Cfg("depthwise", 2, 5, 8, 6, 5, 3, 3, padding=(1, 1), groups=5),
    Cfg("depthwise_x2_s2", 2, 4, 6, 7, 8, 3, 3, stride=(2, 2), padding=(1, 1), groups=4),
    Cfg("stride_gt_kernel", 2, 3, 11, 10, 4, 2, 2, stride=(3, 3)),
    Cfg("asym_nobias", 1, 3, 10, 9, 5, 3, 5, stride=(2, 1), padding=(0, 2), dilation=(1, 2), bias=False),
    Cfg("stem7x7", 1, 3, 15, 15, 4, 7, 7, stride=(2, 2), padding=(3, 3)),
    Cfg("pad_exceeds_image", 2, 2, 3, 3, 3, 5, 5, padding=(2, 2), bias=False),
    Cfg("1x1_pad1", 2, 3, 4, 4, 2, 1, 1, padding=(1, 1)),
    Cfg("1x1", 3, 16, 5, 5, 8, 1, 1),
    Cfg("1x1_s2_odd", 2, 8, 9, 7, 6, 1, 1, stride=(2, 2)),
    Cfg("1x1_groups_asym_stride", 2, 6, 7, 8, 9, 1, 1, stride=(2, 3), dilation=(2, 1), groups=3, bias=False),
    Cfg("1x1_depthwise", 2, 4, 5, 6, 4, 1, 1, groups=4),
    Cfg("batch9_wgrad_chunks", 9, 2, 5, 4, 3, 3, 3, padding=(1, 1)),
    Cfg("empty_batch", 0, 3, 5, 5, 4, 3, 3, padding=(1, 1)),
]
LAYOUTS = ("contiguous", "cl_input", "cl_weight", "cl_both", "sliced")


def can_implement(algo: str, c: Cfg) -> bool:
    return algo != "gemm1x1" or (c.R == 1 and c.S == 1 and c.padding == (0, 0))


def make_inputs(c: Cfg, layout: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if layout == "sliced":
        # Non-contiguous input: every other column of a wider tensor, offset by one channel.
        x = torch.randn(c.N, c.C + 1, c.H, 2 * c.W, generator=g, dtype=dtype)[:, 1:, :, ::2]
    else:
        x = torch.randn(c.N, c.C, c.H, c.W, generator=g, dtype=dtype)
    w = torch.randn(c.K, c.C // c.groups, c.R, c.S, generator=g, dtype=dtype)
    b = torch.randn(c.K, generator=g, dtype=dtype) if c.bias else None
    if layout in ("cl_input", "cl_both"):
        x = x.contiguous(memory_format=torch.channels_last)
    if layout in ("cl_weight", "cl_both"):
        w = w.contiguous(memory_format=torch.channels_last)
    return x, w, b


def reference(c: Cfg, x, w, b, dy):
    """float64 y, dx, dw by torch autograd from the same values."""
    xr = x.detach().double().requires_grad_(True)
    wr = w.detach().double().requires_grad_(True)
    br = b.detach().double() if b is not None else None
    y = F.conv2d(xr, wr, br, c.stride, c.padding, c.dilation, c.groups)
    dx, dw = torch.autograd.grad(y, (xr, wr), dy.double(), allow_unused=True)
    return y.detach(), dx if dx is not None else torch.zeros_like(xr), dw


def make_grad_output(c: Cfg, y_shape, layout: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    if layout == "sliced":
        n, k, p, q = y_shape
        return torch.randn(n, k, p, 2 * q, generator=g, dtype=dtype)[..., 1::2]
    dy = torch.randn(y_shape, generator=g, dtype=dtype)
    if layout.startswith("cl"):
        dy = dy.contiguous(memory_format=torch.channels_last)
    return dy


def memory_format_flags(t: torch.Tensor):
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


CASES = [
    pytest.param(c, layout, dtype, algo, id=f"{c.id}-{layout}-{str(dtype)[6:]}-{algo}")
    for c in CONFIGS
    for layout in LAYOUTS
    for dtype in (torch.float64, torch.float32)
    for algo in ALGOS
    if can_implement(algo, c)
]


@pytest.mark.parametrize("c,layout,dtype,algo", CASES)
def test_conv2d_fwd_dgrad_wgrad(c: Cfg, layout: str, dtype: torch.dtype, algo: str):
    x, w, b = make_inputs(c, layout, dtype)
    stride, padding, dilation, groups = c.args()

    y = ops.conv2d(x, w, b, stride, padding, dilation, groups, algo)
    dy = make_grad_output(c, y.shape, layout, dtype)
    y_ref, dx_ref, dw_ref = reference(c, x, w, b, dy)
    assert y.dtype == dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y.double(), y_ref, **TOL[dtype])
    if dtype == torch.float32 and y.numel() > 0:  # empty tensors carry no layout
        y_torch = F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)
        assert memory_format_flags(y) == memory_format_flags(y_torch)

    dx = ops.conv2d_dgrad(dy, w, list(x.shape), stride, padding, dilation, groups, algo)
    assert dx.dtype == dtype and dx.shape == x.shape
    torch.testing.assert_close(dx.double(), dx_ref, **TOL[dtype])

    dw = ops.conv2d_wgrad(dy, x, list(w.shape), stride, padding, dilation, groups, algo)
    assert dw.dtype == dtype and dw.shape == w.shape
    torch.testing.assert_close(dw.double(), dw_ref, **TOL[dtype])


@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_grad_memory_formats(algo: str):
    c = CONFIGS[2]
    stride, padding, dilation, groups = c.args()
    for layout, channels_last in (("contiguous", False), ("cl_both", True)):
        x, w, b = make_inputs(c, layout, torch.float32)
        y = ops.conv2d(x, w, b, stride, padding, dilation, groups, algo)
        dy = make_grad_output(c, y.shape, layout, torch.float32)
        dx = ops.conv2d_dgrad(dy, w, list(x.shape), stride, padding, dilation, groups, algo)
        dw = ops.conv2d_wgrad(dy, x, list(w.shape), stride, padding, dilation, groups, algo)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert y.is_contiguous(memory_format=fmt)
        assert dx.is_contiguous(memory_format=fmt)
        assert dw.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("algo", ALGOS)
def test_deterministic(algo: str):
    # direct is bitwise independent of the thread count; the BLAS-backed algos are run-to-run stable.
    c = CONFIGS[13] if algo == "gemm1x1" else CONFIGS[16]
    x, w, b = make_inputs(c, "contiguous", torch.float32)
    stride, padding, dilation, groups = c.args()
    dy = make_grad_output(
        c, ops.conv2d(x, w, b, stride, padding, dilation, groups, algo).shape, "contiguous", torch.float32
    )
    threads = torch.get_num_threads()

    def run():
        return (
            ops.conv2d(x, w, b, stride, padding, dilation, groups, algo),
            ops.conv2d_dgrad(dy, w, list(x.shape), stride, padding, dilation, groups, algo),
            ops.conv2d_wgrad(dy, x, list(w.shape), stride, padding, dilation, groups, algo),
        )

    first = run()
    try:
        if algo == "direct":
            torch.set_num_threads(1)
        second = run()
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)


# ---- bad inputs -----------------------------------------------------------------------------------


def _xwb(dtype=torch.float32, C=4, K=6, R=3):
    return (torch.randn(2, C, 8, 8, dtype=dtype), torch.randn(K, C, R, R, dtype=dtype), torch.randn(K, dtype=dtype))


def test_unknown_algo_raises_value_error():
    x, w, b = _xwb()
    with pytest.raises(ValueError, match="winograd"):
        ops.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "winograd")
    dy = torch.randn(2, 6, 8, 8)
    with pytest.raises(ValueError):
        ops.conv2d_dgrad(dy, w, list(x.shape), [1, 1], [1, 1], [1, 1], 1, "auto")
    with pytest.raises(ValueError):
        ops.conv2d_wgrad(dy, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1, "")


@pytest.mark.parametrize("R,padding", [(3, 1), (3, 0), (1, 1)])
def test_gemm1x1_cannot_implement(R: int, padding: int):
    x, w, b = _xwb(R=R)
    P = 8 + 2 * padding - R + 1
    dy = torch.randn(2, 6, P, P)
    pads = [padding, padding]
    with pytest.raises(NotImplementedError, match="gemm1x1"):
        ops.conv2d(x, w, b, [1, 1], pads, [1, 1], 1, "gemm1x1")
    with pytest.raises(NotImplementedError, match="conv2d_dgrad.*gemm1x1"):
        ops.conv2d_dgrad(dy, w, list(x.shape), [1, 1], pads, [1, 1], 1, "gemm1x1")
    with pytest.raises(NotImplementedError, match="conv2d_wgrad.*gemm1x1"):
        ops.conv2d_wgrad(dy, x, list(w.shape), [1, 1], pads, [1, 1], 1, "gemm1x1")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_unsupported_dtype_raises_not_implemented(dtype: torch.dtype):
    # torch's own kernels raise NotImplementedError for a dtype they lack ("not implemented for 'Bool'").
    x, w, b = (t.to(dtype) for t in _xwb())
    dy = torch.zeros(2, 6, 8, 8, dtype=dtype)
    with pytest.raises(NotImplementedError, match="not implemented for .*Float, Double"):
        ops.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "direct")
    with pytest.raises(NotImplementedError):
        ops.conv2d_dgrad(dy, w, list(x.shape), [1, 1], [1, 1], [1, 1], 1, "im2col")
    with pytest.raises(NotImplementedError):
        ops.conv2d_wgrad(dy, x, list(w.shape), [1, 1], [1, 1], [1, 1], 1, "direct")


def test_channel_mismatch_raises_runtime_error_like_torch():
    x = torch.randn(2, 5, 8, 8)
    w = torch.randn(6, 4, 3, 3)
    with pytest.raises(RuntimeError):
        F.conv2d(x, w, None, 1, 1)
    with pytest.raises(RuntimeError, match="channels"):
        ops.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, "direct")
    # K not divisible by groups
    with pytest.raises(RuntimeError, match="divisible"):
        ops.conv2d(torch.randn(2, 4, 8, 8), torch.randn(5, 2, 3, 3), None, [1, 1], [1, 1], [1, 1], 2, "direct")


def test_other_bad_inputs_raise_runtime_error():
    x, w, b = _xwb()
    args = ([1, 1], [1, 1], [1, 1], 1, "direct")
    with pytest.raises(RuntimeError, match="should be the same"):
        ops.conv2d(x.double(), w.double(), b, *args)
    with pytest.raises(RuntimeError, match="should be the same"):
        ops.conv2d(x, w.double(), b, *args)
    with pytest.raises(RuntimeError, match="bias"):
        ops.conv2d(x, w, torch.randn(5), *args)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.conv2d(x[0], w, b, *args)
    with pytest.raises(RuntimeError, match="too small"):
        ops.conv2d(torch.randn(1, 4, 2, 2), w, b, [1, 1], [0, 0], [1, 1], 1, "direct")
    with pytest.raises(RuntimeError, match="grad_output"):
        ops.conv2d_dgrad(torch.randn(2, 6, 7, 8), w, list(x.shape), *args)
    with pytest.raises(RuntimeError, match="grad_output"):
        ops.conv2d_wgrad(torch.randn(2, 5, 8, 8), x, list(w.shape), *args)


@pytest.mark.parametrize("algo", ALGOS)
def test_expanded_grad_output(algo: str):
    # y.sum().backward() hands the backward a grad_output with all-zero strides.
    c = CONFIGS[14] if algo == "gemm1x1" else CONFIGS[3]
    x, w, b = make_inputs(c, "contiguous", torch.float64)
    stride, padding, dilation, groups = c.args()
    y = ops.conv2d(x, w, b, stride, padding, dilation, groups, algo)
    dy = torch.ones((), dtype=torch.float64).expand(y.shape)
    _, dx_ref, dw_ref = reference(c, x, w, b, dy)
    dx = ops.conv2d_dgrad(dy, w, list(x.shape), stride, padding, dilation, groups, algo)
    dw = ops.conv2d_wgrad(dy, x, list(w.shape), stride, padding, dilation, groups, algo)
    torch.testing.assert_close(dx, dx_ref, **TOL[torch.float64])
    torch.testing.assert_close(dw, dw_ref, **TOL[torch.float64])
