"""Model surgery: swap torch.nn layers for their fastconv twins and back.

The swap changes each layer's class in place (the twins add no state of their own but `algo`),
so parameters, buffers, hooks, train/eval mode and every reference to the layer are kept.
Only exact torch.nn types are converted: a user subclass may override forward, and layers such
as SyncBatchNorm (cross-process statistics), parametrized layers (torch.nn.utils.parametrize:
weight_norm, spectral_norm, ...) and lazy layers not yet initialised are left as they are. So are
layers whose dtype fastconv cannot compute in on their device (float16/bfloat16 on the CPU), with a
warning. The returned model's `fastconv_summary` (a ConversionSummary; printed with verbose=True)
lists every candidate layer, whether it was converted and why not.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Type

import torch
from torch import nn
from torch.nn.utils import parametrize

from fastconv import modules as fm

_TO_FASTCONV: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.Conv2d: fm.Conv2d,
    nn.BatchNorm2d: fm.BatchNorm2d,
    nn.MaxPool2d: fm.MaxPool2d,
    nn.AvgPool2d: fm.AvgPool2d,
    nn.AdaptiveAvgPool2d: fm.AdaptiveAvgPool2d,
}
_TO_TORCH: Dict[Type[nn.Module], Type[nn.Module]] = {v: k for k, v in _TO_FASTCONV.items()}
_FASTCONV_TYPES = tuple(_TO_TORCH) + (fm.BatchNormReLU2d,)

# What fastconv's kernels compute in, per device type (CUDA: fastconv.algorithms for conv details).
_CPU_DTYPES = (torch.float32, torch.float64)
_DEVICE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

SUMMARY_ATTR = "fastconv_summary"


@dataclass
class LayerDecision:
    name: str  # qualified module name ("" for the root)
    kind: str  # the layer's type name
    converted: bool  # a fastconv layer after convert() (also True for layers that already were)
    reason: str  # "converted", "already fastconv", or why it was left as it is


@dataclass
class ConversionSummary:
    """One LayerDecision per layer that is, or is a kind of, a layer convert() knows."""

    layers: List[LayerDecision] = field(default_factory=list)

    @property
    def converted(self) -> List[str]:
        return [d.name for d in self.layers if d.converted]

    @property
    def left(self) -> Dict[str, str]:
        """{layer name: why it was left as it is}."""
        return {d.name: d.reason for d in self.layers if not d.converted}

    def __str__(self) -> str:
        done = sum(d.reason == "converted" for d in self.layers)
        rows = [f"fastconv.convert: {done} layers converted, {len(self.converted) - done} already fastconv, "
                f"{len(self.left)} left as they are",
                f"  {'layer':<32} {'type':<22} {'result':<10} reason"]
        for d in self.layers:
            result = "converted" if d.reason == "converted" else "fastconv" if d.converted else "left"
            rows.append(f"  {d.name or '(root)':<32} {d.kind:<22} {result:<10} "
                        f"{d.reason if result == 'left' else ''}".rstrip())
        return "\n".join(rows)

    __repr__ = __str__


def _floating(m: nn.Module, recurse: bool) -> Optional[torch.Tensor]:
    tensors = itertools.chain(m.parameters(recurse=recurse), m.buffers(recurse=recurse))
    return next((t for t in tensors if not isinstance(t, nn.parameter.UninitializedTensorMixin)
                 and (t.is_floating_point() or t.is_complex())), None)


def _walk(m: nn.Module, name: str, context: Optional[torch.Tensor]
          ) -> Iterator[Tuple[str, nn.Module, Optional[torch.Tensor]]]:
    """(name, module, a tensor giving the dtype and device it computes in): its own parameter or buffer,
    else its parent's, whose inputs it most likely sees (a pooling layer inside a float16 block)."""
    own, below = _floating(m, recurse=False), _floating(m, recurse=True)
    yield name, m, own if own is not None else context
    here = below if below is not None else context
    for child_name, child in m.named_children():
        yield from _walk(child, f"{name}.{child_name}" if name else child_name, here)


def _dtype_problem(t: Optional[torch.Tensor]) -> Optional[str]:
    if t is None or t.device.type == "meta":
        return None
    dtype = str(t.dtype).replace("torch.", "")
    allowed = _CPU_DTYPES if t.device.type == "cpu" else _DEVICE_DTYPES
    if t.dtype in allowed:
        return None
    names = "/".join(str(d).replace("torch.", "") for d in allowed)
    return f"{dtype} on {t.device.type}: fastconv computes {names} there"


