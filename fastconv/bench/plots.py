"""PNG plots (matplotlib, Agg backend: headless): per-layer speed-up bars, a roofline, and end-to-end
images/s. Without matplotlib the plots are skipped with a note, never an error.

Each plot has a `*_figure(plt, runs, labels)` that builds the matplotlib Figure (None without data;
tests inspect it) and a caption (`caption(title, runs)`) that the PNG and report.md both carry.
Sizes are set for reading the PNG as written: DPI dots per inch, no text under MIN_FONT points, and
the figure grows with the number of bars instead of shrinking the text.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Dict, List, Optional, Tuple

from fastconv.bench.results import variant_name

SPEEDUP = "speedup.png"
ROOFLINE = "roofline.png"
THROUGHPUT = "throughput.png"
TITLES = {SPEEDUP: "Per-layer speed-up", ROOFLINE: "Roofline", THROUGHPUT: "End-to-end images/s"}

DPI = 150
MIN_FONT = 8               # points: annotations and captions; tick labels and legends are 9, titles 11
MAX_POINT_LABELS = 30      # roofline: label at most this many layers (those with the most FLOPs)
_RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
       "legend.fontsize": 9}


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


def _add_caption(fig, text: str, width_in: float) -> None:
    """`text` wrapped under the axes, in MIN_FONT points; the axes shrink to make room."""
    lines = textwrap.wrap(text, width=int(width_in * 72 / (MIN_FONT * 0.52)))
    height = (len(lines) * MIN_FONT * 1.35 + 6) / 72 / fig.get_figheight()
    fig.tight_layout(rect=(0, height, 1, 1))
    fig.text(0.01, height - 3 / 72 / fig.get_figheight(), "\n".join(lines), fontsize=MIN_FONT, va="top", ha="left")


# ---- per-layer speed-up ----------------------------------------------------------------------------
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


def speedup_figure(plt, runs, labels):
    """Horizontal bars, one row per layer and pass (a bar per run), log scale around 1."""
    series = [(lab, dict(best_speedups(run))) for run, lab in zip(runs, labels)]
    series = [(lab, s) for lab, s in series if s]
    if not series:
        return None
    names: List[str] = []
    for _, s in series:
        names += [n for n in s if n not in names]
    n, k = len(names), len(series)
    row_in = max(0.24, 0.16 * k + 0.06)  # inches per layer row: a 9-point label and k bars
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(9, 1.9 + n * row_in))
        height = 0.8 / k
        for j, (lab, s) in enumerate(series):
            ys = [i + (j - (k - 1) / 2) * height for i, nm in enumerate(names) if nm in s]
            xs = [s[nm] for nm in names if nm in s]
            ax.barh(ys, xs, height, label=lab, color=f"C{j}")
            for y, x in zip(ys, xs):
                ax.annotate(f"{x:.2f}x", (x, y), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=MIN_FONT)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        lo = min(min(s.values()) for _, s in series)
        hi = max(max(s.values()) for _, s in series)
        ax.set_xlim(min(lo, 1.0) / 1.5, max(hi, 1.0) * 2.5)  # room for the value labels
        ax.set_yticks(range(n))
        ax.set_yticklabels(names)
        ax.set_ylim(n - 0.5, -0.5)  # the first layer on top
        ax.set_xlabel("speed-up = torch time / fastconv time (best fastconv algorithm; right of 1: fastconv faster)")
        ax.set_title("fastconv per-layer speed-up over torch")
        if k > 1:
            ax.legend(loc="best", framealpha=0.9)
        fig.tight_layout()
    return fig


# ---- roofline --------------------------------------------------------------------------------------
PASS_MARKERS = {"fprop": "o", "dgrad": "s", "wgrad": "^", "bprop": "D"}


def _roof_sets(run: Dict[str, Any]) -> List[Tuple[float, float, str, str]]:
    """(TFLOP/s, GB/s, legend label, line style) for each roof of a run: the roof the report uses
    (published, else measured), and the measured ceilings beside a published roof."""
    roofs = run.get("roofs")
    if not roofs:
        return []
    measured_only = roofs["source"].startswith("measured")
    kind = "measured" if measured_only else "datasheet"
    out = [(roofs["peak_tflops"], roofs["peak_gbps"],
            f"roof ({kind}): {roofs['peak_tflops']:.3g} TFLOP/s, {roofs['peak_gbps']:.4g} GB/s", "-")]
    m = roofs.get("measured") or {}
    if m.get("tflops") and not measured_only:
        out.append((m["tflops"], m["gbps"], f"roof (measured): {m['tflops']:.3g} TFLOP/s, {m['gbps']:.4g} GB/s", ":"))
    return out


def _roofline_points(runs, labels):
    pts = []
    for j, (run, lab) in enumerate(zip(runs, labels)):
        for r in run["records"]:
            if r.get("kind") == "layer" and _median(r) and r.get("flops") and r.get("bytes"):
                pts.append((j, lab, r, r["flops"] / r["bytes"], r["flops"] / _median(r) / 1e12))
    return pts


def _place_labels(fig, anns, fixed=()) -> None:
    """Moves each annotation (in order) to the first of a few offsets where it overlaps none placed
    before it nor the `fixed` texts: the labels of points that sit close together stay readable."""
    renderer = fig.canvas.get_renderer()
    placed = [t.get_window_extent(renderer) for t in fixed]
    offsets = [(4, 3), (4, -11), (4, 13), (-4, 3), (-4, -11), (4, -21), (4, 23), (-4, 13), (4, -31), (4, 33)]
    for ann in anns:
        for dx, dy in offsets:
            ann.xyann = (dx, dy)
            ann.set_horizontalalignment("left" if dx > 0 else "right")
            bb = ann.get_window_extent(renderer)
            if not any(bb.overlaps(p) for p in placed):
                break
        placed.append(ann.get_window_extent(renderer))


def roofline_figure(plt, runs, labels):
    """Every measured layer and pass at (FLOP per compulsory byte, achieved TFLOP/s) under the roofs:
    colour = implementation (and run), marker = pass; the first run's layers labelled (at most
    MAX_POINT_LABELS, the largest by FLOPs); each roof named in the legend, its values on the lines,
    where it comes from in the caption; the legend inside the axes."""
    from matplotlib.lines import Line2D

    pts = _roofline_points(runs, labels)
    if not pts:
        return None
    roofs = [(j, rs) for j, run in enumerate(runs) for rs in _roof_sets(run)]
    lo, hi = min(p[3] for p in pts) / 2, max(p[3] for p in pts) * 2
    for _, (tf, gb, _, _) in roofs:  # show each ridge point
        lo, hi = min(lo, tf * 1e3 / gb / 4), max(hi, tf * 1e3 / gb * 4)
    top = max([tf for _, (tf, _, _, _) in roofs] + [p[4] for p in pts])
    bottom = min(p[4] for p in pts)
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(9, 7))
        handles = []
        for j, lab in enumerate(labels):
            for impl in ("fastconv", "torch"):
                color = f"C{2 * j + (impl == 'torch')}"
                sel = [(r, ai, tf) for jj, _, r, ai, tf in pts if jj == j and r["impl"] == impl]
                for pss, marker in PASS_MARKERS.items():
                    xy = [(ai, tf) for r, ai, tf in sel if r["pass"] == pss]
                    if xy:
                        ax.scatter([a for a, _ in xy], [t for _, t in xy], marker=marker, s=26, zorder=3,
                                   color=color, edgecolors="none")
                if sel:
                    handles.append(Line2D([], [], ls="", marker="o", color=color,
                                          label=f"{impl} ({lab})" if len(labels) > 1 else impl))
        passes = {p[2]["pass"] for p in pts}
        handles += [Line2D([], [], ls="", marker=m, color="0.4", label=pss) for pss, m in PASS_MARKERS.items()
                    if pss in passes]
        # The first run: fastconv's best algorithm joined to torch per (layer, pass); one label per layer
        # and intensity.
        best: Dict[str, Tuple[Any, float, float]] = {}
        torch_pt: Dict[str, Tuple[float, float]] = {}
        top_of_layer: Dict[Tuple, Tuple[Any, float, float]] = {}
        for jj, _, r, ai, tf in pts:
            if jj != 0:
                continue
            if r["impl"] == "torch":
                torch_pt[r["group"]] = (ai, tf)
            elif r["group"] not in best or tf > best[r["group"]][2]:
                best[r["group"]] = (r, ai, tf)
            k = (r["layer"], r["batch"], round(math.log(ai), 3))  # a conv's passes share one intensity
            if k not in top_of_layer or tf > top_of_layer[k][2]:
                top_of_layer[k] = (r, ai, tf)
        for r, ai, tf in best.values():
            if r["group"] in torch_pt:
                ta, tt = torch_pt[r["group"]]
                ax.plot([ai, ta], [tf, tt], color="0.6", lw=0.7, zorder=2)
        many_batches = len({k[1] for k in top_of_layer}) > 1
        labelled = sorted(top_of_layer.values(), key=lambda b: -b[0]["flops"])[:MAX_POINT_LABELS]
        anns = [ax.annotate(r["layer"] + (f" b{r['batch']}" if many_batches else ""), (ai, tf), xytext=(4, 3),
                            textcoords="offset points", fontsize=MIN_FONT, color="0.15", zorder=4)
                for r, ai, tf in sorted(labelled, key=lambda b: -b[2])]
        xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        for j, (tf, gb, name, style) in roofs:
            ax.plot(xs, [min(tf, x * gb / 1e3) for x in xs], style, color="k" if j == 0 else "0.5", lw=1.2)
            handles.append(Line2D([], [], ls=style, color="k" if j == 0 else "0.5", lw=1.2,
                                  label=name + (f" ({labels[j]})" if len(runs) > 1 else "")))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(bottom / 3, top * 6)  # headroom above the roofs for the legend
        ax.set_xlabel("arithmetic intensity (FLOP per compulsory byte)")
        ax.set_ylabel("achieved TFLOP/s")
        ax.set_title("roofline: every measured layer and pass" + (f" (labels: the {MAX_POINT_LABELS} largest)"
                                                                  if len(top_of_layer) > MAX_POINT_LABELS else ""))
        ax.legend(handles=handles, loc="best", framealpha=0.9, ncol=2 if len(handles) > 6 else 1)
        _add_caption(fig, caption(TITLES[ROOFLINE], runs), 9)
        # The roofs' values along their lines, the slope's text at the slope's angle on screen.
        roof_texts = []
        for j, (tf, gb, _, _) in roofs:
            if j:  # the other runs' roofs: values in the legend only (their texts would sit on run 1's)
                continue
            color = "k"
            ridge = tf * 1e3 / gb
            roof_texts.append(ax.annotate(f"{tf:.3g} TFLOP/s", (ridge * 1.15, tf), xytext=(0, 3),
                                          textcoords="offset points", fontsize=MIN_FONT, color=color))
            x0 = max(lo * 1.5, ridge / 8)
            (px0, py0), (px1, py1) = ax.transData.transform([(x0, x0 * gb / 1e3), (ridge, tf)])
            angle = math.degrees(math.atan2(py1 - py0, px1 - px0))
            roof_texts.append(ax.annotate(f"{gb:.4g} GB/s", (x0, x0 * gb / 1e3), xytext=(0, 4),
                                          textcoords="offset points", fontsize=MIN_FONT, color=color, rotation=angle,
                                          rotation_mode="anchor"))
        _place_labels(fig, anns, roof_texts)
    return fig


# ---- end-to-end images/s ---------------------------------------------------------------------------
def throughput_figure(plt, runs, labels):
    """images/s per model variant: bars when every run has one batch size, lines over the batch
    sizes otherwise; the y axis starts at 0."""
    series: Dict[str, Dict[int, float]] = {}
    impl: Dict[str, str] = {}
    setups = []
    for run, lab in zip(runs, labels):
        for r in run["records"]:
            if r.get("kind") == "model" and _median(r):
                setup = f"{r.get('dtype')} {r.get('layout')}, {r.get('device')}"
                setups += [setup] if setup not in setups else []
                name = f"{r['model']} {r['pass']}: {variant_name(r['algo'])}" + (f" ({lab})" if len(runs) > 1 else "")
                series.setdefault(name, {})[r["batch"]] = r["batch"] / _median(r)
                impl[name] = r["impl"]
    if not series:
        return None
    batches = sorted({b for s in series.values() for b in s})
    with plt.rc_context(_RC):
        if len(batches) == 1:
            names = list(series)
            fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(names) + 1.5), 5))
            ys = [series[nm][batches[0]] for nm in names]
            bars = ax.bar(range(len(names)), ys, 0.6,
                          color=["C0" if impl[nm] == "fastconv" else "C1" for nm in names])
            for b, y in zip(bars, ys):
                ax.annotate(f"{y:.3g}", (b.get_x() + b.get_width() / 2, y), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=MIN_FONT + 1)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([nm.replace(": ", ":\n") for nm in names])
            ax.set_xlabel(f"batch {batches[0]}")
            ax.set_ylim(0, max(ys) * 1.15)
        else:
            fig, ax = plt.subplots(figsize=(8, 5))
            for j, (name, pts) in enumerate(series.items()):
                bs = sorted(pts)
                ax.plot(bs, [pts[b] for b in bs], "o-", label=name, color=f"C{j}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches)
            ax.set_xticklabels([str(b) for b in batches])
            ax.set_xlabel("batch")
            ax.set_ylim(0, max(v for s in series.values() for v in s.values()) * 1.15)
            ax.legend(loc="lower right", framealpha=0.9)
        ax.set_ylabel("images / s (higher is better)")
        ax.set_title(f"end-to-end throughput ({'; '.join(setups)})")
        fig.tight_layout()
    return fig


# ---- captions and files ----------------------------------------------------------------------------
def caption(title: str, runs: List[Dict[str, Any]]) -> str:
    """What a plot shows and how to read it (and, for the roofline, where every roof comes from)."""
    if title == TITLES[SPEEDUP]:
        return ("One row per layer shape and pass; the bar is torch's time over the best fastconv algorithm's "
                "time on the same tensors (log scale; right of the line at 1: fastconv is faster).")
    if title == TITLES[THROUGHPUT]:
        return ("Images per second of whole-model inference or one SGD training step (batch / median time). "
                "torch eager is the network with torch.nn layers, fastconv the same network after "
                "fastconv.convert(), fastconv fused also after fastconv.fuse_for_inference() (inference) or "
                "fastconv.fuse_for_training() (training): conv, BN, ReLU and residual add as one module; "
                "torch.compile compiles torch eager (absent when skipped, see the table).")
    parts = ["Each point is one layer shape and pass: colour = fastconv or torch, marker = pass; a label names "
             "the first layer using the shape, and a grey line joins fastconv's best algorithm to torch on the "
             "same layer and pass. "
             "x: FLOPs per compulsory byte (each operand read once, the result written once); y: achieved "
             "TFLOP/s. A roof is min(compute peak, bandwidth x intensity): under its sloped part a layer is "
             "bound by memory, under its flat part by compute; they meet at the ridge."]
    for run in runs[:1]:
        roofs = run.get("roofs")
        if not roofs:
            parts.append("No roofs: these results do not carry the device's peaks.")
            continue
        parts.append(f"Solid black roof: {roofs['peak_tflops']:.3g} TFLOP/s and {roofs['peak_gbps']:.4g} GB/s "
                     f"({roofs['source']}); ridge at {roofs['peak_tflops'] * 1e3 / roofs['peak_gbps']:.3g} "
                     f"FLOP/byte.")
        m = roofs.get("measured") or {}
        if m.get("tflops") and not roofs["source"].startswith("measured"):
            parts.append(f"Dotted roof: measured on this device ({m['source']}; the best round of each): "
                         f"{m['tflops']:.3g} TFLOP/s, {m['gbps']:.4g} GB/s.")
        elif roofs["source"].startswith("measured"):
            parts.append("Measured roofs are the best round of a torch matmul (FLOP/s) and of a tensor copy "
                         "(bytes/s) on the device: ceilings torch reaches, not the vendor's peak.")
    if len(runs) > 1:
        parts.append("Grey roofs: the other runs' devices.")
    return " ".join(parts)


def make_plots(runs: List[Dict[str, Any]], labels: List[str], out_dir: str) -> Tuple[Dict[str, str], Optional[str]]:
    """Writes the plots that have data; returns ({title: path}, a note or None)."""
    plt = _pyplot()
    if plt is None:
        return {}, "Plots skipped: matplotlib is not installed (`pip install matplotlib`, or the `bench` extra)."
    out: Dict[str, str] = {}
    for fname, fn in [(SPEEDUP, speedup_figure), (ROOFLINE, roofline_figure), (THROUGHPUT, throughput_figure)]:
        fig = fn(plt, runs, labels)
        if fig is None:
            continue
        path = os.path.join(out_dir, fname)
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        out[TITLES[fname]] = path
    note = None
    if THROUGHPUT not in [os.path.basename(p) for p in out.values()]:
        note = "No whole-model records in these results, so no images/s plot (run `--mode inference` or `--mode train`)."
    return out, note
