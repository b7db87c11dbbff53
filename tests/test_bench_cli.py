"""python -m fastconv bench / report on the CPU: outputs, columns, the stored sample, comparisons,
pytest-benchmark JSON, layer tables against published FLOP counts, and clear errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fastconv.__main__ import main
from fastconv.bench import layers, report, results, runner

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "sample_results.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True, timeout=timeout)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick"
    r = _run("bench", "--quick", "--device", "cpu", "--no-progress", "--out", str(out))
    return r, out


def test_quick_run_writes_json_markdown_pngs(quick_run):
    r, out = quick_run
    assert r.returncode == 0, r.stdout + r.stderr
    for col in ("fastconv ms", "torch ms", "speed-up", "% peak", "max rel err"):
        assert col in r.stdout
    run = results.load(str(out / "results.json"))
    assert run["schema"] == results.SCHEMA and run["env"]["device_type"] == "cpu"
    recs = [x for x in run["records"] if "stats" in x]
    groups = {x["group"] for x in recs}
    # every timed group has both sides, and fastconv agrees with torch on the same inputs
    for g in groups:
        impls = {x["impl"] for x in recs if x["group"] == g}
        assert impls == {"fastconv", "torch"}, g
    for x in recs:
        assert x["stats"]["median"] > 0 and x["stats"]["rounds"] >= 3
        if x["impl"] == "fastconv":
            assert x["max_rel_err"] < 1e-4, x["group"]
    assert {x["pass"] for x in recs} == {"fprop", "dgrad", "wgrad", "bprop"}
    md = (out / "report.md").read_text()
    assert "| layer | uses | pass | batch | algo | fastconv ms | torch ms | speed-up |" in md
    assert "### Environment" in md and "git commit" in md and "torch" in md
    for png in ("speedup.png", "roofline.png"):
        assert _is_png(out / png) and f"({png})" in md
    assert (out / "bench.log").read_text().strip().startswith("fastconv bench:")


def test_report_renders_sample(tmp_path):
    r = _run("report", SAMPLE, "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "report.md" in r.stdout
    md = (tmp_path / "report.md").read_text()
    sample = results.load(SAMPLE)
    for rec in sample["records"]:
        assert rec["label"] in md
    assert "fastconv ms" in md and "## Comparison" not in md
    assert _is_png(tmp_path / "speedup.png") and _is_png(tmp_path / "roofline.png")


def test_report_compares_runs(tmp_path):
    assert main(["report", SAMPLE, SAMPLE, "--label", "before", "--label", "after", "-o", str(tmp_path), "--no-plots"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Comparison" in md and "ms (after)" in md and "before / after" in md
    assert "1.00x" in md  # the same run against itself
    assert not list(tmp_path.glob("*.png"))


def test_report_reads_pytest_benchmark_json(tmp_path):
    # The shape pytest-benchmark writes (--benchmark-json), with the extra_info our suites attach.
    sample = results.load(SAMPLE)
    rec = next(x for x in sample["records"] if "stats" in x and x["impl"] == "fastconv")
    info = {k: v for k, v in rec.items() if k not in ("stats", "tflops", "gbps")}
    info.update(launches_per_round=4, env={"device": "test-cpu", "torch": torch.__version__})
    med = rec["stats"]["median"] * 4
    pb = {"machine_info": {"node": "n"}, "commit_info": {"id": "abc"}, "datetime": "2026-01-01", "version": "5.2.3",
          "benchmarks": [{"group": rec["group"], "name": "test_layer[x]", "extra_info": info,
                          "stats": {"median": med, "min": med, "max": med, "mean": med, "q1": med, "q3": med,
                                    "iqr": 0.0, "stddev": 0.0, "rounds": 3}}]}
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(pb))
    run = results.load(str(path))
    got = run["records"][0]
    assert got["stats"]["median"] == pytest.approx(rec["stats"]["median"])
    assert got["tflops"] == pytest.approx(rec["flops"] / rec["stats"]["median"] / 1e12)
    assert run["env"]["device"] == "test-cpu" and run["env"]["git_commit"] == "abc"
    assert main(["report", str(path), "-o", str(tmp_path / "out"), "--no-plots"]) == 0


@pytest.mark.parametrize("args, msg", [
    (["bench", "--model", "alexnet"], "invalid choice"),
    (["bench", "--batch", "0"], "positive"),
    (["bench", "--dtype", "fp8"], "invalid choice"),
    (["bench", "--device", "cuda"] if not torch.cuda.is_available() else ["bench", "--device", "tpu"], "error"),
    (["bench", "--device", "cpu", "--dtype", "fp16"], "float16 is not supported on cpu"),
    (["bench", "--passes", "sideways"], "choose from"),
    (["report", "-o", "x"], "the following arguments are required"),
    (["report", "/nonexistent/results.json", "-o", "x"], "no such file"),
    (["report", __file__, "-o", "x"], "not a JSON results file"),
])
def test_bad_arguments_fail_clearly(args, msg, tmp_path, capsys):
    extra = ["--out", str(tmp_path)] if args[0] == "bench" else []
    try:
        rc = main([*args, *extra])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc != 0
    assert msg in capsys.readouterr().err


def test_bad_argument_exit_status_from_the_shell(tmp_path):
    r = _run("bench", "--device", "cpu", "--dtype", "bf16", "--out", str(tmp_path))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_model_mode_on_a_real_model():
    # fastconv.models' ResNet-18: the torch baseline is its torch.nn twin, the fused variant folds BN.
    s = runner.Settings(mode="inference", model="resnet18", batches=[1], quick=True, rounds=2, warmup=1,
                        max_total_s=0.05)
    recs = runner.run_models(s, progress=False)
    by = {r["algo"]: r for r in recs}
    assert {"eager", "converted", "converted+fused"} <= set(by)
    assert by["eager"]["impl"] == "torch"
    for variant in ("converted", "converted+fused"):
        assert by[variant]["impl"] == "fastconv"
        assert 0 < by[variant]["max_rel_err"] < 1e-4  # different kernels: never bit-identical to torch


def test_model_mode_records(monkeypatch):
    # A small stand-in network (fastconv.models builds the real ones): eager vs converted, both modes.
    def tiny(name):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.BatchNorm2d(8),
                                   torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(8, 1000))

    monkeypatch.setattr(runner, "get_model", tiny)
    for mode in ("inference", "train"):
        s = runner.Settings(mode=mode, model="resnet18", batches=[2], quick=True, rounds=3, warmup=1, max_total_s=0.05)
        recs = runner.run_models(s, progress=False)
        by = {r["algo"]: r for r in recs}
        assert {"eager", "converted"} <= set(by)
        assert by["converted"]["impl"] == "fastconv" and by["eager"]["impl"] == "torch"
        assert by["converted"]["max_rel_err"] < 1e-4 and by["converted"]["images_per_s"] > 0
        rows = report.model_rows({"records": recs})
        assert rows and rows[0][report.MODEL_COLUMNS.index("variant")] == "eager"


@pytest.mark.parametrize("model, gmacs, rel", [
    # torchvision's published GFLOPS (multiply-adds) at 224x224; GoogLeNet: the paper's "1.5 billion"
    ("resnet18", 1.81, 0.01), ("resnet50", 4.09, 0.01), ("resnet152", 11.51, 0.01), ("googlenet", 1.5, 0.07),
])
def test_layer_tables_match_published_macs(model, gmacs, rel):
    specs = layers.model_layers(model)
    macs = sum(s.count * s.P * s.Q * s.K * (s.C // s.groups) * s.R * s.S for s in specs
               if s.kind == "conv" and not s.names[0].startswith("aux"))
    assert macs / 1e9 == pytest.approx(gmacs, rel=rel)
    n_conv = sum(s.count for s in specs if s.kind == "conv")
    assert n_conv == {"resnet18": 20, "resnet50": 53, "resnet152": 155, "googlenet": 59}[model]


def test_layer_table_shapes_chain_like_torch():
    # Each spec's output size is torch's: run the pooling and conv shapes through torch itself.
    for spec in layers.model_layers("googlenet") + layers.model_layers("resnet50"):
        x = torch.empty(1, spec.C, spec.H, spec.W, device="meta")
        if spec.kind == "conv":
            y = torch.nn.functional.conv2d(x, torch.empty(spec.K, spec.C, spec.R, spec.S, device="meta"),
                                           stride=spec.stride, padding=spec.padding)
        elif spec.kind == "maxpool":
            y = torch.nn.functional.max_pool2d(x, spec.R, spec.stride, spec.padding, ceil_mode=spec.ceil_mode)
        elif spec.kind == "avgpool":
            y = torch.nn.functional.avg_pool2d(x, spec.R, spec.stride, spec.padding, ceil_mode=spec.ceil_mode)
        elif spec.kind == "adaptive_avgpool":
            y = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        else:
            y = x
        assert tuple(y.shape[2:]) == (spec.P, spec.Q), spec.label()
