"""Epilogue fusion for fastconv and torch.nn models: fuse_for_inference, fuse_for_training, unfuse.

Each conv -> BatchNorm (-> ReLU) chain, and ResNet's relu(bn(conv(x)) + shortcut), becomes one
fastconv.fused.ConvBNAct2d call (the conv's own module, rebuilt with the same parameters):

    pattern            computed as
    conv+bn            conv2d_bias_act(x, w, scale, bias)                    (eval: running statistics)
    conv+bn+relu       conv2d_bias_act(x, w, scale, bias, relu=True)         (training: conv2d_bn_train
    conv+bn+add        conv2d_bias_act(x, w, scale, bias, residual)           computes the batch
    conv+bn+add+relu   conv2d_bias_act(x, w, scale, bias, residual, relu=True) statistics in the conv)

with scale = γ/√(running_var+ε) and bias = β + (conv_bias − running_mean)·scale computed from the
BatchNorm on every call, so nothing is folded into the weights: the BatchNorm stays where it was as
an AbsorbedBatchNorm2d (same parameters and buffers, identity forward) and the fused model's
state_dict keys and values are the unfused model's. The same modules run in training (batch
statistics, running statistics updated as nn.BatchNorm2d does) and in eval.

How chains are found, per module (each module's own forward, its submodules as leaves):
- nn.Sequential: consecutive children conv, bn[, nn.ReLU] (the ReLU child becomes an AbsorbedReLU);
  the Sequential stays a Sequential.
- any other module with children: torch.fx traces its forward one level deep; the chains found in
  its dataflow (a conv whose output feeds only the BatchNorm, the BatchNorm's output feeding only the
  ReLU or the add, each layer called once in the whole model) are rewritten in the graph, so the ReLU
  and add nodes disappear, and the module is replaced by a torch.fx.GraphModule of the same name that
  keeps every submodule, parameter, buffer and plain attribute of the original (its class name too).
  Tracing one level keeps each module's forward (GoogLeNet's training-only auxiliary heads still
  switch with train()/eval()); a chain that crosses a module boundary is not fused.
- a module fx cannot trace: torchvision's and fastconv.models' BasicBlock, Bottleneck and
  BasicConv2d (found by class name and layer names) get a fused forward (FusedBasicBlock, ...);
  other untraceable modules with conv and BatchNorm children are left unfused, with a warning.

Only exact nn.Conv2d / fastconv.Conv2d and nn.BatchNorm2d / fastconv.BatchNorm2d / BatchNormReLU2d
layers fuse (subclasses may change forward; parametrized, lazy and SyncBatchNorm layers are left), in
dtypes fastconv computes on their device. fastconv.unfuse (and fastconv.revert) restores the
original modules with the same state.
"""

from __future__ import annotations

import copy
import operator
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY

from fastconv import modules as fm
from fastconv.fused import _BN_TYPES, _CONV_TYPES, AbsorbedBatchNorm2d, ConvBNAct2d

__all__ = ["fuse_for_inference", "fuse_for_training", "unfuse", "fold_conv_bn", "FusionSummary"]

