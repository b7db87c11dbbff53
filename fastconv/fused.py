"""Convolution with a fused epilogue: torch.ops.fastconv.conv2d_fused, its autograd formula and the
Python entry point conv2d_bias_act.

    y = relu?( conv2d(x, w) · scale[k] + bias[k] + residual )

scale and bias are per output channel (a folded batch norm: scale = γ/√(σ²+ε), bias = β − μ·scale),
residual is a tensor of the output's size (a ResNet shortcut). On CUDA, algo="implicit_gemm" applies
the whole epilogue inside the tensor-core GEMM kernel; every other algorithm runs the convolution and
then the epilogue as one more pass. Like the other ops it composes with torch.func (grad, jvp, vmap)
and forward-mode AD through fastconv.autograd.call.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from fastconv import _meta  # noqa: F401  (registers the fake kernel, see fastconv/_meta_fused.py)
from fastconv import algorithms
from fastconv import autograd as _autograd
from torch.overrides import handle_torch_function, has_torch_function_variadic

from fastconv.functional import IntOr2, _check_tensor, _conv_prologue

ops = torch.ops.fastconv
call = _autograd.call


def _setup(ctx, inputs, output):
    x, w, scale, bias, residual, stride, padding, dilation, groups, relu, algo = inputs
    need_x, need_w, need_scale, need_bias, need_res = ctx.needs_input_grad[:5]
    # conv(x, w) is needed again only for the scale gradient; it is recomputed then rather than kept
    # alive for every fused layer (the op returns only y, and the common use is a frozen, folded BN).
    ctx.save_for_backward(x if (need_w or need_scale) else None,
                          w if (need_x or need_scale) else None,
                          scale if (need_x or need_w) else None,
                          output if relu else None)
    ctx.params = (stride, padding, dilation, groups, algo)
    ctx.x_shape, ctx.w_shape = x.shape, w.shape
    ctx.scale_dtype = scale.dtype if scale is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.relu = relu


def _channel_sum(t: Tensor, dtype: torch.dtype) -> Tensor:
    # Reduced in at least float32 so a half gradient is not summed in half precision.
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.sum((0, 2, 3), dtype=acc).to(dtype)


def _backward(ctx, g):
    x, w, scale, out = ctx.saved_tensors
    stride, padding, dilation, groups, algo = ctx.params
    need_x, need_w, need_scale, need_bias, need_res = ctx.needs_input_grad[:5]
    if ctx.relu:
        g = g * (out > 0)  # torch's threshold_backward: zero where the output is <= 0 (or NaN)
    g_res = g if need_res else None
    g_bias = _channel_sum(g, ctx.bias_dtype) if need_bias else None
    g_scale = None
    if need_scale:
        conv = call("conv2d", x, w, None, stride, padding, dilation, groups, algo)
        g_scale = _channel_sum(g * conv, ctx.scale_dtype)
    g_x = g_w = None
    if need_x or need_w:
        gc = g if scale is None else (g * scale.view(1, -1, 1, 1)).to(g.dtype)
        balgo = algorithms.backward_algo(algo, x.device.type)
        if need_x:
            g_x = call("conv2d_dgrad", gc, w, list(ctx.x_shape), stride, padding, dilation, groups, balgo)
        if need_w:
            g_w = call("conv2d_wgrad", gc, x, list(ctx.w_shape), stride, padding, dilation, groups, balgo)
    return g_x, g_w, g_scale, g_bias, g_res, None, None, None, None, None, None


def _jvp_setup(ctx, inputs, output):
    x, w, scale, bias, residual, stride, padding, dilation, groups, relu, algo = inputs
    ctx.save_for_forward(x, w, scale, output)
    ctx.fwd = (stride, padding, dilation, groups, algo)


def _jvp(ctx, dx, dw, dscale, dbias, dres, *_):
    # y = relu?(conv(x, w)·scale + bias + residual): conv is bilinear, the epilogue affine.
    x, w, scale, out = ctx.saved_tensors
    dconv = None
    if dx is not None:
        dconv = call("conv2d", dx, w, None, *ctx.fwd)
    if dw is not None:
        dconv = _autograd._add(dconv, call("conv2d", x, dw, None, *ctx.fwd))
    if dconv is None:
        t = torch.zeros_like(out)
    else:
        t = dconv if scale is None else dconv * scale.view(1, -1, 1, 1)
    if dscale is not None:
        t = t + call("conv2d", x, w, None, *ctx.fwd) * dscale.view(1, -1, 1, 1)
    if dbias is not None:
        t = t + dbias.view(1, -1, 1, 1)
    if dres is not None:
        t = t + dres
    if ctx.relu:
        t = torch.where(out > 0, t, torch.zeros_like(t))
    return t.to(out.dtype)


def _vmap(info, in_dims, x, w, scale, bias, residual, stride, padding, dilation, groups, relu, algo):
    xd, wd, sd, bd, rd = in_dims[:5]
    batch, cfg = info.batch_size, (stride, padding, dilation)
    if wd is None and sd is None and bd is None:
        # Shared weight and epilogue: the B batches are one batch of B·N images.
        y = ops.conv2d_fused(_autograd._into_n(x, xd, batch), w, scale, bias, _autograd._into_n(residual, rd, batch),
                             *cfg, groups, relu, algo)
        return y.unflatten(0, (batch, -1)), 0
    # A vmapped weight or epilogue: B convolutions side by side are one with B·groups groups.
    xc, wn = _autograd._into_c(x, xd, batch), _autograd._into_n(w, wd, batch)
    if not _autograd._groups_ok(algo, xc, (*xc.shape, wn.shape[0], *wn.shape[2:]), *cfg, batch * groups, 0):
        return _autograd._each(batch, lambda *a: ops.conv2d_fused(*a, *cfg, groups, relu, algo),
                               x, xd, w, wd, scale, sd, bias, bd, residual, rd)
    y = ops.conv2d_fused(xc, wn, _autograd._per_channel(scale, sd, batch), _autograd._per_channel(bias, bd, batch),
                         _autograd._into_c(residual, rd, batch), *cfg, batch * groups, relu, algo)
    return y.unflatten(1, (batch, -1)), 1


torch.library.register_autograd("fastconv::conv2d_fused", _backward, setup_context=_setup)
_autograd.register_twin("conv2d_fused", _setup, _backward, _jvp_setup, _jvp)
torch.library.register_vmap("fastconv::conv2d_fused", _vmap)


def conv2d_bias_act(input: Tensor, weight: Tensor, scale: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                    residual: Optional[Tensor] = None, stride: IntOr2 = 1, padding: Union[IntOr2, str] = 0,
                    dilation: IntOr2 = 1, groups: int = 1, relu: bool = False, *, algo: str = "auto") -> Tensor:
    """relu?( conv2d(input, weight) · scale[:, None, None] + bias[:, None, None] + residual ), fused.

    input Tensor[N, C, H, W] (or [C, H, W]), weight Tensor[K, C/groups, R, S], scale and bias Tensor[K]
    or None, residual Tensor[N, K, P, Q] (or [K, P, Q]) or None -> Tensor[N, K, P, Q]. Differentiable
    in every tensor argument. `algo` as for fastconv.functional.conv2d.
    """
    if has_torch_function_variadic(input, weight, scale, bias, residual):  # torch.fx proxies, subclasses
        return handle_torch_function(conv2d_bias_act, (input, weight, scale, bias, residual), input, weight, scale,
                                     bias, residual, stride, padding, dilation, groups, relu, algo=algo)
    op = "conv2d_bias_act"
    for name, t in (("scale", scale), ("residual", residual)):
        if t is not None:
            _check_tensor(t, name, op)
    x, batched, stride_, pad, dilation_, concrete = _conv_prologue(input, weight, bias, stride, padding, dilation,
                                                                   groups, algo, op)
    if residual is not None and not batched:
        residual = residual.unsqueeze(0)
    y = call("conv2d_fused", x, weight, scale, bias, residual, list(stride_), list(pad), list(dilation_), groups,
             bool(relu), concrete)
    return y if batched else y.squeeze(0)


__all__ = ["conv2d_bias_act"]
