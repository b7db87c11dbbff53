"""Plans: which algorithm "auto" uses for a convolution, remembered per device and problem.

A plan is keyed by the device name (GPU name and compute capability, or the CPU model and thread
count) and the problem key: dtype, layout (NCHW/NHWC), N, C, H, W, K, R, S, stride, padding,
dilation, groups and direction. Only the forward (fprop) is tuned; dgrad and wgrad use the forward's
algorithm, as conv2d's backward always has.

The in-memory table is the one place plans live in a process; it is filled by the autotuner, by the
on-disk cache (read when fastconv.backends.autotune is on) and by load(). It may be used from several
threads at once (one lock guards it; readers get snapshots). Use:

    fastconv.plans.save("plans.json")      # everything tuned or loaded so far, for offline tuning
    fastconv.plans.load("plans.json")      # e.g. in deployment, with autotune off
    fastconv.plans.entries()               # [(device, key, Plan), ...]
    fastconv.plans.clear()

On-disk cache: per device name and fastconv/torch/CUDA version, in fastconv.backends.cache_dir
(FASTCONV_CACHE_DIR, default ~/.cache/fastconv), a JSON file in save()'s format, e.g.
`NVIDIA-H100-80GB-HBM3-sm_90__fastconv-0.1.0__torch-2.11.0__cuda-13.0.json`, and beside it its
journal, `<that name>.journal`: one JSON line {"device", "key", "plan"} per plan tuned since the JSON
file was last rewritten. Reading merges the two (a later line wins over an earlier one and over the
JSON file). Several threads and processes may tune into one cache dir:
  - a new plan is appended to the journal (one write of one line, under an exclusive flock of the
    journal, which is also the cache's lock file) before the tuning call returns, so a crash of the
    process afterwards loses nothing; a crash during the write leaves at most a torn last line,
    which readers skip and the next append cuts off. There is no fsync: an OS crash
    or a power loss may lose the plans of the last seconds (they are tuned again).
  - compaction folds the journal into the JSON file: under the lock, read the file and the journal,
    merge, write a temporary file in the same dir, os.replace it over the file, empty the journal.
    It runs when a journal grows past _JOURNAL_COMPACT_BYTES (64 KiB, a few hundred plans), when the
    JSON file was found corrupt or stale, at the exit of a process that added plans, and on
    compact_cache(). Plans of other processes are merged, never overwritten.
  - readers take a shared lock, so they never see a half-done compaction.
The lock is fcntl.flock (POSIX; on NFS as far as the kernel emulates it); where fcntl does not exist
(Windows) only threads of one process are serialised. Files are created like ordinary files
(0666 minus the umask). A corrupt file (invalid or deeply nested JSON, not a plan file) or one
written for another device or version is ignored with a warning and replaced on the next write;
corrupt journal lines are skipped with a warning. FASTCONV_CACHE=0 (or
fastconv.backends.cache = False) disables the cache.
"""

from __future__ import annotations

import atexit as _atexit
import contextlib as _contextlib
import datetime as _datetime
import functools as _functools
import json as _json
import os as _os
import re as _re
import threading as _threading
import warnings as _warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch

from fastconv.algorithms import ConvProblem
from fastconv.info import cpu_name

try:
    import fcntl as _fcntl
except ImportError:  # not POSIX: no lock between processes
    _fcntl = None

FORMAT = "fastconv-plans"
FORMAT_VERSION = 1

# A journal longer than this is folded into its JSON file by the write that crosses it. Rewriting the
# JSON file costs O(all plans); folding every few hundred plans keeps each plan's share small.
_JOURNAL_COMPACT_BYTES = 64 * 1024


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


@_functools.lru_cache(maxsize=None)
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
    return _re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "device"


def cache_file(device: str, cache_dir: Optional[str] = None) -> str:
    """Path of the on-disk cache file for `device` under the running fastconv/torch/CUDA versions."""
    from fastconv import backends

    v = versions()
    name = f"{_sanitise(device)}__fastconv-{v['fastconv']}__torch-{v['torch']}__cuda-{v['cuda']}.json"
    return _os.path.join(cache_dir or backends.cache_dir, name)


def journal_file(device: str, cache_dir: Optional[str] = None) -> str:
    """Path of the journal (and lock file) beside cache_file(device, cache_dir)."""
    return cache_file(device, cache_dir) + ".journal"


# ---- the in-memory table ---------------------------------------------------------------------------


