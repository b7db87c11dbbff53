"""Plans: which algorithm "auto" uses for a convolution, remembered per device and problem.

A plan is keyed by the device name (GPU name and compute capability, or the CPU model and thread
count) and the problem key: dtype, layout (NCHW/NHWC), N, C, H, W, K, R, S, stride, padding,
dilation, groups and direction. Only the forward (fprop) is tuned; dgrad and wgrad use the forward's
algorithm, as conv2d's backward always has.

The in-memory table is the one place plans live in a process; it is filled by the autotuner, by the
on-disk cache (read when fastconv.backends.autotune is on) and by load(). Use:

    fastconv.plans.save("plans.json")      # everything tuned or loaded so far, for offline tuning
    fastconv.plans.load("plans.json")      # e.g. in deployment, with autotune off
    fastconv.plans.entries()               # [(device, key, Plan), ...]
    fastconv.plans.clear()

On-disk cache: one JSON file per device name and fastconv/torch/CUDA version in
fastconv.backends.cache_dir (FASTCONV_CACHE_DIR, default ~/.cache/fastconv), e.g.
`NVIDIA-H100-80GB-HBM3-sm_90__fastconv-0.1.0__torch-2.11.0__cuda-13.0.json`. It is written
atomically (a temporary file, then os.replace) after every tuning; a corrupt file, or one written
for another device or version, is ignored with a warning. FASTCONV_CACHE=0 (or
fastconv.backends.cache = False) disables it.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from fastconv.algorithms import ConvProblem
from fastconv.info import cpu_name

FORMAT = "fastconv-plans"
FORMAT_VERSION = 1


@dataclass
class Plan:
    """The algorithm chosen for one (device, problem key), and how it was chosen.

    source: "tuned" (timed here), "disk" (read from the on-disk cache), "loaded" (plans.load()).
    times_ms: median forward time per timed candidate. rejected: candidate -> why it was excluded
    (could not implement, failed, or did not match the reference)."""

    algo: str
    source: str = "tuned"
    times_ms: Dict[str, float] = field(default_factory=dict)
    rejected: Dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    @staticmethod
    def from_json(d: Any, source: str) -> "Plan":
        if not isinstance(d, dict) or not isinstance(d.get("algo"), str):
            raise ValueError(f"not a plan: {d!r}")
        times = {str(k): float(v) for k, v in dict(d.get("times_ms", {})).items()}
        rejected = {str(k): str(v) for k, v in dict(d.get("rejected", {})).items()}
        return Plan(d["algo"], source, times, rejected, str(d.get("created", "")))


# ---- keys ------------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def problem_key(p: ConvProblem, direction: str = "fprop") -> str:
    """A human-readable key, e.g.
    'float32 NCHW N8 C64 H28 W28 K64 R3 S3 stride1x1 pad1x1 dil1x1 g1 fprop'."""
    return (f"{_dtype_name(p.dtype)} {p.layout} N{p.N} C{p.C} H{p.H} W{p.W} K{p.K} R{p.R} S{p.S} "
            f"stride{p.stride[0]}x{p.stride[1]} pad{p.padding[0]}x{p.padding[1]} "
            f"dil{p.dilation[0]}x{p.dilation[1]} g{p.groups} {direction}")


# Read once at import: a constant of the machine (and torch.compile cannot trace file reads).
_CPU_MODEL = cpu_name()


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"


def device_name(p: ConvProblem) -> str:
    """The name plans are filed under: the GPU's name and compute capability, or the CPU model and
    torch's thread count (timings depend on both)."""
    if p.device_type == "cuda" and getattr(p, "emulated", False):
        from fastconv import _ext

        return f"fastconv emulated CUDA device sm_{_ext.emu_arch()}"
    if p.device_type == "cuda":
        if not torch.cuda.is_available():
            return "cuda (unavailable)"
        index = p.device_index if p.device_index is not None else torch.cuda.current_device()
        return _cuda_name(index)
    if p.device_type == "cpu":
        return f"cpu {_CPU_MODEL} {torch.get_num_threads()} threads"
    return p.device_type


def versions() -> Dict[str, str]:
    from fastconv import __version__

    return {"fastconv": __version__, "torch": torch.__version__.split("+")[0],
            "cuda": torch.version.cuda or "none"}


