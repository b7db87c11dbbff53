// Helpers shared by the CUDA kernels: type conversions, launch checks, grid sizing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastconv/cuda_api.h"
#include "fastconv/shapes.h"
#include "seams.cuh"

namespace fastconv {
namespace cuda {

// Loads/stores in the accumulation type, whatever the storage type.
template <typename T> __device__ __forceinline__ AccT<T> to_acc(T v) { return static_cast<AccT<T>>(v); }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(AccT<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Compensated (Kahan–Babuška/Neumaier) summation: a float sum of millions of terms (a global
// average over a 2048x2048 plane) keeps an error of a few ulp instead of one that grows with the
// count. nvcc does not reassociate floating point without -use_fast_math, so the compensation
// survives. Exact for double accumulators too, merely unneeded.
template <typename A> struct CompensatedSum {
  A sum = A(0), comp = A(0);
  __device__ __forceinline__ void add(A v) {
    const A t = sum + v;
    const A as = sum < A(0) ? -sum : sum, av = v < A(0) ? -v : v;
    comp += as >= av ? (sum - t) + v : (v - t) + sum;
    sum = t;
  }
  __device__ __forceinline__ void add(const CompensatedSum& o) {
    add(o.sum);
    comp += o.comp;
  }
  __device__ __forceinline__ A value() const { return sum + comp; }
};

// Chan's parallel merge of a group (mb, m2b, nb) — mean, sum of squared deviations, count — into
// (ma, m2a, na): Welford's running form for two groups, used by every statistics reduction (the BN
// kernels and the implicit-GEMM statistics epilogue). Either side may be empty.
template <typename A>
__device__ __forceinline__ void chan_merge(A& ma, A& m2a, A& na, A mb, A m2b, A nb) {
  if (nb == A(0)) return;
  const A n = na + nb;
  const A d = mb - ma;
  const A r = nb / n;
  ma += d * r;
  m2a += m2b + d * d * na * r;
  na = n;
}

// Elements per 16-byte vector access, and V elements moved as one aligned access. V > 1 is only
// used where the launcher has proven unit stride and 16-byte alignment.
template <typename T> constexpr int kVecWidth = static_cast<int>(16 / sizeof(T));
template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

template <typename T, int V>
__device__ __forceinline__ void load_pack(const T* __restrict__ p, AccT<T> (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = to_acc<T>(p[0]);
  } else {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = to_acc<T>(pk.v[j]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const AccT<T> (&in)[V]) {
  if constexpr (V == 1) {
    p[0] = from_acc<T>(in[0]);
  } else {
    Pack<T, V> pk;
#pragma unroll
    for (int j = 0; j < V; ++j) pk.v[j] = from_acc<T>(in[j]);
    *reinterpret_cast<Pack<T, V>*>(p) = pk;
  }
}

// Grid size for a grid-stride loop over `total` items: enough blocks to fill the GPU, capped so
// 64-bit totals never overflow gridDim.x.
inline unsigned int grid_for(int64_t total, int threads, int64_t max_blocks = 65535LL * 8) {
  int64_t blocks = (total + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned int>(blocks);
}

// The error of the last launch (launch-configuration errors surface here, not at sync).
inline cudaError_t launch_status() { return cudaGetLastError(); }

}  // namespace cuda
}  // namespace fastconv
