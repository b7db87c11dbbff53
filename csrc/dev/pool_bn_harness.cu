// pool_bn_harness.cu — standalone check and timing of the pooling and batch-norm CUDA kernels.
//
// Build: make -C csrc dev   (bare nvcc; links csrc/cuda/*.cu)   Run: csrc/build/dev/pool_bn_harness
// 1. Correctness: every kernel against a double-precision CPU reference on small shapes with tails
//    (C = 3, odd maps, padding, dilation, ceil_mode, non-divisible adaptive windows), in NCHW and
//    NHWC, for float / double / half / bf16; batch norm also on inputs with mean 1e3 and std 1.
//    Tolerance per element: atol + rtol·|ref|. Max-pool indices must match exactly.
// 2. Timing (only if every check passed): NHWC forward kernels on large tensors, 3 warm-ups, then
//    the median of 20 CUDA-event timed runs, printed with GB/s over each kernel's byte floor.
// Returns 0 when all checks pass, 1 otherwise.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "fastconv/cuda_api.h"

using namespace fastconv;
namespace fc = fastconv::cuda;

// ---- host type helpers ------------------------------------------------------------------------------
template <typename T> struct Dt;
template <> struct Dt<float> {
  static constexpr const char* name = "f32"; static constexpr double atol = 1e-5, rtol = 1e-5;
  static float from(double v) { return static_cast<float>(v); }
  static double to(float v) { return v; }
};
template <> struct Dt<double> {
  static constexpr const char* name = "f64"; static constexpr double atol = 1e-12, rtol = 1e-12;
  static double from(double v) { return v; }
  static double to(double v) { return v; }
};
template <> struct Dt<__half> {
  static constexpr const char* name = "f16"; static constexpr double atol = 2e-3, rtol = 2e-3;
  static __half from(double v) { return __float2half(static_cast<float>(v)); }
  static double to(__half v) { return __half2float(v); }
};
template <> struct Dt<__nv_bfloat16> {
  static constexpr const char* name = "bf16"; static constexpr double atol = 1.6e-2, rtol = 1.6e-2;
  static __nv_bfloat16 from(double v) { return __float2bfloat16(static_cast<float>(v)); }
  static double to(__nv_bfloat16 v) { return __bfloat162float(v); }
};

#define CUDA_OK(expr)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (expr);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #expr); \
      return false;                                                                            \
    }                                                                                          \
  } while (0)

template <typename T> struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { if (cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) p = nullptr; }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  bool up(const std::vector<T>& h) { return cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess; }
  bool down(std::vector<T>& h) { h.resize(n); return cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess; }
};

static Strides4 layout_strides(bool nhwc, int64_t C, int64_t H, int64_t W) {
  return nhwc ? channels_last_strides(C, H, W) : contiguous_strides(C, H, W);
}

template <typename T>
static std::vector<T> random_tensor(size_t n, double mean, double stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<T> v(n);
  for (auto& e : v) e = Dt<T>::from(dist(rng));
  return v;
}

// Compares got (type T or Acc) with a double reference; prints and returns pass/fail.
template <typename G>
static bool compare(const std::string& what, const std::vector<G>& got, const std::vector<double>& ref, double atol,
                    double rtol, double (*to)(G)) {
  double max_err = 0.0;
  size_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = to(got[i]), r = ref[i];
    const double err = std::fabs(g - r);
    const bool ok = (std::isnan(r) && std::isnan(g)) || err <= atol + rtol * std::fabs(r);
    if (!std::isnan(err)) max_err = std::max(max_err, err);
    if (!ok) ++bad;
  }
  std::printf("  %-58s max err %.3e  %s\n", what.c_str(), max_err, bad ? "FAIL" : "ok");
  if (bad) std::printf("    %zu of %zu elements out of tolerance\n", bad, ref.size());
  return bad == 0;
}
static double f2d(float v) { return v; }
template <typename Acc> static double acc_to_d(Acc v) { return static_cast<double>(v); }

