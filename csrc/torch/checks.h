// Argument checks and shape-struct builders shared by the CPU and CUDA bindings.
// Errors map to the Python exception torch itself would raise: TORCH_CHECK -> RuntimeError,
// TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError,
// TORCH_CHECK_NOT_IMPLEMENTED -> NotImplementedError. Messages start with "fastconv.<op>".
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "fastconv/shapes.h"
#include "fastconv/status.h"

namespace fastconv {

// Our kernels sit below autograd (torch.library.register_autograd wraps them), so any ATen op a
// binding calls on the way (mm_out, copy_, zero_) must not be recorded for autograd either.
#define FASTCONV_BELOW_AUTOGRAD() at::AutoDispatchBelowADInplaceOrView fastconv_below_autograd_guard


inline Strides4 strides4(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Memory format PyTorch gives a conv output: channels_last if either operand suggests it.
inline c10::MemoryFormat conv_output_format(const at::Tensor& a, const at::Tensor& b) {
  if (a.suggest_memory_format() == c10::MemoryFormat::ChannelsLast ||
      b.suggest_memory_format() == c10::MemoryFormat::ChannelsLast) {
    return c10::MemoryFormat::ChannelsLast;
  }
  return c10::MemoryFormat::Contiguous;
}

inline void check_4d(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fastconv.", op, ": expected ", name, " to be a 4-D tensor, got ", t.dim(),
              "-D tensor of shape ", t.sizes());
}

inline void check_status(Status st, const char* op, const std::string& algo) {
  TORCH_CHECK(st == Status::kSuccess, "fastconv.", op, " (algo='", algo, "'): kernel failed: ",
              status_string(st));
}

}  // namespace fastconv
