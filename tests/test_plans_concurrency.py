"""The plan table and its on-disk cache under concurrency and failure: threads and processes tuning
into one cache dir, batched (journalled) writes, file permissions, hostile cache files, and tuning
that fails (a reference or candidate that raises, an expanded input the reference must not copy).
CPU only, tiny shapes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from fastconv import backends, plans
from fastconv.algorithms import ConvProblem
from fastconv.autotune import select

from helpers import assert_close

at = sys.modules["fastconv.autotune"]  # the module (fastconv.autotune is the function)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))


@pytest.fixture
def tuning(tmp_path):
    """Autotuning on, one timed run per candidate, a private cache dir, an empty plan table."""
    plans.clear()
    cache = tmp_path / "cache"
    with backends.flags(autotune=True, cache=True, cache_dir=str(cache), tune_warmup=0, tune_iters=1):
        yield cache
    plans.clear()


def _problem(x, w, padding=1):
    return ConvProblem.from_tensors(x, w, (1, 1), (padding, padding), (1, 1), 1)


def _on_disk(device):
    """The plans a fresh process would read for `device` (the JSON file and its journal)."""
    return plans.read_cache_file(plans.cache_file(device), device)


def _quick_plan(monkeypatch):
    """Makes tuning instant: every tuning returns the same plan without running anything."""
    monkeypatch.setattr(at, "tune_problem", lambda p, x, w, b, algos: (plans.Plan(algos[0], "tuned", {algos[0]: 1.0}),
                                                                         {}))


# ---- threads ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compact_every_write", [False, True])
def test_threads_tuning_distinct_shapes_into_one_cache(tuning, monkeypatch, compact_every_write):
    if compact_every_write:
        monkeypatch.setattr(plans, "_JOURNAL_COMPACT_BYTES", 0, raising=False)
    x0, w0 = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    device = plans.device_name(_problem(x0, w0))
    # Many plans in memory make every pass over the table long; a tiny switch interval makes the
    # threads interleave inside it.
    for i in range(20000):
        plans.table().put(device, f"filler {i}", plans.Plan("direct", "loaded"))
    n_threads, per_thread = 4, 4
    barrier = threading.Barrier(n_threads)
    errors, keys = [], []

    def work(t):
        try:
            barrier.wait()
            for j in range(per_thread):
                x = torch.randn(1, 2, 4 + j, 4 + t)
                FF.conv2d(x, w0, padding=1)
                keys.append(plans.problem_key(_problem(x, w0)))
        except BaseException as e:  # noqa: B036  (reported to the main thread)
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert len(set(keys)) == n_threads * per_thread
    on_disk = _on_disk(device)
    assert set(keys) <= set(on_disk) and not any(k.startswith("filler") for k in on_disk)
    for k in keys:
        assert plans.table().get(device, k).source == "tuned"


def test_table_snapshots_while_another_thread_puts():
    table = plans.PlanCache()
    stop = threading.Event()
    errors = []

    def writer():
        i = 0
        while not stop.is_set():
            table.put("dev", f"k{i}", plans.Plan("direct"))
            table.drop("dev", f"k{i - 50}")
            i += 1

    th = threading.Thread(target=writer)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    th.start()
    try:
        for _ in range(200):
            try:
                table.entries()
                table.plans_of("dev")
            except RuntimeError as e:
                errors.append(e)
    finally:
        stop.set()
        th.join()
        sys.setswitchinterval(old)
    assert errors == []


# ---- processes --------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, os, sys, time
    import torch
    import fastconv.functional as FF
    from fastconv import backends, plans
    from fastconv.algorithms import ConvProblem

    idx, cache_dir, sync_dir, compact = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    torch.set_num_threads(1)
    if compact:
        plans._JOURNAL_COMPACT_BYTES = 0  # every write is a read-merge-replace of the JSON file
    open(os.path.join(sync_dir, f"ready{idx}"), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(sync_dir)) < 2 and time.time() < deadline:
        time.sleep(0.005)
    keys = []
    w = torch.randn(2, 2, 3, 3)
    with backends.flags(autotune=True, cache=True, cache_dir=cache_dir, tune_warmup=0, tune_iters=1):
        for h in range(8):
            x = torch.randn(1, 2, 4 + h, 4 + idx)
            FF.conv2d(x, w, padding=1)
            p = ConvProblem.from_tensors(x, w, (1, 1), (1, 1), (1, 1), 1)
            keys.append(plans.problem_key(p))
    print(json.dumps({"device": plans.device_name(p), "keys": keys}))
""")


