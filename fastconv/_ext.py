"""Loads the compiled extension fastconv._C (which registers torch.ops.fastconv.*)."""

from __future__ import annotations

import importlib

_C = None
_IMPORT_ERROR: Exception | None = None

try:
    import torch  # noqa: F401  (libtorch must be loaded before the extension)

    _C = importlib.import_module("fastconv._C")
except ImportError as e:  # pragma: no cover - only when the package was not built
    _IMPORT_ERROR = e


def require_ext():
    """Returns fastconv._C or raises an ImportError that says how to build it."""
    if _C is None:
        raise ImportError(
            "fastconv's compiled extension fastconv._C is not available "
            f"({_IMPORT_ERROR}). Build it with: pip install --no-build-isolation -e ."
        )
    return _C


def built_with_cuda() -> bool:
    return bool(_C is not None and _C.built_with_cuda())


def cuda_arch_list() -> list[str]:
    if _C is None or not _C.built_with_cuda():
        return []
    return [a for a in _C.cuda_arch_list().replace(",", ";").split(";") if a]
