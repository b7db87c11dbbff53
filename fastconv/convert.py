"""Model surgery: swap torch.nn layers for their fastconv twins and back.

The swap changes each layer's class in place (the twins add no state of their own but `algo`),
so parameters, buffers, hooks, train/eval mode and every reference to the layer are kept.
Only exact torch.nn types are converted: a user subclass may override forward, and layers such
as SyncBatchNorm (cross-process statistics) are left as they are.
"""

from __future__ import annotations

import copy
from typing import Dict, Type

from torch import nn

from fastconv import modules as fm

_TO_FASTCONV: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.Conv2d: fm.Conv2d,
    nn.BatchNorm2d: fm.BatchNorm2d,
    nn.MaxPool2d: fm.MaxPool2d,
    nn.AvgPool2d: fm.AvgPool2d,
    nn.AdaptiveAvgPool2d: fm.AdaptiveAvgPool2d,
}
_TO_TORCH: Dict[Type[nn.Module], Type[nn.Module]] = {v: k for k, v in _TO_FASTCONV.items()}


def convert(model: nn.Module, inplace: bool = False, algo: str = "auto") -> nn.Module:
    """Returns `model` with every supported torch.nn layer (Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d) replaced by its fastconv twin. With inplace=False the model is deep-copied
    first. `algo` is set on every converted Conv2d."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.convert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for m in model.modules():
        twin = _TO_FASTCONV.get(type(m))
        if twin is not None:
            m.__class__ = twin
            if twin is fm.Conv2d:
                m.algo = algo
    return model


def revert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inverse of convert: fastconv layers become their torch.nn twins, sharing parameters
    when inplace=True (a deep copy otherwise)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.revert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is fm.BatchNormReLU2d:
            raise ValueError("fastconv.revert: BatchNormReLU2d has no single torch.nn twin; "
                             "replace it with nn.Sequential(nn.BatchNorm2d, nn.ReLU) first")
        twin = _TO_TORCH.get(type(m))
        if twin is not None:
            m.__class__ = twin
            m.__dict__.pop("algo", None)
    return model
