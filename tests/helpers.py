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


# ---- one tolerance table for every device -----------------------------------------------------------
# float64 results must match torch's float64 to 1e-9 (relative to the reference's magnitude). At
# float32, float16 and bfloat16 our error against torch's float64 must be at most 2x torch's own
# error at the same precision, plus LOW_ATOL (the rounding of the final store); errors are max-abs
# divided by max(1, max |reference|) (flash-attention's rule).
F64_TOL = 1e-9
LOW_ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    ref = ref.detach().cpu().double()
    scale = max(1.0, ref.abs().max().item())
    return (a.detach().cpu().double() - ref).abs().max().item() / scale


def _run(fn: Callable, inputs, dtype, device, upstream_seed: int):
    ts = []
    for t in inputs:
        if t is None:
            ts.append(None)
            continue
        c = t.detach().to(dtype)
        c = c.to(device) if device != "cpu" else c
        ts.append(c.requires_grad_(True))
    out = fn(*ts)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    out.backward(g.to(out.dtype).to(out.device))
    return out.detach(), [None if t is None else t.grad for t in ts]


def judge_against_torch(ours: Callable, ref: Callable, inputs, dtype, device: str, what: str = "") -> None:
    """ours(*inputs) on `device` at `dtype` vs ref (torch) on the CPU: the output and the gradient of
    every tensor input, by the tolerance table above. `inputs` are float64 CPU tensors (or None)."""
    r_out, r_grads = _run(ref, inputs, torch.float64, "cpu", 77)
    o_out, o_grads = _run(ours, inputs, dtype, device, 77)
    assert o_out.device.type == torch.device(device).type, f"{what}: output on {o_out.device}, not {device}"
    assert o_out.dtype == dtype and o_out.shape == r_out.shape, (what, o_out.dtype, o_out.shape, r_out.shape)
    if dtype == torch.float64:
        t_out, t_grads = r_out, r_grads
    else:
        try:
            t_out, t_grads = _run(ref, inputs, dtype, "cpu", 77)
        except RuntimeError:  # torch has no CPU kernel at this dtype: its error is then the rounding
            t_out, t_grads = _run(lambda *a: ref(*[None if v is None else v.float() for v in a]).to(dtype),
                                  inputs, dtype, "cpu", 77)
    pairs = [("output", o_out, t_out, r_out)] + [
        (f"grad[{i}]", o, t, r) for i, (o, t, r) in enumerate(zip(o_grads, t_grads, r_grads))]
    for name, o, t, r in pairs:
        assert (o is None) == (r is None), f"{what} {name}: gradient present in one run only"
        if o is None:
            continue
        assert o.shape == r.shape, (what, name, o.shape, r.shape)
        eo = rel_err(o, r)
        if dtype == torch.float64:
            assert eo <= F64_TOL, f"{what} {name}: error {eo:.3g} against torch's float64 > {F64_TOL}"
        else:
            et = rel_err(t, r)
            assert eo <= 2 * et + LOW_ATOL[dtype], (
                f"{what} {name}: our error {eo:.3g} > 2 x torch's {et:.3g} + {LOW_ATOL[dtype]}")
