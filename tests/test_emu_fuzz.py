"""Differential fuzz: fastconv on the emulated CUDA device (the CUDA binding and csrc/cuda kernels)
against torch on the CPU in float64, for fixed-seed random configurations — 200 convolutions
(every algorithm the device offers, every dtype it supports, both layouts; forward and both
gradients), 60 poolings and 40 batch norms. A failure prints the configuration, which is also the
test id, so it can be replayed alone."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from fastconv import algorithms

pytestmark = pytest.mark.skipif(not fastconv._ext.emu_available(), reason="fastconv built without the emulated device")

DEV = fastconv._ext.EMU_DEVICE
# Max error relative to the reference's magnitude: the rounding of the output format, and the FP32
# sums of up to a few hundred terms.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _conv_configs(n: int, seed: int = 2026):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        groups = rng.choice([1, 1, 1, 2, 3])
        C = groups * rng.randint(1, 6)
        K = groups * rng.randint(1, 6)
        R, S = rng.randint(1, 3), rng.randint(1, 3)
        dil = (rng.randint(1, 2), rng.randint(1, 2))
        pad = (rng.randint(0, R // 2 * dil[0]), rng.randint(0, S // 2 * dil[1]))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        H, W = rng.randint(1, 10), rng.randint(1, 10)
        if H + 2 * pad[0] < dil[0] * (R - 1) + 1 or W + 2 * pad[1] < dil[1] * (S - 1) + 1:
            continue
        dtype = rng.choice([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64])
        layout = rng.choice(["nchw", "channels_last"])
        cfg = dict(N=rng.randint(1, 3), C=C, H=H, W=W, K=K, R=R, S=S, stride=stride, padding=pad, dilation=dil,
                   groups=groups, dtype=dtype, layout=layout, bias=rng.random() < 0.5)
        out.append(cfg)
    return out


def _id(cfg) -> str:
    d = str(cfg["dtype"]).replace("torch.", "")
    return (f"N{cfg['N']}C{cfg['C']}H{cfg['H']}W{cfg['W']}K{cfg['K']}R{cfg['R']}S{cfg['S']}"
            f"s{cfg['stride'][0]}{cfg['stride'][1]}p{cfg['padding'][0]}{cfg['padding'][1]}"
            f"d{cfg['dilation'][0]}{cfg['dilation'][1]}g{cfg['groups']}-{d}-{cfg['layout']}{'-b' if cfg['bias'] else ''}")


def _fmt(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    return (a.double().cpu() - ref).abs().max().item() / scale if ref.numel() else 0.0


CONVS = _conv_configs(200)


@pytest.mark.parametrize("cfg", CONVS, ids=_id)
def test_conv_emulated_vs_torch_cpu(cfg):
    g = torch.Generator().manual_seed(hash(_id(cfg)) % (2**31))
    dtype, layout = cfg["dtype"], cfg["layout"]
    x64 = torch.randn(cfg["N"], cfg["C"], cfg["H"], cfg["W"], generator=g, dtype=torch.float64)
    w64 = torch.randn(cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"], generator=g, dtype=torch.float64)
    w64 /= (w64[0].numel()) ** 0.5
    b64 = torch.randn(cfg["K"], generator=g, dtype=torch.float64) if cfg["bias"] else None
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    # The reference sees the same rounded inputs, in float64.
    x_in, w_in = _fmt(x64.to(dtype), layout), _fmt(w64.to(dtype), layout)
    b_in = b64.to(dtype) if b64 is not None else None
    xr, wr = x_in.double().clone().requires_grad_(), w_in.double().clone().requires_grad_()
    br = b_in.double().clone().requires_grad_() if b_in is not None else None
    ref = F.conv2d(xr, wr, br, **kw)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(gy)

    probe = algorithms.ConvProblem.from_tensors(x_in.to(DEV), w_in.to(DEV), kw["stride"], kw["padding"],
                                                kw["dilation"], kw["groups"])
    algos = [a for a in algorithms.available_algorithms(DEV) if a != "auto" and algorithms.can_implement(a, probe)]
    assert algos, f"no algorithm for {_id(cfg)}"
    for algo in algos:
        xd = x_in.to(DEV).requires_grad_()
        wd = w_in.to(DEV).requires_grad_()
        bd = b_in.to(DEV).requires_grad_() if b_in is not None else None
        y = FF.conv2d(xd, wd, bd, **kw, algo=algo)
        y.backward(gy.to(dtype).to(DEV))
        tol = TOL[dtype]
        assert y.dtype == dtype and y.shape == ref.shape, algo
        assert _rel(y, ref) <= tol, f"{algo} output"
        assert _rel(xd.grad, xr.grad) <= tol * 2, f"{algo} grad input"
        assert _rel(wd.grad, wr.grad) <= tol * 4, f"{algo} grad weight"
        if bd is not None:
            assert _rel(bd.grad, br.grad) <= tol * 4, f"{algo} grad bias"


def _pool_configs(n: int, seed: int = 7):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.choice(["max", "avg", "adaptive"])
        k = (rng.randint(1, 3), rng.randint(1, 3))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (rng.randint(1, 2), rng.randint(1, 2)) if kind == "max" else (1, 1)
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        H, W = rng.randint(1, 9), rng.randint(1, 9)
        if H + 2 * p[0] < d[0] * (k[0] - 1) + 1 or W + 2 * p[1] < d[1] * (k[1] - 1) + 1:
            continue
        out.append(dict(kind=kind, shape=(rng.randint(1, 2), rng.randint(1, 5), H, W), k=k, s=s, p=p, d=d,
                        ceil=rng.random() < 0.3, cip=rng.random() < 0.5, out=(rng.randint(1, 4), rng.randint(1, 4)),
                        dtype=rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
                        layout=rng.choice(["nchw", "channels_last"])))
    return out


@pytest.mark.parametrize("cfg", _pool_configs(60), ids=lambda c: f"{c['kind']}-{c['shape']}-k{c['k']}s{c['s']}p{c['p']}"
                         f"d{c['d']}{'-ceil' if c['ceil'] else ''}-{str(c['dtype'])[6:]}-{c['layout']}")
def test_pool_emulated_vs_torch_cpu(cfg):
    g = torch.Generator().manual_seed(11)
    x = _fmt(torch.randn(cfg["shape"], generator=g, dtype=torch.float64).to(cfg["dtype"]), cfg["layout"])

    def run(mod, t):
        if cfg["kind"] == "max":
            return mod.max_pool2d(t, cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"])
        if cfg["kind"] == "avg":
            return mod.avg_pool2d(t, cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], cfg["cip"])
        return mod.adaptive_avg_pool2d(t, cfg["out"])

    xr = x.double().clone().requires_grad_()
    try:
        ref = run(F, xr)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            run(FF, x.to(DEV))
        return
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(gy)
    xd = x.to(DEV).requires_grad_()
    y = run(FF, xd)
    y.backward(gy.to(cfg["dtype"]).to(DEV))
    tol = TOL[cfg["dtype"]]
    assert _rel(y, ref) <= tol and _rel(xd.grad, xr.grad) <= 2 * tol


@pytest.mark.parametrize("seed", range(40))
def test_batch_norm_emulated_vs_torch_cpu(seed):
    rng = random.Random(seed)
    N, C, H, W = rng.randint(1, 4), rng.randint(1, 9), rng.randint(1, 7), rng.randint(1, 7)
    if N * H * W < 2:
        N = 2
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.float64])
    layout, training, affine = rng.choice(["nchw", "channels_last"]), rng.random() < 0.7, rng.random() < 0.7
    g = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = _fmt((torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype), layout)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pdt) if affine else None
    b = torch.randn(C, generator=g, dtype=torch.float64).to(pdt) if affine else None
    rm = torch.randn(C, generator=g, dtype=torch.float64).to(pdt)
    rv = torch.rand(C, generator=g, dtype=torch.float64).to(pdt) + 0.5
    xr = x.double().clone().requires_grad_()
    rm_r, rv_r = rm.double().clone(), rv.double().clone()
    ref = F.batch_norm(xr, rm_r, rv_r, w.double() if affine else None, b.double() if affine else None, training, 0.1)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(gy)
    xd = x.to(DEV).requires_grad_()
    rm_d, rv_d = rm.clone().to(DEV), rv.clone().to(DEV)
    y = FF.batch_norm(xd, rm_d, rv_d, w.to(DEV) if affine else None, b.to(DEV) if affine else None, training, 0.1)
    y.backward(gy.to(dtype).to(DEV))
    tol = TOL[dtype]
    assert _rel(y, ref) <= 2 * tol and _rel(xd.grad, xr.grad) <= 4 * tol
    assert _rel(rm_d, rm_r) <= max(tol, 1e-6) and _rel(rv_d, rv_r) <= max(tol, 1e-6)
