"""torch.ops.fastconv pooling and batch-norm ops on CPU against torch.nn.functional.

The ops are called directly (no fastconv autograd); backward references come from torch autograd.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv.*)

ops = torch.ops.fastconv

DTYPES = [torch.float64, torch.float32]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def tol(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}


def make(shape, dtype, layout="contiguous", gen=None, fill=None) -> torch.Tensor:
    """A tensor of `shape` stored as NCHW, NHWC or a non-contiguous (every other column) view."""
    n, c, h, w = shape
    if layout == "strided":
        base = torch.randn(n, c, h, 2 * w, dtype=dtype, generator=gen)
        t = base[..., ::2]
    else:
        t = torch.randn(shape, dtype=dtype, generator=gen)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
    if fill is not None:
        t.copy_(fill(t.shape, dtype))
    return t


def assert_same_layout(t: torch.Tensor, ref: torch.Tensor) -> None:
    """Same memory format as torch's result: equal strides on every dimension longer than 1."""
    assert t.shape == ref.shape
    for d in range(t.dim()):
        if t.shape[d] > 1:
            assert t.stride(d) == ref.stride(d), (t.shape, t.stride(), ref.stride())


# ---- max pool ----------------------------------------------------------------------------------

# (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
MAX_CASES = [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((1, 2, 8, 8), (2, 3), (3, 1), (1, 0), (2, 1), True),
    ((2, 2, 11, 10), (2, 2), (3, 4), (0, 1), (1, 1), False),
    ((2, 4, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),
    ((3, 2, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), True),
    ((1, 3, 9, 8), (3, 2), (1, 2), (1, 1), (2, 3), True),
    ((2, 3, 5, 13), (5, 3), (2, 2), (2, 1), (1, 1), True),
    ((1, 1, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "case", MAX_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-k{c[1]}s{c[2]}p{c[3]}d{c[4]}c{int(c[5])}"
)
def test_max_pool2d(case, layout, dtype):
    shape, k, s, p, d, ceil = case
    g = torch.Generator().manual_seed(0)
    x = make(shape, dtype, layout, g)
    y, idx = ops.max_pool2d(x, list(k), list(s), list(p), list(d), ceil)
    xr = x.detach().clone().requires_grad_(True)
    ry, ridx = F.max_pool2d(xr, k, s, p, d, ceil_mode=ceil, return_indices=True)
    torch.testing.assert_close(y, ry, rtol=0, atol=0)
    assert torch.equal(idx, ridx)
    assert idx.dtype == torch.int64
    assert_same_layout(y, ry)
    assert_same_layout(idx, ridx)

    dy = make(tuple(ry.shape), dtype, layout, g)
    (rdx,) = torch.autograd.grad(ry, xr, dy)
    dx = ops.max_pool2d_backward(dy, x, idx, list(k), list(s), list(p), list(d), ceil)
    torch.testing.assert_close(dx, rdx, **tol(dtype))
    assert_same_layout(dx, rdx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_pool2d_ties_pick_first(dtype, layout):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (2, 3, 9, 8), generator=g).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y, idx = ops.max_pool2d(x, [3, 3], [1, 2], [1, 1], [1, 1], False)
    ry, ridx = F.max_pool2d(x, 3, (1, 2), 1, return_indices=True)
    assert torch.equal(y, ry) and torch.equal(idx, ridx)
    # Overlapping windows choosing the same element: dx sums their dy.
    dy = torch.randn(y.shape, dtype=dtype, generator=g)
    dx = ops.max_pool2d_backward(dy, x, idx, [3, 3], [1, 2], [1, 1], [1, 1], False)
    xr = x.clone().requires_grad_(True)
    (rdx,) = torch.autograd.grad(F.max_pool2d(xr, 3, (1, 2), 1), xr, dy)
    torch.testing.assert_close(dx, rdx, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_pool2d_nan_propagates(dtype, layout):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=dtype, generator=g)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")  # two NaNs in one window: torch keeps the last
    x[1, 2, 5, 7] = float("nan")
    x[1, 1, :, :3] = float("-inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y, idx = ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    ry, ridx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ridx)
    assert torch.isnan(y).sum() > 0


def test_max_pool2d_empty_batch():
    x = torch.randn(0, 3, 6, 6)
    y, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert y.shape == (0, 3, 3, 3) and idx.shape == (0, 3, 3, 3)
    dx = ops.max_pool2d_backward(torch.randn(0, 3, 3, 3), x, idx, [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert dx.shape == x.shape


# ---- avg pool ------------------------------------------------------------------------------------

# (N, C, H, W), kernel, stride, padding, ceil_mode
AVG_GEOMS = [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), False),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), True),
    ((1, 2, 6, 5), (2, 4), (3, 3), (1, 2), True),
    ((2, 2, 11, 10), (2, 2), (3, 4), (0, 1), False),
    ((3, 2, 1, 1), (3, 3), (1, 1), (1, 1), True),
    ((2, 4, 1, 1), (1, 1), (1, 1), (0, 0), False),
    ((1, 3, 5, 13), (5, 3), (2, 2), (2, 1), True),
]
AVG_CASES = [(g, cip, div) for g, cip, div in itertools.product(AVG_GEOMS, [True, False], [None, 3])]
AVG_CASES += [(AVG_GEOMS[1], True, -2), (AVG_GEOMS[2], False, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "case",
    AVG_CASES,
    ids=lambda c: (
        "x".join(map(str, c[0][0])) + f"-k{c[0][1]}s{c[0][2]}p{c[0][3]}c{int(c[0][4])}-cip{int(c[1])}-div{c[2]}"
    ),
)
def test_avg_pool2d(case, layout, dtype):
    (shape, k, s, p, ceil), cip, div = case
    g = torch.Generator().manual_seed(3)
    x = make(shape, dtype, layout, g)
    y = ops.avg_pool2d(x, list(k), list(s), list(p), ceil, cip, div)
    xr = x.detach().clone().requires_grad_(True)
    ry = F.avg_pool2d(xr, k, s, p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    torch.testing.assert_close(y, ry, **tol(dtype))
    assert_same_layout(y, ry)

    dy = make(tuple(ry.shape), dtype, layout, g)
    (rdx,) = torch.autograd.grad(ry, xr, dy)
    dx = ops.avg_pool2d_backward(dy, x, list(k), list(s), list(p), ceil, cip, div)
    torch.testing.assert_close(dx, rdx, **tol(dtype))
    assert_same_layout(dx, rdx)


# ---- adaptive avg pool -----------------------------------------------------------------------------

ADAPTIVE_CASES = [
    ((2, 3, 7, 9), (3, 4)),
    ((2, 3, 5, 5), (5, 5)),
    ((2, 3, 6, 4), (1, 1)),
    ((1, 2, 3, 2), (5, 7)),
    ((2, 2, 10, 1), (4, 1)),
    ((1, 4, 13, 11), (6, 5)),
    ((2, 3, 1, 1), (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-to{c[1][0]}x{c[1][1]}")
def test_adaptive_avg_pool2d(case, layout, dtype):
    shape, out = case
    g = torch.Generator().manual_seed(4)
    x = make(shape, dtype, layout, g)
    y = ops.adaptive_avg_pool2d(x, list(out))
    xr = x.detach().clone().requires_grad_(True)
    ry = F.adaptive_avg_pool2d(xr, out)
    torch.testing.assert_close(y, ry, **tol(dtype))
    assert_same_layout(y, ry)

    dy = make(tuple(ry.shape), dtype, layout, g)
    (rdx,) = torch.autograd.grad(ry, xr, dy)
    dx = ops.adaptive_avg_pool2d_backward(dy, x)
    torch.testing.assert_close(dx, rdx, **tol(dtype))
    if out == (1, 1):
        # torch computes a 1x1 output as x.mean(), whose gradient ignores x's layout; ours keeps it.
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert dx.is_contiguous(memory_format=fmt)
    else:
        assert_same_layout(dx, rdx)


def test_adaptive_avg_pool2d_empty():
    y = ops.adaptive_avg_pool2d(torch.randn(0, 3, 5, 5), [2, 2])
    assert y.shape == (0, 3, 2, 2)
    y = ops.adaptive_avg_pool2d(torch.randn(2, 3, 5, 5), [0, 2])
    assert y.shape == (2, 3, 0, 2)
    dx = ops.adaptive_avg_pool2d_backward(torch.randn(2, 3, 0, 2), torch.randn(2, 3, 5, 5))
    assert torch.equal(dx, torch.zeros(2, 3, 5, 5))


# ---- batch norm ----------------------------------------------------------------------------------

BN_SHAPES = [(4, 3, 5, 7), (2, 5, 1, 1), (3, 2, 6, 6), (1, 4, 3, 9)]


def bn_reference(x, w, b, rm, rv, training, momentum, eps, relu):
    """Autograd-enabled torch reference; returns y and the leaves that need grads."""
    y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum, eps=eps)
    return F.relu(y) if relu else y


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_train(shape, layout, dtype, affine, relu):
    g = torch.Generator().manual_seed(5)
    C = shape[1]
    eps, momentum = 1e-5, 0.1
    x = make(shape, dtype, layout, g) * 2.0 + 0.5
    w = torch.rand(C, dtype=dtype, generator=g) + 0.5 if affine else None
    b = torch.randn(C, dtype=dtype, generator=g) if affine else None
    rm = torch.randn(C, dtype=dtype, generator=g)
    rv = torch.rand(C, dtype=dtype, generator=g) + 0.5

    y, mean, invstd, var = ops.batch_norm_train(x, w, b, eps, relu)
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    ry = bn_reference(xr, wr, br, rm_ref, rv_ref, True, momentum, eps, relu)
    torch.testing.assert_close(y, ry, **tol(dtype))
    assert_same_layout(y, ry)
    _, rmean, rinvstd = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, momentum, eps)
    torch.testing.assert_close(mean, rmean, **tol(dtype))
    torch.testing.assert_close(invstd, rinvstd, **tol(dtype))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=False), **tol(dtype))

    # Running statistics: the mutating op must reproduce F.batch_norm's in-place update.
    count = shape[0] * shape[2] * shape[3]
    if count > 1:
        ops.batch_norm_update_running_stats_(rm, rv, mean, var, count, momentum)
        torch.testing.assert_close(rm, rm_ref, **tol(dtype))
        torch.testing.assert_close(rv, rv_ref, **tol(dtype))

    dy = make(shape, dtype, layout, g)
    inputs = [t for t in (xr, wr, br) if t is not None]
    grads = torch.autograd.grad(ry, inputs, dy)
    mask = [True, affine, affine]
    dx, dw, db = ops.batch_norm_backward(dy, x, y, w, mean, invstd, True, relu, mask)
    torch.testing.assert_close(dx, grads[0], **tol(dtype))
    assert_same_layout(dx, grads[0])
    if affine:
        torch.testing.assert_close(dw, grads[1], **tol(dtype))
        torch.testing.assert_close(db, grads[2], **tol(dtype))
    else:
        assert dw.numel() == 0 and db.numel() == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_eval(layout, dtype, affine, relu):
    g = torch.Generator().manual_seed(6)
    shape = (3, 4, 5, 6)
    C, eps = shape[1], 1e-3
    x = make(shape, dtype, layout, g)
    w = torch.rand(C, dtype=dtype, generator=g) + 0.5 if affine else None
    b = torch.randn(C, dtype=dtype, generator=g) if affine else None
    rm = torch.randn(C, dtype=dtype, generator=g)
    rv = torch.rand(C, dtype=dtype, generator=g) + 0.5

    y = ops.batch_norm_eval(x, w, b, rm, rv, eps, relu)
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    ry = bn_reference(xr, wr, br, rm, rv, False, 0.1, eps, relu)
    torch.testing.assert_close(y, ry, **tol(dtype))
    assert_same_layout(y, ry)

    dy = make(shape, dtype, layout, g)
    inputs = [t for t in (xr, wr, br) if t is not None]
    grads = torch.autograd.grad(ry, inputs, dy)
    invstd = (rv + eps).rsqrt()
    dx, dw, db = ops.batch_norm_backward(dy, x, y, w, rm, invstd, False, relu, [True, affine, affine])
    torch.testing.assert_close(dx, grads[0], **tol(dtype))
    if affine:
        torch.testing.assert_close(dw, grads[1], **tol(dtype))
        torch.testing.assert_close(db, grads[2], **tol(dtype))


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 10), (2, 3, 2, 3, 4)], ids=lambda s: f"{len(s)}d")
def test_batch_norm_other_ranks(shape):
    g = torch.Generator().manual_seed(7)
    dtype = torch.float64
    x = torch.randn(shape, dtype=dtype, generator=g)
    C = shape[1]
    w, b = torch.rand(C, dtype=dtype, generator=g), torch.randn(C, dtype=dtype, generator=g)
    y, mean, invstd, _var = ops.batch_norm_train(x, w, b, 1e-5, False)
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    ry = F.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5)
    torch.testing.assert_close(y, ry)
    dy = torch.randn(shape, dtype=dtype, generator=g)
    rdx, rdw, rdb = torch.autograd.grad(ry, (xr, wr, br), dy)
    dx, dw, db = ops.batch_norm_backward(dy, x, None, w, mean, invstd, True, False, [True, True, True])
    torch.testing.assert_close(dx, rdx)
    torch.testing.assert_close(dw, rdw)
    torch.testing.assert_close(db, rdb)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_large_mean_float32(layout):
    """Mean 1e3, std 1: a one-pass E[x²] − E[x]² in float would lose the variance entirely."""
    g = torch.Generator().manual_seed(8)
    shape = (8, 4, 16, 16)
    x = make(shape, torch.float32, layout, g) + 1000.0
    y, mean, _invstd, var = ops.batch_norm_train(x, None, None, 1e-5, False)
    x64 = x.double()
    ref_var = x64.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), x64.mean(dim=(0, 2, 3)), rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=0)
    ry = F.batch_norm(x64, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(y.double(), ry, rtol=0, atol=1e-3)
    assert abs(y.double().std().item() - 1.0) < 1e-3


def test_batch_norm_backward_mask_and_dtypes():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
    # float32 parameters with a float64 input: torch refuses ("mixed dtype"), and so does every device.
    w32, b32 = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        F.batch_norm(x, None, None, w32, b32, training=True)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        ops.batch_norm_train(x, w32, b32, 1e-5, False)
    w64, b64 = w32.double(), b32.double()
    y, mean, invstd, var = ops.batch_norm_train(x, w64, b64, 1e-5, False)
    ry = F.batch_norm(x, None, None, w64, b64, training=True)
    torch.testing.assert_close(y, ry)
    dy = torch.randn_like(x)
    dx, dw, db = ops.batch_norm_backward(dy, x, None, w64, mean, invstd, True, False, [False, True, False])
    assert dx.numel() == 0 and db.numel() == 0
    assert dw.shape == (3,) and dw.dtype == torch.float64
    dx, dw, db = ops.batch_norm_backward(dy, x, None, None, mean, invstd, True, False, [True, False, False])
    assert dx.shape == x.shape and dw.numel() == 0 and db.numel() == 0

    # Non-contiguous running stats are updated in place through copy_; another dtype is refused, as
    # torch refuses float32 running stats with a float64 input ("mixed dtype").
    rm_base = torch.zeros(3, 2, dtype=torch.float64)
    rm, rv = rm_base[:, 0], torch.ones(3, dtype=torch.float64)
    ops.batch_norm_update_running_stats_(rm, rv, mean, var, 32, 0.25)
    torch.testing.assert_close(rm, 0.25 * mean)
    torch.testing.assert_close(rv, 0.75 + 0.25 * var * 32 / 31)
    assert rm_base[:, 1].abs().sum() == 0
    with pytest.raises(RuntimeError, match="mixed dtype"):
        F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        ops.batch_norm_update_running_stats_(torch.zeros(3), torch.ones(3), mean, var, 32, 0.25)


def test_batch_norm_empty_batch():
    x = torch.randn(0, 3, 4, 4)
    w, b = torch.rand(3), torch.randn(3)
    y, mean, invstd, var = ops.batch_norm_train(x, w, b, 1e-5, True)
    assert y.shape == x.shape and mean.shape == (3,)
    assert torch.isfinite(mean).all() and torch.isfinite(invstd).all()
    rm, rv = torch.zeros(3), torch.ones(3)
    ops.batch_norm_update_running_stats_(rm, rv, mean, var, 0, 0.1)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    dx, dw, db = ops.batch_norm_backward(torch.randn(0, 3, 4, 4), x, y, w, mean, invstd, True, True, [True, True, True])
    assert dx.shape == x.shape
    assert torch.equal(dw, torch.zeros(3)) and torch.equal(db, torch.zeros(3))
    y = ops.batch_norm_eval(x, w, b, torch.zeros(3), torch.ones(3), 1e-5, False)
    assert y.shape == x.shape


# ---- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_unsupported_dtype_raises_not_implemented(dtype):
    # torch's own kernels raise NotImplementedError for a dtype they lack; max_pool2d takes integers.
    x = torch.ones(1, 2, 4, 4, dtype=dtype)
    if dtype.is_floating_point:
        with pytest.raises(NotImplementedError, match=r"fastconv\.max_pool2d\" not implemented for"):
            ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(NotImplementedError, match=r"fastconv\.avg_pool2d"):
        ops.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, None)
    with pytest.raises(NotImplementedError, match=r"fastconv\.adaptive_avg_pool2d"):
        ops.adaptive_avg_pool2d(x, [2, 2])
    with pytest.raises(NotImplementedError, match=r"fastconv\.batch_norm_train"):
        ops.batch_norm_train(x, None, None, 1e-5, False)
    with pytest.raises(NotImplementedError, match=r"fastconv\.batch_norm_eval"):
        ops.batch_norm_eval(x, None, None, torch.zeros(2), torch.ones(2), 1e-5, False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": [0, 2]}, "kernel size should be greater than zero"),
        ({"s": [0, 1]}, "stride should be greater than zero"),
        ({"d": [1, 0]}, "dilation should be greater than zero"),
        ({"p": [-1, 0]}, "pad must be non-negative"),
        (
            {"k": [3, 3], "p": [2, 0]},
            "pad should be at most half of effective kernel size, but got pad=2, kernel_size=3",
        ),
        ({"k": [3, 3], "p": [2, 2], "d": [2, 2]}, "pad should be smaller than or equal to half of kernel size"),
        ({"k": [9, 2]}, r"Given input size: \(2x8x8\)\. Calculated output size: \(2x0x4\)\. Output size is too small"),
    ],
)
def test_max_pool2d_bad_args(kwargs, match):
    x = torch.randn(1, 2, 8, 8)
    a = {"k": [2, 2], "s": [2, 2], "p": [0, 0], "d": [1, 1]}
    a.update(kwargs)
    with pytest.raises(RuntimeError, match=match):
        ops.max_pool2d(x, a["k"], a["s"], a["p"], a["d"], False)
    # torch raises RuntimeError for the same arguments
    with pytest.raises(RuntimeError):
        F.max_pool2d(x, a["k"], a["s"], a["p"], a["d"])


