// pool2d.cu — max, average and adaptive-average 2-D pooling, forward and backward (PyTorch semantics).
//
// Kernels (T = float, __half, __nv_bfloat16, double; sums and comparisons in AccT<T>):
//   max_pool2d_fwd_kernel    one thread per output element (NCHW) or per V-channel output vector
//                            (NHWC); writes the max and PyTorch's flat index h·W + w.
//   max_pool2d_bwd_kernel    gather form: one thread per input element / V-channel vector, summing
//                            dy of every window whose saved index names it. No atomics.
//   avg_pool2d_fwd_kernel    one thread per output (vector); torch's window / divisor rule.
//   avg_pool2d_bwd_kernel    gather form, one thread per input (vector).
//   adaptive_avg_pool2d_fwd_kernel / _bwd_kernel   same mappings, adaptive windows.
//   global_avg_nchw_kernel   1x1 adaptive output, NCHW: one warp per (n, c) plane, shuffle reduction.
//   global_avg_nhwc_kernel   1x1 adaptive output, NHWC: a 32 x 8 block covers 32 channel vectors of
//                            one image; the 8 rows of threads split the H·W positions, then a fixed-
//                            order shared-memory sum.
//
// Thread mapping. NCHW: the flat work index runs over (n, c, p, q) with q innermost, so neighbouring
// threads touch neighbouring columns. NHWC (both tensors have unit channel stride): the flat index
// runs over (n, p, q, channel group) with the channel group innermost, so a warp reads contiguous
// channels; when C and every stride are multiples of V = 16 / sizeof(T) and the pointers are 16-byte
// aligned, each thread moves V channels with one 16-byte load (a compile-time specialisation picked
// at launch; otherwise V = 1). Every address is built from all four strides, so the layout choice
// only affects speed, never the answer. The image index n comes from a grid-stride loop over
// blockIdx.y; inside one image all index math (decomposition, window ranges) is 32-bit, which the
// launchers check fits, because a 64-bit division is a called subroutine that costs registers and
// spills. Memory offsets are 64-bit products of those coordinates and the int64 strides.
//
// Build: nvcc -O3 -std=c++17 -Iinclude -c cuda/pool2d.cu (see csrc/Makefile).

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

struct PoolConfig {
  static constexpr int kThreads = 256;          // thread-per-item kernels
  // Blocks per SM promised to ptxas: caps registers at 64 so it never trades spills for occupancy.
  static constexpr int kMinBlocks = 4;
  static constexpr int kGlobalLanes = 32;       // global-average NHWC: channel vectors per block
  static constexpr int kGlobalRows = 8;         // global-average NHWC: row groups per block
  static constexpr int kWarpsPerBlock = kThreads / 32;
  static constexpr int64_t kMaxGridY = 65535;   // gridDim.y limit; the image loop strides past it
  static constexpr int64_t kMaxGridX = 65535LL * 8;
};
static_assert(PoolConfig::kGlobalLanes * PoolConfig::kGlobalRows == PoolConfig::kThreads,
              "the global-average NHWC block must have kThreads threads.");
static_assert(PoolConfig::kThreads % 32 == 0, "blocks are whole warps.");


// 32-bit floor / ceil division for b > 0 and any sign of a.
__device__ __forceinline__ int floor_div32(int a, int b) {
  const int q = a / b;
  return (q * b > a) ? q - 1 : q;
}
__device__ __forceinline__ int ceil_div32(int a, int b) { return -floor_div32(-a, b); }
__device__ __forceinline__ int adaptive_start32(int o, int out, int in) { return (o * in) / out; }
__device__ __forceinline__ int adaptive_end32(int o, int out, int in) { return ((o + 1) * in + out - 1) / out; }