class PlanCache:
    """Plans by (device name, problem key), plus which on-disk files were already read. Thread-safe:
    one re-entrant lock guards every field; entries() and plans_of() return snapshots."""

    def __init__(self) -> None:
        self._lock = _threading.RLock()
        self._plans: Dict[Tuple[str, str], Plan] = {}
        self._files_read: Dict[str, bool] = {}
        self._replace_soon: Set[str] = set()  # cache files found corrupt or stale: the next write replaces them
        self._written: Dict[str, str] = {}  # cache file -> device, for files this process added plans to
        self._failed: Dict[Tuple[str, str], str] = {}  # (device, key) -> why tuning it failed in this process
        # Decisions already made (by fastconv.autotune.select), valid until the table changes;
        # `generation` counts the changes, so a decision made before one is not remembered after it.
        self.memo: Dict[Any, Any] = {}
        self.generation = 0

    def _changed(self) -> None:
        self.memo.clear()
        self.generation += 1

    def get(self, device: str, key: str) -> Optional[Plan]:
        with self._lock:
            return self._plans.get((device, key))

    def put(self, device: str, key: str, plan: Plan) -> None:
        with self._lock:
            self._plans[(device, key)] = plan
            self._failed.pop((device, key), None)
            self._changed()

    def drop(self, device: str, key: str) -> None:
        with self._lock:
            self._plans.pop((device, key), None)
            self._failed.pop((device, key), None)
            self._changed()

    def entries(self) -> List[Tuple[str, str, Plan]]:
        with self._lock:
            items = list(self._plans.items())
        return [(d, k, p) for (d, k), p in sorted(items)]

    def plans_of(self, device: str) -> Dict[str, Plan]:
        with self._lock:
            return {k: p for (d, k), p in self._plans.items() if d == device}

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._files_read.clear()
            self._failed.clear()
            self._changed()

    def remember(self, memo_key: Any, choice: Any, generation: int) -> None:
        """Remembers a decision made while the table was at `generation` (if it still is)."""
        with self._lock:
            if self.generation != generation:
                return
            if len(self.memo) > 4096:
                self.memo.clear()
            self.memo[memo_key] = choice

    def failed(self, device: str, key: str) -> Optional[str]:
        """Why tuning (device, key) failed earlier in this process, or None."""
        with self._lock:
            return self._failed.get((device, key))

    def mark_failed(self, device: str, key: str, why: str) -> None:
        with self._lock:
            self._failed[(device, key)] = why

    def read_disk_once(self, device: str) -> None:
        """Merges the on-disk cache for `device` into the table the first time it is asked for
        (plans already in memory win)."""
        path = cache_file(device)
        with self._lock:
            if self._files_read.get(path):
                return
            self._files_read[path] = True
            found, bad = _read_cache(path, device)
            if bad:
                self._replace_soon.add(path)
            for key, plan in found.items():
                self._plans.setdefault((device, key), plan)
            self._changed()

    def store_disk(self, device: str, key: str, plan: Plan) -> None:
        """Adds one plan to the on-disk cache of `device` (appended to its journal; see the module
        docstring). An OSError becomes a warning."""
        path = cache_file(device)
        with self._lock:
            replace = path in self._replace_soon
            self._replace_soon.discard(path)
            self._written[path] = device
        try:
            _append(path, device, key, plan, compact=replace)
        except OSError as e:
            _warnings.warn(f"fastconv: could not write the plan cache {path}: {e}", stacklevel=3)

    def written(self) -> Dict[str, str]:
        """{cache file: device} for every cache file this process added plans to."""
        with self._lock:
            return dict(self._written)


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


def compact_cache() -> None:
    """Folds the journal of every cache file this process added plans to into its JSON file now
    (otherwise done when a journal grows past its limit and when the process exits)."""
    for path, device in _table.written().items():
        with _locked(path + ".journal", exclusive=True, create=False) as fd:
            if fd is not None and _os.fstat(fd).st_size > 0:  # (a deleted cache dir stays deleted)
                _compact_locked(fd, path, device)


def _compact_at_exit() -> None:
    try:
        compact_cache()
    except Exception as e:  # the journal still holds every plan: nothing is lost
        _warnings.warn(f"fastconv: could not compact the plan cache at exit: {type(e).__name__}: {e}",
                       stacklevel=1)


_atexit.register(_compact_at_exit)


def _after_fork_in_child() -> None:
    # A lock another thread held at fork() would never be released in the child.
    global _files_lock
    _files_lock = _threading.Lock()
    _table._lock = _threading.RLock()


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- files -----------------------------------------------------------------------------------------

