"""Build and runtime facts: what was compiled, for which archs, what can run where."""

from __future__ import annotations

import platform
from typing import Any, Dict

import torch

from fastconv import _ext
from fastconv.algorithms import available_algorithms


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def build_info() -> Dict[str, Any]:
    """A dict: fastconv and torch versions, whether CUDA kernels were built and for which archs,
    the visible GPU (if any), and the algorithms available per device type."""
    from fastconv import __version__

    cuda_ok = torch.cuda.is_available()
    info: Dict[str, Any] = {
        "fastconv": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "extension_loaded": _ext._C is not None,
        "built_with_cuda": _ext.built_with_cuda(),
        "cuda_archs": _ext.cuda_arch_list(),
        "cuda_available": cuda_ok,
        "gpu": torch.cuda.get_device_name(0) if cuda_ok else None,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "emulated_cuda_device": (f"{_ext.EMU_DEVICE} (sm_{_ext.emu_arch()}; fastconv._C_emu: the CUDA binding and "
                                 "kernels on host memory, tested not measured)") if _ext.emu_available()
        else f"not built ({_ext._EMU_ERROR or 'FASTCONV_EMU=0, or a CUDA build'})",
        "algorithms": {"cpu": available_algorithms("cpu"), "cuda": available_algorithms("cuda")},
    }
    if _ext.emu_available():
        info["algorithms"][_ext.EMU_DEVICE] = available_algorithms(_ext.EMU_DEVICE)
    return info


def format_build_info(info: Dict[str, Any]) -> str:
    width = max(len(k) for k in info)
    lines = []
    for k, v in info.items():
        if isinstance(v, dict):
            v = "; ".join(f"{dev}: {', '.join(algos) if algos else '(none)'}" for dev, algos in v.items())
        elif isinstance(v, list):
            v = ", ".join(v) if v else "(none)"
        lines.append(f"{k:<{width}}  {v}")
    return "\n".join(lines)
