"""Tables and the Markdown report (report.md) from one or more runs in the results schema; with
several runs, a comparison table (run 1 as the baseline)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fastconv.bench.results import variant_name
from fastconv.bench.timing import NOISY_IQR, is_noisy, relative_iqr

# Every time has its IQR (ms) beside it; '!' after an IQR marks a noisy time (see trust_warnings).
COLUMNS = ["layer", "uses", "pass", "batch", "algo", "fastconv ms", "fastconv IQR", "torch ms", "torch IQR", "speed-up",
           "TFLOP/s | GB/s", "% peak", "max rel err"]
MODEL_COLUMNS = ["model", "mode", "batch", "variant", "ms", "IQR ms", "images/s", "vs torch eager", "max rel err"]
NOISY_MARK = "!"


def _ms(sec: Optional[float]) -> str:
    return "-" if sec is None else (f"{sec * 1e3:.3f}" if sec < 1 else f"{sec * 1e3:.1f}")


def _num(v: Optional[float], fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _median(rec: Dict[str, Any]) -> Optional[float]:
    st = rec.get("stats")
    return st.get("median") if st else None


def _iqr(rec: Optional[Dict[str, Any]]) -> str:
    """The IQR of a record's per-launch times in ms, with NOISY_MARK when it is above NOISY_IQR of the median."""
    st = (rec or {}).get("stats")
    r = relative_iqr(st)
    if r is None:
        return "-"
    return _ms(r * st["median"]) + (f" {NOISY_MARK}" if is_noisy(st) else "")


def trust_warnings(run: Dict[str, Any]) -> List[str]:
    """Sentences saying which numbers of `run` not to trust: noisy times (IQR / median above
    NOISY_IQR: its rounds disagree), and a CPU shared with other work (fastconv.bench.env.load_warning)."""
    from fastconv.bench.env import load_warning

    out = []
    timed = [r for r in run.get("records", []) if _median(r)]
    noisy = [r for r in timed if is_noisy(r.get("stats"))]
    if noisy:
        w = max(noisy, key=lambda r: relative_iqr(r["stats"]))
        what = f"{w.get('model')} {w.get('pass')} {variant_name(w.get('algo'))}" if w.get("kind") == "model" else \
            f"{w.get('label', w.get('layer'))} {w.get('pass')} {w.get('impl')}:{w.get('algo')}"
        out.append(f"{len(noisy)} of {len(timed)} times are noisy (IQR marked '{NOISY_MARK}'): their timed rounds "
                   f"disagree by more than {NOISY_IQR:.0%} of the median (worst: {what}, IQR "
                   f"{relative_iqr(w['stats']):.0%} of the median), so those medians are not trustworthy; rerun on "
                   f"an idle machine, or with more --rounds")
    load = load_warning(run.get("env") or {})
    if load:
        out.append(load[0].upper() + load[1:])
    return out


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
                         "skipped", "-", _ms(tm), _iqr(t), "-", "-", "-", (r.get("skipped") or "")[:60]])
            continue
        rate, pct = _rate(r, run.get("roofs"))
        rows.append([r.get("label", r["layer"]), str(r.get("count", 1)), r["pass"], str(r["batch"]), r["algo"],
                     _ms(fm), _iqr(r), _ms(tm), _iqr(t), f"{tm / fm:.2f}x" if tm else "-", rate, pct,
                     _num(r.get("max_rel_err"), "{:.1e}")])
    return rows


def model_rows(run: Dict[str, Any]) -> List[List[str]]:
    recs = [r for r in run["records"] if r.get("kind") == "model"]
    eager = {r["group"]: _median(r) for r in recs if r.get("algo") == "eager"}
    rows = []
    for r in recs:
        m = _median(r)
        name = variant_name(r["algo"])
        if m is None:
            rows.append([r["model"], r["pass"], str(r["batch"]), name, "skipped", "-", "-", "-",
                         (r.get("skipped") or "")[:110]])
            continue
        e = eager.get(r["group"])
        err = "reference" if r["algo"] == "eager" else _num(r.get("max_rel_err"), "{:.1e}")
        rows.append([r["model"], r["pass"], str(r["batch"]), name, _ms(m), _iqr(r), f"{r['batch'] / m:.1f}",
                     f"{e / m:.2f}x" if e else "-", err])
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
             ("cpu", "CPU"), ("cpu_count", "CPU count"), ("cpu_threads", "CPU threads (torch)"),
             ("load_average_1m", "load average (1 min, at start)"),
             ("load_average_1m_end", "load average (1 min, at the end)"), ("cuda_driver", "driver (CUDA)"),
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