// Pool2dShape with the in-image sizes as 32-bit ints (the launchers check they fit).
struct Geom {
  int C, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Coordinates of in-image work item i over a plane of A x B positions with CG channel groups.
// NHWC: order (a, b, channel group), channel innermost; NCHW: order (c, a, b), column innermost.
template <bool kNHWC>
__device__ __forceinline__ void split_index(unsigned i, unsigned CG, unsigned A, unsigned B, int& c, int& a,
                                            int& b) {
  if constexpr (kNHWC) {
    c = static_cast<int>(i % CG); i /= CG;
    b = static_cast<int>(i % B);
    a = static_cast<int>(i / B);
  } else {
    b = static_cast<int>(i % B); i /= B;
    a = static_cast<int>(i % A);
    c = static_cast<int>(i / A);
  }
  (void)A;
}

// Grid-stride loops: images over blockIdx.y, in-image items over blockIdx.x.
#define FC_POOL_LOOP(per_image)                                                                      \
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y)                                                \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (per_image); i += gridDim.x * blockDim.x)

// ---- max pooling ----------------------------------------------------------------------------------

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
max_pool2d_fwd_kernel(const Geom g, int64_t N, unsigned per_image, Strides4 sx, Strides4 sy,
                      const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ idx) {
  using Acc = AccT<T>;
  const unsigned CG = kNHWC ? g.C / V : g.C;
  FC_POOL_LOOP(per_image) {
    int c, p, q;
    split_index<kNHWC>(i, CG, g.P, g.Q, c, p, q);
    c *= V;
    const int hstart = p * g.sh - g.ph;
    const int wstart = q * g.sw - g.pw;
    // torch starts the index at the first in-bounds tap, so an all -inf window still names one.
    const int h0 = hstart < 0 ? hstart + ceil_div32(-hstart, g.dh) * g.dh : hstart;
    const int w0 = wstart < 0 ? wstart + ceil_div32(-wstart, g.dw) * g.dw : wstart;
    Acc best[V];
    int64_t best_i[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      best[j] = -static_cast<Acc>(INFINITY);
      best_i[j] = static_cast<int64_t>(h0) * g.W + w0;
    }
    const T* xp = x + n * sx.n + c * sx.c;
    for (int r = 0; r < g.kh; ++r) {
      const int h = hstart + r * g.dh;
      if (h < 0 || h >= g.H) continue;
      for (int t = 0; t < g.kw; ++t) {
        const int w = wstart + t * g.dw;
        if (w < 0 || w >= g.W) continue;
        Acc v[V];
        load_pack<T, V>(xp + h * sx.h + w * sx.w, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          // torch's rule: strictly greater wins (the first max is kept) and any NaN replaces the max.
          if (v[j] > best[j] || isnan(v[j])) {
            best[j] = v[j];
            best_i[j] = static_cast<int64_t>(h) * g.W + w;
          }
        }
      }
    }
    const int64_t yo = n * sy.n + c * sy.c + p * sy.h + q * sy.w;
    store_pack<T, V>(y + yo, best);
#pragma unroll
    for (int j = 0; j < V; ++j) idx[yo + j * sy.c] = best_i[j];
  }
}

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
max_pool2d_bwd_kernel(const Geom g, int64_t N, unsigned per_image, Strides4 sx, Strides4 sy,
                      const T* __restrict__ dy, const int64_t* __restrict__ idx, T* __restrict__ dx) {
  using Acc = AccT<T>;
  const unsigned CG = kNHWC ? g.C / V : g.C;
  const int ext_h = (g.kh - 1) * g.dh;  // window extent minus one
  const int ext_w = (g.kw - 1) * g.dw;
  FC_POOL_LOOP(per_image) {
    int c, h, w;
    split_index<kNHWC>(i, CG, g.H, g.W, c, h, w);
    c *= V;
    // Windows p with p·sh − pad ≤ h ≤ p·sh − pad + ext: a superset of those whose argmax can be h;
    // the saved-index comparison decides.
    const int p0 = max(0, ceil_div32(h + g.ph - ext_h, g.sh));
    const int p1 = min(g.P - 1, floor_div32(h + g.ph, g.sh));
    const int q0 = max(0, ceil_div32(w + g.pw - ext_w, g.sw));
    const int q1 = min(g.Q - 1, floor_div32(w + g.pw, g.sw));
    const int64_t flat = static_cast<int64_t>(h) * g.W + w;
    Acc acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = Acc(0);
    const int64_t ybase = n * sy.n + c * sy.c;
    for (int p = p0; p <= p1; ++p) {
      for (int q = q0; q <= q1; ++q) {
        const int64_t yo = ybase + p * sy.h + q * sy.w;
        Acc gv[V];
        load_pack<T, V>(dy + yo, gv);
#pragma unroll
        for (int j = 0; j < V; ++j)
          if (idx[yo + j * sy.c] == flat) acc[j] += gv[j];
      }
    }
    store_pack<T, V>(dx + n * sx.n + c * sx.c + h * sx.h + w * sx.w, acc);
  }
}

