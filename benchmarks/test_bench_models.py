"""Per-model benchmarks: inference and one training step (forward + cross-entropy + backward + SGD)
for ResNet-18/50/152 and GoogLeNet; torch eager, fastconv (converted; converted+fused when fastconv
offers a fusion pass) and torch.compile, in one group per (model, mode, batch, dtype, layout).
Needs fastconv.models (skipped without it)."""

from __future__ import annotations

import copy

import pytest
import torch

from fastconv.bench import cases, runner

MODELS = ("resnet18", "resnet50", "resnet152", "googlenet")
VARIANTS = ("eager", "converted", "converted+fused", "torch.compile")


def pytest_generate_tests(metafunc):
    if "model_case" not in metafunc.fixturenames:
        return
    from conftest import batch, devices, dtypes, smoke

    cfg = metafunc.config
    params, ids = [], []
    for dev in devices(cfg):
        for model in (("resnet18",) if smoke(cfg) else MODELS):
            for mode in ("inference", "train"):
                for dt in dtypes(cfg, dev):
                    for layout in cfg.getoption("--bench-layouts").split(","):
                        for variant in VARIANTS:
                            params.append((dev, model, mode, dt, layout, variant, batch(cfg, dev)))
                            ids.append(f"{dev}-{model}-{mode}-{dt}-{layout}-{variant}")
    metafunc.parametrize("model_case", params, ids=ids)


def _build(model_name, variant, device, dtype, layout):
    import fastconv

    try:
        base = runner.get_model(model_name)
    except runner.BenchError as e:
        pytest.skip(str(e))
    base = base.to(device=device, dtype=dtype)
    if layout == "nhwc":
        base = base.to(memory_format=torch.channels_last)
    if variant == "eager":
        return base, base
    if variant == "converted":
        return base, fastconv.convert(base)
    if variant == "converted+fused":
        fused = runner._fused(base)
        if fused is None:
            pytest.skip("fastconv offers no BN+ReLU fusion pass yet")
        return base, fused
    if device.type == "cpu" and torch.get_num_threads() < 4:
        pytest.skip("torch.compile on a small CPU machine: compile time dominates")
    return base, torch.compile(copy.deepcopy(base))


def test_model(model_case, bench_run):
    dev, model_name, mode, dt, layout, variant, n = model_case
    device = torch.device(dev)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    dtype = cases.DTYPES[dt]
    if n == 1 and mode == "train":
        n = 2  # batch norm needs more than one value per channel
    ref, model = _build(model_name, variant, device, dtype, layout)
    x = torch.randn(n, 3, 224, 224, device=device, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (n,), device=device)
    ref.eval()
    model.eval()
    with torch.no_grad():
        out, want = model(x), ref(x)
    err = cases.max_rel_error(out[0] if isinstance(out, tuple) else out, want[0] if isinstance(want, tuple) else want)
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def fn():
            opt.zero_grad(set_to_none=True)
            y = model(x)
            y = y[0] if isinstance(y, tuple) else y
            torch.nn.functional.cross_entropy(y.float(), labels).backward()
            opt.step()
    else:
        def fn():
            with torch.no_grad():
                return model(x)
    record = {"kind": "model", "model": model_name, "layer": model_name, "label": f"{model_name} {mode}", "pass": mode,
              "batch": n, "dtype": dt, "layout": layout, "device": dev, "variant": variant,
              "group": f"{model_name}/{mode}/b{n}/{dt}/{layout}",
              "impl": "fastconv" if variant.startswith("converted") else "torch", "algo": variant, "flops": 0,
              "bytes": 0, "max_rel_err": err}
    bench_run(fn, device, record, rounds=5)
