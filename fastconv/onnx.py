"""ONNX export: each torch.ops.fastconv.* inference op written as standard ONNX operators.

    fastconv.onnx.export(model, (x,), "model.onnx")                  # torch.export-based (dynamo) exporter
    fastconv.onnx.export(model, (x,), "model.onnx", dynamo=False)    # legacy TorchScript exporter
    torch.onnx.export(model, (x,), "model.onnx", custom_translation_table=fastconv.onnx.translation_table())
    fastconv.onnx.register_symbolics(); torch.onnx.export(model, (x,), "model.onnx", dynamo=False)

| fastconv op | ONNX |
|---|---|
| conv2d | Conv |
| conv2d_fused | Conv, Mul (scale), Add (bias), Add (residual), Relu |
| max_pool2d | MaxPool; indices (only computed if used) as torch's per-plane h·W + w |
| avg_pool2d | AveragePool; with divisor_override: window sums (a depthwise Conv of ones) / divisor |
| adaptive_avg_pool2d | GlobalAveragePool (1x1), AveragePool (sizes divide), else two MatMuls with bin-averaging matrices |
| batch_norm_eval | BatchNormalization (+ Relu) |
| batch_norm_train | ReduceMean, Sub, Mul, Sqrt, ...: the batch statistics (y, mean, invstd, var) |

The backward ops and the running-statistics update (batch_norm_update_running_stats_, a training
side effect) have no translation: export inference graphs (export() puts the model in eval mode).
The dynamo path needs `onnxscript` and `onnx`, the legacy one `onnx`; running the result needs
`onnxruntime`. The exported model uses standard ONNX operators only: no fastconv dependency. The
translations are written once against a small builder, one per exporter (onnxscript ops for dynamo,
`g.op` for the legacy exporter).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from fastconv._meta import _pool_out

__all__ = ["export", "translation_table", "register_symbolics"]

# The legacy exporter's symbolics need CastLike and BatchNormalization's mixed input dtypes (opset 15).
LEGACY_MIN_OPSET = 15


# ---- builders: one op-emitting interface per exporter ----------------------------------------------

class _Builder:
    def op(self, name: str, *inputs, outputs: int = 1, **attrs):
        raise NotImplementedError

    def sizes(self, x) -> Optional[List[Optional[int]]]:
        raise NotImplementedError

    def ints(self, values: Sequence[int]):
        raise NotImplementedError

    def floats(self, values: Sequence[float], shape: Sequence[int], like):
        """A constant float tensor of `shape` in `like`'s dtype."""
        raise NotImplementedError

    def cast_like(self, t, like):
        return self.op("CastLike", t, like)

    def reduce_mean(self, x, axes: Sequence[int]):
        raise NotImplementedError

    def scalar(self, value: float, like):
        return self.floats([float(value)], [], like)

    def channel(self, t, like):
        """A per-channel vector Tensor[K] as Tensor[1, K, 1, 1] in `like`'s dtype."""
        return self.op("Unsqueeze", self.cast_like(t, like), self.ints([0, 2, 3]))

    def spatial(self, x, op: str) -> Tuple[int, int]:
        s = self.sizes(x)
        if s is None or len(s) != 4 or s[2] is None or s[3] is None:
            raise NotImplementedError(f"fastconv.onnx: {op} needs static spatial sizes to export, got input sizes {s}")
        return int(s[2]), int(s[3])


