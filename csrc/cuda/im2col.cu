// im2col.cu — convolution as explicit im2col / col2im + the SIMT GEMM (gemm_simt.cu). Any config.
//
// The batch is processed in chunks of nb images so the column buffer fits the caller's workspace.
// Column buffer layouts (elements of T), chosen by the memory format of the activations so that the
// GEMM reads and writes the activations in place:
//   NCHW  "rows"  col[g·CgRS + f][n][p·Q + q]      (one row per filter tap, images side by side)
//   NHWC  "cols"  col[(n·P + p)·Q + q][g·CgRS + f]  (one row per output pixel)
// f is the tap's offset inside a packed filter, f = c·w.c + r·w.h + s·w.w, so the filter row of the
// weight [K][CgRS] and the column row use the same order whether the weight is KCRS or KRSC.
//
// Kernels (grid-stride loops, 64-bit indices):
//   im2col_kernel   one thread per column element; reads x through its strides (zero in padding).
//   col2im_kernel   one thread per dx element; gathers every (r, s) tap that reads it (no atomics,
//                   deterministic).
//   fill_bias (gemm_groups.cuh): y = bias[k] over the chunk (GEMM then adds, beta=1).
//   wgrad_store_kernel one thread per weight: dw = T(fp32 accumulator).
// Launchers:
//   fprop  per chunk: im2col, then per group y_g = W_g · col_g (+ bias)
//   dgrad  per chunk: per group dcol_g = W_g^T · dy_g, then col2im
//   wgrad  per chunk: im2col, then per group dW_g (+)= dy_g · col_g^T in an FP32 workspace
//          (beta = 0 on the first chunk, 1 after), converted to T at the end. NCHW dy is first
//          packed to [K][nb][PQ] (an im2col with a 1x1 filter) so one GEMM covers the chunk.
#include "common.cuh"
#include "gemm_groups.cuh"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kAlign = 256;  // sub-buffers of the workspace start on 256-byte boundaries

// Dense NCHW / NHWC tests that ignore the strides of size-1 dimensions (torch leaves them arbitrary).
bool is_nchw(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (W == 1 || st.w == 1) && (H == 1 || st.h == W) && (C == 1 || st.c == H * W) && (N == 1 || st.n == C * H * W);
}
bool is_nhwc(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (C == 1 || st.c == 1) && (W == 1 || st.w == C) && (H == 1 || st.h == W * C) && (N == 1 || st.n == H * W * C);
}

// Tap offsets inside one packed filter [Cg, R, S]; size-1 dimensions get stride 0 so split() never
// divides by an arbitrary stride.
struct FilterMap {
  int64_t sc = 0, sr = 0, ss = 0, Cg = 1, R = 1, S = 1;
  FC_HD int64_t pos(int64_t c, int64_t r, int64_t s) const { return c * sc + r * sr + s * ss; }
  FC_HD void split(int64_t f, int64_t& c, int64_t& r, int64_t& s) const {
    c = Cg == 1 ? 0 : (f / sc) % Cg;
    r = R == 1 ? 0 : (f / sr) % R;
    s = S == 1 ? 0 : (f / ss) % S;
  }
};

// The filter map of the weight, or false when the weight is not a dense [K][CgRS] matrix.
bool filter_map(const Conv2dShape& s, FilterMap& fm) {
  fm.Cg = s.Cg(); fm.R = s.R; fm.S = s.S;
  fm.sc = fm.Cg == 1 ? 0 : s.w.c;
  fm.sr = fm.R == 1 ? 0 : s.w.h;
  fm.ss = fm.S == 1 ? 0 : s.w.w;
  // Dense: the non-trivial dims, sorted by stride, have strides 1, size0, size0*size1.
  int64_t st[3] = {fm.sc, fm.sr, fm.ss}, sz[3] = {fm.Cg, fm.R, fm.S};
  for (int i = 0; i < 3; ++i)
    for (int j = i + 1; j < 3; ++j)
      if (st[j] < st[i]) { int64_t t = st[i]; st[i] = st[j]; st[j] = t; t = sz[i]; sz[i] = sz[j]; sz[j] = t; }
  int64_t expect = 1;
  for (int i = 0; i < 3; ++i) {
    if (sz[i] == 1) continue;
    if (st[i] != expect) return false;
    expect *= sz[i];
  }
  return s.K == 1 || s.w.n == fm.Cg * fm.R * fm.S;
}

