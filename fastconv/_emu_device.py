"""torch.fcemu: the device module torch asks of the emulated CUDA device (one device, always there)."""

from __future__ import annotations

import torch


def is_available() -> bool:
    return True


def device_count() -> int:
    return 1


def current_device() -> int:
    return 0


def set_device(device) -> None:
    if torch.device(device, 0).index not in (0, None):
        raise ValueError("the emulated CUDA device has one device, fcemu:0")


def synchronize(device=None) -> None:
    """Kernels on the emulated device run at launch: nothing is ever pending."""


def _is_in_bad_fork() -> bool:
    return False


def manual_seed_all(seed: int) -> None:
    """Random numbers for fcemu tensors come from the CPU generator (torch's CPU fallback)."""


def get_amp_supported_dtype():
    return [torch.float16, torch.bfloat16]


def is_bf16_supported() -> bool:
    return True


# Random numbers of fcemu tensors come from the CPU generator; torch's RNG save/restore helpers
# (torch.testing, checkpointing) still ask the device module for a state.
def get_rng_state(device=None) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


def set_rng_state(new_state: torch.Tensor, device=None) -> None:
    """Nothing to restore: the emulated device has no generator of its own."""


def manual_seed(seed: int) -> None:
    """See manual_seed_all."""


def initial_seed() -> int:
    return torch.initial_seed()
