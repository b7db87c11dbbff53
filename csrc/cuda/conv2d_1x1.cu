// conv2d_1x1.cu — 1x1 convolution (R = S = 1, no padding, any stride, any groups) as a GEMM read
// straight from the activations; no im2col. The weight is the dense matrix W[K][Cg].
//
//   NHWC  x is the [N·H·W, C] operand and y the [N·P·Q, K] result: one GEMM per group for the batch.
//   NCHW  x[n] is [C, H·W] and y[n] is [K, P·Q]: a GEMM per (group, image), batched over one of them.
// stride > 1: the pixels the filter reads are first gathered into a dense workspace (a strided row
// gather), in chunks of nb images; the workspace layouts are
//   NHWC  buf[(n·P + p)·Q + q][c]        NCHW  buf[c][n][p·Q + q]
// and dgrad scatters its GEMM result back (writing zeros at the pixels the stride skips).
//
// Kernels (grid-stride loops, one thread per element, 64-bit indices):
//   gather_kernel        buf element <- x(n, c, p·sh, q·sw)
//   scatter_kernel       dx(n, c, h, w) <- buf element, or 0 where no output pixel reads (h, w)
//   fill_bias (gemm_groups.cuh) y = bias[k] (the GEMM then accumulates with beta = 1)
//   wgrad_store_kernel   dw = T(fp32 accumulator)
// wgrad accumulates in an FP32 workspace over chunks (beta = 0 first, 1 after); NCHW packs dy and x
// to [channels][n][pq] so a single GEMM per chunk reduces over all its pixels.
#include "common.cuh"
#include "gemm_groups.cuh"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kAlign = 256;

bool is_nchw(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (W == 1 || st.w == 1) && (H == 1 || st.h == W) && (C == 1 || st.c == H * W) && (N == 1 || st.n == C * H * W);
}
bool is_nhwc(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (C == 1 || st.c == 1) && (W == 1 || st.w == C) && (H == 1 || st.h == W * C) && (N == 1 || st.n == H * W * C);
}