class _OnnxScriptBuilder(_Builder):
    """For the dynamo exporter: its tracer records the onnxscript ops called here."""

    def __init__(self) -> None:
        from onnxscript import opset18

        self._op = opset18

    def op(self, name, *inputs, outputs=1, **attrs):
        out = getattr(self._op, name)(*inputs, **attrs)
        # the tracer returns every output of the schema (MaxPool: Y and Indices)
        return out[0] if outputs == 1 and isinstance(out, (tuple, list)) else out

    def sizes(self, x):
        if x.shape is None:
            return None
        return [d if isinstance(d, int) else None for d in x.shape]

    def ints(self, values):
        return self._op.Constant(value_ints=[int(v) for v in values])

    def floats(self, values, shape, like):
        if len(shape) == 0:
            t = self._op.Constant(value_float=float(values[0]))
        else:
            t = self._op.Reshape(self._op.Constant(value_floats=[float(v) for v in values]), self.ints(shape))
        return self._op.CastLike(t, like)  # (constant-folded by the exporter's optimizer)

    def reduce_mean(self, x, axes):
        return self._op.ReduceMean(x, self.ints(axes), keepdims=1)


class _TorchScriptBuilder(_Builder):
    """For the legacy exporter: nodes via GraphContext.op (attribute names carry a type suffix)."""

    def __init__(self, g) -> None:
        self.g = g

    @staticmethod
    def _suffix(value) -> str:
        first = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(first, float):
            return "_f"
        if isinstance(first, str):
            return "_s"
        return "_i"

    def op(self, name, *inputs, outputs=1, **attrs):
        kwargs = {k + self._suffix(v): (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()}
        return self.g.op(name, *inputs, outputs=outputs, **kwargs)

    def sizes(self, x):
        from torch.onnx import symbolic_helper

        return symbolic_helper._get_tensor_sizes(x)

    def ints(self, values):
        return self.g.op("Constant", value_t=torch.tensor([int(v) for v in values], dtype=torch.int64))

    @staticmethod
    def _dtype(v) -> Optional[torch.dtype]:
        jit_type = _jit_scalar_type()
        t = jit_type.from_value(v, jit_type.UNDEFINED)
        return None if t == jit_type.UNDEFINED else t.dtype()

    def floats(self, values, shape, like):
        # in like's dtype when the trace knows it (a CastLike of a constant is not folded by onnxruntime)
        dtype = self._dtype(like)
        t = self.g.op("Constant", value_t=torch.tensor(values, dtype=dtype or torch.float32).reshape(list(shape)))
        return t if dtype is not None else self.g.op("CastLike", t, like)

    def cast_like(self, t, like):
        dtype, have = self._dtype(like), self._dtype(t)
        if dtype is None:
            return self.g.op("CastLike", t, like)
        if dtype == have:
            return t
        return self.g.op("Cast", t, to_i=_jit_scalar_type().from_dtype(dtype).onnx_type())

    def reduce_mean(self, x, axes):
        if self.g.opset >= 18:
            return self.g.op("ReduceMean", x, self.ints(axes), keepdims_i=1)
        return self.g.op("ReduceMean", x, axes_i=list(axes), keepdims_i=1)


def _jit_scalar_type():
    try:  # torch >= 2.9
        from torch.onnx._internal.torchscript_exporter._type_utils import JitScalarType
    except ImportError:
        from torch.onnx._type_utils import JitScalarType
    return JitScalarType


# ---- the translations, written once ---------------------------------------------------------------

def _pads(padding: Sequence[int]) -> List[int]:
    return [int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])]


def _conv2d(b: _Builder, x, w, bias, stride, padding, dilation, groups):
    inputs = (x, w) if bias is None else (x, w, bias)
    return b.op("Conv", *inputs, strides=list(stride), pads=_pads(padding), dilations=list(dilation), group=int(groups))


def _conv2d_fused(b: _Builder, x, w, scale, bias, residual, stride, padding, dilation, groups, relu):
    y = _conv2d(b, x, w, None, stride, padding, dilation, groups)
    if scale is not None:
        y = b.op("Mul", y, b.channel(scale, y))
    if bias is not None:
        y = b.op("Add", y, b.channel(bias, y))
    if residual is not None:
        y = b.op("Add", y, residual)
    return b.op("Relu", y) if relu else y


