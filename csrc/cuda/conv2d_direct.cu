// conv2d_direct.cu — direct convolution, any configuration, no workspace. Accumulates in AccT<T>.
// Every tensor is indexed through the strides of the shape struct, so NCHW/KCRS and NHWC/KRSC (and
// any other strided layout) work alike.
//
// Kernels:
//   fprop_tiled_kernel      block = one image n, kKPerBlock output channels of one group, a
//                           kTileP x kTileQ output tile; thread = one output pixel x kKPerBlock channels.
//                           Per stage of kCPerStage input channels the block stages the input window
//                           (zero-padded) and the stage's filter taps in shared memory.
//   fprop_depthwise_kernel  groups == C (K = mult·C): block = one image, one input channel, a tile;
//                           the channel's window and its mult filters are staged once; thread = one
//                           output pixel x all mult output channels.
//   fprop_naive_kernel      fallback when the window does not fit shared memory (huge dilation or
//                           filter): one thread per output element.
//   dgrad_kernel            gather form: one thread per dx element sums every (k, r, s) that reads it
//                           (no atomics, deterministic).
//   wgrad_kernel            one block per weight (k, c, r, s); threads stride over N·P·Q, then a fixed
//                           shuffle + shared-memory tree reduction (deterministic, no atomics).
#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

struct FpropCfg {
  static constexpr int kTileP = 8;
  static constexpr int kTileQ = 16;
  static constexpr int kThreads = kTileP * kTileQ;  // one output pixel per thread
  static constexpr int kKPerBlock = 8;              // output channels per thread (registers)
  static constexpr int kCPerStage = 4;              // input channels staged per shared-memory pass
  static constexpr size_t kMaxSmem = 48 * 1024;     // default dynamic shared memory limit, no opt-in
  static_assert(kThreads % 32 == 0, "the tile must be whole warps");
};

struct ElemCfg {
  static constexpr int kThreads = 256;
};

struct WgradCfg {
  static constexpr int kThreads = 256;
  static constexpr int kWarps = kThreads / 32;
  static_assert(kThreads % 32 == 0 && kWarps <= 32, "the reduction's second level must fit one warp");
};

// Input rows/cols of the window an output tile of (tp x tq) pixels reads.
int64_t window_extent(int64_t tile, int64_t stride, int64_t k, int64_t dil) { return (tile - 1) * stride + (k - 1) * dil + 1; }

FC_HD int64_t weight_offset(const Conv2dShape& s, int64_t k, int64_t c, int64_t r, int64_t sx) {
  return k * s.w.n + c * s.w.c + r * s.w.h + sx * s.w.w;
}