# Exceptions that mean "this is not a valid plan file" (RecursionError: deeply nested JSON).
_CORRUPT = (ValueError, TypeError, KeyError, AttributeError, RecursionError)

_O_BINARY = getattr(_os, "O_BINARY", 0)  # Windows: no newline translation

# Serialises this process's threads on the cache files (where there is no flock, the only lock).
_files_lock = _threading.Lock()


@_contextlib.contextmanager
def _locked(journal: str, exclusive: bool, create: bool) -> Iterator[Optional[int]]:
    """Opens `journal` and holds the cache's lock on it (flock, shared or exclusive) and this
    process's file lock; yields the file descriptor, or None when it does not exist and not create."""
    with _files_lock:
        flags = (_os.O_RDWR | _os.O_APPEND if exclusive else _os.O_RDONLY) | _O_BINARY
        if create:
            _os.makedirs(_os.path.dirname(_os.path.abspath(journal)), exist_ok=True)
            fd = _os.open(journal, flags | _os.O_CREAT, 0o666)  # 0666 minus the umask, like open(path, "w")
        else:
            try:
                fd = _os.open(journal, flags)
            except FileNotFoundError:
                yield None
                return
        try:
            if _fcntl is not None:
                _fcntl.flock(fd, _fcntl.LOCK_EX if exclusive else _fcntl.LOCK_SH)
            yield fd
        finally:
            _os.close(fd)  # also releases the flock


def _read_all(fd: int) -> bytes:
    _os.lseek(fd, 0, _os.SEEK_SET)
    chunks = []
    while True:
        chunk = _os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_os.write(fd, view):]


def _document(plans_by_device: Dict[str, Dict[str, Plan]]) -> Dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **versions(),
            "devices": {dev: {k: p.to_json() for k, p in sorted(plans.items())}
                        for dev, plans in sorted(plans_by_device.items())}}


def _atomic_write_json(path: str, doc: Dict[str, Any]) -> None:
    directory = _os.path.dirname(_os.path.abspath(path))
    _os.makedirs(directory, exist_ok=True)
    tmp = _os.path.join(directory, f".{_os.path.basename(path)}.{_os.getpid()}.{_os.urandom(6).hex()}.tmp")
    # os.open with 0666 applies the umask, like open(path, "w") (tempfile.mkstemp would make it 0600).
    fd = _os.open(tmp, _os.O_WRONLY | _os.O_CREAT | _os.O_EXCL, 0o666)
    try:
        with _os.fdopen(fd, "w") as f:
            _json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
        _os.replace(tmp, path)
    except BaseException:
        try:
            _os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_document(path: str) -> Dict[str, Any]:
    with open(path) as f:
        doc = _json.load(f)
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


def _read_json_plans(path: str, device: str) -> Tuple[Dict[str, Plan], Optional[str]]:
    """The plans for `device` in the JSON file `path` ({} if it does not exist), and None or why the
    file is ignored (the start of a warning)."""
    if not _os.path.exists(path):
        return {}, None
    try:
        doc = _read_document(path)
        v = versions()
        stale = [f"{k} {doc.get(k)!r} != {v[k]!r}" for k in ("fastconv", "torch", "cuda") if doc.get(k) != v[k]]
        if set(doc["devices"]) != {device}:
            stale.append(f"devices {sorted(doc['devices'])} != [{device!r}]")
        if stale:
            return {}, f"fastconv: ignoring the stale plan cache {path} ({'; '.join(stale)})"
        return _parse_plans(doc, device, "disk"), None
    except (OSError,) + _CORRUPT as e:
        return {}, f"fastconv: ignoring the corrupt plan cache {path}: {type(e).__name__}: {str(e)[:200]}"


def _journal_line(device: str, key: str, plan: Plan) -> bytes:
    # ASCII JSON without indentation: one line, whatever the strings hold.
    return (_json.dumps({"device": device, "key": key, "plan": plan.to_json()}, separators=(",", ":")) + "\n").encode()


def _parse_journal(data: bytes, device: str) -> Tuple[Dict[str, Plan], List[str]]:
    """The plans in journal contents `data` (a later line wins) and a note per corrupt line. A last
    line without its newline is a write cut short by a crash and is skipped silently."""
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or the torn end of an interrupted append
    found: Dict[str, Plan] = {}
    bad: List[str] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = _json.loads(line)
            if not isinstance(d, dict) or not isinstance(d.get("key"), str):
                raise ValueError("not a journal entry")
            if d.get("device") != device:
                raise ValueError(f"device {d.get('device')!r} != {device!r}")
            found[d["key"]] = Plan.from_json(d.get("plan"), "disk")
        except _CORRUPT as e:
            bad.append(f"line {i}: {type(e).__name__}: {str(e)[:200]}")
    return found, bad