// Where column element (g, f, n, p, q) lives for nb images in the chunk.
struct ColLayout {
  bool pixel_rows;  // true: NHWC "cols" layout, false: NCHW "rows" layout
  int64_t nb, PQ, CRS, CgRS;
  FC_HD int64_t offset(int64_t g, int64_t f, int64_t n, int64_t pq) const {
    return pixel_rows ? (n * PQ + pq) * CRS + g * CgRS + f : ((g * CgRS + f) * nb + n) * PQ + pq;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
im2col_kernel(Conv2dShape s, FilterMap fm, ColLayout cl, const T* __restrict__ x, int64_t n0, T* __restrict__ col) {
  const int64_t total = cl.nb * cl.PQ * cl.CRS;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Decompose i in the buffer's own order so consecutive threads write consecutive elements.
    int64_t row, n, pq;
    if (cl.pixel_rows) {
      row = i % cl.CRS;
      const int64_t npq = i / cl.CRS;
      n = npq / cl.PQ;
      pq = npq % cl.PQ;
    } else {
      pq = i % cl.PQ;
      const int64_t t = i / cl.PQ;
      n = t % cl.nb;
      row = t / cl.nb;
    }
    const int64_t g = row / cl.CgRS, f = row % cl.CgRS;
    int64_t c, r, sx;
    fm.split(f, c, r, sx);
    const int64_t p = pq / s.Q, q = pq % s.Q;
    const int64_t h = s.in_h(p, r), w = s.in_w(q, sx);
    T v = from_acc<T>(AccT<T>(0));
    if (h >= 0 && h < s.H && w >= 0 && w < s.W) v = x[s.x.offset(n0 + n, g * fm.Cg + c, h, w)];
    col[i] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
col2im_kernel(Conv2dShape s, FilterMap fm, ColLayout cl, const T* __restrict__ col, int64_t n0, T* __restrict__ dx) {
  const int64_t HW = s.H * s.W;
  const int64_t total = cl.nb * s.C * HW;
  const bool channels_inner = s.x.channels_last();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, ci, hw;
    if (channels_inner) {
      ci = i % s.C;
      hw = (i / s.C) % HW;
      n = i / (s.C * HW);
    } else {
      hw = i % HW;
      ci = (i / HW) % s.C;
      n = i / (s.C * HW);
    }
    const int64_t h = hw / s.W, w = hw % s.W;
    const int64_t g = ci / fm.Cg, c = ci % fm.Cg;
    AccT<T> acc = 0;
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t ph = h + s.pad_h - r * s.dil_h;  // = p * stride_h when tap r of row p reads h
      if (ph < 0 || ph % s.stride_h != 0) continue;
      const int64_t p = ph / s.stride_h;
      if (p >= s.P) continue;
      for (int64_t sx = 0; sx < s.S; ++sx) {
        const int64_t qw = w + s.pad_w - sx * s.dil_w;
        if (qw < 0 || qw % s.stride_w != 0) continue;
        const int64_t q = qw / s.stride_w;
        if (q >= s.Q) continue;
        acc += to_acc<T>(col[cl.offset(g, fm.pos(c, r, sx), n, p * s.Q + q)]);
      }
    }
    dx[s.x.offset(n0 + n, ci, h, w)] = from_acc<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
wgrad_store_kernel(int64_t K, int64_t CgRS, int64_t ldw, const float* __restrict__ acc, T* __restrict__ dw) {
  const int64_t total = K * CgRS;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dw[(i / CgRS) * ldw + i % CgRS] = from_acc<T>(acc[i]);
  }
}

size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

// Workspace arithmetic shared by workspace_bytes and the launchers, so both agree on nb.
struct Plan {
  size_t fixed = 0;      // fp32 weight-gradient accumulator (wgrad)
  size_t per_image = 0;  // column buffer (+ packed dy for NCHW wgrad) per image
  size_t slack = 2 * kAlign;
};

// Which tensor the GEMM reads or writes in place: y (fprop) or dy (dgrad, wgrad).
bool out_pixel_rows(const Conv2dShape& s) { return is_nhwc(s.y, s.N, s.K, s.P, s.Q); }
bool out_layout_ok(const Conv2dShape& s) {
  return is_nhwc(s.y, s.N, s.K, s.P, s.Q) || is_nchw(s.y, s.N, s.K, s.P, s.Q);
}

Plan make_plan(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  Plan pl;
  const size_t e = static_cast<size_t>(elem_bytes);
  pl.per_image = static_cast<size_t>(s.C * s.R * s.S * s.P * s.Q) * e;
  if (dir == ConvDir::kWgrad) {
    pl.fixed = align_up(static_cast<size_t>(s.K * s.Cg() * s.R * s.S) * sizeof(float));
    if (!out_pixel_rows(s)) pl.per_image += static_cast<size_t>(s.K * s.P * s.Q) * e;
  }
  return pl;
}

// Images per chunk that fit ws_bytes, or 0 when not even one does.
int64_t chunk_images(const Conv2dShape& s, const Plan& pl, size_t ws_bytes) {
  if (ws_bytes < pl.fixed + pl.slack + pl.per_image) return 0;
  const int64_t nb = static_cast<int64_t>((ws_bytes - pl.fixed - pl.slack) / pl.per_image);
  return min64(nb, max64(s.N, 1));
}

template <typename T>
cudaError_t launch_im2col(const Conv2dShape& s, const FilterMap& fm, const ColLayout& cl, const T* x, int64_t n0,
                          T* col, cudaStream_t stream) {
  FC_LAUNCH(grid_for(cl.nb * cl.PQ * cl.CRS, kThreads), kThreads, 0, stream, im2col_kernel<T>)(s, fm, cl, x, n0, col);
  return launch_status();
}


bool shape_ok(const Conv2dShape& s) {
  FilterMap fm;
  return s.valid() && filter_map(s, fm) && out_layout_ok(s);
}

}  // namespace

bool conv2d_im2col_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  (void)dir;
  return (elem_bytes == 2 || elem_bytes == 4) && shape_ok(s);
}

