"""Drop-in modules: subclasses of their torch.nn twins (same constructor, parameters, buffers, init,
state_dict keys and repr) whose forward runs fastconv's kernels."""

from __future__ import annotations

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from fastconv import functional as FF


def _fx_leaf(module: nn.Module, input: torch.fx.Proxy) -> torch.fx.Proxy:
    # torch.fx.symbolic_trace keeps torch.nn's own layers as call_module leaves (so train()/eval()
    # still switch a traced BatchNorm); fastconv's layers live outside torch.nn, so they record
    # themselves the same way instead of being traced through.
    tracer = input.tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (input,), {})


def _refuse_script(self: nn.Module) -> nn.Module:
    # torch.jit.script calls __prepare_scriptable__ on every submodule before compiling anything; without
    # this it fails deep inside torch.fx's Proxy (fastconv's forward is Python: argument checks and
    # the per-shape algorithm choice, which TorchScript cannot compile).
    name = type(self).__name__
    raise RuntimeError(
        f"fastconv.{name} cannot be compiled by torch.jit.script: its forward picks the algorithm in Python. "
        "Use torch.jit.trace(model, example_inputs) (records torch.ops.fastconv.* calls), torch.export.export "
        "or torch.compile instead, or script fastconv.revert(model) (torch.nn layers, torch's kernels).")


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d with fastconv kernels; every padding_mode; extra keyword `algo` ("auto" or
    an algorithm from fastconv.available_algorithms(device))."""

    __prepare_scriptable__ = _refuse_script

    def __init__(self, *args, algo: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.algo = algo

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, input)
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias) -> Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return FF.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups, algo=self.algo)
        return FF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, algo=self.algo)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        algo = getattr(self, "algo", "auto")
        return s if algo == "auto" else f"{s}, algo={algo!r}"


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d with fastconv kernels."""

    __prepare_scriptable__ = _refuse_script

    def forward(self, input: Tensor):
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, input)
        return FF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    """torch.nn.AvgPool2d with fastconv kernels."""

    __prepare_scriptable__ = _refuse_script

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, input)
        return FF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d with fastconv kernels."""

    __prepare_scriptable__ = _refuse_script

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, input)
        return FF.adaptive_avg_pool2d(input, self.output_size)


def _batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, input: Tensor, relu: bool) -> Tensor:
    # torch.nn.modules.batchnorm._BatchNorm.forward, with fastconv's batch_norm underneath.
    if isinstance(input, torch.fx.Proxy):
        return _fx_leaf(self, input)
    self._check_input_dim(input)
    if self.momentum is None:
        exponential_average_factor = 0.0
    else:
        exponential_average_factor = self.momentum
    if self.training and self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        else:
            exponential_average_factor = self.momentum
    bn_training = self.training or (self.running_mean is None and self.running_var is None)
    use_running = not self.training or self.track_running_stats
    fn = FF.batch_norm_relu if relu else FF.batch_norm
    return fn(input, self.running_mean if use_running else None, self.running_var if use_running else None,
              self.weight, self.bias, bn_training, exponential_average_factor, self.eps)


class BatchNorm2d(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d with fastconv kernels (training, eval, momentum=None's cumulative average,
    affine and track_running_stats on or off)."""

    __prepare_scriptable__ = _refuse_script

    def forward(self, input: Tensor) -> Tensor:
        return _batch_norm_forward(self, input, relu=False)


class BatchNormReLU2d(nn.BatchNorm2d):
    """relu(BatchNorm2d(x)) in one fused kernel; parameters and state_dict keys are BatchNorm2d's."""

    __prepare_scriptable__ = _refuse_script

    def forward(self, input: Tensor) -> Tensor:
        return _batch_norm_forward(self, input, relu=True)


__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "BatchNormReLU2d"]
