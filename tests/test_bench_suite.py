"""The pytest-benchmark suites in benchmarks/: the model variants they time (a baseline labelled torch
runs no fastconv layer and no fastconv op), --bench-models, and the documented smoke run."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastconv.bench import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "test_bench_models.py")


class _OpNamespaces(TorchDispatchMode):
    """Records the namespace of every op dispatched while active (aten, fastconv, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.namespace)
        return func(*args, **(kwargs or {}))


def _namespaces(model, x):
    model.eval()
    with _OpNamespaces() as rec, torch.no_grad():
        model(x)
    return rec.seen


def _suite_module():
    spec = importlib.util.spec_from_file_location("bench_models_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pytest(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name, shape", [("lenet5", (1, 32, 32)), ("resnet18", (3, 64, 64))])
def test_variants_labelled_torch_run_no_fastconv(name, shape):
    net = runner.get_model(name)  # fastconv.models builds fastconv layers
    assert runner.fastconv_layers(net)
    x = torch.randn(2, *shape)
    for variant in runner.VARIANTS:
        model = runner.build_variant(net, variant, train=False)
        if runner.VARIANT_IMPL[variant] == "torch":
            assert runner.fastconv_layers(model) == [], variant
            if variant == "eager":  # torch.compile would compile here: its module tree is checked above
                assert "fastconv" not in _namespaces(model, x), variant
        else:
            assert runner.fastconv_layers(model), variant
            assert "fastconv" in _namespaces(model, x), variant
    assert runner.fastconv_layers(net), "build_variant must not change the model it is given"
    assert runner.build_variant(net, "converted+fused", train=True) is None


def test_suite_builds_a_torch_reference_and_the_fused_variant():
    # What benchmarks/test_bench_models.py times: before the fix its "eager" was fastconv.models' network
    # (fastconv layers: fastconv against itself, max rel err 0) and converted+fused raised a TypeError.
    suite = _suite_module()
    x = torch.randn(2, 1, 32, 32)
    for variant in ("eager", "converted", "converted+fused"):
        ref, model = suite.build("lenet5", variant, "inference", torch.device("cpu"), torch.float32, "nchw")
        assert runner.fastconv_layers(ref) == [] and "fastconv" not in _namespaces(ref, x)
        if variant != "eager":
            assert "fastconv" in _namespaces(model, x)
            with torch.no_grad():
                err = (model(x) - ref(x)).abs().max().item()
            assert 0 < err < 1e-4  # different kernels: close to torch, never bit-identical


def _collected(out: str, suite: str):
    return [line for line in out.splitlines() if line.startswith(f"benchmarks/{suite}::")]


def test_bench_models_selects_the_models():
    r = _pytest("benchmarks", "--collect-only", "-q", "--benchmark-disable", "--bench-models", "lenet5,alexnet")
    assert r.returncode == 0, r.stdout + r.stderr
    models, layers = _collected(r.stdout, "test_bench_models.py"), _collected(r.stdout, "test_bench_layers.py")
    assert models and layers
    for name in ("lenet5", "alexnet"):
        for mode in ("inference", "train"):
            for variant in runner.VARIANTS:
                assert f"test_model[cpu-{name}-{mode}-fp32-nchw-{variant}]" in "\n".join(models)
    assert all(("-lenet5-" in t) or ("-alexnet-" in t) for t in models + layers)
    assert any("-alexnet-" in t for t in layers) and any("-lenet5-" in t for t in layers)

    r = _pytest("benchmarks", "--collect-only", "-q", "--benchmark-disable")  # the smoke run's default
    assert r.returncode == 0, r.stdout + r.stderr
    assert {t.split("[cpu-")[1].split("-")[0] for t in _collected(r.stdout, "test_bench_models.py")} == {"resnet18"}


def test_bench_models_rejects_an_unknown_model():
    r = _pytest("benchmarks", "--collect-only", "-q", "--benchmark-disable", "--bench-models", "resnet18,nonet")
    assert r.returncode == 4  # pytest's usage error, before collection
    assert "--bench-models: unknown model(s) nonet" in r.stderr and "vgg16" in r.stderr


def test_model_suite_smoke_run():
    # The documented smoke run, on the smallest model: every variant that applies runs and passes.
    # (torch.compile left out: where it is not skipped, compiling costs more than this whole file.)
    r = _pytest("benchmarks/test_bench_models.py", "--benchmark-disable", "-q", "-rs", "--bench-models", "lenet5",
                "--bench-layouts", "nchw", "-k", "not torch.compile")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    # inference and train: eager, converted, converted+fused (training fusion: fuse_for_training)
    assert "6 passed" in r.stdout and "failed" not in r.stdout
