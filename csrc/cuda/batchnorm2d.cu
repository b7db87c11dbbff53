// batchnorm2d.cu — per-channel batch norm over x [N, C, H, W]: training forward (batch statistics),
// eval forward (running statistics), backward, and the running-statistics update. Optional fused ReLU.
//
// Kernels (T = float, __half, __nv_bfloat16, double; statistics and sums in AccT<T>):
//   bn_stats_partial_kernel   stage 1 of the statistics. Split s of channel (group) c: each thread
//                             runs Welford over its elements, the block merges the threads with
//                             Chan's formula in a fixed shared-memory tree, and one thread per channel
//                             writes (mean, M2, count) of the split to the workspace.
//   bn_stats_finalize_kernel  stage 2: one warp per channel merges the S split partials in a fixed
//                             order (lane-strided Chan merges, then a shuffle tree); writes save_mean,
//                             save_invstd = 1/sqrt(var + eps), batch_var (biased).
//   bn_grad_partial_kernel    stage 1 of the backward sums Σdy' and Σdy'·(x − mean), same partition.
//   bn_grad_finalize_kernel   stage 2: dbias, dweight, and the two per-channel dx coefficients.
//   bn_fwd_apply_kernel       y = (x − mean)·invstd·w + b (+ReLU), elementwise.
//   bn_bwd_apply_kernel       dx, elementwise (train: with the reduction terms; eval: dy'·w·invstd).
//   bn_update_running_kernel  one thread per channel.
//
// Layouts. Both layouts are dense and indexed without strides (checked at launch):
//   NCHW: a channel is N planes of H·W contiguous elements. Reduction blocks are (256, 1) threads on
//         one channel; a thread walks V-element chunks of the channel's planes. Elementwise kernels
//         walk V-element chunks of the whole tensor (a chunk never straddles planes: H·W % V == 0).
//   NHWC: rows of C contiguous channels, N·H·W rows. Blocks are (CT, RY) threads: CT channel
//         threads (each owning V adjacent channels, so a warp reads contiguous bytes) by RY rows.
// V = 16 / sizeof(T) when the alignment allows (compile-time specialisation picked at launch), else 1.
//
// Determinism: the partition (number of splits S, rows per split) depends only on the shape, every
// merge happens in a fixed order, and there are no atomics, so results are bitwise reproducible.
// Workspace: 3·C·S partials for the statistics or 2·C·S for the backward sums, plus 2·C backward
// coefficients, all AccT<T> (batch_norm_workspace_bytes).

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

struct BnConfig {
  static constexpr int kThreads = 256;              // every block
  static constexpr int kMinBlocks = 2;              // caps registers at 128: no spills, >= 16 warps/SM
  static constexpr int kMaxChannelThreads = 32;     // NHWC: CT <= one warp of channel vectors
  static constexpr int64_t kElemsPerBlock = 16384;  // reduction work a block should get at least
  static constexpr int64_t kTargetBlocks = 2048;    // enough blocks to fill any current GPU
  static constexpr int64_t kMinSplitElems = 1024;   // never split a channel finer than this
  static constexpr int64_t kMaxSplits = 1024;       // bounds the workspace and stage-2 work
  static constexpr int kWarpsPerBlock = kThreads / 32;
};
static_assert((BnConfig::kThreads & (BnConfig::kThreads - 1)) == 0,
              "the shared-memory merge tree needs a power-of-two block.");
static_assert(BnConfig::kMaxSplits <= 65535, "splits index gridDim.y.");


// a / d for 0 <= a, d >= 1 without the 64-bit division subroutine (whose call spills registers):
// a double-reciprocal estimate, then exact integer correction, so the result is always exact.
__device__ __forceinline__ int64_t div_exact(int64_t a, int64_t d, double inv_d) {
  int64_t q = static_cast<int64_t>(static_cast<double>(a) * inv_d);
  while (q > 0 && q * d > a) --q;
  while ((q + 1) * d <= a) ++q;
  return q;
}

