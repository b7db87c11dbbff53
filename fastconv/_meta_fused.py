"""Fake (meta) kernels of the fused convolution ops: conv2d_fused (the conv2d output's sizes, dtype
and memory format: the epilogue never changes them) and conv2d_bn_train (out and conv_out as the
conv2d output, three [K] statistics in the accumulation dtype, as batch_norm_train's).

Registered by fastconv/_meta.py: torch requires the fake kernel of a C++-defined op to be registered
from the module named in the library's set_python_module ("fastconv._meta").
"""

from __future__ import annotations


def conv2d_fused_fake(input, weight, scale, bias, residual, stride, padding, dilation, groups, relu, algo):
    from fastconv._meta import _conv2d_fake  # lazy: _meta imports this module to register it

    return _conv2d_fake(input, weight, None, stride, padding, dilation, groups, algo)


def conv2d_bn_train_fake(input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps, relu, algo):
    from fastconv._meta import _acc_dtype, _conv2d_fake

    out = _conv2d_fake(input, weight, None, stride, padding, dilation, groups, algo)
    conv_out = _conv2d_fake(input, weight, None, stride, padding, dilation, groups, algo)
    acc = _acc_dtype(input.dtype, input.device)
    k = weight.shape[0]
    return (out, conv_out, *(input.new_empty((k,), dtype=acc) for _ in range(3)))