// ---- pooling: CPU references (double, strided) --------------------------------------------------------
struct PoolRef {
  std::vector<double> y;
  std::vector<int64_t> idx;
};

template <typename T>
static PoolRef ref_max_fwd(const Pool2dShape& s, const std::vector<T>& x) {
  PoolRef r;
  r.y.assign(s.N * s.C * s.P * s.Q, 0.0);
  r.idx.assign(r.y.size(), 0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t hs = p * s.stride_h - s.pad_h, ws = q * s.stride_w - s.pad_w;
          int64_t h0 = hs, w0 = ws;
          while (h0 < 0) h0 += s.dil_h;
          while (w0 < 0) w0 += s.dil_w;
          double best = -INFINITY;
          int64_t bi = h0 * s.W + w0;
          for (int64_t a = 0; a < s.kh; ++a)
            for (int64_t b = 0; b < s.kw; ++b) {
              const int64_t h = hs + a * s.dil_h, w = ws + b * s.dil_w;
              if (h < 0 || h >= s.H || w < 0 || w >= s.W) continue;
              const double v = Dt<T>::to(x[s.x.offset(n, c, h, w)]);
              if (v > best || std::isnan(v)) { best = v; bi = h * s.W + w; }
            }
          const int64_t o = s.y.offset(n, c, p, q);
          r.y[o] = best;
          r.idx[o] = bi;
        }
  return r;
}

static void avg_window_ref(const Pool2dShape& s, int64_t p, int64_t q, bool cip, int64_t dov, int64_t& h0,
                           int64_t& h1, int64_t& w0, int64_t& w1, int64_t& div) {
  h0 = p * s.stride_h - s.pad_h; w0 = q * s.stride_w - s.pad_w;
  h1 = std::min(h0 + s.kh, s.H + s.pad_h); w1 = std::min(w0 + s.kw, s.W + s.pad_w);
  const int64_t pool = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0); w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, s.H); w1 = std::min(w1, s.W);
  div = (h0 >= h1 || w0 >= w1) ? 0 : dov > 0 ? dov : cip ? pool : (h1 - h0) * (w1 - w0);
}