__device__ __forceinline__ float rsqrt_exact(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double rsqrt_exact(double v) { return 1.0 / sqrt(v); }

// Shape, partition and traversal constants, computed once on the host.
struct BnGeom {
  int64_t N, C, HW;
  int64_t M;          // elements per channel, N·H·W
  int64_t S;          // splits per channel
  // NCHW: chunks are V contiguous elements of one plane.
  int64_t hwc;        // chunks per plane, HW / V
  double inv_hwc;     // 1 / hwc
  double inv_c;       // 1 / C
  int64_t split_len;  // NCHW: chunks per split (of N·hwc); NHWC: rows per split (of N·HW)
  int64_t step_n, step_r;  // NCHW: blockDim.x = step_n·hwc + step_r (thread walk without division)
};

// ---- per-thread traversal of one split ------------------------------------------------------------

// Calls f(offset) for the V-element chunks of channel c that this thread owns in split s (NCHW).
template <int V, typename F>
__device__ __forceinline__ void walk_nchw(const BnGeom& g, int64_t c, int64_t s, F&& f) {
  const int64_t total = g.N * g.hwc;
  const int64_t j0 = s * g.split_len;
  const int64_t j1 = min64(j0 + g.split_len, total);
  int64_t j = j0 + threadIdx.x;
  if (j >= j1) return;
  int64_t n = div_exact(j, g.hwc, g.inv_hwc);
  int64_t r = j - n * g.hwc;
  for (; j < j1; j += blockDim.x) {
    f((n * g.C + c) * g.HW + r * V);
    n += g.step_n;
    r += g.step_r;
    if (r >= g.hwc) { r -= g.hwc; ++n; }
  }
}

// Calls f(offset) for every row this thread owns in split s (NHWC); offset is of channel c0.
template <typename F>
__device__ __forceinline__ void walk_nhwc(const BnGeom& g, int64_t c0, int64_t s, F&& f) {
  const int64_t rows = g.N * g.HW;
  const int64_t r0 = s * g.split_len;
  const int64_t r1 = min64(r0 + g.split_len, rows);
  for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) f(r * g.C + c0);
}

// ---- statistics -----------------------------------------------------------------------------------

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_stats_partial_kernel(const BnGeom g, const T* __restrict__ x, AccT<T>* __restrict__ p_mean,
                        AccT<T>* __restrict__ p_m2, AccT<T>* __restrict__ p_cnt) {
  using Acc = AccT<T>;
  constexpr int K = kNHWC ? V : 1;  // Welford states per thread (one per owned channel)
  FC_SHARED(Acc, sh_mean, [K][BnConfig::kThreads]);
  FC_SHARED(Acc, sh_m2, [K][BnConfig::kThreads]);
  FC_SHARED(Acc, sh_cnt, [BnConfig::kThreads]);

  const int64_t s = blockIdx.y;
  Acc mean[K], m2[K], cnt = Acc(0);
#pragma unroll
  for (int k = 0; k < K; ++k) { mean[k] = Acc(0); m2[k] = Acc(0); }

  int64_t c0;  // first channel owned by this thread
  if constexpr (kNHWC) {
    c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
    if (c0 < g.C) {
      walk_nhwc(g, c0, s, [&](int64_t off) {
        Acc v[V];
        load_pack<T, V>(x + off, v);
        cnt += Acc(1);
        const Acc inv = Acc(1) / cnt;  // shared by the V channels of the row
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const Acc d = v[k] - mean[k];
          mean[k] += d * inv;
          m2[k] += d * (v[k] - mean[k]);
        }
      });
    }
  } else {
    c0 = blockIdx.x;
    walk_nchw<V>(g, c0, s, [&](int64_t off) {
      Acc v[V];
      load_pack<T, V>(x + off, v);
      // The chunk's own mean and M2 (two-pass in registers), then one Chan merge.
      Acc cm = Acc(0);
#pragma unroll
      for (int j = 0; j < V; ++j) cm += v[j];
      cm *= Acc(1) / Acc(V);
      Acc cm2 = Acc(0);
#pragma unroll
      for (int j = 0; j < V; ++j) cm2 += (v[j] - cm) * (v[j] - cm);
      chan_merge(mean[0], m2[0], cnt, cm, cm2, Acc(V));
    });
  }

  // Fixed-order tree over the thread rows (NHWC: same channel column; NCHW: the whole block).
  const int CT = kNHWC ? blockDim.x : 1;
  const int ty = kNHWC ? threadIdx.y : threadIdx.x;
  const int RY = kNHWC ? blockDim.y : blockDim.x;
  const int tid = ty * CT + (kNHWC ? threadIdx.x : 0);
#pragma unroll
  for (int k = 0; k < K; ++k) { sh_mean[k][tid] = mean[k]; sh_m2[k][tid] = m2[k]; }
  sh_cnt[tid] = cnt;
  __syncthreads();
  for (int off = RY / 2; off > 0; off >>= 1) {
    if (ty < off) {
      const int o = tid + off * CT;
      Acc na = sh_cnt[tid];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        Acc ma = sh_mean[k][tid], m2a = sh_m2[k][tid], nk = na;
        chan_merge(ma, m2a, nk, sh_mean[k][o], sh_m2[k][o], sh_cnt[o]);
        sh_mean[k][tid] = ma;
        sh_m2[k][tid] = m2a;
      }
      sh_cnt[tid] = na + sh_cnt[o];
    }
    __syncthreads();
  }
  if (ty == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = c0 + k;
      if (c < g.C) {
        p_mean[s * g.C + c] = sh_mean[k][tid];
        p_m2[s * g.C + c] = sh_m2[k][tid];
        p_cnt[s * g.C + c] = sh_cnt[tid];
      }
    }
  }
}

