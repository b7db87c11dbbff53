"""Fake (meta) kernel for torch.ops.fastconv.conv2d_fused: the conv2d output's sizes, dtype and
memory format (the epilogue never changes them).

Registered by fastconv/_meta.py: torch requires the fake kernel of a C++-defined op to be registered
from the module named in the library's set_python_module ("fastconv._meta").
"""

from __future__ import annotations


def conv2d_fused_fake(input, weight, scale, bias, residual, stride, padding, dilation, groups, relu, algo):
    from fastconv._meta import _conv2d_fake  # lazy: _meta imports this module to register it

    return _conv2d_fake(input, weight, None, stride, padding, dilation, groups, algo)
