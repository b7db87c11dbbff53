"""fastconv's functional API: torch.nn.functional's signatures, fastconv's kernels.

    conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto")
    max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)
    avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None)
    adaptive_avg_pool2d(input, output_size)
    batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5)
    batch_norm_relu(...)   the same arguments; ReLU fused into the normalisation

Inputs are Tensor[N, C, H, W] or unbatched Tensor[C, H, W] (batch norm: Tensor[N, C, *]), in NCHW or
channels_last memory format; outputs follow torch's memory-format rules. Everything is differentiable,
and composes with torch.func (grad, jacrev, jvp, vmap, per-sample gradients) and forward-mode AD
(the ops are called through fastconv.autograd.call, see there).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from fastconv import _autocast, algorithms
from fastconv import autograd as _autograd  # noqa: F401  (registers the backward formulas)

ops = torch.ops.fastconv

IntOr2 = Union[int, Sequence[int]]


def _untraced(fn, *args):
    """fn(*args) with torch.jit.trace paused. Traced, a tensor's sizes are 0-d tensors and reading
    them as Python ints warns (TracerWarning); the argument checks, the algorithm choice and the
    kernels' int arguments are constants of a trace anyway, so they read plain ints instead."""
    state = torch._C._get_tracing_state()
    if state is None:
        return fn(*args)
    torch._C._set_tracing_state(None)
    try:
        return fn(*args)
    finally:
        torch._C._set_tracing_state(state)


def _size(t: Tensor) -> torch.Size:
    return _untraced(lambda: t.shape)


def _pair(v: IntOr2, name: str, op: str) -> Tuple[int, int]:
    if isinstance(v, (list, tuple, torch.Size)):
        if len(v) == 1:
            return (int(v[0]), int(v[0]))
        if len(v) != 2:
            raise RuntimeError(f"fastconv.{op}: {name} must be an int or a tuple of two ints, got {tuple(v)}")
        return (int(v[0]), int(v[1]))
    if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
        raise TypeError(f"fastconv.{op}: {name} must be an int or a tuple of two ints, got {type(v).__name__}")
    return (int(v), int(v))


def _check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"fastconv.{op}: argument '{name}' must be Tensor, not {type(t).__name__}")


class _DimensionError(IndexError):
    """Where torch's own op fails on a too-small rank by indexing a dimension that is not there, it
    raises IndexError ("Dimension out of range"): fastconv raises the same type, with a message."""


def _batched(input: Tensor, op: str, what: str = "input", index_error_below: int = 0) -> Tuple[Tensor, bool]:
    """Adds the batch dimension of an unbatched [C, H, W] input; rejects other ranks like torch (an
    IndexError below rank index_error_below, where torch raises one, else RuntimeError)."""
    _check_tensor(input, what, op)
    if input.dim() == 4:
        return input, True
    if input.dim() == 3:
        return input.unsqueeze(0), False
    msg = f"fastconv.{op}: Expected 3D (unbatched) or 4D (batched) {what}, but got {what} of size: {list(input.shape)}"
    if input.dim() < index_error_below:
        raise _DimensionError(msg)
    raise RuntimeError(msg)


def _same_padding(input: Tensor, weight: Tensor, stride, dilation, op: str) -> Tuple[Tensor, Tuple[int, int]]:
    """padding="same": torch pads (total // 2) on both sides and any odd remainder at the end."""
    if stride != (1, 1):
        raise RuntimeError(f"fastconv.{op}: padding='same' is not supported for strided convolutions")
    pads, extra = [], []
    for d, k in zip(dilation, _size(weight)[2:]):
        total = d * (int(k) - 1)
        pads.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if any(extra):
        input = F.pad(input, [0, extra[1], 0, extra[0]])
    return input, (pads[0], pads[1])


