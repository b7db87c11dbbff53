"""`python -m fastconv bench` and `python -m fastconv report`.

    python -m fastconv bench [--model resnet50 (any of fastconv.models)] [--batch 32] [--dtype fp16] [--layout nhwc]
                             [--mode inference|train|layers] [--device auto] [--quick] [--out DIR]
    python -m fastconv bench --bytes resnet50 --batch 256 --dtype fp16   (predicted bytes and roofline, no timing)
    python -m fastconv report RESULTS.json [more.json ...] -o DIR

bench writes DIR/results.json (schema: fastconv.bench.results), DIR/report.md, DIR/bench.log (what
it printed) and PNG plots; report renders the same report from saved results (ours or pytest-benchmark
JSON), comparing runs when given several.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import List, Optional

import torch

from fastconv.bench import cases

MODES = ("layers", "inference", "train")


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def _batches(text: str) -> List[int]:
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or a comma list of them, got '{text}'") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got '{text}'")
    return out


def _list(choices):
    def parse(text: str) -> List[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got '{text}'")
        return items
    return parse


def add_parsers(sub) -> None:
    b = sub.add_parser("bench", help="benchmark fastconv against torch; writes results.json, report.md, plots",
                       description="Benchmark fastconv's kernels against torch (cuDNN on the GPU, ATen/oneDNN on "
                                   "the CPU): every distinct layer of a model, or whole-model inference / training.")
    from fastconv.bench.runner import model_names

    b.add_argument("--model", default="resnet50", choices=model_names(), metavar="MODEL",
                   help="any model of fastconv.models (default resnet50): " + ", ".join(model_names()) +
                        ". --mode layers: the papers' layer tables for ResNet-18/50/152 and GoogLeNet, the layers "
                        "traced from the built network for the others")
    b.add_argument("--batch", type=_batches, default=None,
                   help="batch size, or a comma list (default: 32 on a GPU, 8 on the CPU; --quick: 8 / 1)")
    b.add_argument("--dtype", default="fp32", choices=sorted(cases.DTYPES), help="default fp32")
    b.add_argument("--layout", default="nchw", choices=cases.LAYOUTS, help="memory layout (default nchw)")
    b.add_argument("--mode", default="layers", choices=MODES, help="per-layer ops, or a whole model (default layers)")
    b.add_argument("--device", default="auto", help="auto (the GPU when present), cpu, cuda or cuda:N")
    b.add_argument("--quick", action="store_true", help="a few layers, small batch, short timing (< 1 min on 2 cores)")
    b.add_argument("--out", default=None, help="output folder (default bench-results)")
    b.add_argument("--algos", type=_list(("all", "auto", "direct", "im2col", "gemm1x1", "implicit_gemm",
                                                 "implicit_gemm_sm90", "implicit_gemm_sm90_128x128",
                                                 "implicit_gemm_sm90_128x64", "implicit_gemm_sm90_64x64",
                                                 "implicit_gemm_sm90_splitk")), default=None,
                   help="fastconv algorithms for convs: all (default), auto, or names (comma-separated)")
    b.add_argument("--passes", type=_list(cases.CONV_PASSES + ("bprop",)), default=None,
                   help="fprop,dgrad,wgrad (default all; pools and BN map dgrad/wgrad to bprop)")
    b.add_argument("--tf32", action="store_true",
                   help="allow TF32 for fp32 on the GPU, for cuDNN and fastconv alike (fastconv.backends."
                        "allow_tf32; off by default so both sides compute in true fp32)")
    b.add_argument("--no-compile", action="store_true", help="model modes: skip the torch.compile variant")
    b.add_argument("--bytes", default=None, choices=model_names(), metavar="MODEL",
                   help="time nothing: print the predicted device-memory bytes and H200 roofline time of one "
                        "inference forward and one training step of MODEL, unfused vs fused (fastconv/bench/"
                        "bytes.py; --batch, default 256, and --dtype apply); with --out also writes bytes.json")
    b.add_argument("--no-plots", action="store_true", help="write no PNGs")
    b.add_argument("--no-progress", action="store_true",
                   help="no progress report (when stderr is not a terminal it is a line per quarter of the run, "
                        "not a bar)")
    b.add_argument("--rounds", type=int, default=None, help="timed rounds per measurement (default 10; --quick 5)")
    b.add_argument("--max-time", type=float, default=None,
                   help="seconds per measurement at most (default 2; --quick 0.25), never fewer than 3 rounds")
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("report", help="render report.md and plots from saved results (and compare runs)",
                       description="Render the benchmark report from saved results: results.json files from "
                                   "`python -m fastconv bench` and/or pytest-benchmark JSON from `pytest benchmarks "
                                   "--benchmark --benchmark-json=FILE`. Several files: a comparison against the first.")
    r.add_argument("results", nargs="+", help="results JSON files")
    r.add_argument("-o", "--out", required=True, help="output folder")
    r.add_argument("--label", action="append", default=None, help="a name per results file (repeat), in order")
    r.add_argument("--no-plots", action="store_true", help="write no PNGs")
    r.set_defaults(fn=cmd_report)


def _fail(cmd: str, msg: str) -> int:
    print(f"python -m fastconv {cmd}: error: {msg}", file=sys.stderr)
    return 2


def resolve_device(text: str) -> torch.device:
    from fastconv.bench.runner import BenchError

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise BenchError(f"--device: '{text}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device: fastconv has kernels for cpu and cuda only, got '{text}'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA GPU is visible to torch here")
    return dev


def settings_from_args(args: argparse.Namespace):
    import fastconv
    from fastconv.bench.runner import BenchError, Settings

    dev = resolve_device(args.device)
    if dev.type == "cuda" and not fastconv._ext.built_with_cuda():
        raise BenchError("--device cuda: fastconv was built without CUDA kernels (see `python -m fastconv info`)")
    dtype = cases.DTYPES[args.dtype]
    from fastconv import algorithms

    probe = algorithms.ConvProblem(1, 8, 8, 8, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1, dtype, dev.type)
    why = algorithms.why_not("direct", probe)
    if why is not None:
        raise BenchError(f"--dtype {args.dtype} on {dev}: {why}")
    quick = args.quick
    default_batch = {"cuda": [8] if quick else [32], "cpu": [1] if quick else [8]}[dev.type]
    batches = args.batch or default_batch
    s = Settings(mode=args.mode, model=args.model, batches=batches, dtype=args.dtype, layout=args.layout, device=dev,
                 quick=quick, tf32=args.tf32, compile=not args.no_compile)
    s.algos = args.algos or (["auto"] if quick else ["all"])
    s.passes = args.passes or list(cases.CONV_PASSES)
    s.rounds = args.rounds or (5 if quick else 10)
    s.max_total_s = args.max_time or (0.25 if quick else 2.0)
    s.warmup = 1 if quick else 3
    if s.rounds <= 0 or s.max_total_s <= 0:
        raise BenchError("--rounds and --max-time must be positive")
    return s


def cmd_bench(args: argparse.Namespace) -> int:
    from fastconv.bench import env as envmod
    from fastconv.bench import report, results, runner

    t0 = time.perf_counter()
    if args.bytes:
        return cmd_bytes(args)
    args.out = args.out or "bench-results"
    try:
        s = settings_from_args(args)
        if s.mode != "layers":
            runner.get_model(s.model)  # fail before any timing when the model builders are missing
    except runner.BenchError as e:
        return _fail("bench", str(e))
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "bench.log")
    with open(log_path, "w") as logf:
        out = _Tee(sys.stdout, logf)
        if s.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = s.tf32
            torch.backends.cuda.matmul.allow_tf32 = s.tf32
        env = envmod.environment(s.device)
        print(f"fastconv bench: {s.mode} {s.model} on {env['device']} ({s.device}), batch "
              f"{','.join(map(str, s.batches))}, {s.dtype} {s.layout}{' (quick)' if s.quick else ''}", file=out)
        roofs = envmod.roofs(s.device, env, cases.DTYPES[s.dtype])
        from fastconv import backends as fc_backends

        try:
            # fastconv's TF32 switch follows --tf32 for the run (cuDNN's above), then is restored.
            with fc_backends.flags(allow_tf32=bool(s.tf32) and s.device.type == "cuda"):
                recs = (runner.run_layers if s.mode == "layers" else runner.run_models)(s,
                                                                                        progress=not args.no_progress)
        except runner.BenchError as e:
            return _fail("bench", str(e))
        if roofs["source"].startswith("measured"):
            # Measured again after the run, keeping the better of the two: a ceiling, not a sample.
            again = envmod.roofs(s.device, env, cases.DTYPES[s.dtype])
            for k in ("peak_tflops", "peak_gbps"):
                roofs[k] = max(roofs[k], again[k])
            roofs["source"] += " (best of before and after the run)"
        env["load_average_1m_end"] = envmod.load_average()
        run = {"schema": results.SCHEMA, "env": env, "roofs": roofs, "settings": s.as_dict(),
               "elapsed_s": time.perf_counter() - t0, "records": recs}
        run["warnings"] = report.trust_warnings(run)
        table = report.text_table(report.COLUMNS, report.layer_rows(run)) if s.mode == "layers" else \
            report.text_table(report.MODEL_COLUMNS, report.model_rows(run))
        print(table, file=out)
        print(f"times: median ms per launch, IQR = interquartile range of the timed rounds (up to {s.rounds}; ms); "
              f"'{report.NOISY_MARK}' = noisy", file=out)
        for w in run["warnings"]:
            print(f"warning: {w}", file=out)
        print(f"roofs: {roofs['peak_tflops']:.3g} TFLOP/s, {roofs['peak_gbps']:.4g} GB/s ({roofs['source']})", file=out)
        results.save(os.path.join(args.out, "results.json"), run)
        written = report.write_report([run], args.out, make_plots=not args.no_plots)
        run["elapsed_s"] = time.perf_counter() - t0
        results.save(os.path.join(args.out, "results.json"), run)
        print(f"wrote {', '.join(sorted(os.path.basename(p) for p in written.values()))}, results.json, bench.log "
              f"to {args.out} in {run['elapsed_s']:.1f} s", file=out)
    return 0


def cmd_bytes(args: argparse.Namespace) -> int:
    """`bench --bytes MODEL`: the byte and roofline predictions of fastconv.bench.bytes, as a table."""
    import json

    from fastconv.bench import bytes as B

    batch = (args.batch or [256])[0]
    rows = B.predict(args.bytes, batch=batch, dtype=args.dtype)
    print(B.format_table(rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bytes.json"), "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fastconv.bench import report, results

    if args.label and len(args.label) > len(args.results):
        return _fail("report", f"{len(args.label)} --label values for {len(args.results)} results files")
    try:
        runs = [results.load(p) for p in args.results]
    except results.ResultsError as e:
        return _fail("report", str(e))
    written = report.write_report(runs, args.out, labels=args.label, make_plots=not args.no_plots)
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in written.values()))} to {args.out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """For `python -m fastconv.bench.cli ...` (the same commands as `python -m fastconv`)."""
    p = argparse.ArgumentParser(prog="python -m fastconv")
    add_parsers(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(argv)
    return a.fn(a)
