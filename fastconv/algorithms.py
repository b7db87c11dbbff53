"""Convolution algorithms: which exist per device, which can implement a configuration, and the
default ("auto") choice.

Every compiled algorithm's `can_implement` rule is the binding's own answer (asked through
cpu_conv_query / cuda_conv_query, csrc/torch/conv_query.h: the CPU algorithms and the CUDA
algorithm table, never mirrored here), so "auto" never picks an algorithm that would refuse, and
forcing one that cannot take a configuration fails early with the kernels' reason. Each also has
traits: whether it is deterministic and the smallest scratch buffer (workspace) it needs, also
asked of the binding.

"auto" is resolved in this order (fastconv.autotune.select): a plan in the in-memory plan table
(tuned in this process, read from the on-disk cache, or fastconv.plans.load()); with
fastconv.backends.autotune on, the on-disk cache and then timing every eligible algorithm; else
the documented per-device heuristic below. Eligible = can implement, fits
fastconv.backends.workspace_limit_mb, and deterministic when torch.use_deterministic_algorithms is on.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from fastconv import _ext, backends


@dataclass(frozen=True)
class ConvProblem:
    """A conv2d configuration: sizes of a 4-D input [N, C, H, W] and weight [K, C/groups, R, S]."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    dtype: torch.dtype
    device_type: str
    channels_last: bool = False
    device_index: Optional[int] = None  # CUDA device ordinal (None: the current device)
    emulated: bool = False  # device_type "cuda" on the emulated CUDA device ("fcemu")

    @property
    def P(self) -> int:
        return (self.H + 2 * self.padding[0] - self.dilation[0] * (self.R - 1) - 1) // self.stride[0] + 1

    @property
    def Q(self) -> int:
        return (self.W + 2 * self.padding[1] - self.dilation[1] * (self.S - 1) - 1) // self.stride[1] + 1

    @property
    def macs(self) -> int:
        return self.N * self.P * self.Q * self.K * (self.C // self.groups) * self.R * self.S

    @property
    def macs_per_image(self) -> int:
        return self.P * self.Q * self.K * (self.C // self.groups) * self.R * self.S

    @property
    def depthwise(self) -> bool:
        return self.groups == self.C and self.groups > 1

    @property
    def layout(self) -> str:
        return "NHWC" if self.channels_last else "NCHW"

    @staticmethod
    def from_tensors(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups) -> "ConvProblem":
        n, c, h, wd = x.shape
        k, _, r, s = w.shape
        # N stays as given (it may be a SymInt under torch.compile's dynamic shapes: no guard on it).
        dev_type, emulated = problem_device(x.device)
        return ConvProblem(n, int(c), int(h), int(wd), int(k), int(r), int(s), tuple(stride),
                           tuple(padding), tuple(dilation), int(groups), x.dtype, dev_type,
                           x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                           None if emulated else x.device.index, emulated)


def problem_device(device: Union[str, torch.device]) -> Tuple[str, bool]:
    """(device type whose kernels and rules apply, emulated?): the emulated CUDA device ("fcemu")
    runs the CUDA binding and kernels, so its problems are "cuda" problems."""
    dev = torch.device(device)
    if _ext.is_emu_device(dev):
        return "cuda", True
    return dev.type, False


# A rule returns None when the algorithm can implement the problem, else the reason it cannot.
Rule = Callable[[ConvProblem], Optional[str]]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_rule(allowed) -> Rule:
    def rule(p: ConvProblem) -> Optional[str]:
        if p.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            return f"dtype {str(p.dtype).replace('torch.', '')} is not supported on {p.device_type} (supported: {names})"
        return None

    return rule


def _tf32_dtype_rule() -> Rule:
    """float16/bfloat16, and float32 while fastconv.backends.allow_tf32 lets it run on TF32 tensor cores."""
    def rule(p: ConvProblem) -> Optional[str]:
        if p.dtype in (torch.float16, torch.bfloat16):
            return None
        if p.dtype == torch.float32:
            if _tf32_allowed():
                return None
            return ("float32 runs on TF32 tensor cores here, which is off "
                    "(set fastconv.backends.allow_tf32 = True to allow it)")
        return _dtype_rule((torch.float16, torch.bfloat16, torch.float32))(p)

    return rule


def _one_by_one(p: ConvProblem) -> Optional[str]:
    if p.R != 1 or p.S != 1:
        return f"needs a 1x1 kernel, got {p.R}x{p.S}"
    if p.padding != (0, 0):
        return f"needs zero padding, got padding={p.padding}"
    return None


def _all(*rules: Rule) -> Rule:
    def rule(p: ConvProblem) -> Optional[str]:
        for r in rules:
            why = r(p)
            if why is not None:
                return why
        return None

    return rule


# ---- asking the kernels (csrc/torch/conv_query.h: cpu_conv_query, cuda_conv_query) ------------------

_NO_LIMIT = 1 << 62


def kernel_query(algo: str, p: ConvProblem, direction: int = 0, workspace_limit: int = _NO_LIMIT):
    """The binding's answer for p: (ok, reason, workspace_bytes) from the CPU algorithms (device
    type "cpu") or the CUDA algorithm table ("cuda": fastconv._C on a CUDA build, fastconv._C_emu on
    the emulated device), or None when that module is absent. direction: 0 fprop, 1 dgrad, 2 wgrad;
    with workspace_limit 0 the bytes are the least the algorithm runs with."""
    n = p.N if isinstance(p.N, int) else 1  # a symbolic batch: eligibility does not depend on it
    cg = p.C // p.groups if p.groups > 0 else p.C  # groups <= 0: the binding says what is wrong
    flat = (int(n), p.C, p.H, p.W, p.K, cg, p.R, p.S, *(int(v) for v in p.stride),
            *(int(v) for v in p.padding), *(int(v) for v in p.dilation), int(p.groups))
    return _ask_binding(p.device_type, bool(p.emulated), algo, int(direction), *flat, _elem_bytes(p.dtype),
                        bool(p.channels_last), int(workspace_limit))


def kernel_plan(algo: str, p: ConvProblem, direction: int = 0) -> Optional[str]:
    """What the kernel's launcher would run for p under fastconv.backends.workspace_limit_mb, in words
    (the Hopper engine: its tile configuration and K slices, chosen by the rule next to the kernel),
    or None when the algorithm has no such description, cannot implement p, or is not built."""
    if p.device_type != "cuda" or torch.compiler.is_compiling() or why_not(algo, p) is not None:
        return None
    answer = kernel_query(algo, p, direction, backends.workspace_limit_mb << 20)
    return answer[1] if answer is not None and answer[0] and answer[1] else None


def _tf32_allowed() -> bool:
    from fastconv import backends

    return bool(backends.allow_tf32)


# The answer depends on nothing but its arguments and the extension's TF32 setting (which the binding
# reads itself; it is part of the key): repeated questions are answered from memory.
def _ask_binding(device_type: str, emulated: bool, algo: str, direction: int, *flat):
    return _ask_binding_cached(device_type, emulated, algo, direction, flat, _tf32_allowed())


@functools.lru_cache(maxsize=8192)
def _ask_binding_cached(device_type: str, emulated: bool, algo: str, direction: int, flat: tuple,
                        tf32: bool = False):
    sizes, geom, (groups, elem, channels_last, limit) = flat[:8], flat[8:14], flat[14:]
    args = (algo, direction, sizes[:4], sizes[4:], geom, groups, elem, channels_last, limit)
    if device_type == "cpu":
        return _ext.cpu_conv_query(*args)
    mod = _ext.cuda_binding(emulated)
    if mod is None:
        return None
    return mod.cuda_conv_query(*args)


# While torch.compile traces, sizes may be symbolic (even a weight's R and S under dynamic=True) and
# the extension cannot be called with them. The traced choice then uses only the restriction that
# is a property of the algorithm itself (gemm1x1: a 1x1 filter, no padding; comparisons on symbolic
# sizes become guards); anything else an algorithm would refuse, and the workspace limit, is
# enforced by the kernels when the compiled graph runs (NotImplementedError naming the reason).
_TRACED_RULES: Dict[str, Rule] = {"gemm1x1": lambda p: _one_by_one(p)}


def _kernel_rule(algo: str) -> Rule:
    def rule(p: ConvProblem) -> Optional[str]:
        if torch.compiler.is_compiling():
            traced = _TRACED_RULES.get(algo)
            return traced(p) if traced is not None else None
        answer = kernel_query(algo, p)
        if answer is None or answer[0]:
            return None
        return f"the kernel cannot implement it: {answer[1]}"

    return rule


def _kernel_workspace(algo: str) -> Callable[[ConvProblem], int]:
    def workspace(p: ConvProblem) -> int:
        # The least it can run with (im2col runs fewer tasks, down to one image at a time), largest
        # over directions.
        if torch.compiler.is_compiling():
            return 0  # see _TRACED_RULES
        most = 0
        for d in (0, 1, 2):
            a = kernel_query(algo, p, d, 0)
            if a is not None and a[2] > most:
                most = a[2]
        return most

    return workspace


# The Hopper engine's forced tile configurations (csrc/cuda/conv2d_igemm_sm90.cu).
_SM90_TILES = ("128x128", "128x64", "64x64", "splitk")

# device type -> algorithm -> rule (only what was built appears for CUDA).
_RULES: Dict[str, Dict[str, Rule]] = {
    "cpu": {
        "direct": _all(_dtype_rule(_CPU_DTYPES), _kernel_rule("direct")),
        "im2col": _all(_dtype_rule(_CPU_DTYPES), _kernel_rule("im2col")),
        "gemm1x1": _all(_dtype_rule(_CPU_DTYPES), _kernel_rule("gemm1x1")),
    },
    # CUDA: the binding's dtype set, then the kernels' own can_implement (asked, not mirrored).
    "cuda": {
        "direct": _all(_dtype_rule(_CUDA_DTYPES + (torch.float64,)), _kernel_rule("direct")),
        "im2col": _all(_dtype_rule(_CUDA_DTYPES), _kernel_rule("im2col")),
        "gemm1x1": _all(_dtype_rule(_CUDA_DTYPES), _kernel_rule("gemm1x1")),
        # Tensor-core implicit GEMM (csrc/cuda/conv2d_igemm_tc.cu): fprop, dgrad and wgrad.
        "implicit_gemm": _all(_tf32_dtype_rule(), _kernel_rule("implicit_gemm")),
        # The Hopper engine (csrc/cuda/conv2d_igemm_sm90.cu: wgmma + TMA, sm_90a only): fprop, dgrad and
        # (16-bit) wgrad; never chosen by "auto" until it has run on a GPU. A backward direction it cannot
        # implement runs on implicit_gemm (direction_algo).
        "implicit_gemm_sm90": _all(_tf32_dtype_rule(), _kernel_rule("implicit_gemm_sm90")),
        # The same engine with one tile configuration forced (the kernel's rule chooses among these for
        # "implicit_gemm_sm90"); separate algorithms so that the autotuner and explain() see each.
        **{f"implicit_gemm_sm90_{t}": _all(_tf32_dtype_rule(), _kernel_rule(f"implicit_gemm_sm90_{t}"))
           for t in _SM90_TILES},
    },
}

# Algorithms whose dgrad/wgrad kernels do not cover every problem their fprop does: a backward
# direction they cannot implement runs on the named algorithm instead (the Hopper engine: no float32
# wgrad, no dgrad/wgrad with K not a multiple of 16 bytes; see direction_algo). Double backward always
# runs on it.
_BACKWARD_FALLBACK: Dict[str, Dict[str, str]] = {
    "cuda": {"implicit_gemm_sm90": "implicit_gemm", **{f"implicit_gemm_sm90_{t}": "implicit_gemm" for t in _SM90_TILES}}}


def backward_algo(algo: str, device_type: str) -> str:
    """The algorithm that computes dgrad/wgrad for a forward run with `algo` (device_type: a tensor's
    device type; the emulated CUDA device's is that of CUDA)."""
    if device_type == _ext.EMU_DEVICE:
        device_type = "cuda"
    return _BACKWARD_FALLBACK.get(device_type, {}).get(algo, algo)


def direction_algo(algo: str, direction: int, x: torch.Tensor, w: torch.Tensor, stride, padding, dilation,
                   groups: int) -> str:
    """The algorithm that runs backward direction `direction` (1 dgrad, 2 wgrad) of the conv of x and w
    whose forward ran `algo`: `algo` itself where its kernels implement that direction for these
    tensors, else its backward fallback (algo itself for algorithms without one)."""
    fallback = backward_algo(algo, x.device.type)
    if fallback == algo:
        return algo
    if torch.compiler.is_compiling():
        return fallback  # sizes may be symbolic: the fallback implements every direction
    problem = ConvProblem.from_tensors(x, w, stride, padding, dilation, groups)
    answer = kernel_query(algo, problem, direction) if why_not(algo, problem) is None else (False, "", 0)
    return algo if answer is not None and answer[0] else fallback


def _device_type(device: Union[str, torch.device, None]) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def _kernels_built(device_type: str, emulated: bool) -> bool:
    if device_type != "cuda":
        return True
    return _ext.emu_available() if emulated else _ext.built_with_cuda()


def available_algorithms(device: Union[str, torch.device] = "cpu") -> List[str]:
    """Algorithm names usable on `device` ("auto" first), e.g. ["auto", "direct", "im2col", "gemm1x1"]."""
    dev, emulated = problem_device(device if device is not None else "cpu")
    if not _kernels_built(dev, emulated):
        return []
    if dev not in _RULES:
        return []
    return ["auto"] + list(_RULES[dev])


def why_not(algo: str, problem: ConvProblem) -> Optional[str]:
    """None if `algo` can implement `problem`, else a sentence saying why not."""
    rules = _RULES.get(problem.device_type)
    if rules is None:
        return f"fastconv has no kernels for device type '{problem.device_type}'"
    if not _kernels_built(problem.device_type, problem.emulated):
        if problem.emulated:
            return "fastconv was built without the emulated CUDA device (see fastconv.build_info())"
        return "fastconv was built without CUDA kernels (see fastconv.build_info())"
    if algo not in rules:
        return f"unknown algorithm '{algo}' for {problem.device_type}"
    return rules[algo](problem)


def can_implement(algo: str, problem: ConvProblem) -> bool:
    return why_not(algo, problem) is None



# ---- traits: determinism and workspace ------------------------------------------------------------


def _elem_bytes(dtype: torch.dtype) -> int:
    return int(getattr(dtype, "itemsize", 4))


def _no_workspace(p: ConvProblem) -> int:
    return 0


@dataclass(frozen=True)
class AlgoTraits:
    """What the chooser needs to know about an algorithm besides `can_implement`.

    deterministic: bitwise-reproducible results for every direction (fixed reduction orders, no
        atomics); only these are eligible under torch.use_deterministic_algorithms(True).
    workspace_bytes: the smallest scratch buffer it can run with, largest over fprop/dgrad/wgrad.
    run: a Python implementation (input, weight, bias, stride, padding, dilation, groups) -> output,
        used by the autotuner instead of torch.ops.fastconv.conv2d (for algorithms registered from
        Python, e.g. in tests); None for the compiled kernels.
    """

    deterministic: bool = True
    workspace_bytes: Callable[[ConvProblem], int] = _no_workspace
    run: Optional[Callable[..., torch.Tensor]] = None


# Every CPU and CUDA kernel so far reduces in a fixed order without atomics (see csrc/*/ headers).
_TRAITS: Dict[str, Dict[str, AlgoTraits]] = {
    "cpu": {
        "direct": AlgoTraits(),
        "im2col": AlgoTraits(workspace_bytes=_kernel_workspace("im2col")),
        "gemm1x1": AlgoTraits(),
    },
    "cuda": {
        "direct": AlgoTraits(workspace_bytes=_kernel_workspace("direct")),
        "im2col": AlgoTraits(workspace_bytes=_kernel_workspace("im2col")),
        "gemm1x1": AlgoTraits(workspace_bytes=_kernel_workspace("gemm1x1")),
        "implicit_gemm": AlgoTraits(workspace_bytes=_kernel_workspace("implicit_gemm")),
        "implicit_gemm_sm90": AlgoTraits(workspace_bytes=_kernel_workspace("implicit_gemm_sm90")),
        **{f"implicit_gemm_sm90_{t}": AlgoTraits(workspace_bytes=_kernel_workspace(f"implicit_gemm_sm90_{t}"))
           for t in _SM90_TILES},
    },
}


# Bumped by every registry change, so memoised "auto" decisions are not reused across one.
_generation = 0


def traits(algo: str, device_type: str) -> AlgoTraits:
    """The traits of `algo` on `device_type` (the defaults for an algorithm registered without any)."""
    return _TRAITS.get(device_type, {}).get(algo, AlgoTraits())


def register_algorithm(device_type: str, name: str, rule: Rule, *, deterministic: bool = True,
                       workspace_bytes: Optional[Callable[[ConvProblem], int]] = None,
                       run: Optional[Callable[..., torch.Tensor]] = None) -> None:
    """Adds (or replaces) an algorithm in the registry: `rule(problem)` returns None when it can
    implement the problem, else the reason. Kernels added in C++ register here too, so "auto",
    explain() and the autotuner see them."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"fastconv.algorithms.register_algorithm: invalid algorithm name {name!r}")
    global _generation
    _RULES.setdefault(device_type, {})[name] = rule
    _TRAITS.setdefault(device_type, {})[name] = AlgoTraits(deterministic, workspace_bytes or _no_workspace, run)
    _generation += 1


def unregister_algorithm(device_type: str, name: str) -> None:
    """Removes an algorithm added with register_algorithm (no error if absent)."""
    global _generation
    _generation += 1
    _RULES.get(device_type, {}).pop(name, None)
    _TRAITS.get(device_type, {}).pop(name, None)
    if device_type not in ("cpu", "cuda"):
        for table in (_RULES, _TRAITS):
            if not table.get(device_type, True):
                del table[device_type]


def workspace_bytes(algo: str, problem: ConvProblem) -> int:
    """Estimated smallest workspace `algo` needs for `problem` (0 for none)."""
    return int(traits(algo, problem.device_type).workspace_bytes(problem))


def _deterministic_required() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def _not_deterministic_reason(algo: str) -> str:
    return (f"'{algo}' is not deterministic and torch.use_deterministic_algorithms(True) is set")


def eligibility(algo: str, problem: ConvProblem) -> Optional[str]:
    """None if "auto" may choose `algo` for `problem`, else why not: it cannot implement the problem,
    its workspace exceeds fastconv.backends.workspace_limit_mb, or it is not deterministic while
    torch.use_deterministic_algorithms(True) is set."""
    why = why_not(algo, problem)
    if why is not None:
        return why
    limit = backends.workspace_limit_mb << 20
    ws = workspace_bytes(algo, problem)
    if ws > limit:
        return (f"needs {ws / 2**20:.1f} MiB of workspace, over fastconv.backends.workspace_limit_mb "
                f"({backends.workspace_limit_mb} MiB)")
    if _deterministic_required() and not traits(algo, problem.device_type).deterministic:
        return _not_deterministic_reason(algo)
    return None


def candidates(problem: ConvProblem) -> Dict[str, Optional[str]]:
    """Every algorithm registered for the problem's device type -> None if eligible for "auto", else
    the reason it is not (see eligibility)."""
    return {a: eligibility(a, problem) for a in _RULES.get(problem.device_type, {})}


# ---- the heuristic ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeuristicRule:
    """One line of a device's heuristic: when `applies(problem)`, prefer `algo` (if eligible)."""

    name: str
    algo: str
    applies: Callable[[ConvProblem], bool]
    why: str


def _cuda_capability(p: ConvProblem) -> Optional[Tuple[int, int]]:
    if p.emulated:
        arch = _ext.emu_arch()
        return (arch // 10, arch % 10) if arch else None
    if not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_capability(p.device_index)
    except (RuntimeError, AssertionError, ValueError):
        return None


def _tensor_core_eligible(p: ConvProblem) -> bool:
    if "implicit_gemm" not in _RULES.get("cuda", {}):
        return False
    if p.dtype not in (torch.float16, torch.bfloat16):
        return False
    cap = _cuda_capability(p)
    return cap is not None and cap >= (8, 0)


def _is_1x1(p: ConvProblem) -> bool:
    return _one_by_one(p) is None


# Below this many multiply-adds per image a CUDA convolution is launch-bound: direct is one kernel
# per direction, im2col is an im2col kernel plus GEMM launches per chunk. Not yet measured on a GPU.
_TINY_MACS = 1 << 16

# CPU rules from measured tables: benchmarks/results/cpu-heuristics-2026-11-23/ (output.txt,
# results.json; float32, N=8, one thread, fprop/dgrad/wgrad medians). Totals below are the three summed.
_HEURISTICS: Dict[str, List[HeuristicRule]] = {
    "cpu": [
        HeuristicRule(
            "depthwise", "direct", lambda p: p.depthwise,
            "direct beat im2col in every measured depthwise shape, 1.6-11x in total (e.g. 128 "
            "channels 28x28 NCHW: 8.8 vs 57 ms); im2col runs one single-row GEMM per group"),
        HeuristicRule(
            "1x1", "gemm1x1", _is_1x1,
            "the activation is the GEMM operand, no column buffer; in total at or "
            "below im2col in 7 of 8 measured 1x1 shapes, 1.4-2.7x faster in NHWC"),
        HeuristicRule(
            "default", "im2col", lambda p: True,
            "1.9-26x faster than direct on every other measured shape; on the tiniest "
            "(9216 multiply-adds per image) the two are within 13% either way, so the CPU has no 'tiny' rule"),
    ],
    "cuda": [
        HeuristicRule(
            "tensor cores", "implicit_gemm", _tensor_core_eligible,
            "float16/bfloat16 on sm_80+ runs on tensor cores (this rule is active once 'implicit_gemm' is "
            "registered for CUDA)"),
        HeuristicRule(
            "1x1", "gemm1x1", _is_1x1,
            "1x1 filter, no padding: the activation is the GEMM operand, no column buffer (not yet measured)"),
        HeuristicRule(
            "depthwise", "direct", lambda p: p.depthwise,
            "one GEMM row per group wastes im2col's tiles; the direct depthwise kernel reads "
            "each input once per tile (not yet measured)"),
        HeuristicRule(
            "tiny", "direct", lambda p: p.macs_per_image < _TINY_MACS,
            f"fewer than {_TINY_MACS} multiply-adds per image: launch-bound, direct is one kernel (not yet measured)"),
        HeuristicRule(
            "default", "im2col", lambda p: True,
            "im2col + SIMT GEMM for everything else"),
    ],
}


def heuristic_rules(device_type: str) -> List[HeuristicRule]:
    """The heuristic of `device_type`, in the order it is applied."""
    return list(_HEURISTICS.get(device_type, []))


def heuristic_choice(problem: ConvProblem, eligible: Optional[Dict[str, Optional[str]]] = None
                     ) -> Tuple[str, str]:
    """(algorithm, the rule that chose it) for `problem`: the first rule of its device that applies
    and names an eligible algorithm; else the first eligible algorithm in registry order.
    Raises when nothing is eligible (see _nothing_eligible)."""
    if eligible is None:
        eligible = candidates(problem)
    ok = [a for a, why in eligible.items() if why is None]
    if not ok:
        _nothing_eligible(problem, eligible)
    for rule in _HEURISTICS.get(problem.device_type, []):
        if rule.algo in ok and rule.applies(problem):
            return rule.algo, f"rule '{rule.name}': {rule.why}"
    return ok[0], "fallback: the first eligible algorithm"


def heuristic(problem: ConvProblem) -> str:
    """The default choice without tuning; see heuristic_rules(device_type) for the documented rules.

    CPU (measured, benchmarks/results/cpu-heuristics-2026-11-23/): depthwise -> direct; 1x1 without
    padding -> gemm1x1; otherwise im2col.
    CUDA (not yet measured): float16/bfloat16 on sm_80+ -> implicit_gemm once registered; 1x1 ->
    gemm1x1; depthwise or tiny (< 2^16 MACs per image) -> direct; otherwise im2col.
    Algorithms that are not eligible (see eligibility) are skipped."""
    return heuristic_choice(problem)[0]


# An unsupported dtype raises NotImplementedError, the type torch's own kernels raise for one
# ("... not implemented for 'Bool'"); so does every other reason no algorithm can take a problem.
def _nothing_eligible(problem: ConvProblem, eligible: Dict[str, Optional[str]]) -> None:
    if not eligible:
        raise NotImplementedError(
            f"fastconv.conv2d: no algorithm can implement this problem: {why_not('direct', problem)}")
    reasons = "; ".join(f"{a}: {why}" for a, why in eligible.items())
    if _deterministic_required() and any(
            why_not(a, problem) is None and not traits(a, problem.device_type).deterministic for a in eligible):
        raise RuntimeError(f"fastconv.conv2d: no deterministic algorithm can implement this problem, but "
                           f"torch.use_deterministic_algorithms(True) is set ({reasons})")
    raise NotImplementedError(f"fastconv.conv2d: no algorithm can implement this problem: {reasons}")


def check_deterministic(algo: str, problem: ConvProblem) -> None:
    """Raises (or warns, in warn_only mode) when `algo` is not deterministic and
    torch.use_deterministic_algorithms(True) is set, as torch does for its own kernels."""
    if not _deterministic_required() or traits(algo, problem.device_type).deterministic:
        return
    msg = (f"fastconv.conv2d: algo '{algo}' does not have a deterministic implementation, but you set "
           f"'torch.use_deterministic_algorithms(True)'. Use algo='auto' or a deterministic algorithm "
           f"({[a for a in _RULES.get(problem.device_type, {}) if traits(a, problem.device_type).deterministic]}).")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, stacklevel=3)
        return
    raise RuntimeError(msg)


def _problem_torch_device(p: ConvProblem) -> str:
    return _ext.EMU_DEVICE if p.emulated else p.device_type


def _device_word(p: ConvProblem) -> str:
    if p.emulated:
        return "the emulated CUDA device"
    if p.device_type == "cuda" and not _ext.built_with_cuda():
        return "cuda on this CPU-only build"
    return p.device_type


def resolve(algo: str, problem: ConvProblem, input: Optional[torch.Tensor] = None,
            weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> str:
    """Turns the user's `algo` into a concrete algorithm, raising if it cannot be used. For "auto" the
    tensors (when given) let the autotuner time the candidates on them."""
    if not isinstance(algo, str):
        raise TypeError(f"fastconv.conv2d: algo must be a string, got {type(algo).__name__}")
    if problem.device_type == "meta":
        # Meta tensors only carry shapes (the fake kernels in fastconv/_meta.py answer for every
        # algorithm), so shape inference and model profiling work without choosing a real kernel.
        return "direct" if algo == "auto" else algo
    if algo == "auto":
        from fastconv.autotune import select

        return select(problem, input, weight, bias).algo
    here = [a for a in available_algorithms(_problem_torch_device(problem)) if a != "auto"]
    if algo not in here:
        known = {a for rules in _RULES.values() for a in rules}
        where = ("" if algo not in known else
                 f" ('{algo}' exists for another device or build, not for {_device_word(problem)})")
        raise ValueError(f"fastconv.conv2d: unknown algo '{algo}'{where}; choose one of {['auto'] + here}")
    why = why_not(algo, problem)
    if why is not None:
        raise NotImplementedError(f"fastconv.conv2d: algo '{algo}' cannot implement this configuration: {why}")
    ws, limit = workspace_bytes(algo, problem), backends.workspace_limit_mb << 20
    if ws > limit:  # the kernels would refuse too (csrc/torch/workspace.h): say it before running anything
        raise NotImplementedError(
            f"fastconv.conv2d: algo '{algo}' needs {ws} bytes of workspace for this configuration, over "
            f"fastconv.backends.workspace_limit_mb ({backends.workspace_limit_mb} MiB)")
    check_deterministic(algo, problem)
    return algo