// ---- average pooling ------------------------------------------------------------------------------

// torch's avg-pool window for output (p, q): the divisor is decided before clipping to the input.
struct AvgWindow {
  int h0, h1, w0, w1;  // clipped to the input, half-open
  int divisor;         // 0 when the clipped window is empty
};

__device__ __forceinline__ AvgWindow avg_window(const Geom& g, int p, int q, bool count_include_pad,
                                                int divisor_override) {
  AvgWindow wd;
  int h0 = p * g.sh - g.ph, w0 = q * g.sw - g.pw;
  int h1 = min(h0 + g.kh, g.H + g.ph), w1 = min(w0 + g.kw, g.W + g.pw);
  const int pool_size = (h1 - h0) * (w1 - w0);
  h0 = max(h0, 0); w0 = max(w0, 0);
  h1 = min(h1, g.H); w1 = min(w1, g.W);
  wd.h0 = h0; wd.h1 = h1; wd.w0 = w0; wd.w1 = w1;
  if (h0 >= h1 || w0 >= w1) {
    wd.divisor = 0;
  } else if (divisor_override > 0) {
    wd.divisor = divisor_override;
  } else {
    wd.divisor = count_include_pad ? pool_size : (h1 - h0) * (w1 - w0);
  }
  return wd;
}

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
avg_pool2d_fwd_kernel(const Geom g, int64_t N, unsigned per_image, Strides4 sx, Strides4 sy,
                      bool count_include_pad, int divisor_override, const T* __restrict__ x, T* __restrict__ y) {
  using Acc = AccT<T>;
  const unsigned CG = kNHWC ? g.C / V : g.C;
  FC_POOL_LOOP(per_image) {
    int c, p, q;
    split_index<kNHWC>(i, CG, g.P, g.Q, c, p, q);
    c *= V;
    const AvgWindow wd = avg_window(g, p, q, count_include_pad, divisor_override);
    Acc sum[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = Acc(0);
    const T* xp = x + n * sx.n + c * sx.c;
    for (int h = wd.h0; h < wd.h1; ++h) {
      for (int w = wd.w0; w < wd.w1; ++w) {
        Acc v[V];
        load_pack<T, V>(xp + h * sx.h + w * sx.w, v);
#pragma unroll
        for (int j = 0; j < V; ++j) sum[j] += v[j];
      }
    }
    // An empty window (possible only with ceil_mode) yields 0, as in torch.
    const Acc div = static_cast<Acc>(wd.divisor > 0 ? wd.divisor : 1);
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = wd.divisor > 0 ? sum[j] / div : Acc(0);
    store_pack<T, V>(y + n * sy.n + c * sy.c + p * sy.h + q * sy.w, sum);
  }
}

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
avg_pool2d_bwd_kernel(const Geom g, int64_t N, unsigned per_image, Strides4 sx, Strides4 sy,
                      bool count_include_pad, int divisor_override, const T* __restrict__ dy, T* __restrict__ dx) {
  using Acc = AccT<T>;
  const unsigned CG = kNHWC ? g.C / V : g.C;
  FC_POOL_LOOP(per_image) {
    int c, h, w;
    split_index<kNHWC>(i, CG, g.H, g.W, c, h, w);
    c *= V;
    // Windows p with p·sh − pad ≤ h < p·sh − pad + kh (a superset; containment is checked below).
    const int p0 = max(0, ceil_div32(h + g.ph - g.kh + 1, g.sh));
    const int p1 = min(g.P - 1, floor_div32(h + g.ph, g.sh));
    const int q0 = max(0, ceil_div32(w + g.pw - g.kw + 1, g.sw));
    const int q1 = min(g.Q - 1, floor_div32(w + g.pw, g.sw));
    Acc acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = Acc(0);
    const int64_t ybase = n * sy.n + c * sy.c;
    for (int p = p0; p <= p1; ++p) {
      for (int q = q0; q <= q1; ++q) {
        const AvgWindow wd = avg_window(g, p, q, count_include_pad, divisor_override);
        if (wd.divisor == 0 || h < wd.h0 || h >= wd.h1 || w < wd.w0 || w >= wd.w1) continue;
        const Acc div = static_cast<Acc>(wd.divisor);
        Acc gv[V];
        load_pack<T, V>(dy + ybase + p * sy.h + q * sy.w, gv);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += gv[j] / div;
      }
    }
    store_pack<T, V>(dx + n * sx.n + c * sx.c + h * sx.h + w * sx.w, acc);
  }
}

// ---- adaptive average pooling ---------------------------------------------------------------------

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
adaptive_avg_pool2d_fwd_kernel(const Geom g, int64_t N, unsigned per_image, Strides4 sx, Strides4 sy,
                               const T* __restrict__ x, T* __restrict__ y) {
  using Acc = AccT<T>;
  const unsigned CG = kNHWC ? g.C / V : g.C;
  FC_POOL_LOOP(per_image) {
    int c, p, q;
    split_index<kNHWC>(i, CG, g.P, g.Q, c, p, q);
    c *= V;
    const int h0 = adaptive_start32(p, g.P, g.H), h1 = adaptive_end32(p, g.P, g.H);
    const int w0 = adaptive_start32(q, g.Q, g.W), w1 = adaptive_end32(q, g.Q, g.W);
    CompensatedSum<Acc> acc[V];
    const T* xp = x + n * sx.n + c * sx.c;
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) {
        Acc v[V];
        load_pack<T, V>(xp + h * sx.h + w * sx.w, v);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j].add(v[j]);
      }
    }
    const int64_t area = static_cast<int64_t>(h1 - h0) * (w1 - w0);
    const Acc div = static_cast<Acc>(area > 0 ? area : 1);
    Acc sum[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = acc[j].value() / div;
    store_pack<T, V>(y + n * sy.n + c * sy.c + p * sy.h + q * sy.w, sum);
  }
}