template <typename Acc>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_stats_finalize_kernel(const BnGeom g, double eps, const Acc* __restrict__ p_mean, const Acc* __restrict__ p_m2,
                         const Acc* __restrict__ p_cnt, Acc* __restrict__ save_mean, Acc* __restrict__ save_invstd,
                         Acc* __restrict__ batch_var) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * BnConfig::kWarpsPerBlock;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * BnConfig::kWarpsPerBlock + threadIdx.x / 32; c < g.C;
       c += warps) {  // uniform across the warp
    Acc m = Acc(0), m2 = Acc(0), n = Acc(0);
    for (int64_t s = lane; s < g.S; s += 32)
      chan_merge(m, m2, n, p_mean[s * g.C + c], p_m2[s * g.C + c], p_cnt[s * g.C + c]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const Acc mb = __shfl_down_sync(0xffffffffu, m, off);
      const Acc m2b = __shfl_down_sync(0xffffffffu, m2, off);
      const Acc nb = __shfl_down_sync(0xffffffffu, n, off);
      chan_merge(m, m2, n, mb, m2b, nb);
    }
    if (lane == 0) {
      // The exact count, not the merged float one; an empty batch gives NaN statistics (0/0).
      const Acc count = static_cast<Acc>(g.M);
      const Acc mean = g.M > 0 ? m : Acc(NAN);
      const Acc var = g.M > 0 ? max(m2 / count, Acc(0)) : Acc(NAN);
      save_mean[c] = mean;
      batch_var[c] = var;
      save_invstd[c] = rsqrt_exact(var + static_cast<Acc>(eps));
    }
  }
}

// ---- backward sums --------------------------------------------------------------------------------

// dy masked by the ReLU output, as torch's threshold_backward: zero where y <= 0.
template <typename Acc>
__device__ __forceinline__ Acc relu_mask(Acc dy, Acc y) { return y <= Acc(0) ? Acc(0) : dy; }

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_grad_partial_kernel(const BnGeom g, const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                       bool relu, const AccT<T>* __restrict__ mean, AccT<T>* __restrict__ p_sdy,
                       AccT<T>* __restrict__ p_sdyx) {
  using Acc = AccT<T>;
  constexpr int K = kNHWC ? V : 1;
  FC_SHARED(Acc, sh_a, [K][BnConfig::kThreads]);
  FC_SHARED(Acc, sh_b, [K][BnConfig::kThreads]);

  const int64_t s = blockIdx.y;
  Acc sdy[K], sdyx[K], mu[K];
#pragma unroll
  for (int k = 0; k < K; ++k) { sdy[k] = Acc(0); sdyx[k] = Acc(0); mu[k] = Acc(0); }

  int64_t c0;
  if constexpr (kNHWC) {
    c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
    if (c0 < g.C) {
#pragma unroll
      for (int k = 0; k < K; ++k) mu[k] = mean[c0 + k];  // c0 + V <= C: V divides C when V > 1
      walk_nhwc(g, c0, s, [&](int64_t off) {
        Acc gv[V], xv[V], yv[V];
        load_pack<T, V>(dy + off, gv);
        load_pack<T, V>(x + off, xv);
        if (relu) {
          load_pack<T, V>(y + off, yv);
#pragma unroll
          for (int k = 0; k < V; ++k) gv[k] = relu_mask(gv[k], yv[k]);
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
          sdy[k] += gv[k];
          sdyx[k] += gv[k] * (xv[k] - mu[k]);
        }
      });
    }
  } else {
    c0 = blockIdx.x;
    mu[0] = mean[c0];
    walk_nchw<V>(g, c0, s, [&](int64_t off) {
      Acc gv[V], xv[V], yv[V];
      load_pack<T, V>(dy + off, gv);
      load_pack<T, V>(x + off, xv);
      if (relu) {
        load_pack<T, V>(y + off, yv);
#pragma unroll
        for (int j = 0; j < V; ++j) gv[j] = relu_mask(gv[j], yv[j]);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        sdy[0] += gv[j];
        sdyx[0] += gv[j] * (xv[j] - mu[0]);
      }
    });
  }

  const int CT = kNHWC ? blockDim.x : 1;
  const int ty = kNHWC ? threadIdx.y : threadIdx.x;
  const int RY = kNHWC ? blockDim.y : blockDim.x;
  const int tid = ty * CT + (kNHWC ? threadIdx.x : 0);
#pragma unroll
  for (int k = 0; k < K; ++k) { sh_a[k][tid] = sdy[k]; sh_b[k][tid] = sdyx[k]; }
  __syncthreads();
  for (int off = RY / 2; off > 0; off >>= 1) {
    if (ty < off) {
      const int o = tid + off * CT;
#pragma unroll
      for (int k = 0; k < K; ++k) { sh_a[k][tid] += sh_a[k][o]; sh_b[k][tid] += sh_b[k][o]; }
    }
    __syncthreads();
  }
  if (ty == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = c0 + k;
      if (c < g.C) {
        p_sdy[s * g.C + c] = sh_a[k][tid];
        p_sdyx[s * g.C + c] = sh_b[k][tid];
      }
    }
  }
}

