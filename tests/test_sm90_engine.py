"""The Hopper engine (algo "implicit_gemm_sm90": warp-specialised wgmma + TMA, csrc/cuda/conv2d_igemm_sm90.cu)
on the emulated sm_90 device (or an H100/H200 when present), against torch on the CPU.

Every layer class of ResNet-50 and GoogLeNet at a small batch (1x1 reduce/expand, 3x3, 3x3 stride 2,
1x1 stride 2 downsample, 5x5, 7x7 maps, Inception's odd channel counts as multiples of 8), odd sizes,
padding/dilation, groups, the split-K configuration (batch 1, 7x7); float16 and bfloat16 (judged by the
tolerance table of tests/helpers.py: within 2x torch's own error at that precision), float32 on TF32
(only with fastconv.backends.allow_tf32; judged against float64 with TF32's error bound); fprop, the
fused epilogue, dgrad (stride 1 over the flipped filter, which 16-bit reads from w itself; strided, also
dilated, by residue classes), wgrad (16-bit: MN-major wgmma operands, split-K), conv2d_bn_train's
statistics epilogue, and training through autograd (each backward direction on the
engine where it implements it, else on implicit_gemm). Refusals: C = 3, float32 without TF32, an sm_80
device, float32 wgrad, dgrad/wgrad with K not a multiple of 8 (dy as a TMA source); "auto" never
picks the engine.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _devices import CUDA_DEVICE, EMULATED, sm90_device
from helpers import judge_against_torch, rel_err

import fastconv
import fastconv.functional as FF
from fastconv import algorithms, backends
from fastconv.fused import conv2d_bias_act

ALGO = "implicit_gemm_sm90"
ops = torch.ops.fastconv


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.emulated,
    pytest.mark.skipif(not sm90_device(), reason="needs an sm_90 device (a GPU or the emulated sm_90 device)"),
]

# (name, input [N, C, H, W], weight [K, C/groups, R, S], stride, padding, dilation, groups)
CASES = [
    ("r50_1x1_reduce", (2, 64, 7, 7), (32, 64, 1, 1), 1, 0, 1, 1),
    ("r50_1x1_expand", (1, 32, 8, 8), (128, 32, 1, 1), 1, 0, 1, 1),
    ("r50_3x3", (2, 32, 7, 7), (32, 32, 3, 3), 1, 1, 1, 1),
    ("r50_3x3_s2", (1, 32, 9, 9), (48, 32, 3, 3), 2, 1, 1, 1),
    ("r50_downsample_1x1_s2", (2, 64, 8, 8), (64, 64, 1, 1), 2, 0, 1, 1),
    ("inception_5x5", (1, 16, 9, 9), (24, 16, 5, 5), 1, 2, 1, 1),
    ("inception_odd_k40", (1, 24, 7, 7), (40, 24, 3, 3), 1, 1, 1, 1),
    ("dilation2", (1, 16, 9, 9), (16, 16, 3, 3), 1, 2, 2, 1),
    ("groups2_128B", (1, 128, 5, 5), (32, 64, 3, 3), 1, 1, 1, 2),
    ("splitk_late_layer", (1, 256, 4, 4), (32, 256, 3, 3), 1, 1, 1, 1),
]


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fprop_and_training_match_torch(case, dtype):
    _, xs, ws, stride, padding, dilation, groups = case
    x, w, b = _inputs([xs, ws, (ws[0],)], seed=len(case[0]))
    # Forward and both backward directions on the engine (16-bit): output and gradients judged.
    xt = _cl(x).to(CUDA_DEVICE, dtype)
    wt = _cl(w).to(CUDA_DEVICE, dtype)
    assert algorithms.direction_algo(ALGO, 2, xt, wt, [stride] * 2, [padding] * 2, [dilation] * 2, groups) == ALGO
    judge_against_torch(
        lambda x, w, b: FF.conv2d(x, w, b, stride, padding, dilation, groups, algo=ALGO),
        lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
        [_cl(x), _cl(w), b], dtype, CUDA_DEVICE, what=f"{ALGO} {case[0]} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_epilogue(dtype):
    x, w, sc, bi, res = _inputs([(2, 32, 6, 6), (48, 32, 3, 3), (48,), (48,), (2, 48, 6, 6)], seed=5)
    judge_against_torch(
        lambda x, w, sc, bi, res: conv2d_bias_act(x, w, sc, bi, res, padding=1, relu=True, algo=ALGO),
        lambda x, w, sc, bi, res: torch.relu(F.conv2d(x, w, None, 1, 1) * sc.view(1, -1, 1, 1)
                                             + bi.view(1, -1, 1, 1) + res),
        [_cl(x), _cl(w), sc, bi, _cl(res)], dtype, CUDA_DEVICE, what=f"{ALGO} fused {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[7], CASES[3], CASES[4],
                                  ("s2_d2", (1, 16, 10, 10), (32, 16, 3, 3), 2, 2, 2, 1),
                                  ("s2_d3", (2, 24, 11, 11), (16, 24, 3, 3), 2, 3, 3, 1)],
                         ids=["3x3", "odd_k40", "dilation2", "3x3_s2_classes", "1x1_s2_empty_classes",
                              "3x3_s2_d2_classes", "3x3_s2_d3_classes"])
def test_dgrad_op(case, dtype):
    _, xs, ws, stride, padding, dilation, groups = case
    x, w = _inputs([xs, ws], seed=11)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    dy = torch.randn_like(y)

    def ours(dy, w):
        return ops.conv2d_dgrad(dy, w, list(xs), [stride] * 2, [padding] * 2, [dilation] * 2, groups, ALGO)

    def ref(dy, w):
        return torch.nn.grad.conv2d_input(list(xs), w, dy, stride, padding, dilation, groups)

    judge_against_torch(ours, ref, [_cl(dy), _cl(w)], dtype, CUDA_DEVICE, what=f"dgrad {case[0]} {dtype}")


def _tf32_bound(x, w, stride, padding, dilation, groups):
    # Each operand truncated to TF32 (10 mantissa bits) is within 2^-10 of itself, so every product is
    # within ~2^-9 relative; FP32 accumulation adds < K·2^-24 relative of Σ|a·b|: 2^-8·Σ|a·b| bounds both.
    return F.conv2d(x.abs(), w.abs(), None, stride, padding, dilation, groups) * 2.0 ** -8 + 1e-6


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tf32_float32(case):
    _, xs, ws, stride, padding, dilation, groups = case
    x, w = _inputs([xs, ws], seed=3)
    ref = F.conv2d(x, w, None, stride, padding, dilation, groups)
    with backends.flags(allow_tf32=True):
        out = FF.conv2d(_cl(x.float()).to(CUDA_DEVICE), _cl(w.float()).to(CUDA_DEVICE), None, stride, padding,
                        dilation, groups, algo=ALGO).cpu().double()
    err = (out - ref).abs()
    bound = _tf32_bound(x, w, stride, padding, dilation, groups)
    assert bool((err <= bound).all()), f"TF32 error {float((err / bound).max()):.3g} x its bound in {case[0]}"
    # TF32 really ran: farther from float64 than an FP32 product sum would be (inputs have full mantissas).
    fp32_err = (F.conv2d(x.float(), w.float(), None, stride, padding, dilation, groups).double() - ref).abs().max()
    assert float(err.max()) > 4 * float(fp32_err), (float(err.max()), float(fp32_err))


def test_float32_needs_tf32():
    x, w = _inputs([(1, 16, 6, 6), (16, 16, 3, 3)])
    xd, wd = _cl(x.float()).to(CUDA_DEVICE), _cl(w.float()).to(CUDA_DEVICE)
    assert backends.allow_tf32 is False  # the default: float32 means float32
    with pytest.raises(NotImplementedError, match="allow_tf32"):
        FF.conv2d(xd, wd, None, 1, 1, algo=ALGO)
    p = algorithms.ConvProblem(1, 16, 6, 6, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1, torch.float32, "cuda", True, None,
                               EMULATED)
    assert "allow_tf32" in algorithms.why_not(ALGO, p)
    with backends.flags(allow_tf32=True):
        assert algorithms.why_not(ALGO, p) is None
        assert fastconv._ext.cuda_binding(EMULATED).allow_tf32() is True
    assert fastconv._ext.cuda_binding(EMULATED).allow_tf32() is False


def test_refusals_name_the_reason():
    # C = 3 (the ResNet stem): a 6-byte pixel is not a TMA stride.
    x, w = _inputs([(1, 3, 8, 8), (16, 3, 3, 3)])
    with pytest.raises(NotImplementedError, match="16 bytes"):
        FF.conv2d(_cl(x.half()).to(CUDA_DEVICE), _cl(w.half()).to(CUDA_DEVICE), None, 1, 1, algo=ALGO)
    # wgrad: float32 has no MN-major TF32 wgmma; dy rows need 16-byte strides (K a multiple of 8).
    x, w = _inputs([(1, 16, 8, 8), (16, 16, 3, 3)])
    xd, wd = _cl(x.half()).to(CUDA_DEVICE), _cl(w.half()).to(CUDA_DEVICE)
    y = ops.conv2d(xd, wd, None, [2, 2], [1, 1], [1, 1], 1, ALGO)
    with backends.flags(allow_tf32=True):
        with pytest.raises(NotImplementedError, match="wgrad float16/bfloat16"):
            ops.conv2d_wgrad(y.float(), xd.float(), list(w.shape), [2, 2], [1, 1], [1, 1], 1, ALGO)
    y12 = _cl(torch.randn(1, 12, 4, 4, dtype=torch.float16)).to(CUDA_DEVICE)
    with pytest.raises(NotImplementedError, match="K a multiple of 8"):
        ops.conv2d_wgrad(y12, xd, [12, 16, 3, 3], [2, 2], [1, 1], [1, 1], 1, ALGO)
    # dgrad reads dy by TMA too: K = 12 float16 (24-byte rows) is refused.
    with pytest.raises(NotImplementedError, match="dgrad"):
        ops.conv2d_dgrad(y12, wd[:12], [1, 16, 8, 8], [2, 2], [1, 1], [1, 1], 1, ALGO)


@pytest.mark.skipif(not EMULATED, reason="switches the emulated device's architecture")
def test_not_offered_on_sm80():
    x, w = _inputs([(1, 16, 6, 6), (16, 16, 3, 3)])
    xd, wd = _cl(x.half()).to(CUDA_DEVICE), _cl(w.half()).to(CUDA_DEVICE)
    fastconv._ext._C_emu.set_arch(80)
    try:
        algorithms._ask_binding_cached.cache_clear()
        with pytest.raises(NotImplementedError, match="compute capability 9.0"):
            FF.conv2d(xd, wd, None, 1, 1, algo=ALGO)
    finally:
        fastconv._ext._C_emu.set_arch(90)
        algorithms._ask_binding_cached.cache_clear()


def test_auto_never_picks_the_unmeasured_engine():
    for dtype in (torch.float16, torch.bfloat16):
        for R, pad in ((1, 0), (3, 1)):
            p = algorithms.ConvProblem(32, 256, 56, 56, 256, R, R, (1, 1), (pad, pad), (1, 1), 1, dtype, "cuda", True,
                                       None, EMULATED)
            assert algorithms.can_implement(ALGO, p)
            assert not algorithms.heuristic(p).startswith("implicit_gemm_sm90")


VARIANTS = ["implicit_gemm_sm90_128x128", "implicit_gemm_sm90_128x64", "implicit_gemm_sm90_64x64",
            "implicit_gemm_sm90_splitk"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[9]], ids=["3x3", "odd_k40", "splitk_late_layer"])
def test_forced_tile_configurations(case, variant):
    # Each configuration on shapes the tile rule would not give it (tails, few tiles, long K).
    _, xs, ws, stride, padding, dilation, groups = case
    x, w, b = _inputs([xs, ws, (ws[0],)], seed=17)
    assert variant in fastconv.available_algorithms(CUDA_DEVICE)
    judge_against_torch(
        lambda x, w, b: FF.conv2d(x, w, b, stride, padding, dilation, groups, algo=variant),
        lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
        [_cl(x), _cl(w), b], torch.float16, CUDA_DEVICE, what=f"{variant} {case[0]}")


def test_forced_splitk_needs_its_workspace():
    # 1 x 4 x 4 pixels, K = 32, 3x3 over 256 channels: one 64x64 tile, 36 k-iterations -> 4 slices of FP32
    # partials (8 KiB); the bias slot is 256 B. Under a 4 KiB limit the forced split-K refuses, naming its
    # bytes, while the rule's split-K is optional: it runs unsplit, and still right.
    x, w = _inputs([(1, 256, 4, 4), (32, 256, 3, 3)])
    xd, wd = _cl(x.half()).to(CUDA_DEVICE), _cl(w.half()).to(CUDA_DEVICE)
    p = algorithms.ConvProblem(1, 256, 4, 4, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1, torch.float16, "cuda", True, None,
                               EMULATED)
    split_bytes = algorithms.kernel_query("implicit_gemm_sm90_splitk", p, 0, 0)[2]
    plain_bytes = algorithms.kernel_query("implicit_gemm_sm90_64x64", p, 0, 0)[2]
    assert split_bytes >= plain_bytes + 4 * 16 * 32 * 4, (split_bytes, plain_bytes)
    old = fastconv._ext.cuda_binding(EMULATED).workspace_limit()
    fastconv._ext.set_workspace_limit(4096)
    try:
        with pytest.raises(NotImplementedError, match="workspace"):
            FF.conv2d(xd, wd, None, 1, 1, algo="implicit_gemm_sm90_splitk")
        out = FF.conv2d(xd, wd, None, 1, 1, algo=ALGO).cpu().double()
    finally:
        fastconv._ext.set_workspace_limit(old)
    ref = F.conv2d(x.half().double(), w.half().double(), None, 1, 1)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())


WGRAD_CASES = [CASES[0], CASES[2], CASES[3], CASES[4], CASES[5], CASES[6], CASES[7], CASES[8],
               ("groups2_crossing_chunks", (2, 32, 6, 6), (16, 16, 3, 3), 1, 1, 1, 2),
               ("long_k_split", (4, 16, 16, 16), (16, 16, 1, 1), 1, 0, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", WGRAD_CASES, ids=[c[0] for c in WGRAD_CASES])
def test_wgrad_op(case, dtype):
    # dw = dy^T · im2col(x) on MN-major wgmma operands; K slices by the rule (long_k_split: 16 k-iterations).
    _, xs, ws, stride, padding, dilation, groups = case
    x, w = _inputs([xs, ws], seed=13)
    dy = torch.randn_like(F.conv2d(x, w, None, stride, padding, dilation, groups))

    def ours(dy, x):
        return ops.conv2d_wgrad(dy, x, list(ws), [stride] * 2, [padding] * 2, [dilation] * 2, groups, ALGO)

    def ref(dy, x):
        return torch.nn.grad.conv2d_weight(x, list(ws), dy, stride, padding, dilation, groups)

    judge_against_torch(ours, ref, [_cl(dy), _cl(x)], dtype, CUDA_DEVICE, what=f"wgrad {case[0]} {dtype}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_wgrad_forced_tiles(variant):
    # Odd K = 40 and C = 24 (tails in both tile dimensions), 3 k-iterations of 64 pixels (split-K: 2+).
    xs, ws, stride, padding, dilation, groups = (3, 24, 7, 7), (40, 24, 3, 3), 1, 1, 1, 1
    x, w = _inputs([xs, ws], seed=19)
    dy = torch.randn_like(F.conv2d(x, w, None, stride, padding, dilation, groups))
    judge_against_torch(
        lambda dy, x: ops.conv2d_wgrad(dy, x, list(ws), [stride] * 2, [padding] * 2, [dilation] * 2, groups, variant),
        lambda dy, x: torch.nn.grad.conv2d_weight(x, list(ws), dy, stride, padding, dilation, groups),
        [_cl(dy), _cl(x)], torch.float16, CUDA_DEVICE, what=f"wgrad {variant}")


def test_wgrad_split_needs_its_workspace():
    # 4 x 16 x 16 pixels (16 k-iterations of 64), 1x1 16 -> 16: the rule takes 2 K slices of FP32 partials
    # (2 x 1 KiB) when they fit; under a 256-byte limit it runs unsplit (still right), while the forced
    # split-K refuses naming the workspace.
    x, w = _inputs([(4, 16, 16, 16), (16, 16, 1, 1)], seed=23)
    dy = torch.randn(4, 16, 16, 16, dtype=torch.float64)
    p = algorithms.ConvProblem(4, 16, 16, 16, 16, 1, 1, (1, 1), (0, 0), (1, 1), 1, torch.float16, "cuda", True, None,
                               EMULATED)
    assert algorithms.kernel_query(ALGO, p, 2)[2] >= 2 * 16 * 16 * 4
    assert algorithms.kernel_query(ALGO, p, 2, 256)[2] == 0
    xd, dyd = _cl(x.half()).to(CUDA_DEVICE), _cl(dy.half()).to(CUDA_DEVICE)
    old = fastconv._ext.cuda_binding(EMULATED).workspace_limit()
    fastconv._ext.set_workspace_limit(256)
    try:
        with pytest.raises(NotImplementedError, match="workspace"):
            ops.conv2d_wgrad(dyd, xd, [16, 16, 1, 1], [1, 1], [0, 0], [1, 1], 1, "implicit_gemm_sm90_splitk")
        out = ops.conv2d_wgrad(dyd, xd, [16, 16, 1, 1], [1, 1], [0, 0], [1, 1], 1, ALGO).cpu().double()
    finally:
        fastconv._ext.set_workspace_limit(old)
    ref = torch.nn.grad.conv2d_weight(x.half().double(), [16, 16, 1, 1], dy.half().double())
    assert float((out - ref).abs().max()) < 0.02 * float(ref.abs().max())


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[9]], ids=["3x3", "3x3_s2_classes", "splitk_late_layer"])
def test_16bit_training_needs_no_workspace(case):
    # fprop's bias in T, dgrad's B read from w (no flipped copy), wgrad and the rule's split-K only as the
    # workspace allows: under workspace_limit_mb = 0 the engine still takes the forward and both backward
    # directions of a 16-bit conv.
    _, xs, ws, stride, padding, dilation, groups = case
    x, w, b = _inputs([xs, ws, (ws[0],)], seed=11)
    p = algorithms.ConvProblem.from_tensors(_cl(x).to(CUDA_DEVICE, torch.float16),
                                            _cl(w).to(CUDA_DEVICE, torch.float16), [stride] * 2, [padding] * 2,
                                            [dilation] * 2, groups)
    assert algorithms.workspace_bytes(ALGO, p) == 0
    with backends.flags(workspace_limit_mb=0):
        judge_against_torch(
            lambda x, w, b: FF.conv2d(x, w, b, stride, padding, dilation, groups, algo=ALGO),
            lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
            [_cl(x), _cl(w), b], torch.float16, CUDA_DEVICE, what=f"{ALGO} {case[0]} no workspace")


# conv2d_bn_train on the engine: the statistics come from the fprop's epilogue (per-warp (mean, M2) slots,
# csrc/cuda/bn_stats_finalize.cuh). Partial last M tiles (M = 98, 25, 49), stride 2, K past a tile, groups,
# and a layer whose rule plan is split-K (the statistics run it on whole tiles).
BN_CASES = [CASES[0], CASES[3], CASES[6], CASES[8], CASES[9]]


def _bn_ref(x, w, bw, bb, stride, padding, dilation, groups):
    c = F.conv2d(x, w, None, stride, padding, dilation, groups)
    return torch.relu(F.batch_norm(c, None, None, bw, bb, training=True)), c


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", BN_CASES, ids=[c[0] for c in BN_CASES])
def test_conv2d_bn_train_statistics_epilogue(case, dtype):
    from fastconv.fused import conv2d_bn_train

    _, xs, ws, stride, padding, dilation, groups = case
    x, w, bw, bb = _inputs([xs, ws, (ws[0],), (ws[0],)], seed=3)
    bw = bw.abs() + 0.5
    conv_args = (stride, padding, dilation, groups)
    # Output and every gradient (dgrad and wgrad of the conv on the engine) against torch.
    judge_against_torch(
        lambda x, w, bw, bb: conv2d_bn_train(x, w, bw, bb, *conv_args, relu=True, algo=ALGO)[0],
        lambda x, w, bw, bb: _bn_ref(x, w, bw, bb, *conv_args)[0],
        [_cl(x), _cl(w), bw, bb], dtype, CUDA_DEVICE, what=f"{ALGO} conv2d_bn_train {case[0]} {dtype}")
    # The batch statistics: of the conv output as rounded to dtype, so within 2x torch's own error (its
    # conv at dtype, statistics in float64) of the float64 statistics.
    _, c64 = _bn_ref(x, w, bw, bb, *conv_args)
    c_low = F.conv2d(x.to(dtype), w.to(dtype), None, *conv_args).double()
    xd, wd = _cl(x).to(CUDA_DEVICE, dtype), _cl(w).to(CUDA_DEVICE, dtype)
    with torch.no_grad():
        out, mean, var = conv2d_bn_train(xd, wd, bw.float().to(CUDA_DEVICE), bb.float().to(CUDA_DEVICE), *conv_args,
                                         relu=True, algo=ALGO)
    assert mean.dtype == var.dtype == torch.float32
    for name, got, want, theirs in (("mean", mean, c64.mean((0, 2, 3)), c_low.mean((0, 2, 3))),
                                    ("var", var, c64.var((0, 2, 3), unbiased=False),
                                     c_low.var((0, 2, 3), unbiased=False))):
        eo, et = rel_err(got, want), rel_err(theirs, want)
        assert eo <= 2 * et + 1e-4, f"{case[0]} {dtype} {name}: our error {eo:.3g} > 2 x torch's {et:.3g} + 1e-4"


def test_conv2d_bn_train_composes_when_the_partials_do_not_fit(capfd):
    # Under a workspace limit below the partials (here 1 KiB) the op runs the conv, then batch_norm_train:
    # the same results. The raw op (the Python layer would refuse the engine under this limit for dgrad).
    # On the emulator its launch counters say which path ran: the statistics kernel only without the limit.
    x, w, bw, bb = _inputs([(2, 64, 7, 7), (32, 64, 1, 1), (32,), (32,)], seed=4)
    xd, wd = _cl(x).to(CUDA_DEVICE, torch.float16), _cl(w).to(CUDA_DEVICE, torch.float16)
    args = (bw.float().to(CUDA_DEVICE), bb.float().to(CUDA_DEVICE), [1, 1], [0, 0], [1, 1], 1, 1e-5, False, ALGO)
    emu = fastconv._ext.cuda_binding(EMULATED) if EMULATED else None

    def stats_kernel_launches() -> int:  # cumulative since the counters were turned on
        capfd.readouterr()
        emu.print_counters()
        out = capfd.readouterr().out
        line = [ln for ln in out.splitlines() if ln.startswith("bn_stats_finalize_kernel (conv2d_igemm_sm90")]
        return sum(int(ln.rsplit(":", 1)[1].split()[0]) for ln in line)

    old = fastconv._ext.cuda_binding(EMULATED).workspace_limit()
    if emu is not None:
        emu.set_counters(True)
    try:
        fastconv._ext.set_workspace_limit(1024)
        try:
            composed = ops.conv2d_bn_train(xd, wd, *args)
        finally:
            fastconv._ext.set_workspace_limit(old)
        if emu is not None:
            assert stats_kernel_launches() == 0  # composed: conv2d + batch_norm_train
        fused = ops.conv2d_bn_train(xd, wd, *args)
        if emu is not None:
            assert stats_kernel_launches() == 1  # the engine's statistics epilogue + finalize
    finally:
        if emu is not None:
            emu.set_counters(False)
    c64 = F.conv2d(x, w)
    out64 = F.batch_norm(c64, None, None, bw, bb, training=True)
    for got in (fused, composed):
        assert rel_err(got[0], out64) < 2e-2 and rel_err(got[1], c64) < 2e-2
        assert rel_err(got[2], c64.mean((0, 2, 3))) < 1e-3
        assert rel_err(got[4], c64.var((0, 2, 3), unbiased=False)) < 1e-2


def test_backward_directions_fall_back_where_the_engine_cannot():
    x, w = _inputs([(1, 16, 8, 8), (16, 16, 3, 3)])
    args = ([1, 1], [1, 1], [1, 1], 1)
    with backends.flags(allow_tf32=True):
        xf, wf = _cl(x.float()).to(CUDA_DEVICE), _cl(w.float()).to(CUDA_DEVICE)
        # float32 (TF32): dgrad on the engine, wgrad on implicit_gemm's TF32 kernels.
        assert algorithms.direction_algo(ALGO, 1, xf, wf, *args) == ALGO
        assert algorithms.direction_algo(ALGO, 2, xf, wf, *args) == "implicit_gemm"
        # ... and training through autograd still matches torch within TF32's bound.
        xr, wr = xf.clone().requires_grad_(), wf.clone().requires_grad_()
        FF.conv2d(xr, wr, None, 1, 1, algo=ALGO).sum().backward()
    xs, ws_ = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(xs, ws_, None, 1, 1).sum().backward()
    for got, want in ((xr.grad, xs.grad), (wr.grad, ws_.grad)):
        assert float((got.cpu().double() - want).abs().max()) < 2.0 ** -8 * float(want.abs().max()) * 16
    # K = 12 float16: the fprop runs on the engine, but dy (24-byte rows) is no TMA source: dgrad and wgrad
    # on implicit_gemm; a strided, dilated conv keeps both on the engine.
    xh, wh = _cl(x.half()).to(CUDA_DEVICE), _cl(w.half()).to(CUDA_DEVICE)
    assert algorithms.can_implement(ALGO, algorithms.ConvProblem.from_tensors(xh, wh[:12], *args))
    assert algorithms.direction_algo(ALGO, 1, xh, wh[:12], *args) == "implicit_gemm"
    assert algorithms.direction_algo(ALGO, 2, xh, wh[:12], *args) == "implicit_gemm"
    assert algorithms.direction_algo(ALGO, 1, xh, wh, [2, 2], [2, 2], [2, 2], 1) == ALGO
    assert algorithms.direction_algo(ALGO, 2, xh, wh, [2, 2], [2, 2], [2, 2], 1) == ALGO


def _problem(n, c, h, k, r, stride=1, pad=0, dil=1, groups=1, dtype=torch.float16):
    return algorithms.ConvProblem(n, c, h, h, k, r, r, (stride, stride), (pad, pad), (dil, dil), groups, dtype,
                                  "cuda", True, None, EMULATED)


def test_kernel_plan_says_what_the_rule_runs():
    # The tile rule lives next to the kernel (make_plan / make_wgrad_plan); fastconv.algorithms.kernel_plan and
    # explain() report its pick. 3x3 256 at 14², batch 32: 49 x 2 = 98 large tiles < 132 -> 64x64 tiles;
    # batch 256: 392 x 2 large tiles.
    assert algorithms.kernel_plan(ALGO, _problem(32, 256, 14, 256, 3, pad=1)).startswith("64x64 tiles (")
    big = algorithms.kernel_plan(ALGO, _problem(256, 256, 14, 256, 3, pad=1))
    assert big == "128x128 tiles (784 tiles, 36 k-iterations)", big
    # 64 filters at 56², batch 8: 196 tiles of 128 x 64 (two consumers of 64 columns); batch 2: 49 of them
    # are too few, so 98 of 64 x 64.
    assert algorithms.kernel_plan(ALGO, _problem(8, 64, 56, 64, 3, pad=1)) == "128x64 tiles (196 tiles, 9 k-iterations)"
    assert algorithms.kernel_plan(ALGO, _problem(2, 64, 56, 64, 3, pad=1)) == "64x64 tiles (98 tiles, 9 k-iterations)"
    # Batch 1, 7², 512 -> 64: one 64x64 tile of 72 k-iterations -> split into K slices (>= 8 iterations each).
    late = algorithms.kernel_plan(ALGO, _problem(1, 512, 7, 64, 3, pad=1))
    assert late == "64x64 tiles (1 tile x 9 K slices, 72 k-iterations)", late
    # wgrad: 3x3 64 at 56², batch 8: 9 tiles of 64x64 over 392 k-iterations -> 15 slices.
    wg = algorithms.kernel_plan(ALGO, _problem(8, 64, 56, 64, 3, pad=1), 2)
    assert wg == "wgrad: 64x64 tiles (9 tiles x 15 K slices, 392 k-iterations)", wg
    assert "4 residue classes (4 with taps)" in algorithms.kernel_plan(ALGO, _problem(2, 64, 14, 64, 3, 2, 1), 1)
    assert algorithms.kernel_plan(ALGO, _problem(1, 3, 8, 16, 3, pad=1)) is None  # refused: no plan
    assert algorithms.kernel_plan("implicit_gemm", _problem(1, 64, 8, 64, 3, pad=1)) is None  # no description
    ex = fastconv.explain(_problem(256, 256, 14, 256, 3, pad=1), verbose=False)
    line = next(ln for ln in str(ex).splitlines() if ln[2:].split()[0] == ALGO)
    assert "128x128 tiles (784 tiles" in line, str(ex)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_shapes_dgrad_wgrad(seed):
    # Random small problems (odd C/K, groups, strides 1-4, dilations 1-3, padding 0-3, tiny maps) that the
    # engine accepts, dgrad and wgrad against torch.nn.grad in float64 on the same rounded operands.
    import random

    rng = random.Random(seed)
    ran = {1: 0, 2: 0}
    while min(ran.values()) < 12:
        n, c, k = rng.choice([1, 2, 3]), rng.choice([8, 16, 24, 40, 64, 72]), rng.choice([8, 16, 24, 40, 64, 136])
        g = rng.choice([1, 1, 2, 4])
        r, s, h, w = rng.choice([1, 2, 3, 5]), rng.choice([1, 3, 4]), rng.randint(1, 12), rng.randint(1, 12)
        st, dl = (rng.choice([1, 2, 3, 4]), rng.choice([1, 2, 3])), (rng.choice([1, 2, 3]), rng.choice([1, 2]))
        pd = (rng.randint(0, 3), rng.randint(0, 3))
        dtype = rng.choice([torch.float16, torch.bfloat16])
        p = algorithms.ConvProblem(n, c, h, w, k, r, s, st, pd, dl, g, dtype, "cuda", True, None, EMULATED)
        if c % g or k % g or p.P <= 0 or p.Q <= 0:
            continue
        x, wt, dy = _inputs([(n, c, h, w), (k, c // g, r, s), (n, k, p.P, p.Q)], seed=len(ran) + sum(ran.values()))
        for d in (1, 2):
            if not algorithms.kernel_query(ALGO, p, d)[0]:
                continue
            ran[d] += 1
            _judge_backward_direction(d, p, x, wt, dy)


def _judge_backward_direction(d, p, x, wt, dy):
    n, c, h, w, g = p.N, p.C, p.H, p.W, p.groups
    st, pd, dl = list(p.stride), list(p.padding), list(p.dilation)
    if d == 1:
        judge_against_torch(
            lambda dy, wt: ops.conv2d_dgrad(dy, wt, [n, c, h, w], st, pd, dl, g, ALGO),
            lambda dy, wt: torch.nn.grad.conv2d_input([n, c, h, w], wt, dy, st, pd, dl, g),
            [_cl(dy), _cl(wt)], p.dtype, CUDA_DEVICE, what=f"dgrad {p}")
    else:
        judge_against_torch(
            lambda dy, x: ops.conv2d_wgrad(dy, x, list(wt.shape), st, pd, dl, g, ALGO),
            lambda dy, x: torch.nn.grad.conv2d_weight(x, list(wt.shape), dy, st, pd, dl, g),
            [_cl(dy), _cl(x)], p.dtype, CUDA_DEVICE, what=f"wgrad {p}")
