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


# ---- the emulated CUDA device ------------------------------------------------------------------------
# fastconv._C_emu (built by default where the CUDA kernels are not) registers fastconv's CUDA binding
# and kernels, compiled against csrc/emu, for torch's PrivateUse1 device, renamed here "fcemu":
# `x.to("fcemu")` then runs every fastconv op through the CUDA binding on host memory.

EMU_DEVICE = "fcemu"
_C_emu = None
_EMU_ERROR: Exception | None = None


def _load_emu():
    global _C_emu, _EMU_ERROR
    if _C is None:
        return
    try:
        mod = importlib.import_module("fastconv._C_emu")
    except ImportError as e:
        _EMU_ERROR = e
        return
    backend = torch._C._get_privateuse1_backend_name()
    if backend == "privateuseone":
        torch.utils.rename_privateuse1_backend(EMU_DEVICE)
        torch.utils.generate_methods_for_privateuse1_backend(for_tensor=True, for_module=False, for_storage=False)
    elif backend != EMU_DEVICE:
        _EMU_ERROR = RuntimeError(f"torch's PrivateUse1 device is already taken by '{backend}'")
        return
    mod.register_hooks()
    if not hasattr(torch, EMU_DEVICE):
        torch._register_device_module(EMU_DEVICE, importlib.import_module("fastconv._emu_device"))
    _C_emu = mod


_load_emu()


def emu_available() -> bool:
    """True when the emulated CUDA device ("fcemu") is built and registered."""
    return _C_emu is not None


def emu_arch() -> int:
    """The emulated device's compute capability as 80 or 90 (FASTCONV_EMU_ARCH, fastconv._ext._C_emu.set_arch)."""
    return int(_C_emu.arch()) if _C_emu is not None else 0


def is_emu_device(device) -> bool:
    return _C_emu is not None and torch.device(device).type == EMU_DEVICE


def cuda_binding(emulated: bool):
    """The module holding the CUDA binding, to ask its algorithm table: fastconv._C_emu for the
    emulated device; fastconv._C on a CUDA build, else fastconv._C_emu (the same table and the same
    host-side can_implement/workspace functions, compiled for the emulator); else None."""
    mods = (_C_emu,) if emulated else (_C if built_with_cuda() else None, _C_emu)
    return next((m for m in mods if m is not None and hasattr(m, "cuda_conv_query")), None)


def binding_modules() -> list:
    """Every loaded module that holds a binding (fastconv._C, fastconv._C_emu): each owns its copy
    of the extension's settings, such as the workspace limit."""
    return [m for m in (_C, _C_emu) if m is not None]


def set_workspace_limit(limit_bytes: int) -> None:
    """The most scratch memory one fastconv op may allocate, in every binding (workspace.h)."""
    for m in binding_modules():
        if hasattr(m, "set_workspace_limit"):
            m.set_workspace_limit(int(limit_bytes))


def set_allow_tf32(allow: bool) -> None:
    """Whether float32 convolutions may run on TF32 tensor cores, in every binding (workspace.h)."""
    for m in binding_modules():
        if hasattr(m, "set_allow_tf32"):
            m.set_allow_tf32(bool(allow))


def cpu_conv_query(algo: str, direction: int, in_size, w_size, geom, groups: int, elem_bytes: int,
                   channels_last: bool, workspace_limit: int):
    """The CPU algorithms' answer (ok, reason, workspace_bytes), or None without the extension."""
    if _C is None or not hasattr(_C, "cpu_conv_query"):
        return None
    return _C.cpu_conv_query(algo, direction, in_size, w_size, geom, groups, elem_bytes, channels_last,
                             workspace_limit)