template <typename T, int V, bool kNHWC>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
adaptive_avg_pool2d_bwd_kernel(const Geom g, int64_t N, unsigned per_image, Strides4 sx, Strides4 sy,
                               const T* __restrict__ dy, T* __restrict__ dx) {
  using Acc = AccT<T>;
  const unsigned CG = kNHWC ? g.C / V : g.C;
  FC_POOL_LOOP(per_image) {
    int c, h, w;
    split_index<kNHWC>(i, CG, g.H, g.W, c, h, w);
    c *= V;
    // Outputs whose window can contain h: [floor(h·P/H), ceil((h+1)·P/H)), a superset of the exact
    // set; containment is re-checked with the forward's own window formula.
    const int p0 = adaptive_start32(h, g.H, g.P), p1 = min(adaptive_end32(h, g.H, g.P), g.P);
    const int q0 = adaptive_start32(w, g.W, g.Q), q1 = min(adaptive_end32(w, g.W, g.Q), g.Q);
    Acc acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = Acc(0);
    const int64_t ybase = n * sy.n + c * sy.c;
    for (int p = p0; p < p1; ++p) {
      const int h0 = adaptive_start32(p, g.P, g.H), h1 = adaptive_end32(p, g.P, g.H);
      if (h < h0 || h >= h1) continue;
      for (int q = q0; q < q1; ++q) {
        const int w0 = adaptive_start32(q, g.Q, g.W), w1 = adaptive_end32(q, g.Q, g.W);
        if (w < w0 || w >= w1) continue;
        const Acc div = static_cast<Acc>(static_cast<int64_t>(h1 - h0) * (w1 - w0));
        Acc gv[V];
        load_pack<T, V>(dy + ybase + p * sy.h + q * sy.w, gv);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += gv[j] / div;
      }
    }
    store_pack<T, V>(dx + n * sx.n + c * sx.c + h * sx.h + w * sx.w, acc);
  }
}