template <typename T>
__global__ void __launch_bounds__(FpropCfg::kThreads, 1)
fprop_tiled_kernel(Conv2dShape s, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                   T* __restrict__ y, int win_h, int win_w, int tiles_q, int k_tiles) {
  using A = AccT<T>;
  constexpr int TP = FpropCfg::kTileP, TQ = FpropCfg::kTileQ, KB = FpropCfg::kKPerBlock, CC = FpropCfg::kCPerStage;
  FC_DYNAMIC_SHARED(16, unsigned char, smem_raw);
  A* xs = reinterpret_cast<A*>(smem_raw);  // [CC][win_h][win_w]
  const int RS = static_cast<int>(s.R * s.S);
  A* wsm = xs + CC * win_h * win_w;  // [CC][R][S][KB]

  const int tid = threadIdx.x;
  const int pl = tid / TQ, ql = tid % TQ;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x / tiles_q) * TP;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x % tiles_q) * TQ;
  const int64_t g = blockIdx.y / k_tiles;
  const int64_t Kg = s.Kg(), Cg = s.Cg();
  const int64_t k0 = g * Kg + static_cast<int64_t>(blockIdx.y % k_tiles) * KB;
  const int64_t k_end = (g + 1) * Kg;
  const int64_t h0 = p0 * s.stride_h - s.pad_h, w0 = q0 * s.stride_w - s.pad_w;
  const int64_t p = p0 + pl, q = q0 + ql;
  const int win = win_h * win_w;

  for (int64_t n = blockIdx.z; n < s.N; n += gridDim.z) {
    A acc[KB];
#pragma unroll
    for (int kl = 0; kl < KB; ++kl) acc[kl] = A(0);

    for (int64_t c0 = 0; c0 < Cg; c0 += CC) {
      for (int i = tid; i < CC * win; i += FpropCfg::kThreads) {
        const int cl = i / win, hh = (i % win) / win_w, ww = i % win_w;
        const int64_t h = h0 + hh, wc = w0 + ww;
        A v = A(0);
        if (c0 + cl < Cg && h >= 0 && h < s.H && wc >= 0 && wc < s.W) {
          v = to_acc<T>(x[s.x.offset(n, g * Cg + c0 + cl, h, wc)]);
        }
        xs[i] = v;
      }
      for (int i = tid; i < CC * RS * KB; i += FpropCfg::kThreads) {
        const int kl = i % KB, rs = (i / KB) % RS, cl = i / (KB * RS);
        const int64_t k = k0 + kl;
        A v = A(0);
        if (c0 + cl < Cg && k < k_end) v = to_acc<T>(w[weight_offset(s, k, c0 + cl, rs / s.S, rs % s.S)]);
        wsm[i] = v;
      }
      __syncthreads();
      for (int cl = 0; cl < CC; ++cl) {
        for (int r = 0; r < s.R; ++r) {
          const A* xrow = xs + cl * win + (pl * s.stride_h + r * s.dil_h) * win_w + ql * s.stride_w;
          const A* wrow = wsm + (cl * RS + r * s.S) * KB;
          for (int sx = 0; sx < s.S; ++sx) {
            const A v = xrow[sx * s.dil_w];
#pragma unroll
            for (int kl = 0; kl < KB; ++kl) acc[kl] += v * wrow[sx * KB + kl];
          }
        }
      }
      __syncthreads();
    }

    if (p < s.P && q < s.Q) {
#pragma unroll
      for (int kl = 0; kl < KB; ++kl) {
        const int64_t k = k0 + kl;
        if (k >= k_end) break;
        A v = acc[kl];
        if (bias != nullptr) v += to_acc<T>(bias[k]);
        y[s.y.offset(n, k, p, q)] = from_acc<T>(v);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(FpropCfg::kThreads, 1)
fprop_depthwise_kernel(Conv2dShape s, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                       T* __restrict__ y, int win_h, int win_w, int tiles_q) {
  using A = AccT<T>;
  constexpr int TP = FpropCfg::kTileP, TQ = FpropCfg::kTileQ;
  FC_DYNAMIC_SHARED(16, unsigned char, smem_raw);
  A* xs = reinterpret_cast<A*>(smem_raw);  // [win_h][win_w]
  A* wsm = xs + win_h * win_w;             // [mult][R][S]
  const int64_t mult = s.Kg();
  const int RS = static_cast<int>(s.R * s.S);
  const int mrs = static_cast<int>(mult) * RS;

  const int tid = threadIdx.x;
  const int pl = tid / TQ, ql = tid % TQ;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x / tiles_q) * TP;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x % tiles_q) * TQ;
  const int64_t h0 = p0 * s.stride_h - s.pad_h, w0 = q0 * s.stride_w - s.pad_w;
  const int64_t p = p0 + pl, q = q0 + ql;
  const int win = win_h * win_w;

  for (int64_t c = blockIdx.y; c < s.C; c += gridDim.y) {
    for (int i = tid; i < mrs; i += FpropCfg::kThreads) {
      const int m = i / RS, rs = i % RS;
      wsm[i] = to_acc<T>(w[weight_offset(s, c * mult + m, 0, rs / s.S, rs % s.S)]);
    }
    for (int64_t n = blockIdx.z; n < s.N; n += gridDim.z) {
      for (int i = tid; i < win; i += FpropCfg::kThreads) {
        const int64_t h = h0 + i / win_w, wc = w0 + i % win_w;
        A v = A(0);
        if (h >= 0 && h < s.H && wc >= 0 && wc < s.W) v = to_acc<T>(x[s.x.offset(n, c, h, wc)]);
        xs[i] = v;
      }
      __syncthreads();
      if (p < s.P && q < s.Q) {
        const A* xw = xs + (pl * s.stride_h) * win_w + ql * s.stride_w;
        for (int64_t m = 0; m < mult; ++m) {
          const int64_t k = c * mult + m;
          A acc = bias != nullptr ? to_acc<T>(bias[k]) : A(0);
          const A* wm = wsm + m * RS;
          for (int r = 0; r < s.R; ++r)
            for (int sx = 0; sx < s.S; ++sx) acc += xw[r * s.dil_h * win_w + sx * s.dil_w] * wm[r * s.S + sx];
          y[s.y.offset(n, k, p, q)] = from_acc<T>(acc);
        }
      }
      __syncthreads();
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(ElemCfg::kThreads)
fprop_naive_kernel(Conv2dShape s, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                   T* __restrict__ y) {
  using A = AccT<T>;
  const int64_t PQ = s.P * s.Q, total = s.N * s.K * PQ, Cg = s.Cg(), Kg = s.Kg();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pq = i % PQ, k = (i / PQ) % s.K, n = i / (PQ * s.K);
    const int64_t p = pq / s.Q, q = pq % s.Q, g = k / Kg;
    A acc = bias != nullptr ? to_acc<T>(bias[k]) : A(0);
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t r = 0; r < s.R; ++r) {
        const int64_t h = s.in_h(p, r);
        if (h < 0 || h >= s.H) continue;
        for (int64_t sx = 0; sx < s.S; ++sx) {
          const int64_t wc = s.in_w(q, sx);
          if (wc < 0 || wc >= s.W) continue;
          acc += to_acc<T>(x[s.x.offset(n, g * Cg + c, h, wc)]) * to_acc<T>(w[weight_offset(s, k, c, r, sx)]);
        }
      }
    y[s.y.offset(n, k, p, q)] = from_acc<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(ElemCfg::kThreads)
dgrad_kernel(Conv2dShape s, const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx) {
  using A = AccT<T>;
  const int64_t HW = s.H * s.W, total = s.N * s.C * HW, Cg = s.Cg(), Kg = s.Kg();
  const bool channels_inner = s.x.channels_last();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c, hw;  // decomposed in dx's memory order so neighbouring threads write neighbours
    if (channels_inner) {
      c = i % s.C;
      hw = (i / s.C) % HW;
    } else {
      hw = i % HW;
      c = (i / HW) % s.C;
    }
    const int64_t n = i / (s.C * HW), h = hw / s.W, wc = hw % s.W;
    const int64_t g = c / Cg, cl = c % Cg;
    A acc = A(0);
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t ph = h + s.pad_h - r * s.dil_h;  // = p · stride_h when row p's tap r reads h
      if (ph < 0 || ph % s.stride_h != 0) continue;
      const int64_t p = ph / s.stride_h;
      if (p >= s.P) continue;
      for (int64_t sx = 0; sx < s.S; ++sx) {
        const int64_t qw = wc + s.pad_w - sx * s.dil_w;
        if (qw < 0 || qw % s.stride_w != 0) continue;
        const int64_t q = qw / s.stride_w;
        if (q >= s.Q) continue;
        const T* dyp = dy + s.y.offset(n, g * Kg, p, q);
        const T* wp = w + weight_offset(s, g * Kg, cl, r, sx);
        for (int64_t k = 0; k < Kg; ++k) acc += to_acc<T>(dyp[k * s.y.c]) * to_acc<T>(wp[k * s.w.n]);
      }
    }
    dx[s.x.offset(n, c, h, wc)] = from_acc<T>(acc);
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(WgradCfg::kThreads, 1)
wgrad_kernel(Conv2dShape s, const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dw) {
  using A = AccT<T>;
  FC_SHARED(A, partial, [WgradCfg::kWarps]);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), PQ = s.P * s.Q, NPQ = s.N * PQ;
  const int64_t total = s.K * Cg * s.R * s.S;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t wi = blockIdx.x; wi < total; wi += gridDim.x) {
    const int64_t sx = wi % s.S, r = (wi / s.S) % s.R, c = (wi / (s.S * s.R)) % Cg, k = wi / (s.S * s.R * Cg);
    const int64_t ci = (k / Kg) * Cg + c;
    A acc = A(0);
    for (int64_t i = threadIdx.x; i < NPQ; i += WgradCfg::kThreads) {
      const int64_t n = i / PQ, pq = i % PQ, p = pq / s.Q, q = pq % s.Q;
      const int64_t h = s.in_h(p, r), wc = s.in_w(q, sx);
      if (h < 0 || h >= s.H || wc < 0 || wc >= s.W) continue;
      acc += to_acc<T>(dy[s.y.offset(n, k, p, q)]) * to_acc<T>(x[s.x.offset(n, ci, h, wc)]);
    }
    acc = warp_sum(acc);
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      A v = lane < WgradCfg::kWarps ? partial[lane] : A(0);
      v = warp_sum(v);
      if (lane == 0) dw[weight_offset(s, k, c, r, sx)] = from_acc<T>(v);
    }
    __syncthreads();  // partial[] is reused by the next weight
  }
}

unsigned int cap_grid(int64_t v) { return static_cast<unsigned int>(max64(1, min64(v, 65535))); }

}  // namespace