// dbias = Σdy', dweight = Σdy'·(x − mean)·invstd; coef_mdy = Σdy'/M and coef_k = Σdy'·(x − mean)/M·invstd²
// feed the training dx: dx = (dy' − coef_mdy − (x − mean)·coef_k)·invstd·w.
template <typename Acc>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_grad_finalize_kernel(const BnGeom g, const Acc* __restrict__ p_sdy, const Acc* __restrict__ p_sdyx,
                        const Acc* __restrict__ invstd, Acc* __restrict__ dweight, Acc* __restrict__ dbias,
                        Acc* __restrict__ coef_mdy, Acc* __restrict__ coef_k) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * BnConfig::kWarpsPerBlock;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * BnConfig::kWarpsPerBlock + threadIdx.x / 32; c < g.C;
       c += warps) {
    Acc a = Acc(0), b = Acc(0);
    for (int64_t s = lane; s < g.S; s += 32) {
      a += p_sdy[s * g.C + c];
      b += p_sdyx[s * g.C + c];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
    if (lane == 0) {
      const Acc is = invstd[c];
      if (dbias) dbias[c] = a;
      if (dweight) dweight[c] = b * is;
      const Acc inv_m = g.M > 0 ? Acc(1) / static_cast<Acc>(g.M) : Acc(0);
      coef_mdy[c] = a * inv_m;
      coef_k[c] = b * inv_m * is * is;
    }
  }
}

// ---- elementwise ----------------------------------------------------------------------------------

// Per-channel affine of the forward: y = (x − mean)·scale + shift.
template <typename Acc>
struct FwdParams {
  const Acc* mean;
  const Acc* istd_or_var;  // save_invstd (train) or running_var (eval)
  bool is_var;
  Acc eps;
  const Acc* weight;  // nullable = 1
  const Acc* bias;    // nullable = 0
  bool relu;

  __device__ __forceinline__ void at(int64_t c, Acc& m, Acc& scale, Acc& shift) const {
    m = mean[c];
    const Acc v = istd_or_var[c];
    const Acc is = is_var ? rsqrt_exact(v + eps) : v;
    scale = is * (weight ? weight[c] : Acc(1));
    shift = bias ? bias[c] : Acc(0);
  }
};

template <typename Acc>
__device__ __forceinline__ Acc fwd_one(Acc x, Acc m, Acc scale, Acc shift, bool relu) {
  const Acc v = (x - m) * scale + shift;
  return (relu && v < Acc(0)) ? Acc(0) : v;  // NaN passes through, as torch.relu
}

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_fwd_apply_kernel(const BnGeom g, const T* __restrict__ x, T* __restrict__ y, const FwdParams<AccT<T>> prm) {
  using Acc = AccT<T>;
  if constexpr (kNHWC) {
    const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
    if (c0 >= g.C) return;  // no barriers below
    Acc m[V], sc[V], sf[V];
#pragma unroll
    for (int k = 0; k < V; ++k) prm.at(c0 + k, m[k], sc[k], sf[k]);
    const int64_t rows = g.N * g.HW;
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
         r += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const int64_t off = r * g.C + c0;
      Acc v[V];
      load_pack<T, V>(x + off, v);
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] = fwd_one(v[k], m[k], sc[k], sf[k], prm.relu);
      store_pack<T, V>(y + off, v);
    }
  } else {
    const int64_t chunks = g.N * g.C * g.hwc;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < chunks;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t plane = div_exact(j, g.hwc, g.inv_hwc);  // n·C + c
      const int64_t c = plane - div_exact(plane, g.C, g.inv_c) * g.C;
      const int64_t off = plane * g.HW + (j - plane * g.hwc) * V;
      Acc m, sc, sf;
      prm.at(c, m, sc, sf);
      Acc v[V];
      load_pack<T, V>(x + off, v);
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] = fwd_one(v[k], m, sc, sf, prm.relu);
      store_pack<T, V>(y + off, v);
    }
  }
}

