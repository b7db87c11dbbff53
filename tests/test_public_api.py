"""The public namespace of `fastconv` is what its __all__ says (plus its own submodules), and every
public submodule's __all__ names real, non-module objects: no stray imports such as `annotations`
(from `from __future__ import annotations`), os or json."""

import importlib
import inspect
import types

import pytest

import fastconv

PUBLIC_MODULES = ["fastconv", "fastconv.functional", "fastconv.fused", "fastconv.modules", "fastconv.backends",
                  "fastconv.plans", "fastconv.autotune", "fastconv.fuse", "fastconv.onnx", "fastconv.models",
                  "fastconv.models.profile"]


def _is_own_submodule(obj, package) -> bool:
    return isinstance(obj, types.ModuleType) and obj.__name__.startswith(package.__name__ + ".")


def test_fastconv_namespace_is_intended():
    public = {n for n in dir(fastconv) if not n.startswith("_")}
    # submodules are bound by the import system whenever something imports them; nothing else may be
    submodules = {n for n in public if _is_own_submodule(getattr(fastconv, n), fastconv)}
    stray = public - submodules - set(fastconv.__all__)
    assert not stray, f"unintended public names in fastconv: {sorted(stray)}"
    assert all(hasattr(fastconv, n) for n in fastconv.__all__)
    assert not [n for n in public if inspect.ismodule(getattr(fastconv, n)) and n not in submodules]
    assert {"convert", "revert", "explain", "Conv2d", "onnx", "models", "fuse_for_inference", "fuse_for_training",
            "unfuse"} <= public


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_all_is_real_and_clean(name):
    mod = importlib.import_module(name)
    assert isinstance(mod.__all__, list) and mod.__all__
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing
    foreign = [n for n in mod.__all__
               if inspect.ismodule(getattr(mod, n)) and not _is_own_submodule(getattr(mod, n), fastconv)]
    assert not foreign and "annotations" not in mod.__all__
    star = {}
    exec(f"from {name} import *", star)
    assert not {"annotations", "os", "json", "torch"} & set(star)