def _max_pool2d(b: _Builder, x, kernel_size, stride, padding, dilation, ceil_mode):
    attrs = dict(kernel_shape=list(kernel_size), strides=list(stride), pads=_pads(padding),
                 dilations=list(dilation), ceil_mode=int(bool(ceil_mode)))
    # y and the indices come from separate nodes so that an unused indices branch is dropped whole.
    y = b.op("MaxPool", x, **attrs)
    _, flat = b.op("MaxPool", x, outputs=2, **attrs)
    # ONNX's indices are flat over [N, C, H, W]; torch's count within each plane. A 1x1 max pool's
    # index at [n, c, 0, 0] is the plane's offset (n·C + c)·H·W.
    _, offsets = b.op("MaxPool", x, outputs=2, kernel_shape=[1, 1], strides=[1, 1])
    offsets = b.op("Slice", offsets, b.ints([0, 0]), b.ints([1, 1]), b.ints([2, 3]))
    return y, b.op("Sub", flat, offsets)


def _avg_pool2d(b: _Builder, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    k, s, p = list(kernel_size), list(stride), list(padding)
    if divisor_override is None:
        return b.op("AveragePool", x, kernel_shape=k, strides=s, pads=_pads(p), ceil_mode=int(bool(ceil_mode)),
                    count_include_pad=int(bool(count_include_pad)))
    # sum of each window / divisor. The sums are a depthwise convolution with ones; zero padding at
    # the end makes room for ceil_mode's last, partial window.
    sizes = b.sizes(x)
    h, w = b.spatial(x, "avg_pool2d(divisor_override=...)")
    c = sizes[1]
    if c is None:
        raise NotImplementedError("fastconv.onnx: avg_pool2d(divisor_override=...) needs a static channel count")
    end = []
    for i, n in enumerate((h, w)):
        out = _pool_out(n, k[i], p[i], s[i], 1, bool(ceil_mode))
        end.append(max(0, (out - 1) * s[i] + k[i] - p[i] - n))
    ones = b.floats([1.0] * (c * k[0] * k[1]), [c, 1, k[0], k[1]], x)
    sums = b.op("Conv", x, ones, strides=s, pads=[p[0], p[1], end[0], end[1]], group=int(c))
    return b.op("Div", sums, b.scalar(float(divisor_override), sums))


def _bin_matrix(n: int, out: int) -> List[float]:
    # Row i averages torch's adaptive bin [floor(i·n/out), ceil((i+1)·n/out)).
    rows = []
    for i in range(out):
        lo, hi = (i * n) // out, -((-(i + 1) * n) // out)
        rows.extend(1.0 / (hi - lo) if lo <= j < hi else 0.0 for j in range(n))
    return rows


def _adaptive_avg_pool2d(b: _Builder, x, output_size):
    oh, ow = int(output_size[0]), int(output_size[1])
    if (oh, ow) == (1, 1):
        return b.op("GlobalAveragePool", x)
    h, w = b.spatial(x, f"adaptive_avg_pool2d(output_size={[oh, ow]})")
    if oh > 0 and ow > 0 and h % oh == 0 and w % ow == 0:
        return b.op("AveragePool", x, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])
    rows = b.floats(_bin_matrix(h, oh), [oh, h], x)  # [oh, H] @ [N, C, H, W] -> [N, C, oh, W]
    cols = b.op("Transpose", b.floats(_bin_matrix(w, ow), [ow, w], x), perm=[1, 0])
    return b.op("MatMul", b.op("MatMul", rows, x), cols)


def _ones_like_channels(b: _Builder, t, value: float):
    return b.op("Expand", b.scalar(value, t), b.op("Shape", t))


def _batch_norm_eval(b: _Builder, x, weight, bias, running_mean, running_var, eps, relu):
    weight = _ones_like_channels(b, running_mean, 1.0) if weight is None else weight
    bias = _ones_like_channels(b, running_mean, 0.0) if bias is None else bias
    y = b.op("BatchNormalization", x, weight, bias, running_mean, running_var, epsilon=float(eps))
    return b.op("Relu", y) if relu else y