def _conv_prologue(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: IntOr2,
                   padding: Union[IntOr2, str], dilation: IntOr2, groups: int, algo: str, op: str):
    """Checks and normalises conv arguments as torch does and picks the algorithm.
    Returns (x as 4-D, batched, stride, padding, dilation, concrete algorithm)."""
    # Only argument *types* and the Python-level options ("same" padding, unbatched inputs) are
    # checked here; every value check (sizes, groups, stride, padding, dilation, dtypes, devices) is
    # the binding's (csrc/torch/prepare.h), which raises when the algorithm is chosen, with torch's
    # exception types and messages, the same on every device.
    x, batched = _batched(input, op)
    _check_tensor(weight, "weight", op)
    if bias is not None:
        _check_tensor(bias, "bias", op)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"fastconv.{op}: groups must be an int, got {type(groups).__name__}")
    stride_ = _pair(stride, "stride", op)
    dilation_ = _pair(dilation, "dilation", op)
    if weight.dim() != 4:  # the op's own check says what is wrong (no sizes to choose an algorithm from)
        ops.conv2d(x, weight, bias, list(stride_), [0, 0], list(dilation_), groups, "direct")
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":
            x, pad = _same_padding(x, weight, stride_, dilation_, op)
        else:
            raise RuntimeError(f"fastconv.{op}: Invalid padding string '{padding}', should be one of "
                               "['valid', 'same']")
    else:
        pad = _pair(padding, "padding", op)
    # Chosen on plain tensors: under torch.func they are wrapped (see fastconv.autograd.plain).
    px, pw, pb = _autograd.plain(x), _autograd.plain(weight), _autograd.plain(bias)
    problem = _untraced(algorithms.ConvProblem.from_tensors, px, pw, stride_, pad, dilation_, groups)
    dtype = _autocast.op_dtype(x)
    if dtype != problem.dtype:  # under autocast the op computes in another dtype than x's
        problem = dataclasses.replace(problem, dtype=dtype)
        concrete = _untraced(algorithms.resolve, algo, problem)  # (x is not what the op will see: nothing to time on)
    else:
        concrete = _untraced(algorithms.resolve, algo, problem, px, pw, pb)
    return x, batched, stride_, pad, dilation_, concrete


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOr2 = 1,
           padding: Union[IntOr2, str] = 0, dilation: IntOr2 = 1, groups: int = 1, *, algo: str = "auto") -> Tensor:
    """2-D convolution, as torch.nn.functional.conv2d.

    input Tensor[N, C, H, W] (or [C, H, W]), weight Tensor[K, C/groups, R, S], bias Tensor[K] or None
    -> Tensor[N, K, P, Q]. `algo` picks the kernel ("auto", "direct", "im2col", "gemm1x1", ...; see
    fastconv.available_algorithms(device)).
    """
    if has_torch_function_variadic(input, weight, bias):  # torch.fx proxies, tensor subclasses
        return handle_torch_function(conv2d, (input, weight, bias), input, weight, bias, stride, padding, dilation,
                                     groups, algo=algo)
    x, batched, stride_, pad, dilation_, concrete = _conv_prologue(input, weight, bias, stride, padding, dilation,
                                                                   groups, algo, "conv2d")
    y = _autograd.call("conv2d", x, weight, bias, list(stride_), list(pad), list(dilation_), groups, concrete)
    return y if batched else y.squeeze(0)


def _pool_stride(stride, kernel: Tuple[int, int], op: str) -> Tuple[int, int]:
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        return kernel
    return _pair(stride, "stride", op)


def max_pool2d(input: Tensor, kernel_size: IntOr2, stride: Optional[IntOr2] = None, padding: IntOr2 = 0,
               dilation: IntOr2 = 1, ceil_mode: bool = False, return_indices: bool = False):
    """2-D max pooling, as torch.nn.functional.max_pool2d: Tensor[N, C, H, W] -> Tensor[N, C, P, Q]
    (and int64 indices h·W + w of each maximum when return_indices)."""
    if has_torch_function_variadic(input):
        return handle_torch_function(max_pool2d, (input,), input, kernel_size, stride, padding, dilation,
                                     ceil_mode, return_indices)
    x, batched = _batched(input, "max_pool2d")
    k = _pair(kernel_size, "kernel_size", "max_pool2d")
    s = _pool_stride(stride, k, "max_pool2d")
    y, idx = _autograd.call("max_pool2d", x, list(k), list(s), list(_pair(padding, "padding", "max_pool2d")),
                            list(_pair(dilation, "dilation", "max_pool2d")), bool(ceil_mode))
    if not batched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def avg_pool2d(input: Tensor, kernel_size: IntOr2, stride: Optional[IntOr2] = None, padding: IntOr2 = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: Optional[int] = None) -> Tensor:
    """2-D average pooling, as torch.nn.functional.avg_pool2d: Tensor[N, C, H, W] -> Tensor[N, C, P, Q]."""
    if has_torch_function_variadic(input):
        return handle_torch_function(avg_pool2d, (input,), input, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override)
    x, batched = _batched(input, "avg_pool2d", index_error_below=3)
    k = _pair(kernel_size, "kernel_size", "avg_pool2d")
    s = _pool_stride(stride, k, "avg_pool2d")
    if divisor_override is not None and (isinstance(divisor_override, bool)
                                         or not isinstance(divisor_override, (int, torch.SymInt))):
        raise TypeError(f"fastconv.avg_pool2d: argument 'divisor_override' must be int, not "
                        f"{type(divisor_override).__name__}")
    y = _autograd.call("avg_pool2d", x, list(k), list(s), list(_pair(padding, "padding", "avg_pool2d")),
                       bool(ceil_mode), bool(count_include_pad), divisor_override)
    return y if batched else y.squeeze(0)


