"""Per-model benchmarks: inference and one training step (forward + cross-entropy + backward + SGD)
for the models of --bench-models (default ResNet-18/50/152 and GoogLeNet; any of fastconv.models);
torch eager (the network reverted to torch.nn), fastconv (converted), fastconv fused (fuse_for_inference
for inference, fuse_for_training for the training step) and torch.compile, built by
fastconv.bench.runner.build_variant (the same variants as `python -m fastconv bench --mode
inference|train`), in one group per (model, mode, batch, dtype, layout)."""

from __future__ import annotations

import pytest
import torch

from fastconv.bench import cases, runner
from fastconv.bench.layers import input_shape

MODELS = ("resnet18", "resnet50", "resnet152", "googlenet")  # without --bench-models
SMOKE_MODELS = ("resnet18",)                                  # --benchmark-disable without --bench-models


def pytest_generate_tests(metafunc):
    if "model_case" not in metafunc.fixturenames:
        return
    from conftest import batch, bench_models, devices, dtypes, smoke

    cfg = metafunc.config
    models = bench_models(cfg, SMOKE_MODELS if smoke(cfg) else MODELS, runner.model_names())
    params, ids = [], []
    for dev in devices(cfg):
        for model in models:
            for mode in ("inference", "train"):
                for dt in dtypes(cfg, dev):
                    for layout in cfg.getoption("--bench-layouts").split(","):
                        for variant in runner.VARIANTS:
                            params.append((dev, model, mode, dt, layout, variant, batch(cfg, dev)))
                            ids.append(f"{dev}-{model}-{mode}-{dt}-{layout}-{variant}")
    metafunc.parametrize("model_case", params, ids=ids)


def build(model_name: str, variant: str, mode: str, device: torch.device, dtype: torch.dtype, layout: str):
    """(torch eager reference, the module to time) for one case; skips the case when it cannot run."""
    try:
        net = runner.get_model(model_name)
    except runner.BenchError as e:
        pytest.skip(str(e))
    net = net.to(device=device, dtype=dtype)
    if layout == "nhwc":
        net = net.to(memory_format=torch.channels_last)
    if variant == "torch.compile" and device.type == "cpu" and torch.get_num_threads() < 4:
        pytest.skip("torch.compile on a small CPU machine: compile time dominates")
    ref = runner.build_variant(net, "eager", train=False)
    try:
        model = ref if variant == "eager" else runner.build_variant(net, variant, train=mode == "train")
    except NotImplementedError as e:  # fused training before fastconv.fuse_for_training exists
        pytest.skip(str(e))
    if model is None:
        pytest.skip(f"{variant} does not apply to {mode}")
    return ref, model


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def test_model(model_case, bench_run):
    dev, model_name, mode, dt, layout, variant, n = model_case
    device = torch.device(dev)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    dtype = cases.DTYPES[dt]
    if n == 1 and mode == "train":
        n = 2  # batch norm needs more than one value per channel
    ref, model = build(model_name, variant, mode, device, dtype, layout)
    impl = runner.VARIANT_IMPL[variant]
    assert not runner.fastconv_layers(ref), "the torch eager reference must not contain fastconv layers"
    if impl == "torch":
        assert not runner.fastconv_layers(model), f"the {variant} baseline must not contain fastconv layers"
    x = torch.randn(n, *input_shape(model_name), device=device, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    ref.eval()
    model.eval()
    with torch.no_grad():
        out, want = _first(model(x)), _first(ref(x))
    err = cases.max_rel_error(out, want)
    if impl == "fastconv":
        tol = 1e-3 if dt in ("fp32", "fp64") else 5e-2
        assert err <= tol, f"{variant} {model_name} differs from torch eager: max rel err {err:.2e}"
    labels = torch.randint(0, want.shape[-1], (n,), device=device)
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def fn():
            opt.zero_grad(set_to_none=True)
            y = _first(model(x))
            torch.nn.functional.cross_entropy(y.float(), labels).backward()
            opt.step()
    else:
        def fn():
            with torch.no_grad():
                return model(x)
    record = {"kind": "model", "model": model_name, "layer": model_name, "label": f"{model_name} {mode}", "pass": mode,
              "batch": n, "dtype": dt, "layout": layout, "device": dev, "variant": variant,
              "group": f"{model_name}/{mode}/b{n}/{dt}/{layout}", "impl": impl, "algo": variant, "flops": 0,
              "bytes": 0, "max_rel_err": err}
    bench_run(fn, device, record, rounds=5)
