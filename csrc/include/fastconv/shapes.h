// Shape structs shared by every CPU and CUDA kernel, and the size formulas PyTorch uses.
//
// Tensors are described by sizes plus 64-bit element strides, so one struct covers NCHW
// (contiguous) and NHWC (channels_last) storage alike. Naming follows CUTLASS:
//   input  x  [N, C, H, W]        activation        (fprop A operand, NHWC view: N·H·W x C)
//   weight w  [K, C/groups, R, S] filters           (KRSC view: K x R·S·C/groups)
//   output y  [N, K, P, Q]        result            (NPQK view: N·P·Q x K)
// Implicit GEMM per group g (Cg = C/groups, Kg = K/groups):
//   fprop  M = N·P·Q, N = Kg, K = Cg·R·S
//   dgrad  M = N·H·W, N = Cg, K = Kg·R·S
//   wgrad  M = Kg,    N = Cg·R·S, K = N·P·Q
#pragma once

#include <cstdint>

#include "fastconv/hostdevice.h"

namespace fastconv {

// Element strides of a 4-D tensor, in (n, c, h, w) order whatever the memory layout.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;

  FC_HD int64_t offset(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
  // Channels are innermost and dense: the tensor is (a view of) NHWC.
  FC_HD bool channels_last() const { return c == 1; }
};

FC_HD Strides4 contiguous_strides(int64_t C, int64_t H, int64_t W) {
  return Strides4{C * H * W, H * W, W, 1};
}
FC_HD Strides4 channels_last_strides(int64_t C, int64_t H, int64_t W) {
  return Strides4{H * W * C, 1, W * C, C};
}

// PyTorch's convolution output size: floor((in + 2·pad − dil·(k−1) − 1) / stride) + 1.
FC_HD int64_t conv_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil) {
  return floor_div(in + 2 * pad - dil * (k - 1) - 1, stride) + 1;
}

// PyTorch's pooling output size (aten pooling_output_shape), including ceil_mode's rule that
// the last window must start inside the input or the left padding.
FC_HD int64_t pool_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil,
                               bool ceil_mode) {
  int64_t out = floor_div(in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// Adaptive pooling window [start, end) of output index o for input size in and output size out.
FC_HD int64_t adaptive_start(int64_t o, int64_t out, int64_t in) { return (o * in) / out; }
FC_HD int64_t adaptive_end(int64_t o, int64_t out, int64_t in) { return ((o + 1) * in + out - 1) / out; }

struct Conv2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t K = 0, R = 0, S = 0;         // filters
  int64_t P = 0, Q = 0;                // output spatial size
  int64_t pad_h = 0, pad_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;
  Strides4 x, w, y;  // element strides of input, weight, output

  FC_HD int64_t Cg() const { return C / groups; }  // input channels per group
  FC_HD int64_t Kg() const { return K / groups; }  // output channels per group

  // Input row/column touched by output position p and filter tap r (may be out of bounds = padding).
  FC_HD int64_t in_h(int64_t p, int64_t r) const { return p * stride_h - pad_h + r * dil_h; }
  FC_HD int64_t in_w(int64_t q, int64_t s) const { return q * stride_w - pad_w + s * dil_w; }

  // Implicit-GEMM extents (per group), see the header comment.
  FC_HD int64_t fprop_m() const { return N * P * Q; }
  FC_HD int64_t fprop_n() const { return Kg(); }
  FC_HD int64_t fprop_k() const { return Cg() * R * S; }
  FC_HD int64_t dgrad_m() const { return N * H * W; }
  FC_HD int64_t dgrad_n() const { return Cg(); }
  FC_HD int64_t dgrad_k() const { return Kg() * R * S; }
  FC_HD int64_t wgrad_m() const { return Kg(); }
  FC_HD int64_t wgrad_n() const { return Cg() * R * S; }
  FC_HD int64_t wgrad_k() const { return N * P * Q; }

  FC_HD double fprop_flops() const { return 2.0 * double(N * P * Q) * double(K) * double(Cg() * R * S); }

  // True when sizes are consistent with PyTorch's rules; kernels may assume it.
  FC_HD bool valid() const {
    return N >= 0 && C > 0 && H >= 0 && W >= 0 && K > 0 && R > 0 && S > 0 && groups > 0 &&
           C % groups == 0 && K % groups == 0 && stride_h > 0 && stride_w > 0 && dil_h > 0 &&
           dil_w > 0 && pad_h >= 0 && pad_w >= 0 && P == conv_output_size(H, R, pad_h, stride_h, dil_h) &&
           Q == conv_output_size(W, S, pad_w, stride_w, dil_w) && P >= 0 && Q >= 0;
  }
};

// Fills P and Q and contiguous NCHW / KCRS / NKPQ strides; callers override strides for other layouts.
inline Conv2dShape make_conv2d_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                     int64_t S, int64_t pad_h, int64_t pad_w, int64_t stride_h,
                                     int64_t stride_w, int64_t dil_h, int64_t dil_w, int64_t groups) {
  Conv2dShape s;
  s.N = N; s.C = C; s.H = H; s.W = W; s.K = K; s.R = R; s.S = S;
  s.pad_h = pad_h; s.pad_w = pad_w; s.stride_h = stride_h; s.stride_w = stride_w;
  s.dil_h = dil_h; s.dil_w = dil_w; s.groups = groups;
  s.P = conv_output_size(H, R, pad_h, stride_h, dil_h);
  s.Q = conv_output_size(W, S, pad_w, stride_w, dil_w);
  s.x = contiguous_strides(C, H, W);
  s.w = contiguous_strides(groups > 0 ? C / groups : C, R, S);
  s.y = contiguous_strides(K, s.P, s.Q);
  return s;
}

// Max/avg pooling window geometry; adaptive pooling uses only N, C, H, W, P, Q and the strides.
struct Pool2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t P = 0, Q = 0;                // output
  int64_t kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;        // max pooling only
  Strides4 x, y;                       // input and output strides (indices share y's strides)
};

// Per-channel batch norm over x [N, C, H, W]; F.batch_norm's (N, C, *) inputs are viewed as
// [N, C, L, 1] by the binding.
struct BatchNormShape {
  int64_t N = 0, C = 0, H = 0, W = 0;
  Strides4 x, y;  // y's strides are also dy's and dx's

  FC_HD int64_t count() const { return N * H * W; }  // elements reduced per channel
};

}  // namespace fastconv
