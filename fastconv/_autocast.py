"""Autocast (torch.autocast / AMP) rules for torch.ops.fastconv.*, mirroring torch's own policy.

torch casts conv2d to the autocast dtype ("lower precision fp" list) and leaves pooling and batch
norm alone (they run in their input's dtype; batch norm keeps float32 parameters and statistics
beside low-precision activations). fastconv does the same:

- CUDA (float16 / bfloat16): conv2d, conv2d_dgrad and conv2d_wgrad cast their floating-point
  tensors (float64 excepted, as torch) to the autocast dtype; pooling and batch norm get no rule.
- CPU (bfloat16 / float16): fastconv's CPU kernels compute in float32/float64 only, so conv2d
  (and its backward ops) round their inputs to the autocast dtype -- the values a low-precision
  kernel would read -- then run the float32 kernel and return the result in the autocast dtype,
  as torch's CPU conv does. Pooling and batch norm given bfloat16/float16 tensors under CPU
  autocast compute in float32 and return their input's dtype, as torch's CPU kernels do; outside
  autocast those dtypes still raise TypeError on the CPU.

Every rule runs the op with the autocast key excluded, like torch's own autocast kernels, so
autograd, torch.compile and torch.fx see ordinary casts around the op.
"""

from __future__ import annotations

import torch

_NS = "fastconv"
_LOW = (torch.float16, torch.bfloat16)

_CONV_OPS = ("conv2d", "conv2d_dgrad", "conv2d_wgrad", "conv2d_fused")
# conv2d_fused's per-channel scale and bias (arguments 2 and 3) are applied in the accumulation
# dtype whatever theirs is: they keep their precision rather than being rounded to half.
_KEEP_ARGS = {"conv2d_fused": (2, 3)}
# Ops that run in their input's dtype; on the CPU they need float32 compute for half inputs.
_KEEP_DTYPE_OPS = ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
                   "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "batch_norm_train",
                   "batch_norm_eval", "batch_norm_backward")

_lib = torch.library.Library(_NS, "IMPL")


def _map(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_map(v, fn) for v in value)
    return value


def _eligible(t: torch.Tensor, device_type: str) -> bool:
    # torch's autocast casts floating-point tensors on its device, never float64.
    return t.is_floating_point() and t.device.type == device_type and t.dtype is not torch.float64


def _lower_precision(op, device_type: str, key, keep=()):
    """torch's lower_precision_fp policy: inputs to the autocast dtype, output in that dtype."""

    def kernel(*args):
        dtype = torch.get_autocast_dtype(device_type)
        cast = lambda t: t.to(dtype) if _eligible(t, device_type) else t  # noqa: E731
        args = tuple(a if i in keep else _map(a, cast) for i, a in enumerate(args))
        if device_type == "cpu" and dtype in _LOW:
            # No low-precision CPU kernels: compute the rounded values in float32, return `dtype`.
            up = lambda t: t.float() if t.dtype == dtype else t  # noqa: E731
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                out = op(*(a if i in keep else _map(a, up) for i, a in enumerate(args)))
            return _map(out, lambda t: t.to(dtype) if t.dtype == torch.float32 else t)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    return kernel


def _float32_compute(op, key):
    """CPU pooling/BN under autocast: half inputs compute in float32; outputs return to the dtype of
    the first tensor argument (the activation), statistics stay float32."""

    def kernel(*args):
        first = next(a for a in args if isinstance(a, torch.Tensor))
        if not any(isinstance(a, torch.Tensor) and a.dtype in _LOW for a in args):
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return op(*args)
        up = lambda t: t.float() if t.dtype in _LOW else t  # noqa: E731
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            out = op(*(_map(a, up) for a in args))
        if first.dtype not in _LOW:
            return out
        if isinstance(out, torch.Tensor):
            return out.to(first.dtype)
        # (y, ...) or (y, indices) or (dx, dweight, dbias): only the activation-shaped first output
        # takes the activation's dtype; indices and per-channel results keep theirs.
        return (out[0].to(first.dtype),) + tuple(out[1:])

    return kernel


def _register(name: str, device_type: str, make) -> None:
    packet = getattr(getattr(torch.ops, _NS), name, None)
    if packet is None:  # an op this build does not define
        return
    op = packet.default
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)
    kernel = make(op, key)
    # py_impl serves tracing through the Python dispatcher (torch.compile); the Library impl serves eager.
    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key, None)
    op.py_impl(key)(kernel)
    _lib.impl(name, lambda _keyset, *args: kernel(*args), key_name, with_keyset=True)


def register_all() -> None:
    for name in _CONV_OPS:
        for device_type in ("cuda", "cpu"):
            _register(name, device_type,
                      lambda op, key, d=device_type, n=name: _lower_precision(op, d, key, _KEEP_ARGS.get(n, ())))
    for name in _KEEP_DTYPE_OPS:
        _register(name, "cpu", _float32_compute)


register_all()


def op_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a conv op given `t` computes in under the current autocast state (fastconv.functional
    picks the algorithm for that dtype, not for `t`'s)."""
    device_type = t.device.type
    if not (device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type) and _eligible(t, device_type)):
        return t.dtype
    dtype = torch.get_autocast_dtype(device_type)
    return torch.float32 if device_type == "cpu" and dtype in _LOW else dtype