bool conv2d_direct_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  (void)dir;
  return (elem_bytes == 2 || elem_bytes == 4 || elem_bytes == 8) && s.valid();
}

size_t conv2d_direct_workspace_bytes(const Conv2dShape&, ConvDir, int, size_t) { return 0; }

template <typename T>
cudaError_t conv2d_direct_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, void* ws,
                                size_t ws_bytes, cudaStream_t stream) {
  (void)ws;
  (void)ws_bytes;
  using A = AccT<T>;
  if (!s.valid()) return cudaErrorInvalidValue;
  if (s.N == 0) return cudaSuccess;
  constexpr int TP = FpropCfg::kTileP, TQ = FpropCfg::kTileQ;
  const int64_t win_h = window_extent(TP, s.stride_h, s.R, s.dil_h);
  const int64_t win_w = window_extent(TQ, s.stride_w, s.S, s.dil_w);
  const int64_t tiles_q = ceil_div(s.Q, TQ), tiles = ceil_div(s.P, TP) * tiles_q;
  const bool tiles_ok = tiles <= 0x7fffffffLL;

  // Depthwise: one input channel per group.
  const size_t dw_smem = static_cast<size_t>(win_h * win_w + s.Kg() * s.R * s.S) * sizeof(A);
  if (tiles_ok && s.groups == s.C && s.groups > 1 && dw_smem <= FpropCfg::kMaxSmem) {
    const dim3 grid(static_cast<unsigned int>(tiles), cap_grid(s.C), cap_grid(s.N));
    FC_LAUNCH(grid, FpropCfg::kThreads, dw_smem, stream, fprop_depthwise_kernel<T>)(
        s, x, w, bias, y, static_cast<int>(win_h), static_cast<int>(win_w), static_cast<int>(tiles_q));
    return launch_status();
  }
  const int64_t k_tiles = ceil_div(s.Kg(), FpropCfg::kKPerBlock);
  const size_t smem = static_cast<size_t>(FpropCfg::kCPerStage * (win_h * win_w + s.R * s.S * FpropCfg::kKPerBlock)) *
                      sizeof(A);
  if (tiles_ok && smem <= FpropCfg::kMaxSmem && s.groups * k_tiles <= 65535) {
    const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(s.groups * k_tiles), cap_grid(s.N));
    FC_LAUNCH(grid, FpropCfg::kThreads, smem, stream, fprop_tiled_kernel<T>)(
        s, x, w, bias, y, static_cast<int>(win_h), static_cast<int>(win_w), static_cast<int>(tiles_q),
        static_cast<int>(k_tiles));
    return launch_status();
  }
  FC_LAUNCH(grid_for(s.N * s.K * s.P * s.Q, ElemCfg::kThreads), ElemCfg::kThreads, 0, stream, fprop_naive_kernel<T>)(
      s, x, w, bias, y);
  return launch_status();
}

