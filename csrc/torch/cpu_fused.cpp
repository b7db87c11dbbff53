// CPU implementations of the fused convolution ops (schemas in ops.cpp). These are the reference
// semantics every backend must match.
//
// conv2d_fused:    y = relu?( conv2d(x, w) · scale[k] + bias[k] + residual )
//   Host order: epilogue-operand checks -> the conv2d op body (cpu_conv.cpp: its own checks, the
//   chosen algorithm, output in conv_output_format) -> the torch-free epilogue (csrc/cpu/epilogue.cpp)
//   in place on the fresh conv output.
// conv2d_bn_train: conv_out = conv2d(x, w); (out, mean, invstd, var) = batch_norm_train(conv_out)
//   Host order: conv checks (prepare_conv2d) and BN-parameter checks (prepare_bn) under this op's name
//   -> the conv2d op body -> the batch_norm_train op (cpu::batch_norm_train_fwd: statistics in double,
//   then the affine transform and ReLU) on the conv output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

#include <optional>

#include "checks.h"
#include "cpu_conv.h"
#include "fastconv/cpu_api.h"
#include "fused_checks.h"
#include "op_calls.h"
#include "prepare.h"

namespace fastconv {
namespace {

at::Tensor conv2d_fused_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            bool relu, c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_fused";
  check_4d(input, op, "input");
  check_4d(weight, op, "weight");
  check_fused_devices(input, scale, bias, residual, op);
  check_channel_param(scale, "scale", weight.size(0), op);
  check_channel_param(bias, "bias", weight.size(0), op);

  at::Tensor y = conv2d_cpu(input, weight, std::nullopt, stride, padding, dilation, groups, algo);
  check_residual(residual, y, op);
  if (y.numel() == 0) return y;

  // Parameters in the conv dtype (the CPU accumulation dtype); the residual read through its strides.
  const at::Tensor sc = is_defined(scale) ? scale->to(y.scalar_type()).contiguous() : at::Tensor();
  const at::Tensor bi = is_defined(bias) ? bias->to(y.scalar_type()).contiguous() : at::Tensor();
  const at::Tensor res = is_defined(residual) ? *residual : at::Tensor();
  Conv2dShape s;
  s.N = y.size(0);
  s.K = y.size(1);
  s.P = y.size(2);
  s.Q = y.size(3);
  s.y = strides4(y);
  const Strides4 rs = res.defined() ? strides4(res) : Strides4{};
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fastconv_conv2d_fused_cpu", [&] {
    check_status(cpu::conv2d_epilogue<scalar_t>(s, sc.defined() ? sc.const_data_ptr<scalar_t>() : nullptr,
                                                bi.defined() ? bi.const_data_ptr<scalar_t>() : nullptr,
                                                res.defined() ? res.const_data_ptr<scalar_t>() : nullptr, rs, relu,
                                                y.mutable_data_ptr<scalar_t>()),
                 op, "epilogue");
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv2d_bn_train_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bn_weight,
    const std::optional<at::Tensor>& bn_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, bool relu, c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_bn_train";
  const Conv2dShape s = prepare_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, op);
  // BN parameters: prepare_bn's checks against an empty stand-in with the conv output's channels, the
  // input's dtype and device (before any work, so a bad parameter costs no convolution).
  prepare_bn(at::empty({0, s.K}, input.options()), bn_weight, bn_bias, op);
  at::Tensor conv_out = conv2d_cpu(input, weight, std::nullopt, stride, padding, dilation, groups, algo);
  auto [out, mean, invstd, var] = call_batch_norm_train(conv_out, bn_weight, bn_bias, eps, relu);
  return {out, conv_out, mean, invstd, var};
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d_fused", &fastconv::conv2d_fused_cpu);
  m.impl("conv2d_bn_train", &fastconv::conv2d_bn_train_cpu);
}
