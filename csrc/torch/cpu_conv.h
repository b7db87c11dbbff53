// The CPU conv2d op body (cpu_conv.cpp), shared with the fused-epilogue op (cpu_fused.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastconv {

// torch.ops.fastconv.conv2d on CPU tensors: checks, algorithm `algo`, output in conv_output_format.
at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view algo_str);

}  // namespace fastconv