def _read_cache(path: str, device: str) -> Tuple[Dict[str, Plan], bool]:
    """The plans for `device` in cache file `path` and its journal, warning about what is ignored;
    and whether the JSON file is corrupt or stale (so the next write replaces it)."""
    journal = path + ".journal"
    try:
        with _locked(journal, exclusive=False, create=False) as fd:
            found, why = _read_json_plans(path, device)
            data = _read_all(fd) if fd is not None else b""
    except OSError as e:
        _warnings.warn(f"fastconv: could not read the plan cache {path}: {e}", stacklevel=5)
        return {}, False
    logged, bad = _parse_journal(data, device)
    if why is not None:
        _warnings.warn(why, stacklevel=5)
    if bad:
        _warnings.warn(f"fastconv: ignoring {len(bad)} corrupt plan cache journal line(s) in {journal} "
                       f"({bad[0]})", stacklevel=5)
    found.update(logged)
    return found, why is not None


def _compact_locked(fd: int, path: str, device: str) -> None:
    """Folds journal `fd` (whose exclusive lock the caller holds) into the JSON file `path`."""
    found, _ = _read_json_plans(path, device)  # a corrupt or stale file was warned about when read
    logged, _ = _parse_journal(_read_all(fd), device)
    found.update(logged)
    _atomic_write_json(path, _document({device: found}))
    _os.ftruncate(fd, 0)  # a crash before this only leaves lines that repeat the JSON file


def _append(path: str, device: str, key: str, plan: Plan, compact: bool = False) -> None:
    line = _journal_line(device, key, plan)
    with _locked(path + ".journal", exclusive=True, create=True) as fd:
        size = _os.fstat(fd).st_size
        if size:
            _os.lseek(fd, size - 1, _os.SEEK_SET)
            if _os.read(fd, 1) != b"\n":  # the torn end of an interrupted append (rare): cut it off
                size = _read_all(fd).rfind(b"\n") + 1
                _os.ftruncate(fd, size)
        _write_all(fd, line)
        if compact or size + len(line) > _JOURNAL_COMPACT_BYTES:
            _compact_locked(fd, path, device)


def read_cache_file(path: str, device: str) -> Dict[str, Plan]:
    """The plans in on-disk cache file `path` and its journal for `device`; what is corrupt or was
    written for another device or other versions is ignored with a warning; {} silently when
    neither file exists."""
    return _read_cache(path, device)[0]


def save(path: Union[str, _os.PathLike]) -> str:
    """Writes every plan in memory (all devices) to `path` as JSON, atomically; returns the path."""
    by_device: Dict[str, Dict[str, Plan]] = {}
    for dev, key, plan in _table.entries():
        by_device.setdefault(dev, {})[key] = plan
    path = _os.fspath(path)
    _atomic_write_json(path, _document(by_device))
    return path


def load(path: Union[str, _os.PathLike], *, strict_versions: bool = False) -> int:
    """Reads plans written by save() into memory (they replace plans with the same key) and returns
    how many were read. Plans from other versions are loaded with a warning (or raise with
    strict_versions=True); a corrupt file raises ValueError."""
    path = _os.fspath(path)
    try:
        doc = _read_document(path)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"fastconv.plans.load: {path} is not a valid plan file: {type(e).__name__}: "
                         f"{str(e)[:200]}") from e
    v = versions()
    diff = [f"{k} {doc.get(k)!r} != {v[k]!r}" for k in ("fastconv", "torch", "cuda") if doc.get(k) != v[k]]
    if diff:
        msg = f"fastconv.plans.load: {path} was written by other versions ({'; '.join(diff)})"
        if strict_versions:
            raise ValueError(msg)
        _warnings.warn(msg, stacklevel=2)
    try:
        parsed = {str(dev): _parse_plans(doc, dev, "loaded") for dev in doc["devices"]}
    except _CORRUPT as e:
        raise ValueError(f"fastconv.plans.load: {path} is not a valid plan file: {e}") from e
    for device, plans in parsed.items():
        for key, plan in plans.items():
            _table.put(device, key, plan)
    return sum(len(p) for p in parsed.values())


def now() -> str:
    return _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["Plan", "PlanCache", "problem_key", "device_name", "versions", "cache_file", "journal_file",
           "read_cache_file", "save", "load", "entries", "clear", "compact_cache", "table", "now"]
