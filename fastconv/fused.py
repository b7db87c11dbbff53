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

from typing import Optional, Tuple, Union

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
        px, pw = _autograd.plain(x), _autograd.plain(w)
        if need_x:
            dalgo = algorithms.direction_algo(algo, 1, px, pw, stride, padding, dilation, groups)
            g_x = call("conv2d_dgrad", gc, w, list(ctx.x_shape), stride, padding, dilation, groups, dalgo)
        if need_w:
            walgo = algorithms.direction_algo(algo, 2, px, pw, stride, padding, dilation, groups)
            g_w = call("conv2d_wgrad", gc, x, list(ctx.w_shape), stride, padding, dilation, groups, walgo)
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


def conv2d_bn_train(input: Tensor, weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                    stride: IntOr2 = 1, padding: Union[IntOr2, str] = 0, dilation: IntOr2 = 1, groups: int = 1,
                    eps: float = 1e-5, relu: bool = False, *, algo: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """Training-mode relu?( batch_norm( conv2d(input, weight) ) ) whose convolution also yields the
    batch statistics (torch.ops.fastconv.conv2d_bn_train): on CUDA with algo="implicit_gemm" or
    "implicit_gemm_sm90" (float16/bfloat16) the tensor-core kernel emits per-warp statistics partials,
    so no separate statistics pass reads the conv output.

    input Tensor[N, C, H, W] (or [C, H, W]), weight Tensor[K, C/groups, R, S] (no conv bias: it
    cancels under batch norm), bn_weight and bn_bias Tensor[K] or None -> (out Tensor[N, K, P, Q] (or
    [K, P, Q]), batch_mean Tensor[K], batch_var Tensor[K]), the batch variance biased (divide by
    N·P·Q; running_var takes the unbiased one, see batch_norm_update_running_stats_). Statistics are
    in the accumulation dtype (float32 for float16/bfloat16 inputs on CUDA). Differentiable in input,
    weight, bn_weight and bn_bias. `algo` chooses the convolution, as for fastconv.functional.conv2d.
    """
    if has_torch_function_variadic(input, weight, bn_weight, bn_bias):  # torch.fx proxies, subclasses
        return handle_torch_function(conv2d_bn_train, (input, weight, bn_weight, bn_bias), input, weight, bn_weight,
                                     bn_bias, stride, padding, dilation, groups, eps, relu, algo=algo)
    op = "conv2d_bn_train"
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if t is not None:
            _check_tensor(t, name, op)
    if eps <= 0:  # torch's training rule (NaN passes, as in torch)
        raise ValueError(f"fastconv.{op}: batch_norm eps must be positive during training, but got {eps}")
    x, batched, stride_, pad, dilation_, concrete = _conv_prologue(input, weight, None, stride, padding, dilation,
                                                                   groups, algo, op)
    out, _conv, mean, _invstd, var = ops.conv2d_bn_train(x, weight, bn_weight, bn_bias, list(stride_), list(pad),
                                                         list(dilation_), groups, float(eps), bool(relu), concrete)
    if out.shape[0] * out.shape[2] * out.shape[3] == 1:  # torch's F.batch_norm refuses it in training
        raise ValueError(f"fastconv.{op}: Expected more than 1 value per channel when training, got conv output "
                         f"size {tuple(out.shape)}")
    return (out if batched else out.squeeze(0)), mean, var


__all__ = ["conv2d_bias_act", "conv2d_bn_train"]


# ---- fused modules -------------------------------------------------------------------------------------
# ConvBNAct2d replaces a conv whose BatchNorm (and ReLU, and residual add) fastconv.fuse_for_inference /
# fuse_for_training folded into it; the BatchNorm stays in its parent as an AbsorbedBatchNorm2d (same
# parameters, buffers and state_dict keys, forward = identity) and ConvBNAct2d reads it through a
# non-child reference, so the model's state_dict is the unfused model's.

import copy  # noqa: E402

from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fastconv import modules as _fm  # noqa: E402

_CONV_TYPES = (nn.Conv2d, _fm.Conv2d)
# Builds without the fused training op run the conv and the batch norm as two fastconv ops in training.
_HAS_TRAIN_OP = hasattr(ops, "conv2d_bn_train") and "conv2d_bn_train" in globals()
_BN_TYPES = (nn.BatchNorm2d, _fm.BatchNorm2d, _fm.BatchNormReLU2d)


def _conv_out_hw(conv: nn.Conv2d, h: int, w: int):
    if isinstance(conv.padding, str):
        if conv.padding == "same":
            return h, w
        pad = (0, 0)
    else:
        pad = conv.padding
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, p, d, k, s in zip((h, w), pad, conv.dilation, conv.kernel_size, conv.stride))


class AbsorbedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d computed inside the preceding conv (a ConvBNAct2d): the same parameters, buffers and
    state_dict keys as before, and an identity forward. `absorbed_by` names the conv; fastconv.unfuse
    turns it back into its original class."""

    def forward(self, input: Tensor) -> Tensor:
        return input

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, absorbed_by={getattr(self, 'absorbed_by', '?')!r}"


class ConvBNAct2d(_fm.Conv2d):
    """relu?( bn( conv(x) ) [+ residual] ) as one fastconv call, built from (conv, bn, relu).

    Keeps conv's parameters under conv's names (weight, bias) and reads `bn` (weight, bias, running
    statistics, eps, momentum, mode) through a non-child reference: bn stays registered where it was
    (fuse_for_* turns it into an AbsorbedBatchNorm2d), so state_dict keys are unchanged. BN's own
    `training` flag decides the mode, as in the unfused model:

    - running statistics (eval, track_running_stats): one conv2d_bias_act call with
      scale = γ/√(running_var+ε), bias = β + (conv_bias − running_mean)·scale, computed per call
      (float32 for half convs, float64 for float64), residual and ReLU in the epilogue;
    - batch statistics (training, or no running statistics): fastconv.fused.conv2d_bn_train, then the
      running statistics are updated exactly as nn.BatchNorm2d does (momentum, momentum=None's
      cumulative average, num_batches_tracked, unbiased variance). With a residual the ReLU follows
      the add. Without conv2d_bn_train (older builds) the conv and batch norm run as two fastconv ops.

    forward(x: Tensor[N, C, H, W], residual: Tensor[N, K, P, Q] | None) -> Tensor[N, K, P, Q]. With a
    residual, relu=True means relu(bn(conv(x)) + residual) (ResNet's block tail)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool = False) -> None:
        if type(conv) not in _CONV_TYPES or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"fastconv.ConvBNAct2d: expected an nn.Conv2d and an nn.BatchNorm2d, got "
                            f"{type(conv).__name__} and {type(bn).__name__}")
        if conv.out_channels != bn.num_features:
            raise ValueError(f"fastconv.ConvBNAct2d: conv has {conv.out_channels} output channels, "
                             f"BatchNorm has {bn.num_features} features")
        nn.Module.__init__(self)
        for k, v in conv.__dict__.items():  # conv's parameters, hooks and attributes, shared not copied
            self.__dict__[k] = copy.copy(v) if isinstance(v, (dict, set)) else v
        self.__dict__["_conv_class"] = type(conv)
        self.__dict__["_conv_keys"] = tuple(conv.__dict__)
        self.__dict__["_absorbed"] = (bn,)  # a tuple: not registered as a child
        self.algo = getattr(conv, "algo", "auto")
        self.relu = bool(relu)
        self.pattern = "conv+bn+relu" if relu else "conv+bn"
        self.bn_name = ""

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self._absorbed[0]

    def to_conv(self) -> nn.Conv2d:
        """The plain conv this was built from (same class, parameters and attributes)."""
        conv = self._conv_class.__new__(self._conv_class)
        nn.Module.__init__(conv)
        for k in self._conv_keys:
            if k in self.__dict__:
                v = self.__dict__[k]
                conv.__dict__[k] = copy.copy(v) if isinstance(v, (dict, set)) else v
        return conv

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if isinstance(input, torch.fx.Proxy) or isinstance(residual, torch.fx.Proxy):
            tracer = (input if isinstance(input, torch.fx.Proxy) else residual).tracer
            args = (input,) if residual is None else (input, residual)
            return tracer.create_proxy("call_module", tracer.path_of_module(self), args, {})
        if input.dim() != 4:  # nn.BatchNorm2d's own check, which the unfused model would raise
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        bn = self.bn
        x, padding = input, self.padding
        if self.padding_mode != "zeros":
            x, padding = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0
        if residual is not None:
            k, hw = self.out_channels, _conv_out_hw(self, x.shape[2], x.shape[3])
            if tuple(residual.shape) != (x.shape[0], k, *hw) or residual.dtype != x.dtype:
                # a broadcast or type-promoting add: not the epilogue's; done as torch would do it
                y = self._forward(x, padding, bn, None, False)
                y = y + residual
                return torch.relu(y) if self.relu else y
        return self._forward(x, padding, bn, residual, self.relu)

    def _forward(self, x: Tensor, padding, bn: nn.BatchNorm2d, residual: Optional[Tensor], relu: bool) -> Tensor:
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        if not batch_stats:
            acc = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
            scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
            if bn.weight is not None:
                scale = bn.weight.to(acc) * scale
            mean = bn.running_mean.to(acc)
            shift = (self.bias.to(acc) - mean) * scale if self.bias is not None else -mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias.to(acc)
            return conv2d_bias_act(x, self.weight, scale, shift, residual, self.stride, padding, self.dilation,
                                   self.groups, relu, algo=self.algo)
        # nn.BatchNorm2d.forward's bookkeeping: which statistics are updated, and with what factor
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        update = bn.training and bn.track_running_stats and bn.running_mean is not None
        if not _HAS_TRAIN_OP:  # no fused training op in this build: conv, then fastconv's batch norm
            y = _fm.FF.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                              algo=self.algo)
            fn = _fm.FF.batch_norm_relu if relu and residual is None else _fm.FF.batch_norm
            y = fn(y, bn.running_mean if update else None, bn.running_var if update else None, bn.weight, bn.bias,
                   True, factor, bn.eps)
        else:
            beta = bn.bias
            if self.bias is not None:  # the conv bias cancels under batch statistics; its gradient is 0
                zero = self.bias * 0
                beta = zero if beta is None else beta + zero.to(beta.dtype)
            y, mean, var = conv2d_bn_train(x, self.weight, bn.weight, beta, self.stride, padding, self.dilation, self.groups,
                                    bn.eps, relu=relu and residual is None, algo=self.algo)
            if update:
                with torch.no_grad():
                    if self.bias is not None:
                        mean = mean + self.bias.detach().to(mean.dtype)
                    count = y.numel() // y.shape[1] if y.shape[1] else 0
                    ops.batch_norm_update_running_stats_(bn.running_mean, bn.running_var, mean.detach(),
                                                         var.detach(), count, float(factor))
        if residual is not None:
            y = y + residual
            return torch.relu(y) if relu else y
        return y

    def extra_repr(self) -> str:
        bn = f", bn={self.bn_name!r}" if self.bn_name else ""
        return f"{super().extra_repr()}, fused={self.pattern}{bn}"


__all__ += ["ConvBNAct2d", "AbsorbedBatchNorm2d"]
