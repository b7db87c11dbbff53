"""pytest-benchmark suites for fastconv vs torch.

    pytest benchmarks --benchmark [--benchmark-json=FILE]     time them (a full run; filters below)
    pytest benchmarks --benchmark-disable                    smoke-run them: tiny sizes, one call each
    pytest benchmarks                                        everything skipped

`--benchmark` is this conftest's option (pytest-benchmark has none by that name). Filters:
--bench-models, --bench-dtypes, --bench-layouts, --bench-devices, --bench-batch (comma lists).
--bench-models takes any model of fastconv.models (default: ResNet-50 and GoogLeNet for the layer
suite, ResNet-18/50/152 and GoogLeNet for the model suite; a smoke run: ResNet-18 models only).
The layer tables are fastconv.bench.layers (the papers' for ResNet and GoogLeNet; traced from the
built network for the rest of the zoo).
Render the JSON with `python -m fastconv report FILE -o DIR`.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    g = parser.getgroup("fastconv benchmarks")
    g.addoption("--benchmark", action="store_true", default=False, help="run the fastconv benchmark suites")
    g.addoption("--bench-models", default=None,
                help="models to time, comma-separated (default: resnet50,googlenet layers; resnet18,resnet50,resnet152,"
                     "googlenet whole models; smoke run: resnet18 whole models)")
    g.addoption("--bench-dtypes", default=None, help="fp32,fp16,bf16 (default: fp32 on the CPU, all three on the GPU)")
    g.addoption("--bench-layouts", default="nchw,nhwc", help="nchw,nhwc")
    g.addoption("--bench-devices", default=None, help="cpu,cuda (default: cuda when usable, else cpu)")
    g.addoption("--bench-batch", default=None, help="batch size (default 32 on the GPU, 8 on the CPU)")


def pytest_configure(config):
    if config.getoption("--bench-models"):  # a typo fails here, before collection, with the list of names
        from fastconv.bench.runner import model_names

        bench_models(config, (), model_names())


def _cuda_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    import fastconv

    return fastconv._ext.built_with_cuda()


def smoke(config) -> bool:
    return bool(config.getoption("--benchmark-disable", default=False))


def devices(config):
    opt = config.getoption("--bench-devices")
    if opt:
        return [d for d in opt.split(",") if d]
    return ["cuda"] if _cuda_usable() else ["cpu"]


def dtypes(config, device: str):
    opt = config.getoption("--bench-dtypes")
    if opt:
        return [d for d in opt.split(",") if d]
    if smoke(config) or device == "cpu":
        return ["fp32"]
    return ["fp32", "fp16", "bf16"]


def bench_models(config, default, known):
    """The models of --bench-models (in order), or `default` without it; a name not in `known` is a
    usage error (pytest exits with it before collecting anything)."""
    opt = config.getoption("--bench-models")
    if not opt:
        return list(default)
    names = [m.strip() for m in opt.split(",") if m.strip()]
    bad = [m for m in names if m not in known]
    if bad or not names:
        raise pytest.UsageError(f"--bench-models: unknown model(s) {', '.join(bad) or repr(opt)}; "
                                f"choose from {', '.join(known)}")
    return names


def batch(config, device: str) -> int:
    if smoke(config):
        return 1
    opt = config.getoption("--bench-batch")
    return int(opt) if opt else (32 if device == "cuda" else 8)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark") or smoke(config):
        return
    skip = pytest.mark.skip(reason="benchmarks run with `pytest benchmarks --benchmark` "
                                   "(or smoke-run with --benchmark-disable)")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _backends():
    # cuDNN picks its fastest algorithm; fp32 is true fp32 on both sides (TF32 off, stated in extra_info).
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield


@pytest.fixture(scope="session")
def bench_env():
    """A compact environment block for extra_info (device, versions, TF32 state, commit)."""
    from fastconv.bench.env import environment

    out = {}
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        env = environment(torch.device(dev))
        out[dev] = {k: env.get(k) for k in ("device", "sm_count", "capability", "cuda_driver", "torch_cuda", "cudnn",
                                            "torch", "tf32_cudnn", "tf32_matmul", "cudnn_benchmark", "git_commit",
                                            "git_dirty", "fastconv", "fastconv_built_with_cuda", "cpu_threads",
                                            "cpu_count", "load_average_1m", "device_type")
                    if env.get(k) is not None}
    return out


def run_benchmark(benchmark, fn, device: torch.device, record: dict, env: dict, rounds: int = 10) -> None:
    """Times `fn` with pytest-benchmark (pedantic: rounds of several launches and one synchronise, so
    CUDA time is measured, not launch time) and fills extra_info with the record fields; stats in
    the JSON are per round, extra_info['launches_per_round'] converts them."""
    from fastconv.bench.timing import calibrate

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    disabled = getattr(benchmark, "disabled", False)
    inner = 1 if disabled else calibrate(fn, device, warmup=3, min_round_s=5e-3)[0]

    def one_round():
        for _ in range(inner):
            fn()
        sync()

    benchmark.group = record["group"]
    benchmark.extra_info.update(record)
    benchmark.extra_info["launches_per_round"] = inner
    benchmark.extra_info["env"] = env.get(device.type, {})
    benchmark.pedantic(one_round, rounds=1 if disabled else rounds, warmup_rounds=0 if disabled else 1, iterations=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        med = stats.median / inner
        benchmark.extra_info["median_s_per_launch"] = med
        if record.get("flops"):
            benchmark.extra_info["tflops"] = record["flops"] / med / 1e12
        if record.get("bytes"):
            benchmark.extra_info["gbps"] = record["bytes"] / med / 1e9


@pytest.fixture
def bench_run(benchmark, bench_env):
    """bench_run(fn, device, record): run_benchmark with this test's benchmark fixture."""
    def run(fn, device, record, rounds: int = 10):
        run_benchmark(benchmark, fn, device, record, bench_env, rounds)
    return run
