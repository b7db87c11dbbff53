"""Shared pytest setup: the `cuda` marker skips cleanly without a GPU or without fastconv's CUDA kernels,
except for tests also marked `emulated`, which then run on the emulated CUDA device (tests/_devices.py)."""

import pytest
import torch


def _cuda_ready() -> tuple:
    if not torch.cuda.is_available():
        return False, "no CUDA GPU available"
    import fastconv

    if not fastconv._ext.built_with_cuda():
        return False, "fastconv was built without CUDA kernels"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ready, why = _cuda_ready()
    if ready:
        return
    import fastconv

    emu = fastconv._ext.emu_available()
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "cuda" in item.keywords and not (emu and "emulated" in item.keywords):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
