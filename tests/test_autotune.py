"""The autotuner, the plan table and its on-disk cache, explain(), and that tuning is skipped while
tracing. CPU tests time tiny problems only; GPU tests are marked `cuda`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from fastconv import algorithms, backends, plans
from fastconv.algorithms import ConvProblem
from fastconv.autotune import select, tracing_reason

from helpers import assert_close

at = sys.modules["fastconv.autotune"]  # the module (fastconv.autotune is the function)


@pytest.fixture
def tuning(tmp_path):
    """Autotuning on, one timed run per candidate, a private cache dir, an empty plan table."""
    plans.clear()
    with backends.flags(autotune=True, cache=True, cache_dir=str(tmp_path), tune_warmup=0, tune_iters=1):
        yield tmp_path
    plans.clear()


@pytest.fixture
def count_tuning(monkeypatch):
    calls = []
    real = at.tune_problem

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(at, "tune_problem", counting)
    return calls


@pytest.fixture
def fake_algos():
    added = []

    def add(device, name, rule=lambda p: None, **kw):
        algorithms.register_algorithm(device, name, rule, **kw)
        added.append((device, name))

    yield add
    for device, name in added:
        algorithms.unregister_algorithm(device, name)


def _tensors(n=2, c=4, h=6, w=6, k=4, r=3):
    return torch.randn(n, c, h, w), torch.randn(k, c, r, r), torch.randn(k)


def _problem(x, w, padding=1):
    return ConvProblem.from_tensors(x, w, (1, 1), (padding, padding), (1, 1), 1)


# ---- tuning -----------------------------------------------------------------------------------------

def test_tuning_picks_the_fastest_correct_eligible_candidate(tuning, count_tuning):
    x, w, b = _tensors()
    y = FF.conv2d(x, w, b, padding=1)
    assert_close(y, F.conv2d(x, w, b, padding=1))
    assert len(count_tuning) == 1
    [(device, key, plan)] = plans.entries()
    assert plan.source == "tuned" and key == plans.problem_key(_problem(x, w))
    assert set(plan.times_ms) == {"direct", "im2col"}  # gemm1x1 cannot take a 3x3
    assert plan.algo == min(plan.times_ms, key=plan.times_ms.get)
    # The second call uses the plan.
    FF.conv2d(x, w, b, padding=1)
    assert len(count_tuning) == 1
    assert select(_problem(x, w), x, w, b).source == "plan"


def test_no_tuning_when_off(tmp_path, count_tuning):
    plans.clear()
    with backends.flags(autotune=False, cache_dir=str(tmp_path)):
        x, w, b = _tensors()
        FF.conv2d(x, w, b, padding=1)
        choice = select(_problem(x, w), x, w, b)
    assert count_tuning == [] and plans.entries() == [] and os.listdir(tmp_path) == []
    assert choice.source == "heuristic" and "autotuning is off" in choice.tuning


def test_mismatching_and_failing_candidates_are_excluded(tuning, fake_algos):
    fake_algos("cpu", "wrong_fake", run=lambda x, w, b, *a: F.conv2d(x, w, b, *a) + 1.0)
    fake_algos("cpu", "broken_fake", run=lambda *a: (_ for _ in ()).throw(RuntimeError("kernel exploded")))
    x, w, b = _tensors()
    with pytest.warns(UserWarning, match="excluding algo 'wrong_fake'"):
        choice = select(_problem(x, w), x, w, b)
    assert choice.source == "tuned" and choice.algo in ("direct", "im2col")
    assert "does not match the reference" in choice.plan.rejected["wrong_fake"]
    assert "kernel exploded" in choice.plan.rejected["broken_fake"]
    assert "wrong_fake" not in choice.plan.times_ms


def test_correct_python_candidate_can_win(tuning, fake_algos, monkeypatch):
    fake_algos("cpu", "torch_fake", run=lambda x, w, b, *a: F.conv2d(x, w, b, *a))
    # Make the timing decide for torch_fake regardless of machine noise.
    real_once = at._once_ms
    monkeypatch.setattr(at, "_once_ms", lambda fn, dev: real_once(fn, dev) + 1e3)
    monkeypatch.setattr(at, "_PRUNE_FACTOR", float("inf"))
    x, w, b = _tensors()
    order = at._tuning_order(_problem(x, w), ["direct", "im2col", "torch_fake"], algorithms.candidates(_problem(x, w)))
    assert order[0] == "im2col"  # the heuristic's pick is timed first
    choice = select(_problem(x, w), x, w, b)
    assert set(choice.plan.times_ms) == {"direct", "im2col", "torch_fake"}
    assert choice.algo == min(choice.plan.times_ms, key=choice.plan.times_ms.get)


def test_nondeterministic_candidates_are_not_tuned(tuning, fake_algos):
    fake_algos("cpu", "nondet_fake", deterministic=False, run=lambda x, w, b, *a: F.conv2d(x, w, b, *a))
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x, w, b = _tensors()
        choice = select(_problem(x, w), x, w, b)
    finally:
        torch.use_deterministic_algorithms(old)
    assert "nondet_fake" not in choice.plan.times_ms and "deterministic" in choice.eligible["nondet_fake"]


def test_plan_whose_algorithm_is_no_longer_eligible(tuning, count_tuning):
    x, w, b = _tensors(c=16, k=16, h=12, w=12)
    p = _problem(x, w)
    dev, key = plans.device_name(p), plans.problem_key(p)
    plans.table().put(dev, key, plans.Plan("im2col", "loaded", {"im2col": 1.0, "direct": 2.0}))
    assert select(p, x, w, b).algo == "im2col"
    with backends.flags(workspace_limit_mb=0):  # im2col needs a column buffer
        choice = select(p, x, w, b)
    assert choice.algo == "direct" and choice.source == "plan" and count_tuning == []
    assert plans.table().get(dev, key).algo == "im2col"  # the stored plan is not overwritten


def test_remembered_decisions_follow_changes(tmp_path, fake_algos):
    plans.clear()
    x, w, b = _tensors(c=16, k=16, h=12, w=12)
    p = _problem(x, w)
    with backends.flags(autotune=False, cache_dir=str(tmp_path)):
        assert select(p, x, w, b).algo == "im2col"
        assert select(p, x, w, b).algo == "im2col"  # remembered
        with backends.flags(workspace_limit_mb=0):
            assert select(p, x, w, b).algo == "direct"
        plans.table().put(plans.device_name(p), plans.problem_key(p), plans.Plan("direct", "loaded"))
        assert select(p, x, w, b).source == "plan"
        plans.clear()
        assert select(p, x, w, b).algo == "im2col"
        fake_algos("cpu", "new_fake")
        assert "new_fake" in select(p, x, w, b).eligible
    plans.clear()


# ---- the on-disk cache ------------------------------------------------------------------------------

def test_cache_round_trip(tuning, count_tuning):
    x, w, b = _tensors()
    p = _problem(x, w)
    first = select(p, x, w, b)
    assert first.source == "tuned"
    device = plans.device_name(p)
    # The plan is appended to the journal; compaction (past its size limit, at exit, or now) folds
    # it into the JSON file.
    assert os.listdir(tuning) == [os.path.basename(plans.journal_file(device))]
    plans.compact_cache()
    name = os.path.basename(plans.cache_file(device))
    assert sorted(os.listdir(tuning)) == sorted([name, name + ".journal"])  # no temp files left
    v = plans.versions()
    assert f"fastconv-{v['fastconv']}" in name and f"torch-{v['torch']}" in name and f"cuda-{v['cuda']}" in name
    doc = json.loads((tuning / name).read_text())  # human-readable JSON
    assert doc["format"] == "fastconv-plans"
    assert doc["devices"][plans.device_name(p)][plans.problem_key(p)]["algo"] == first.algo
    # A new process (an empty table) reads the file instead of tuning.
    plans.clear()
    again = select(p, x, w, b)
    assert again.source == "plan" and again.plan.source == "disk" and again.algo == first.algo
    assert len(count_tuning) == 1
    # A second problem is added to the same file.
    x2, w2, b2 = _tensors(h=5, w=5)
    select(_problem(x2, w2), x2, w2, b2)
    assert set(plans.read_cache_file(str(tuning / name), device)) == {plans.problem_key(p),
                                                                      plans.problem_key(_problem(x2, w2))}
    plans.compact_cache()
    doc = json.loads((tuning / name).read_text())
    assert len(doc["devices"][device]) == 2


@pytest.mark.parametrize("content", ["{not json", "[]", "[" * 100000, '{"format": "fastconv-plans", "format_version": 1, '
                                     '"devices": {"x": {"k": 42}}}'], ids=["invalid", "list", "nested", "not-a-plan"])
def test_corrupt_cache_is_ignored_with_a_warning(tuning, count_tuning, content):
    x, w, b = _tensors()
    p = _problem(x, w)
    path = plans.cache_file(plans.device_name(p))
    with open(path, "w") as f:
        f.write(content)
    with pytest.warns(UserWarning, match="(corrupt|stale) plan cache"):
        choice = select(p, x, w, b)
    assert choice.source == "tuned" and len(count_tuning) == 1
    with open(path) as f:  # the next write replaced the corrupt file
        assert json.load(f)["devices"][plans.device_name(p)][plans.problem_key(p)]["algo"] == choice.algo


def test_stale_cache_is_ignored_with_a_warning(tuning, count_tuning):
    x, w, b = _tensors()
    p = _problem(x, w)
    select(p, x, w, b)
    plans.compact_cache()
    path = plans.cache_file(plans.device_name(p))
    with open(path) as f:
        doc = json.load(f)
    doc["torch"] = "0.0.1"
    with open(path, "w") as f:
        json.dump(doc, f)
    plans.clear()
    with pytest.warns(UserWarning, match="stale"):
        choice = select(p, x, w, b)
    assert choice.source == "tuned" and len(count_tuning) == 2


def test_cache_disabled_writes_nothing(tuning):
    x, w, b = _tensors()
    with backends.flags(cache=False):
        assert select(_problem(x, w), x, w, b).source == "tuned"
    assert os.listdir(tuning) == []


def test_environment_defaults(tmp_path):
    env = dict(os.environ, FASTCONV_AUTOTUNE="1", FASTCONV_CACHE="0", FASTCONV_CACHE_DIR=str(tmp_path / "c"),
               FASTCONV_WORKSPACE_LIMIT_MB="7")
    code = "import fastconv, json; print(json.dumps(fastconv.backends.settings()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__))))
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["autotune"] is True and s["cache"] is False and s["cache_dir"] == str(tmp_path / "c")
    assert s["workspace_limit_mb"] == 7


def test_settings_are_validated_and_flags_restore():
    with pytest.raises(TypeError):
        backends.autotune = "yes"
    with pytest.raises(ValueError):
        backends.tune_iters = 0
    with pytest.raises(TypeError, match="unknown setting"):
        with backends.flags(benchmark=True):
            pass
    before = backends.settings()
    mods = fastconv._ext.binding_modules()
    limits_before = [m.workspace_limit() for m in mods]
    with backends.flags(autotune=not before["autotune"], workspace_limit_mb=3):
        assert backends.autotune is not before["autotune"]
        # The extension owns the limit the kernels obey: every binding module has it, in bytes.
        assert [m.workspace_limit() for m in mods] == [3 << 20] * len(mods)
    assert backends.settings() == before and [m.workspace_limit() for m in mods] == limits_before


# ---- save / load ------------------------------------------------------------------------------------

def test_save_load(tuning, tmp_path):
    x, w, b = _tensors()
    p = _problem(x, w)
    tuned = select(p, x, w, b)
    out = plans.save(tmp_path / "plans.json")
    plans.clear()
    with backends.flags(autotune=False):
        assert plans.load(out) == 1
        choice = select(p, x, w, b)  # loaded plans are used with autotune off
    assert choice.source == "plan" and choice.plan.source == "loaded" and choice.algo == tuned.algo
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a valid plan file"):
        plans.load(tmp_path / "bad.json")
    doc = json.loads((tmp_path / "plans.json").read_text())
    doc["fastconv"] = "0.0.0"
    (tmp_path / "old.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="other versions"):
        plans.load(tmp_path / "old.json")
    with pytest.raises(ValueError, match="other versions"):
        plans.load(tmp_path / "old.json", strict_versions=True)


def test_autotune_model_ahead_of_time(tuning, count_tuning):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8))
    model = fastconv.convert(model)
    model[0].algo = "direct"  # forced: not tuned
    model.train()
    x = torch.randn(2, 3, 8, 8)
    stats = model[1].running_mean.clone()
    with backends.flags(autotune=False):
        result = fastconv.autotune(model, x)
        assert backends.autotune is False  # restored
    assert len(result) == 2 and len(count_tuning) == 2
    assert all(" | " in k for k in result) and set(result.values()) <= {"direct", "im2col", "gemm1x1"}
    assert torch.equal(model[1].running_mean, stats) and model.training and model[1].training
    assert len(plans.entries()) == 2
    fastconv.autotune(model, [x])  # plans exist: nothing is tuned again
    assert len(count_tuning) == 2
    fastconv.autotune(model, x, retune=True)
    assert len(count_tuning) == 4


# ---- tracing: never tune ----------------------------------------------------------------------------

def test_no_tuning_under_fake_tensors_and_meta(tuning, count_tuning):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w, b = _tensors()
        y = FF.conv2d(x, w, b, padding=1)
        assert y.shape == (2, 4, 6, 6)
    x, w = (t.to("meta") for t in _tensors()[:2])
    assert tracing_reason(_problem(x, w), (x, w)) is not None
    assert count_tuning == [] and plans.entries() == []


def test_no_tuning_under_make_fx(tuning, count_tuning):
    from torch.fx.experimental.proxy_tensor import make_fx

    x, w, b = _tensors()
    gm = make_fx(lambda x, w, b: FF.conv2d(x, w, b, padding=1))(x, w, b)
    assert count_tuning == [] and plans.entries() == []
    assert_close(gm(x, w, b), F.conv2d(x, w, b, padding=1))


def test_no_tuning_under_torch_compile(tuning, count_tuning):
    torch._dynamo.reset()
    f = torch.compile(lambda x, w, b: FF.conv2d(x, w, b, padding=1), backend="eager", fullgraph=True)
    x, w, b = _tensors()
    assert_close(f(x, w, b), F.conv2d(x, w, b, padding=1))
    assert count_tuning == [] and plans.entries() == []
    torch._dynamo.reset()


# ---- explain ----------------------------------------------------------------------------------------

def test_explain_output(capsys):
    plans.clear()
    with backends.flags(autotune=False):
        ex = fastconv.explain(fastconv.Conv2d(8, 16, 3, padding=1), (2, 8, 10, 10))
    out = capsys.readouterr().out
    assert str(ex) in out
    for name in ("direct", "im2col", "gemm1x1"):
        assert name in out
    assert "needs a 1x1 kernel" in out and "choice: im2col (heuristic" in out and "not tuned" in out
    gemm = next(c for c in ex.candidates if c.name == "gemm1x1")
    assert not gemm.eligible and "1x1" in gemm.reason
    assert ex.choice == "im2col" and ex.source == "heuristic"
    assert ex.key == plans.problem_key(ex.problem)


def test_explain_forms_and_tuning(tuning, capsys):
    w = torch.randn(8, 1, 3, 3)
    with backends.flags(autotune=False):
        ex = fastconv.explain(w, torch.randn(2, 8, 6, 6), padding=1, groups=8, verbose=False)
        assert capsys.readouterr().out == ""
        assert ex.choice == "direct" and ex.problem.depthwise and ex.source == "heuristic"
        ex = fastconv.explain((16, 8, 1, 1), (2, 8, 6, 6), dtype=torch.float64, channels_last=True, verbose=False)
        assert ex.choice == "gemm1x1" and ex.problem.dtype == torch.float64 and ex.problem.layout == "NHWC"
        ex = fastconv.explain(fastconv.Conv2d(4, 4, 3, padding=1, algo="direct"), (1, 4, 5, 5), verbose=False)
        assert ex.choice == "direct" and ex.source == "forced"
        ex = fastconv.explain(torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (1, 4, 5, 5),
                              verbose=False)
        assert ex.problem.H == 7 and ex.problem.padding == (0, 0)
    ex = fastconv.explain(fastconv.Conv2d(4, 8, 3, padding="same"), (1, 4, 5, 5), tune=True)
    out = capsys.readouterr().out
    assert ex.source == "tuned" and ex.choice in ("direct", "im2col")
    assert all(c.time_ms is not None for c in ex.candidates if c.eligible)
    assert "time (ms)" in out
    ex2 = fastconv.explain(ex.problem, verbose=False)
    assert ex2.source == "plan" and ex2.choice == ex.choice


def test_explain_when_nothing_can_run():
    ex = fastconv.explain((4, 4, 3, 3), (1, 4, 5, 5), dtype=torch.float16, verbose=False)
    assert ex.choice == "(none)" and all(not c.eligible for c in ex.candidates)


# ---- GPU ----------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_tuning_picks_a_correct_kernel_and_reuses_the_cache(tuning, count_tuning, dtype):
    dev = "cuda"
    x = torch.randn(4, 32, 16, 16, device=dev, dtype=dtype)
    w = torch.randn(32, 32, 3, 3, device=dev, dtype=dtype)
    b = torch.randn(32, device=dev, dtype=dtype)
    y = FF.conv2d(x, w, b, padding=1)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    tol = 1e-2 if dtype == torch.float16 else 1e-3
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    [(device, key, plan)] = plans.entries()
    assert "sm_" in device and plan.algo in plan.times_ms and len(count_tuning) == 1
    plans.clear()
    FF.conv2d(x, w, b, padding=1)
    assert len(count_tuning) == 1 and plans.entries()[0][2].source == "disk"


@pytest.mark.cuda
def test_cuda_no_tuning_during_graph_capture(tuning, count_tuning):
    x = torch.randn(2, 8, 8, 8, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    with warnings.catch_warnings(), backends.flags(cache=False):
        warnings.simplefilter("ignore")
        FF.conv2d(x, w, padding=2)  # warm-up outside capture (tunes this key)
        plans.clear()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = FF.conv2d(x, w, padding=2)
    g.replay()
    torch.cuda.synchronize()
    assert len(count_tuning) == 1 and plans.entries() == []
    torch.testing.assert_close(y, F.conv2d(x, w, padding=2), rtol=1e-3, atol=1e-3)
