"""Benchmark cases: for one layer shape and pass, the fastconv op call and the torch (cuDNN / oneDNN /
ATen) op call that computes the same thing, on the same tensors, dtype and memory layout.

Passes: conv fprop / dgrad / wgrad; pools and batch norm fprop / bprop. Both sides call the op
itself (no autograd bookkeeping): fastconv's torch.ops.fastconv.* and torch's aten ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from fastconv import algorithms
from fastconv.bench.layers import LayerSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
LAYOUTS = ("nchw", "nhwc")
CONV_PASSES = ("fprop", "dgrad", "wgrad")
OTHER_PASSES = ("fprop", "bprop")
BN_EPS = 1e-5


def passes_for(spec: LayerSpec, wanted) -> List[str]:
    allowed = CONV_PASSES if spec.kind == "conv" else OTHER_PASSES
    out = []
    for p in wanted:
        q = "bprop" if (spec.kind != "conv" and p in ("dgrad", "wgrad")) else p
        if q in allowed and q not in out:
            out.append(q)
    return out


@dataclass
class Case:
    """What to time and how to count it."""

    fastconv: Optional[Callable[[], object]]  # None when fastconv cannot run it (see `skip`)
    torch: Callable[[], object]
    algo: str                                 # the concrete fastconv algorithm ("-" for non-conv ops)
    flops: int
    bytes: int
    skip: Optional[str] = None


def _fmt(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else t.contiguous()


def conv_problem(spec: LayerSpec, batch: int, dtype: torch.dtype, device: torch.device, layout: str):
    return algorithms.ConvProblem(batch, spec.C, spec.H, spec.W, spec.K, spec.R, spec.S, spec.strides,
                                  spec.pads, (1, 1), spec.groups, dtype, device.type, layout == "nhwc")


def fastconv_algos(spec: LayerSpec, batch: int, dtype: torch.dtype, device: torch.device, layout: str,
                   wanted: List[str]) -> List[str]:
    """The concrete algorithms from `wanted` ("auto" resolved; "all" = every one that can take it)."""
    if spec.kind != "conv":
        return ["-"]
    prob = conv_problem(spec, batch, dtype, device, layout)
    names = [a for a in algorithms.available_algorithms(device) if a != "auto"] if "all" in wanted else wanted
    out: List[str] = []
    for a in names:
        if a == "auto":
            try:
                a = algorithms.heuristic(prob)
            except (TypeError, NotImplementedError):
                continue
        if algorithms.can_implement(a, prob) and a not in out:
            out.append(a)
    return out


def make_case(spec: LayerSpec, pss: str, algo: str, batch: int, dtype: torch.dtype, layout: str,
              device: torch.device) -> Case:
    """Tensors for `spec` at `batch` and the two callables for pass `pss` ('-' algo for non-conv)."""
    ops, aten = torch.ops.fastconv, torch.ops.aten
    g = torch.Generator(device="cpu").manual_seed(0)
    N, C, H, W, P, Q = batch, spec.C, spec.H, spec.W, spec.P, spec.Q
    Ko = spec.out_channels
    es = torch.empty((), dtype=dtype).element_size()

    def rnd(*shape, fmt=True):
        t = torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
        return _fmt(t, layout) if fmt and len(shape) == 4 else t

    x = rnd(N, C, H, W)
    gy = rnd(N, Ko, P, Q)
    xe, ye = N * C * H * W, N * Ko * P * Q
    if spec.kind == "conv":
        w = rnd(spec.K, C // spec.groups, spec.R, spec.S)
        st, pd, dl = list(spec.strides), list(spec.pads), [1, 1]
        flops = 2 * N * P * Q * spec.K * (C // spec.groups) * spec.R * spec.S
        we = w.numel()
        if pss == "fprop":
            def fc():
                return ops.conv2d(x, w, None, st, pd, dl, spec.groups, algo)

            def tc():
                return torch.nn.functional.conv2d(x, w, None, st, pd, dl, spec.groups)
        elif pss == "dgrad":
            def fc():
                return ops.conv2d_dgrad(gy, w, list(x.shape), st, pd, dl, spec.groups, algo)

            def tc():
                return aten.convolution_backward(gy, x, w, None, st, pd, dl, False, [0, 0], spec.groups,
                                                 [True, False, False])[0]
        else:
            def fc():
                return ops.conv2d_wgrad(gy, x, list(w.shape), st, pd, dl, spec.groups, algo)

            def tc():
                return aten.convolution_backward(gy, x, w, None, st, pd, dl, False, [0, 0], spec.groups,
                                                 [False, True, False])[1]
        # Compulsory traffic: each operand read once, the result written once.
        return Case(fc, tc, algo, flops, (xe + we + ye) * es)

    k, s, p = [spec.R, spec.S], list(spec.strides), list(spec.pads)
    if spec.kind == "maxpool":
        idx, skip = _try(lambda: ops.max_pool2d(x, k, s, p, [1, 1], spec.ceil_mode)[1])
        _, tidx = aten.max_pool2d_with_indices(x, k, s, p, [1, 1], spec.ceil_mode)
        if pss == "fprop":
            def fc():
                return ops.max_pool2d(x, k, s, p, [1, 1], spec.ceil_mode)[0]

            def tc():
                return aten.max_pool2d_with_indices(x, k, s, p, [1, 1], spec.ceil_mode)[0]
            nbytes = (xe + ye) * es + ye * 8
        else:
            def fc():
                return ops.max_pool2d_backward(gy, x, idx, k, s, p, [1, 1], spec.ceil_mode)

            def tc():
                return aten.max_pool2d_with_indices_backward(gy, x, k, s, p, [1, 1], spec.ceil_mode, tidx)
            nbytes = (xe + ye) * es + ye * 8
        return Case(None if skip else fc, tc, "-", N * C * P * Q * spec.R * spec.S, nbytes, skip)
    if spec.kind == "avgpool":
        if pss == "fprop":
            def fc():
                return ops.avg_pool2d(x, k, s, p, spec.ceil_mode, True, None)

            def tc():
                return aten.avg_pool2d(x, k, s, p, spec.ceil_mode, True, None)
        else:
            def fc():
                return ops.avg_pool2d_backward(gy, x, k, s, p, spec.ceil_mode, True, None)

            def tc():
                return aten.avg_pool2d_backward(gy, x, k, s, p, spec.ceil_mode, True, None)
        return Case(fc, tc, "-", N * C * P * Q * spec.R * spec.S, (xe + ye) * es)
    if spec.kind == "adaptive_avgpool":
        if pss == "fprop":
            def fc():
                return ops.adaptive_avg_pool2d(x, [P, Q])

            def tc():
                return aten._adaptive_avg_pool2d(x, [P, Q])
        else:
            def fc():
                return ops.adaptive_avg_pool2d_backward(gy, x)

            def tc():
                return aten._adaptive_avg_pool2d_backward(gy, x)
        return Case(fc, tc, "-", N * C * H * W, (xe + ye) * es)
    if spec.kind == "bn":
        wt, bs = rnd(C), rnd(C)
        stats, skip = _try(lambda: ops.batch_norm_train(x, wt, bs, BN_EPS, False)[1:3])
        mean, invstd = stats if stats is not None else (None, None)
        _, tmean, tinvstd = aten.native_batch_norm(x, wt, bs, None, None, True, 0.1, BN_EPS)
        if pss == "fprop":
            def fc():
                return ops.batch_norm_train(x, wt, bs, BN_EPS, False)[0]

            def tc():
                return aten.native_batch_norm(x, wt, bs, None, None, True, 0.1, BN_EPS)[0]
            nbytes = 2 * xe * es
        else:
            def fc():
                return ops.batch_norm_backward(gy, x, None, wt, mean, invstd, True, False, [True, True, True])[0]

            def tc():
                return aten.native_batch_norm_backward(gy, x, wt, None, None, tmean, tinvstd, True, BN_EPS,
                                                       [True, True, True])[0]
            nbytes = 3 * xe * es
        return Case(None if skip else fc, tc, "-", 8 * xe, nbytes, skip)
    raise ValueError(f"unknown layer kind '{spec.kind}'")


def _try(fn):
    """(fn(), None), or (None, the reason) when fastconv refuses this dtype/layout/device."""
    try:
        return fn(), None
    except (TypeError, NotImplementedError, RuntimeError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


def max_rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (in float64)."""
    a, b = ours.detach().double(), ref.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if b.numel() else 0.0