def _all_ones(output_size) -> bool:
    sizes = output_size if isinstance(output_size, (list, tuple)) else (output_size,)
    return all(isinstance(v, int) and v == 1 for v in sizes)


def adaptive_avg_pool2d(input: Tensor, output_size: Union[int, None, Sequence[Optional[int]]]) -> Tensor:
    """Adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d: Tensor[N, C, H, W] ->
    Tensor[N, C, *output_size]; a None entry keeps that input size."""
    if has_torch_function_variadic(input):
        return handle_torch_function(adaptive_avg_pool2d, (input,), input, output_size)
    _check_tensor(input, "input", "adaptive_avg_pool2d")
    if not (output_size is None or isinstance(output_size, int)) and input.dim() <= len(output_size):
        raise ValueError(f"fastconv.adaptive_avg_pool2d: Input dimension should be at least {len(output_size) + 1}")
    lead = None
    if (input.dim() == 2 or input.dim() > 4) and _all_ones(output_size):
        # torch averages the last two dimensions of any rank >= 2 to 1x1 (other sizes: 3-D or 4-D
        # only); here as [prod(leading), 1, H, W].
        lead = tuple(_size(input)[:-2])
        x, batched = input.reshape(-1, 1, *_size(input)[-2:]), True
    else:
        x, batched = _batched(input, "adaptive_avg_pool2d", index_error_below=2)
    if output_size is None or isinstance(output_size, int):
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise RuntimeError(f"fastconv.adaptive_avg_pool2d: output_size must be 2, got {len(output_size)}")
    out = [int(_size(x)[2 + i]) if v is None else int(v) for i, v in enumerate(output_size)]
    y = _autograd.call("adaptive_avg_pool2d", x, out)
    if lead is not None:
        return y.reshape(*lead, *out)
    return y if batched else y.squeeze(0)


def _verify_batch_size(size: torch.Size) -> None:
    n = size[0]
    for d in size[2:]:
        n *= d
    if n == 1:
        raise ValueError(f"fastconv.batch_norm: Expected more than 1 value per channel when training, got input "
                         f"size {size}")


def _batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                weight: Optional[Tensor], bias: Optional[Tensor], training: bool, momentum: float, eps: float,
                relu: bool, op: str) -> Tensor:
    # Argument types and the functional-level rules here; every size, dtype and device check of the
    # tensors is the binding's (csrc/torch/prepare.h), the same on every device.
    _check_tensor(input, "input", op)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None:
            _check_tensor(t, name, op)
    if input.dim() < 2:  # torch: IndexError in training (it reads size(1)), RuntimeError in eval
        msg = f"fastconv.{op}: expected at least 2-D input (N, C, *), got {input.dim()}-D input"
        raise _DimensionError(msg) if training else RuntimeError(msg)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"fastconv.{op}: running_mean and running_var must either both be None or neither be None")
    if training and eps <= 0:  # (NaN passes, as in torch)
        raise ValueError(f"fastconv.{op}: batch_norm eps must be positive during training, but got {eps}")
    size = _size(input)
    c = size[1]
    # (N, C, *) is viewed as [N, C, L, 1] so one 4-D kernel serves every rank.
    x = input if input.dim() == 4 else input.reshape(input.shape[0], c, -1, 1)
    if training:
        _verify_batch_size(size)
        y, mean, _invstd, var = _autograd.call("batch_norm_train", x, weight, bias, float(eps), relu)
        if running_mean is not None and running_var is not None:
            count = _untraced(x.numel) // c if c else 0
            with torch.no_grad():
                ops.batch_norm_update_running_stats_(running_mean, running_var, mean.detach(), var.detach(),
                                                     count, float(momentum))
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError(f"fastconv.{op}: running_mean and running_var must be defined in evaluation mode")
        y = _autograd.call("batch_norm_eval", x, weight, bias, running_mean, running_var, float(eps), relu)
    return y if input.dim() == 4 else y.reshape(input.shape)


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation, as torch.nn.functional.batch_norm: Tensor[N, C, *] -> Tensor[N, C, *].
    In training the batch statistics normalise and the running ones (if given) are updated in place."""
    args = (input, running_mean, running_var, weight, bias)
    if has_torch_function_variadic(*args):
        return handle_torch_function(batch_norm, args, *args, training, momentum, eps)
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, False, "batch_norm")


def batch_norm_relu(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
                    momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """relu(batch_norm(...)) in one kernel (forward and backward)."""
    args = (input, running_mean, running_var, weight, bias)
    if has_torch_function_variadic(*args):
        return handle_torch_function(batch_norm_relu, args, *args, training, momentum, eps)
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, True,
                       "batch_norm_relu")


__all__: List[str] = ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "batch_norm_relu"]