def _sanitise(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "device"


def cache_file(device: str, cache_dir: Optional[str] = None) -> str:
    """Path of the on-disk cache file for `device` under the running fastconv/torch/CUDA versions."""
    from fastconv import backends

    v = versions()
    name = f"{_sanitise(device)}__fastconv-{v['fastconv']}__torch-{v['torch']}__cuda-{v['cuda']}.json"
    return os.path.join(cache_dir or backends.cache_dir, name)


# ---- the in-memory table ---------------------------------------------------------------------------


class PlanCache:
    """Plans by (device name, problem key), plus which on-disk files were already read."""

    def __init__(self) -> None:
        self._plans: Dict[Tuple[str, str], Plan] = {}
        self._files_read: Dict[str, bool] = {}
        # Decisions already made (by fastconv.autotune.select), valid until the table changes.
        self.memo: Dict[Any, Any] = {}

    def get(self, device: str, key: str) -> Optional[Plan]:
        return self._plans.get((device, key))

    def put(self, device: str, key: str, plan: Plan) -> None:
        self._plans[(device, key)] = plan
        self.memo.clear()

    def drop(self, device: str, key: str) -> None:
        self._plans.pop((device, key), None)
        self.memo.clear()

    def entries(self) -> List[Tuple[str, str, Plan]]:
        return [(d, k, p) for (d, k), p in sorted(self._plans.items())]

    def clear(self) -> None:
        self._plans.clear()
        self._files_read.clear()
        self.memo.clear()

    def read_disk_once(self, device: str) -> None:
        """Merges the on-disk cache for `device` into the table the first time it is asked for
        (plans already in memory win)."""
        path = cache_file(device)
        if self._files_read.get(path):
            return
        self._files_read[path] = True
        for key, plan in read_cache_file(path, device).items():
            self._plans.setdefault((device, key), plan)
        self.memo.clear()

    def write_disk(self, device: str) -> None:
        """Writes every plan of `device` tuned here or read from disk to its cache file."""
        plans = {k: p for (d, k), p in self._plans.items() if d == device and p.source in ("tuned", "disk")}
        try:
            write_cache_file(cache_file(device), device, plans)
        except OSError as e:
            warnings.warn(f"fastconv: could not write the plan cache {cache_file(device)}: {e}", stacklevel=3)


# The process's plan table (a cache object, not kernel state: kernels never read it).
_table = PlanCache()


def table() -> PlanCache:
    return _table


def entries() -> List[Tuple[str, str, Plan]]:
    """[(device name, problem key, Plan), ...] for every plan in memory."""
    return _table.entries()


def clear() -> None:
    """Forgets every plan in memory (the on-disk cache is untouched and will be read again)."""
    _table.clear()


# ---- files -----------------------------------------------------------------------------------------


def _document(plans_by_device: Dict[str, Dict[str, Plan]]) -> Dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **versions(),
            "devices": {dev: {k: p.to_json() for k, p in sorted(plans.items())}
                        for dev, plans in sorted(plans_by_device.items())}}


def _atomic_write_json(path: str, doc: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fastconv-plans-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_document(path: str) -> Dict[str, Any]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("devices"), dict):
        raise ValueError("not a fastconv plan file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
    return doc


def _parse_plans(doc: Dict[str, Any], device: str, source: str) -> Dict[str, Plan]:
    raw = doc["devices"].get(device, {})
    if not isinstance(raw, dict):
        raise ValueError(f"the plans of {device!r} are not a JSON object")
    return {str(k): Plan.from_json(v, source) for k, v in raw.items()}


def read_cache_file(path: str, device: str) -> Dict[str, Plan]:
    """The plans in on-disk cache file `path` for `device`; {} with a warning when the file is corrupt
    or was written for another device or other versions; {} silently when it does not exist."""
    if not os.path.exists(path):
        return {}
    try:
        doc = _read_document(path)
        v = versions()
        stale = [f"{k} {doc.get(k)!r} != {v[k]!r}" for k in ("fastconv", "torch", "cuda") if doc.get(k) != v[k]]
        if set(doc["devices"]) != {device}:
            stale.append(f"devices {sorted(doc['devices'])} != [{device!r}]")
        if stale:
            warnings.warn(f"fastconv: ignoring the stale plan cache {path} ({'; '.join(stale)})", stacklevel=4)
            return {}
        return _parse_plans(doc, device, "disk")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        warnings.warn(f"fastconv: ignoring the corrupt plan cache {path}: {type(e).__name__}: {e}", stacklevel=4)
        return {}


def write_cache_file(path: str, device: str, plans: Dict[str, Plan]) -> None:
    _atomic_write_json(path, _document({device: plans}))


def save(path: Union[str, os.PathLike]) -> str:
    """Writes every plan in memory (all devices) to `path` as JSON, atomically; returns the path."""
    by_device: Dict[str, Dict[str, Plan]] = {}
    for dev, key, plan in _table.entries():
        by_device.setdefault(dev, {})[key] = plan
    path = os.fspath(path)
    _atomic_write_json(path, _document(by_device))
    return path


def load(path: Union[str, os.PathLike], *, strict_versions: bool = False) -> int:
    """Reads plans written by save() into memory (they replace plans with the same key) and returns
    how many were read. Plans from other versions are loaded with a warning (or raise with
    strict_versions=True); a corrupt file raises ValueError."""
    path = os.fspath(path)
    try:
        doc = _read_document(path)
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"fastconv.plans.load: {path} is not a valid plan file: {e}") from e
    v = versions()
    diff = [f"{k} {doc.get(k)!r} != {v[k]!r}" for k in ("fastconv", "torch", "cuda") if doc.get(k) != v[k]]
    if diff:
        msg = f"fastconv.plans.load: {path} was written by other versions ({'; '.join(diff)})"
        if strict_versions:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    try:
        parsed = {str(dev): _parse_plans(doc, dev, "loaded") for dev in doc["devices"]}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"fastconv.plans.load: {path} is not a valid plan file: {e}") from e
    for device, plans in parsed.items():
        for key, plan in plans.items():
            _table.put(device, key, plan)
    return sum(len(p) for p in parsed.values())


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["Plan", "PlanCache", "problem_key", "device_name", "cache_file", "save", "load", "entries", "clear"]