#undef FC_POOL_LOOP

// Global average, NCHW: one warp per (n, c) plane. The plane is one run of H·W elements with
// stride sx.w (checked at launch: sx.h == W·sx.w or H == 1).
template <typename T>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
global_avg_nchw_kernel(const Geom g, int64_t N, Strides4 sx, Strides4 sy, const T* __restrict__ x,
                       T* __restrict__ y) {
  using Acc = AccT<T>;
  const int lane = threadIdx.x % 32;
  const unsigned HW = static_cast<unsigned>(g.H) * g.W;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    for (int c = blockIdx.x * PoolConfig::kWarpsPerBlock + threadIdx.x / 32; c < g.C;
         c += gridDim.x * PoolConfig::kWarpsPerBlock) {  // uniform across the warp
      const T* xp = x + n * sx.n + c * sx.c;
      CompensatedSum<Acc> acc;
      for (unsigned e = lane; e < HW; e += 32) acc.add(to_acc<T>(xp[e * sx.w]));
      Acc sum = acc.value();
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, off);
      if (lane == 0) y[n * sy.n + c * sy.c] = from_acc<T>(sum / static_cast<Acc>(HW));
    }
  }
}

// Global average, NHWC: block (kGlobalLanes, kGlobalRows) handles kGlobalLanes channel vectors of
// one image; thread row ty sums positions ty, ty + kGlobalRows, ...; the rows are then added in a
// fixed order. Positions are one run with stride sx.w (checked at launch).
template <typename T, int V>
__global__ void __launch_bounds__(PoolConfig::kThreads, PoolConfig::kMinBlocks)
global_avg_nhwc_kernel(const Geom g, int64_t N, Strides4 sx, Strides4 sy, const T* __restrict__ x,
                       T* __restrict__ y) {
  using Acc = AccT<T>;
  constexpr int L = PoolConfig::kGlobalLanes, R = PoolConfig::kGlobalRows;
  FC_SHARED(Acc, part, [R][L][V]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int CG = g.C / V;
  const unsigned HW = static_cast<unsigned>(g.H) * g.W;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    for (int cbase = blockIdx.x * L; cbase < CG; cbase += gridDim.x * L) {  // uniform across the block
      const int cg = cbase + tx;
      CompensatedSum<Acc> acc[V];
      if (cg < CG) {
        const T* xp = x + n * sx.n + static_cast<int64_t>(cg) * V;
        for (unsigned e = ty; e < HW; e += R) {
          Acc v[V];
          load_pack<T, V>(xp + e * sx.w, v);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[j].add(v[j]);
        }
      }
      Acc sum[V];
#pragma unroll
      for (int j = 0; j < V; ++j) sum[j] = acc[j].value();
#pragma unroll
      for (int j = 0; j < V; ++j) part[ty][tx][j] = sum[j];
      __syncthreads();
      if (ty == 0 && cg < CG) {
        for (int r = 1; r < R; ++r)
#pragma unroll
          for (int j = 0; j < V; ++j) sum[j] += part[r][tx][j];
        const Acc div = static_cast<Acc>(HW);
#pragma unroll
        for (int j = 0; j < V; ++j) sum[j] = sum[j] / div;
        store_pack<T, V>(y + n * sy.n + static_cast<int64_t>(cg) * V, sum);
      }
      __syncthreads();  // part[] is reused by the next channel tile
    }
  }
}

// ---- launch helpers -------------------------------------------------------------------------------

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Channels-innermost mapping when both tensors have unit channel stride and more than one channel.
bool use_nhwc(const Pool2dShape& s) { return s.C > 1 && s.x.c == 1 && s.y.c == 1; }

