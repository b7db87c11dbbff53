"""fastconv.explain(): what algo="auto" would run for a convolution, and why.

    fastconv.explain(fastconv.Conv2d(64, 128, 3, padding=1), (8, 64, 56, 56))
    fastconv.explain(weight, input, stride=2, padding=1)        # tensors (or shapes)
    fastconv.explain(problem)                                   # a fastconv.algorithms.ConvProblem
    fastconv.explain(conv, x, tune=True)                        # time the candidates now
    fastconv.explain(model, (1, 3, 224, 224))                   # every convolution of a model, as a table

prints (unless verbose=False) and returns an Explanation: every registered algorithm with whether it
can implement the problem (and why not), its determinism, workspace and tuned time if any, then the
choice and where it came from (plan, tuning, or which heuristic rule). For a model, a
ModelExplanation: one Explanation per convolution call, sized by a shapes-only forward (meta tensors).
Only convolutions have an algorithm to choose; pooling and batch norm layers have one kernel each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fastconv import _ext, algorithms, backends, plans
from fastconv.algorithms import ConvProblem
from fastconv.autotune import Choice, select

Shape = Sequence[int]


@dataclass
class CandidateInfo:
    name: str
    eligible: bool
    reason: Optional[str]  # why "auto" may not use it (None when eligible)
    deterministic: bool
    workspace_bytes: int
    time_ms: Optional[float] = None  # median forward time if tuned
    rejected: Optional[str] = None  # why tuning excluded it (failed / mismatched)
    config: Optional[str] = None  # what its kernel would run (the Hopper engine's tile plan), if it says


@dataclass
class Explanation:
    problem: ConvProblem
    device: str
    key: Optional[str]
    candidates: List[CandidateInfo]
    choice: str
    source: str  # "plan", "tuned", "heuristic" or "forced"
    reason: str
    tuning: Optional[str] = None  # why no tuning happened
    settings: Dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        p = self.problem
        lines = [
            f"fastconv.explain: conv2d {str(p.dtype).replace('torch.', '')} {p.layout} on {self.device}",
            f"  input [{p.N}, {p.C}, {p.H}, {p.W}]  weight [{p.K}, {p.C // p.groups}, {p.R}, {p.S}]  "
            f"stride {p.stride}  padding {p.padding}  dilation {p.dilation}  groups {p.groups}  "
            f"-> output [{p.N}, {p.K}, {p.P}, {p.Q}]",
            f"  plan key: {self.key}",
        ]
        width = max([14] + [len(c.name) + 2 for c in self.candidates])  # the engine's names are long
        lines.append(f"  {'algorithm':<{width}}{'eligible':<10}{'determ.':<9}{'workspace':>12}{'time (ms)':>12}  notes")
        for c in self.candidates:
            ws = _fmt_bytes(c.workspace_bytes)
            t = f"{c.time_ms:.4g}" if c.time_ms is not None else "-"
            note = c.reason or c.rejected or c.config or ""
            mark = "->" if c.name == self.choice else "  "
            lines.append(f"{mark}{c.name:<{width}}{'yes' if c.eligible else 'no':<10}{'yes' if c.deterministic else 'no':<9}"
                         f"{ws:>12}{t:>12}  {note}".rstrip())
        lines.append(f"  choice: {self.choice} ({self.source}: {self.reason})")
        if self.tuning:
            lines.append(f"  not tuned: {self.tuning}")
        return "\n".join(lines)

    __repr__ = __str__


@dataclass
class ModelExplanation:
    """explain(model, input): one (layer name, Explanation) per distinct call of each Conv2d, in call order."""

    layers: List[Tuple[str, Explanation]]

    def __str__(self) -> str:
        lines = [f"fastconv.explain: {len(self.layers)} convolutions",
                 f"  {'layer':<28} {'input':<20} {'weight':<18} {'stride':<7} {'pad':<7} {'dil':<7} {'groups':<7} "
                 f"{'choice':<14} reason"]
        for name, ex in self.layers:
            p = ex.problem
            lines.append(f"  {name:<28} {str([p.N, p.C, p.H, p.W]):<20} {str([p.K, p.C // p.groups, p.R, p.S]):<18} "
                         f"{_fmt_pair(p.stride):<7} {_fmt_pair(p.padding):<7} {_fmt_pair(p.dilation):<7} {p.groups:<7} "
                         f"{ex.choice:<14} {ex.source}: {ex.reason}")
        return "\n".join(lines)

    __repr__ = __str__


def _fmt_pair(t: Tuple[int, int]) -> str:
    return f"{t[0]}x{t[1]}"


def _fmt_bytes(n: int) -> str:
    if n == 0:
        return "0"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, (list, tuple, torch.Size)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


_ACCEPTS = ("fastconv.explain accepts a torch.nn.Conv2d (or fastconv.Conv2d) with its input, a weight tensor or "
            "shape [K, C/groups, R, S] with the input, a fastconv.algorithms.ConvProblem, or a model (an nn.Module "
            "containing Conv2d layers) with its input, e.g. explain(model, (1, 3, 224, 224)).")


def _is_shape(v) -> bool:
    return isinstance(v, (list, tuple, torch.Size)) and all(isinstance(d, int) and not isinstance(d, bool) for d in v)


def _problem_from(conv, input, stride, padding, dilation, groups, dtype, device, channels_last
                  ) -> Tuple[ConvProblem, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], str]:
    """(problem, input tensor or None, weight tensor or None, bias or None, forced algo or "auto")."""
    algo = "auto"
    bias = None
    if isinstance(conv, ConvProblem):
        return conv, None, None, None, algo
    if isinstance(conv, nn.Conv2d):
        weight: Union[torch.Tensor, Shape] = conv.weight
        bias = conv.bias
        stride, dilation, groups = conv.stride, conv.dilation, conv.groups
        algo = getattr(conv, "algo", "auto")
        padding = conv.padding
        if conv.padding_mode != "zeros":  # the module pads explicitly, then convolves without padding
            if isinstance(input, torch.Tensor):
                input = torch.nn.functional.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            elif input is not None:
                ph, pw = _pair(padding) if not isinstance(padding, str) else (0, 0)
                input = (*tuple(input)[:-2], int(input[-2]) + 2 * ph, int(input[-1]) + 2 * pw)
            padding = 0
    elif isinstance(conv, torch.Tensor) or _is_shape(conv):
        weight = conv
    else:
        raise TypeError(f"fastconv.explain: cannot explain a {type(conv).__name__}. {_ACCEPTS}")
    if input is None:
        raise TypeError("fastconv.explain: give the input (a tensor or its shape [N, C, H, W]) with a conv or weight")
    if not (isinstance(input, torch.Tensor) or _is_shape(input)):
        raise TypeError(f"fastconv.explain: input must be a tensor or its shape [N, C, H, W], got {type(input).__name__}")
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        else:  # "same": torch pads (total // 2) on each side (an odd remainder goes to the end)
            r, s = (weight.shape if isinstance(weight, torch.Tensor) else weight)[2:]
            d = _pair(dilation)
            padding = (d[0] * (int(r) - 1) // 2, d[1] * (int(s) - 1) // 2)
    x = input if isinstance(input, torch.Tensor) else None
    w = weight if isinstance(weight, torch.Tensor) else None
    xs = tuple(int(v) for v in (x.shape if x is not None else input))
    ws = tuple(int(v) for v in (w.shape if w is not None else weight))
    if len(xs) == 3:
        xs = (1,) + xs
        x = x.unsqueeze(0) if x is not None else None
    if len(xs) != 4 or len(ws) != 4:
        raise ValueError(f"fastconv.explain: expected an input [N, C, H, W] and a weight [K, C/groups, R, S], "
                         f"got {list(xs)} and {list(ws)}")
    groups = int(groups)
    if groups <= 0:
        raise RuntimeError("fastconv.explain: non-positive groups is not supported")
    if ws[0] % groups != 0:  # torch's checks and messages, in torch's order
        raise RuntimeError(f"fastconv.explain: Given groups={groups}, expected weight to be divisible by {groups} at "
                           f"dimension 0, but got weight of size [{list(ws)}] instead")
    if xs[1] != ws[1] * groups:
        raise RuntimeError(f"fastconv.explain: Given groups={groups}, weight of size {list(ws)}, expected input"
                           f"{list(xs)} to have {ws[1] * groups} channels, but got {xs[1]} channels instead")
    if x is not None:
        dtype, dev = x.dtype, x.device
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    else:
        dtype = dtype or (w.dtype if w is not None else torch.float32)
        dev = torch.device(device) if device is not None else (w.device if w is not None else torch.device("cpu"))
    dev_type, emulated = algorithms.problem_device(dev)
    problem = ConvProblem(xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], _pair(stride), _pair(padding),
                          _pair(dilation), groups, dtype, dev_type, bool(channels_last),
                          None if emulated else dev.index, emulated)
    return problem, x, w, bias, algo


def _random_tensors(problem: ConvProblem, x, w):
    dev = torch.device(_ext.EMU_DEVICE) if problem.emulated else (
        torch.device(problem.device_type, problem.device_index) if problem.device_index is not None
        else torch.device(problem.device_type))
    fmt = torch.channels_last if problem.channels_last else torch.contiguous_format
    if x is None:
        x = torch.randn(problem.N, problem.C, problem.H, problem.W, dtype=problem.dtype, device=dev)
        x = x.contiguous(memory_format=fmt)
    if w is None:
        w = torch.randn(problem.K, problem.C // problem.groups, problem.R, problem.S, dtype=problem.dtype, device=dev)
    return x, w


def _conv_calls(model: nn.Module, input, dtype: Optional[torch.dtype], channels_last: bool
                ) -> List[Tuple[str, nn.Conv2d, Tuple[int, ...], bool]]:
    """(name, the model's conv, its input shape, channels_last) per distinct conv call, from a forward of
    a meta copy of `model` (no data, no arithmetic) in eval mode."""
    from fastconv.convert import _TO_TORCH
    from fastconv.models.profile import _meta_copy

    net = _meta_copy(model).eval()
    for m in net.modules():  # the copy's convs as torch's: a forced algo= must not fail the shape pass
        if type(m) in _TO_TORCH and isinstance(m, nn.Conv2d):
            m.__class__ = _TO_TORCH[type(m)]
            m.__dict__.pop("algo", None)
    originals = dict(model.named_modules())
    calls: List[Tuple[str, nn.Conv2d, Tuple[int, ...], bool]] = []
    seen = set()

    def hook(name):
        def record(module, args):
            x = args[0]
            cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            key = (name, tuple(x.shape), cl)
            if key not in seen:
                seen.add(key)
                calls.append((name, originals[name], tuple(int(d) for d in x.shape), cl))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if isinstance(input, torch.Tensor):
        x = torch.empty_strided(input.shape, input.stride(), dtype=input.dtype, device="meta")
    else:
        if dtype is None:
            p = next((t for t in model.parameters() if t.is_floating_point()), None)
            dtype = p.dtype if p is not None else torch.float32
        x = torch.empty(tuple(input), dtype=dtype, device="meta")
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            net(x)
    except Exception as e:
        raise RuntimeError(f"fastconv.explain: could not run {type(model).__name__} on meta tensors of size "
                           f"{list(x.shape)} to size its convolutions ({type(e).__name__}: {e}); explain each "
                           "convolution with its input instead: explain(model.layer, (N, C, H, W))") from e
    finally:
        for h in handles:
            h.remove()
    return calls


def _explain_model(model: nn.Module, input, dtype, device, channels_last: bool, tune: bool) -> ModelExplanation:
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        what = type(model).__name__
        raise TypeError(f"fastconv.explain: {what} has no algorithm to choose (it contains no Conv2d; pooling and "
                        f"batch norm run one kernel each). {_ACCEPTS}")
    if input is None:
        raise TypeError(f"fastconv.explain: give the input of the {type(model).__name__} (a tensor or its shape, e.g. "
                        "explain(model, (1, 3, 224, 224))) to size each of its convolutions")
    if not (isinstance(input, torch.Tensor) or _is_shape(input)):
        raise TypeError(f"fastconv.explain: input must be a tensor or its shape, got {type(input).__name__}")
    layers = []
    for name, conv, shape, cl in _conv_calls(model, input, dtype, channels_last):
        layers.append((name, explain(conv, shape, dtype=dtype, device=device, channels_last=cl, tune=tune,
                                     verbose=False)))
    return ModelExplanation(layers)


def explain(conv: Union[ConvProblem, torch.nn.Conv2d, torch.Tensor, Shape],
            input: Union[torch.Tensor, Shape, None] = None, *, stride: Union[int, Shape] = 1,
            padding: Union[int, Shape, str] = 0, dilation: Union[int, Shape] = 1, groups: int = 1,
            dtype: Optional[torch.dtype] = None, device: Union[str, torch.device, None] = None,
            channels_last: bool = False, tune: bool = False, verbose: bool = True
            ) -> Union[Explanation, ModelExplanation]:
    """Explains the algorithm choice for one convolution, or for every convolution of a model.

    conv: a ConvProblem, a torch.nn.Conv2d (or fastconv.Conv2d; its own stride/padding/dilation/
    groups are used), a weight Tensor[K, C/groups, R, S] or its shape, or a model (any nn.Module
    containing Conv2d layers). input: Tensor[N, C, H, W] or its shape (not needed for a ConvProblem);
    its channels must match the weight's (RuntimeError, as torch's conv2d). Shapes default to float32
    on the CPU (or the weight's dtype/device); `dtype`, `device` and `channels_last` override that.
    For a model, each convolution's input size comes from a forward of a meta copy of the model in
    eval mode (no data; convolutions that run only in training, such as auxiliary heads, are not
    seen) and a ModelExplanation table is returned. tune=True times the candidates now (on the given
    tensors, or random ones of the shape) and stores the plan, even with fastconv.backends.autotune
    off. Prints the explanation unless verbose=False; returns it."""
    if isinstance(conv, nn.Module) and not isinstance(conv, nn.Conv2d):
        ex = _explain_model(conv, input, dtype, device, channels_last, tune)
        if verbose:
            print(ex)
        return ex
    problem, x, w, b, forced = _problem_from(conv, input, stride, padding, dilation, groups, dtype, device,
                                             channels_last)
    if tune:
        x, w = _random_tensors(problem, x, w)
        if b is not None and b.dtype != x.dtype:
            b = None
    try:
        choice = select(problem, x, w, b, tune=tune or None)
    except (TypeError, NotImplementedError, RuntimeError) as e:
        choice = Choice("(none)", "error", str(e), plans.device_name(problem), plans.problem_key(problem),
                        algorithms.candidates(problem))
    plan = choice.plan
    infos = []
    for name, why in choice.eligible.items():
        t = algorithms.traits(name, problem.device_type)
        infos.append(CandidateInfo(
            name, why is None, why, t.deterministic,
            algorithms.workspace_bytes(name, problem) if algorithms.can_implement(name, problem) else 0,
            plan.times_ms.get(name) if plan else None, plan.rejected.get(name) if plan else None,
            algorithms.kernel_plan(name, problem)))
    algo, source, reason = choice.algo, choice.source, choice.reason
    if forced != "auto":
        algo, source, reason = forced, "forced", f"the module's algo={forced!r} (auto would pick {choice.algo!r})"
    ex = Explanation(problem, choice.device, choice.key, infos, algo, source, reason, choice.tuning,
                     backends.settings())
    if verbose:
        print(ex)
    return ex


__all__ = ["explain", "Explanation", "ModelExplanation", "CandidateInfo"]