template <typename Acc>
struct BwdParams {
  const Acc* mean;
  const Acc* invstd;
  const Acc* weight;    // nullable = 1
  const Acc* coef_mdy;  // train only
  const Acc* coef_k;    // train only
  bool train, relu;

  // dx = (dy' − mdy − (x − m)·k)·scale; eval has mdy = k = 0.
  __device__ __forceinline__ void at(int64_t c, Acc& m, Acc& scale, Acc& mdy, Acc& k) const {
    m = mean[c];
    scale = invstd[c] * (weight ? weight[c] : Acc(1));
    mdy = train ? coef_mdy[c] : Acc(0);
    k = train ? coef_k[c] : Acc(0);
  }
};

template <typename Acc>
__device__ __forceinline__ Acc bwd_one(Acc dy, Acc x, Acc y, bool relu, Acc m, Acc scale, Acc mdy, Acc k) {
  const Acc d = relu ? relu_mask(dy, y) : dy;
  return (d - mdy - (x - m) * k) * scale;
}

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_bwd_apply_kernel(const BnGeom g, const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                    T* __restrict__ dx, const BwdParams<AccT<T>> prm) {
  using Acc = AccT<T>;
  if constexpr (kNHWC) {
    const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
    if (c0 >= g.C) return;
    Acc m[V], sc[V], mdy[V], kk[V];
#pragma unroll
    for (int k = 0; k < V; ++k) prm.at(c0 + k, m[k], sc[k], mdy[k], kk[k]);
    const int64_t rows = g.N * g.HW;
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
         r += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const int64_t off = r * g.C + c0;
      Acc gv[V], xv[V], yv[V];
      load_pack<T, V>(dy + off, gv);
      load_pack<T, V>(x + off, xv);
      if (prm.relu) {
        load_pack<T, V>(y + off, yv);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) yv[k] = Acc(0);
      }
#pragma unroll
      for (int k = 0; k < V; ++k) gv[k] = bwd_one(gv[k], xv[k], yv[k], prm.relu, m[k], sc[k], mdy[k], kk[k]);
      store_pack<T, V>(dx + off, gv);
    }
  } else {
    const int64_t chunks = g.N * g.C * g.hwc;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < chunks;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t plane = div_exact(j, g.hwc, g.inv_hwc);
      const int64_t c = plane - div_exact(plane, g.C, g.inv_c) * g.C;
      const int64_t off = plane * g.HW + (j - plane * g.hwc) * V;
      Acc m, sc, mdy, kk;
      prm.at(c, m, sc, mdy, kk);
      Acc gv[V], xv[V], yv[V];
      load_pack<T, V>(dy + off, gv);
      load_pack<T, V>(x + off, xv);
      if (prm.relu) {
        load_pack<T, V>(y + off, yv);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) yv[k] = Acc(0);
      }
#pragma unroll
      for (int k = 0; k < V; ++k) gv[k] = bwd_one(gv[k], xv[k], yv[k], prm.relu, m, sc, mdy, kk);
      store_pack<T, V>(dx + off, gv);
    }
  }
}

template <typename A>
__global__ void __launch_bounds__(BnConfig::kThreads, BnConfig::kMinBlocks)
bn_update_running_kernel(int64_t C, const A* __restrict__ save_mean, const A* __restrict__ batch_var, A unbias,
                         A factor, A* __restrict__ running_mean, A* __restrict__ running_var) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    running_mean[c] = (A(1) - factor) * running_mean[c] + factor * save_mean[c];
    running_var[c] = (A(1) - factor) * running_var[c] + factor * batch_var[c] * unbias;
  }
}

// ---- host-side planning ---------------------------------------------------------------------------

enum class BnLayout { kNCHW, kNHWC, kInvalid };

// Strides of size-1 dimensions never affect an address, so they match anything.
bool strides_are(const BatchNormShape& s, const Strides4& st, int64_t en, int64_t ec, int64_t eh, int64_t ew) {
  return (s.N <= 1 || st.n == en) && (s.C <= 1 || st.c == ec) && (s.H <= 1 || st.h == eh) &&
         (s.W <= 1 || st.w == ew);
}

BnLayout bn_layout(const BatchNormShape& s) {
  if (s.N < 0 || s.C < 0 || s.H < 0 || s.W < 0) return BnLayout::kInvalid;
  const int64_t HW = s.H * s.W;
  const bool nchw = strides_are(s, s.x, s.C * HW, HW, s.W, 1) && strides_are(s, s.y, s.C * HW, HW, s.W, 1);
  const bool nhwc = strides_are(s, s.x, HW * s.C, 1, s.W * s.C, s.C) &&
                    strides_are(s, s.y, HW * s.C, 1, s.W * s.C, s.C);
  // When both hold the bytes are identical; 1x1 planes read better as rows of channels.
  if (nhwc && (!nchw || HW == 1)) return BnLayout::kNHWC;
  if (nchw) return BnLayout::kNCHW;
  return BnLayout::kInvalid;
}