// The V-wide path needs every V-channel group to start on a 16-byte boundary in both tensors.
template <typename T>
bool vec_ok(const Pool2dShape& s, const void* a, const void* b) {
  constexpr int64_t V = kVecWidth<T>;
  if (V <= 1 || s.C % V != 0) return false;
  const int64_t st[6] = {s.x.n, s.x.h, s.x.w, s.y.n, s.y.h, s.y.w};
  for (int64_t v : st)
    if (v % V != 0) return false;
  return aligned_to(a, V * sizeof(T)) && aligned_to(b, V * sizeof(T));
}

// In-image index math is 32-bit: every size, window reach and per-image item count must fit with
// headroom (products such as p·stride, h·P for adaptive windows, C·H·W items per image).
constexpr int64_t kFit = (1LL << 31) - 1;
bool geom_ok(const Pool2dShape& s, bool adaptive) {
  if (s.N < 0 || s.C < 0 || s.H < 0 || s.W < 0 || s.P < 0 || s.Q < 0) return false;
  if (s.C * s.H * s.W > kFit || s.C * s.P * s.Q > kFit) return false;
  if (adaptive) return (s.H + 1) * (s.P + 1) <= kFit && (s.W + 1) * (s.Q + 1) <= kFit;
  if (s.kh <= 0 || s.kw <= 0 || s.stride_h <= 0 || s.stride_w <= 0 || s.dil_h <= 0 || s.dil_w <= 0 ||
      s.pad_h < 0 || s.pad_w < 0 || s.kh > kFit || s.kw > kFit || s.kh * s.kw > kFit)
    return false;
  const int64_t reach_h = (s.P + 1) * s.stride_h + (s.kh + 1) * s.dil_h + s.H + 2 * s.pad_h;
  const int64_t reach_w = (s.Q + 1) * s.stride_w + (s.kw + 1) * s.dil_w + s.W + 2 * s.pad_w;
  return reach_h <= kFit && reach_w <= kFit;
}

Geom make_geom(const Pool2dShape& s) {
  Geom g;
  g.C = static_cast<int>(s.C); g.H = static_cast<int>(s.H); g.W = static_cast<int>(s.W);
  g.P = static_cast<int>(s.P); g.Q = static_cast<int>(s.Q);
  g.kh = static_cast<int>(s.kh); g.kw = static_cast<int>(s.kw);
  g.sh = static_cast<int>(s.stride_h); g.sw = static_cast<int>(s.stride_w);
  g.ph = static_cast<int>(s.pad_h); g.pw = static_cast<int>(s.pad_w);
  g.dh = static_cast<int>(s.dil_h); g.dw = static_cast<int>(s.dil_w);
  return g;
}

// Grid for FC_POOL_LOOP: x covers one image's items, y covers images (looping past 65535).
dim3 pool_grid(int64_t N, int64_t per_image, int threads) {
  const int64_t bx = min64(max64(ceil_div(per_image, threads), 1), PoolConfig::kMaxGridX);
  const int64_t by = min64(max64(N, 1), PoolConfig::kMaxGridY);
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by), 1);
}

template <int V> using IntC = std::integral_constant<int, V>;
template <bool B> using BoolC = std::integral_constant<bool, B>;

