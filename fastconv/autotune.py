"""Resolving algo="auto": plans, the autotuner and the heuristic.

select(problem, input, weight, bias) decides, in this order:
  1. a plan in the in-memory table (fastconv.plans) whose algorithm is still eligible; if its
     algorithm is no longer eligible (a lower workspace limit, deterministic mode), the fastest
     eligible algorithm it timed, without retuning;
  2. with fastconv.backends.autotune on: the on-disk cache (when fastconv.backends.cache), then
     tuning: every eligible algorithm runs on the call's own tensors (forward only, under no_grad),
     is checked against a reference (torch's conv on the CPU, fastconv's direct kernel on CUDA) and,
     if it matches, timed (warm-up, then the median of fastconv.backends.tune_iters runs; CUDA events
     after a synchronisation). The fastest correct one becomes the plan, in memory and on disk.
     The reference never needs more memory than the op: for an input torch would have to copy
     (expanded, sliced, permuted) torch checks only the first images, as many as fit in the size of
     the op's output (none: fastconv's direct kernel is the reference). A candidate that fails at
     any run is excluded; if tuning itself fails (the reference raises, runs out of memory, ...),
     the call warns and uses the heuristic, and that key is not tuned again in this process
     (plans.clear() or autotune(retune=True) retries it).
  3. the device's heuristic (fastconv.algorithms.heuristic_rules).
Tuning never happens while torch.compile, torch.jit or make_fx trace, on FakeTensor/meta tensors,
under a TorchDispatchMode or functorch transform, or while the current CUDA stream is being captured
into a graph: those calls use the plan or the heuristic, and remember nothing.

autotune(model, example_inputs) runs the model once with tuning on to fill the table ahead of time.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastconv import algorithms, backends, plans
from fastconv.algorithms import ConvProblem

ops = torch.ops.fastconv

# Relative tolerance (of max |reference|) for a candidate to count as correct. Loose on purpose: it
# catches wrong kernels, not rounding; every dtype's bound is well above its summation error.
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# A candidate whose first (checking) run is this many times slower than the best median so far is
# recorded with that one run and not timed again: it cannot win, and slow kernels are very slow.
_PRUNE_FACTOR = 4.0


@dataclass
class Choice:
    """The result of select(): the algorithm and how it was chosen.

    source: "plan" (a plan in memory), "tuned" (timed just now) or "heuristic".
    reason: the heuristic rule, or which plan. tuning: why no tuning happened (None if it did or a
    plan existed). eligible: every registered algorithm -> None or why "auto" may not use it."""

    algo: str
    source: str
    reason: str
    device: str
    key: Optional[str]
    eligible: Dict[str, Optional[str]] = field(default_factory=dict)
    plan: Optional[plans.Plan] = None
    tuning: Optional[str] = None


# ---- when tuning is not allowed ---------------------------------------------------------------------


def _dispatch_mode_active() -> bool:
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        return _get_current_dispatch_mode() is not None
    except (ImportError, AttributeError, RuntimeError):
        return False


def _is_fake(t: torch.Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(t, FakeTensor):
            return True
    except ImportError:
        pass
    return t.device.type == "meta"


def tracing_reason(problem: ConvProblem, tensors: Sequence[Optional[torch.Tensor]] = ()) -> Optional[str]:
    """Why timing kernels now would be wrong (tracing, fake tensors, graph capture), else None."""
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if torch.jit.is_tracing():
        return "torch.jit is tracing"
    if not isinstance(problem.N, int):
        return "the batch size is symbolic"
    for t in tensors:
        if t is None:
            continue
        if _is_fake(t):
            return "FakeTensor/meta tensors are being traced"
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return "a functorch transform (vmap/grad) is active"
    if _dispatch_mode_active():
        return "a TorchDispatchMode is active (make_fx, FakeTensorMode, ...)"
    if problem.emulated:
        return "the emulated CUDA device has no timeline to tune on"
    if problem.device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    return None


# ---- running and timing candidates ------------------------------------------------------------------


def _runner(algo: str, problem: ConvProblem) -> Callable[..., torch.Tensor]:
    run = algorithms.traits(algo, problem.device_type).run
    if run is not None:
        return run
    return lambda x, w, b, st, pad, dil, g: ops.conv2d(x, w, b, list(st), list(pad), list(dil), g, algo)


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def _reference_images(problem: ConvProblem, x: torch.Tensor) -> int:
    """How many leading images of the batch torch's conv may check. torch copies an input it cannot
    read in place (expanded, sliced, permuted: 2^32 elements for an expand() of one image), which the
    op itself never does (its kernels read through the strides). So: all of them when x is contiguous
    (no copy), else as many as a copy the size of the op's own output holds (possibly none)."""
    if _dense(x):
        return problem.N
    per_image = max(1, x.numel() // max(1, x.shape[0]))
    return min(problem.N, (problem.N * problem.K * problem.P * problem.Q) // per_image)


def _reference(problem: ConvProblem, x, w, b) -> torch.Tensor:
    """The reference output for the first n <= N images of the batch. It never materialises more
    than the op itself: the inputs are used as given (no copies here), torch's conv only sees as many
    images as _reference_images allows, and fastconv's direct kernel is a candidate like the others
    (the CPU kernels read x through its strides; the CUDA binding makes the same dense copy for all)."""
    args = (problem.stride, problem.padding, problem.dilation, problem.groups)
    n = _reference_images(problem, x)
    if problem.device_type == "cpu" and n > 0:
        return F.conv2d(x[:n], w, b, *args)
    # On CUDA (and on the CPU when not one image may be copied): fastconv's direct kernel (on CUDA,
    # torch's conv may use TF32 and is not what we verify against).
    try:
        return ops.conv2d(x, w, b, *[list(a) for a in args[:3]], args[3], "direct")
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        if n == 0 or problem.device_type == "cpu":
            raise
        return F.conv2d(x[:n], w, b, *args)


def _mismatch(y: torch.Tensor, ref: torch.Tensor) -> Optional[str]:
    if y.shape != ref.shape:
        return f"output shape {list(y.shape)} != reference {list(ref.shape)}"
    if ref.numel() == 0:
        return None
    tol = _TOLERANCE.get(ref.dtype, 1e-2)
    finite = ref[torch.isfinite(ref)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    try:
        torch.testing.assert_close(y, ref, rtol=0.0, atol=tol * scale, equal_nan=True)
    except AssertionError:
        err = (y.double() - ref.double()).abs().nan_to_num(float("inf")).max().item()
        return f"does not match the reference: max |error| {err:.3g} > {tol * scale:.3g}"
    return None


def _describe(e: BaseException) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first[:300]}"


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def _once_ms(fn: Callable[[], Any], device_type: str) -> float:
    if device_type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _check_and_time(fn: Callable[[], torch.Tensor], dev: str, ref: torch.Tensor, n_images: int,
                    best: Optional[float]) -> Tuple[Optional[str], float]:
    """Runs fn once and checks its output (n_images images) against ref (its first ref.shape[0]):
    (why it mismatches, 0.0), else (None, its median time in ms), or just that first run's time when
    it is already far slower than best."""
    _sync(dev)
    t0 = time.perf_counter()
    y = fn()
    _sync(dev)
    first_ms = (time.perf_counter() - t0) * 1e3
    expected = [n_images] + list(ref.shape[1:])
    why = (f"output shape {list(y.shape)} != reference {expected}" if list(y.shape) != expected
           else _mismatch(y[:ref.shape[0]], ref))
    del y
    if why is not None:
        return why, 0.0
    if best is not None and first_ms > _PRUNE_FACTOR * best:
        return None, round(first_ms, 4)
    for _ in range(max(0, backends.tune_warmup - 1)):
        fn()
    samples = [_once_ms(fn, dev) for _ in range(backends.tune_iters)]
    return None, round(statistics.median(samples), 4)


def tune_problem(problem: ConvProblem, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                 algos: Sequence[str]) -> Tuple[Optional[plans.Plan], Dict[str, str]]:
    """Checks and times each algorithm in `algos` on (x, w, b); returns the plan (None when none ran
    correctly) and the excluded algorithms with reasons. Mismatches are also warned about."""
    dev = problem.device_type
    args = (problem.stride, problem.padding, problem.dilation, problem.groups)
    times: Dict[str, float] = {}
    rejected: Dict[str, str] = {}
    with torch.no_grad():
        ref = _reference(problem, x, w, b)
        for algo in algos:
            run = _runner(algo, problem)
            fn = lambda: run(x, w, b, *args)  # noqa: B023  (used inside this iteration only)
            try:  # a candidate that fails at any run (an exception, an OOM) is excluded, never fatal
                why, ms = _check_and_time(fn, dev, ref, problem.N, min(times.values()) if times else None)
            except Exception as e:
                rejected[algo] = f"failed: {_describe(e)}"
                continue
            if why is not None:
                rejected[algo] = why
                warnings.warn(f"fastconv autotune: excluding algo '{algo}' for {plans.problem_key(problem)}: {why}",
                              stacklevel=5)
                continue
            times[algo] = ms
    if not times:
        return None, rejected
    algo = min(times, key=lambda a: times[a])
    return plans.Plan(algo, "tuned", times, rejected, plans.now()), rejected


# ---- select -----------------------------------------------------------------------------------------


def _eligible_ignoring_determinism(problem: ConvProblem) -> List[str]:
    with _deterministic_off():
        return [a for a, why in algorithms.candidates(problem).items() if why is None]


class _deterministic_off:
    def __enter__(self) -> None:
        self.mode = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(False)

    def __exit__(self, *exc: Any) -> None:
        torch.use_deterministic_algorithms(self.mode[0], warn_only=self.mode[1])


def select(problem: ConvProblem, input: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
           bias: Optional[torch.Tensor] = None, *, tune: Optional[bool] = None) -> Choice:
    """Chooses the algorithm for algo="auto" (see the module docstring). `tune` overrides
    fastconv.backends.autotune for this call."""
    memo_key = _memo_key(problem) if tune is None else None
    table = plans.table()
    choice = table.memo.get(memo_key) if memo_key is not None else None
    if choice is None:
        generation = table.generation
        choice = _select(problem, input, weight, bias, tune)
        # Reusable until the plan table, the registry or a setting changes: plan hits, the heuristic
        # when tuning is off or failed for this key (not when it was merely skipped, e.g. while tracing).
        if memo_key is not None and (choice.source == "plan" or choice.tuning == _AUTOTUNE_OFF or (
                choice.key is not None and choice.tuning == table.failed(choice.device, choice.key))):
            table.remember(memo_key, choice, generation)
    if _recorders and choice.key is not None:
        _recorders[-1][f"{choice.device} | {choice.key}"] = choice.algo
    return choice


_AUTOTUNE_OFF = "autotuning is off (fastconv.backends.autotune / FASTCONV_AUTOTUNE=1)"


def _memo_key(problem: ConvProblem) -> Optional[Tuple[Any, ...]]:
    """Everything a decision depends on besides the plan table, or None when it must not be memoised."""
    if torch.compiler.is_compiling() or not isinstance(problem.N, int):
        return None
    return (problem, backends.autotune, backends.cache, backends.cache_dir, backends.workspace_limit_mb,
            torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            algorithms._generation, torch.get_num_threads(),
            torch.cuda.current_device()
            if problem.device_type == "cuda" and problem.device_index is None and not problem.emulated else None)


def _select(problem: ConvProblem, input: Optional[torch.Tensor], weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor], tune: Optional[bool]) -> Choice:
    eligible = algorithms.candidates(problem)
    ok = [a for a, why in eligible.items() if why is None]
    if not ok:
        if torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled():
            fallback = _eligible_ignoring_determinism(problem)
            if fallback:
                algo = algorithms.heuristic_choice(problem, {a: None for a in fallback})[0]
                warnings.warn(f"fastconv.conv2d: no deterministic algorithm can implement this problem; using "
                              f"'{algo}' (torch.use_deterministic_algorithms is in warn_only mode)", stacklevel=3)
                return Choice(algo, "heuristic", "no deterministic algorithm (warn_only)", "", None, eligible)
        algorithms._nothing_eligible(problem, eligible)

    if torch.compiler.is_compiling():
        # torch.compile traces this code: only the heuristic, whose decisions become guards. Plans
        # are not consulted (their keys need concrete sizes; a symbolic size cannot be told apart).
        algo, rule = algorithms.heuristic_choice(problem, eligible)
        return Choice(algo, "heuristic", rule, "", None, eligible, None, "torch.compile is tracing")

    autotune_on = backends.autotune if tune is None else tune
    if not isinstance(problem.N, int):
        algo, rule = algorithms.heuristic_choice(problem, eligible)
        return Choice(algo, "heuristic", rule, plans.device_name(problem), None, eligible, None,
                      "the batch size is symbolic")

    device = plans.device_name(problem)
    key = plans.problem_key(problem)
    table = plans.table()
    if autotune_on and backends.cache:
        table.read_disk_once(device)
    plan = table.get(device, key)
    if plan is not None:
        if plan.algo in ok:
            return Choice(plan.algo, "plan", f"{plan.source} plan", device, key, eligible, plan)
        timed = [a for a in sorted(plan.times_ms, key=lambda a: plan.times_ms[a]) if a in ok]
        if timed:
            return Choice(timed[0], "plan", f"{plan.source} plan: '{plan.algo}' is not eligible now; the "
                          f"fastest eligible algorithm it timed", device, key, eligible, plan)

    skipped: Optional[str]
    if not autotune_on:
        skipped = _AUTOTUNE_OFF
    elif input is None or weight is None:
        skipped = "no tensors to time on"
    else:
        skipped = tracing_reason(problem, (input, weight, bias))
        if skipped is None and input.numel() == 0:
            skipped = "the input is empty"
        if skipped is None and plan is None and tune is None:
            skipped = table.failed(device, key)  # tried once in this process: not again per call
        if skipped is None and plan is None:
            try:
                new_plan, _ = tune_problem(problem, input, weight, bias, _tuning_order(problem, ok, eligible))
            except Exception as e:  # e.g. the reference ran out of memory: the call must still succeed
                new_plan, skipped = None, f"tuning failed: {_describe(e)}"
                warnings.warn(f"fastconv autotune: tuning failed for {key} ({_describe(e)}); using the heuristic",
                              stacklevel=3)
            else:
                if new_plan is not None:
                    table.put(device, key, new_plan)
                    if backends.cache:
                        table.store_disk(device, key, new_plan)
                    return Choice(new_plan.algo, "tuned", "fastest correct candidate", device, key, eligible,
                                  new_plan)
                skipped = "every candidate failed or mismatched during tuning"
                warnings.warn(f"fastconv autotune: no candidate ran correctly for {key}; using the heuristic",
                              stacklevel=3)
            table.mark_failed(device, key, skipped)
    algo, rule = algorithms.heuristic_choice(problem, eligible)
    return Choice(algo, "heuristic", rule, device, key, eligible, None, skipped)


def _tuning_order(problem: ConvProblem, ok: List[str], eligible: Dict[str, Optional[str]]) -> List[str]:
    # The heuristic's pick first, so slow candidates are pruned after one run.
    first = algorithms.heuristic_choice(problem, eligible)[0]
    return [first] + [a for a in ok if a != first]


# ---- ahead-of-time tuning ---------------------------------------------------------------------------

# Collectors for autotune(): which auto convolutions a forward pass ran (empty outside autotune()).
_recorders: List[Dict[str, str]] = []


def autotune(model: torch.nn.Module, example_inputs: Union[torch.Tensor, Sequence[Any], Dict[str, Any]],
             *, retune: bool = False) -> Dict[str, str]:
    """Tunes every algo="auto" convolution `model` runs on `example_inputs`, ahead of time: one
    forward pass in eval mode (batch-norm statistics are not updated) under no_grad with tuning on.
    Plans already in memory or on disk are kept unless retune=True. Returns
    {"<device> | <problem key>": algorithm} for every auto convolution the pass ran; save them with
    fastconv.plans.save(path)."""
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    else:
        args, kwargs = tuple(example_inputs), {}
    modes = [(m, m.training) for m in model.modules()]
    recorded: Dict[str, str] = {}
    _recorders.append(recorded)
    try:
        model.eval()
        with torch.no_grad():
            if retune:
                _drop_plans_of(model, args, kwargs)
            with backends.flags(autotune=True):
                model(*args, **kwargs)
    finally:
        _recorders.remove(recorded)
        for m, training in modes:
            m.training = training
    return recorded


def _drop_plans_of(model: torch.nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    # An untuned pass records the keys; their plans are dropped so the tuning pass times them again.
    seen: Dict[str, str] = {}
    _recorders.append(seen)
    try:
        with backends.flags(autotune=False):
            model(*args, **kwargs)
    finally:
        _recorders.remove(seen)
    table = plans.table()
    for entry in seen:
        device, key = entry.split(" | ", 1)
        if backends.cache:
            table.read_disk_once(device)  # so the tuning pass does not pick the disk plan up again
        table.drop(device, key)


__all__ = ["Choice", "select", "tune_problem", "tracing_reason", "autotune"]
