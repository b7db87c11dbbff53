"""Fake (meta) kernels for torch.ops.fastconv.*, so FakeTensor, torch.compile and opcheck can trace
them. Each returns empty tensors with exactly the sizes, dtype and strides the real kernels return.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch._prims_common import suggest_memory_format

_lib = "fastconv::"


def _conv_out(size, k, pad, stride, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _pool_out(size, k, pad, stride, dil, ceil_mode):
    # aten pooling_output_shape, written with floor division so SymInts work.
    out = (size + 2 * pad - dil * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def conv_output_format(a: torch.Tensor, b: torch.Tensor) -> torch.memory_format:
    """PyTorch's conv output memory format: channels_last if either operand suggests it."""
    if suggest_memory_format(a) == torch.channels_last or suggest_memory_format(b) == torch.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def _empty(size, like: torch.Tensor, fmt: torch.memory_format, dtype: Optional[torch.dtype] = None):
    return torch.empty(size, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def _acc_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # Saved BN statistics: the input dtype on CPU; float (double for double) on CUDA, as torch does.
    if device.type == "cpu":
        return dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake(_lib + "conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, algo):
    n, _, h, w = input.shape
    k, _, r, s = weight.shape
    p = _conv_out(h, r, padding[0], stride[0], dilation[0])
    q = _conv_out(w, s, padding[1], stride[1], dilation[1])
    return _empty((n, k, p, q), input, conv_output_format(input, weight))


@torch.library.register_fake(_lib + "conv2d_dgrad")
def _conv2d_dgrad_fake(grad_output, weight, input_size, stride, padding, dilation, groups, algo):
    return _empty(tuple(input_size), grad_output, conv_output_format(grad_output, weight))


@torch.library.register_fake(_lib + "conv2d_wgrad")
def _conv2d_wgrad_fake(grad_output, input, weight_size, stride, padding, dilation, groups, algo):
    return _empty(tuple(weight_size), grad_output, conv_output_format(input, grad_output))


@torch.library.register_fake(_lib + "max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    n, c, h, w = x.shape
    p = _pool_out(h, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    q = _pool_out(w, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    fmt = suggest_memory_format(x)
    return _empty((n, c, p, q), x, fmt), _empty((n, c, p, q), x, fmt, torch.int64)


@torch.library.register_fake(_lib + "max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, x, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return _empty(x.shape, grad_output, suggest_memory_format(x))


@torch.library.register_fake(_lib + "avg_pool2d")
def _avg_pool2d_fake(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n, c, h, w = x.shape
    p = _pool_out(h, kernel_size[0], padding[0], stride[0], 1, ceil_mode)
    q = _pool_out(w, kernel_size[1], padding[1], stride[1], 1, ceil_mode)
    return _empty((n, c, p, q), x, suggest_memory_format(x))


@torch.library.register_fake(_lib + "avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override):
    return _empty(x.shape, grad_output, suggest_memory_format(x))


@torch.library.register_fake(_lib + "adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(x, output_size: Sequence[int]):
    n, c = x.shape[:2]
    return _empty((n, c, output_size[0], output_size[1]), x, suggest_memory_format(x))


@torch.library.register_fake(_lib + "adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, x):
    return _empty(x.shape, grad_output, suggest_memory_format(x))


@torch.library.register_fake(_lib + "batch_norm_train")
def _batch_norm_train_fake(input, weight, bias, eps, relu):
    c = input.shape[1]
    acc = _acc_dtype(input.dtype, input.device)
    y = _empty(input.shape, input, suggest_memory_format(input))
    stats = [input.new_empty((c,), dtype=acc) for _ in range(3)]
    return (y, *stats)


@torch.library.register_fake(_lib + "batch_norm_eval")
def _batch_norm_eval_fake(input, weight, bias, running_mean, running_var, eps, relu):
    return _empty(input.shape, input, suggest_memory_format(input))


@torch.library.register_fake(_lib + "batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, output, weight, mean, invstd, train, relu, output_mask):
    c = input.shape[1]
    dx = _empty(input.shape, input, suggest_memory_format(input)) if output_mask[0] else input.new_empty((0,))
    wdtype = weight.dtype if weight is not None else _acc_dtype(input.dtype, input.device)
    dw = input.new_empty((c,), dtype=wdtype) if output_mask[1] else input.new_empty((0,))
    db = input.new_empty((c,), dtype=wdtype) if output_mask[2] else input.new_empty((0,))
    return dx, dw, db


@torch.library.register_fake(_lib + "batch_norm_update_running_stats_")
def _batch_norm_update_running_stats_fake(running_mean, running_var, save_mean, batch_var, count, factor):
    return None


# conv2d_fused's fake kernel lives beside the fused op's Python code but must be registered here.
from fastconv._meta_fused import conv2d_bn_train_fake, conv2d_fused_fake  # noqa: E402

torch.library.register_fake(_lib + "conv2d_fused")(conv2d_fused_fake)
torch.library.register_fake(_lib + "conv2d_bn_train")(conv2d_bn_train_fake)