size_t conv2d_im2col_workspace_bytes(const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t workspace_limit) {
  const Plan pl = make_plan(s, dir, elem_bytes);
  int64_t nb = chunk_images(s, pl, workspace_limit);
  if (nb < 1) nb = 1;  // at least one image, even over the limit
  return pl.fixed + pl.slack + static_cast<size_t>(nb) * pl.per_image;
}

template <typename T>
cudaError_t conv2d_im2col_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, void* ws,
                                size_t ws_bytes, cudaStream_t stream) {
  FilterMap fm;
  if (!s.valid() || !filter_map(s, fm) || !out_layout_ok(s)) return cudaErrorInvalidValue;
  if (s.N == 0) return cudaSuccess;
  const Plan pl = make_plan(s, ConvDir::kFprop, sizeof(T));
  const int64_t nb_max = chunk_images(s, pl, ws_bytes);
  if (nb_max < 1 || ws == nullptr) return cudaErrorInvalidValue;
  T* col = reinterpret_cast<T*>(ws);
  const int64_t G = s.groups, Kg = s.Kg(), CgRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const bool pix = out_pixel_rows(s);
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = min64(nb_max, s.N - n0);
    const ColLayout cl{pix, nb, PQ, G * CgRS, CgRS};
    cudaError_t e = launch_im2col(s, fm, cl, x, n0, col, stream);
    if (e != cudaSuccess) return e;
    float beta = 0.f;
    if (bias != nullptr) {
      fill_bias<T>(s, bias, n0, nb, y, stream);
      if ((e = launch_status()) != cudaSuccess) return e;
      beta = 1.f;
    }
    T* yc = y + n0 * s.y.n;
    if (pix) {
      // y[npq][g·Kg + k] = sum_f col[npq][g·CgRS + f] · W[g·Kg + k][f]: one GEMM per group, all pixels.
      e = gemm_simt<T, T>(nb * PQ, Kg, CgRS, col, G * CgRS, false, w, CgRS, true, yc, s.K, 1.f, beta, G, CgRS,
                          Kg * CgRS, Kg, stream);
    } else {
      // y[n][g·Kg + k][pq] = sum_f W[g·Kg + k][f] · col[g·CgRS + f][n][pq], per (group, image).
      const GemmCall gc{Kg, PQ, CgRS, CgRS, nb * PQ, PQ, false, false, Kg * CgRS, 0, CgRS * nb * PQ, PQ,
                        Kg * PQ, s.K * PQ};
      e = gemm_groups_images<T, T>(gc, G, nb, w, col, yc, beta, stream);
    }
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t conv2d_im2col_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx, void* ws, size_t ws_bytes,
                                cudaStream_t stream) {
  FilterMap fm;
  if (!s.valid() || !filter_map(s, fm) || !out_layout_ok(s)) return cudaErrorInvalidValue;
  if (s.N == 0) return cudaSuccess;
  const Plan pl = make_plan(s, ConvDir::kDgrad, sizeof(T));
  const int64_t nb_max = chunk_images(s, pl, ws_bytes);
  if (nb_max < 1 || ws == nullptr) return cudaErrorInvalidValue;
  T* col = reinterpret_cast<T*>(ws);
  const int64_t G = s.groups, Kg = s.Kg(), CgRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const bool pix = out_pixel_rows(s);
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = min64(nb_max, s.N - n0);
    const ColLayout cl{pix, nb, PQ, G * CgRS, CgRS};
    const T* dyc = dy + n0 * s.y.n;
    cudaError_t e;
    if (pix) {
      // dcol[npq][g·CgRS + f] = sum_k dy[npq][g·Kg + k] · W[g·Kg + k][f].
      e = gemm_simt<T, T>(nb * PQ, CgRS, Kg, dyc, s.K, false, w, CgRS, false, col, G * CgRS, 1.f, 0.f, G, Kg,
                          Kg * CgRS, CgRS, stream);
    } else {
      // dcol[g·CgRS + f][n][pq] = sum_k W[g·Kg + k][f] · dy[n][g·Kg + k][pq].
      const GemmCall gc{CgRS, PQ, Kg, CgRS, PQ, nb * PQ, true, false, Kg * CgRS, 0, Kg * PQ, s.K * PQ,
                        CgRS * nb * PQ, PQ};
      e = gemm_groups_images<T, T>(gc, G, nb, w, dyc, col, 0.f, stream);
    }
    if (e != cudaSuccess) return e;
    FC_LAUNCH(grid_for(nb * s.C * s.H * s.W, kThreads), kThreads, 0, stream, col2im_kernel<T>)(s, fm, cl, col, n0, dx);
    if ((e = launch_status()) != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t conv2d_im2col_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws, size_t ws_bytes,
                                cudaStream_t stream) {
  FilterMap fm;
  if (!s.valid() || !filter_map(s, fm) || !out_layout_ok(s)) return cudaErrorInvalidValue;
  const Plan pl = make_plan(s, ConvDir::kWgrad, sizeof(T));
  const int64_t nb_max = chunk_images(s, pl, ws_bytes);
  if (nb_max < 1 || ws == nullptr) return cudaErrorInvalidValue;
  const int64_t G = s.groups, Kg = s.Kg(), CgRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  float* acc = reinterpret_cast<float*>(ws);
  T* col = reinterpret_cast<T*>(static_cast<char*>(ws) + pl.fixed);
  T* dyp = reinterpret_cast<T*>(static_cast<char*>(ws) + pl.fixed +
                                align_up(static_cast<size_t>(nb_max * s.C * s.R * s.S * PQ) * sizeof(T)));
  const bool pix = out_pixel_rows(s);
  cudaError_t e;
  if (s.N == 0) {
    if ((e = cudaMemsetAsync(acc, 0, static_cast<size_t>(s.K * CgRS) * sizeof(float), stream)) != cudaSuccess) return e;
  }
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = min64(nb_max, s.N - n0);
    const float beta = n0 == 0 ? 0.f : 1.f;
    const ColLayout cl{pix, nb, PQ, G * CgRS, CgRS};
    if ((e = launch_im2col(s, fm, cl, x, n0, col, stream)) != cudaSuccess) return e;
    if (pix) {
      // dW[g·Kg + k][f] (+)= sum_npq dy[npq][g·Kg + k] · col[npq][g·CgRS + f].
      e = gemm_simt<T, float>(Kg, CgRS, nb * PQ, dy + n0 * s.y.n, s.K, true, col, G * CgRS, false, acc, CgRS, 1.f,
                              beta, G, Kg, CgRS, Kg * CgRS, stream);
    } else {
      // Pack dy[n][k][pq] to dyp[k][n][pq] (a 1x1 im2col of dy), then
      // dW[g·Kg + k][f] (+)= sum_(n,pq) dyp[g·Kg + k][n][pq] · col[g·CgRS + f][n][pq].
      Conv2dShape d = make_conv2d_shape(s.N, s.K, s.P, s.Q, s.K, 1, 1, 0, 0, 1, 1, 1, 1, 1);
      d.x = s.y;
      FilterMap unit;
      unit.Cg = s.K;
      unit.sc = 1;
      const ColLayout dl{false, nb, PQ, s.K, s.K};
      if ((e = launch_im2col(d, unit, dl, dy, n0, dyp, stream)) != cudaSuccess) return e;
      e = gemm_simt<T, float>(Kg, CgRS, nb * PQ, dyp, nb * PQ, false, col, nb * PQ, true, acc, CgRS, 1.f, beta, G,
                              Kg * nb * PQ, CgRS * nb * PQ, Kg * CgRS, stream);
    }
    if (e != cudaSuccess) return e;
  }
  FC_LAUNCH(grid_for(s.K * CgRS, kThreads), kThreads, 0, stream, wgrad_store_kernel<T>)(s.K, CgRS, CgRS, acc, dw);
  return launch_status();
}

#define FASTCONV_INSTANTIATE_IM2COL(T)                                                                          \
  template cudaError_t conv2d_im2col_fprop<T>(const Conv2dShape&, const T*, const T*, const T*, T*, void*, size_t, \
                                              cudaStream_t);                                                     \
  template cudaError_t conv2d_im2col_dgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,          \
                                              cudaStream_t);                                                     \
  template cudaError_t conv2d_im2col_wgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,          \
                                              cudaStream_t);
FASTCONV_INSTANTIATE_IM2COL(float)
FASTCONV_INSTANTIATE_IM2COL(__half)
FASTCONV_INSTANTIATE_IM2COL(__nv_bfloat16)
#undef FASTCONV_INSTANTIATE_IM2COL

}  // namespace cuda
}  // namespace fastconv
