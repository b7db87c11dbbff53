"""User-facing settings for how fastconv chooses convolution algorithms, in the style of
torch.backends.cudnn:

    fastconv.backends.autotune = True           # time the candidates on the first call per shape
    fastconv.backends.cache = False             # no on-disk plan cache
    with fastconv.backends.flags(autotune=True, workspace_limit_mb=64):
        model(x)

Every setting starts from an environment variable, read once when fastconv is imported:

    setting              environment variable           default
    autotune             FASTCONV_AUTOTUNE=1            False
    cache                FASTCONV_CACHE=0 disables      True   (the on-disk plan cache; only used
                                                                when autotune is on)
    cache_dir            FASTCONV_CACHE_DIR             ~/.cache/fastconv  (XDG_CACHE_HOME respected)
    workspace_limit_mb   FASTCONV_WORKSPACE_LIMIT_MB    256    (algorithms whose smallest scratch
                                                                buffer exceeds it are not chosen)
    allow_tf32           FASTCONV_ALLOW_TF32=1          False  (float32 convolutions may run on TF32
                                                                tensor cores: algorithms 'implicit_gemm'
                                                                and 'implicit_gemm_sm90'; unlike
                                                                torch.backends.cudnn.allow_tf32, off by
                                                                default, so float32 means float32)
    tune_warmup          FASTCONV_TUNE_WARMUP           1      (untimed runs per candidate)
    tune_iters           FASTCONV_TUNE_ITERS            3      (timed runs; the median is kept)

The settings are plain values held by this module: the algorithm chooser in fastconv.algorithms
reads them on every call. workspace_limit_mb and allow_tf32 are also settings of the compiled extension itself
(csrc/torch/workspace.h: the bindings size scratch memory under it, and an algorithm that cannot run
within it refuses with NotImplementedError); setting it here sets it there, so the chooser and the
kernels agree. The environment variable is read once, at import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from typing import Any, Dict, Iterator

_DEFAULT_WORKSPACE_LIMIT_MB = 256  # the extension's default (csrc/torch/workspace.h)


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if v == "":
        return default
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"fastconv.backends: {name} must be 0 or 1, got '{os.environ[name]}'")


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    if v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"fastconv.backends: {name} must be a non-negative integer, got '{v}'")
    return n


def _default_cache_dir() -> str:
    if os.environ.get("FASTCONV_CACHE_DIR"):
        return os.path.expanduser(os.environ["FASTCONV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv")


def _push_workspace_limit(mb: int) -> None:
    from fastconv import _ext  # the extension owns the setting the kernels obey

    _ext.set_workspace_limit(int(mb) << 20)


def _push_allow_tf32(v: bool) -> None:
    from fastconv import _ext

    _ext.set_allow_tf32(bool(v))


def _check_bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"fastconv.backends.{name} must be a bool, got {type(v).__name__}")
    return v


def _check_count(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"fastconv.backends.{name} must be an int >= {minimum}, got {v!r}")
    return v


class _BackendsModule(types.ModuleType):
    """This module's class: its settings are validated properties (like torch.backends.cudnn)."""

    @property
    def autotune(self) -> bool:
        return self.__dict__["_autotune"]

    @autotune.setter
    def autotune(self, v: bool) -> None:
        self.__dict__["_autotune"] = _check_bool("autotune", v)

    @property
    def cache(self) -> bool:
        return self.__dict__["_cache"]

    @cache.setter
    def cache(self, v: bool) -> None:
        self.__dict__["_cache"] = _check_bool("cache", v)

    @property
    def cache_dir(self) -> str:
        return self.__dict__["_cache_dir"]

    @cache_dir.setter
    def cache_dir(self, v: "str | os.PathLike") -> None:
        if not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"fastconv.backends.cache_dir must be a path, got {type(v).__name__}")
        self.__dict__["_cache_dir"] = os.path.expanduser(os.fspath(v))

    @property
    def workspace_limit_mb(self) -> int:
        return self.__dict__["_workspace_limit_mb"]

    @workspace_limit_mb.setter
    def workspace_limit_mb(self, v: int) -> None:
        self.__dict__["_workspace_limit_mb"] = _check_count("workspace_limit_mb", v, 0)
        _push_workspace_limit(v)

    @property
    def allow_tf32(self) -> bool:
        return self.__dict__["_allow_tf32"]

    @allow_tf32.setter
    def allow_tf32(self, v: bool) -> None:
        self.__dict__["_allow_tf32"] = _check_bool("allow_tf32", v)
        _push_allow_tf32(v)

    @property
    def tune_warmup(self) -> int:
        return self.__dict__["_tune_warmup"]

    @tune_warmup.setter
    def tune_warmup(self, v: int) -> None:
        self.__dict__["_tune_warmup"] = _check_count("tune_warmup", v, 0)

    @property
    def tune_iters(self) -> int:
        return self.__dict__["_tune_iters"]

    @tune_iters.setter
    def tune_iters(self, v: int) -> None:
        self.__dict__["_tune_iters"] = _check_count("tune_iters", v, 1)


_NAMES = ("autotune", "cache", "cache_dir", "workspace_limit_mb", "allow_tf32", "tune_warmup", "tune_iters")


def settings() -> Dict[str, Any]:
    """The current settings as a dict."""
    mod = sys.modules[__name__]
    return {n: getattr(mod, n) for n in _NAMES}


@contextlib.contextmanager
def flags(**kwargs: Any) -> Iterator[None]:
    """Sets the given settings inside a `with` block and restores the previous values after it."""
    mod = sys.modules[__name__]
    unknown = set(kwargs) - set(_NAMES)
    if unknown:
        raise TypeError(f"fastconv.backends.flags: unknown setting(s) {sorted(unknown)}; known: {list(_NAMES)}")
    old = {n: getattr(mod, n) for n in kwargs}
    try:
        for n, v in kwargs.items():
            setattr(mod, n, v)
        yield
    finally:
        for n, v in old.items():
            setattr(mod, n, v)


def _init(mod: _BackendsModule) -> None:
    d = mod.__dict__
    d["_autotune"] = _env_bool("FASTCONV_AUTOTUNE", False)
    d["_cache"] = _env_bool("FASTCONV_CACHE", True)
    d["_cache_dir"] = _default_cache_dir()
    d["_workspace_limit_mb"] = _env_int("FASTCONV_WORKSPACE_LIMIT_MB", _DEFAULT_WORKSPACE_LIMIT_MB)
    _push_workspace_limit(d["_workspace_limit_mb"])
    d["_allow_tf32"] = _env_bool("FASTCONV_ALLOW_TF32", False)
    _push_allow_tf32(d["_allow_tf32"])
    d["_tune_warmup"] = _env_int("FASTCONV_TUNE_WARMUP", 1)
    d["_tune_iters"] = max(1, _env_int("FASTCONV_TUNE_ITERS", 3))


sys.modules[__name__].__class__ = _BackendsModule
_init(sys.modules[__name__])

__all__ = ["settings", "flags", *_NAMES]
