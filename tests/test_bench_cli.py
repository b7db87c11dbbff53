"""python -m fastconv bench / report on the CPU: outputs, columns, the stored sample, comparisons,
pytest-benchmark JSON, layer tables against published FLOP counts, and clear errors; IQR beside every
time and the warnings for noisy timings and a busy machine; progress output when stderr is not a
terminal; every model of the zoo; what the plots show (inspected as matplotlib objects)."""

import io
import json
import os
import re
import statistics
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastconv.__main__ import main
from fastconv.bench import cases, env, layers, plots, report, results, runner, timing

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
    r = _run("bench", "--quick", "--device", "cpu", "--out", str(out))  # stderr is a pipe: not a terminal
    return r, out


def _table(stdout: str):
    """The rows of the text table `bench` prints, as {column: cell} dicts."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("layer ") or line.startswith("model "))
    cols = re.split(r"\s{2,}", lines[head].strip())
    rows = []
    for line in lines[head + 2:]:
        if not line.strip() or line.startswith(("times:", "warning:", "roofs:")):
            break
        rows.append(dict(zip(cols, re.split(r"\s{2,}", line.strip()))))
    return rows


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
    assert ("| layer | uses | pass | batch | algo | fastconv ms | fastconv IQR | torch ms | torch IQR | speed-up |"
            in md)
    assert "### Environment" in md and "git commit" in md and "torch" in md
    for png in ("speedup.png", "roofline.png"):
        assert _is_png(out / png) and f"({png})" in md
    assert (out / "bench.log").read_text().strip().startswith("fastconv bench:")


def test_quick_run_reports_iqr_beside_every_time(quick_run):
    r, out = quick_run
    run = results.load(str(out / "results.json"))
    for x in run["records"]:
        if "stats" in x:
            st = x["stats"]
            assert st["iqr"] == pytest.approx(st["q3"] - st["q1"]) and st["q1"] <= st["median"] <= st["q3"]
    by = {(x["label"], x["pass"], x["impl"], x["algo"] if x["impl"] == "fastconv" else "torch"): x
          for x in run["records"] if "stats" in x}
    rows = _table(r.stdout)
    assert rows and {"fastconv IQR", "torch IQR"} <= set(rows[0])
    noisy = 0
    for row in rows:
        for impl, algo in (("fastconv", row["algo"]), ("torch", "torch")):
            rec = by[(row["layer"], row["pass"], impl, algo)]
            iqr = rec["stats"]["q3"] - rec["stats"]["q1"]
            assert row[f"{impl} ms"] == report._ms(rec["stats"]["median"])
            assert row[f"{impl} IQR"].split()[0] == report._ms(iqr)
            marked = row[f"{impl} IQR"].endswith(report.NOISY_MARK)
            assert marked == (iqr / rec["stats"]["median"] > timing.NOISY_IQR)
            noisy += marked
    md = (out / "report.md").read_text()
    assert run["warnings"] == report.trust_warnings(run)
    if noisy:
        assert f"{noisy} of " in run["warnings"][0]
        assert f"warning: {noisy} of " in r.stdout and f"> **Warning:** {noisy} of " in md
    else:
        assert "times are noisy" not in r.stdout + md


def test_quick_run_progress_is_not_a_redrawn_bar_when_stderr_is_not_a_terminal(quick_run):
    r, _ = quick_run
    assert "\r" not in r.stderr and "it/s" not in r.stderr
    progress = [line for line in r.stderr.splitlines() if line.startswith("layers resnet50: ")]
    n = len(layers.quick_layers("resnet50"))
    jobs = sum(len(cases.passes_for(spec, cases.CONV_PASSES)) for spec in layers.quick_layers("resnet50"))
    assert 1 <= len(progress) <= runner._Lines.STEPS and n
    assert progress[-1].startswith(f"layers resnet50: {jobs}/{jobs} done")


def test_progress_bar_on_a_terminal_lines_otherwise_nothing_when_disabled():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, enabled in ((io.StringIO(), True), (Terminal(), True), (Terminal(), False)):
        bar = runner._progress(40, "layers x", enabled, stream=stream)
        for i in range(40):
            bar.set_postfix_str(f"job {i}")
            bar.update(1)
        bar.close()
        text = stream.getvalue()
        if not enabled:
            assert text == ""
        elif stream.isatty():
            assert "\r" in text  # a bar that redraws itself
        else:  # a line per quarter of the jobs
            assert "\r" not in text
            assert [line.split(" done")[0] for line in text.splitlines()] == [f"layers x: {k}/40" for k in (10, 20, 30, 40)]
            assert text.splitlines()[-1].endswith("last: job 39)")


def test_iqr_of_known_samples():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 100.0]  # one outlier: the median and IQR stay put
    st = timing.stats_from_samples(samples, inner=1, timer="test")
    q1, q3 = np.percentile(samples, [25, 75])  # numpy's default (linear) is the 'inclusive' method
    assert (q1, q3) == pytest.approx((2.25, 4.75))
    assert (st.q1, st.median, st.q3) == pytest.approx((2.25, 3.5, 4.75))
    assert st.iqr == pytest.approx(2.5) and st.as_dict()["iqr"] == pytest.approx(2.5)
    assert (st.min, st.max, st.rounds) == (1.0, 100.0, 6)
    assert timing.relative_iqr(st.as_dict()) == pytest.approx(2.5 / 3.5)
    assert timing.relative_iqr({"median": 2.0, "q1": 1.9, "q3": 2.1}) == pytest.approx(0.1)  # pytest-benchmark: no iqr
    assert timing.is_noisy(st.as_dict()) and not timing.is_noisy({"median": 2.0, "iqr": 0.2})
    assert timing.relative_iqr(None) is None and not timing.is_noisy({})
    one = timing.stats_from_samples([7.0], 1, "test")
    assert one.iqr == 0 and one.median == 7.0
    assert statistics.median(samples) == st.median


def _layer_rec(group, impl, algo, median, iqr, label="conv 3x3 8->8 @9", pss="fprop"):
    return {"kind": "layer", "model": "m", "layer": group, "label": label, "layer_kind": "conv", "count": 1,
            "pass": pss, "batch": 1, "dtype": "fp32", "layout": "nchw", "device": "cpu", "group": group,
            "impl": impl, "algo": algo, "flops": 2_000_000, "bytes": 40_000,
            "stats": {"median": median, "q1": median - iqr / 2, "q3": median + iqr / 2, "iqr": iqr, "rounds": 5}}


def test_noisy_times_are_marked_and_warned_in_table_and_report(tmp_path):
    recs = [_layer_rec("a", "fastconv", "direct", 1e-3, 0.5e-3), _layer_rec("a", "torch", "ATen/oneDNN", 2e-3, 1e-5),
            _layer_rec("b", "fastconv", "direct", 1e-3, 1e-5, label="conv 1x1 8->8 @9"),
            _layer_rec("b", "torch", "ATen/oneDNN", 1e-3, 1e-5, label="conv 1x1 8->8 @9")]
    run = {"schema": results.SCHEMA, "env": {"device": "test-cpu", "device_type": "cpu"}, "roofs": None,
           "settings": {"mode": "layers", "model": "m"}, "records": recs}
    rows = report.layer_rows(run)
    col = report.COLUMNS.index
    assert rows[0][col("fastconv IQR")] == "0.500 !" and rows[0][col("torch IQR")] == "0.010"
    assert rows[1][col("fastconv IQR")] == "0.010"
    warnings = report.trust_warnings(run)
    assert len(warnings) == 1 and warnings[0].startswith("1 of 4 times are noisy")
    assert "IQR 50% of the median" in warnings[0] and "conv 3x3 8->8 @9 fprop fastconv:direct" in warnings[0]
    report.write_report([run], str(tmp_path), make_plots=False)
    md = (tmp_path / "report.md").read_text()
    assert f"> **Warning:** {warnings[0]}" in md and "| 0.500 ! |" in md
    for r in recs:
        r["stats"]["iqr"] = r["stats"]["median"] * 0.01
    assert report.trust_warnings(run) == []


@pytest.mark.parametrize("e, warns", [
    ({"cpu_count": 2, "cpu_threads": 2, "load_average_1m": 0.3}, False),           # idle 2-core machine
    ({"cpu_count": 2, "cpu_threads": 2, "load_average_1m": 3.0}, True),            # 4 engineers on it
    ({"cpu_count": 2, "cpu_threads": 2, "load_average_1m": 0.2, "load_average_1m_end": 5.5}, True),  # busy later
    ({"cpu_count": 2, "cpu_threads": 2, "load_average_1m": 0.2, "load_average_1m_end": 2.2}, False),  # our own load
    ({"cpu_count": 16, "cpu_threads": 16, "load_average_1m": 3.0, "device_type": "cuda"}, False),   # GPU: 1 thread
    ({"cpu_count": 16, "load_average_1m": 20.0, "device_type": "cuda"}, True),
    ({"load_average_1m": 9.0}, False),                                              # no CPU count: unknown
])
def test_load_average_warning(e, warns):
    w = env.load_warning(e)
    assert (w is not None) == warns
    if warns:
        assert f"on {e['cpu_count']} CPUs" in w
        run = {"env": e, "records": []}
        assert any("shared the CPU" in x for x in report.trust_warnings(run))


def test_environment_records_cpu_count_and_load():
    e = env.environment(torch.device("cpu"))
    assert e["cpu_count"] == os.cpu_count() and e["load_average_1m"] == pytest.approx(os.getloadavg()[0], abs=5)


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
    # the heading names the run (file name, device type, commit) and the device, never "## ? <commit>"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "\n## pytest-benchmark pb cpu abc on test-cpu\n" in md and "## ?" not in md
    assert main(["report", str(path), "-o", str(tmp_path / "lab"), "--no-plots", "--label", "nightly"]) == 0
    assert "\n## nightly on test-cpu\n" in (tmp_path / "lab" / "report.md").read_text()


@pytest.mark.parametrize("args, msg", [
    (["bench", "--model", "nonet"], "invalid choice"),
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


def test_inference_quick_run_reports_the_four_variants_side_by_side(tmp_path, capsys):
    # fastconv.models' ResNet-18 through the CLI: torch eager (its torch.nn twin), fastconv (converted),
    # fastconv fused and torch.compile, on the same input; --quick skips compile and says why.
    assert main(["bench", "--mode", "inference", "--model", "resnet18", "--quick", "--device", "cpu", "--no-progress",
                 "--no-plots", "--rounds", "3", "--max-time", "0.05", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    labels = [cell.strip() for line in table.splitlines() if line.startswith("resnet18 ")
              for cell in [re.split(r"\s{2,}", line)[3]]]
    assert labels == ["torch eager", "fastconv", "fastconv fused", "torch.compile"]
    recs = {r["algo"]: r for r in results.load(str(tmp_path / "results.json"))["records"]}
    assert list(recs) == list(results.VARIANTS) and recs["eager"]["impl"] == "torch"
    assert {r["batch"] for r in recs.values()} == {1} and {r["dtype"] for r in recs.values()} == {"fp32"}
    for variant in ("converted", "fused"):
        assert recs[variant]["impl"] == "fastconv"
        assert 0 < recs[variant]["max_rel_err"] < 1e-4  # different kernels: never bit-identical to torch
    fusion = recs["fused"]["fusion"]
    assert fusion["fuse"] == "fuse_for_inference"
    if "counts" in fusion:  # fastconv.fuse.FusionSummary: every one of ResNet-18's 20 convs is fused
        assert sum(fusion["counts"].values()) == 20 and fusion["left_unfused"] == 0
    assert recs["torch.compile"]["skipped"].startswith("--quick skips it") and "stats" not in recs["torch.compile"]


def test_fused_variant_is_built_in_one_place():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU()).eval()
    fused = runner.build_variant(net, "fused", train=False)
    from fastconv import modules as fm

    assert type(fused.get_submodule("1")) not in (torch.nn.BatchNorm2d, fm.BatchNorm2d)  # no BN of its own
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-5)
    assert type(runner.build_variant(net, "converted+fused", train=False)) is type(fused)  # the old name:
    assert runner.build_variant(net, "converted+fused", train=True) is None                 # inference only
    import fastconv

    if hasattr(fastconv, "fuse_for_training"):
        assert runner.build_variant(net, "fused", train=True) is not None
    else:
        with pytest.raises(NotImplementedError, match="fuse_for_training"):
            runner.build_variant(net, "fused", train=True)
    with pytest.raises(ValueError, match="unknown variant"):
        runner.build_variant(net, "nope", train=False)
    assert results.variant_name("fused") == "fastconv fused" and results.variant_name("eager") == "torch eager"


def test_compile_skip_is_a_record_with_its_reason(monkeypatch):
    monkeypatch.setattr(runner, "compile_unavailable", lambda device: "torch.compile unavailable: no C++ compiler")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    net(torch.randn(1, 3, 224, 224))
    monkeypatch.setattr(runner, "get_model", lambda name: net)
    s = runner.Settings(mode="inference", model="resnet18", batches=[1], rounds=3, warmup=1, max_total_s=0.02)
    recs = {r["algo"]: r for r in runner.run_models(s, progress=False)}
    assert recs["torch.compile"]["skipped"] == "torch.compile unavailable: no C++ compiler"
    rows = report.model_rows({"records": list(recs.values())})
    assert rows[-1][report.MODEL_COLUMNS.index("variant")] == "torch.compile" and rows[-1][4] == "skipped"


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
        assert rows and rows[0][report.MODEL_COLUMNS.index("variant")] == "torch eager"


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


# ---- the whole zoo -----------------------------------------------------------------------------------
def test_model_accepts_every_model_of_the_zoo():
    import argparse

    from fastconv.bench.cli import add_parsers
    from fastconv.models import list_models

    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(dest="command"))
    for name in list_models():
        assert p.parse_args(["bench", "--model", name]).model == name
    assert set(runner.model_names()) == set(list_models()) | set(layers.MODELS)


@pytest.mark.parametrize("mode", ["inference", "layers"])
def test_bench_runs_a_zoo_model_without_a_paper_table(mode, tmp_path, capsys):
    # LeNet-5 takes 1x32x32 inputs and has 10 classes: the run must use the model's own input and labels.
    assert main(["bench", "--model", "lenet5", "--mode", mode, "--quick", "--device", "cpu", "--no-progress",
                 "--no-plots", "--rounds", "3", "--max-time", "0.05", "--out", str(tmp_path)]) == 0
    run = results.load(str(tmp_path / "results.json"))
    recs = [r for r in run["records"] if "stats" in r]
    assert recs and all(r["model"] == "lenet5" for r in recs)
    if mode == "inference":
        assert [r["algo"] for r in recs] == ["eager", "converted", "fused"]
        assert "torch eager" in capsys.readouterr().out
    else:
        assert {r["layer"] for r in recs} >= {"features.0", "features.2"}  # conv 5x5 1->6 @32, its avg pool
        assert all(r["max_rel_err"] < 1e-4 for r in recs if r["impl"] == "fastconv")


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_traced_layer_table_equals_the_paper_table(model):
    # The same distinct shapes and use counts, whether derived from the paper or traced from fastconv.models.
    from fastconv.models import get_model

    with torch.device("meta"):
        net = get_model(model)
    traced = {s.key(): s.count for s in layers.traced_layers(net, (3, 224, 224))}
    assert traced == {s.key(): s.count for s in layers.model_layers(model)}


def test_traced_rectangular_layers_run_against_torch():
    # Inception-v3's 1x7 and 7x1 convs carry (height, width) padding through the benchmark cases.
    specs = [s for s in layers.model_layers("inception_v3") if s.kind == "conv" and s.R != s.S]
    assert specs and any(s.pads == (0, 3) for s in specs) and any(s.pads == (3, 0) for s in specs)
    assert all((s.P, s.Q) == (s.H, s.W) for s in specs)  # "same" padding on a 17x17 map
    spec = next(s for s in specs if s.pads == (0, 3))
    small = layers.LayerSpec("conv", 8, spec.H, spec.W, 8, spec.R, spec.S, spec.stride, spec.padding)
    for pss in cases.CONV_PASSES:
        case = cases.make_case(small, pss, "direct", 1, torch.float32, "nchw", torch.device("cpu"))
        assert cases.max_rel_error(case.fastconv(), case.torch()) < 1e-5
    assert layers.model_layers("alexnet")[-1].label() == "adaptive_avgpool 256 @6->6"


# ---- plots, as matplotlib objects --------------------------------------------------------------------
@pytest.fixture(scope="module")
def plt():
    return pytest.importorskip("matplotlib.pyplot") and plots._pyplot()


def _inside(inner, outer):
    return (inner.x0 >= outer.x0 - 0.5 and inner.y0 >= outer.y0 - 0.5 and inner.x1 <= outer.x1 + 0.5
            and inner.y1 <= outer.y1 + 0.5)


def _texts(fig):
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontsize"))
            if t.get_text().strip() and t.get_visible()]


def test_roofline_labels_points_explains_roofs_legend_inside(plt):
    run = results.load(SAMPLE)
    fig = plots.roofline_figure(plt, [run], ["sample"])
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = ax.get_legend()
    assert leg is not None and _inside(leg.get_window_extent(), ax.get_window_extent())
    entries = [t.get_text() for t in leg.get_texts()]
    assert {"fastconv", "torch", "fprop", "dgrad", "wgrad", "bprop"} <= set(entries)
    roofs = run["roofs"]
    assert f"roof (measured): {roofs['peak_tflops']:.3g} TFLOP/s, {roofs['peak_gbps']:.4g} GB/s" in entries
    # every layer of the run is labelled at one of its points, and no two labels overlap
    anns = [c for c in ax.get_children() if type(c).__name__ == "Annotation"]
    names = {a.get_text() for a in anns}
    assert {r["layer"] for r in run["records"] if r.get("kind") == "layer"} <= names
    assert f"{roofs['peak_tflops']:.3g} TFLOP/s" in names and f"{roofs['peak_gbps']:.4g} GB/s" in names
    boxes = [a.get_window_extent() for a in anns]
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    # the caption says where each roof comes from
    cap = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "ridge" in cap and roofs["source"] in cap and "min(compute peak, bandwidth x intensity)" in cap
    plt.close(fig)


def test_roofline_with_a_datasheet_roof_draws_and_names_the_measured_one(plt):
    run = results.load(SAMPLE)
    run["roofs"] = {"peak_tflops": 67.0, "peak_gbps": 4800.0, "source": "NVIDIA H200 SXM datasheet (dense), fp32",
                    "measured": {"tflops": 50.0, "gbps": 4000.0, "source": "measured: torch.mm 4096x4096 float32"}}
    fig = plots.roofline_figure(plt, [run], ["gpu"])
    fig.canvas.draw()
    ax = fig.axes[0]
    entries = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "roof (datasheet): 67 TFLOP/s, 4800 GB/s" in entries and "roof (measured): 50 TFLOP/s, 4000 GB/s" in entries
    assert _inside(ax.get_legend().get_window_extent(), ax.get_window_extent())
    cap = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "NVIDIA H200 SXM datasheet" in cap and "Dotted roof: measured on this device" in cap
    plt.close(fig)


def _model_run(batches):
    recs = []
    for b in batches:
        for algo, impl, sec in (("eager", "torch", 0.02), ("converted", "fastconv", 0.03)):
            recs.append({"kind": "model", "model": "resnet18", "layer": "resnet18", "label": "resnet18 inference",
                         "pass": "inference", "batch": b, "dtype": "fp32", "layout": "nchw", "device": "cpu",
                         "group": f"g{b}", "impl": impl, "algo": algo, "variant": algo,
                         "stats": {"median": sec * b, "iqr": 0.0}})
    return {"records": recs, "env": {}, "settings": {}}


def test_throughput_is_a_bar_chart_from_zero_for_one_batch(plt):
    fig = plots.throughput_figure(plt, [_model_run([4])], ["x"])
    ax = fig.axes[0]
    bars = [p for p in ax.patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 2 and [b.get_height() for b in bars] == pytest.approx([50.0, 1 / 0.03])
    assert ax.get_ylim()[0] == 0
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert any("torch eager" in t for t in ticks) and any("fastconv" in t for t in ticks)
    plt.close(fig)
    fig = plots.throughput_figure(plt, [_model_run([1, 8, 32])], ["x"])  # several batches: lines, still from 0
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2 and ax.get_ylim()[0] == 0
    assert any("torch eager" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def test_comparison_plots_readable_at_their_size(plt, tmp_path):
    sample = results.load(SAMPLE)
    runs = [sample, json.loads(json.dumps(sample)), json.loads(json.dumps(sample))]
    written, _ = plots.make_plots(runs, ["a", "b", "c"], str(tmp_path))
    for fig_fn in (plots.speedup_figure, plots.roofline_figure):
        fig = fig_fn(plt, runs, ["a", "b", "c"])
        fig.canvas.draw()
        assert min(t.get_fontsize() for t in _texts(fig)) >= plots.MIN_FONT
        ax = fig.axes[0]
        assert _inside(ax.get_legend().get_window_extent(), fig.bbox)
        if fig_fn is plots.speedup_figure:  # one row per layer and pass: their labels never overlap
            boxes = [t.get_window_extent() for t in ax.get_yticklabels() if t.get_text()]
            assert len(boxes) == len(plots.best_speedups(sample))
            assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
            assert all(_inside(b, fig.bbox) for b in boxes)  # long labels are not cut off
        w, h = fig.get_size_inches()
        assert _png_size(written[plots.TITLES[{plots.speedup_figure: plots.SPEEDUP,
                                               plots.roofline_figure: plots.ROOFLINE}[fig_fn]]]) == \
            (round(w * plots.DPI), round(h * plots.DPI))
        plt.close(fig)


# ---- bytes and roofline predictions (fastconv/bench/bytes.py, issue 15 item 5) --------------------------
def _tiny_conv_bn_relu():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU())


def test_bytes_of_one_conv_bn_relu_by_hand():
    from fastconv.bench import bytes as B

    nodes = B.trace(_tiny_conv_bn_relu(), batch=2, input_shape=(3, 8, 8))
    # fp16 activations and weights, float32 BN vectors: x = 2*3*8*8*2 = 768 B, y = 2*4*8*8*2 = 1024 B
    # (conv, BN and ReLU outputs alike), w = 4*3*3*3*2 = 216 B, one BN vector = 4*4 = 16 B.
    x, y, w, v = 768, 1024, 216, 16
    flops = 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)

    def total(fused, train):
        ks = B.count_kernels(nodes, "fp16", fused=fused, train=train)
        return sum(k.bytes for k in ks), len(ks), sum(k.flops for k in ks)

    # inference, unfused: conv (x, w -> y), BN apply (y + mean, var, gamma, beta -> y), ReLU (y -> y)
    assert total(False, False) == ((x + w + y) + (y + 4 * v + y) + (y + y), 3, flops)
    # inference, fused: one conv2d_fused kernel reading x, w and the four BN vectors, writing y
    assert total(True, False) == (x + w + 4 * v + y, 1, flops)
    # training, unfused. forward: conv; BN stats (y + running mean/var -> mean, var, running mean/var);
    # BN apply; ReLU. backward: ReLU (dy, out -> dz); BN reduce (dz, y, mean/invstd -> 2 sums); BN dx
    # (dz, y + 6 vectors -> dx); no dgrad into the image; wgrad (dy, x -> dw).
    unfused = ((x + w + y) + (y + 2 * v + 4 * v) + (y + 4 * v + y) + (y + y)
               + (2 * y + y) + (2 * y + 2 * v + 2 * v) + (2 * y + 6 * v + y) + (y + x + w))
    assert total(False, True) == (unfused, 8, 2 * flops)
    # training, fused: conv + statistics epilogue (writes y and one partial (sum, sumsq) per 128 output
    # rows: 2*8*8 = 128 rows -> 1 tile -> 2*4 floats = 2 v); finalize (partials + running -> mean,
    # invstd, running); apply+ReLU; BN backward reduce and dx (dy and conv_out; the ReLU mask is
    # recomputed from conv_out, no residual); wgrad.
    fused = ((x + w + y + 2 * v) + (2 * v + 2 * v + 4 * v) + (y + 4 * v + y)
             + (2 * y + 4 * v + 2 * v) + (2 * y + 6 * v + y) + (y + x + w))
    assert total(True, True) == (fused, 6, 2 * flops)
    assert B.elem_size("bf16") == B.elem_size("fp16") == 2


def test_bytes_fused_below_unfused_for_resnet50():
    from fastconv.bench import bytes as B

    rows = {(r["pass_"], r["fused"]): r for r in B.predict("resnet50", batch=256, dtype="fp16")}
    for p in ("inference", "train step"):
        assert rows[(p, True)]["bytes"] < rows[(p, False)]["bytes"]
        assert rows[(p, True)]["t_roofline_s"] < rows[(p, False)]["t_roofline_s"]
    # conv + fc FLOPs: 2 * 4.089 G multiply-adds per image (the profile's count), x3 for a training step
    # less the first conv's dgrad (no gradient into the image)
    assert rows[("inference", False)]["flops"] == pytest.approx(2 * 4.089e9 * 256, rel=1e-3)
    conv1 = 2 * 256 * 64 * 112 * 112 * 3 * 7 * 7
    assert rows[("train step", True)]["flops"] == 3 * rows[("inference", True)]["flops"] - conv1
    groups = B.fusion_groups(B.trace("resnet50", batch=1))
    assert len(groups) == 53 and sum(g.residual is not None for g in groups.values()) == 16
    assert sum(g.relu is not None for g in groups.values()) == 49  # every conv but the 4 projection shortcuts
    ks = B.count_kernels(B.trace("resnet50", batch=1), "bf16", fused=True)
    assert len(ks) == 53 + 3  # one kernel per conv, then max pool, average pool, fc


def test_bench_bytes_cli(tmp_path, capsys):
    assert main(["bench", "--bytes", "resnet18", "--batch", "8", "--dtype", "bf16", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "predictions, not measurements" in out and "fused" in out and "unfused" in out
    rows = json.loads((tmp_path / "bytes.json").read_text())
    assert [(r["pass_"], r["fused"]) for r in rows] == [("inference", False), ("inference", True),
                                                       ("train step", False), ("train step", True)]
    assert all(r["batch"] == 8 and r["dtype"] == "bf16" for r in rows)