// Splits per channel: a function of the shape only, so the partition (and the result) is the same
// on every run and every GPU.
int64_t bn_splits(const BatchNormShape& s, BnLayout layout) {
  const int64_t M = s.count();
  const int64_t channel_blocks = layout == BnLayout::kNHWC ? max64(ceil_div(s.C, 256), 1) : max64(s.C, 1);
  const int64_t want = min64(max64((s.C * M) / BnConfig::kElemsPerBlock, 1), BnConfig::kTargetBlocks);
  int64_t S = ceil_div(want, channel_blocks);
  S = min64(S, max64(M / BnConfig::kMinSplitElems, 1));
  return min64(max64(S, 1), BnConfig::kMaxSplits);
}

size_t acc_bytes(int elem_bytes) { return elem_bytes == 8 ? sizeof(double) : sizeof(float); }

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

struct BnPlan {
  BnLayout layout = BnLayout::kInvalid;
  int V = 1;
  BnGeom g{};
  dim3 red_grid, red_block;  // reduction kernels
  dim3 ew_grid, ew_block;    // elementwise kernels
};

// ptrs_aligned: every tensor pointer allows V-wide (16-byte) access.
BnPlan make_plan(const BatchNormShape& s, int vec_width, bool ptrs_aligned) {
  BnPlan pl;
  pl.layout = bn_layout(s);
  if (pl.layout == BnLayout::kInvalid) return pl;
  const bool nhwc = pl.layout == BnLayout::kNHWC;
  const int64_t HW = s.H * s.W;
  const bool divides = nhwc ? (s.C % vec_width == 0) : (HW % vec_width == 0);
  pl.V = (vec_width > 1 && divides && ptrs_aligned) ? vec_width : 1;
  BnGeom& g = pl.g;
  g.N = s.N; g.C = s.C; g.HW = HW; g.M = s.count();
  g.S = bn_splits(s, pl.layout);
  g.hwc = HW / pl.V;  // 0 for an empty plane: every walk below is then empty
  g.inv_hwc = 1.0 / static_cast<double>(max64(g.hwc, 1));
  g.inv_c = 1.0 / static_cast<double>(max64(s.C, 1));
  g.step_n = BnConfig::kThreads / max64(g.hwc, 1);
  g.step_r = BnConfig::kThreads % max64(g.hwc, 1);
  if (nhwc) {
    const int64_t cv = ceil_div(s.C, pl.V);
    int ct = 1;
    while (ct < BnConfig::kMaxChannelThreads && ct < cv) ct *= 2;
    const int ry = BnConfig::kThreads / ct;
    const int64_t cblocks = ceil_div(cv, ct);
    g.split_len = ceil_div(s.N * HW, g.S);
    pl.red_block = dim3(ct, ry);
    pl.red_grid = dim3(static_cast<unsigned>(cblocks), static_cast<unsigned>(g.S));
    const int64_t rblocks =
        min64(max64(ceil_div(s.N * HW, ry), 1), min64(65535, max64(BnConfig::kTargetBlocks / cblocks, 1)));
    pl.ew_block = dim3(ct, ry);
    pl.ew_grid = dim3(static_cast<unsigned>(cblocks), static_cast<unsigned>(rblocks));
  } else {
    g.split_len = ceil_div(s.N * g.hwc, g.S);
    pl.red_block = dim3(BnConfig::kThreads, 1);
    pl.red_grid = dim3(static_cast<unsigned>(s.C), static_cast<unsigned>(g.S));
    pl.ew_block = dim3(BnConfig::kThreads, 1);
    pl.ew_grid = dim3(grid_for(s.N * s.C * g.hwc, BnConfig::kThreads));
  }
  return pl;
}

unsigned finalize_blocks(int64_t C) { return grid_for(C, BnConfig::kWarpsPerBlock); }

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned_to(p, 16)) return false;
  return true;
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------------

size_t batch_norm_workspace_bytes(const BatchNormShape& s, int elem_bytes) {
  if (s.C <= 0) return 0;
  BnLayout layout = bn_layout(s);
  if (layout == BnLayout::kInvalid) layout = BnLayout::kNCHW;
  const int64_t S = bn_splits(s, layout);
  // 3·C·S statistics partials (the backward reuses 2·C·S of them) + 2·C backward coefficients.
  return static_cast<size_t>(3 * s.C * S + 2 * s.C) * acc_bytes(elem_bytes);
}

