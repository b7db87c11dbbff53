"""Times fastconv's CPU conv algorithms (fprop, dgrad, wgrad) on shapes that decide the "auto"
heuristic in fastconv/algorithms.py: tiny problems, depthwise, 1x1 (stride 1 and 2), a stem, and a
mid-network 3x3, in NCHW and NHWC. Median of --reps runs after one warm-up, per torch thread count.

    python benchmarks/results/cpu-heuristics-2026-11-23/measure.py --threads 1 2 --json results.json > output.txt
"""

# ruff: noqa: B023  (each timing lambda is called immediately, inside its own loop iteration)
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import fastconv  # noqa: F401  (registers torch.ops.fastconv)
from fastconv.algorithms import ConvProblem, can_implement

ops = torch.ops.fastconv

# (name, N, C, H, W, K, R, S, stride, padding, groups)
SHAPES = [
    ("tiny-c4-8x8", 8, 4, 8, 8, 4, 3, 3, 1, 1, 1),
    ("tiny-c8-8x8", 8, 8, 8, 8, 8, 3, 3, 1, 1, 1),
    ("small-c16-8x8", 8, 16, 8, 8, 16, 3, 3, 1, 1, 1),
    ("small-c8-16x16", 8, 8, 16, 16, 8, 3, 3, 1, 1, 1),
    ("small-c32-7x7", 8, 32, 7, 7, 32, 3, 3, 1, 1, 1),
    ("small-c3-32x32", 8, 3, 32, 32, 16, 3, 3, 1, 1, 1),
    ("mid-c16-14x14", 8, 16, 14, 14, 16, 3, 3, 1, 1, 1),
    ("mid-c64-28x28", 8, 64, 28, 28, 64, 3, 3, 1, 1, 1),
    ("s2-c64-28x28", 8, 64, 28, 28, 128, 3, 3, 2, 1, 1),
    ("stem-7x7-s2", 4, 3, 112, 112, 64, 7, 7, 2, 3, 1),
    ("grouped-g4-28x28", 8, 64, 28, 28, 64, 3, 3, 1, 1, 4),
    ("dw-c64-56x56", 8, 64, 56, 56, 64, 3, 3, 1, 1, 64),
    ("dw-c128-28x28", 8, 128, 28, 28, 128, 3, 3, 1, 1, 128),
    ("dw-c256-14x14-s2", 8, 256, 14, 14, 256, 3, 3, 2, 1, 256),
    ("1x1-c64-k256-28x28", 8, 64, 28, 28, 256, 1, 1, 1, 0, 1),
    ("1x1-c256-k64-28x28", 8, 256, 28, 28, 64, 1, 1, 1, 0, 1),
    ("1x1-s2-c256-k512-28x28", 8, 256, 28, 28, 512, 1, 1, 2, 0, 1),
    ("1x1-c16-k16-7x7", 8, 16, 7, 7, 16, 1, 1, 1, 0, 1),
]
ALGOS = ["direct", "im2col", "gemm1x1"]


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(threads: int, reps: int, layout: str):
    torch.set_num_threads(threads)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    rows = []
    for name, n, c, h, w, k, r, s, st, pad, g in SHAPES:
        x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
        wt = torch.randn(k, c // g, r, s).contiguous(memory_format=fmt)
        y = torch.nn.functional.conv2d(x, wt, None, st, pad, 1, g)
        dy = torch.randn_like(y)
        prob = ConvProblem.from_tensors(x, wt, (st, st), (pad, pad), (1, 1), g)
        row = {"shape": name, "N": n, "C": c, "H": h, "W": w, "K": k, "R": r, "S": s, "stride": st,
               "padding": pad, "groups": g, "layout": layout, "macs_per_image": prob.macs_per_image,
               "threads": threads, "ms": {}}
        a = [st, st]
        p = [pad, pad]
        row["ms"]["torch"] = {
            "fprop": median_ms(lambda: torch.nn.functional.conv2d(x, wt, None, st, pad, 1, g), reps)}
        for algo in ALGOS:
            if not can_implement(algo, prob):
                continue
            row["ms"][algo] = {
                "fprop": median_ms(lambda: ops.conv2d(x, wt, None, a, p, [1, 1], g, algo), reps),
                "dgrad": median_ms(lambda: ops.conv2d_dgrad(dy, wt, list(x.shape), a, p, [1, 1], g, algo), reps),
                "wgrad": median_ms(lambda: ops.conv2d_wgrad(dy, x, list(wt.shape), a, p, [1, 1], g, algo), reps),
            }
        cells = "  ".join(f"{al}={v['fprop']:.3f}/{v.get('dgrad', float('nan')):.3f}/{v.get('wgrad', float('nan')):.3f}"
                          for al, v in row["ms"].items())
        print(f"threads={threads} {layout} {name:<24} macs/img={prob.macs_per_image:>10}  {cells}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    facts = {"machine": platform.processor() or platform.machine(), "platform": platform.platform(),
             "python": platform.python_version(), "torch": torch.__version__, "fastconv": fastconv.__version__,
             "dtype": "float32", "unit": "ms, median of reps after one warm-up"}
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(json.dumps(facts))
    rows = []
    for t in args.threads:
        for layout in args.layouts:
            rows += run(t, args.reps, layout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"facts": facts, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
