"""The algorithm registry and the heuristic: eligibility (can_implement, workspace limit,
determinism), the per-device rules, and that "auto" never picks an algorithm that refuses."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF
from fastconv import _ext, algorithms, backends
from fastconv.algorithms import ConvProblem

from helpers import assert_close


def problem(N=2, C=8, H=10, W=10, K=8, R=3, S=3, stride=1, padding=1, dilation=1, groups=1,
            dtype=torch.float32, device="cpu", channels_last=False) -> ConvProblem:
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    return ConvProblem(N, C, H, W, K, R, S, pair(stride), pair(padding), pair(dilation), groups, dtype, device,
                       channels_last)


@pytest.fixture
def fake_algos():
    """Registers algorithms for a test and removes them afterwards."""
    added = []

    def add(device, name, rule=lambda p: None, **kw):
        algorithms.register_algorithm(device, name, rule, **kw)
        added.append((device, name))

    yield add
    for device, name in added:
        algorithms.unregister_algorithm(device, name)


# ---- the CPU heuristic ------------------------------------------------------------------------------

@pytest.mark.parametrize("p, expected", [
    (problem(R=1, S=1, padding=0), "gemm1x1"),
    (problem(R=1, S=1, padding=0, stride=2, channels_last=True), "gemm1x1"),
    (problem(groups=8), "direct"),                      # depthwise
    (problem(C=8, K=16, groups=8), "direct"),           # depthwise with a channel multiplier
    (problem(), "im2col"),
    (problem(C=2, K=2, H=4, W=4), "im2col"),            # tiny: no 'tiny' rule on the CPU (measured)
    (problem(R=1, S=1, padding=1), "im2col"),           # padded 1x1 is not gemm1x1's
    (problem(groups=2), "im2col"),                      # grouped, not depthwise
])
def test_cpu_heuristic(p, expected):
    assert algorithms.heuristic(p) == expected
    algo, rule = algorithms.heuristic_choice(p)
    assert algo == expected and rule.startswith("rule '")


def test_heuristic_rules_are_documented():
    for dev in ("cpu", "cuda"):
        rules = algorithms.heuristic_rules(dev)
        assert rules and rules[-1].name == "default"
        assert all(r.why for r in rules)


# ---- auto never picks an algorithm that refuses -----------------------------------------------------

_GRID = list(itertools.product([1, 3], [0, 1], [1, 2], [1, 2], [1, 4]))  # R, padding, stride, dilation, groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_never_picks_a_refusing_algorithm(dtype):
    for r, pad, st, dil, g in _GRID:
        for cl in (False, True):
            p = problem(C=8, K=8, H=9, W=7, R=r, S=r, padding=pad, stride=st, dilation=dil, groups=g, dtype=dtype,
                        channels_last=cl)
            algo = algorithms.resolve("auto", p)
            assert algorithms.can_implement(algo, p), (p, algo, algorithms.why_not(algo, p))
            assert algorithms.eligibility(algo, p) is None


@pytest.mark.parametrize("r, pad, st, g", [(1, 0, 2, 1), (3, 1, 1, 4), (3, 0, 2, 1), (1, 0, 1, 8)])
def test_auto_runs_and_matches_torch(r, pad, st, g):
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    w = torch.randn(8, 8 // g, r, r, dtype=torch.float64)
    b = torch.randn(8, dtype=torch.float64)
    assert_close(FF.conv2d(x, w, b, st, pad, 1, g), F.conv2d(x, w, b, st, pad, 1, g))


def test_forced_algorithm_errors_unchanged():
    p = problem()
    with pytest.raises(ValueError, match="unknown algo"):
        algorithms.resolve("winograd_nonexistent", p)
    with pytest.raises(NotImplementedError, match="1x1"):
        algorithms.resolve("gemm1x1", p)
    with pytest.raises(NotImplementedError, match="dtype"):  # torch's type for "not implemented for 'Half'"
        algorithms.resolve("auto", problem(dtype=torch.float16))
    with pytest.raises(TypeError, match="string"):
        algorithms.resolve(3, p)


# ---- workspace limit --------------------------------------------------------------------------------

def test_workspace_estimates():
    p = problem(C=8, K=4, H=10, W=10, R=3, S=3, padding=1)
    # CPU im2col at its least (one task): fprop/dgrad one [C/groups*R*S, P*Q] float32 column buffer;
    # wgrad that and one [K, C/groups*R*S] partial weight gradient. The largest of the three counts.
    col, partial = 8 * 9 * 100 * 4, 4 * 8 * 9 * 4
    assert algorithms.kernel_query("im2col", p, 0, 0)[2] == col
    assert algorithms.kernel_query("im2col", p, 2, 0)[2] == col + partial
    assert algorithms.workspace_bytes("im2col", p) == col + partial
    assert algorithms.workspace_bytes("direct", p) == 0
    pc = problem(C=8, K=4, H=10, W=10, R=1, S=1, padding=0, stride=2, device="cuda", dtype=torch.float16)
    assert algorithms.workspace_bytes("gemm1x1", pc) > 0  # strided: a gathered image


def test_workspace_limit_excludes_from_auto():
    p = problem(C=64, K=64, H=32, W=32)
    assert algorithms.heuristic(p) == "im2col"
    with backends.flags(workspace_limit_mb=0):
        why = algorithms.eligibility("im2col", p)
        assert why is not None and "workspace" in why
        assert algorithms.resolve("auto", p) == "direct"
        # The limit is a promise: a forced algorithm that cannot keep it refuses, saying why.
        with pytest.raises(NotImplementedError, match="workspace"):
            algorithms.resolve("im2col", p)
    assert algorithms.resolve("auto", p) == "im2col"


# ---- determinism ------------------------------------------------------------------------------------

@pytest.fixture
def deterministic():
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield lambda warn_only=False: torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])


def test_builtin_algorithms_are_deterministic(deterministic):
    for dev in ("cpu", "cuda"):
        for name in ("direct", "im2col", "gemm1x1"):
            assert algorithms.traits(name, dev).deterministic
    deterministic()
    x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 4, 3, 3)
    a, b = FF.conv2d(x, w, padding=1), FF.conv2d(x, w, padding=1)
    assert torch.equal(a, b)


def test_nondeterministic_algorithm_excluded_and_forced_raises(fake_algos, deterministic):
    fake_algos("cpu", "nondet_fake", deterministic=False)
    p = problem()
    assert algorithms.eligibility("nondet_fake", p) is None
    deterministic()
    why = algorithms.eligibility("nondet_fake", p)
    assert why is not None and "deterministic" in why
    assert algorithms.candidates(p)["nondet_fake"] == why
    assert algorithms.resolve("auto", p) != "nondet_fake"
    with pytest.raises(RuntimeError, match="use_deterministic_algorithms"):
        algorithms.resolve("nondet_fake", p)
    deterministic(warn_only=True)
    with pytest.warns(UserWarning, match="deterministic"):
        assert algorithms.resolve("nondet_fake", p) == "nondet_fake"


def test_no_deterministic_candidate_is_a_clear_error(fake_algos, deterministic):
    fake_algos("fakedev", "only_nondet", deterministic=False)
    p = problem(device="fakedev")
    assert algorithms.resolve("auto", p) == "only_nondet"
    deterministic()
    with pytest.raises(RuntimeError, match="no deterministic algorithm"):
        algorithms.resolve("auto", p)
    deterministic(warn_only=True)
    with pytest.warns(UserWarning, match="no deterministic algorithm"):
        assert algorithms.resolve("auto", p) == "only_nondet"


# ---- the CUDA rules (checked without a GPU by pretending kernels exist) ------------------------------

@pytest.fixture
def pretend_cuda(monkeypatch):
    monkeypatch.setattr(_ext, "built_with_cuda", lambda: True)
    cap = {"value": (9, 0)}
    monkeypatch.setattr(algorithms, "_cuda_capability", lambda p: cap["value"])
    return cap


def test_cuda_heuristic_simt_rules(pretend_cuda):
    half = dict(device="cuda", dtype=torch.float32)  # not tensor-core eligible: the SIMT rules
    assert algorithms.heuristic(problem(C=64, K=64, H=28, W=28, **half)) == "im2col"
    assert algorithms.heuristic(problem(R=1, S=1, padding=0, **half)) == "gemm1x1"
    assert algorithms.heuristic(problem(groups=8, **half)) == "direct"
    assert algorithms.heuristic(problem(C=2, K=2, H=4, W=4, **half)) == "direct"  # tiny
    assert algorithms.heuristic(problem(C=64, K=64, H=28, W=28, device="cuda", dtype=torch.float64)) == "direct"


def test_cuda_tensor_core_rule_picks_implicit_gemm(pretend_cuda):
    assert "implicit_gemm" in fastconv.available_algorithms("cuda")
    big = dict(C=64, K=64, H=28, W=28, device="cuda")
    assert algorithms.heuristic(problem(dtype=torch.float16, **big)) == "implicit_gemm"
    assert algorithms.heuristic(problem(dtype=torch.bfloat16, R=1, S=1, padding=0, **big)) == "implicit_gemm"
    assert algorithms.heuristic(problem(dtype=torch.float32, **big)) == "im2col"
    pretend_cuda["value"] = (7, 5)  # no sm_80 tensor-core path
    assert algorithms.heuristic(problem(dtype=torch.float16, **big)) == "im2col"


def test_available_algorithms_unchanged():
    assert fastconv.available_algorithms("cpu") == ["auto", "direct", "im2col", "gemm1x1"]


def test_cpu_im2col_counts_one_column_buffer_per_task_and_keeps_the_limit():
    # CPU im2col allocates one column buffer per concurrent at::parallel_for task: the binding's plan
    # (asked through kernel_query) counts them all, and under a limit that fits one buffer but not
    # two it runs one task at a time (the op still matches torch).
    p = problem(N=4, C=8, K=4, H=10, W=10, R=3, S=3, padding=1)
    col = 8 * 9 * 100 * 4
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ok, _, used = algorithms.kernel_query("im2col", p, 0, 1 << 30)
        assert ok and used == 2 * col  # two workers, two buffers
        ok, _, used = algorithms.kernel_query("im2col", p, 0, col + col // 2)
        assert ok and used == col
        ok, why, least = algorithms.kernel_query("im2col", p, 0, col - 1)
        assert not ok and "workspace limit" in why and least == col
        x, w = torch.randn(4, 8, 10, 10), torch.randn(4, 8, 3, 3)  # float32, as p
        fastconv._ext.set_workspace_limit(col + col // 2)
        try:
            y = torch.ops.fastconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, "im2col")
        finally:
            fastconv._ext.set_workspace_limit(backends.workspace_limit_mb << 20)
        torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(old)
