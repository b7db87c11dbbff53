"""The model registry behind fastconv.models.list_models() / get_model()."""

from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def maybe_fused(model: nn.Module, fused: bool, builder: str) -> nn.Module:
    """`model` itself when fused is False; else `model` passed through fastconv.fuse_for_training
    (in place): every conv -> BN (-> ReLU) chain, and ResNet's relu(bn(conv(x)) + shortcut), becomes
    one fastconv.fused.ConvBNAct2d, which trains (the conv also produces the batch statistics) and
    evaluates (BN folded on the fly into one conv2d_fused call). The parameter and buffer names stay
    the unfused model's, so the same state_dict loads into either; `fastconv.unfuse` undoes it. The
    returned module is the one to use: where the pass rewrote a forward it is a torch.fx.GraphModule
    (the root too), not an instance of the builder's class. A model without a conv -> BN chain comes
    back with nothing fused (its `fastconv_fusion_summary` counts nothing)."""
    if not fused:
        return model
    import fastconv

    fuse = getattr(fastconv, "fuse_for_training", None)
    if fuse is None:
        raise NotImplementedError(
            f"fastconv.models.{builder}(fused=True) needs fastconv.fuse_for_training, which this build of fastconv "
            "does not have yet (issue 15); build the model unfused, or for inference only use "
            "fastconv.fuse_for_inference(model.eval())")
    return fuse(model, inplace=True)


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
    get_model("resnet50", num_classes=10), get_model("resnet50", fused=True) (every builder takes
    `fused`; see maybe_fused)."""
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ValueError(f"fastconv.models.get_model: unknown model {name!r}; choose one of {list_models()}") from None
    return builder(**kwargs)
