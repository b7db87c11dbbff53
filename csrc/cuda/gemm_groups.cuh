// Host-side helper shared by the GEMM-based convolutions (im2col.cu, conv2d_1x1.cu): one
// convolution step is a GEMM per (group, image); gemm_simt batches over one of the two.
#pragma once

#include <cstdint>

#include "fastconv/cuda_api.h"

namespace fastconv {
namespace cuda {

// Batched GEMM over groups or images, whichever leaves fewer host-side launches; `a`, `b`, `c` give
// the operands of (group g, image n) and *_g / *_n their strides along each.
struct GemmCall {
  int64_t M, N, K, lda, ldb, ldc;
  bool ta, tb;
  int64_t a_g, a_n, b_g, b_n, c_g, c_n;
};
template <typename T, typename Out>
cudaError_t gemm_groups_images(const GemmCall& gc, int64_t groups, int64_t images, const T* a, const T* b, Out* c,
                               float beta, cudaStream_t stream) {
  if (groups >= images) {
    for (int64_t n = 0; n < images; ++n) {
      cudaError_t e = gemm_simt<T, Out>(gc.M, gc.N, gc.K, a + n * gc.a_n, gc.lda, gc.ta, b + n * gc.b_n, gc.ldb, gc.tb,
                                        c + n * gc.c_n, gc.ldc, 1.f, beta, groups, gc.a_g, gc.b_g, gc.c_g, stream);
      if (e != cudaSuccess) return e;
    }
  } else {
    for (int64_t g = 0; g < groups; ++g) {
      cudaError_t e = gemm_simt<T, Out>(gc.M, gc.N, gc.K, a + g * gc.a_g, gc.lda, gc.ta, b + g * gc.b_g, gc.ldb, gc.tb,
                                        c + g * gc.c_g, gc.ldc, 1.f, beta, images, gc.a_n, gc.b_n, gc.c_n, stream);
      if (e != cudaSuccess) return e;
    }
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace fastconv
