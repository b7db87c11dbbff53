"""Per-layer benchmarks: every distinct conv / pool / BN layer of the --bench-models (default ResNet-50
and GoogLeNet; fastconv.bench.layers), each fastconv algorithm that can take it and torch (cuDNN on the GPU,
ATen/oneDNN on the CPU) in one benchmark group per (layer, pass, batch, dtype, layout); fprop,
dgrad, wgrad (pools and BN: fprop, bprop)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastconv.bench import cases
from fastconv.bench.layers import LayerSpec, model_layers

# Smoke runs (--benchmark-disable) shrink every layer to this many channels and pixels.
_SMOKE_C, _SMOKE_HW = 8, 9


def _shrink(spec: LayerSpec) -> LayerSpec:
    hw = max(min(spec.H, _SMOKE_HW), spec.R, spec.S)
    out = dataclasses.replace(spec, C=min(spec.C, _SMOKE_C), K=min(spec.K, _SMOKE_C) if spec.K else 0, H=hw, W=hw,
                              names=list(spec.names))
    if spec.kind == "adaptive_avgpool":
        out.R = out.S = hw
    return out


def _layers(config, model):
    from conftest import smoke  # noqa: E402  (benchmarks/ is on sys.path under pytest)

    layers = model_layers(model)
    if smoke(config):
        seen, picked = set(), []
        for s in layers:  # one layer of each (kind, kernel, stride): tiny sizes
            k = (s.kind, s.R, s.stride)
            if k not in seen:
                seen.add(k)
                picked.append(_shrink(s))
        return picked
    return layers


def pytest_generate_tests(metafunc):
    if "layer_case" not in metafunc.fixturenames:
        return
    from conftest import batch, bench_models, devices, dtypes

    from fastconv import algorithms
    from fastconv.bench.layers import LAYER_MODELS
    from fastconv.bench.runner import model_names

    cfg = metafunc.config
    models = bench_models(cfg, LAYER_MODELS, model_names())
    params, ids = [], []
    for dev in devices(cfg):
        algos = [a for a in algorithms.available_algorithms(dev) if a != "auto"] or ["direct", "im2col", "gemm1x1"]
        for model in models:
            for spec in _layers(cfg, model):
                for dt in dtypes(cfg, dev):
                    for layout in cfg.getoption("--bench-layouts").split(","):
                        for pss in cases.passes_for(spec, cases.CONV_PASSES):
                            for impl in (algos if spec.kind == "conv" else ["-"]) + ["torch"]:
                                if impl == "gemm1x1" and (spec.R != 1 or any(spec.pads)):
                                    continue
                                params.append((dev, model, spec, dt, layout, pss, impl, batch(cfg, dev)))
                                ids.append(f"{dev}-{model}-{spec.names[0]}-{pss}-{dt}-{layout}-{impl}")
    metafunc.parametrize("layer_case", params, ids=ids)


def test_layer(layer_case, bench_run):
    dev, model, spec, dt, layout, pss, impl, n = layer_case
    device = torch.device(dev)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    dtype = cases.DTYPES[dt]
    algo = impl
    if spec.kind == "conv" and impl != "torch":
        if impl not in cases.fastconv_algos(spec, n, dtype, device, layout, [impl]):
            pytest.skip(f"fastconv {impl} cannot take this layer on {dev} ({dt}, {layout})")
    elif impl == "-":
        algo = "-"
    case = cases.make_case(spec, pss, algo if impl != "torch" else "direct", n, dtype, layout, device)
    if impl != "torch" and case.fastconv is None:
        pytest.skip(case.skip)
    fn = case.torch if impl == "torch" else case.fastconv
    record = {"kind": "layer", "model": model, "layer": spec.names[0], "label": spec.label(), "layer_kind": spec.kind,
              "count": spec.count, "uses": spec.names, "pass": pss, "batch": n, "dtype": dt, "layout": layout,
              "device": dev, "shape": spec.as_dict(), "group": f"{model}/{spec.names[0]}/{pss}/b{n}/{dt}/{layout}",
              "impl": "torch" if impl == "torch" else "fastconv",
              "algo": ("cuDNN" if dev == "cuda" else "ATen/oneDNN") if impl == "torch" else algo,
              "flops": case.flops, "bytes": case.bytes}
    if impl != "torch":
        ref = case.torch()
        err = cases.max_rel_error(case.fastconv(), ref)
        record["max_rel_err"] = err
        tol = 1e-4 if dt in ("fp32", "fp64") else 2e-2
        assert err <= tol, f"fastconv {algo} differs from torch: max rel err {err:.2e}"
    bench_run(fn, device, record)
