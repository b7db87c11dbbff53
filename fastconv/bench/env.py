"""The environment block every report carries, and the device's roofs (peak FLOP/s and bandwidth).

Published roofs are the vendors' datasheet numbers (dense, no sparsity); measured roofs come from a
large torch matmul (FLOP/s) and a large tensor copy (bytes moved / s) on the device itself.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Any, Dict, Optional

import torch
from fastconv.info import cpu_name

# name substring -> datasheet roofs: TFLOP/s per dtype ("fp32" is the non-tensor-core FP32 rate,
# "tf32"/"fp16"/"bf16" the dense tensor-core rates) and memory bandwidth in GB/s.
_PUBLISHED = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "gbps": 4800.0,
              "source": "NVIDIA H200 SXM datasheet (dense)"}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0, "gbps": 2000.0,
                   "source": "NVIDIA H100 PCIe datasheet (dense)"}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "gbps": 3350.0,
              "source": "NVIDIA H100 SXM5 datasheet (dense)"}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0, "gbps": 2039.0,
              "source": "NVIDIA A100 80GB SXM datasheet (dense)"}),
]


def load_average() -> Optional[float]:
    """The 1-minute load average (runnable + uninterruptible tasks), None where the OS has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def load_warning(env: Dict[str, Any]) -> Optional[str]:
    """A sentence when the load average says other work shared the CPU while this run timed: the
    load seen by others (at the start; at the end less this run's own threads) plus this run's
    threads (torch's intra-op threads on the CPU, one launching thread for a GPU) exceeds the CPU
    count by more than half a core. None when the machine looked free enough, or nothing is known."""
    cpus = env.get("cpu_count")
    start, end = env.get("load_average_1m"), env.get("load_average_1m_end")
    if not cpus or (start is None and end is None):
        return None
    ours = (env.get("cpu_threads") or 1) if env.get("device_type", "cpu") == "cpu" else 1
    others = max(start or 0.0, (end or 0.0) - ours)
    if others + ours <= cpus + 0.5:
        return None
    seen = f"load average {start:.2f} at the start" if start is not None else "load average"
    if end is not None:
        seen += f", {end:.2f} at the end" if start is not None else f" {end:.2f} at the end"
    return (f"{seen} (1 min) on {cpus} CPUs, and this run used {ours} thread{'s' * (ours != 1)}: other work "
            f"shared the CPU while timing, so times can be inflated (several-fold on a small machine) and vary "
            f"between runs; rerun on an idle machine before trusting them")


def git_commit(root: Optional[str] = None) -> Dict[str, Any]:
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out: Dict[str, Any] = {"commit": None, "dirty": None}
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout
        out["dirty"] = bool(status.strip()) if out["commit"] else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def environment(device: torch.device) -> Dict[str, Any]:
    """Device name, SM count, driver/CUDA/cuDNN/torch versions, TF32 state, git commit, date and
    fastconv's build info."""
    import fastconv

    env: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_type": device.type,
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": load_average(),
        "fastconv": fastconv.__version__,
        **{f"git_{k}": v for k, v in git_commit().items()},
    }
    try:
        info = fastconv.build_info()
        env["fastconv_built_with_cuda"] = info.get("built_with_cuda")
        env["fastconv_cuda_archs"] = info.get("cuda_archs")
        env["fastconv_algorithms"] = info.get("algorithms", {}).get(device.type)
    except Exception as e:  # noqa: BLE001  (the report must still render)
        env["fastconv_build_info_error"] = repr(e)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update({
            "device": p.name,
            "sm_count": p.multi_processor_count,
            "capability": f"{p.major}.{p.minor}",
            "gpu_memory_gib": round(p.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
        drv = getattr(torch._C, "_cuda_getDriverVersion", None)
        if drv is not None:
            v = drv()
            env["cuda_driver"] = f"{v // 1000}.{(v % 1000) // 10}"
    else:
        env.update({"device": env["cpu"], "sm_count": None, "onednn": torch.backends.mkldnn.is_available()})
    return env


def published_roofs(device_name: str) -> Optional[Dict[str, Any]]:
    for key, roofs in _PUBLISHED:
        if key in device_name:
            return dict(roofs)
    return None


def measured_roofs(device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
    """Measured ceilings: a square matmul's FLOP/s in `dtype` and a large copy's bytes/s (the best
    round of each: a ceiling, not a typical rate)."""
    from fastconv.bench.timing import measure

    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = measure(lambda: torch.mm(a, b), device, warmup=2, rounds=20, max_total_s=1.0)
    numel = (1 << 27) if device.type == "cuda" else (1 << 23)
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    cp = measure(lambda: dst.copy_(src), device, warmup=2, rounds=10, max_total_s=1.0)
    return {"tflops": 2 * n**3 / mm.min / 1e12, "gbps": 2 * numel * 4 / cp.min / 1e9,
            "source": f"measured: torch.mm {n}x{n} {str(dtype).replace('torch.', '')}, copy of {numel * 4 >> 20} MiB"}


def roofs(device: torch.device, env: Dict[str, Any], dtype: torch.dtype) -> Dict[str, Any]:
    """{"peak_tflops", "peak_gbps", "source", "measured": {...}} for `dtype` on `device`: the
    published roofs where the device is known, the measured ones otherwise."""
    measured = measured_roofs(device, dtype)
    pub = published_roofs(env.get("device") or "") if device.type == "cuda" else None
    if pub is not None:
        key = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        if key == "fp32" and env.get("tf32_cudnn"):
            key = "tf32"
        return {"peak_tflops": pub[key], "peak_gbps": pub["gbps"], "source": pub["source"] + f", {key}",
                "measured": measured}
    return {"peak_tflops": measured["tflops"], "peak_gbps": measured["gbps"], "source": measured["source"],
            "measured": measured}
