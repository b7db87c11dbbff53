// Pieces shared by the GEMM-based convolutions (im2col.cu, conv2d_1x1.cu): one convolution step is a
// GEMM per (group, image), batched over one of the two; a bias is laid down first so the GEMM can
// accumulate onto it (beta = 1) and the output is rounded once.
#pragma once

#include <cstdint>

#include "common.cuh"
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

constexpr int kFillBiasThreads = 256;

// One thread per output element of images [n0, n0 + nb): y = bias[k].
template <typename T>
__global__ void __launch_bounds__(kFillBiasThreads)
fill_bias_kernel(Conv2dShape s, const T* __restrict__ bias, int64_t n0, int64_t nb, T* __restrict__ y) {
  const int64_t PQ = s.P * s.Q, total = nb * s.K * PQ;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pq = i % PQ, k = (i / PQ) % s.K, n = i / (PQ * s.K);
    y[s.y.offset(n0 + n, k, pq / s.Q, pq % s.Q)] = bias[k];
  }
}

template <typename T>
void fill_bias(const Conv2dShape& s, const T* bias, int64_t n0, int64_t nb, T* y, cudaStream_t stream) {
  FC_LAUNCH(grid_for(nb * s.K * s.P * s.Q, kFillBiasThreads), kFillBiasThreads, 0, stream, fill_bias_kernel<T>)(
      s, bias, n0, nb, y);
}

}  // namespace cuda
}  // namespace fastconv
