"""The results file (`results.json`) and loading saved results, including pytest-benchmark JSON.

Schema "fastconv-bench/1" (one JSON object):

    schema     "fastconv-bench/1"
    env        the environment block (fastconv.bench.env.environment): date, device, sm_count,
               torch/CUDA/cuDNN/driver versions, TF32 state, git commit, fastconv build info,
               cpu_count, load_average_1m (at the start) and load_average_1m_end
    roofs      {"peak_tflops", "peak_gbps", "source", "measured": {"tflops", "gbps", "source"}}
    settings   the run's settings (mode, model, batches, dtype, layout, device, quick, algos, passes, ...)
    elapsed_s  wall time of the whole run
    records    one per measurement:
        kind       "layer" | "model"
        model, layer, label, layer_kind, count (uses in the network), uses (layer names), shape (dict)
        pass       fprop | dgrad | wgrad | bprop (layers); inference | train (models)
        batch, dtype, layout, device
        group      the comparison group: fastconv and torch records of one (layer, pass, batch,
                   dtype, layout) share it
        impl       "fastconv" | "torch";  algo: the fastconv algorithm, torch's backend or the model variant
                   (VARIANTS: eager = torch eager, converted = fastconv, fused = fastconv fused,
                   torch.compile; results before issue 15 have converted+fused = BN folded)
        flops, bytes   the useful FLOPs and compulsory bytes of one launch
        stats      seconds per launch: median, q1, q3, iqr (q3 - q1), min, max, mean, stddev, rounds,
                   inner (launches per round), timer
        tflops, gbps   flops / median, bytes / median
        max_rel_err    fastconv only: max |ours - torch| / max |torch| on the same inputs
        images_per_s   models only
        skipped        instead of stats: why this could not run
        fusion         models, variant fused: which pass built it and its fastconv_fusion_summary
    warnings   sentences saying why some numbers are not trustworthy: noisy times (IQR / median above
               fastconv.bench.timing.NOISY_IQR), a busy machine (load average vs CPU count)

pytest-benchmark JSON (from `pytest benchmarks --benchmark --benchmark-json=FILE`) loads into the same
shape: each benchmark's extra_info carries the record fields, its stats (seconds per round) are
divided by extra_info["launches_per_round"].
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

SCHEMA = "fastconv-bench/1"

# Whole-model variants (a model record's algo), in timing order; eager is the torch baseline.
VARIANTS = ("eager", "converted", "fused", "torch.compile")
VARIANT_IMPL = {"eager": "torch", "converted": "fastconv", "fused": "fastconv", "torch.compile": "torch",
                "converted+fused": "fastconv"}
# What tables and plots call them ("eager" alone would not say whose). converted+fused: saved results
# from before issue 15 (BN folded into the conv by the old fuse_for_inference).
VARIANT_NAMES = {"eager": "torch eager", "converted": "fastconv", "fused": "fastconv fused",
                 "torch.compile": "torch.compile", "converted+fused": "fastconv + BN folded"}


def variant_name(algo: str) -> str:
    return VARIANT_NAMES.get(algo, algo)


class ResultsError(ValueError):
    pass


def save(path: str, run: Dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(run, f, indent=1, default=str)
        f.write("\n")


def _derive(rec: Dict[str, Any]) -> Dict[str, Any]:
    st = rec.get("stats")
    if st and st.get("median"):
        if rec.get("flops"):
            rec["tflops"] = rec["flops"] / st["median"] / 1e12
        if rec.get("bytes"):
            rec["gbps"] = rec["bytes"] / st["median"] / 1e9
        if rec.get("kind") == "model" and rec.get("batch"):
            rec["images_per_s"] = rec["batch"] / st["median"]
    return rec


def from_pytest_benchmark(data: Dict[str, Any], source: str) -> Dict[str, Any]:
    records: List[Dict[str, Any]] = []
    env: Dict[str, Any] = {}
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info") or {})
        if "impl" not in info:  # not one of ours
            continue
        env = env or dict(info.pop("env", {}) or {})
        info.pop("env", None)
        lpr = int(info.pop("launches_per_round", 1) or 1)
        raw = b.get("stats") or {}
        stats = {k: raw[k] / lpr for k in ("median", "q1", "q3", "iqr", "min", "max", "mean", "stddev") if k in raw}
        stats.update(rounds=raw.get("rounds"), inner=lpr, timer="pytest-benchmark")
        rec = dict(info, stats=stats, group=b.get("group") or info.get("group"), bench_name=b.get("name"))
        records.append(_derive(rec))
    if not records:
        raise ResultsError(f"{source}: a pytest-benchmark file without fastconv benchmarks (no extra_info.impl)")
    commit = data.get("commit_info") or {}
    machine = data.get("machine_info") or {}
    env.setdefault("date", data.get("datetime"))
    env.setdefault("git_commit", commit.get("id"))
    env.setdefault("git_dirty", commit.get("dirty"))
    env.setdefault("host", machine.get("node"))
    env.setdefault("cpu", (machine.get("cpu") or {}).get("brand_raw"))
    env["pytest_benchmark"] = data.get("version")
    devices = sorted({str(r["device"]) for r in records if r.get("device")})
    env.setdefault("device_type", ",".join(devices) or None)
    kinds = sorted({"layers" if r.get("kind") == "layer" else "models" for r in records})
    label = os.path.splitext(os.path.basename(source))[0]
    return {"schema": SCHEMA, "env": env, "roofs": None,
            "settings": {"source": "pytest-benchmark", "label": label, "suites": ",".join(kinds)},
            "records": records}


def load(path: str) -> Dict[str, Any]:
    """A run in the fastconv-bench/1 shape, from our results.json or a pytest-benchmark JSON file."""
    if not os.path.isfile(path):
        raise ResultsError(f"{path}: no such file")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a JSON results file ({e})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    if data.get("schema") == SCHEMA:
        data["records"] = [_derive(r) for r in data.get("records", [])]
        return data
    if "benchmarks" in data and "machine_info" in data:
        return from_pytest_benchmark(data, path)
    raise ResultsError(f"{path}: neither a fastconv results file (schema {SCHEMA}) nor pytest-benchmark JSON")
