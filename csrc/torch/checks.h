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

// Conv2dShape from an input of size [N, C, H, W] and a weight of size [K, C/groups, R, S].
inline Conv2dShape conv_shape_from_sizes(at::IntArrayRef in, at::IntArrayRef wt, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                         const char* op) {
  TORCH_CHECK(in.size() == 4 && wt.size() == 4, "fastconv.", op, ": expected 4-D input and weight sizes");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "fastconv.", op,
              ": stride, padding and dilation must have 2 elements");
  TORCH_CHECK(groups > 0, "fastconv.", op, ": non-positive groups is not supported");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fastconv.", op, ": non-positive stride is not supported");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "fastconv.", op, ": negative padding is not supported");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "fastconv.", op, ": dilation should be greater than zero");
  TORCH_CHECK(in[1] == wt[1] * groups, "fastconv.", op, ": Given groups=", groups, ", weight of size ", wt,
              ", expected input", in, " to have ", wt[1] * groups, " channels, but got ", in[1],
              " channels instead");
  TORCH_CHECK(wt[0] % groups == 0, "fastconv.", op, ": Given groups=", groups,
              ", expected weight to be divisible by ", groups, " at dimension 0, but got weight of size ", wt);
  Conv2dShape s = make_conv2d_shape(in[0], in[1], in[2], in[3], wt[0], wt[2], wt[3], padding[0], padding[1],
                                    stride[0], stride[1], dilation[0], dilation[1], groups);
  TORCH_CHECK(s.P > 0 && s.Q > 0, "fastconv.", op, ": Calculated output size: (", wt[0], "x", s.P, "x", s.Q,
              "). Output size is too small (input ", in, ", weight ", wt, ")");
  return s;
}

}  // namespace fastconv