// Offset of (n, c, pq) in a gather/scatter buffer of nb images.
struct BufLayout {
  bool pixel_rows;
  int64_t nb, C, PQ;
  FC_HD int64_t offset(int64_t n, int64_t c, int64_t pq) const {
    return pixel_rows ? (n * PQ + pq) * C + c : (c * nb + n) * PQ + pq;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
gather_kernel(const T* __restrict__ src, Strides4 st, int64_t Q, int64_t sh, int64_t sw, int64_t n0, BufLayout bl,
              T* __restrict__ dst) {
  const int64_t total = bl.nb * bl.C * bl.PQ;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, pq;  // decomposed in the buffer's order: consecutive threads write consecutive elements
    if (bl.pixel_rows) {
      c = i % bl.C;
      pq = (i / bl.C) % bl.PQ;
      n = i / (bl.C * bl.PQ);
    } else {
      pq = i % bl.PQ;
      n = (i / bl.PQ) % bl.nb;
      c = i / (bl.PQ * bl.nb);
    }
    dst[i] = src[st.offset(n0 + n, c, (pq / Q) * sh, (pq % Q) * sw)];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
scatter_kernel(Conv2dShape s, const T* __restrict__ buf, int64_t n0, BufLayout bl, T* __restrict__ dx) {
  const int64_t HW = s.H * s.W, total = bl.nb * s.C * HW;
  const bool channels_inner = s.x.channels_last();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, hw;
    if (channels_inner) {
      c = i % s.C;
      hw = (i / s.C) % HW;
    } else {
      hw = i % HW;
      c = (i / HW) % s.C;
    }
    n = i / (s.C * HW);
    const int64_t h = hw / s.W, w = hw % s.W;
    T v = from_acc<T>(AccT<T>(0));
    if (h % s.stride_h == 0 && w % s.stride_w == 0) {
      const int64_t p = h / s.stride_h, q = w / s.stride_w;
      if (p < s.P && q < s.Q) v = buf[bl.offset(n, c, p * s.Q + q)];
    }
    dx[s.x.offset(n0 + n, c, h, w)] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
wgrad_store_kernel(int64_t total, const float* __restrict__ acc, T* __restrict__ dw) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dw[i] = from_acc<T>(acc[i]);
  }
}

size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

bool strided(const Conv2dShape& s) { return s.stride_h > 1 || s.stride_w > 1; }
bool pixel_rows(const Conv2dShape& s) {
  return is_nhwc(s.x, s.N, s.C, s.H, s.W) && is_nhwc(s.y, s.N, s.K, s.P, s.Q);
}
bool shape_ok(const Conv2dShape& s) {
  if (!s.valid() || s.R != 1 || s.S != 1 || s.pad_h != 0 || s.pad_w != 0) return false;
  const bool layout = pixel_rows(s) || (is_nchw(s.x, s.N, s.C, s.H, s.W) && is_nchw(s.y, s.N, s.K, s.P, s.Q));
  const bool weight = (s.Cg() == 1 || s.w.c == 1) && (s.K == 1 || s.w.n == s.Cg());  // dense W[K][Cg]
  return layout && weight;
}

struct Plan {
  size_t fixed = 0;      // fp32 weight-gradient accumulator (wgrad)
  size_t per_image = 0;  // gather / scatter / pack buffers per image
  size_t slack = 2 * kAlign;
};

Plan make_plan(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  Plan pl;
  const size_t e = static_cast<size_t>(elem_bytes), cpq = static_cast<size_t>(s.C * s.P * s.Q) * e;
  if (dir == ConvDir::kWgrad) {
    pl.fixed = align_up(static_cast<size_t>(s.K * s.Cg()) * sizeof(float));
    if (!pixel_rows(s)) pl.per_image = cpq + static_cast<size_t>(s.K * s.P * s.Q) * e;
    else if (strided(s)) pl.per_image = cpq;
  } else if (strided(s)) {
    pl.per_image = cpq;
  }
  return pl;
}

// Images per chunk: the whole batch when no per-image buffer is needed, else what fits ws_bytes
// (0 when not even one image does).
int64_t chunk_images(const Conv2dShape& s, const Plan& pl, size_t ws_bytes) {
  const int64_t all = max64(s.N, 1);
  if (ws_bytes < pl.fixed + (pl.per_image ? pl.slack + pl.per_image : 0)) return 0;
  if (pl.per_image == 0) return all;
  return min64(static_cast<int64_t>((ws_bytes - pl.fixed - pl.slack) / pl.per_image), all);
}

template <typename T>
cudaError_t launch_gather(const T* src, const Strides4& st, int64_t Q, int64_t sh, int64_t sw, int64_t n0,
                          const BufLayout& bl, T* dst, cudaStream_t stream) {
  FC_LAUNCH(grid_for(bl.nb * bl.C * bl.PQ, kThreads), kThreads, 0, stream, gather_kernel<T>)(src, st, Q, sh, sw, n0, bl, dst);
  return launch_status();
}


}  // namespace

bool conv2d_gemm1x1_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  (void)dir;
  return (elem_bytes == 2 || elem_bytes == 4) && shape_ok(s);
}

size_t conv2d_gemm1x1_workspace_bytes(const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t workspace_limit) {
  const Plan pl = make_plan(s, dir, elem_bytes);
  if (pl.per_image == 0) return pl.fixed;
  int64_t nb = chunk_images(s, pl, workspace_limit);
  if (nb < 1) nb = 1;  // at least one image, even over the limit
  return pl.fixed + pl.slack + static_cast<size_t>(nb) * pl.per_image;
}

