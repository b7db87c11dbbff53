"""fastconv.fused.conv2d_bn_train / torch.ops.fastconv.conv2d_bn_train: training-mode conv -> batch norm
(-> ReLU) whose convolution also yields the batch statistics.

Reference: torch's conv2d + F.batch_norm(training=True) (+ relu), with the batch mean and the biased
batch variance of the conv output. CPU: float64 gradcheck of every differentiable input (and of conv_out
as an output), parity at float64 (1e-10) and float32 (1e-4), opcheck. The CUDA device (a GPU, or the
emulated CUDA device "fcemu": marked cuda + emulated) runs the same parity for float32 and float16 with
every algorithm, under tests/test_cuda_fused.py's rule at float16: our error against a float64
reference at most 2x torch's own float16 error plus a small atol.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers the ops)
from fastconv import backends
from fastconv.fused import conv2d_bn_train

from _devices import CUDA_DEVICE, skip_if_too_big_for_emulator, sm90_device

ops = torch.ops.fastconv

# name, N, C, H, W, K, R, S, stride, padding, dilation, groups
CASES = [
    ("3x3", 2, 4, 6, 6, 6, 3, 3, 1, 1, 1, 1),
    ("s2_p1_g2", 2, 4, 7, 6, 6, 3, 3, 2, 1, 1, 2),
    ("dil2_p2", 3, 3, 7, 7, 5, 3, 3, 1, 2, 2, 1),
]
CUDA_CASES = [
    ("c16_k16_8x8", 2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1),
    ("c12_k10_7x7_s2_tail", 2, 12, 7, 7, 10, 3, 3, 2, 1, 1, 1),
]


def _inputs(cfg, dtype, device="cpu", seed=0, layout="nchw"):
    _, n, c, h, w, k, r, s, stride, pad, dil, groups = cfg
    skip_if_too_big_for_emulator((n, c, h, w))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(k, c // groups, r, s, generator=g, dtype=torch.float64) * (c // groups * r * s) ** -0.5
    bw = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    bb = torch.randn(k, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x, wt = x.contiguous(memory_format=torch.channels_last), wt.contiguous(memory_format=torch.channels_last)
    return ([t.to(device=device, dtype=dtype) for t in (x, wt)], [t.to(device) for t in (bw, bb)],
            ([stride, stride], [pad, pad], [dil, dil], groups))


def _reference(x, w, bw, bb, stride, pad, dil, groups, relu, eps=1e-5):
    c = F.conv2d(x, w, None, stride, pad, dil, groups)
    mean = c.mean((0, 2, 3))
    var = c.var((0, 2, 3), unbiased=False)
    y = F.batch_norm(c, None, None, bw, bb, training=True, eps=eps)
    return (F.relu(y) if relu else y), mean, var


def _run(fn, x, w, bw, bb, grad_seed=5):
    ins = [t.detach().clone().requires_grad_() for t in (x, w, bw, bb)]
    y, mean, var = fn(*ins)
    g = torch.Generator().manual_seed(grad_seed)
    y.backward(torch.randn(y.shape, generator=g, dtype=torch.float64).to(device=y.device, dtype=y.dtype))
    return [y.detach(), mean.detach(), var.detach()], [t.grad for t in ins]


# ---- CPU: gradcheck, parity, opcheck -------------------------------------------------------------------

@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
@pytest.mark.parametrize("cfg", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_gradcheck_cpu(cfg, relu, algo):
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(cfg, torch.float64)
    ins = [t.requires_grad_() for t in (x, w, bw, bb)]

    def f(x, w, bw, bb):
        return conv2d_bn_train(x, w, bw, bb, stride, pad, dil, groups, relu=relu, algo=algo)[0]

    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6)


def test_gradcheck_cpu_conv_out_and_no_affine():
    # conv_out is a differentiable output too; bn_weight / bn_bias may be None.
    (x, w), _, (stride, pad, dil, groups) = _inputs(CASES[1], torch.float64)
    ins = [t.requires_grad_() for t in (x, w)]

    def f(x, w):
        out, conv_out, *_ = ops.conv2d_bn_train(x, w, None, None, stride, pad, dil, groups, 1e-5, True, "direct")
        return out, conv_out

    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
@pytest.mark.parametrize("cfg", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_parity_cpu(cfg, relu, dtype, tol, layout):
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(cfg, dtype, layout=layout)
    bw, bb = bw.to(dtype), bb.to(dtype)
    outs, grads = _run(lambda *a: conv2d_bn_train(*a, stride, pad, dil, groups, relu=relu), x, w, bw, bb)
    r_outs, r_grads = _run(lambda *a: _reference(*a, stride, pad, dil, groups, relu), x, w, bw, bb)
    for name, o, r in zip(["out", "mean", "var"] + ["grad x", "grad w", "grad bn_weight", "grad bn_bias"],
                          outs + grads, r_outs + r_grads):
        assert o.dtype == dtype, name
        torch.testing.assert_close(o, r, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")
    assert outs[0].is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                 else torch.contiguous_format)


def test_op_outputs_cpu():
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(CASES[0], torch.float64)
    out, conv_out, mean, invstd, var = ops.conv2d_bn_train(x, w, bw, bb, stride, pad, dil, groups, 1e-3, False,
                                                           "im2col")
    ref_conv = F.conv2d(x, w, None, stride, pad, dil, groups)
    torch.testing.assert_close(conv_out, ref_conv, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(invstd, 1 / torch.sqrt(var + 1e-3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, ref_conv.var((0, 2, 3), unbiased=False), rtol=1e-12, atol=1e-12)


def test_unbatched_and_errors_cpu():
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(CASES[0], torch.float64)
    y, mean, var = conv2d_bn_train(x[0], w, bw, bb, stride, pad, dil, groups)
    r, r_mean, r_var = _reference(x[:1], w, bw, bb, stride, pad, dil, groups, False)
    torch.testing.assert_close(y, r[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(var, r_var, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="eps must be positive"):
        conv2d_bn_train(x, w, bw, bb, eps=0.0)
    with pytest.raises(RuntimeError, match="should contain 6 elements"):
        conv2d_bn_train(x, w, bw[:3], bb)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv2d_bn_train(x[:1, :, :3, :3], w, bw, bb)


def test_needs_input_grad_cpu():
    # Only the asked-for gradients: a frozen conv weight and no affine parameters.
    (x, w), _, (stride, pad, dil, groups) = _inputs(CASES[0], torch.float64)
    x.requires_grad_()
    y, _, _ = conv2d_bn_train(x, w, None, None, stride, pad, dil, groups, relu=True)
    y.sum().backward()
    assert x.grad is not None and w.grad is None


@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
def test_opcheck_cpu(relu):
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(CASES[1], torch.float32)
    args = (x.requires_grad_(), w.requires_grad_(), bw.float().requires_grad_(), bb.float().requires_grad_(),
            stride, pad, dil, groups, 1e-5, relu, "direct")
    torch.library.opcheck(ops.conv2d_bn_train.default, args)


# ---- the CUDA device (a GPU or the emulated CUDA device) -----------------------------------------------

ATOL = {torch.float32: 1e-4, torch.float16: 2e-3}


def _rel_err(a, ref):
    ref = ref.double()
    return (a.double() - ref).abs().max().item() / max(1.0, ref.abs().max().item())


@pytest.mark.cuda
@pytest.mark.emulated
@pytest.mark.skipif(CUDA_DEVICE is None, reason="needs a CUDA GPU or the emulated CUDA device")
@pytest.mark.parametrize("algo", ["implicit_gemm", "implicit_gemm_sm90"])
def test_float32_on_tf32_composes_cuda(algo):
    # float32 on the tensor-core algorithms: the conv on TF32 (only while allowed), then batch_norm_train.
    if algo == "implicit_gemm_sm90" and not sm90_device():
        pytest.skip("the Hopper engine needs an sm_90 device")
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(CUDA_CASES[0], torch.float64, CUDA_DEVICE,
                                                           layout="channels_last")
    with backends.flags(allow_tf32=True):
        out, mean, var = conv2d_bn_train(x.float(), w.float(), bw.float(), bb.float(), stride, pad, dil, groups,
                                         algo=algo)
    r_out, r_mean, r_var = _reference(x, w, bw, bb, stride, pad, dil, groups, False)
    # TF32 operands (10-bit mantissas): errors of ~1e-3 of the conv's scale; a wrong statistic is O(1).
    for name, o, r in (("out", out, r_out), ("mean", mean, r_mean), ("var", var, r_var)):
        assert o.dtype == torch.float32 and _rel_err(o, r) < 1e-2, (name, _rel_err(o, r))


def _torch_low(x, w, bw, bb, stride, pad, dil, groups, relu):
    # torch at the low precision: the conv in x's dtype, batch norm on it in float32 (as cuDNN does).
    c = F.conv2d(x, w, None, stride, pad, dil, groups).float()
    y = F.batch_norm(c, None, None, bw.float(), bb.float(), training=True)
    y = (F.relu(y) if relu else y).to(x.dtype)
    return y, c.mean((0, 2, 3)), c.var((0, 2, 3), unbiased=False)


@pytest.mark.cuda
@pytest.mark.emulated
@pytest.mark.skipif(CUDA_DEVICE is None, reason="needs a CUDA GPU or the emulated CUDA device")
@pytest.mark.parametrize("algo", ["auto", "direct", "im2col", "implicit_gemm", "implicit_gemm_sm90"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("cfg,relu", [(CUDA_CASES[0], True), (CUDA_CASES[1], False)], ids=lambda v: str(v)[:24])
def test_parity_cuda(cfg, relu, dtype, algo):
    if algo == "implicit_gemm_sm90" and not sm90_device():
        pytest.skip("the Hopper engine needs an sm_90 device")
    layout = "channels_last" if algo.startswith("implicit_gemm") else "nchw"
    (x, w), (bw, bb), (stride, pad, dil, groups) = _inputs(cfg, torch.float64, CUDA_DEVICE, layout=layout)
    bw, bb = bw.float(), bb.float()
    # float32 on the tensor-core algorithms is TF32, off by default; the engine's TMA needs 16-byte pixel
    # rows (C = 12 halves is 24 bytes).
    refused = algo.startswith("implicit_gemm") and (dtype == torch.float32 or
                                                    (algo == "implicit_gemm_sm90" and cfg[2] * 2 % 16 != 0))
    if refused:
        with pytest.raises(NotImplementedError, match=algo):
            conv2d_bn_train(x.to(dtype), w.to(dtype), bw, bb, stride, pad, dil, groups, relu=relu, algo=algo)
        return

    def ours(x, w, bw, bb):
        return conv2d_bn_train(x, w, bw, bb, stride, pad, dil, groups, relu=relu, algo=algo)

    def ref(x, w, bw, bb):
        return _reference(x, w, bw, bb, stride, pad, dil, groups, relu)

    def theirs(x, w, bw, bb):
        return _torch_low(x, w, bw, bb, stride, pad, dil, groups, relu)

    o_outs, o_grads = _run(ours, x.to(dtype), w.to(dtype), bw, bb)
    r_outs, r_grads = _run(ref, x, w, bw.double(), bb.double())
    t_outs, t_grads = (_run(theirs, x.to(dtype), w.to(dtype), bw, bb) if dtype != torch.float32
                       else (r_outs, r_grads))
    assert o_outs[0].dtype == dtype and o_outs[1].dtype == torch.float32 and o_outs[2].dtype == torch.float32
    for name, o, t, r in zip(["out", "mean", "var", "grad x", "grad w", "grad bn_weight", "grad bn_bias"],
                             o_outs + o_grads, t_outs + t_grads, r_outs + r_grads):
        assert o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"{name}: non-finite values"
        eo, et = _rel_err(o, r), _rel_err(t, r)
        assert eo <= 2 * et + ATOL[dtype], f"{name}: our error {eo:.3g} > 2 x torch's {et:.3g} + {ATOL[dtype]}"
