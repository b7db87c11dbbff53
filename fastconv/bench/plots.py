"""PNG plots (matplotlib, Agg backend: headless): per-layer speed-up bars, a roofline, and end-to-end
images/s per batch. Without matplotlib the plots are skipped with a note, never an error."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

SPEEDUP = "speedup.png"
ROOFLINE = "roofline.png"
THROUGHPUT = "throughput.png"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _median(r: Dict[str, Any]) -> Optional[float]:
    return (r.get("stats") or {}).get("median")


def best_speedups(run: Dict[str, Any]) -> List[Tuple[str, float]]:
    """(layer label + pass, torch time / best fastconv time) per group, in run order."""
    recs = [r for r in run["records"] if r.get("kind") == "layer" and _median(r)]
    torch_t = {r["group"]: _median(r) for r in recs if r["impl"] == "torch"}
    best: Dict[str, Tuple[str, float]] = {}
    for r in recs:
        if r["impl"] != "fastconv" or r["group"] not in torch_t:
            continue
        name = f"{r.get('label', r['layer'])} {r['pass']}" + (f" b{r['batch']}" if len(run.get("settings", {}).get(
            "batches", [1])) > 1 else "")
        s = torch_t[r["group"]] / _median(r)
        if r["group"] not in best or s > best[r["group"]][1]:
            best[r["group"]] = (name, s)
    return list(best.values())


def _speedup_plot(plt, runs, labels, path) -> bool:
    series = [(lab, best_speedups(run)) for run, lab in zip(runs, labels)]
    series = [(lab, s) for lab, s in series if s]
    if not series:
        return False
    names = []
    for _, s in series:
        names += [n for n, _ in s if n not in names]
    n, k = len(names), len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * n * k + 2), 4.5))
    width = 0.8 / k
    for j, (lab, s) in enumerate(series):
        d = dict(s)
        xs = [i + (j - (k - 1) / 2) * width for i, nm in enumerate(names) if nm in d]
        ys = [d[nm] for nm in names if nm in d]
        ax.bar(xs, ys, width, label=lab)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up vs torch (best fastconv algorithm)")
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    ax.set_title("fastconv per-layer speed-up (torch time / fastconv time)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _roofline_plot(plt, runs, labels, path) -> bool:
    pts = []
    for run, lab in zip(runs, labels):
        for r in run["records"]:
            if r.get("kind") == "layer" and _median(r) and r.get("flops") and r.get("bytes"):
                pts.append((lab, r["impl"], r["flops"] / r["bytes"], r["flops"] / _median(r) / 1e12))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"fastconv": "o", "torch": "x"}
    for j, lab in enumerate(labels):
        for impl in ("fastconv", "torch"):
            sel = [(ai, tf) for lb, im, ai, tf in pts if lb == lab and im == impl]
            if sel:
                ax.scatter([a for a, _ in sel], [t for _, t in sel], marker=markers[impl], s=18,
                           label=f"{impl} ({lab})" if len(labels) > 1 else impl, color=f"C{2 * j + (impl == 'torch')}")
    lo = min(p[2] for p in pts) / 2
    hi = max(p[2] for p in pts) * 2
    for j, run in enumerate(runs):
        roofs = run.get("roofs")
        if not roofs:
            continue
        roof_lines = [(roofs["peak_tflops"], roofs["peak_gbps"], roofs["source"], "-")]
        m = roofs.get("measured") or {}
        if m.get("tflops") and m.get("source") != roofs["source"]:
            roof_lines.append((m["tflops"], m["gbps"], "measured", ":"))
        for tf, gb, src, style in roof_lines:
            xs = [lo * (hi / lo) ** (i / 100) for i in range(101)]
            ax.plot(xs, [min(tf, x * gb / 1e3) for x in xs], style, color="k" if j == 0 else "gray", lw=1,
                    label=f"roof: {tf:.3g} TFLOP/s, {gb:.4g} GB/s ({src[:48]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / compulsory byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title("roofline: every measured layer and pass")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _throughput_plot(plt, runs, labels, path) -> bool:
    lines: Dict[str, List[Tuple[int, float]]] = {}
    for run, lab in zip(runs, labels):
        for r in run["records"]:
            if r.get("kind") == "model" and _median(r):
                name = f"{r['model']} {r['pass']} {r['algo']}" + (f" ({lab})" if len(runs) > 1 else "")
                lines.setdefault(name, []).append((r["batch"], r["batch"] / _median(r)))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in lines.items():
        pts.sort()
        ax.plot([b for b, _ in pts], [v for _, v in pts], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title("end-to-end throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def make_plots(runs: List[Dict[str, Any]], labels: List[str], out_dir: str) -> Tuple[Dict[str, str], Optional[str]]:
    """Writes the plots that have data; returns ({title: path}, a note or None)."""
    plt = _pyplot()
    if plt is None:
        return {}, "Plots skipped: matplotlib is not installed (`pip install matplotlib`, or the `bench` extra)."
    out: Dict[str, str] = {}
    for title, fname, fn in [("Per-layer speed-up", SPEEDUP, _speedup_plot), ("Roofline", ROOFLINE, _roofline_plot),
                             ("End-to-end images/s per batch", THROUGHPUT, _throughput_plot)]:
        path = os.path.join(out_dir, fname)
        if fn(plt, runs, labels, path):
            out[title] = path
    note = None
    if THROUGHPUT not in [os.path.basename(p) for p in out.values()]:
        note = "No whole-model records in these results, so no images/s plot (run `--mode inference` or `--mode train`)."
    return out, note