def _batch_norm_train(b: _Builder, x, weight, bias, eps, relu):
    axes = [0, 2, 3]
    mean = b.reduce_mean(x, axes)
    centred = b.op("Sub", x, mean)
    var = b.reduce_mean(b.op("Mul", centred, centred), axes)
    invstd = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar(float(eps), var))))
    y = b.op("Mul", centred, invstd)
    if weight is not None:
        y = b.op("Mul", y, b.channel(weight, y))
    if bias is not None:
        y = b.op("Add", y, b.channel(bias, y))
    if relu:
        y = b.op("Relu", y)
    flat = b.ints([-1])
    return y, b.op("Reshape", mean, flat), b.op("Reshape", invstd, flat), b.op("Reshape", var, flat)


# ---- dynamo exporter: onnxscript-traced functions with the ops' argument names ----------------------
# Unannotated parameters are tensor inputs; annotated ones are attributes (the exporter reads the hints).

def _dyn_conv2d(input, weight, bias=None, stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                dilation: Sequence[int] = (1, 1), groups: int = 1, algo: str = "auto"):
    return _conv2d(_OnnxScriptBuilder(), input, weight, bias, stride, padding, dilation, groups)


def _dyn_conv2d_fused(input, weight, scale=None, bias=None, residual=None, stride: Sequence[int] = (1, 1),
                      padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1), groups: int = 1,
                      relu: bool = False, algo: str = "auto"):
    return _conv2d_fused(_OnnxScriptBuilder(), input, weight, scale, bias, residual, stride, padding, dilation,
                         groups, relu)


def _dyn_max_pool2d(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                    dilation: Sequence[int], ceil_mode: bool):
    return _max_pool2d(_OnnxScriptBuilder(), self, kernel_size, stride, padding, dilation, ceil_mode)


def _dyn_avg_pool2d(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                    count_include_pad: bool, divisor_override: Optional[int] = None):
    return _avg_pool2d(_OnnxScriptBuilder(), self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                       divisor_override)


def _dyn_adaptive_avg_pool2d(self, output_size: Sequence[int]):
    return _adaptive_avg_pool2d(_OnnxScriptBuilder(), self, output_size)


def _dyn_batch_norm_eval(input, weight, bias, running_mean, running_var, eps: float, relu: bool):
    return _batch_norm_eval(_OnnxScriptBuilder(), input, weight, bias, running_mean, running_var, eps, relu)


def _dyn_batch_norm_train(input, weight, bias, eps: float, relu: bool):
    return _batch_norm_train(_OnnxScriptBuilder(), input, weight, bias, eps, relu)


