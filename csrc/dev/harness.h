// harness.h — what the csrc/dev harnesses share: the CUDA call check, host conversions for the storage
// types, and the NHWC / KRSC / NPQK conv case of the implicit-GEMM harnesses.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "fastconv/shapes.h"

// In a function returning bool: prints the failing call and returns false.
#define CUDA_CHECK(call)                                                                             \
  do {                                                                                               \
    cudaError_t err_ = (call);                                                                       \
    if (err_ != cudaSuccess) {                                                                       \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorName(err_), __FILE__, __LINE__, #call); \
      return false;                                                                                  \
    }                                                                                                \
  } while (0)

// Host conversions for the storage types (round to nearest even).
template <typename T> T to_t(float v);
template <> inline float to_t<float>(float v) { return v; }
template <> inline __half to_t<__half>(float v) { return __float2half_rn(v); }
template <> inline __nv_bfloat16 to_t<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
inline float to_f(float v) { return v; }
inline float to_f(__half v) { return __half2float(v); }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// The implicit-GEMM harnesses' convolution on channels_last operands: x NHWC, w KRSC, y NPQK, square padding/stride/dilation.
struct IgemmCase {
  const char* name;
  int64_t N, C, H, W, K, R, S, pad, stride, dil, groups;
};

inline fastconv::Conv2dShape make_shape(const IgemmCase& c) {
  fastconv::Conv2dShape s = fastconv::make_conv2d_shape(c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.pad, c.pad, c.stride,
                                                        c.stride, c.dil, c.dil, c.groups);
  s.x = fastconv::channels_last_strides(s.C, s.H, s.W);
  s.w = fastconv::channels_last_strides(s.Cg(), s.R, s.S);  // KRSC
  s.y = fastconv::channels_last_strides(s.K, s.P, s.Q);
  return s;
}