template <typename T>
cudaError_t conv2d_gemm1x1_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, void* ws,
                                 size_t ws_bytes, cudaStream_t stream) {
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  if (s.N == 0) return cudaSuccess;
  const Plan pl = make_plan(s, ConvDir::kFprop, sizeof(T));
  const int64_t nb_max = chunk_images(s, pl, ws_bytes);
  if (nb_max < 1 || (pl.per_image != 0 && ws == nullptr)) return cudaErrorInvalidValue;
  const int64_t G = s.groups, Kg = s.Kg(), Cg = s.Cg(), PQ = s.P * s.Q, HW = s.H * s.W;
  const bool pix = pixel_rows(s), gather = strided(s);
  T* buf = static_cast<T*>(ws);
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = min64(nb_max, s.N - n0);
    const BufLayout bl{pix, nb, s.C, PQ};
    cudaError_t e;
    if (gather && (e = launch_gather(x, s.x, s.Q, s.stride_h, s.stride_w, n0, bl, buf, stream)) != cudaSuccess) {
      return e;
    }
    float beta = 0.f;
    if (bias != nullptr) {
      fill_bias<T>(s, bias, n0, nb, y, stream);
      if ((e = launch_status()) != cudaSuccess) return e;
      beta = 1.f;
    }
    T* yc = y + n0 * s.y.n;
    if (pix) {
      // y[npq][g·Kg + k] = sum_c x[npq][g·Cg + c] · W[g·Kg + k][c].
      const T* a = gather ? buf : x + n0 * s.x.n;
      e = gemm_simt<T, T>(nb * PQ, Kg, Cg, a, s.C, false, w, Cg, true, yc, s.K, 1.f, beta, G, Cg, Kg * Cg, Kg, stream);
    } else if (gather) {
      // y[n][g·Kg + k][pq] = sum_c W[g·Kg + k][c] · buf[g·Cg + c][n][pq].
      const GemmCall gc{Kg, PQ, Cg, Cg, nb * PQ, PQ, false, false, Kg * Cg, 0, Cg * nb * PQ, PQ, Kg * PQ, s.K * PQ};
      e = gemm_groups_images<T, T>(gc, G, nb, w, buf, yc, beta, stream);
    } else {
      // y[n][g·Kg + k][pq] = sum_c W[g·Kg + k][c] · x[n][g·Cg + c][pq]  (PQ == HW at stride 1).
      const GemmCall gc{Kg, PQ, Cg, Cg, HW, PQ, false, false, Kg * Cg, 0, Cg * HW, s.C * HW, Kg * PQ, s.K * PQ};
      e = gemm_groups_images<T, T>(gc, G, nb, w, x + n0 * s.x.n, yc, beta, stream);
    }
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t conv2d_gemm1x1_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx, void* ws, size_t ws_bytes,
                                 cudaStream_t stream) {
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  if (s.N == 0) return cudaSuccess;
  const Plan pl = make_plan(s, ConvDir::kDgrad, sizeof(T));
  const int64_t nb_max = chunk_images(s, pl, ws_bytes);
  if (nb_max < 1 || (pl.per_image != 0 && ws == nullptr)) return cudaErrorInvalidValue;
  const int64_t G = s.groups, Kg = s.Kg(), Cg = s.Cg(), PQ = s.P * s.Q, HW = s.H * s.W;
  const bool pix = pixel_rows(s), scatter = strided(s);
  T* buf = static_cast<T*>(ws);
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = min64(nb_max, s.N - n0);
    const BufLayout bl{pix, nb, s.C, PQ};
    const T* dyc = dy + n0 * s.y.n;
    cudaError_t e;
    if (pix) {
      // dx[npq][g·Cg + c] = sum_k dy[npq][g·Kg + k] · W[g·Kg + k][c]   (npq = nhw at stride 1).
      T* c = scatter ? buf : dx + n0 * s.x.n;
      e = gemm_simt<T, T>(nb * PQ, Cg, Kg, dyc, s.K, false, w, Cg, false, c, s.C, 1.f, 0.f, G, Kg, Kg * Cg, Cg, stream);
    } else if (scatter) {
      // buf[g·Cg + c][n][pq] = sum_k W[g·Kg + k][c] · dy[n][g·Kg + k][pq].
      const GemmCall gc{Cg, PQ, Kg, Cg, PQ, nb * PQ, true, false, Kg * Cg, 0, Kg * PQ, s.K * PQ, Cg * nb * PQ, PQ};
      e = gemm_groups_images<T, T>(gc, G, nb, w, dyc, buf, 0.f, stream);
    } else {
      // dx[n][g·Cg + c][hw] = sum_k W[g·Kg + k][c] · dy[n][g·Kg + k][hw].
      const GemmCall gc{Cg, PQ, Kg, Cg, PQ, HW, true, false, Kg * Cg, 0, Kg * PQ, s.K * PQ, Cg * HW, s.C * HW};
      e = gemm_groups_images<T, T>(gc, G, nb, w, dyc, dx + n0 * s.x.n, 0.f, stream);
    }
    if (e != cudaSuccess) return e;
    if (scatter) {
      FC_LAUNCH(grid_for(nb * s.C * HW, kThreads), kThreads, 0, stream, scatter_kernel<T>)(s, buf, n0, bl, dx);
      if ((e = launch_status()) != cudaSuccess) return e;
    }
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t conv2d_gemm1x1_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws, size_t ws_bytes,
                                 cudaStream_t stream) {
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  const Plan pl = make_plan(s, ConvDir::kWgrad, sizeof(T));
  const int64_t nb_max = chunk_images(s, pl, ws_bytes);
  if (nb_max < 1 || ws == nullptr) return cudaErrorInvalidValue;
  const int64_t G = s.groups, Kg = s.Kg(), Cg = s.Cg(), PQ = s.P * s.Q;
  const bool pix = pixel_rows(s), gather = strided(s);
  float* acc = static_cast<float*>(ws);
  T* xbuf = reinterpret_cast<T*>(static_cast<char*>(ws) + pl.fixed);
  T* dybuf = reinterpret_cast<T*>(static_cast<char*>(ws) + pl.fixed +
                                  align_up(static_cast<size_t>(nb_max * s.C * PQ) * sizeof(T)));
  cudaError_t e;
  if (s.N == 0) {
    if ((e = cudaMemsetAsync(acc, 0, static_cast<size_t>(s.K * Cg) * sizeof(float), stream)) != cudaSuccess) return e;
  }
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = min64(nb_max, s.N - n0);
    const float beta = n0 == 0 ? 0.f : 1.f;
    if (pix) {
      // dW[g·Kg + k][c] (+)= sum_npq dy[npq][g·Kg + k] · x(npq)[g·Cg + c].
      const T* b = x + n0 * s.x.n;
      if (gather) {
        const BufLayout bl{true, nb, s.C, PQ};
        if ((e = launch_gather(x, s.x, s.Q, s.stride_h, s.stride_w, n0, bl, xbuf, stream)) != cudaSuccess) return e;
        b = xbuf;
      }
      e = gemm_simt<T, float>(Kg, Cg, nb * PQ, dy + n0 * s.y.n, s.K, true, b, s.C, false, acc, Cg, 1.f, beta, G, Kg,
                              Cg, Kg * Cg, stream);
    } else {
      // Pack x (strided) to xbuf[c][n][pq] and dy to dybuf[k][n][pq], then
      // dW[g·Kg + k][c] (+)= sum_(n,pq) dybuf[g·Kg + k][n][pq] · xbuf[g·Cg + c][n][pq].
      const BufLayout xl{false, nb, s.C, PQ}, dl{false, nb, s.K, PQ};
      if ((e = launch_gather(x, s.x, s.Q, s.stride_h, s.stride_w, n0, xl, xbuf, stream)) != cudaSuccess) return e;
      if ((e = launch_gather(dy, s.y, s.Q, int64_t(1), int64_t(1), n0, dl, dybuf, stream)) != cudaSuccess) return e;
      e = gemm_simt<T, float>(Kg, Cg, nb * PQ, dybuf, nb * PQ, false, xbuf, nb * PQ, true, acc, Cg, 1.f, beta, G,
                              Kg * nb * PQ, Cg * nb * PQ, Kg * Cg, stream);
    }
    if (e != cudaSuccess) return e;
  }
  FC_LAUNCH(grid_for(s.K * Cg, kThreads), kThreads, 0, stream, wgrad_store_kernel<T>)(s.K * Cg, acc, dw);
  return launch_status();
}

#define FASTCONV_INSTANTIATE_1X1(T)                                                                              \
  template cudaError_t conv2d_gemm1x1_fprop<T>(const Conv2dShape&, const T*, const T*, const T*, T*, void*, size_t, \
                                               cudaStream_t);                                                     \
  template cudaError_t conv2d_gemm1x1_dgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,          \
                                               cudaStream_t);                                                     \
  template cudaError_t conv2d_gemm1x1_wgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,          \
                                               cudaStream_t);
FASTCONV_INSTANTIATE_1X1(float)
FASTCONV_INSTANTIATE_1X1(__half)
FASTCONV_INSTANTIATE_1X1(__nv_bfloat16)
#undef FASTCONV_INSTANTIATE_1X1

}  // namespace cuda
}  // namespace fastconv
