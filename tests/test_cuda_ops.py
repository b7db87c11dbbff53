"""CUDA kernels vs PyTorch on the same GPU (cuDNN / ATen CUDA), forward and every gradient.

Accuracy rule (flash-attention style): at float16/bfloat16, and at float32 too, our error against an
fp64 reference must be at most 2x torch's own error at the same precision, plus a small atol
(errors are max-abs, relative to the reference's magnitude). float64 is compared to torch's fp64
directly. TF32 is off so float32 means float32.

Every test is marked `cuda`: tests/conftest.py skips them without a GPU or a CUDA build; the
`skipif` below makes the file safe on its own too. `test_sanitize_subset_*` are tiny cases of every
kernel, compared with a CPU reference, for the compute-sanitizer runs in scripts/gpu_check.sh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

try:
    import fastconv.functional as FF

    _FF_ERROR: Exception | None = None
except Exception as e:  # noqa: BLE001  (reported by the fixture below, not as a collection error)
    FF = None
    _FF_ERROR = e

from _devices import CUDA_DEVICE, EMULATED, skip_if_emulated, skip_if_too_big_for_emulator  # noqa: E402

import fastconv  # noqa: E402
from helpers import LOW_ATOL, rel_err  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.emulated,
    pytest.mark.skipif(CUDA_DEVICE is None, reason="needs a CUDA GPU or the emulated CUDA device"),
]

# A GPU, or the emulated CUDA device (the same binding and kernels; torch's references then run on
# the CPU through torch's fallback, at the same dtype).
DEV = CUDA_DEVICE or "cuda"
LOW = [torch.float16, torch.bfloat16]
# Added to "2x torch's error": the one tolerance table of every device (tests/helpers.py).
ATOL = LOW_ATOL
LAYOUTS = ["nchw", "channels_last"]


@pytest.fixture(autouse=True)
def _strict_fp32_and_ext():
    if FF is None:
        pytest.fail(f"fastconv.functional could not be imported: {_FF_ERROR!r}")
    from fastconv import _ext

    if not EMULATED and not _ext.built_with_cuda():
        pytest.skip("fastconv was built without CUDA kernels")
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# ---- helpers ---------------------------------------------------------------------------------------


def _sync() -> None:
    if not EMULATED:  # the emulated device runs each launch to completion
        torch.cuda.synchronize()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _randn(shape, seed: int, scale: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    """fp64 on the GPU, from a CPU generator so every device and run sees the same numbers."""
    skip_if_too_big_for_emulator(shape)
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale + mean).to(DEV)


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


_rel_err = rel_err  # max-abs error relative to max(1, |reference|), as everywhere (tests/helpers.py)


def _fwd_bwd(fn: Callable, inputs: Sequence[torch.Tensor | None], dtype, grad_seed: int, grad_mask=None):
    """Runs fn on copies of inputs cast to dtype (memory format kept); returns (out, grads)."""
    ts = []
    for i, t in enumerate(inputs):
        if t is None:
            ts.append(None)
            continue
        c = t.detach().to(dtype)
        if grad_mask is None or grad_mask[i]:
            c.requires_grad_(True)
        ts.append(c)
    out = fn(*ts)
    gy = _randn(out.shape, grad_seed).to(dtype)
    out.backward(gy)
    return out.detach(), [None if t is None or t.grad is None else t.grad for t in ts]


def _check_vs_torch(ours: Callable, ref: Callable, inputs, dtype, *, grad_mask=None, check_layout=True):
    """Forward + all input gradients of ours vs torch at dtype, judged against torch at fp64."""
    seed = 1234
    r_out, r_grads = _fwd_bwd(ref, inputs, torch.float64, seed, grad_mask)
    o_out, o_grads = _fwd_bwd(ours, inputs, dtype, seed, grad_mask)
    assert o_out.dtype == dtype and o_out.shape == r_out.shape
    if dtype == torch.float64:
        torch.testing.assert_close(o_out, r_out, rtol=1e-9, atol=1e-9)
        for o, r in zip(o_grads, r_grads):
            assert (o is None) == (r is None)
            if o is not None:
                torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)
    else:
        t_out, t_grads = _fwd_bwd(ref, inputs, dtype, seed, grad_mask)
        pairs = [("output", o_out, t_out, r_out)]
        pairs += [(f"grad[{i}]", o, t, r) for i, (o, t, r) in enumerate(zip(o_grads, t_grads, r_grads))]
        for name, o, t, r in pairs:
            assert (o is None) == (r is None), name
            if o is None:
                continue
            assert o.shape == r.shape, name
            eo, et = _rel_err(o, r), _rel_err(t, r)
            assert eo <= 2 * et + ATOL[dtype], f"{name}: our error {eo:.3g} > 2 x torch's {et:.3g} + {ATOL[dtype]}"
        if check_layout:
            _check_same_layout(o_out, t_out)


def _check_same_layout(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # Only where torch's choice is unambiguous (dims of size 1 make both formats "contiguous").
    if ours.dim() != 4:
        return
    cl = torch.channels_last
    if theirs.is_contiguous(memory_format=cl) and not theirs.is_contiguous():
        assert ours.is_contiguous(memory_format=cl), "torch returns channels_last here, we do not"
    if theirs.is_contiguous() and not theirs.is_contiguous(memory_format=cl):
        assert ours.is_contiguous(), "torch returns a contiguous tensor here, we do not"


# ---- convolution --------------------------------------------------------------------------------


class Conv:
    def __init__(self, name, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1, bias=True):
        self.name, self.N, self.C, self.H, self.W, self.K, self.R, self.S = name, N, C, H, W, K, R, S
        self.stride, self.padding, self.dilation, self.groups, self.bias = stride, padding, dilation, groups, bias

    def __repr__(self):
        return self.name

    def is_1x1(self):
        pad = self.padding if isinstance(self.padding, tuple) else (self.padding, self.padding)
        return self.R == 1 and self.S == 1 and pad == (0, 0)

    def tensors(self, layout, seed=0):
        x = _layout(_randn((self.N, self.C, self.H, self.W), seed), layout)
        fan_in = self.C // self.groups * self.R * self.S
        w = _layout(_randn((self.K, self.C // self.groups, self.R, self.S), seed + 1, fan_in**-0.5), layout)
        b = _randn((self.K,), seed + 2) if self.bias else None
        return x, w, b

    def kwargs(self):
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}


AWKWARD = [
    Conv("c3_odd", 1, 3, 7, 7, 8, 3, 3, padding=1),
    Conv("map1x1", 2, 4, 1, 1, 6, 1, 1),
    Conv("odd_s2", 2, 5, 9, 11, 7, 3, 3, stride=2, padding=1, bias=False),
    Conv("dil2", 2, 6, 10, 10, 4, 3, 3, padding=2, dilation=2),
    Conv("groups4", 2, 8, 9, 9, 12, 3, 3, padding=1, groups=4),
    Conv("depthwise", 2, 16, 8, 8, 16, 3, 3, padding=1, groups=16, bias=False),
    Conv("stride_gt_k", 2, 4, 11, 11, 6, 2, 2, stride=3),
    Conv("1x1_s2", 2, 8, 7, 7, 16, 1, 1, stride=2),
    Conv("1x1_groups", 2, 8, 5, 5, 12, 1, 1, groups=2, bias=False),
    Conv("rect_k_pad", 2, 6, 5, 7, 4, 5, 3, padding=(2, 1)),
    Conv("k_gt_input", 1, 3, 4, 4, 2, 5, 5, padding=2),
    Conv("rect_stride_dil", 2, 3, 12, 9, 5, 3, 2, stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
]
NETS = [
    # ResNet-50, batch 2
    Conv("r50_conv1", 2, 3, 224, 224, 64, 7, 7, stride=2, padding=3, bias=False),
    Conv("r50_l1_1x1", 2, 64, 56, 56, 64, 1, 1, bias=False),
    Conv("r50_l1_3x3", 2, 64, 56, 56, 64, 3, 3, padding=1, bias=False),
    Conv("r50_l1_expand", 2, 64, 56, 56, 256, 1, 1, bias=False),
    Conv("r50_l2_down", 2, 256, 56, 56, 512, 1, 1, stride=2, bias=False),
    Conv("r50_l2_3x3_s2", 2, 128, 56, 56, 128, 3, 3, stride=2, padding=1, bias=False),
    Conv("r50_l4_3x3", 2, 512, 7, 7, 512, 3, 3, padding=1, bias=False),
    Conv("r50_l4_reduce", 2, 2048, 7, 7, 512, 1, 1, bias=False),
    # GoogLeNet (inception 3a/4a/5b branches), batch 2
    Conv("g_3a_1x1", 2, 192, 28, 28, 64, 1, 1),
    Conv("g_3a_3x3", 2, 96, 28, 28, 128, 3, 3, padding=1),
    Conv("g_3a_5x5", 2, 16, 28, 28, 32, 5, 5, padding=2),
    Conv("g_4a_1x1", 2, 480, 14, 14, 192, 1, 1),
    Conv("g_5b_1x1", 2, 832, 7, 7, 384, 1, 1),
]
ALGOS = ["direct", "im2col", "gemm1x1"]


def _algos_for(case: Conv):
    return [a for a in ALGOS if a != "gemm1x1" or case.is_1x1()]


def _conv_check(case: Conv, algo: str, dtype, layout: str):
    x, w, b = case.tensors(layout)
    kw = case.kwargs()
    _check_vs_torch(
        lambda x, w, b: FF.conv2d(x, w, b, **kw, algo=algo),
        lambda x, w, b: F.conv2d(x, w, b, **kw),
        [x, w, b],
        dtype,
    )


@pytest.mark.parametrize(
    "case,algo",
    [(c, a) for c in AWKWARD for a in _algos_for(c)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_awkward(case, algo, dtype, layout):
    _conv_check(case, algo, dtype, layout)


# The network layers: (float32, NCHW), (float32, channels_last), (float16, channels_last) and
# (bfloat16, NCHW) cover every dtype and layout at a quarter of the full product's run time.
NET_DTYPE_LAYOUT = [
    (torch.float32, "nchw"),
    (torch.float32, "channels_last"),
    (torch.float16, "channels_last"),
    (torch.bfloat16, "nchw"),
]


@pytest.mark.parametrize("case,algo", [(c, a) for c in NETS for a in _algos_for(c)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype,layout", NET_DTYPE_LAYOUT, ids=lambda v: str(v))
def test_conv2d_net_layers(case, algo, dtype, layout):
    _conv_check(case, algo, dtype, layout)


@pytest.mark.parametrize("case", [c for c in AWKWARD if c.name in ("c3_odd", "groups4", "dil2", "rect_k_pad")], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_float64_direct(case, layout):
    _conv_check(case, "direct", torch.float64, layout)


@pytest.mark.parametrize("algo", ["im2col", "gemm1x1"])
def test_conv2d_float64_unsupported_algo_is_not_implemented(algo):
    x, w, _ = Conv("t", 1, 4, 5, 5, 4, 1, 1).tensors("nchw")
    with pytest.raises(NotImplementedError, match=algo):
        torch.ops.fastconv.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, algo)


def test_conv2d_errors():
    x, w, _ = Conv("t", 1, 4, 5, 5, 4, 3, 3).tensors("nchw")
    x, w = x.float(), w.float()
    args = ([1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="nope"):
        torch.ops.fastconv.conv2d(x, w, None, *args, "nope")
    with pytest.raises(NotImplementedError, match="gemm1x1"):
        torch.ops.fastconv.conv2d(x, w, None, *args, "gemm1x1")
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.fastconv.conv2d(x, w.cpu(), None, *args, "direct")
    with pytest.raises(RuntimeError):
        torch.ops.fastconv.conv2d(x, w.half(), None, *args, "direct")
    with pytest.raises(RuntimeError):  # channel mismatch, like torch
        torch.ops.fastconv.conv2d(x[:, :3], w, None, *args, "direct")


@pytest.mark.parametrize("algo", ALGOS)
def test_conv2d_empty_batch(algo):
    x, w, b = Conv("t", 0, 4, 5, 5, 6, 1, 1).tensors("nchw")
    x, w, b = x.float().requires_grad_(), w.float().requires_grad_(), b.float()
    y = FF.conv2d(x, w, b, algo=algo)
    assert y.shape == (0, 6, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.all(w.grad == 0)


# One image's column buffer here is 64·9·56·56·4 B = 6.9 MiB: 16 MiB fits 2 of the 4 images (two
# chunks), 0 fits none (refusal). A 1 MiB limit, used before, refused too and never tested chunking.
@pytest.mark.parametrize("limit_mb", ["16", "0"])
def test_conv2d_im2col_small_workspace(limit_mb):
    """im2col chunks the batch to fit the workspace limit, or refuses (NotImplementedError)."""
    case = Conv("r50_l1_3x3_b4", 4, 64, 56, 56, 64, 3, 3, padding=1, bias=False)
    x, w, _ = case.tensors("nchw")
    try:
        with fastconv.backends.flags(workspace_limit_mb=int(limit_mb)):
            y = torch.ops.fastconv.conv2d(x.float(), w.float(), None, [1, 1], [1, 1], [1, 1], 1, "im2col")
    except NotImplementedError as e:
        assert limit_mb == "0" and "im2col" in str(e)
        return
    assert limit_mb != "0", "a zero workspace limit must refuse"
    ref = F.conv2d(x, w, padding=1)
    assert _rel_err(y, ref) <= 1e-5


def test_conv2d_side_stream_and_graph_capture():
    skip_if_emulated("side streams and CUDA graph capture")
    case = Conv("t", 2, 8, 9, 9, 12, 3, 3, padding=1)
    x, w, b = (t.float() for t in case.tensors("channels_last"))
    ref = F.conv2d(x, w, b, padding=1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for algo in ("direct", "im2col"):  # warm-up on the side stream (allocator, lazy init)
            y = FF.conv2d(x, w, b, padding=1, algo=algo)
    torch.cuda.current_stream().wait_stream(s)
    assert _rel_err(y, ref) <= 1e-5
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_graph = torch.ops.fastconv.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "im2col")
    x.copy_(x * 2)
    g.replay()
    _sync()
    assert _rel_err(y_graph, F.conv2d(x, w, b, padding=1)) <= 1e-5


# ---- pooling -----------------------------------------------------------------------------------------

MAXPOOL = [  # (name, shape, kernel, stride, padding, dilation, ceil_mode)
    ("r50_stem", (2, 64, 112, 112), 3, 2, 1, 1, False),
    ("g_stem_ceil", (2, 192, 56, 56), 3, 2, 0, 1, True),
    ("g_3x3_s1", (2, 480, 14, 14), 3, 1, 1, 1, True),
    ("c3_ceil", (2, 3, 7, 7), 2, 2, 0, 1, True),
    ("dil2", (1, 5, 9, 11), 3, 2, 1, 2, False),
    ("map1x1", (2, 4, 1, 1), 1, 1, 0, 1, False),
    ("stride_gt_k", (2, 6, 10, 10), 2, 3, 0, 1, False),
    ("rect", (2, 3, 8, 13), (3, 2), (2, 3), (1, 0), (1, 2), True),
]
AVGPOOL = [  # (name, shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    ("2x2", (2, 8, 10, 10), 2, 2, 0, False, True, None),
    ("3x3_pad", (2, 5, 9, 11), 3, 1, 1, False, True, None),
    ("ceil_nopad", (2, 5, 9, 11), 3, 2, 1, True, False, None),
    ("ceil_pad", (2, 5, 9, 11), 3, 2, 1, True, True, None),
    ("divisor", (2, 3, 7, 7), 3, 2, 1, False, True, 5),
    ("neg_divisor", (2, 3, 7, 7), 3, 2, 1, False, True, -4),  # torch divides by it; <= 0 means none inside
    ("partial", (2, 3, 7, 7), 5, 3, 0, True, True, None),
    ("map1x1", (2, 4, 1, 1), 1, 1, 0, False, True, None),
    ("rect", (1, 6, 8, 13), (2, 4), (3, 2), (1, 2), True, False, None),
    ("g_aux", (2, 512, 14, 14), 5, 3, 0, False, True, None),
]
ADAPTIVE = [  # (name, shape, output_size)
    ("r50_head", (2, 2048, 7, 7), (1, 1)),
    ("odd", (2, 3, 7, 9), (3, 5)),
    ("same", (2, 4, 7, 7), (7, 7)),
    ("overlap", (2, 3, 10, 10), (4, 4)),
    ("upsample", (2, 3, 1, 1), (2, 3)),
    ("up_overlap", (2, 3, 3, 3), (5, 5)),
]
POOL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("case", MAXPOOL, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", POOL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d(case, dtype, layout):
    _, shape, k, s, p, d, ceil = case
    # Distinct values (a permutation) so no window has a tie at any precision: ties would make the
    # chosen index, and so the gradient, legitimately differ.
    n = 1
    for v in shape:
        n *= v
    vals = (torch.randperm(n, generator=_gen(7)).double() / n * 4 - 2).reshape(shape)
    if dtype in LOW:  # spread over distinct representable values of the narrow type
        vals = torch.randperm(n, generator=_gen(7)).reshape(shape).remainder(2048).double() / 64 - 16
    master = _layout(vals.to(DEV), layout)
    x = master.to(dtype)
    y, idx = FF.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    ty, tidx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    torch.testing.assert_close(y, ty, rtol=0, atol=0)
    _check_same_layout(y, ty)
    if dtype in LOW:  # bfloat16 may repeat values in a window: see test_max_pool2d_backward_low_precision
        return
    assert torch.equal(idx, tidx)
    _check_vs_torch(
        lambda x: FF.max_pool2d(x, k, s, p, d, ceil_mode=ceil),
        lambda x: F.max_pool2d(x, k, s, p, d, ceil_mode=ceil),
        [master],
        dtype,
    )


@pytest.mark.parametrize("case", AVGPOOL, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", POOL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool2d(case, dtype, layout):
    _, shape, k, s, p, ceil, cip, div = case
    x = _layout(_randn(shape, 3), layout)
    _check_vs_torch(
        lambda x: FF.avg_pool2d(x, k, s, p, ceil, cip, div),
        lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, div),
        [x],
        dtype,
    )


@pytest.mark.parametrize("case", ADAPTIVE, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", POOL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_adaptive_avg_pool2d(case, dtype, layout):
    _, shape, out = case
    x = _layout(_randn(shape, 5), layout)
    _check_vs_torch(lambda x: FF.adaptive_avg_pool2d(x, out), lambda x: F.adaptive_avg_pool2d(x, out), [x], dtype)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_backward_low_precision(dtype, layout):
    """Gradient routed to the index each implementation chose (ties make indices legitimately differ)."""
    x = _layout(_randn((2, 64, 28, 28), 11), layout).to(dtype)
    y, idx = torch.ops.fastconv.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    dy = _randn(y.shape, 12).to(dtype)
    dx = torch.ops.fastconv.max_pool2d_backward(dy, x, idx, [3, 3], [2, 2], [1, 1], [1, 1], False)
    ref = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], dtype=torch.float64, device=DEV)
    ref.scatter_add_(2, idx.reshape(*idx.shape[:2], -1), dy.double().reshape(*dy.shape[:2], -1))
    assert _rel_err(dx, ref.reshape(x.shape)) <= ATOL[dtype]
    # every index points at a window maximum
    assert torch.equal(x.reshape(*x.shape[:2], -1).gather(2, idx.reshape(*idx.shape[:2], -1)).reshape(y.shape), y)


def test_pool_empty_batch():
    x = torch.randn(0, 3, 8, 8, device=DEV)
    assert FF.max_pool2d(x, 2).shape == (0, 3, 4, 4)
    assert FF.avg_pool2d(x, 2).shape == (0, 3, 4, 4)
    assert FF.adaptive_avg_pool2d(x, 3).shape == (0, 3, 3, 3)


# ---- batch norm ------------------------------------------------------------------------------------

BN_SHAPES = [
    ("c3_odd", (2, 3, 7, 7)),
    ("map1x1", (2, 5, 1, 1)),
    ("odd", (4, 16, 9, 11)),
    ("r50_l1", (2, 256, 56, 56)),
    ("g_5b", (2, 832, 7, 7)),
    ("flat2d", (8, 10)),
    ("seq3d", (4, 6, 10)),
]


def _bn_params(C, seed, dtype=torch.float64):
    w = _randn((C,), seed, 0.5, 1.0).to(dtype)
    b = _randn((C,), seed + 1, 0.5).to(dtype)
    rm = _randn((C,), seed + 2, 0.2).to(dtype)
    rv = (_randn((C,), seed + 3, 0.3).abs() + 0.5).to(dtype)
    return w, b, rm, rv


def _bn_param_dtype(dtype):
    # AMP keeps BN parameters in float32 with half activations; fp32/fp64 models use their own dtype.
    return torch.float32 if dtype in LOW else dtype


@pytest.mark.parametrize("case", BN_SHAPES, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm(case, dtype, layout, training, affine):
    _, shape = case
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels_last is 4-D only")
    x = _layout(_randn(shape, 21, 2.0, 0.5), layout)
    w, b, rm, rv = _bn_params(shape[1], 30)

    def make(fn):
        def run(x, w, b):
            # Parameters and statistics in the model's dtype: float32 under AMP for half inputs.
            pdt = _bn_param_dtype(x.dtype)
            wp, bp = (None if t is None else t.to(pdt) for t in (w, b))
            rmx, rvx = rm.to(pdt).clone(), rv.to(pdt).clone()  # fresh buffers: training updates them
            return fn(x, rmx, rvx, wp, bp, training=training, momentum=0.1, eps=1e-5)

        return run

    inputs = [x, w, b] if affine else [x, None, None]
    _check_vs_torch(make(FF.batch_norm), make(F.batch_norm), inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_batch_norm_large_mean(dtype):
    """mean 1e3, std 1: a one-pass E[x^2] - E[x]^2 variance would lose every digit here."""
    x = _randn((4, 8, 15, 15), 40, 1.0, 1e3)
    w, b, _, _ = _bn_params(8, 41)
    _check_vs_torch(
        lambda x, w, b: FF.batch_norm(x, None, None, w, b, training=True),
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        [x, w, b],
        dtype,
    )
    xs = x.to(dtype)
    _, mean, _invstd, var = torch.ops.fastconv.batch_norm_train(xs, None, None, 1e-5, False)
    xd = xs.double()
    torch.testing.assert_close(mean.double(), xd.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), xd.var((0, 2, 3), unbiased=False), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_norm_running_stats(dtype, layout):
    C = 12
    pdt = _bn_param_dtype(dtype)
    w, b, rm0, rv0 = (t.to(pdt) for t in _bn_params(C, 50))
    ours = [rm0.clone(), rv0.clone()]
    theirs = [rm0.clone(), rv0.clone()]
    for step, momentum in enumerate([0.1, 0.3]):
        x = _layout(_randn((3, C, 5, 7), 60 + step, 1.5, 0.7), layout).to(dtype)
        FF.batch_norm(x, ours[0], ours[1], w, b, training=True, momentum=momentum)
        F.batch_norm(x, theirs[0], theirs[1], w, b, training=True, momentum=momentum)
    tol = {"rtol": 1e-5, "atol": 1e-6} if pdt != torch.float64 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(ours[0], theirs[0], **tol)
    torch.testing.assert_close(ours[1], theirs[1], **tol)
    assert ours[0].dtype == pdt


def test_batch_norm_running_stats_half_buffers():
    """A .half() model keeps half running stats: written back through a copy."""
    C = 6
    w, b, rm0, rv0 = (t.half() for t in _bn_params(C, 70))
    ours, theirs = [rm0.clone(), rv0.clone()], [rm0.clone(), rv0.clone()]
    x = _randn((4, C, 6, 6), 71).half()
    FF.batch_norm(x, ours[0], ours[1], w, b, training=True, momentum=0.2)
    F.batch_norm(x, theirs[0], theirs[1], w, b, training=True, momentum=0.2)
    torch.testing.assert_close(ours[0], theirs[0], rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(ours[1], theirs[1], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_norm_fused_relu(dtype, layout):
    shape = (3, 10, 9, 7)
    x64 = _layout(_randn(shape, 80, 1.0, 0.2), layout)
    w64, b64, _, _ = _bn_params(10, 81)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x, w, b = x64.to(dtype), w64.to(acc), b64.to(acc)
    y, mean, invstd, var = torch.ops.fastconv.batch_norm_train(x, w, b, 1e-5, True)
    assert mean.dtype == invstd.dtype == var.dtype == acc and y.dtype == dtype
    xd = x.double()
    ref_mean, ref_var = xd.mean((0, 2, 3)), xd.var((0, 2, 3), unbiased=False)
    ref_y = torch.relu(F.batch_norm(xd, None, None, w.double(), b.double(), training=True, eps=1e-5))
    torch_y = torch.relu(F.batch_norm(x, None, None, w, b, training=True, eps=1e-5))
    assert _rel_err(y, ref_y) <= 2 * _rel_err(torch_y, ref_y) + ATOL.get(dtype, 1e-12)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(invstd.double(), (ref_var + 1e-5).rsqrt(), rtol=1e-4, atol=1e-6)
    _check_same_layout(y, torch_y)

    # backward through the fused ReLU: every output, then only some
    dy = _randn(shape, 82).to(dtype)
    dx, dw, db = torch.ops.fastconv.batch_norm_backward(dy, x, y, w, mean, invstd, True, True, [True, True, True])
    # .clone(): at float64, w.double() is w itself, and requires_grad_ on it would make wt below a non-leaf.
    xr, wr, br = xd.clone().requires_grad_(), w.double().clone().requires_grad_(), b.double().clone().requires_grad_()
    torch.relu(F.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5)).backward(dy.double())
    xt, wt, bt = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    torch.relu(F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)).backward(dy)
    for o, t, r in ((dx, xt.grad, xr.grad), (dw, wt.grad, wr.grad), (db, bt.grad, br.grad)):
        assert o.dtype == t.dtype
        # y rounded to dtype decides the ReLU mask: elements on the boundary may flip, so allow a little.
        assert _rel_err(o, r) <= 2 * _rel_err(t, r) + 4 * ATOL.get(dtype, 1e-12)
    dx2, dw2, db2 = torch.ops.fastconv.batch_norm_backward(dy, x, y, w, mean, invstd, True, True, [True, False, False])
    assert dw2.numel() == 0 and db2.numel() == 0
    assert _rel_err(dx2, dx) <= ATOL.get(dtype, 1e-12)  # reductions may use atomics: not bitwise
    dx3, dw3, db3 = torch.ops.fastconv.batch_norm_backward(dy, x, y, w, mean, invstd, True, True, [False, True, True])
    assert dx3.numel() == 0
    assert _rel_err(dw3, dw) <= 1e-5 and _rel_err(db3, db) <= 1e-5


def test_batch_norm_eval_fused_relu():
    x = _randn((2, 7, 5, 5), 90).float()
    w, b, rm, rv = (t.float() for t in _bn_params(7, 91))
    y = torch.ops.fastconv.batch_norm_eval(x, w, b, rm, rv, 1e-5, True)
    ref = torch.relu(F.batch_norm(x.double(), rm.double(), rv.double(), w.double(), b.double(), False, eps=1e-5))
    assert _rel_err(y, ref) <= 1e-5


def test_batch_norm_graph_capture():
    skip_if_emulated("CUDA graph capture")
    x = _randn((4, 16, 8, 8), 95).float()
    w, b, _, _ = (t.float() for t in _bn_params(16, 96))
    torch.ops.fastconv.batch_norm_train(x, w, b, 1e-5, True)  # warm-up
    _sync()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y, *_ = torch.ops.fastconv.batch_norm_train(x, w, b, 1e-5, True)
    x.mul_(3).add_(1)
    g.replay()
    _sync()
    ref = torch.relu(F.batch_norm(x, None, None, w, b, training=True, eps=1e-5))
    assert _rel_err(y, ref) <= 1e-5


# ---- tiny cases of every kernel for compute-sanitizer (CPU fp64 reference, no cuDNN) ----------------


def _cpu_check(ours: Callable, ref: Callable, inputs_cpu, dtype, layout, tol):
    dev_in = [None if t is None else _layout(t.to(DEV), layout).to(dtype).requires_grad_() for t in inputs_cpu]
    cpu_in = [None if t is None else t.clone().requires_grad_() for t in inputs_cpu]
    y = ours(*dev_in)
    r = ref(*cpu_in)
    gy = torch.randn(r.shape, generator=_gen(99), dtype=torch.float64)
    y.backward(gy.to(DEV).to(dtype))
    r.backward(gy)
    _sync()
    assert _rel_err(y.cpu(), r) <= tol
    for d, c in zip(dev_in, cpu_in):
        if d is not None:
            assert _rel_err(d.grad.cpu(), c.grad) <= tol


SAN_TOL = {torch.float32: 1e-5, torch.float16: 4e-3}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sanitize_subset_conv(algo, dtype, layout):
    g = _gen(5)
    R = 1 if algo == "gemm1x1" else 3
    pad = 0 if algo == "gemm1x1" else 1
    for groups in (1, 2):
        x = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
        w = torch.randn(6, 4 // groups, R, R, generator=g, dtype=torch.float64) * 0.3
        b = torch.randn(6, generator=g, dtype=torch.float64)
        _cpu_check(
            lambda x, w, b, groups=groups: FF.conv2d(x, w, b, stride=(1, 2), padding=pad, groups=groups, algo=algo),
            lambda x, w, b, groups=groups: F.conv2d(x, w, b, stride=(1, 2), padding=pad, groups=groups),
            [x, w, b],
            dtype,
            layout,
            SAN_TOL[dtype],
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sanitize_subset_pool(dtype, layout):
    x = (torch.randperm(2 * 3 * 7 * 9, generator=_gen(6)).double().reshape(2, 3, 7, 9) - 150) / 16
    tol = SAN_TOL[dtype]
    _cpu_check(
        lambda x: FF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
        lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
        [x],
        dtype,
        layout,
        tol,
    )
    _cpu_check(
        lambda x: FF.avg_pool2d(x, 3, 2, 1, True, False),
        lambda x: F.avg_pool2d(x, 3, 2, 1, True, False),
        [x],
        dtype,
        layout,
        tol,
    )
    _cpu_check(
        lambda x: FF.adaptive_avg_pool2d(x, (4, 5)), lambda x: F.adaptive_avg_pool2d(x, (4, 5)), [x], dtype, layout, tol
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sanitize_subset_batch_norm(dtype, layout):
    g = _gen(8)
    x = torch.randn(3, 5, 4, 7, generator=g, dtype=torch.float64)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    tol = SAN_TOL[dtype] * 2

    def ours(x, w, b):
        return FF.batch_norm(
            x,
            None,
            None,
            w.float() if x.dtype != torch.float64 else w,
            b.float() if x.dtype != torch.float64 else b,
            training=True,
        )

    _cpu_check(ours, lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [x, w, b], dtype, layout, tol)
    rm, rv = torch.zeros(5, device=DEV), torch.ones(5, device=DEV)
    xd = _layout(x.to(DEV), layout).to(dtype)
    FF.batch_norm(xd, rm, rv, w.float().to(DEV), b.float().to(DEV), training=True, momentum=0.5)
    y = FF.batch_norm(xd, rm, rv, w.float().to(DEV), b.float().to(DEV), training=False)
    rmc, rvc = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    F.batch_norm(xd.double().cpu(), rmc, rvc, w, b, training=True, momentum=0.5)
    ref = F.batch_norm(xd.double().cpu(), rmc, rvc, w, b, training=False)
    _sync()
    assert _rel_err(rm.cpu(), rmc) <= 1e-5 and _rel_err(rv.cpu(), rvc) <= 1e-5
    assert _rel_err(y.cpu(), ref) <= tol


def test_every_op_has_a_cuda_kernel():
    """Every op of the schema table has a CUDA registration (guards against a forgotten m.impl)."""
    ops = {
        "conv2d",
        "conv2d_dgrad",
        "conv2d_wgrad",
        "max_pool2d",
        "max_pool2d_backward",
        "avg_pool2d",
        "avg_pool2d_backward",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool2d_backward",
        "batch_norm_train",
        "batch_norm_eval",
        "batch_norm_backward",
        "batch_norm_update_running_stats_",
    }
    for name in ops:
        handle = getattr(torch.ops.fastconv, name).default
        key = "PrivateUse1" if EMULATED else "CUDA"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(handle.name(), key), name
