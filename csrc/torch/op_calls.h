// op_calls.h — calling another torch.ops.fastconv op from a binding, through the dispatcher for the
// current key set (the bindings run below autograd, so this reaches the device's kernel). Shared by
// the CPU and CUDA fused ops, which compose conv2d / batch_norm_train.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace fastconv {

using BnTrainResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline BnTrainResult call_batch_norm_train(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias, double eps, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastconv::batch_norm_train", "")
          .typed<BnTrainResult(const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                               double, bool)>();
  return op.call(x, weight, bias, eps, relu);
}

}  // namespace fastconv