PATTERNS = ("conv+bn", "conv+bn+relu", "conv+bn+add", "conv+bn+add+relu")
SUMMARY_ATTR = "fastconv_fusion_summary"
_UNFUSED_ATTR = "_fastconv_unfused"  # on a fused GraphModule: the module it replaced; elsewhere: the class
_PAIR = re.compile(r"^conv(\d*)$")


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Folds eval-mode `bn` (running statistics) into `conv` in place: conv's weight is rescaled per
    output channel and its bias set (created if conv had none). Computed in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fastconv.fold_conv_bn: the BatchNorm has no running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"fastconv.fold_conv_bn: conv has {conv.out_channels} output channels, "
                         f"BatchNorm has {bn.num_features} features")
    w = conv.weight
    with torch.no_grad():
        var = bn.running_var.double()
        mean = bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        scale = gamma * torch.rsqrt(var + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        new_w = (w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        new_b = ((bias - mean) * scale + beta).to(w.dtype)
    conv.weight = nn.Parameter(new_w, requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(new_b, requires_grad=w.requires_grad)


# ---- the summary -------------------------------------------------------------------------------------------

@dataclass
class FusedLayer:
    conv: str  # qualified name of the conv (now a ConvBNAct2d)
    bn: str  # qualified name of the absorbed BatchNorm
    pattern: str  # one of PATTERNS
    via: str  # "fx" (graph rewrite), "sequential" or "block" (the structural fallback)


@dataclass
class FusionSummary:
    """What fuse_for_inference / fuse_for_training did: `counts` per pattern, every fused layer, and
    the modules left unfused (`left`: {name: why})."""

    mode: str
    layers: List[FusedLayer] = field(default_factory=list)
    left: Dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> Dict[str, int]:
        return {p: sum(lay.pattern == p for lay in self.layers) for p in PATTERNS}

    def __getitem__(self, pattern: str) -> int:
        return self.counts[pattern]

    def header(self) -> str:
        counts = ", ".join(f"{n} {p}" for p, n in self.counts.items() if n)
        return f"fastconv fusion ({self.mode}): {len(self.layers)} convs fused ({counts or 'none'})" + (
            f", {len(self.left)} modules left unfused" if self.left else "")

    def __str__(self) -> str:
        rows = [self.header()] + [f"  {lay.conv:<36} {lay.pattern:<17} bn={lay.bn} ({lay.via})" for lay in self.layers]
        rows += [f"  left: {name or '(root)'}: {why}" for name, why in self.left.items()]
        return "\n".join(rows)

    __repr__ = __str__


class _Header:
    # Bound as the root's instance-level extra_repr: print(model) starts with the summary line.
    def __init__(self, summary: FusionSummary) -> None:
        self.summary = summary

    def __call__(self) -> str:
        return self.summary.header()


# ---- fused modules for the structural fallback ---------------------------------------------------------------

class AbsorbedReLU(nn.ReLU):
    """An nn.ReLU of an nn.Sequential whose preceding conv computes it: identity forward."""

    def forward(self, input: Tensor) -> Tensor:
        return input

    def extra_repr(self) -> str:
        return f"absorbed_by={getattr(self, 'absorbed_by', '?')!r}"


class FusedBasicBlock(nn.Module):
    """A ResNet BasicBlock (torchvision's or fastconv.models') whose forward calls its fused convs:
    conv2(conv1(x), shortcut) = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut). Same children."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), identity)


class FusedBottleneck(nn.Module):
    """A ResNet Bottleneck with fused convs: conv3(conv2(conv1(x)), shortcut). Same children."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), identity)


class FusedBasicConv2d(nn.Module):
    """GoogLeNet/Inception's BasicConv2d with its conv fused: relu(bn(conv(x))) = conv(x). Same children."""

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


# class name -> (fused class, [(conv, bn, pattern)], does the forward need a downsample attribute)
_KNOWN_BLOCKS = {
    "BasicBlock": (FusedBasicBlock, [("conv1", "bn1", "conv+bn+relu"), ("conv2", "bn2", "conv+bn+add+relu")], True),
    "Bottleneck": (FusedBottleneck, [("conv1", "bn1", "conv+bn+relu"), ("conv2", "bn2", "conv+bn+relu"),
                                     ("conv3", "bn3", "conv+bn+add+relu")], True),
    "BasicConv2d": (FusedBasicConv2d, [("conv", "bn", "conv+bn+relu")], False),
}
_FUSED_BLOCKS = (FusedBasicBlock, FusedBottleneck, FusedBasicConv2d)


# ---- finding chains ----------------------------------------------------------------------------------------

class _OneLevel(torch.fx.Tracer):
    # Every submodule is a leaf: the graph is this module's own forward.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _trace(module: nn.Module) -> torch.fx.Graph:
    graph = _OneLevel().trace(module)
    for node in graph.nodes:
        node.type = None  # string annotations (`from __future__ import annotations`) would break pickling
    return graph


@dataclass
class _Chain:
    conv: str  # names relative to the module whose forward holds the chain
    bn: str
    pattern: str
    nodes: Tuple = ()  # fx: (conv node, bn node, add node or None, relu node or None)
    relu_child: Optional[str] = None  # Sequential: the ReLU child absorbed


_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


def _is_relu(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        ok = type(modules.get(node.target)) is nn.ReLU
    elif node.op == "call_function":
        ok = node.target in _RELU_FUNCTIONS
    else:
        ok = node.op == "call_method" and node.target in ("relu", "relu_")
    extra = node.args[1:] + tuple(v for k, v in node.kwargs.items() if k != "inplace")
    return ok and len(node.args) >= 1 and all(isinstance(a, bool) for a in extra)


def _is_add(node: torch.fx.Node) -> bool:
    ok = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target == "add")
    return ok and len(node.args) == 2 and not node.kwargs


class _Context:
    """Per-model facts the matchers need: qualified names, how often each layer is called, and which
    layers may fuse."""

    def __init__(self, model: nn.Module) -> None:
        self.names: Dict[int, List[str]] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), []).append(name)
        self.calls: Dict[int, int] = {}

    def called(self, m: nn.Module, n: int = 1) -> None:
        self.calls[id(m)] = self.calls.get(id(m), 0) + n

    def single(self, m: nn.Module) -> bool:
        return len(self.names.get(id(m), ())) == 1 and self.calls.get(id(m), 0) == 1

    def conv_ok(self, m: nn.Module) -> bool:
        from fastconv.convert import _dtype_problem

        return type(m) in _CONV_TYPES and self.single(m) and _dtype_problem(m.weight) is None

    def bn_ok(self, m: nn.Module, conv: nn.Module) -> bool:
        return type(m) in _BN_TYPES and self.single(m) and m.num_features == conv.out_channels


def _chains_in_graph(graph: torch.fx.Graph, module: nn.Module, ctx: _Context) -> List[_Chain]:
    modules = dict(module.named_modules())
    chains = []
    for bn_node in graph.nodes:
        if bn_node.op != "call_module" or len(bn_node.args) != 1 or bn_node.kwargs:
            continue
        conv_node = bn_node.args[0]
        if not isinstance(conv_node, torch.fx.Node) or conv_node.op != "call_module" or len(conv_node.users) != 1:
            continue
        if len(conv_node.args) != 1 or conv_node.kwargs or not isinstance(conv_node.args[0], torch.fx.Node):
            continue
        conv, bn = modules.get(conv_node.target), modules.get(bn_node.target)
        if conv is None or bn is None or not ctx.conv_ok(conv) or not ctx.bn_ok(bn, conv):
            continue
        add = relu = None
        pattern = "conv+bn"
        if isinstance(bn, fm.BatchNormReLU2d):
            pattern = "conv+bn+relu"
        elif len(bn_node.users) == 1:
            (user,) = bn_node.users
            if _is_relu(user, modules) and user.args[0] is bn_node:
                relu, pattern = user, "conv+bn+relu"
            elif _is_add(user) and isinstance(_other(user, bn_node), torch.fx.Node):
                add, pattern = user, "conv+bn+add"
                if len(add.users) == 1:
                    (after,) = add.users
                    if _is_relu(after, modules) and after.args[0] is add:
                        relu, pattern = after, "conv+bn+add+relu"
        chains.append(_Chain(conv_node.target, bn_node.target, pattern, (conv_node, bn_node, add, relu)))
    return chains


def _other(add: torch.fx.Node, node: torch.fx.Node):
    a, b = add.args
    if a is node and b is not node:
        return b
    if b is node and a is not node:
        return a
    return None


def _rewrite(graph: torch.fx.Graph, chains: List[_Chain]) -> None:
    for chain in chains:
        conv_node, bn_node, add, relu = chain.nodes
        last = relu or add or bn_node
        args = (conv_node.args[0],) if add is None else (conv_node.args[0], _other(add, bn_node))
        with graph.inserting_before(last):
            new = graph.call_module(conv_node.target, args)
        last.replace_all_uses_with(new)
        for node in (relu, add, bn_node, conv_node):
            if node is not None:
                graph.erase_node(node)
    graph.lint()


def _chains_in_sequential(seq: nn.Sequential, ctx: _Context) -> List[_Chain]:
    kids = list(seq.named_children())
    chains, i = [], 0
    while i + 1 < len(kids):
        (nc, conv), (nb, bn) = kids[i], kids[i + 1]
        if ctx.conv_ok(conv) and ctx.bn_ok(bn, conv):
            nxt = kids[i + 2] if i + 2 < len(kids) else (None, None)
            if isinstance(bn, fm.BatchNormReLU2d):
                chains.append(_Chain(nc, nb, "conv+bn+relu"))
            elif type(nxt[1]) is nn.ReLU and ctx.single(nxt[1]):
                chains.append(_Chain(nc, nb, "conv+bn+relu", relu_child=nxt[0]))
                i += 1
            else:
                chains.append(_Chain(nc, nb, "conv+bn"))
            i += 2
        else:
            i += 1
    return chains


def _chains_in_block(block: nn.Module, ctx: _Context) -> Optional[List[_Chain]]:
    _, layout, needs_downsample = _KNOWN_BLOCKS[type(block).__name__]
    if needs_downsample and not hasattr(block, "downsample"):
        return None
    chains = []
    for c, b, pattern in layout:
        conv, bn = getattr(block, c, None), getattr(block, b, None)
        if not isinstance(conv, nn.Module) or not isinstance(bn, nn.Module) or not (
                ctx.conv_ok(conv) and ctx.bn_ok(bn, conv)):
            return None
        chains.append(_Chain(c, b, pattern))
    return chains


# ---- applying them -----------------------------------------------------------------------------------------

def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


_PRESERVED = "_fastconv_preserved"


def _preserve(gm: torch.fx.GraphModule, name: str, value) -> None:
    # GraphModule's deepcopy rebuilds the module from its graph and keeps only the attributes listed in
    # meta[_USER_PRESERVED_ATTRIBUTES_KEY]; unpickling keeps every attribute but not that list, which
    # _repair rebuilds from the names kept in _fastconv_preserved.
    setattr(gm, name, value)
    gm.meta.setdefault(_USER_PRESERVED_ATTRIBUTES_KEY, {})[name] = value
    names = gm.__dict__.get(_PRESERVED, ()) + (name,)
    gm.__dict__[_PRESERVED] = names
    gm.meta[_USER_PRESERVED_ATTRIBUTES_KEY][_PRESERVED] = names


def _repair(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.fx.GraphModule) and _PRESERVED in m.__dict__:
            kept = m.meta.setdefault(_USER_PRESERVED_ATTRIBUTES_KEY, {})
            for name in m.__dict__[_PRESERVED] + (_PRESERVED,):
                if name in m.__dict__:
                    kept.setdefault(name, m.__dict__[name])


class _ClassName:
    # The instance-level _get_name of a fused GraphModule: repr shows the replaced module's class name
    # (GraphModule's own class_name does not survive a deepcopy).
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> str:
        return self.name


def _graph_module(module: nn.Module, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """A GraphModule running `graph` that holds everything `module` held, in the same order."""
    gm = torch.fx.GraphModule(module, graph, class_name=type(module).__name__)
    gm._modules = OrderedDict(module._modules)
    gm._parameters = OrderedDict(module._parameters)
    gm._buffers = OrderedDict(module._buffers)
    for k, v in module.__dict__.items():
        if k == "_non_persistent_buffers_set" or (k.endswith("hooks") and k.startswith("_")):
            _preserve(gm, k, copy.copy(v))
        elif not k.startswith("_") and k not in gm.__dict__ and k != "training":
            _preserve(gm, k, v)
    gm.training = module.training
    _preserve(gm, "_get_name", _ClassName(type(module).__name__))
    _preserve(gm, _UNFUSED_ATTR, (module,))  # a tuple: a module value would be registered as a child
    return gm


def _absorb_bn(bn: nn.BatchNorm2d, by: str) -> None:
    bn.__dict__[_UNFUSED_ATTR] = type(bn)
    bn.__class__ = AbsorbedBatchNorm2d
    bn.absorbed_by = by


def _fuse_chain(model: nn.Module, prefix: str, chain: _Chain, via: str, summary: FusionSummary) -> None:
    conv_name, bn_name = _join(prefix, chain.conv), _join(prefix, chain.bn)
    conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
    fused = ConvBNAct2d(conv, bn, relu=chain.pattern.endswith("relu"))
    fused.pattern, fused.bn_name = chain.pattern, bn_name
    _absorb_bn(bn, conv_name)
    _set_submodule(model, conv_name, fused)
    if chain.relu_child is not None:
        relu = model.get_submodule(_join(prefix, chain.relu_child))
        relu.__dict__[_UNFUSED_ATTR] = type(relu)
        relu.__class__ = AbsorbedReLU
        relu.absorbed_by = conv_name
    summary.layers.append(FusedLayer(conv_name, bn_name, chain.pattern, via))


def _has_conv_and_bn(m: nn.Module) -> bool:
    kids = list(m.children())
    return any(type(k) in _CONV_TYPES for k in kids) and any(type(k) in _BN_TYPES for k in kids)


def _fuse(model: nn.Module, inplace: bool, mode: str, fn: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.{fn}: expected an nn.Module, got {type(model).__name__}")
    _repair(model)
    if not inplace:
        model = copy.deepcopy(model)
    ctx = _Context(model)
    summary = FusionSummary(mode)
    plans = []  # (name, module, kind, graph)
    for name, m in model.named_modules():
        if not m._modules or isinstance(m, (ConvBNAct2d,) + _FUSED_BLOCKS) or type(m).forward is nn.Module.forward:
            continue  # nothing to fuse, already fused, or a container without a forward (ModuleList)
        if type(m) is nn.Sequential:
            for k in m.children():
                ctx.called(k)
            plans.append((name, m, "sequential", None))
            continue
        try:
            graph = _trace(m)
        except Exception as e:  # data-dependent control flow and the like
            for k in m.children():
                ctx.called(k)  # it may call any of them
            if type(m).__name__ in _KNOWN_BLOCKS:
                plans.append((name, m, "block", None))
            elif _has_conv_and_bn(m):
                summary.left[name] = f"torch.fx could not trace it ({type(e).__name__}: {e})"
            continue
        subs = dict(m.named_modules())
        for node in graph.nodes:
            if node.op == "call_module" and node.target in subs:
                ctx.called(subs[node.target])
        plans.append((name, m, "fx", graph))
    rewritten = []
    for name, m, kind, graph in plans:
        if len(ctx.names[id(m)]) != 1:
            continue  # a shared container: rewriting one path would change the other
        if kind == "sequential":
            chains = _chains_in_sequential(m, ctx)
        elif kind == "block":
            chains = _chains_in_block(m, ctx)
            if chains is None:
                summary.left[name] = "torch.fx could not trace it and its layers are not a known block's"
                continue
        else:
            chains = _chains_in_graph(graph, m, ctx)
        for chain in chains:
            _fuse_chain(model, name, chain, kind, summary)
        if kind == "block" and chains:
            m.__dict__[_UNFUSED_ATTR] = type(m)
            m.__class__ = _KNOWN_BLOCKS[type(m).__name__][0]
        elif kind == "fx" and chains:
            _rewrite(graph, chains)
            rewritten.append((name, graph))
    for name, graph in sorted(rewritten, key=lambda t: -t[0].count(".") - bool(t[0])):  # deepest first
        gm = _graph_module(model.get_submodule(name) if name else model, graph)
        if name:
            _set_submodule(model, name, gm)
        else:
            model = gm
    if summary.left:
        warnings.warn(f"fastconv.{fn}: left unfused: " + "; ".join(f"{n or '(root)'}: {w}"
                                                                     for n, w in summary.left.items()), stacklevel=3)
    _set_attr(model, SUMMARY_ATTR, summary)
    if type(model).extra_repr is nn.Module.extra_repr or isinstance(model, torch.fx.GraphModule):
        _set_attr(model, "extra_repr", _Header(summary))
    return model


def _set_attr(model: nn.Module, name: str, value) -> None:
    if isinstance(model, torch.fx.GraphModule):
        _preserve(model, name, value)
    else:
        setattr(model, name, value)


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Returns `model` (a deep copy unless inplace=True) with every conv -> BatchNorm2d [-> ReLU] chain
    and every relu(bn(conv(x)) + shortcut) computed by one fastconv.fused.ConvBNAct2d call (see the
    module docstring for how chains are found). Works on fastconv and plain torch.nn models; parameters,
    buffers and state_dict keys are unchanged, and `fastconv.unfuse` undoes it. The model must be in
    eval mode (RuntimeError otherwise; use fuse_for_training for a model that keeps training). A module
    whose forward was rewritten is replaced by a torch.fx.GraphModule, the root too: with inplace=True
    the layers are fused in place and the returned module is the one to call. The result's
    `fastconv_fusion_summary` (a FusionSummary) counts each pattern; print(model) starts with it."""
    if isinstance(model, nn.Module) and (model.training or any(m.training for m in model.modules())):
        raise RuntimeError("fastconv.fuse_for_inference: the model (or one of its layers) is in training mode; "
                           "call model.eval() first, or use fastconv.fuse_for_training")
    return _fuse(model, inplace, "inference", "fuse_for_inference")


def fuse_for_training(model: nn.Module, inplace: bool = False) -> nn.Module:
    """fuse_for_inference's rewrite for a model in any mode: in training each fused conv computes its
    BatchNorm's batch statistics (fastconv.fused.conv2d_bn_train) and updates the running statistics as
    nn.BatchNorm2d does; in eval it uses the running statistics. Gradients reach the conv's and the
    BatchNorm's parameters, which stay where they were (optimizers and state_dicts are unaffected)."""
    return _fuse(model, inplace, "training", "fuse_for_training")


def _unfused_conv(m: ConvBNAct2d) -> nn.Conv2d:
    conv = m.to_conv()
    bn = m.bn
    cls = bn.__dict__.pop(_UNFUSED_ATTR, None)
    if cls is not None and isinstance(bn, AbsorbedBatchNorm2d):
        bn.__class__ = cls
        bn.__dict__.pop("absorbed_by", None)
    return conv


def unfuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inverse of fuse_for_inference / fuse_for_training: every ConvBNAct2d becomes its original
    conv, every absorbed BatchNorm / ReLU its original class, every fused block and rewritten
    GraphModule the module it replaced, with the same parameters and buffers (shared when
    inplace=True, a deep copy otherwise)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.unfuse: expected an nn.Module, got {type(model).__name__}")
    _repair(model)
    if not inplace:
        model = copy.deepcopy(model)
    named = list(model.named_modules())
    for name, m in reversed(named):  # children before their parents
        if isinstance(m, ConvBNAct2d):
            new = _unfused_conv(m)
        elif isinstance(m, torch.fx.GraphModule) and _UNFUSED_ATTR in m.__dict__:
            (new,) = m.__dict__[_UNFUSED_ATTR]
            new._modules = OrderedDict(m._modules)
            new._parameters = OrderedDict(m._parameters)
            new._buffers = OrderedDict(m._buffers)
            new.training = m.training
        else:
            if isinstance(m, (AbsorbedReLU,) + _FUSED_BLOCKS) and _UNFUSED_ATTR in m.__dict__:
                m.__class__ = m.__dict__.pop(_UNFUSED_ATTR)
                m.__dict__.pop("absorbed_by", None)
            continue
        if name:
            _set_submodule(model, name, new)
        else:
            model = new
    for m in model.modules():  # an absorbed BatchNorm whose conv is gone (or was shared)
        if isinstance(m, AbsorbedBatchNorm2d) and _UNFUSED_ATTR in m.__dict__:
            m.__class__ = m.__dict__.pop(_UNFUSED_ATTR)
            m.__dict__.pop("absorbed_by", None)
    for attr in (SUMMARY_ATTR, "extra_repr", "_get_name", _PRESERVED, _UNFUSED_ATTR):
        if isinstance(model.__dict__.get(attr), (FusionSummary, _Header, _ClassName, tuple)):
            del model.__dict__[attr]
    return model


def is_fused(model: nn.Module) -> bool:
    return any(isinstance(m, (ConvBNAct2d, AbsorbedBatchNorm2d, AbsorbedReLU) + _FUSED_BLOCKS)
               or (isinstance(m, torch.fx.GraphModule) and _UNFUSED_ATTR in m.__dict__) for m in model.modules())