template <typename T>
cudaError_t batch_norm_train_fwd(const BatchNormShape& s, const T* x, const AccT<T>* weight, const AccT<T>* bias,
                                 double eps, bool relu, T* y, AccT<T>* save_mean, AccT<T>* save_invstd,
                                 AccT<T>* batch_var, void* ws, size_t ws_bytes, cudaStream_t stream) {
  using Acc = AccT<T>;
  if (s.C == 0) return cudaSuccess;
  const BnPlan pl = make_plan(s, kVecWidth<T>, all_aligned({x, y}));
  if (pl.layout == BnLayout::kInvalid || s.C > INT32_MAX) return cudaErrorInvalidValue;
  if (ws_bytes < batch_norm_workspace_bytes(s, sizeof(T)) || !ws || !aligned_to(ws, sizeof(Acc)))
    return cudaErrorInvalidValue;
  Acc* p_mean = static_cast<Acc*>(ws);
  Acc* p_m2 = p_mean + pl.g.C * pl.g.S;
  Acc* p_cnt = p_m2 + pl.g.C * pl.g.S;
  constexpr int VW = kVecWidth<T>;
  const bool nhwc = pl.layout == BnLayout::kNHWC;
  if (nhwc && pl.V == VW) FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_stats_partial_kernel<T, VW, true>)(pl.g, x, p_mean, p_m2, p_cnt);
  else if (nhwc) FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_stats_partial_kernel<T, 1, true>)(pl.g, x, p_mean, p_m2, p_cnt);
  else if (pl.V == VW) FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_stats_partial_kernel<T, VW, false>)(pl.g, x, p_mean, p_m2, p_cnt);
  else FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_stats_partial_kernel<T, 1, false>)(pl.g, x, p_mean, p_m2, p_cnt);
  cudaError_t err = launch_status();
  if (err != cudaSuccess) return err;
  FC_LAUNCH(finalize_blocks(s.C), BnConfig::kThreads, 0, stream, bn_stats_finalize_kernel<Acc>)(
      pl.g, eps, p_mean, p_m2, p_cnt, save_mean, save_invstd, batch_var);
  err = launch_status();
  if (err != cudaSuccess || s.count() == 0) return err;
  FwdParams<Acc> prm{save_mean, save_invstd, false, Acc(0), weight, bias, relu};
  if (nhwc && pl.V == VW) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, VW, true>)(pl.g, x, y, prm);
  else if (nhwc) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, 1, true>)(pl.g, x, y, prm);
  else if (pl.V == VW) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, VW, false>)(pl.g, x, y, prm);
  else FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, 1, false>)(pl.g, x, y, prm);
  return launch_status();
}

template <typename T>
cudaError_t batch_norm_eval_fwd(const BatchNormShape& s, const T* x, const AccT<T>* weight, const AccT<T>* bias,
                                const AccT<T>* running_mean, const AccT<T>* running_var, double eps, bool relu,
                                T* y, cudaStream_t stream) {
  using Acc = AccT<T>;
  if (s.C == 0 || s.count() == 0) return cudaSuccess;
  const BnPlan pl = make_plan(s, kVecWidth<T>, all_aligned({x, y}));
  if (pl.layout == BnLayout::kInvalid || s.C > INT32_MAX) return cudaErrorInvalidValue;
  FwdParams<Acc> prm{running_mean, running_var, true, static_cast<Acc>(eps), weight, bias, relu};
  constexpr int VW = kVecWidth<T>;
  const bool nhwc = pl.layout == BnLayout::kNHWC;
  if (nhwc && pl.V == VW) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, VW, true>)(pl.g, x, y, prm);
  else if (nhwc) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, 1, true>)(pl.g, x, y, prm);
  else if (pl.V == VW) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, VW, false>)(pl.g, x, y, prm);
  else FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_fwd_apply_kernel<T, 1, false>)(pl.g, x, y, prm);
  return launch_status();
}

