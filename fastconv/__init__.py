"""fastconv: hand-written convolution, pooling and batch-norm kernels for PyTorch.

    import fastconv
    y = fastconv.functional.conv2d(x, w, b, stride=1, padding=1, algo="auto")
    y = fastconv.fused.conv2d_bias_act(x, w, scale, bias, residual, padding=1, relu=True)
    layer = fastconv.Conv2d(64, 128, 3, padding=1)        # drop-in torch.nn.Conv2d
    model = fastconv.convert(torchvision_model)          # swap every supported layer
    model = fastconv.fuse_for_inference(model.eval())    # conv+BN(+ReLU, +residual add) as one fused op
    fastconv.explain(layer, (8, 64, 56, 56))             # which algorithm "auto" runs, and why
    fastconv.backends.autotune = True                    # time the candidates per shape (cached on disk)
    fastconv.autotune(model, example_input); fastconv.plans.save("plans.json")
    fastconv.onnx.export(model, (x,), "model.onnx")     # ONNX export (onnxscript + onnx; dynamo=False: legacy)
"""

from fastconv import _ext  # noqa: F401  (loads fastconv._C: registers torch.ops.fastconv.*)
from fastconv import _meta  # noqa: F401  (fake kernels)
from fastconv import autograd as _autograd  # noqa: F401
from fastconv import _autocast  # noqa: F401  (autocast rules)
from fastconv import algorithms, backends, functional, fused, models, onnx, plans
from fastconv.algorithms import available_algorithms
from fastconv.autotune import autotune
from fastconv.convert import convert, revert
from fastconv.explain import explain
from fastconv.fuse import fuse_for_inference, fuse_for_training, unfuse
from fastconv.info import build_info
from fastconv.modules import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, BatchNormReLU2d, Conv2d, MaxPool2d

__version__ = "0.1.0"

__all__ = [
    "functional", "fused", "available_algorithms", "convert", "revert", "fuse_for_inference", "fuse_for_training",
    "unfuse", "build_info",
    "explain", "autotune", "plans", "backends", "models", "algorithms", "onnx",
    "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "BatchNormReLU2d",
]
