// prepare.h — the device-independent half of the bindings (ATen's meta/impl split): argument checks
// and shape structs that every device (CPU, CUDA, the emulated CUDA device) must apply identically,
// written once, with torch's rules and messages. A device file adds only what differs: dtypes,
// layout policy, guard/stream, workspace and the launch.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"
#include "fastconv/shapes.h"

namespace fastconv {

inline void check_pair(at::IntArrayRef a, const char* op, const char* name) {
  TORCH_CHECK(a.size() == 2, "fastconv.", op, ": ", name, " must have 2 elements, got ", a);
}

// torch's pooling_output_shape + pool2d_shape_check, in torch's order and with its messages; avg
// pooling passes dilation {1, 1}. Both bounds on the padding apply, as in torch: half the dilated
// kernel and half the kernel itself.
inline Pool2dShape prepare_pool(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                                at::IntArrayRef dil, bool ceil_mode, const char* op) {
  check_pair(k, op, "kernel_size");
  check_pair(stride, op, "stride");
  check_pair(pad, op, "padding");
  check_pair(dil, op, "dilation");
  check_4d(x, op, "input");
  TORCH_CHECK(k[0] > 0 && k[1] > 0, "fastconv.", op, ": kernel size should be greater than zero, but got kH: ",
              k[0], " kW: ", k[1]);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fastconv.", op,
              ": stride should be greater than zero, but got dH: ", stride[0], " dW: ", stride[1]);
  TORCH_CHECK(dil[0] > 0 && dil[1] > 0, "fastconv.", op, ": dilation should be greater than zero, but got dilationH: ",
              dil[0], " dilationW: ", dil[1]);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(pad[i] >= 0, "fastconv.", op, ": pad must be non-negative, but got pad: ", pad[i]);
    TORCH_CHECK(pad[i] <= ((k[i] - 1) * dil[i] + 1) / 2, "fastconv.", op,
                ": pad should be at most half of effective kernel size, but got pad=", pad[i],
                ", kernel_size=", k[i], " and dilation=", dil[i]);
  }
  TORCH_CHECK(x.size(1) != 0 && x.size(2) != 0 && x.size(3) != 0, "fastconv.", op,
              ": Expected 4D (batch mode) tensor with optional 0 dim batch size for input, but got: ", x.sizes());
  TORCH_CHECK(k[1] / 2 >= pad[1] && k[0] / 2 >= pad[0], "fastconv.", op,
              ": pad should be smaller than or equal to half of kernel size, but got padW = ", pad[1],
              ", padH = ", pad[0], ", kW = ", k[1], ", kH = ", k[0]);
  Pool2dShape s;
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.W = x.size(3);
  s.kh = k[0]; s.kw = k[1];
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.dil_h = dil[0]; s.dil_w = dil[1];
  s.P = pool_output_size(s.H, s.kh, s.pad_h, s.stride_h, s.dil_h, ceil_mode);
  s.Q = pool_output_size(s.W, s.kw, s.pad_w, s.stride_w, s.dil_w, ceil_mode);
  TORCH_CHECK(s.P >= 1 && s.Q >= 1, "fastconv.", op, ": Given input size: (", s.C, "x", s.H, "x", s.W,
              "). Calculated output size: (", s.C, "x", s.P, "x", s.Q, "). Output size is too small");
  return s;
}

// A batch-norm weight or bias: any shape with C elements, as torch accepts ([C], [1, C], ...).
inline void check_bn_affine(const at::Tensor& t, int64_t C, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == C, "fastconv.", op, ": ", name, " should contain ", C, " elements not ", t.numel());
}

}  // namespace fastconv
