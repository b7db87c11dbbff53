"""Test helpers: compare a fastconv callable with its torch reference, forward and backward."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# (rtol, atol) per dtype for results that went through a different summation order.
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-5)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, msg: str = "") -> None:
    rtol, atol = TOL[dtype or expected.dtype]
    # Scale atol with the magnitude of the reference so large sums are judged relatively.
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=msg or None)


def check_against_torch(ours: Callable, ref: Callable, inputs: Sequence[torch.Tensor], grad_idx: Sequence[int]) -> None:
    """Runs ours(*inputs) and ref(*inputs) on separate copies, compares outputs, then backpropagates
    the same random upstream gradient and compares the gradients of inputs[i] for i in grad_idx."""
    a = [t.detach().clone().requires_grad_(i in grad_idx) if t is not None else None for i, t in enumerate(inputs)]
    b = [t.detach().clone().requires_grad_(i in grad_idx) if t is not None else None for i, t in enumerate(inputs)]
    ya, yb = ours(*a), ref(*b)
    assert ya.shape == yb.shape, (ya.shape, yb.shape)
    assert_close(ya, yb)
    if not grad_idx:
        return
    g = torch.randn_like(yb)
    ga = torch.autograd.grad(ya, [a[i] for i in grad_idx], g)
    gb = torch.autograd.grad(yb, [b[i] for i in grad_idx], g)
    for i, x, y in zip(grad_idx, ga, gb):
        assert_close(x, y, msg=f"gradient of input {i}")