def translation_table() -> Dict[Any, Callable]:
    """{torch.ops.fastconv.<op>.default: onnxscript translation}, for
    torch.onnx.export(..., dynamo=True, custom_translation_table=...). Needs onnxscript."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError("fastconv.onnx: the dynamo ONNX exporter needs onnxscript and onnx "
                          "(pip install onnx onnxscript)") from e
    ops = torch.ops.fastconv
    return {
        ops.conv2d.default: _dyn_conv2d,
        ops.conv2d_fused.default: _dyn_conv2d_fused,
        ops.max_pool2d.default: _dyn_max_pool2d,
        ops.avg_pool2d.default: _dyn_avg_pool2d,
        ops.adaptive_avg_pool2d.default: _dyn_adaptive_avg_pool2d,
        ops.batch_norm_eval.default: _dyn_batch_norm_eval,
        ops.batch_norm_train.default: _dyn_batch_norm_train,
    }


# ---- legacy (TorchScript) exporter: symbolic functions --------------------------------------------

def _none(v) -> bool:
    from torch.onnx import symbolic_helper

    return symbolic_helper._is_none(v)


def _opt(v):
    return None if _none(v) else v


def _parse(*spec):
    from torch.onnx import symbolic_helper

    return symbolic_helper.parse_args(*spec)


def _legacy_symbolics() -> Dict[str, Callable]:
    from torch.onnx import symbolic_helper

    @_parse("v", "v", "v", "is", "is", "is", "i", "s")
    def conv2d(g, input, weight, bias, stride, padding, dilation, groups, algo):
        return _conv2d(_TorchScriptBuilder(g), input, weight, _opt(bias), stride, padding, dilation, groups)

    @_parse("v", "v", "v", "v", "v", "is", "is", "is", "i", "b", "s")
    def conv2d_fused(g, input, weight, scale, bias, residual, stride, padding, dilation, groups, relu, algo):
        return _conv2d_fused(_TorchScriptBuilder(g), input, weight, _opt(scale), _opt(bias), _opt(residual), stride,
                             padding, dilation, groups, relu)

    @_parse("v", "is", "is", "is", "is", "b")
    def max_pool2d(g, self, kernel_size, stride, padding, dilation, ceil_mode):
        return _max_pool2d(_TorchScriptBuilder(g), self, kernel_size, stride, padding, dilation, ceil_mode)

    @_parse("v", "is", "is", "is", "b", "b", "v")
    def avg_pool2d(g, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        div = None if _none(divisor_override) else symbolic_helper._get_const(divisor_override, "i", "divisor_override")
        return _avg_pool2d(_TorchScriptBuilder(g), self, kernel_size, stride, padding, ceil_mode, count_include_pad, div)

    @_parse("v", "is")
    def adaptive_avg_pool2d(g, self, output_size):
        return _adaptive_avg_pool2d(_TorchScriptBuilder(g), self, output_size)

    @_parse("v", "v", "v", "v", "v", "f", "b")
    def batch_norm_eval(g, input, weight, bias, running_mean, running_var, eps, relu):
        return _batch_norm_eval(_TorchScriptBuilder(g), input, _opt(weight), _opt(bias), running_mean, running_var,
                                eps, relu)

    @_parse("v", "v", "v", "f", "b")
    def batch_norm_train(g, input, weight, bias, eps, relu):
        return _batch_norm_train(_TorchScriptBuilder(g), input, _opt(weight), _opt(bias), eps, relu)

    fns = (conv2d, conv2d_fused, max_pool2d, avg_pool2d, adaptive_avg_pool2d, batch_norm_eval, batch_norm_train)
    return {"fastconv::" + f.__name__: f for f in fns}


_registered = False


def register_symbolics() -> None:
    """Registers the translations with the legacy exporter (torch.onnx.export(..., dynamo=False)),
    for opset LEGACY_MIN_OPSET (15) and later; idempotent."""
    global _registered
    if not _registered:
        for name, fn in _legacy_symbolics().items():
            torch.onnx.register_custom_op_symbolic(name, fn, LEGACY_MIN_OPSET)
        _registered = True


# ---- export -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(model):
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def export(model: nn.Module, args: Tuple[Any, ...] = (), f=None, *, dynamo: bool = True,
           custom_translation_table: Optional[Dict[Any, Callable]] = None, **kwargs):
    """torch.onnx.export(model, args, f, ...) with fastconv's ops translated: returns what it returns
    (an ONNXProgram for dynamo=True). The model is exported in eval mode (batch norm with its running
    statistics; every module's mode is restored afterwards). Entries of `custom_translation_table`
    override fastconv's; other keyword arguments go to torch.onnx.export unchanged."""
    with _eval_mode(model):
        if dynamo:
            table = translation_table()
            table.update(custom_translation_table or {})
            return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
        if custom_translation_table:
            raise ValueError("fastconv.onnx.export: custom_translation_table applies to the dynamo exporter only")
        opset = kwargs.get("opset_version")
        if opset is not None and int(opset) < LEGACY_MIN_OPSET:
            raise ValueError(f"fastconv.onnx.export: fastconv's ops need opset_version >= {LEGACY_MIN_OPSET}, got {opset}")
        register_symbolics()
        return torch.onnx.export(model, args, f, dynamo=False, **kwargs)
