// Argument checks of conv2d_fused's epilogue operands, shared by the CPU and CUDA bindings.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace fastconv {

inline bool is_defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// scale/bias: 1-D, K elements, floating point (they are applied in the accumulation dtype).
inline void check_channel_param(const std::optional<at::Tensor>& t, const char* name, int64_t K, const char* op) {
  if (!is_defined(t)) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == K, "fastconv.", op, ": expected ", name,
              " to be 1-dimensional with ", K, " elements (one per output channel), but got ", name, " of size ",
              t->sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), "fastconv.", op, ": expected a floating-point ", name,
                   ", got ", t->scalar_type());
}

// residual: exactly the conv output's sizes and dtype (any memory format).
inline void check_residual(const std::optional<at::Tensor>& r, const at::Tensor& y, const char* op) {
  if (!is_defined(r)) return;
  TORCH_CHECK(r->sizes() == y.sizes(), "fastconv.", op, ": expected residual of size ", y.sizes(),
              " (the convolution output), got ", r->sizes());
  TORCH_CHECK(r->scalar_type() == y.scalar_type(), "fastconv.", op, ": residual type (", r->scalar_type(),
              ") and input type (", y.scalar_type(), ") should be the same");
}

// Every defined epilogue operand on the input's device.
inline void check_fused_devices(const at::Tensor& input, const std::optional<at::Tensor>& scale,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                const char* op) {
  const std::pair<const char*, const std::optional<at::Tensor>*> ts[] = {
      {"scale", &scale}, {"bias", &bias}, {"residual", &residual}};
  for (const auto& t : ts) {
    if (!is_defined(*t.second)) continue;
    TORCH_CHECK((*t.second)->device() == input.device(), "fastconv.", op,
                ": expected all tensors to be on the same device, but found input on ", input.device(), " and ",
                t.first, " on ", (*t.second)->device());
  }
}

}  // namespace fastconv