def test_pool_bad_inputs():
    with pytest.raises(RuntimeError, match="4-D"):
        ops.max_pool2d(torch.randn(2, 8, 8), [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="optional 0 dim batch size"):
        ops.max_pool2d(torch.randn(2, 0, 8, 8), [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="divisor must be not zero"):
        ops.avg_pool2d(torch.randn(1, 2, 8, 8), [2, 2], [2, 2], [0, 0], False, True, 0)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        ops.avg_pool2d(torch.randn(1, 2, 3, 3), [4, 4], [1, 1], [0, 0], False, True, None)
    with pytest.raises(RuntimeError, match="greater than or equal to 0"):
        ops.adaptive_avg_pool2d(torch.randn(1, 2, 8, 8), [-1, 2])
    with pytest.raises(RuntimeError, match="non-zero size for non-batch dimensions"):
        ops.adaptive_avg_pool2d(torch.randn(1, 2, 0, 8), [2, 2])
    x = torch.randn(1, 2, 8, 8)
    y, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="grad_output of size"):
        ops.max_pool2d_backward(torch.randn(1, 2, 3, 4), x, idx, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="indices of dtype Long"):
        ops.max_pool2d_backward(y, x, idx.int(), [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="grad_output of size"):
        ops.avg_pool2d_backward(torch.randn(1, 2, 3, 4), x, [2, 2], [2, 2], [0, 0], False, True, None)


def test_batch_norm_bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="weight should contain 3 elements not 4"):
        ops.batch_norm_train(x, torch.ones(4), None, 1e-5, False)
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 2"):
        ops.batch_norm_eval(x, None, None, torch.zeros(2), torch.ones(3), 1e-5, False)
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):
        ops.batch_norm_train(torch.randn(5), None, None, 1e-5, False)
    y, mean, invstd, _ = ops.batch_norm_train(x, None, None, 1e-5, True)
    with pytest.raises(RuntimeError, match="relu=True needs the forward output"):
        ops.batch_norm_backward(x, x, None, None, mean, invstd, True, True, [True, False, False])
    with pytest.raises(RuntimeError, match="does not match input"):
        ops.batch_norm_backward(x[:1], x, y, None, mean, invstd, True, False, [True, False, False])


def test_max_pool2d_backward_mixed_layouts():
    """dy, indices and x in different memory formats still pair each dy with its own index."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y, idx = ops.max_pool2d(x, [3, 2], [2, 1], [1, 1], [1, 1], True)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)  # NCHW while idx is NHWC
    for indices in (idx, idx.contiguous(), idx.transpose(2, 3).contiguous().transpose(2, 3)):
        dx = ops.max_pool2d_backward(dy, x, indices, [3, 2], [2, 1], [1, 1], [1, 1], True)
        xr = x.clone().requires_grad_(True)
        (rdx,) = torch.autograd.grad(F.max_pool2d(xr, (3, 2), (2, 1), 1, ceil_mode=True), xr, dy)
        torch.testing.assert_close(dx, rdx)