template <typename T>
cudaError_t batch_norm_bwd(const BatchNormShape& s, const T* dy, const T* x, const T* y, const AccT<T>* weight,
                           const AccT<T>* mean, const AccT<T>* invstd, bool train, bool relu, T* dx,
                           AccT<T>* dweight, AccT<T>* dbias, void* ws, size_t ws_bytes, cudaStream_t stream) {
  using Acc = AccT<T>;
  if (s.C == 0 || (!dx && !dweight && !dbias)) return cudaSuccess;
  if (relu && !y) return cudaErrorInvalidValue;
  const BnPlan pl = make_plan(s, kVecWidth<T>, all_aligned({dy, x, y, dx}));
  if (pl.layout == BnLayout::kInvalid || s.C > INT32_MAX) return cudaErrorInvalidValue;
  constexpr int VW = kVecWidth<T>;
  const bool nhwc = pl.layout == BnLayout::kNHWC;
  const bool need_sums = dweight || dbias || (dx && train);
  Acc* coef_mdy = nullptr;
  Acc* coef_k = nullptr;
  if (need_sums) {
    if (ws_bytes < batch_norm_workspace_bytes(s, sizeof(T)) || !ws || !aligned_to(ws, sizeof(Acc)))
      return cudaErrorInvalidValue;
    Acc* p_sdy = static_cast<Acc*>(ws);
    Acc* p_sdyx = p_sdy + pl.g.C * pl.g.S;
    coef_mdy = p_sdyx + 2 * pl.g.C * pl.g.S;  // after the 3·C·S partial region
    coef_k = coef_mdy + pl.g.C;
    if (nhwc && pl.V == VW) FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_grad_partial_kernel<T, VW, true>)(pl.g, dy, x, y, relu, mean, p_sdy, p_sdyx);
    else if (nhwc) FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_grad_partial_kernel<T, 1, true>)(pl.g, dy, x, y, relu, mean, p_sdy, p_sdyx);
    else if (pl.V == VW) FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_grad_partial_kernel<T, VW, false>)(pl.g, dy, x, y, relu, mean, p_sdy, p_sdyx);
    else FC_LAUNCH(pl.red_grid, pl.red_block, 0, stream, bn_grad_partial_kernel<T, 1, false>)(pl.g, dy, x, y, relu, mean, p_sdy, p_sdyx);
    cudaError_t err = launch_status();
    if (err != cudaSuccess) return err;
    FC_LAUNCH(finalize_blocks(s.C), BnConfig::kThreads, 0, stream, bn_grad_finalize_kernel<Acc>)(
        pl.g, p_sdy, p_sdyx, invstd, dweight, dbias, coef_mdy, coef_k);
    err = launch_status();
    if (err != cudaSuccess) return err;
  }
  if (!dx || s.count() == 0) return cudaSuccess;
  BwdParams<Acc> prm{mean, invstd, weight, coef_mdy, coef_k, train, relu};
  if (nhwc && pl.V == VW) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_bwd_apply_kernel<T, VW, true>)(pl.g, dy, x, y, dx, prm);
  else if (nhwc) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_bwd_apply_kernel<T, 1, true>)(pl.g, dy, x, y, dx, prm);
  else if (pl.V == VW) FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_bwd_apply_kernel<T, VW, false>)(pl.g, dy, x, y, dx, prm);
  else FC_LAUNCH(pl.ew_grid, pl.ew_block, 0, stream, bn_bwd_apply_kernel<T, 1, false>)(pl.g, dy, x, y, dx, prm);
  return launch_status();
}

template <typename A>
cudaError_t batch_norm_update_running_stats(int64_t C, const A* save_mean, const A* batch_var, int64_t count,
                                            double factor, A* running_mean, A* running_var, cudaStream_t stream) {
  if (C <= 0) return cudaSuccess;
  // torch's unbiased correction; count == 1 gives inf, as there.
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  FC_LAUNCH(grid_for(C, BnConfig::kThreads), BnConfig::kThreads, 0, stream, bn_update_running_kernel<A>)(
      C, save_mean, batch_var, static_cast<A>(unbias), static_cast<A>(factor), running_mean, running_var);
  return launch_status();
}

#define FASTCONV_INSTANTIATE_BN(T)                                                                           \
  template cudaError_t batch_norm_train_fwd<T>(const BatchNormShape&, const T*, const AccT<T>*, const AccT<T>*, \
                                               double, bool, T*, AccT<T>*, AccT<T>*, AccT<T>*, void*, size_t,   \
                                               cudaStream_t);                                                  \
  template cudaError_t batch_norm_eval_fwd<T>(const BatchNormShape&, const T*, const AccT<T>*, const AccT<T>*,  \
                                              const AccT<T>*, const AccT<T>*, double, bool, T*, cudaStream_t); \
  template cudaError_t batch_norm_bwd<T>(const BatchNormShape&, const T*, const T*, const T*, const AccT<T>*,   \
                                         const AccT<T>*, const AccT<T>*, bool, bool, T*, AccT<T>*, AccT<T>*,    \
                                         void*, size_t, cudaStream_t);

FASTCONV_INSTANTIATE_BN(float)
FASTCONV_INSTANTIATE_BN(double)
FASTCONV_INSTANTIATE_BN(__half)
FASTCONV_INSTANTIATE_BN(__nv_bfloat16)
#undef FASTCONV_INSTANTIATE_BN

template cudaError_t batch_norm_update_running_stats<float>(int64_t, const float*, const float*, int64_t, double,
                                                            float*, float*, cudaStream_t);
template cudaError_t batch_norm_update_running_stats<double>(int64_t, const double*, const double*, int64_t,
                                                             double, double*, double*, cudaStream_t);

}  // namespace cuda
}  // namespace fastconv