// ---- pooling tests -------------------------------------------------------------------------------------
template <typename T>
static bool test_pool(int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t st, int64_t pad, int64_t dil,
                      bool ceil_mode, bool nhwc, bool cip, int64_t dov) {
  Pool2dShape s;
  s.N = N; s.C = C; s.H = H; s.W = W; s.kh = s.kw = k; s.stride_h = s.stride_w = st;
  s.pad_h = s.pad_w = pad; s.dil_h = s.dil_w = dil;
  s.P = pool_output_size(H, k, pad, st, dil, ceil_mode);
  s.Q = pool_output_size(W, k, pad, st, dil, ceil_mode);
  s.x = layout_strides(nhwc, C, H, W);
  s.y = layout_strides(nhwc, C, s.P, s.Q);
  char tag[160];
  std::snprintf(tag, sizeof tag, "%s %s N%lld C%lld %lldx%lld k%lld s%lld p%lld d%lld%s", Dt<T>::name,
                nhwc ? "NHWC" : "NCHW", (long long)N, (long long)C, (long long)H, (long long)W, (long long)k,
                (long long)st, (long long)pad, (long long)dil, ceil_mode ? " ceil" : "");
  const size_t nx = N * C * H * W, ny = N * C * s.P * s.Q;
  std::vector<T> hx = random_tensor<T>(nx, 0.0, 1.0, 1), hdy = random_tensor<T>(ny, 0.0, 1.0, 2);
  Dev<T> x(nx), y(ny), dy(ny), dx(nx);
  Dev<int64_t> idx(ny);
  CUDA_OK(x.up(hx) ? cudaSuccess : cudaErrorUnknown);
  CUDA_OK(dy.up(hdy) ? cudaSuccess : cudaErrorUnknown);
  bool ok = true;
  std::vector<T> hy, hdx;
  std::vector<int64_t> hidx;

  // max pooling
  const PoolRef mr = ref_max_fwd(s, hx);
  CUDA_OK(fc::max_pool2d_fwd<T>(s, x.p, y.p, idx.p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  y.down(hy); idx.down(hidx);
  ok &= compare(std::string("max fwd   ") + tag, hy, mr.y, 0.0, 0.0, Dt<T>::to);
  size_t idx_bad = 0;
  for (size_t i = 0; i < ny; ++i) idx_bad += hidx[i] != mr.idx[i];
  if (idx_bad) { std::printf("    %zu indices differ FAIL\n", idx_bad); ok = false; }
  {
    std::vector<double> ref(nx, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t p = 0; p < s.P; ++p)
          for (int64_t q = 0; q < s.Q; ++q) {
            const int64_t o = s.y.offset(n, c, p, q), f = mr.idx[o];
            if (f >= 0 && f < H * W) ref[s.x.offset(n, c, f / W, f % W)] += Dt<T>::to(hdy[o]);
          }
    CUDA_OK(fc::max_pool2d_bwd<T>(s, dy.p, idx.p, dx.p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    dx.down(hdx);
    ok &= compare(std::string("max bwd   ") + tag, hdx, ref, Dt<T>::atol, Dt<T>::rtol, Dt<T>::to);
  }
  if (dil == 1) {  // avg pooling has no dilation
    std::vector<double> ref(ny, 0.0), gref(nx, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t p = 0; p < s.P; ++p)
          for (int64_t q = 0; q < s.Q; ++q) {
            int64_t h0, h1, w0, w1, div;
            avg_window_ref(s, p, q, cip, dov, h0, h1, w0, w1, div);
            const int64_t o = s.y.offset(n, c, p, q);
            if (div == 0) continue;
            double sum = 0.0;
            for (int64_t h = h0; h < h1; ++h)
              for (int64_t w = w0; w < w1; ++w) {
                sum += Dt<T>::to(hx[s.x.offset(n, c, h, w)]);
                gref[s.x.offset(n, c, h, w)] += Dt<T>::to(hdy[o]) / div;
              }
            ref[o] = sum / div;
          }
    CUDA_OK(fc::avg_pool2d_fwd<T>(s, cip, dov, x.p, y.p, 0));
    CUDA_OK(fc::avg_pool2d_bwd<T>(s, cip, dov, dy.p, dx.p, 0));
    CUDA_OK(cudaDeviceSynchronize());
    y.down(hy); dx.down(hdx);
    char t2[64];
    std::snprintf(t2, sizeof t2, " cip%d div%lld", cip ? 1 : 0, (long long)dov);
    ok &= compare(std::string("avg fwd   ") + tag + t2, hy, ref, Dt<T>::atol, Dt<T>::rtol, Dt<T>::to);
    ok &= compare(std::string("avg bwd   ") + tag + t2, hdx, gref, Dt<T>::atol, Dt<T>::rtol, Dt<T>::to);
  }
  return ok;
}

template <typename T>
static bool test_adaptive(int64_t N, int64_t C, int64_t H, int64_t W, int64_t P, int64_t Q, bool nhwc) {
  Pool2dShape s;
  s.N = N; s.C = C; s.H = H; s.W = W; s.P = P; s.Q = Q;
  s.x = layout_strides(nhwc, C, H, W);
  s.y = layout_strides(nhwc, C, P, Q);
  char tag[160];
  std::snprintf(tag, sizeof tag, "%s %s N%lld C%lld %lldx%lld -> %lldx%lld", Dt<T>::name, nhwc ? "NHWC" : "NCHW",
                (long long)N, (long long)C, (long long)H, (long long)W, (long long)P, (long long)Q);
  const size_t nx = N * C * H * W, ny = N * C * P * Q;
  std::vector<T> hx = random_tensor<T>(nx, 0.5, 1.0, 3), hdy = random_tensor<T>(ny, 0.0, 1.0, 4);
  std::vector<double> ref(ny, 0.0), gref(nx, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q) {
          const int64_t h0 = adaptive_start(p, P, H), h1 = adaptive_end(p, P, H);
          const int64_t w0 = adaptive_start(q, Q, W), w1 = adaptive_end(q, Q, W);
          const double area = double((h1 - h0) * (w1 - w0));
          const int64_t o = s.y.offset(n, c, p, q);
          double sum = 0.0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) {
              sum += Dt<T>::to(hx[s.x.offset(n, c, h, w)]);
              gref[s.x.offset(n, c, h, w)] += Dt<T>::to(hdy[o]) / area;
            }
          ref[o] = sum / area;
        }
  Dev<T> x(nx), y(ny), dy(ny), dx(nx);
  x.up(hx); dy.up(hdy);
  CUDA_OK(fc::adaptive_avg_pool2d_fwd<T>(s, x.p, y.p, 0));
  CUDA_OK(fc::adaptive_avg_pool2d_bwd<T>(s, dy.p, dx.p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<T> hy, hdx;
  y.down(hy); dx.down(hdx);
  bool ok = compare(std::string("adapt fwd ") + tag, hy, ref, Dt<T>::atol, Dt<T>::rtol, Dt<T>::to);
  ok &= compare(std::string("adapt bwd ") + tag, hdx, gref, Dt<T>::atol, Dt<T>::rtol, Dt<T>::to);
  return ok;
}

// ---- batch norm tests ----------------------------------------------------------------------------------
template <typename T>
static bool test_bn(int64_t N, int64_t C, int64_t H, int64_t W, bool nhwc, bool relu, double mean_in, bool affine) {
  using Acc = fc::AccT<T>;
  BatchNormShape s;
  s.N = N; s.C = C; s.H = H; s.W = W;
  s.x = s.y = layout_strides(nhwc, C, H, W);
  char tag[160];
  std::snprintf(tag, sizeof tag, "%s %s N%lld C%lld %lldx%lld mean%g%s%s", Dt<T>::name, nhwc ? "NHWC" : "NCHW",
                (long long)N, (long long)C, (long long)H, (long long)W, mean_in, relu ? " relu" : "",
                affine ? " affine" : "");
  const size_t nx = N * C * H * W;
  const int64_t M = N * H * W;
  const double eps = 1e-5;
  std::vector<T> hx = random_tensor<T>(nx, mean_in, 1.0, 5), hdy = random_tensor<T>(nx, 0.0, 1.0, 6);
  std::vector<Acc> hw(C), hb(C), hrm(C), hrv(C);
  for (int64_t c = 0; c < C; ++c) {
    hw[c] = Acc(0.5 + 0.01 * c); hb[c] = Acc(0.1 * (c % 7) - 0.3);
    hrm[c] = Acc(mean_in + 0.05 * (c % 5)); hrv[c] = Acc(1.0 + 0.1 * (c % 3));
  }
  // Reference in double from the T-rounded inputs.
  std::vector<double> mean(C, 0.0), var(C, 0.0), invstd(C), yref(nx), yeval(nx), dxref(nx), dwref(C, 0.0),
      dbref(C, 0.0);
  auto at = [&](int64_t n, int64_t c, int64_t h, int64_t w) { return s.x.offset(n, c, h, w); };
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t n = 0; n < N; ++n) for (int64_t h = 0; h < H; ++h) for (int64_t w = 0; w < W; ++w)
      mean[c] += Dt<T>::to(hx[at(n, c, h, w)]);
    mean[c] /= double(M);
    for (int64_t n = 0; n < N; ++n) for (int64_t h = 0; h < H; ++h) for (int64_t w = 0; w < W; ++w) {
      const double d = Dt<T>::to(hx[at(n, c, h, w)]) - mean[c];
      var[c] += d * d;
    }
    var[c] /= double(M);
    invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    const double wc = affine ? double(hw[c]) : 1.0, bc = affine ? double(hb[c]) : 0.0;
    const double eis = 1.0 / std::sqrt(double(hrv[c]) + eps);
    for (int64_t n = 0; n < N; ++n) for (int64_t h = 0; h < H; ++h) for (int64_t w = 0; w < W; ++w) {
      const int64_t o = at(n, c, h, w);
      double v = (Dt<T>::to(hx[o]) - mean[c]) * invstd[c] * wc + bc;
      yref[o] = relu ? std::max(v, 0.0) : v;
      double e = (Dt<T>::to(hx[o]) - double(hrm[c])) * eis * wc + bc;
      yeval[o] = relu ? std::max(e, 0.0) : e;
    }
    // Backward of the training forward; relu masks by the reference output.
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t n = 0; n < N; ++n) for (int64_t h = 0; h < H; ++h) for (int64_t w = 0; w < W; ++w) {
      const int64_t o = at(n, c, h, w);
      const double g = (relu && yref[o] <= 0.0) ? 0.0 : Dt<T>::to(hdy[o]);
      sdy += g;
      sdyx += g * (Dt<T>::to(hx[o]) - mean[c]);
    }
    dbref[c] = sdy;
    dwref[c] = sdyx * invstd[c];
    for (int64_t n = 0; n < N; ++n) for (int64_t h = 0; h < H; ++h) for (int64_t w = 0; w < W; ++w) {
      const int64_t o = at(n, c, h, w);
      const double g = (relu && yref[o] <= 0.0) ? 0.0 : Dt<T>::to(hdy[o]);
      const double xh = (Dt<T>::to(hx[o]) - mean[c]) * invstd[c];
      dxref[o] = wc * invstd[c] * (g - sdy / M - xh * (sdyx * invstd[c]) / M);
    }
  }
  Dev<T> x(nx), y(nx), dy(nx), dx(nx);
  Dev<Acc> w(C), b(C), rm(C), rv(C), sm(C), si(C), bv(C), dw(C), db(C);
  const size_t ws_bytes = fc::batch_norm_workspace_bytes(s, sizeof(T));
  Dev<unsigned char> ws(ws_bytes);
  x.up(hx); dy.up(hdy); w.up(hw); b.up(hb); rm.up(hrm); rv.up(hrv);
  const Acc* wp = affine ? w.p : nullptr;
  const Acc* bp = affine ? b.p : nullptr;
  CUDA_OK(fc::batch_norm_train_fwd<T>(s, x.p, wp, bp, eps, relu, y.p, sm.p, si.p, bv.p, ws.p, ws_bytes, 0));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<T> hy, hdx;
  std::vector<Acc> hsm, hsi, hbv, hdw, hdb;
  y.down(hy); sm.down(hsm); si.down(hsi); bv.down(hbv);
  const double sa = sizeof(Acc) == 8 ? 1e-10 : 2e-5;  // statistics tolerance (relative)
  // A large input mean costs the FP32 mean about ulp(mean); y and dx inherit that absolute error.
  const double ya = Dt<T>::atol * 4 + std::fabs(mean_in) * (sizeof(Acc) == 8 ? 1e-13 : 2e-7);
  bool ok = compare(std::string("bn mean   ") + tag, hsm, mean, sa, sa, acc_to_d<Acc>);
  ok &= compare(std::string("bn var    ") + tag, hbv, var, sa * 10, sa * 10, acc_to_d<Acc>);
  ok &= compare(std::string("bn invstd ") + tag, hsi, invstd, sa * 10, sa * 10, acc_to_d<Acc>);
  ok &= compare(std::string("bn y      ") + tag, hy, yref, ya, Dt<T>::rtol * 4, Dt<T>::to);
  // Backward with the kernel's own saved statistics (as autograd would).
  CUDA_OK(fc::batch_norm_bwd<T>(s, dy.p, x.p, y.p, wp, sm.p, si.p, true, relu, dx.p, dw.p, db.p, ws.p, ws_bytes, 0));
  CUDA_OK(cudaDeviceSynchronize());
  dx.down(hdx); dw.down(hdw); db.down(hdb);
  const double ga = sizeof(Acc) == 8 ? 1e-9 : 1e-3;
  ok &= compare(std::string("bn dx     ") + tag, hdx, dxref, 2 * ya, Dt<T>::rtol * 8, Dt<T>::to);
  ok &= compare(std::string("bn dw     ") + tag, hdw, dwref, ga * std::sqrt(double(M)), ga, acc_to_d<Acc>);
  ok &= compare(std::string("bn db     ") + tag, hdb, dbref, ga * std::sqrt(double(M)), ga, acc_to_d<Acc>);
  // Eval forward and eval backward (dx only, no workspace needed).
  CUDA_OK(fc::batch_norm_eval_fwd<T>(s, x.p, wp, bp, rm.p, rv.p, eps, relu, y.p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  y.down(hy);
  ok &= compare(std::string("bn eval y ") + tag, hy, yeval, ya, Dt<T>::rtol * 4, Dt<T>::to);
  if (!relu) {
    std::vector<Acc> eis(C);
    for (int64_t c = 0; c < C; ++c) eis[c] = Acc(1.0 / std::sqrt(double(hrv[c]) + eps));
    Dev<Acc> ei(C);
    ei.up(eis);
    std::vector<double> ref(nx);
    for (int64_t n = 0; n < N; ++n) for (int64_t c = 0; c < C; ++c) for (int64_t h = 0; h < H; ++h)
      for (int64_t ww = 0; ww < W; ++ww) {
        const int64_t o = at(n, c, h, ww);
        ref[o] = Dt<T>::to(hdy[o]) * (affine ? double(hw[c]) : 1.0) * double(eis[c]);
      }
    CUDA_OK(fc::batch_norm_bwd<T>(s, dy.p, x.p, nullptr, wp, rm.p, ei.p, false, false, dx.p, nullptr, nullptr,
                                  nullptr, 0, 0));
    CUDA_OK(cudaDeviceSynchronize());
    dx.down(hdx);
    ok &= compare(std::string("bn eval dx ") + tag, hdx, ref, Dt<T>::atol * 4, Dt<T>::rtol * 4, Dt<T>::to);
  }
  return ok;
}

static bool test_running_stats() {
  const int64_t C = 5, count = 10;
  std::vector<float> m = {1, 2, 3, 4, 5}, v = {1, 1, 2, 2, 3}, rm(C, 0.5f), rv(C, 2.0f);
  Dev<float> dm(C), dv(C), drm(C), drv(C);
  dm.up(m); dv.up(v); drm.up(rm); drv.up(rv);
  CUDA_OK(fc::batch_norm_update_running_stats<float>(C, dm.p, dv.p, count, 0.1, drm.p, drv.p, 0));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> grm, grv;
  drm.down(grm); drv.down(grv);
  std::vector<double> erm(C), erv(C);
  for (int64_t c = 0; c < C; ++c) {
    erm[c] = 0.9 * 0.5 + 0.1 * m[c];
    erv[c] = 0.9 * 2.0 + 0.1 * v[c] * count / (count - 1.0);
  }
  bool ok = compare("running mean f32", grm, erm, 1e-6, 1e-6, f2d);
  ok &= compare("running var f32", grv, erv, 1e-6, 1e-6, f2d);
  return ok;
}

// ---- timing ---------------------------------------------------------------------------------------------
template <typename F>
static float median_ms(F&& launch) {
  for (int i = 0; i < 3; ++i) launch();
  std::vector<float> ms;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(a);
    launch();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0.f;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

static void report(const char* what, float ms, double bytes) {
  std::printf("  %-60s %8.3f ms  %7.1f GB/s (byte floor %.1f MB)\n", what, ms, bytes / (ms * 1e-3) / 1e9, bytes / 1e6);
}

template <typename T>
static bool time_nhwc() {
  using Acc = fc::AccT<T>;
  const double e = sizeof(T);
  {  // ResNet stem max pool: 3x3 s2 p1 over N64 x 112x112 x 64
    Pool2dShape s;
    s.N = 64; s.C = 64; s.H = s.W = 112; s.kh = s.kw = 3; s.stride_h = s.stride_w = 2; s.pad_h = s.pad_w = 1;
    s.P = pool_output_size(s.H, 3, 1, 2, 1, false); s.Q = s.P;
    s.x = channels_last_strides(s.C, s.H, s.W); s.y = channels_last_strides(s.C, s.P, s.Q);
    const size_t nx = s.N * s.C * s.H * s.W, ny = s.N * s.C * s.P * s.Q;
    Dev<T> x(nx), y(ny);
    Dev<int64_t> idx(ny);
    cudaMemset(x.p, 0, nx * sizeof(T));
    const float ms = median_ms([&] { fc::max_pool2d_fwd<T>(s, x.p, y.p, idx.p, 0); });
    report((std::string(Dt<T>::name) + " max_pool2d fwd 3x3s2 N64 C64 112x112").c_str(), ms, nx * e + ny * (e + 8));
    const float ma = median_ms([&] { fc::avg_pool2d_fwd<T>(s, true, 0, x.p, y.p, 0); });
    report((std::string(Dt<T>::name) + " avg_pool2d fwd 3x3s2 N64 C64 112x112").c_str(), ma, nx * e + ny * e);
    CUDA_OK(cudaGetLastError());
  }
  {  // ResNet head global average: N256 x 7x7 x 2048
    Pool2dShape s;
    s.N = 256; s.C = 2048; s.H = s.W = 7; s.P = s.Q = 1;
    s.x = channels_last_strides(s.C, s.H, s.W); s.y = channels_last_strides(s.C, 1, 1);
    const size_t nx = s.N * s.C * s.H * s.W, ny = s.N * s.C;
    Dev<T> x(nx), y(ny);
    cudaMemset(x.p, 0, nx * sizeof(T));
    const float ms = median_ms([&] { fc::adaptive_avg_pool2d_fwd<T>(s, x.p, y.p, 0); });
    report((std::string(Dt<T>::name) + " adaptive_avg_pool2d fwd 7x7->1 N256 C2048").c_str(), ms, nx * e + ny * e);
    CUDA_OK(cudaGetLastError());
  }
  {  // batch norm over N64 x 56x56 x 256
    BatchNormShape s;
    s.N = 64; s.C = 256; s.H = s.W = 56;
    s.x = s.y = channels_last_strides(s.C, s.H, s.W);
    const size_t nx = s.N * s.C * s.H * s.W;
    Dev<T> x(nx), y(nx), dy(nx), dx(nx);
    Dev<Acc> sm(s.C), si(s.C), bv(s.C), dw(s.C), db(s.C), rv(s.C);
    cudaMemset(x.p, 0, nx * sizeof(T));
    cudaMemset(dy.p, 0, nx * sizeof(T));
    cudaMemset(rv.p, 0, s.C * sizeof(Acc));
    const size_t wsb = fc::batch_norm_workspace_bytes(s, sizeof(T));
    Dev<unsigned char> ws(wsb);
    const float mt = median_ms([&] {
      fc::batch_norm_train_fwd<T>(s, x.p, nullptr, nullptr, 1e-5, true, y.p, sm.p, si.p, bv.p, ws.p, wsb, 0);
    });
    report((std::string(Dt<T>::name) + " batch_norm train fwd N64 C256 56x56 (+relu)").c_str(), mt, 3 * nx * e);
    const float me = median_ms([&] {
      fc::batch_norm_eval_fwd<T>(s, x.p, nullptr, nullptr, sm.p, rv.p, 1e-5, false, y.p, 0);
    });
    report((std::string(Dt<T>::name) + " batch_norm eval fwd N64 C256 56x56").c_str(), me, 2 * nx * e);
    const float mb = median_ms([&] {
      fc::batch_norm_bwd<T>(s, dy.p, x.p, nullptr, nullptr, sm.p, si.p, true, false, dx.p, dw.p, db.p, ws.p, wsb, 0);
    });
    report((std::string(Dt<T>::name) + " batch_norm bwd (train) N64 C256 56x56").c_str(), mb, 5 * nx * e);
    CUDA_OK(cudaGetLastError());
  }
  return true;
}

template <typename T>
static bool pool_suite() {
  bool ok = true;
  for (bool nhwc : {false, true}) {
    ok &= test_pool<T>(2, 3, 7, 9, 3, 2, 1, 1, false, nhwc, true, 0);
    ok &= test_pool<T>(2, 16, 8, 8, 2, 2, 0, 1, false, nhwc, false, 0);
    ok &= test_pool<T>(1, 24, 11, 10, 3, 2, 1, 1, true, nhwc, false, 0);
    ok &= test_pool<T>(2, 8, 9, 9, 3, 2, 1, 2, true, nhwc, true, 0);   // dilation: max only
    ok &= test_pool<T>(1, 40, 6, 7, 3, 1, 1, 1, false, nhwc, true, 5);  // divisor_override
    ok &= test_adaptive<T>(2, 3, 7, 9, 3, 4, nhwc);
    ok &= test_adaptive<T>(2, 24, 10, 10, 4, 4, nhwc);
    ok &= test_adaptive<T>(3, 40, 7, 7, 1, 1, nhwc);   // global average path
    ok &= test_adaptive<T>(2, 5, 5, 3, 1, 1, nhwc);    // global average, C not a multiple of V
  }
  return ok;
}

template <typename T>
static bool bn_suite() {
  bool ok = true;
  for (bool nhwc : {false, true}) {
    ok &= test_bn<T>(2, 3, 7, 9, nhwc, false, 0.0, true);
    ok &= test_bn<T>(3, 16, 5, 5, nhwc, true, 0.0, true);
    ok &= test_bn<T>(4, 24, 1, 1, nhwc, false, 0.0, false);
    ok &= test_bn<T>(8, 40, 33, 31, nhwc, false, 0.0, true);  // NHWC: several splits per channel
    ok &= test_bn<T>(8, 2, 63, 65, nhwc, true, 0.0, true);    // NCHW: splits, H·W not a multiple of V
    ok &= test_bn<T>(4, 3, 64, 64, nhwc, false, 0.0, true);   // NCHW: splits, V-wide chunks
  }
  return ok;
}

int main() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::printf("no CUDA device\n");
    return 1;
  }
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  bool ok = true;
  std::printf("== pooling ==\n");
  ok &= pool_suite<float>();
  ok &= pool_suite<double>();
  ok &= pool_suite<__half>();
  ok &= pool_suite<__nv_bfloat16>();
  std::printf("== batch norm ==\n");
  ok &= bn_suite<float>();
  ok &= bn_suite<double>();
  ok &= bn_suite<__half>();
  ok &= bn_suite<__nv_bfloat16>();
  // Large mean, unit std: the statistics must not lose the variance to cancellation.
  for (bool nhwc : {false, true}) {
    ok &= test_bn<float>(16, 8, 32, 32, nhwc, false, 1e3, true);
    ok &= test_bn<double>(16, 8, 32, 32, nhwc, false, 1e3, true);
  }
  ok &= test_running_stats();
  std::printf("== %s ==\n", ok ? "ALL PASSED" : "FAILURES");
  if (!ok) return 1;
#if defined(FASTCONV_EMU)
  return 0;  // the emulated device has no timeline: checks only
#endif
  std::printf("== timing (NHWC, median of 20) ==\n");
  ok &= time_nhwc<__half>();
  ok &= time_nhwc<float>();
  ok &= time_nhwc<__nv_bfloat16>();
  return ok ? 0 : 1;
}