def _why_not(m: nn.Module) -> Optional[str]:
    """Why a layer of a known kind (a subclass, lazy, parametrized, SyncBatchNorm) is not converted;
    None when it is not one of those kinds at all."""
    cls = type(m)
    if isinstance(m, nn.modules.lazy.LazyModuleMixin) and getattr(cls, "cls_to_become", None) in _TO_FASTCONV:
        return "lazy layer, not initialised yet: run one forward, then convert"
    if isinstance(m, nn.SyncBatchNorm):
        return "SyncBatchNorm: cross-process statistics stay torch's"
    if not isinstance(m, tuple(_TO_FASTCONV)):
        return None
    if parametrize.is_parametrized(m):
        names = ", ".join(sorted(m.parametrizations.keys()))
        return f"parametrized ({names} via torch.nn.utils.parametrize, e.g. weight_norm/spectral_norm)"
    base = next(b for b in cls.__mro__ if b in _TO_FASTCONV)
    return f"subclass of nn.{base.__name__} (its forward may differ)"


def _decide(model: nn.Module) -> List[Tuple[nn.Module, LayerDecision]]:
    out = []
    for name, m, context in _walk(model, "", None):
        kind = type(m).__name__
        if isinstance(m, _FASTCONV_TYPES):
            out.append((m, LayerDecision(name, kind, True, "already fastconv")))
        elif type(m) in _TO_FASTCONV:
            problem = _dtype_problem(context)
            out.append((m, LayerDecision(name, kind, problem is None, problem or "converted")))
        else:
            why = _why_not(m)
            if why is not None:
                out.append((m, LayerDecision(name, kind, False, why)))
    return out


def convert(model: nn.Module, inplace: bool = False, algo: str = "auto", verbose: bool = False) -> nn.Module:
    """Returns `model` with every supported torch.nn layer (Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d) replaced by its fastconv twin. With inplace=False the model is deep-copied
    first. `algo` is set on every converted Conv2d.

    Left as they are: subclasses, parametrized and uninitialised lazy layers, SyncBatchNorm, and
    layers in a dtype fastconv does not compute in on their device (float16/bfloat16 on the CPU:
    a UserWarning names them; convert after moving the model to a CUDA device). The returned model's
    `fastconv_summary` attribute (a ConversionSummary) says what happened to each layer;
    verbose=True prints it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.convert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        lazy = [n for n, m in model.named_modules() if isinstance(m, nn.modules.lazy.LazyModuleMixin)
                and m.has_uninitialized_params()]
        if lazy:
            raise ValueError(f"fastconv.convert: lazy layers not initialised yet ({', '.join(lazy[:4])}) cannot be "
                             "copied: run one forward first, or pass inplace=True (which leaves them as torch's)")
        model = copy.deepcopy(model)
    decisions = _decide(model)
    for m, d in decisions:
        if d.reason == "converted":
            m.__class__ = _TO_FASTCONV[type(m)]
            if type(m) is fm.Conv2d:
                m.algo = algo
    summary = ConversionSummary([d for _, d in decisions])
    by_dtype = [d for m, d in decisions if not d.converted and type(m) in _TO_FASTCONV]  # left for the dtype
    if by_dtype:
        names = ", ".join(d.name or "(root)" for d in by_dtype[:8]) + (", ..." if len(by_dtype) > 8 else "")
        warnings.warn(f"fastconv.convert: left {len(by_dtype)} layers as torch's ({names}): {by_dtype[0].reason}. "
                      "Convert after moving the model to a CUDA device, or keep it in float32", UserWarning, stacklevel=2)
    setattr(model, SUMMARY_ATTR, summary)
    if verbose:
        print(summary)
    return model


def revert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inverse of convert: fastconv layers become their torch.nn twins, sharing parameters
    when inplace=True (a deep copy otherwise). A fused model (fuse_for_inference / fuse_for_training)
    is unfused first (fastconv.unfuse); the result may then be a new root module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.revert: expected an nn.Module, got {type(model).__name__}")
    from fastconv import fuse  # (fuse imports this module)

    fuse._repair(model)  # (an unpickled fused GraphModule: what its deepcopy must keep)
    if not inplace:
        model = copy.deepcopy(model)
    if fuse.is_fused(model):  # fused layers first become the layers they were
        model = fuse.unfuse(model, inplace=True)
    for m in model.modules():
        if type(m) is fm.BatchNormReLU2d:
            raise ValueError("fastconv.revert: BatchNormReLU2d has no single torch.nn twin; "
                             "replace it with nn.Sequential(nn.BatchNorm2d, nn.ReLU) first")
        twin = _TO_TORCH.get(type(m))
        if twin is not None:
            m.__class__ = twin
            m.__dict__.pop("algo", None)
    model.__dict__.pop(SUMMARY_ATTR, None)
    return model


__all__ = ["convert", "revert", "ConversionSummary", "LayerDecision"]
