"""Convolution algorithms: which exist per device, which can implement a configuration, and the
default ("auto") choice.

Every algorithm has a `can_implement` rule here that mirrors the checks its kernels make, so
"auto" never picks an algorithm that would refuse, and forcing one that cannot take a
configuration fails early with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from fastconv import _ext


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

    @staticmethod
    def from_tensors(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups) -> "ConvProblem":
        n, c, h, wd = x.shape
        k, _, r, s = w.shape
        # N stays as given (it may be a SymInt under torch.compile's dynamic shapes: no guard on it).
        return ConvProblem(n, int(c), int(h), int(wd), int(k), int(r), int(s), tuple(stride),
                           tuple(padding), tuple(dilation), int(groups), x.dtype, x.device.type,
                           x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


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


def _any_config(p: ConvProblem) -> Optional[str]:
    return None


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


# device type -> algorithm -> rule (only what was built appears for CUDA).
_RULES: Dict[str, Dict[str, Rule]] = {
    "cpu": {
        "direct": _all(_dtype_rule(_CPU_DTYPES), _any_config),
        "im2col": _all(_dtype_rule(_CPU_DTYPES), _any_config),
        "gemm1x1": _all(_dtype_rule(_CPU_DTYPES), _one_by_one),
    },
    "cuda": {
        "direct": _all(_dtype_rule(_CUDA_DTYPES + (torch.float64,)), _any_config),
        "im2col": _all(_dtype_rule(_CUDA_DTYPES), _any_config),
        "gemm1x1": _all(_dtype_rule(_CUDA_DTYPES), _one_by_one),
    },
}


def _device_type(device: Union[str, torch.device, None]) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def available_algorithms(device: Union[str, torch.device] = "cpu") -> List[str]:
    """Algorithm names usable on `device` ("auto" first), e.g. ["auto", "direct", "im2col", "gemm1x1"]."""
    dev = _device_type(device)
    if dev == "cuda" and not _ext.built_with_cuda():
        return []
    if dev not in _RULES:
        return []
    return ["auto"] + list(_RULES[dev])


def why_not(algo: str, problem: ConvProblem) -> Optional[str]:
    """None if `algo` can implement `problem`, else a sentence saying why not."""
    rules = _RULES.get(problem.device_type)
    if rules is None:
        return f"fastconv has no kernels for device type '{problem.device_type}'"
    if problem.device_type == "cuda" and not _ext.built_with_cuda():
        return "fastconv was built without CUDA kernels (see fastconv.build_info())"
    if algo not in rules:
        return f"unknown algorithm '{algo}' for {problem.device_type}"
    return rules[algo](problem)


def can_implement(algo: str, problem: ConvProblem) -> bool:
    return why_not(algo, problem) is None


# Images below this many multiply-adds are dominated by setup costs; the direct loops win.
_TINY_MACS = 1 << 16


def heuristic(problem: ConvProblem) -> str:
    """The default choice. CPU and CUDA share one rule until measured tables say otherwise:
    1x1 without padding -> gemm1x1; depthwise or tiny -> direct; otherwise im2col (+GEMM)."""
    order: List[str] = []
    if _one_by_one(problem) is None:
        order.append("gemm1x1")
    if problem.depthwise or problem.macs_per_image < _TINY_MACS:
        order.append("direct")
    order += ["im2col", "direct"]
    for algo in order:
        if can_implement(algo, problem):
            return algo
    # Nothing can take it: report the most general algorithm's reason.
    raise TypeError(f"fastconv.conv2d: no algorithm can implement this problem: {why_not('direct', problem)}")


def resolve(algo: str, problem: ConvProblem) -> str:
    """Turns the user's `algo` into a concrete algorithm, raising if it cannot be used."""
    if not isinstance(algo, str):
        raise TypeError(f"fastconv.conv2d: algo must be a string, got {type(algo).__name__}")
    if algo == "auto":
        return heuristic(problem)
    known = {a for rules in _RULES.values() for a in rules}
    if algo not in known:
        raise ValueError(f"fastconv.conv2d: unknown algo '{algo}'; choose one of "
                         f"{['auto'] + sorted(known)}")
    why = why_not(algo, problem)
    if why is not None:
        if "dtype" in why:
            raise TypeError(f"fastconv.conv2d: algo '{algo}' cannot run: {why}")
        raise NotImplementedError(f"fastconv.conv2d: algo '{algo}' cannot implement this configuration: {why}")
    return algo
