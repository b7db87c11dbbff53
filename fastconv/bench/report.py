"""Tables and the Markdown report (report.md) from one or more runs in the results schema; with
several runs, a comparison table (run 1 as the baseline)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

COLUMNS = ["layer", "uses", "pass", "batch", "algo", "fastconv ms", "torch ms", "speed-up", "TFLOP/s | GB/s",
           "% peak", "max rel err"]
MODEL_COLUMNS = ["model", "mode", "batch", "variant", "ms", "IQR ms", "images/s", "vs torch eager", "max rel err"]


def _ms(sec: Optional[float]) -> str:
    return "-" if sec is None else (f"{sec * 1e3:.3f}" if sec < 1 else f"{sec * 1e3:.1f}")


def _num(v: Optional[float], fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _median(rec: Dict[str, Any]) -> Optional[float]:
    st = rec.get("stats")
    return st.get("median") if st else None


def _rate(rec: Dict[str, Any], roofs: Optional[Dict[str, Any]]) -> Tuple[str, str]:
    """(achieved rate, % of peak): TFLOP/s for convs, GB/s for pools and batch norm."""
    if rec.get("layer_kind") == "conv":
        v, peak, unit = rec.get("tflops"), (roofs or {}).get("peak_tflops"), "TFLOP/s"
    else:
        v, peak, unit = rec.get("gbps"), (roofs or {}).get("peak_gbps"), "GB/s"
    if v is None:
        return "-", "-"
    pct = f"{100 * v / peak:.1f}" if peak else "-"
    return f"{v:.3g} {unit}", pct


def layer_rows(run: Dict[str, Any]) -> List[List[str]]:
    """One row per fastconv record (each algorithm), beside the torch record of its group."""
    recs = [r for r in run["records"] if r.get("kind") == "layer"]
    torch_by_group = {r["group"]: r for r in recs if r["impl"] == "torch"}
    rows = []
    for r in recs:
        if r["impl"] != "fastconv":
            continue
        t = torch_by_group.get(r["group"])
        tm, fm = _median(t) if t else None, _median(r)
        if fm is None:
            rows.append([r.get("label", r["layer"]), str(r.get("count", 1)), r["pass"], str(r["batch"]), r["algo"],
                         "skipped", _ms(tm), "-", "-", "-", (r.get("skipped") or "")[:60]])
            continue
        rate, pct = _rate(r, run.get("roofs"))
        rows.append([r.get("label", r["layer"]), str(r.get("count", 1)), r["pass"], str(r["batch"]), r["algo"],
                     _ms(fm), _ms(tm), f"{tm / fm:.2f}x" if tm else "-", rate, pct, _num(r.get("max_rel_err"), "{:.1e}")])
    return rows


def model_rows(run: Dict[str, Any]) -> List[List[str]]:
    recs = [r for r in run["records"] if r.get("kind") == "model"]
    eager = {r["group"]: _median(r) for r in recs if r.get("algo") == "eager"}
    rows = []
    for r in recs:
        m = _median(r)
        if m is None:
            rows.append([r["model"], r["pass"], str(r["batch"]), r["algo"], "skipped", "-", "-", "-",
                         (r.get("skipped") or "")[:60]])
            continue
        e = eager.get(r["group"])
        rows.append([r["model"], r["pass"], str(r["batch"]), r["algo"], _ms(m), _ms(r["stats"].get("iqr")),
                     f"{r['batch'] / m:.1f}", f"{e / m:.2f}x" if e else "-", _num(r.get("max_rel_err"), "{:.1e}")])
    return rows


def text_table(columns: Sequence[str], rows: List[List[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def md_table(columns: Sequence[str], rows: List[List[str]]) -> str:
    esc = [[v.replace("|", "\\|") for v in r] for r in rows]
    out = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(out)


_ENV_KEYS = [("device", "device"), ("sm_count", "SM count"), ("capability", "compute capability"),
             ("cpu", "CPU"), ("cpu_threads", "CPU threads (torch)"),
             ("load_average_1m", "load average (1 min, at start)"), ("cuda_driver", "driver (CUDA)"),
             ("torch_cuda", "CUDA (torch)"), ("cudnn", "cuDNN"), ("torch", "torch"), ("python", "Python"),
             ("tf32_cudnn", "TF32 (cuDNN conv)"), ("tf32_matmul", "TF32 (matmul)"),
             ("cudnn_benchmark", "cudnn.benchmark"), ("git_commit", "git commit"), ("git_dirty", "uncommitted changes"),
             ("date", "date (UTC)"), ("fastconv", "fastconv"), ("fastconv_built_with_cuda", "fastconv built with CUDA"),
             ("fastconv_cuda_archs", "fastconv CUDA archs"), ("fastconv_algorithms", "fastconv algorithms"),
             ("pytest_benchmark", "pytest-benchmark")]


def env_rows(env: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for key, name in _ENV_KEYS:
        if key in env and env[key] is not None and env[key] != []:
            v = env[key]
            rows.append([name, ", ".join(map(str, v)) if isinstance(v, list) else str(v)])
    return rows


def run_title(run: Dict[str, Any], label: Optional[str] = None) -> str:
    if label:
        return label
    env, st = run.get("env", {}), run.get("settings", {})
    commit = (env.get("git_commit") or "")[:8]
    dev = env.get("device_type") or st.get("device") or "?"
    return " ".join(x for x in [st.get("mode", ""), st.get("model", ""), dev, commit] if x)


def comparison_rows(runs: List[Dict[str, Any]], labels: List[str]) -> List[List[str]]:
    """Same (layer or model, pass, batch, impl, algo) across runs: median ms per run, ratio to run 1.
    Records match on everything but device, so CPU-vs-GPU runs of the same settings line up."""
    def key(r):
        return (r.get("model"), r.get("layer"), r.get("pass"), r.get("batch"), r.get("dtype"), r.get("layout"),
                r.get("impl"), r.get("algo"))

    maps = [{key(r): r for r in run["records"] if _median(r) is not None} for run in runs]
    rows = []
    for k, r0 in maps[0].items():
        cells = [r0.get("label", r0.get("layer")), r0["pass"], str(r0["batch"]), f"{r0['impl']}:{r0['algo']}",
                 _ms(_median(r0))]
        for m in maps[1:]:
            r = m.get(k)
            cells += [_ms(_median(r)) if r else "-", f"{_median(r0) / _median(r):.2f}x" if r else "-"]
        rows.append(cells)
    return rows


def render_markdown(runs: List[Dict[str, Any]], labels: List[str], plots: Dict[str, str],
                    plot_note: Optional[str] = None) -> str:
    out = ["# fastconv benchmark report", ""]
    out.append("Times are medians per launch over timed rounds (warm-up first; CUDA events on the GPU, "
               "perf_counter on the CPU); IQR in the JSON. fastconv and torch run the same op on the same "
               "tensors, dtype and memory layout. speed-up = torch time / fastconv time (above 1: fastconv "
               "is faster). `uses` = how many times the network uses the layer shape. max rel err = "
               "max |fastconv - torch| / max |torch|.")
    out.append("")
    for run, label in zip(runs, labels):
        env, st = run.get("env", {}), run.get("settings", {})
        out += [f"## {label}", "", "### Environment", "", md_table(["", ""], env_rows(env)), ""]
        roofs = run.get("roofs")
        if roofs:
            out.append(f"Roofs: {roofs['peak_tflops']:.3g} TFLOP/s, {roofs['peak_gbps']:.4g} GB/s ({roofs['source']}).")
            out.append("")
        shown = {k: v for k, v in st.items() if k not in ("source",)}
        if shown:
            out += ["Settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()), ""]
        if run.get("elapsed_s") is not None:
            out += [f"Wall time of the run: {run['elapsed_s']:.1f} s.", ""]
        lr, mr = layer_rows(run), model_rows(run)
        if lr:
            out += ["### Layers", "", md_table(COLUMNS, lr), ""]
        if mr:
            out += ["### Models", "", md_table(MODEL_COLUMNS, mr), ""]
    if len(runs) > 1:
        cols = ["layer / model", "pass", "batch", "impl:algo", f"ms ({labels[0]})"]
        for lab in labels[1:]:
            cols += [f"ms ({lab})", f"{labels[0]} / {lab}"]
        out += ["## Comparison", "", f"Ratio above 1: faster than in `{labels[0]}`.", "",
                md_table(cols, comparison_rows(runs, labels)), ""]
    if plots or plot_note:
        out += ["## Plots", ""]
        for title, fname in plots.items():
            out += [f"### {title}", "", f"![{title}]({fname})", ""]
        if plot_note:
            out += [plot_note, ""]
    return "\n".join(out)


def write_report(runs: List[Dict[str, Any]], out_dir: str, labels: Optional[List[str]] = None,
                 make_plots: bool = True) -> Dict[str, str]:
    """Writes out_dir/report.md and the PNG plots; returns {"report": path, <plot title>: path, ...}."""
    from fastconv.bench import plots as plotmod

    os.makedirs(out_dir, exist_ok=True)
    labels = list(labels or [])
    labels += [run_title(r) for r in runs[len(labels):]]
    seen: Dict[str, int] = {}
    for i, lab in enumerate(labels):  # duplicate titles get a run number
        if lab in seen or labels.count(lab) > 1:
            labels[i] = f"{lab} (run {i + 1})"
        seen[lab] = i
    pngs: Dict[str, str] = {}
    note = None
    if make_plots:
        pngs, note = plotmod.make_plots(runs, labels, out_dir)
    md = render_markdown(runs, labels, {t: os.path.basename(p) for t, p in pngs.items()}, note)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(md)
    return {"report": path, **pngs}
