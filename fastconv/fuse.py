"""fuse_for_inference(model): fold every BatchNorm that directly follows a convolution into that
convolution's weight and bias, for eval-mode inference.

    y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta
      = conv(x, W * s) + (b - mean) * s + beta,      s = gamma / sqrt(var + eps)  (per output channel)

The folded BatchNorm becomes nn.Identity (a fused BatchNormReLU2d becomes nn.ReLU), so module names
and the forward code are unchanged. Pairs are found from the model's dataflow with torch.fx (a
BatchNorm whose only input is a conv's output, that conv feeding nothing else, each module called
once); models fx cannot trace fall back to a structural search: consecutive layers of nn.Sequential
and the conv/bn, convN/bnN attribute pairs of the blocks of fastconv.models and torchvision
(BasicBlock, Bottleneck, BasicConv2d).

Epilogue fusion (a following ReLU, and the residual add + ReLU of ResNet blocks, computed in the
conv kernel's epilogue) is not done here yet: the fused op exists (fastconv.fused.conv2d_bias_act,
CPU-tested; its tensor-core epilogue has not run on a GPU), and wiring it into this pass is the
tensor-core issue's follow-up. Until then this folds only.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Dict, List, Tuple

import torch
from torch import nn

from fastconv import modules as fm

__all__ = ["fuse_for_inference", "fold_conv_bn"]

# Blocks whose forward is known to apply `bn*` directly to the output of the same-numbered `conv*`.
_KNOWN_BLOCKS = {"BasicBlock", "Bottleneck", "BasicConv2d"}
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


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm) and m.running_mean is not None


class _Tracer(torch.fx.Tracer):
    # fastconv's layers (and every conv/BN subclass) are leaves, so the graph shows conv -> bn edges.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or type(m).__module__ == fm.__name__:
            return True
        return super().is_leaf_module(m, qualname)


def _pairs_from_graph(model: nn.Module) -> List[Tuple[str, str]]:
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_bn(modules[node.target]) or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or not _is_conv(modules[src.target]):
            continue
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue  # the conv's raw output is used elsewhere, or a module is shared
        pairs.append((src.target, node.target))
    return pairs


def _pairs_from_structure(model: nn.Module) -> List[Tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (na, a), (nb, b) in zip(kids, kids[1:]):
                if _is_conv(a) and _is_bn(b):
                    pairs.append((prefix + na, prefix + nb))
        elif type(m).__name__ in _KNOWN_BLOCKS:
            for attr, conv in m.named_children():
                match = _PAIR.match(attr)
                bn = getattr(m, f"bn{match.group(1)}", None) if match else None
                if match and _is_conv(conv) and bn is not None and _is_bn(bn):
                    pairs.append((prefix + attr, f"{prefix}bn{match.group(1)}"))
    return pairs


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Returns `model` (a deep copy unless inplace=True) with every BatchNorm2d that directly follows a
    Conv2d (torch.nn or fastconv) folded into the conv and replaced by nn.Identity (a BatchNormReLU2d
    by nn.ReLU). Works on fastconv and plain torch.nn models. The model must be in eval mode: folding
    freezes the running statistics, which training would keep updating (RuntimeError otherwise).
    The fused model's outputs equal the original's up to rounding."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.fuse_for_inference: expected an nn.Module, got {type(model).__name__}")
    if model.training or any(m.training for m in model.modules()):
        raise RuntimeError("fastconv.fuse_for_inference: the model (or one of its layers) is in training mode; "
                           "folding BatchNorm uses its running statistics, so call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    try:
        pairs = _pairs_from_graph(model)
    except Exception as e:  # fx cannot trace data-dependent control flow; fall back to known layouts
        warnings.warn(f"fastconv.fuse_for_inference: torch.fx could not trace the model ({type(e).__name__}: {e}); "
                      "folding only Sequential conv->bn pairs and known blocks", stacklevel=2)
        pairs = _pairs_from_structure(model)
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        fold_conv_bn(model.get_submodule(conv_name), bn)
        _set_submodule(model, bn_name, nn.ReLU() if isinstance(bn, fm.BatchNormReLU2d) else nn.Identity())
    return model