def test_processes_tuning_into_one_cache_merge(tmp_path):
    cache, sync = tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # One process appends to the journal, the other rewrites the JSON file on every plan.
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(i), str(cache), str(sync), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    device = results[0]["device"]
    assert results[1]["device"] == device
    expected = set(results[0]["keys"]) | set(results[1]["keys"])
    assert len(expected) == 16
    plans.clear()
    with backends.flags(cache_dir=str(cache)):
        assert set(_on_disk(device)) == expected
        # Both processes exited normally, so each folded its journal into the JSON file.
        with open(plans.cache_file(device)) as f:
            assert set(json.load(f)["devices"][device]) == expected
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]


# ---- batched writes, durability, permissions ---------------------------------------------------------

def test_new_plans_are_appended_not_rewritten(tuning, monkeypatch):
    _quick_plan(monkeypatch)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a, **k: (replaced.append(a), real_replace(*a, **k))[1])
    w = torch.randn(2, 2, 1, 1)
    keys = []
    device = None
    for i in range(100):
        x = torch.randn(1, 2, 1 + i % 10, 1 + i // 10)
        p = _problem(x, w, padding=0)
        assert select(p, x, w).source == "tuned"
        device, key = plans.device_name(p), plans.problem_key(p)
        keys.append(key)
        if i in (0, 57):  # each plan is on disk as soon as it is tuned: a crash loses nothing
            assert key in _on_disk(device)
    # 100 plans: no rewrite of the whole file (the journal is folded in only past its size limit).
    assert len(replaced) == 0
    assert set(_on_disk(device)) == set(keys)
    journal = plans.journal_file(device)
    with open(journal) as f:
        lines = f.read().splitlines()
    assert len(lines) == 100 and all(json.loads(line)["key"] in keys for line in lines)


def test_journal_is_compacted_past_its_size_limit(tuning, monkeypatch):
    _quick_plan(monkeypatch)
    monkeypatch.setattr(plans, "_JOURNAL_COMPACT_BYTES", 2000)
    w = torch.randn(2, 2, 1, 1)
    keys = set()
    for i in range(30):
        x = torch.randn(1, 2, 1, 1 + i)
        p = _problem(x, w, padding=0)
        select(p, x, w)
        keys.add(plans.problem_key(p))
    device = plans.device_name(p)
    assert os.path.getsize(plans.journal_file(device)) <= 2000
    with open(plans.cache_file(device)) as f:
        in_json = set(json.load(f)["devices"][device])
    assert 0 < len(in_json) < 30 and set(_on_disk(device)) == keys
    plans.compact_cache()
    assert os.path.getsize(plans.journal_file(device)) == 0
    with open(plans.cache_file(device)) as f:
        assert set(json.load(f)["devices"][device]) == keys


def test_a_torn_journal_line_is_skipped(tuning, monkeypatch):
    _quick_plan(monkeypatch)
    w = torch.randn(2, 2, 1, 1)
    x = torch.randn(1, 2, 3, 3)
    p = _problem(x, w, padding=0)
    select(p, x, w)
    device = plans.device_name(p)
    with open(plans.journal_file(device), "a") as f:
        f.write('{"device": "torn by a cr')  # a crash in the middle of an append
    plans.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(_on_disk(device)) == {plans.problem_key(p)}  # skipped silently
        x2 = torch.randn(1, 2, 4, 4)
        select(_problem(x2, w, padding=0), x2, w)  # cuts the torn line off and appends its own
        plans.clear()
        assert set(_on_disk(device)) == {plans.problem_key(p), plans.problem_key(_problem(x2, w, padding=0))}


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_cache_files_honour_the_umask(tuning, tmp_path, umask):
    old = os.umask(umask)
    try:
        x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
        select(_problem(x, w), x, w)
        plans.compact_cache()
        saved = plans.save(tmp_path / "saved.json")
    finally:
        os.umask(old)
    files = [os.path.join(tuning, n) for n in os.listdir(tuning)] + [saved]
    assert len(files) == 3  # the JSON file, its journal, the saved file
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


# ---- hostile cache files ------------------------------------------------------------------------------

def test_deeply_nested_cache_file_is_ignored_with_a_warning(tuning):
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    p = _problem(x, w)
    os.makedirs(tuning, exist_ok=True)
    with open(plans.cache_file(plans.device_name(p)), "w") as f:
        f.write("[" * 100000)
    with pytest.warns(UserWarning, match="corrupt plan cache"):
        y = FF.conv2d(x, w, padding=1)
    assert_close(y, F.conv2d(x, w, padding=1))
    assert select(p, x, w).source == "plan"
    # The next write replaces the corrupt file.
    plans.compact_cache()
    plans.clear()
    assert plans.problem_key(p) in _on_disk(plans.device_name(p))


def test_corrupt_journal_lines_are_ignored_with_a_warning(tuning, monkeypatch):
    _quick_plan(monkeypatch)
    w = torch.randn(2, 2, 1, 1)
    x = torch.randn(1, 2, 3, 3)
    p = _problem(x, w, padding=0)
    select(p, x, w)
    device = plans.device_name(p)
    with open(plans.journal_file(device), "a") as f:
        f.write("[" * 100000 + "\n" + '{"device": "x", "key": 1}\n' + "not json\n")
    plans.clear()
    with pytest.warns(UserWarning, match="corrupt plan cache"):
        assert set(_on_disk(device)) == {plans.problem_key(p)}


# ---- tuning that fails ----------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CPU out of memory"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_a_failing_reference_falls_back_to_the_heuristic(tuning, monkeypatch, error):
    def raising(*a, **k):
        raise error

    monkeypatch.setattr(at, "_reference", raising)
    x, w, b = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3)
    with pytest.warns(UserWarning, match="tuning failed"):
        y = FF.conv2d(x, w, b, padding=1)
    assert_close(y, F.conv2d(x, w, b, padding=1))
    choice = select(_problem(x, w), x, w, b)
    assert choice.source == "heuristic" and type(error).__name__ in choice.tuning
    assert plans.entries() == []


