"""Checks that once differed between the CPU and CUDA bindings, now written once (csrc/torch/prepare.h)
and asserted on every device present: the CPU, the emulated CUDA device, a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF

DEVICES = ["cpu"] + ([fastconv._ext.EMU_DEVICE] if fastconv._ext.emu_available() else []) + (
    ["cuda"] if torch.cuda.is_available() and fastconv._ext.built_with_cuda() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool_padding_bounded_by_half_the_kernel(device):
    """k=3, padding=2, dilation=2: within half the dilated kernel (2 <= 5 // 2) but not half the kernel
    (2 > 3 // 2); torch refuses it, and so must every fastconv device (CUDA once accepted it)."""
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match="half of kernel size"):
        F.max_pool2d(x, 3, 1, 2, 2)
    with pytest.raises(RuntimeError, match="half of kernel size"):
        FF.max_pool2d(x.to(device), 3, 1, 2, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 1)])
def test_batch_norm_weight_of_any_shape_with_C_elements(device, shape):
    """torch accepts a weight/bias of C elements in any shape (CUDA once required exactly [C])."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = torch.rand(shape, dtype=torch.float64) + 0.5
    b = torch.randn(shape, dtype=torch.float64)
    ref = F.batch_norm(x, None, None, w, b, training=True)
    y = FF.batch_norm(x.to(device), None, None, w.to(device), b.to(device), training=True)
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-10, atol=1e-10)
    wd, bd = w.to(device).clone().requires_grad_(), b.to(device).clone().requires_grad_()
    FF.batch_norm(x.to(device), None, None, wd, bd, training=True).square().sum().backward()
    # torch's own backward refuses a non-1-D weight ("TensorAccessor expected 1 dims"): the reference
    # gradients are those of the same values as [C] vectors; ours come back in the parameters' shape.
    wr, br = w.reshape(-1).clone().requires_grad_(), b.reshape(-1).clone().requires_grad_()
    F.batch_norm(x, None, None, wr, br, training=True).square().sum().backward()
    assert wd.grad.shape == w.shape and bd.grad.shape == b.shape
    torch.testing.assert_close(wd.grad.cpu().reshape(-1), wr.grad, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(bd.grad.cpu().reshape(-1), br.grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_weight_with_wrong_count_is_refused(device):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="3 elements"):
        FF.batch_norm(x.to(device), None, None, torch.ones(4).to(device), None, training=True)


@pytest.mark.skipif(not fastconv._ext.emu_available(), reason="needs the CUDA binding's table (fastconv._C_emu)")
def test_cuda_algorithm_table_is_asked_not_mirrored():
    """fastconv.algorithms takes can_implement and workspace sizes from the CUDA binding itself."""
    from fastconv import algorithms as A

    p = A.ConvProblem(4, 64, 14, 14, 256, 3, 3, (1, 1), (1, 1), (1, 1), 1, torch.float32, "cuda", False, None, True)
    answers = [A.kernel_query("im2col", p, d, 0) for d in (0, 1, 2)]
    assert all(a is not None and a[2] > 0 for a in answers)
    assert A.workspace_bytes("im2col", p) == max(a[2] for a in answers)
    # gemm1x1 on a 3x3 filter: the kernel's own reason comes through.
    why = A.why_not("gemm1x1", p)
    assert why is not None and "kernel cannot implement" in why and "1x1" in why
    # Running with a workspace limit below what the kernel says it needs is refused by the binding.
    x = torch.randn(1, 64, 14, 14).to(fastconv._ext.EMU_DEVICE)
    w = torch.randn(256, 64, 3, 3).to(fastconv._ext.EMU_DEVICE)
    ok, _, need = A.kernel_query("im2col", A.ConvProblem.from_tensors(x, w, (1, 1), (1, 1), (1, 1), 1), 0, 0)
    assert not ok and need > 0