// Picks the compile-time variant and calls launch(IntC<V>, BoolC<NHWC>, per_image) with per_image
// the number of V-wide work items in one image.
template <typename T, typename F>
cudaError_t dispatch_pool(bool nhwc, bool vec, int64_t per_image_elems, F&& launch) {
  constexpr int VW = kVecWidth<T>;
  if (nhwc && vec) return launch(IntC<VW>{}, BoolC<true>{}, per_image_elems / VW);
  if (nhwc) return launch(IntC<1>{}, BoolC<true>{}, per_image_elems);
  return launch(IntC<1>{}, BoolC<false>{}, per_image_elems);
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------------

template <typename T>
cudaError_t max_pool2d_fwd(const Pool2dShape& s, const T* x, T* y, int64_t* idx, cudaStream_t stream) {
  if (!geom_ok(s, false)) return cudaErrorInvalidValue;
  const int64_t per = s.C * s.P * s.Q;
  if (s.N * per == 0) return cudaSuccess;
  const bool nhwc = use_nhwc(s);
  const bool vec = nhwc && vec_ok<T>(s, x, y);
  const Geom g = make_geom(s);
  return dispatch_pool<T>(nhwc, vec, per, [&](auto v, auto l, int64_t items) {
    FC_LAUNCH(pool_grid(s.N, items, PoolConfig::kThreads), PoolConfig::kThreads, 0, stream, max_pool2d_fwd_kernel<T, decltype(v)::value, decltype(l)::value>)(
            g, s.N, static_cast<unsigned>(items), s.x, s.y, x, y, idx);
    return launch_status();
  });
}

template <typename T>
cudaError_t max_pool2d_bwd(const Pool2dShape& s, const T* dy, const int64_t* idx, T* dx, cudaStream_t stream) {
  if (!geom_ok(s, false)) return cudaErrorInvalidValue;
  const int64_t per = s.C * s.H * s.W;
  if (s.N * per == 0) return cudaSuccess;
  const bool nhwc = use_nhwc(s);
  const bool vec = nhwc && vec_ok<T>(s, dx, dy);
  const Geom g = make_geom(s);
  return dispatch_pool<T>(nhwc, vec, per, [&](auto v, auto l, int64_t items) {
    FC_LAUNCH(pool_grid(s.N, items, PoolConfig::kThreads), PoolConfig::kThreads, 0, stream, max_pool2d_bwd_kernel<T, decltype(v)::value, decltype(l)::value>)(
            g, s.N, static_cast<unsigned>(items), s.x, s.y, dy, idx, dx);
    return launch_status();
  });
}

template <typename T>
cudaError_t avg_pool2d_fwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* x,
                           T* y, cudaStream_t stream) {
  if (!geom_ok(s, false) || divisor_override > kFit) return cudaErrorInvalidValue;
  const int64_t per = s.C * s.P * s.Q;
  if (s.N * per == 0) return cudaSuccess;
  const bool nhwc = use_nhwc(s);
  const bool vec = nhwc && vec_ok<T>(s, x, y);
  const Geom g = make_geom(s);
  const int div = static_cast<int>(divisor_override > 0 ? divisor_override : 0);
  return dispatch_pool<T>(nhwc, vec, per, [&](auto v, auto l, int64_t items) {
    FC_LAUNCH(pool_grid(s.N, items, PoolConfig::kThreads), PoolConfig::kThreads, 0, stream, avg_pool2d_fwd_kernel<T, decltype(v)::value, decltype(l)::value>)(
            g, s.N, static_cast<unsigned>(items), s.x, s.y, count_include_pad, div, x, y);
    return launch_status();
  });
}

template <typename T>
cudaError_t avg_pool2d_bwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* dy,
                           T* dx, cudaStream_t stream) {
  if (!geom_ok(s, false) || divisor_override > kFit) return cudaErrorInvalidValue;
  const int64_t per = s.C * s.H * s.W;
  if (s.N * per == 0) return cudaSuccess;
  const bool nhwc = use_nhwc(s);
  const bool vec = nhwc && vec_ok<T>(s, dx, dy);
  const Geom g = make_geom(s);
  const int div = static_cast<int>(divisor_override > 0 ? divisor_override : 0);
  return dispatch_pool<T>(nhwc, vec, per, [&](auto v, auto l, int64_t items) {
    FC_LAUNCH(pool_grid(s.N, items, PoolConfig::kThreads), PoolConfig::kThreads, 0, stream, avg_pool2d_bwd_kernel<T, decltype(v)::value, decltype(l)::value>)(
            g, s.N, static_cast<unsigned>(items), s.x, s.y, count_include_pad, div, dy, dx);
    return launch_status();
  });
}