def test_a_candidate_failing_after_its_first_run_is_excluded(tuning, monkeypatch):
    from fastconv import algorithms

    calls = []

    def flaky(x, w, b, *a):
        calls.append(1)
        if len(calls) > 1:
            raise MemoryError()
        return F.conv2d(x, w, b, *a)

    algorithms.register_algorithm("cpu", "flaky_fake", lambda p: None, run=flaky)
    try:
        monkeypatch.setattr(at, "_PRUNE_FACTOR", float("inf"))
        x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
        with backends.flags(tune_iters=2):
            choice = select(_problem(x, w), x, w)
    finally:
        algorithms.unregister_algorithm("cpu", "flaky_fake")
    assert choice.source == "tuned" and "MemoryError" in choice.plan.rejected["flaky_fake"]
    assert "flaky_fake" not in choice.plan.times_ms


def _largest_allocation(fn) -> int:
    """The largest single CPU allocation (bytes) made while fn() runs, torch's internal ones included."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max([e.self_cpu_memory_usage for e in prof.events()] + [0])


def test_the_reference_does_not_copy_an_expanded_input(tuning):
    # 512 images that are one image in memory: a copy would be 16 MiB; the op allocates 64 KiB.
    x = torch.randn(1, 8, 32, 32).expand(512, 8, 32, 32)
    w = torch.randn(1, 8, 3, 3)
    copy_bytes = x.numel() * x.element_size()
    assert _largest_allocation(lambda: F.conv2d(x, w, stride=4)) >= copy_bytes  # torch's conv copies it
    p = ConvProblem.from_tensors(x, w, (4, 4), (0, 0), (1, 1), 1)
    choice = None

    def tune():
        nonlocal choice
        choice = select(p, x, w)

    assert _largest_allocation(tune) < copy_bytes // 8
    assert choice.source == "tuned" and choice.plan.rejected == {}
    assert_close(FF.conv2d(x, w, stride=4), F.conv2d(x, w, stride=4))