template <typename T>
cudaError_t conv2d_direct_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx, void* ws, size_t ws_bytes,
                                cudaStream_t stream) {
  (void)ws;
  (void)ws_bytes;
  if (!s.valid()) return cudaErrorInvalidValue;
  if (s.N == 0) return cudaSuccess;
  FC_LAUNCH(grid_for(s.N * s.C * s.H * s.W, ElemCfg::kThreads), ElemCfg::kThreads, 0, stream, dgrad_kernel<T>)(s, dy, w, dx);
  return launch_status();
}

template <typename T>
cudaError_t conv2d_direct_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws, size_t ws_bytes,
                                cudaStream_t stream) {
  (void)ws;
  (void)ws_bytes;
  if (!s.valid()) return cudaErrorInvalidValue;
  // N == 0 still launches: every weight gradient is then an empty sum, written as zero.
  const int64_t total = s.K * s.Cg() * s.R * s.S;
  const unsigned int blocks = static_cast<unsigned int>(min64(total, 0x7fffffffLL));
  FC_LAUNCH(blocks, WgradCfg::kThreads, 0, stream, wgrad_kernel<T>)(s, dy, x, dw);
  return launch_status();
}

#define FASTCONV_INSTANTIATE_DIRECT(T)                                                                          \
  template cudaError_t conv2d_direct_fprop<T>(const Conv2dShape&, const T*, const T*, const T*, T*, void*, size_t, \
                                              cudaStream_t);                                                     \
  template cudaError_t conv2d_direct_dgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,          \
                                              cudaStream_t);                                                     \
  template cudaError_t conv2d_direct_wgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,          \
                                              cudaStream_t);
FASTCONV_INSTANTIATE_DIRECT(float)
FASTCONV_INSTANTIATE_DIRECT(__half)
FASTCONV_INSTANTIATE_DIRECT(__nv_bfloat16)
FASTCONV_INSTANTIATE_DIRECT(double)
#undef FASTCONV_INSTANTIATE_DIRECT

}  // namespace cuda
}  // namespace fastconv