template <typename T>
cudaError_t adaptive_avg_pool2d_fwd(const Pool2dShape& s, const T* x, T* y, cudaStream_t stream) {
  if (!geom_ok(s, true)) return cudaErrorInvalidValue;
  const int64_t per = s.C * s.P * s.Q;
  if (s.N * per == 0) return cudaSuccess;
  const bool nhwc = use_nhwc(s);
  const Geom g = make_geom(s);
  // 1x1 output over a plane that is one strided run: the reduction kernels.
  if (s.P == 1 && s.Q == 1 && s.H * s.W > 0 && (s.H == 1 || s.x.h == s.W * s.x.w)) {
    if (nhwc) {
      const dim3 block(PoolConfig::kGlobalLanes, PoolConfig::kGlobalRows);
      if (vec_ok<T>(s, x, y)) {
        constexpr int V = kVecWidth<T>;
        FC_LAUNCH(pool_grid(s.N, s.C / V, PoolConfig::kGlobalLanes), block, 0, stream, global_avg_nhwc_kernel<T, V>)(
            g, s.N, s.x, s.y, x, y);
      } else {
        FC_LAUNCH(pool_grid(s.N, s.C, PoolConfig::kGlobalLanes), block, 0, stream, global_avg_nhwc_kernel<T, 1>)(
            g, s.N, s.x, s.y, x, y);
      }
    } else {
      FC_LAUNCH(pool_grid(s.N, s.C, PoolConfig::kWarpsPerBlock), PoolConfig::kThreads, 0, stream, global_avg_nchw_kernel<T>)(g, s.N, s.x, s.y, x, y);
    }
    return launch_status();
  }
  const bool vec = nhwc && vec_ok<T>(s, x, y);
  return dispatch_pool<T>(nhwc, vec, per, [&](auto v, auto l, int64_t items) {
    FC_LAUNCH(pool_grid(s.N, items, PoolConfig::kThreads), PoolConfig::kThreads, 0, stream, adaptive_avg_pool2d_fwd_kernel<T, decltype(v)::value, decltype(l)::value>)(
            g, s.N, static_cast<unsigned>(items), s.x, s.y, x, y);
    return launch_status();
  });
}

template <typename T>
cudaError_t adaptive_avg_pool2d_bwd(const Pool2dShape& s, const T* dy, T* dx, cudaStream_t stream) {
  if (!geom_ok(s, true)) return cudaErrorInvalidValue;
  const int64_t per = s.C * s.H * s.W;
  if (s.N * per == 0) return cudaSuccess;
  // The window formulas divide by P and Q; an empty output has no windows (torch rejects it anyway).
  if (s.P == 0 || s.Q == 0) return cudaErrorInvalidValue;
  const bool nhwc = use_nhwc(s);
  const bool vec = nhwc && vec_ok<T>(s, dx, dy);
  const Geom g = make_geom(s);
  return dispatch_pool<T>(nhwc, vec, per, [&](auto v, auto l, int64_t items) {
    FC_LAUNCH(pool_grid(s.N, items, PoolConfig::kThreads), PoolConfig::kThreads, 0, stream, adaptive_avg_pool2d_bwd_kernel<T, decltype(v)::value, decltype(l)::value>)(
            g, s.N, static_cast<unsigned>(items), s.x, s.y, dy, dx);
    return launch_status();
  });
}

#define FASTCONV_INSTANTIATE_POOL(T)                                                                         \
  template cudaError_t max_pool2d_fwd<T>(const Pool2dShape&, const T*, T*, int64_t*, cudaStream_t);           \
  template cudaError_t max_pool2d_bwd<T>(const Pool2dShape&, const T*, const int64_t*, T*, cudaStream_t);     \
  template cudaError_t avg_pool2d_fwd<T>(const Pool2dShape&, bool, int64_t, const T*, T*, cudaStream_t);     \
  template cudaError_t avg_pool2d_bwd<T>(const Pool2dShape&, bool, int64_t, const T*, T*, cudaStream_t);     \
  template cudaError_t adaptive_avg_pool2d_fwd<T>(const Pool2dShape&, const T*, T*, cudaStream_t);           \
  template cudaError_t adaptive_avg_pool2d_bwd<T>(const Pool2dShape&, const T*, T*, cudaStream_t);

FASTCONV_INSTANTIATE_POOL(float)
FASTCONV_INSTANTIATE_POOL(double)
FASTCONV_INSTANTIATE_POOL(__half)
FASTCONV_INSTANTIATE_POOL(__nv_bfloat16)
#undef FASTCONV_INSTANTIATE_POOL

}  // namespace cuda
}  // namespace fastconv
