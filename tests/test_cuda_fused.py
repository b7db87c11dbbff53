"""CUDA: the tensor-core implicit GEMM (algo="implicit_gemm") and conv2d_fused vs PyTorch (cuDNN).

Accuracy rule (as tests/test_cuda_ops.py): at float16/bfloat16 our max error against an fp64 reference,
relative to the reference's magnitude, must be at most 2x torch's own error at the same precision plus a
small atol. float32 goes through the non-tensor-core algorithms here (implicit_gemm has no float path
yet) with TF32 off. Every test is marked `cuda` and skipped without a GPU or a CUDA build.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers the ops)

from _devices import CUDA_DEVICE, EMULATED, skip_if_too_big_for_emulator  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.emulated,
    pytest.mark.skipif(CUDA_DEVICE is None, reason="needs a CUDA GPU or the emulated CUDA device"),
]

ops = torch.ops.fastconv
DEV = CUDA_DEVICE or "cuda"  # a GPU, or the emulated CUDA device (tests/_devices.py)
LOW = [torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LAYOUTS = ["nchw", "channels_last"]


@pytest.fixture(autouse=True)
def _strict_fp32():
    from fastconv import _ext

    if not EMULATED and not _ext.built_with_cuda():
        pytest.skip("fastconv was built without CUDA kernels")
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _randn(shape, seed: int, scale: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    skip_if_too_big_for_emulator(shape)
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + mean).to(DEV)


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    return (a.double() - ref).abs().max().item() / scale if ref.numel() else 0.0


def _assert_within_2x(name: str, ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor, dtype) -> None:
    assert ours.shape == ref.shape, name
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    eo, et = _rel_err(ours, ref), _rel_err(theirs, ref)
    assert eo <= 2 * et + ATOL[dtype], f"{name}: our error {eo:.3g} > 2 x torch's {et:.3g} + {ATOL[dtype]}"


# name, N, C, H, W, K, R, S, stride, padding, dilation, groups
CONVS = [
    ("stem_c3_7x7s2", 2, 3, 32, 30, 64, 7, 7, 2, 3, 1, 1),
    ("3x3_c64", 2, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1),
    ("3x3_c12_k10_tail", 3, 12, 9, 11, 10, 3, 3, 1, 1, 1, 1),
    ("3x3s2_dil2", 2, 32, 17, 15, 40, 3, 3, 2, 2, 2, 1),
    ("grouped_g4", 2, 64, 10, 10, 96, 3, 3, 1, 1, 1, 4),
    ("1x1s2_c136", 2, 136, 12, 12, 72, 1, 1, 2, 0, 1, 1),
    ("1x1_large_tile", 8, 64, 28, 28, 1000, 1, 1, 1, 0, 1, 1),
]


def _conv_inputs(cfg, layout, seed=0):
    _, n, c, h, w, k, r, s, stride, pad, dil, groups = cfg
    x = _layout(_randn((n, c, h, w), seed), layout)
    wt = _layout(_randn((k, c // groups, r, s), seed + 1, scale=(c // groups * r * s) ** -0.5), layout)
    return x, wt, [stride, stride], [pad, pad], [dil, dil], groups


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CONVS, ids=[c[0] for c in CONVS])
def test_implicit_gemm_conv2d(cfg, layout, dtype):
    x, w, stride, pad, dil, groups = _conv_inputs(cfg, layout)
    b = _randn((w.shape[0],), 7)
    ref = F.conv2d(x, w, b, stride, pad, dil, groups)
    theirs = F.conv2d(x.to(dtype), w.to(dtype), b.to(dtype), stride, pad, dil, groups)
    ours = ops.conv2d(x.to(dtype), w.to(dtype), b.to(dtype), stride, pad, dil, groups, "implicit_gemm")
    assert ours.dtype == dtype
    _assert_within_2x("conv2d", ours, theirs, ref, dtype)
    assert ours.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                              else torch.contiguous_format)


def _fused_ref(x, w, scale, bias, res, stride, pad, dil, groups, relu):
    y = F.conv2d(x, w, None, stride, pad, dil, groups)
    if scale is not None:
        y = y * scale.to(y.dtype).view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    if res is not None:
        y = y + res
    return F.relu(y) if relu else y


def _fused_run(fn, x, w, scale, bias, res, dtype, grad_seed):
    ins = [x.detach().to(dtype).requires_grad_(), w.detach().to(dtype).requires_grad_(),
           None if scale is None else scale.detach().float().requires_grad_(),
           None if bias is None else bias.detach().float().requires_grad_(),
           None if res is None else res.detach().to(dtype).requires_grad_()]
    y = fn(*ins)
    y.backward(_randn(y.shape, grad_seed).to(y.dtype))
    return y.detach(), [None if t is None else t.grad for t in ins]


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", [CONVS[0], CONVS[1], CONVS[2], CONVS[4]], ids=lambda c: c[0])
@pytest.mark.parametrize("algo", ["implicit_gemm", "im2col"])
def test_conv2d_fused(cfg, layout, dtype, algo):
    x, w, stride, pad, dil, groups = _conv_inputs(cfg, layout)
    k = w.shape[0]
    scale = _randn((k,), 3, scale=0.25, mean=1.0)
    bias = _randn((k,), 4)
    p = (x.shape[2] + 2 * pad[0] - dil[0] * (w.shape[2] - 1) - 1) // stride[0] + 1
    q = (x.shape[3] + 2 * pad[1] - dil[1] * (w.shape[3] - 1) - 1) // stride[1] + 1
    res = _layout(_randn((x.shape[0], k, p, q), 5), layout)

    def ours(x, w, sc, b, r):
        return ops.conv2d_fused(x, w, sc, b, r, stride, pad, dil, groups, True, algo)

    def ref(x, w, sc, b, r):
        return _fused_ref(x, w, sc, b, r, stride, pad, dil, groups, True)

    r_out, r_grads = _fused_run(ref, x, w, scale, bias, res, torch.float64, 11)
    t_out, t_grads = _fused_run(ref, x, w, scale, bias, res, dtype, 11)
    o_out, o_grads = _fused_run(ours, x, w, scale, bias, res, dtype, 11)
    assert o_out.dtype == dtype
    _assert_within_2x("output", o_out, t_out, r_out, dtype)
    for name, o, t, r in zip(["x", "w", "scale", "bias", "residual"], o_grads, t_grads, r_grads):
        _assert_within_2x(f"grad {name}", o, t, r, dtype)


def test_conv2d_fused_float32_other_algo():
    x, w, stride, pad, dil, groups = _conv_inputs(CONVS[2], "channels_last")
    k = w.shape[0]
    scale, bias = _randn((k,), 3, 0.25, 1.0).float(), _randn((k,), 4).float()
    ours = ops.conv2d_fused(x.float(), w.float(), scale, bias, None, stride, pad, dil, groups, True, "direct")
    ref = _fused_ref(x, w, scale.double(), bias.double(), None, stride, pad, dil, groups, True)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CONVS, ids=[c[0] for c in CONVS])
def test_implicit_gemm_dgrad(cfg, layout, dtype):
    x, w, stride, pad, dil, groups = _conv_inputs(cfg, layout)
    y = F.conv2d(x, w, None, stride, pad, dil, groups)
    dy = _layout(_randn(y.shape, 9), layout)
    ref = torch.nn.grad.conv2d_input(x.shape, w, dy, stride, pad, dil, groups)
    theirs = torch.nn.grad.conv2d_input(x.shape, w.to(dtype), dy.to(dtype), stride, pad, dil, groups)
    ours = ops.conv2d_dgrad(dy.to(dtype), w.to(dtype), list(x.shape), stride, pad, dil, groups, "implicit_gemm")
    assert ours.dtype == dtype
    _assert_within_2x("dgrad", ours, theirs, ref, dtype)
    assert ours.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                              else torch.contiguous_format)


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CONVS, ids=[c[0] for c in CONVS])
def test_implicit_gemm_wgrad(cfg, layout, dtype):
    x, w, stride, pad, dil, groups = _conv_inputs(cfg, layout)
    y = F.conv2d(x, w, None, stride, pad, dil, groups)
    dy = _layout(_randn(y.shape, 9), layout)
    ref = torch.nn.grad.conv2d_weight(x, w.shape, dy, stride, pad, dil, groups)
    theirs = torch.nn.grad.conv2d_weight(x.to(dtype), w.shape, dy.to(dtype), stride, pad, dil, groups)
    ours = ops.conv2d_wgrad(dy.to(dtype), x.to(dtype), list(w.shape), stride, pad, dil, groups, "implicit_gemm")
    assert ours.dtype == dtype
    _assert_within_2x("wgrad", ours, theirs, ref, dtype)
    # Deterministic: a fixed split count and a fixed-order reduction give the same bits every run.
    again = ops.conv2d_wgrad(dy.to(dtype), x.to(dtype), list(w.shape), stride, pad, dil, groups, "implicit_gemm")
    assert torch.equal(ours, again)


def test_implicit_gemm_unsupported_raise_clearly():
    x, w, stride, pad, dil, groups = _conv_inputs(CONVS[1], "channels_last")
    y = ops.conv2d(x.half(), w.half(), None, stride, pad, dil, groups, "implicit_gemm")
    with pytest.raises(NotImplementedError, match="implicit_gemm"):
        ops.conv2d_dgrad(y.float(), w.float(), list(x.shape), stride, pad, dil, groups, "implicit_gemm")
    with pytest.raises(NotImplementedError, match="implicit_gemm"):
        ops.conv2d_wgrad(y.float(), x.float(), list(w.shape), stride, pad, dil, groups, "implicit_gemm")
    with pytest.raises(NotImplementedError, match="implicit_gemm"):
        ops.conv2d(x.float(), w.float(), None, stride, pad, dil, groups, "implicit_gemm")
    with pytest.raises(NotImplementedError, match="implicit_gemm"):
        ops.conv2d_fused(x.float(), w.float(), None, None, None, stride, pad, dil, groups, False, "implicit_gemm")


def test_conv2d_fused_autograd_through_implicit_gemm():
    # The backward of an implicit_gemm forward runs on implicit_gemm's own dgrad/wgrad kernels.
    x, w, stride, pad, dil, groups = _conv_inputs(CONVS[1], "channels_last")
    xh = x.half().requires_grad_()
    wh = w.half().requires_grad_()
    y = fastconv.fused.conv2d_bias_act(xh, wh, None, None, None, stride, pad, dil, groups, True,
                                       algo="implicit_gemm")
    y.sum().backward()
    assert xh.grad is not None and wh.grad is not None
    assert torch.isfinite(xh.grad).all() and torch.isfinite(wh.grad).all()


# ---- conv2d_bn_train: the implicit-GEMM statistics epilogue ----------------------------------------------
# The kernel stores conv_out and per-warp-slot Welford partials of it; a finalize kernel merges them in a
# fixed order. Covered: the 16-byte path (C = K = 16), the element-wise path with M and K tails (C = 12,
# K = 10), groups (one grid z per group, channels offset by g·Kg).
BN_CONVS = [("c16_k16_8x8", 2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1), CONVS[2], CONVS[4]]


def _bn_stats(t: torch.Tensor):
    t = t.double()
    return t.mean((0, 2, 3)), t.var((0, 2, 3), unbiased=False)


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("cfg", BN_CONVS, ids=[c[0] for c in BN_CONVS])
def test_conv2d_bn_train_implicit_gemm(cfg, dtype):
    x, w, stride, pad, dil, groups = _conv_inputs(cfg, "channels_last")
    k = w.shape[0]
    bw, bb = _randn((k,), 3, scale=0.25, mean=1.0).float(), _randn((k,), 4).float()
    args = (x.to(dtype), w.to(dtype), bw, bb, stride, pad, dil, groups, 1e-5, True, "implicit_gemm")
    out, conv, mean, invstd, var = ops.conv2d_bn_train(*args)
    assert conv.dtype == out.dtype == dtype and mean.dtype == invstd.dtype == var.dtype == torch.float32
    r_conv = F.conv2d(x, w, None, stride, pad, dil, groups)
    r_mean, r_var = _bn_stats(r_conv)
    r_out = F.relu(F.batch_norm(r_conv, None, None, bw.double(), bb.double(), training=True))
    t_conv = F.conv2d(x.to(dtype), w.to(dtype), None, stride, pad, dil, groups)
    t_mean, t_var = _bn_stats(t_conv.float())
    t_out = F.relu(F.batch_norm(t_conv.float(), None, None, bw, bb, training=True)).to(dtype)
    _assert_within_2x("conv_out", conv, t_conv, r_conv, dtype)
    _assert_within_2x("mean", mean, t_mean, r_mean, dtype)
    _assert_within_2x("var", var, t_var, r_var, dtype)
    _assert_within_2x("out", out, t_out, r_out, dtype)
    # The statistics are those of the returned (rounded) conv_out, to float32 accuracy.
    c_mean, c_var = _bn_stats(conv)
    torch.testing.assert_close(mean.double(), c_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), c_var, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(invstd, torch.rsqrt(var + 1e-5), rtol=1e-6, atol=0)
    # Deterministic: fixed-order partials and merge, the same bits every run.
    again = ops.conv2d_bn_train(*args)
    for a, b in zip((out, conv, mean, invstd, var), again):
        assert torch.equal(a, b)


def test_conv2d_bn_train_implicit_gemm_large_mean():
    # A conv output whose mean is large next to its spread: the Welford/Chan partials keep the variance
    # (mean/std ~ 150 here: Σ and Σ² in float32 would lose ~ (mean/std)²·2^-24 ≈ 1e-3 of it).
    cfg = BN_CONVS[0]
    x, w, stride, pad, dil, groups = _conv_inputs(cfg, "channels_last")
    x = (x * 0.5 + 8.0).contiguous(memory_format=torch.channels_last)
    w = (w.abs() + 0.05).contiguous(memory_format=torch.channels_last)
    _, conv, mean, _, var = ops.conv2d_bn_train(x.half(), w.half(), None, None, [1, 1], [0, 0], dil, groups, 1e-5,
                                                False, "implicit_gemm")
    c_mean, c_var = _bn_stats(conv)
    assert (c_mean.abs() > 20 * c_var.sqrt()).all()  # the regime this test is about
    torch.testing.assert_close(mean.double(), c_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), c_var, rtol=1e-4, atol=0)
