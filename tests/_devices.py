"""Which device the `cuda` tests run on: a GPU when there is one (and fastconv has CUDA kernels),
else the emulated CUDA device "fcemu" (fastconv._C_emu: the same CUDA binding and kernels on host
memory), else none. Tests marked `emulated` run on either; on the emulator, inputs above
EMU_MAX_NUMEL elements skip (the GPU runs them) — the emulator runs every CUDA thread as a fiber."""

from __future__ import annotations

import math

import pytest
import torch

import fastconv

EMU_MAX_NUMEL = 160_000


def _pick() -> str | None:
    if torch.cuda.is_available() and fastconv._ext.built_with_cuda():
        return "cuda"
    if fastconv._ext.emu_available():
        return fastconv._ext.EMU_DEVICE
    return None


CUDA_DEVICE = _pick()
EMULATED = CUDA_DEVICE is not None and CUDA_DEVICE != "cuda"


def sm90_device() -> bool:
    """Whether CUDA_DEVICE is compute capability 9.0 (the Hopper engine's): an H100/H200, or the
    emulated device while it emulates sm_90."""
    if CUDA_DEVICE is None:
        return False
    if EMULATED:
        return fastconv._ext.emu_arch() == 90
    return torch.cuda.get_device_capability() == (9, 0)


def skip_if_too_big_for_emulator(shape) -> None:
    if EMULATED and math.prod(shape) > EMU_MAX_NUMEL:
        pytest.skip(f"{tuple(shape)} is too big for the emulated CUDA device (> {EMU_MAX_NUMEL} elements); "
                    "a GPU runs it")


def skip_if_emulated(why: str) -> None:
    if EMULATED:
        pytest.skip(f"needs a real GPU: {why}")


# The devices every device-parametrized test (tests/test_ops_devices.py, test_errors.py) runs on:
# the CPU always; the emulated CUDA device or the GPU, marked `cuda` (and `emulated`, which
# tests/conftest.py lets run without a GPU) so that `pytest -m cuda` selects them.
DEVICES = ["cpu"] + ([CUDA_DEVICE] if CUDA_DEVICE else [])
DEVICE_PARAMS = [pytest.param("cpu", id="cpu")] + (
    [pytest.param(CUDA_DEVICE, id=CUDA_DEVICE, marks=[pytest.mark.cuda, pytest.mark.emulated])]
    if CUDA_DEVICE else [])
