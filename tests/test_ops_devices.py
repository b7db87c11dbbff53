"""Every op, once, on every device present: `cpu`, the emulated CUDA device (`fcemu`) and `cuda` when
a GPU is there. The same cases, the same references (torch on the CPU in float64) and one tolerance
table (tests/helpers.py: float64 to 1e-9; lower precisions within 2x torch's own error at that
precision plus a small atol). Shapes are small so that the emulator, which runs every CUDA thread
as a fiber, takes seconds; the GPU-sized cases live in test_cuda_ops.py.

Covered: every algorithm of each device (direct, im2col, gemm1x1, implicit_gemm, implicit_gemm_sm90
where it can implement the case), every dtype it
supports, both layouts, fprop/dgrad/wgrad, groups, stride, dilation, padding, odd channel counts
(C = 3, K = 7), im2col under a workspace limit that forces fewer tasks; max/avg/adaptive pooling;
batch norm (train and eval, with ReLU); the fused conv epilogue; torch.library.opcheck.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _devices import DEVICE_PARAMS
from helpers import judge_against_torch

import fastconv
import fastconv.functional as FF
from fastconv import backends
from fastconv.fused import conv2d_bias_act


def _dtypes(device: str, *, double: bool = True):
    if device == "cpu":
        return [torch.float32, torch.float64]
    return [torch.float32, torch.float16, torch.bfloat16] + ([torch.float64] if double else [])


def _layout(t, layout):
    return t.contiguous(memory_format=torch.channels_last) if layout == "nhwc" and t.dim() == 4 else t.contiguous()


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [None if s is None else torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


# (name, input, weight, stride, padding, dilation, groups)
CONV_CASES = [
    ("odd_c3_k7", (2, 3, 7, 6), (7, 3, 3, 3), 1, 1, 1, 1),
    ("stride2_pad2", (1, 4, 9, 9), (6, 4, 3, 3), 2, 2, 1, 1),
    ("dilation2", (2, 4, 8, 8), (4, 4, 3, 3), 1, 2, 2, 1),
    ("groups2", (1, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2),
    ("depthwise", (2, 6, 6, 5), (6, 1, 3, 3), 1, 1, 1, 6),
    ("pointwise_s2", (2, 8, 7, 7), (5, 8, 1, 1), 2, 0, 1, 1),
    ("rect_5x1", (1, 5, 8, 6), (3, 5, 5, 1), 1, (2, 0), 1, 1),
]


_TENSOR_CORE_ALGOS = ("implicit_gemm", "implicit_gemm_sm90", "implicit_gemm_sm90_128x128", "implicit_gemm_sm90_128x64",
                      "implicit_gemm_sm90_64x64",
                      "implicit_gemm_sm90_splitk")


def _conv_algos(device):
    return [a for a in fastconv.available_algorithms(device) if a != "auto"]


def _algo_dtype_cases(device):
    out = []
    for algo in ["auto"] + _conv_algos(device):
        for dt in _dtypes(device):
            # The tensor-core algorithms: float32 would be TF32 (off by default; test_sm90_engine.py
            # checks it with TF32's own tolerance).
            if algo in _TENSOR_CORE_ALGOS and dt not in (torch.float16, torch.bfloat16):
                continue
            if device != "cpu" and dt == torch.float64 and algo not in ("auto", "direct"):
                continue
            out.append((algo, dt))
    return out


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conv2d_every_algorithm(device, case, layout):
    _, xs, ws, stride, padding, dilation, groups = case
    for algo, dt in _algo_dtype_cases(device):
        if algo == "gemm1x1" and (ws[2:] != (1, 1) or padding != 0):
            continue
        if algo in _TENSOR_CORE_ALGOS:
            why = fastconv.algorithms.why_not(algo, fastconv.algorithms.ConvProblem(
                *xs, ws[0], ws[2], ws[3], (stride,) * 2, (padding,) * 2 if isinstance(padding, int) else padding,
                (dilation,) * 2, groups, dt, "cuda", layout == "nhwc", None, device != "cuda"))
            if why is not None:
                continue
        x, w, b = _inputs([xs, ws, (ws[0],)], seed=hash(case[0]) % 1000)
        x, w = _layout(x, layout), _layout(w, layout)
        judge_against_torch(
            lambda x, w, b, algo=algo: FF.conv2d(x, w, b, stride, padding, dilation, groups, algo=algo),
            lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
            [x, w, b], dt, device, what=f"{algo} {dt}")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_im2col_under_a_workspace_limit_runs_in_fewer_tasks(device, layout):
    # One image's column buffer: 4·9·8·8·4 B = 9 KiB for float32. A limit of 0 MiB refuses, the
    # default runs one task per image; the result is the same either way (fprop/dgrad per image).
    x, w = _inputs([(6, 4, 8, 8), (5, 4, 3, 3)], seed=3)
    x, w = _layout(x, layout), _layout(w, layout)
    judge_against_torch(lambda x, w: FF.conv2d(x, w, None, 1, 1, algo="im2col"),
                        lambda x, w: F.conv2d(x, w, None, 1, 1), [x, w], torch.float32, device, what="im2col")
    with backends.flags(workspace_limit_mb=0):
        with pytest.raises(NotImplementedError, match="workspace"):
            FF.conv2d(x.float().to(device), w.float().to(device), None, 1, 1, algo="im2col")
        # "auto" does not choose what would refuse: it runs another algorithm and is still right.
        judge_against_torch(lambda x, w: FF.conv2d(x, w, None, 1, 1),
                            lambda x, w: F.conv2d(x, w, None, 1, 1), [x, w], torch.float32, device, what="auto")


POOL_CASES = [
    ("max_k3_s2_p1", lambda M, x: M.max_pool2d(x, 3, 2, 1)),
    ("max_dil2_ceil", lambda M, x: M.max_pool2d(x, 3, 1, 1, dilation=2, ceil_mode=True)),
    ("avg_k3_s2_p1_nopad", lambda M, x: M.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("avg_k2_ceil", lambda M, x: M.avg_pool2d(x, 2, ceil_mode=True)),
    ("avg_divisor_neg3", lambda M, x: M.avg_pool2d(x, 2, divisor_override=-3)),
    ("adaptive_1", lambda M, x: M.adaptive_avg_pool2d(x, 1)),
    ("adaptive_3x2", lambda M, x: M.adaptive_avg_pool2d(x, (3, 2))),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_pooling(device, case, layout):
    _, fn = case
    (x,) = _inputs([(2, 5, 9, 7)], seed=11)
    x = _layout(x, layout)
    for dt in _dtypes(device):
        judge_against_torch(lambda x: fn(FF, x), lambda x: fn(F, x), [x], dt, device, what=str(dt))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_batch_norm(device, training, layout):
    x, w, b, rm, rv = _inputs([(3, 5, 4, 6), (5,), (5,), (5,), (5,)], seed=5)
    x = _layout(x * 2 + 0.5, layout)
    rv = rv.abs() + 0.5
    for dt in _dtypes(device):
        pdt = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt  # AMP keeps BN parameters in float
        for relu in (False, True):
            def ours(x, w, b, relu=relu, pdt=pdt):
                stats = (rm.to(x.device, pdt), rv.to(x.device, pdt))
                fn = FF.batch_norm_relu if relu else FF.batch_norm
                return fn(x, *stats, w.to(pdt), b.to(pdt), training, 0.1, 1e-5)

            def ref(x, w, b, relu=relu):
                y = F.batch_norm(x, rm.to(x.dtype), rv.to(x.dtype), w.to(x.dtype), b.to(x.dtype), training, 0.1, 1e-5)
                return y.relu() if relu else y

            judge_against_torch(ours, ref, [x, w, b], dt, device, what=f"{dt} relu={relu}")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_fused_conv_epilogue(device, layout):
    x, w, sc, bi, res = _inputs([(2, 4, 6, 6), (6, 4, 3, 3), (6,), (6,), (2, 6, 6, 6)], seed=9)
    x, w, res = _layout(x, layout), _layout(w, layout), _layout(res, layout)
    for algo in ["auto"] + _conv_algos(device):
        if algo == "gemm1x1":
            continue
        for dt in _dtypes(device, double=False):
            if algo in _TENSOR_CORE_ALGOS and dt == torch.float32:
                continue
            if algo == "im2col" and dt == torch.float64:
                continue
            if algo in _TENSOR_CORE_ALGOS and fastconv.algorithms.why_not(algo, fastconv.algorithms.ConvProblem(
                    2, 4, 6, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, dt, "cuda", True, None, device != "cuda")):
                continue  # C = 4 is below the Hopper engine's 16-byte channel rows (test_sm90_engine.py)
            judge_against_torch(
                lambda x, w, sc, bi, res, algo=algo: conv2d_bias_act(x, w, sc, bi, res, padding=1, relu=True,
                                                                     algo=algo),
                lambda x, w, sc, bi, res: torch.relu(F.conv2d(x, w, None, 1, 1) * sc.view(1, -1, 1, 1)
                                                     + bi.view(1, -1, 1, 1) + res),
                [x, w, sc, bi, res], dt, device, what=f"{algo} {dt}")


def _opcheck_cases(device):
    x = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    bw = torch.rand(3, device=device) + 0.5
    ops = torch.ops.fastconv
    return [
        ("conv2d", ops.conv2d.default, (x, w, b, [1, 1], [1, 1], [1, 1], 1, "direct")),
        ("conv2d_im2col", ops.conv2d.default, (x, w, None, [2, 2], [0, 0], [1, 1], 1, "im2col")),
        ("max_pool2d", ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
        ("avg_pool2d", ops.avg_pool2d.default, (x, [2, 2], [2, 2], [0, 0], True, True, None)),
        ("adaptive_avg_pool2d", ops.adaptive_avg_pool2d.default, (x, [2, 3])),
        ("batch_norm_train", ops.batch_norm_train.default, (x, bw.requires_grad_(), None, 1e-5, False)),
        ("conv2d_fused", ops.conv2d_fused.default,
         (x, w, None, b, None, [1, 1], [1, 1], [1, 1], 1, True, "direct")),
    ]


@pytest.mark.parametrize("index", range(7))
def test_opcheck(device, index):
    name, op, args = _opcheck_cases(device)[index]
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if fastconv._ext.is_emu_device(device):
        # torch's autograd_registration check knows only CPU/CUDA/XPU ("NYI devices other than ...");
        # the registration it checks is device-independent (fastconv/autograd.py) and checked on cpu.
        utils = tuple(u for u in utils if u != "test_autograd_registration")
    torch.library.opcheck(op, args, test_utils=utils)


def pytest_generate_tests(metafunc):  # noqa: D103  (the device parameter of every test here)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICE_PARAMS)