def device_type(run: Dict[str, Any]) -> str:
    """cpu / cuda (or several, comma-separated) from the environment, the settings or the records."""
    env, st = run.get("env") or {}, run.get("settings") or {}
    dt = env.get("device_type") or st.get("device")
    if not dt:
        dt = ",".join(sorted({str(r["device"]).split(":")[0] for r in run.get("records", []) if r.get("device")}))
    return dt or "?"


def run_title(run: Dict[str, Any], label: Optional[str] = None) -> str:
    """A short name for a run: what ran, on which kind of device, at which commit (a given label wins)."""
    if label:
        return label
    env, st = run.get("env") or {}, run.get("settings") or {}
    commit = (env.get("git_commit") or "")[:8]
    what = ["pytest-benchmark", st.get("label", "")] if st.get("source") == "pytest-benchmark" else \
        [st.get("mode", ""), st.get("model", "")]
    return " ".join(x for x in [*what, device_type(run), commit] if x)


def run_heading(run: Dict[str, Any], label: str) -> str:
    """The report's heading for one run: its label and the device it ran on."""
    device = (run.get("env") or {}).get("device")
    return f"{label} on {device}" if device and device not in label else label


def comparison_rows(runs: List[Dict[str, Any]], labels: List[str]) -> List[List[str]]:
    """Same (layer or model, pass, batch, impl, algo) across runs: median ms and IQR per run, ratio to
    run 1. Records match on everything but device, so CPU-vs-GPU runs of the same settings line up."""
    def key(r):
        return (r.get("model"), r.get("layer"), r.get("pass"), r.get("batch"), r.get("dtype"), r.get("layout"),
                r.get("impl"), r.get("algo"))

    maps = [{key(r): r for r in run["records"] if _median(r) is not None} for run in runs]
    rows = []
    for k, r0 in maps[0].items():
        cells = [r0.get("label", r0.get("layer")), r0["pass"], str(r0["batch"]),
                 f"{r0['impl']}:{variant_name(r0['algo']) if r0.get('kind') == 'model' else r0['algo']}",
                 _ms(_median(r0)), _iqr(r0)]
        for m in maps[1:]:
            r = m.get(k)
            cells += [_ms(_median(r)) if r else "-", _iqr(r) if r else "-",
                      f"{_median(r0) / _median(r):.2f}x" if r else "-"]
        rows.append(cells)
    return rows


def comparison_columns(labels: List[str]) -> List[str]:
    cols = ["layer / model", "pass", "batch", "impl:algo", f"ms ({labels[0]})", "IQR"]
    for lab in labels[1:]:
        cols += [f"ms ({lab})", "IQR", f"{labels[0]} / {lab}"]
    return cols


def render_markdown(runs: List[Dict[str, Any]], labels: List[str], plots: Dict[str, str],
                    plot_note: Optional[str] = None, captions: Optional[Dict[str, str]] = None) -> str:
    out = ["# fastconv benchmark report", ""]
    out.append("Times are medians per launch over timed rounds (warm-up first; CUDA events on the GPU, "
               "perf_counter on the CPU), each with its IQR (interquartile range of the rounds, ms) beside it; "
               f"'{NOISY_MARK}' after an IQR: above {NOISY_IQR:.0%} of the median, the rounds disagree and that "
               "median is not trustworthy. fastconv and torch run the same op on the same "
               "tensors, dtype and memory layout. speed-up = torch time / fastconv time (above 1: fastconv "
               "is faster). `uses` = how many times the network uses the layer shape. max rel err = "
               "max |fastconv - torch| / max |torch|; for whole models, against torch eager (the network with "
               "torch.nn layers).")
    out.append("")
    for run, label in zip(runs, labels):
        env, st = run.get("env", {}), run.get("settings", {})
        out += [f"## {run_heading(run, label)}", ""]
        for w in trust_warnings(run):
            out += [f"> **Warning:** {w}", ""]
        out += ["### Environment", "", md_table(["", ""], env_rows(env)), ""]
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
        out += ["## Comparison", "", f"Ratio above 1: faster than in `{labels[0]}`.", "",
                md_table(comparison_columns(labels), comparison_rows(runs, labels)), ""]
    if plots or plot_note:
        out += ["## Plots", ""]
        for title, fname in plots.items():
            out += [f"### {title}", "", f"![{title}]({fname})", ""]
            if captions and captions.get(title):
                out += [captions[title], ""]
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
    note, captions = None, {}
    if make_plots:
        pngs, note = plotmod.make_plots(runs, labels, out_dir)
        captions = {t: plotmod.caption(t, runs) for t in pngs}
    md = render_markdown(runs, labels, {t: os.path.basename(p) for t, p in pngs.items()}, note, captions)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(md)
    return {"report": path, **pngs}
