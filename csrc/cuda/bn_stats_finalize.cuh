// conv2d_bn_train's batch statistics from a GEMM epilogue: the lane merge and the second pass, shared by
// the kernels whose epilogue leaves per-row-slot partials (conv2d_igemm_tc.cu: one slot per warp row of an
// M tile; conv2d_igemm_sm90.cu: one per warp's 16 wgmma rows). partial[slot][k] = (mean, M2) of the rows
// [slot·rows_per_slot, min(M, (slot + 1)·rows_per_slot)) of channel k, as rounded to the output type. The
// count of a slot is implicit, so a slot past M (a partial last tile) is skipped whatever it holds.
// The CPU reference is the BN statistics of y (csrc/cpu's batch norm, and torch in the tests).
#pragma once

#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {  // internal linkage: each including file has its own copy

// The epilogues' side: merges (mean, M2, n) over the 8 lanes that share lane % 4 — one column of an
// mma.sync / wgmma accumulator fragment — by Chan's formula (xor 4, 8, 16); every lane gets the result.
// All 32 lanes must call it.
__device__ __forceinline__ void merge_column_lanes(float& mean, float& m2, float& n) {
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    const float nb = __shfl_xor_sync(0xffffffffu, n, off);
    const float mb = __shfl_xor_sync(0xffffffffu, mean, off);
    const float m2b = __shfl_xor_sync(0xffffffffu, m2, off);
    chan_merge(mean, m2, n, mb, m2b, nb);
  }
}

// conv2d_bn_train's second pass: channel blockIdx.x's (mean, M2) from its `slots` warp partials. Slot
// t covers rows [t·rows_per_slot, min(M, (t + 1)·rows_per_slot)). Thread i merges slots i, i + 256, ...
// in order, then a fixed tree merges the 256 runs: the same order on every run. Double throughout
// (counts reach 2^30; the merge is K·slots work, not the hot loop).
constexpr int kStatsThreads = 256;
__global__ void __launch_bounds__(kStatsThreads) bn_stats_finalize_kernel(const float2* __restrict__ partial,
                                                                          int64_t slots, int rows_per_slot, int M,
                                                                          int K, double eps,
                                                                          float* __restrict__ save_mean,
                                                                          float* __restrict__ save_invstd,
                                                                          float* __restrict__ batch_var) {
  FC_SHARED(double, sh_n, [kStatsThreads]);
  FC_SHARED(double, sh_mean, [kStatsThreads]);
  FC_SHARED(double, sh_m2, [kStatsThreads]);
  const int k = blockIdx.x, tid = threadIdx.x;
  double n = 0.0, mean = 0.0, m2 = 0.0;
  for (int64_t t = tid; t < slots; t += kStatsThreads) {
    const int64_t rows = min(static_cast<int64_t>(rows_per_slot), static_cast<int64_t>(M) - t * rows_per_slot);
    if (rows <= 0) continue;
    const float2 v = partial[t * K + k];
    chan_merge(mean, m2, n, static_cast<double>(v.x), static_cast<double>(v.y), static_cast<double>(rows));
  }
  sh_n[tid] = n;
  sh_mean[tid] = mean;
  sh_m2[tid] = m2;
  __syncthreads();
  for (int stride = kStatsThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) {
      chan_merge(sh_mean[tid], sh_m2[tid], sh_n[tid], sh_mean[tid + stride], sh_m2[tid + stride], sh_n[tid + stride]);
    }
    __syncthreads();
  }
  if (tid == 0) {
    const float var = static_cast<float>(sh_n[0] > 0.0 ? sh_m2[0] / sh_n[0] : 0.0);
    save_mean[k] = static_cast<float>(sh_mean[0]);
    batch_var[k] = var;
    save_invstd[k] = 1.0f / sqrtf(var + static_cast<float>(eps));  // batchnorm2d.cu's rsqrt_exact
  }
}

}  // namespace
}  // namespace cuda
}  // namespace fastconv
