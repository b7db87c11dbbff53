"""The model registry behind fastconv.models.list_models() / get_model()."""

from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: registers a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"fastconv.models: a model named {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> List[str]:
    """Sorted names of every registered builder (each a function in fastconv.models)."""
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the model registered as `name`, passing **kwargs to its builder:
    get_model("resnet50", num_classes=10)."""
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ValueError(f"fastconv.models.get_model: unknown model {name!r}; choose one of {list_models()}") from None
    return builder(**kwargs)
