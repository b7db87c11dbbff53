// igemm_sm90_harness.cu — standalone check + timing of the Hopper implicit GEMM (conv2d_igemm_sm90.cu:
// warp-specialised wgmma + TMA): fprop, dgrad and wgrad.
//
//   make -C csrc dev && ./csrc/build/dev/igemm_sm90_harness      (an H100/H200; the emulator: make emu-test)
//
// 1. Checks, f16 / bf16 / float (TF32), NHWC x / KRSC w / NPQK y, one shape per ResNet-50 / GoogLeNet
//    layer class at a small batch (1x1 expand and reduce, 3x3, 3x3 stride 2, 1x1 stride 2, 5x5, 7x7
//    maps), odd sizes (9x9, K = 40 not a multiple of the tile, C = 24), padding/dilation 2, groups 2
//    with C/groups = 128 bytes of channels, a split-K shape (batch 1, 7x7, K = 9·512), and the large
//    tile configuration (132 tiles of 128 x 128, f16), the wide one (133 tiles of 128 x 64, bf16; wgrad
//    with 256 filters over one 64-channel tap takes it too), and each configuration forced (128x128 on tails,
//    64x64 on the large case, split-K on ordinary shapes); each as plain fprop, fprop + bias, and the fused epilogue (scale, bias, residual,
//    ReLU). y is pre-filled with NaN so an unwritten element fails. Reference: the same rounded inputs
//    (for TF32: truncated to TF32, the tensor core's reading of FP32) on the CPU in double.
//    Pass: |gpu − ref| <= atol + rtol·|ref| + 2^-20·Σ|a·b| (FP32 accumulation), rtol = one unit of the
//    output format's rounding (2^-10 half, 2^-7 bf16, 2^-23 float), atol = 1e-3 (16-bit), 1e-5 (float).
//    For TF32 also: the result is farther from the exact FP32 reference than the tolerance on some
//    element (the inputs have low mantissa bits set), so a silently exact FP32 path would be caught.
//    dgrad (stride 1 as an fprop of the flipped filter; stride 2 and 3, groups, 1x1 with empty residue
//    classes, strided with dilation 2 and 3, by residue classes) against a double scatter-form reference.
//    wgrad (f16/bf16: MN-major wgmma operands; split-K by the rule, with no workspace, and each tile
//    forced) on the layer classes, odd C/K, dilation, groups with chunks crossing the group boundary,
//    against a double reference.
//    Refusals: C = 3 (TMA strides), strided dgrad with forced split-K, float wgrad, wgrad with
//    K·2 bytes not a multiple of 16, forced split-K wgrad with one k-iteration, an sm_80 device.
// 2. Timing (a GPU only): fprop + folded-BN + ReLU, and wgrad, on ResNet-50 layers at N = 32 and 256 (CUDA
//    events, warm-up, median of kReps), ms and TFLOP/s against the H200's 989 TFLOP/s dense f16/bf16 peak.
// Exit status 1 when any check fails or a CUDA call errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fastconv/cuda_api.h"
#include "harness.h"

using Case = IgemmCase;

#if defined(FASTCONV_EMU)
#include "runtime.h"
#endif

using namespace fastconv;
using namespace fastconv::cuda;

constexpr int kWarmup = 3;
constexpr int kReps = 20;
constexpr double kH200DenseTflops = 989.0;


template <typename T> const char* type_name();
template <> const char* type_name<__half>() { return "f16"; }
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <> const char* type_name<float>() { return "tf32"; }
template <typename T> double rtol() { return sizeof(T) == 4 ? std::ldexp(1.0, -23) : 0.0; }
template <> double rtol<__half>() { return 1.0 / 1024; }
template <> double rtol<__nv_bfloat16>() { return 1.0 / 128; }
template <typename T> double atol() { return sizeof(T) == 4 ? 1e-5 : 1e-3; }

// What the tensor core multiplies: 16-bit values as stored; FP32 with its low 13 mantissa bits dropped.
template <typename T>
double mma_value(T v) {
  if constexpr (sizeof(T) == 4) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u &= 0xffffe000u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  } else {
    return to_f(v);
  }
}

uint32_t g_rng = 12345;
float rnd() {
  g_rng = g_rng * 1664525u + 1013904223u;
  return static_cast<float>((g_rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() { cudaFree(p); }
};

int g_failures = 0;

// Reference fprop in double on the values the tensor core reads; also Σ|a·b| per output for the tolerance,
// and (exact != null) the reference on the exact stored values.
template <typename T>
void ref_fprop(const Conv2dShape& s, const std::vector<T>& x, const std::vector<T>& w, std::vector<double>& ref,
               std::vector<double>& mag, std::vector<double>* exact) {
  const int64_t Cg = s.Cg(), Kg = s.Kg();
  ref.assign(size_t(s.N * s.P * s.Q * s.K), 0.0);
  mag.assign(ref.size(), 0.0);
  if (exact) exact->assign(ref.size(), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t g = k / Kg;
          double acc = 0, m = 0, ex = 0;
          for (int64_t r = 0; r < s.R; ++r) {
            const int64_t h = s.in_h(p, r);
            if (h < 0 || h >= s.H) continue;
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t ww = s.in_w(q, t);
              if (ww < 0 || ww >= s.W) continue;
              for (int64_t c = 0; c < Cg; ++c) {
                const T xv = x[size_t(((n * s.H + h) * s.W + ww) * s.C + g * Cg + c)];
                const T wv = w[size_t(((k * s.R + r) * s.S + t) * Cg + c)];
                const double a = mma_value(xv), b = mma_value(wv);
                acc += a * b;
                m += std::fabs(a * b);
                if (exact) ex += double(to_f(xv)) * double(to_f(wv));
              }
            }
          }
          const size_t o = size_t(((n * s.P + p) * s.Q + q) * s.K + k);
          ref[o] = acc;
          mag[o] = m;
          if (exact) (*exact)[o] = ex;
        }
}

template <typename T>
bool compare(const char* what, const Case& c, const std::vector<T>& got, const std::vector<double>& ref,
             const std::vector<double>& mag) {
  double worst = 0;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = to_f(got[i]);
    const double tol = atol<T>() + rtol<T>() * std::fabs(ref[i]) + std::ldexp(mag[i], -20);
    const double e = std::fabs(g - ref[i]);
    if (!(e <= tol)) {
      if (bad++ == 0) first = i;
    }
    if (e / tol > worst || std::isnan(e)) worst = std::isnan(e) ? INFINITY : e / tol;
  }
  std::printf("%s %-5s %-26s %-12s max err/tol %.3f\n", bad ? "FAIL" : "ok  ", type_name<T>(), c.name, what, worst);
  if (bad) {
    std::printf("     %zu of %zu wrong; first at %zu: got %.6g want %.6g\n", bad, ref.size(), first, double(to_f(got[first])),
                ref[first]);
    ++g_failures;
  }
  return bad == 0;
}

// Which entry point: the launcher's tile rule, or one configuration forced.
enum Variant { kRule, kForce128, kForceWide, kForce64, kForceSplitK };
const char* variant_name(Variant v) {
  return v == kRule ? "" : v == kForce128 ? " [128x128]" : v == kForceWide ? " [128x64]" : v == kForce64 ? " [64x64]"
                                                                                                           : " [splitk]";
}
template <typename T>
cudaError_t run_variant(Variant v, const Conv2dShape& s, const T* x, const T* w, const T* b, T* y, void* ws,
                        size_t ws_bytes) {
  switch (v) {
    case kForce128: return conv2d_implicit_gemm_sm90_128x128_fprop<T>(s, x, w, b, y, ws, ws_bytes, 0);
    case kForceWide: return conv2d_implicit_gemm_sm90_128x64_fprop<T>(s, x, w, b, y, ws, ws_bytes, 0);
    case kForce64: return conv2d_implicit_gemm_sm90_64x64_fprop<T>(s, x, w, b, y, ws, ws_bytes, 0);
    case kForceSplitK: return conv2d_implicit_gemm_sm90_splitk_fprop<T>(s, x, w, b, y, ws, ws_bytes, 0);
    default: return conv2d_implicit_gemm_sm90_fprop<T>(s, x, w, b, y, ws, ws_bytes, 0);
  }
}
size_t variant_ws(Variant v, const Conv2dShape& s, int eb, ConvDir dir = ConvDir::kFprop,
                  size_t lim = size_t(1) << 30) {
  switch (v) {
    case kForce128: return conv2d_implicit_gemm_sm90_128x128_workspace_bytes(s, dir, eb, lim);
    case kForceWide: return conv2d_implicit_gemm_sm90_128x64_workspace_bytes(s, dir, eb, lim);
    case kForce64: return conv2d_implicit_gemm_sm90_64x64_workspace_bytes(s, dir, eb, lim);
    case kForceSplitK: return conv2d_implicit_gemm_sm90_splitk_workspace_bytes(s, dir, eb, lim);
    default: return conv2d_implicit_gemm_sm90_workspace_bytes(s, dir, eb, lim);
  }
}
template <typename T>
cudaError_t run_wgrad_variant(Variant v, const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws,
                              size_t ws_bytes) {
  switch (v) {
    case kForce128: return conv2d_implicit_gemm_sm90_128x128_wgrad<T>(s, dy, x, dw, ws, ws_bytes, 0);
    case kForceWide: return conv2d_implicit_gemm_sm90_128x64_wgrad<T>(s, dy, x, dw, ws, ws_bytes, 0);
    case kForce64: return conv2d_implicit_gemm_sm90_64x64_wgrad<T>(s, dy, x, dw, ws, ws_bytes, 0);
    case kForceSplitK: return conv2d_implicit_gemm_sm90_splitk_wgrad<T>(s, dy, x, dw, ws, ws_bytes, 0);
    default: return conv2d_implicit_gemm_sm90_wgrad<T>(s, dy, x, dw, ws, ws_bytes, 0);
  }
}

// can_implement must accept the harness's supported shapes; a refusal is a failure.
template <typename T>
bool accepted(const Conv2dShape& s, ConvDir dir, const Case& c, const char* what) {
  if (conv2d_implicit_gemm_sm90_can_implement(s, dir, sizeof(T))) return true;
  std::printf("FAIL %-5s %-26s %s can_implement refused a supported shape\n", type_name<T>(), c.name, what);
  ++g_failures;
  return false;
}

// conv2d_bn_train's kernel: y as plain fprop (against the reference), and per channel the mean, biased
// variance and 1/sqrt(var + eps) of that y as rounded to T, recomputed here in double from the y it
// returned (the statistics the caller normalises with). Partial last tiles, groups and K past a tile
// come from the cases.
template <typename T>
bool check_stats(const Case& c, const Conv2dShape& s, const T* dx, const T* dw, const std::vector<double>& ref,
                 const std::vector<double>& mag) {
  const size_t ny = ref.size(), K = size_t(s.K), rows = ny / K;
  const double eps = 1e-5;
  const size_t ws_bytes = conv2d_implicit_gemm_sm90_fprop_stats_workspace_bytes(s);
  DevBuf<unsigned char> ws(ws_bytes);
  DevBuf<T> dy(ny);
  DevBuf<float> dmean(K), dinv(K), dvar(K);
  CUDA_CHECK(cudaMemset(dy.p, 0xff, ny * sizeof(T)));
  CUDA_CHECK(cudaMemset(ws.p, 0xff, ws_bytes));  // NaN partials: a slot the kernel skips or misses shows
  CUDA_CHECK(conv2d_implicit_gemm_sm90_fprop_stats<T>(s, dx, dw, dy.p, dmean.p, dinv.p, dvar.p, eps, ws.p, ws_bytes, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> got(ny);
  std::vector<float> mean(K), inv(K), var(K);
  CUDA_CHECK(cudaMemcpy(got.data(), dy.p, ny * sizeof(T), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(mean.data(), dmean.p, K * 4, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(inv.data(), dinv.p, K * 4, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(var.data(), dvar.p, K * 4, cudaMemcpyDeviceToHost));
  bool ok = compare("stats y", c, got, ref, mag);
  double worst = 0.0;
  size_t bad = 0;
  for (size_t k = 0; k < K; ++k) {
    double m = 0.0, m2 = 0.0;
    for (size_t r = 0; r < rows; ++r) m += to_f(got[r * K + k]);
    m /= double(rows);
    for (size_t r = 0; r < rows; ++r) m2 += (to_f(got[r * K + k]) - m) * (to_f(got[r * K + k]) - m);
    const double v = m2 / double(rows), sd = std::sqrt(v);
    // FP32 slot merges: errors of a few ulps of the spread (and of the mean for the mean).
    const double em = std::fabs(mean[k] - m) / (1e-5 * (std::fabs(m) + sd) + 1e-30);
    const double ev = std::fabs(var[k] - v) / (1e-4 * v + 1e-12);
    const double ei = std::fabs(inv[k] - 1.0 / std::sqrt(v + eps)) / (1e-5 / std::sqrt(v + eps));
    const double e = std::max(em, std::max(ev, ei));
    if (!(e <= 1.0)) ++bad;  // NaN fails
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  std::printf("%s %-5s %-26s %-12s max err/tol %.3f\n", bad ? "FAIL" : "ok  ", type_name<T>(), c.name, "stats", worst);
  if (bad) ++g_failures;
  return ok && bad == 0;
}

template <typename T>
bool check_fprop(const Case& c, Variant variant = kRule) {
  const Conv2dShape s = make_shape(c);
  if (!accepted<T>(s, ConvDir::kFprop, c, "fprop")) return false;
  const size_t nx = size_t(s.N * s.H * s.W * s.C), nw = size_t(s.K * s.R * s.S * s.Cg()), ny = size_t(s.N * s.P * s.Q * s.K);
  std::vector<T> hx(nx), hw(nw), hres(ny), hb(size_t(s.K));
  std::vector<float> scale(size_t(s.K)), bias(size_t(s.K));
  for (auto& v : hx) v = to_t<T>(rnd());
  for (auto& v : hw) v = to_t<T>(rnd() * 0.25f);
  for (auto& v : hres) v = to_t<T>(rnd());
  for (size_t k = 0; k < hb.size(); ++k) {
    hb[k] = to_t<T>(rnd());
    scale[k] = 0.5f + 0.5f * std::fabs(rnd());
    bias[k] = rnd();
  }
  std::vector<double> ref, mag, exact;
  ref_fprop(s, hx, hw, ref, mag, sizeof(T) == 4 ? &exact : nullptr);

  DevBuf<T> dx(nx), dw(nw), dy(ny), dres(ny), db(size_t(s.K));
  DevBuf<float> dscale(size_t(s.K)), dbias(size_t(s.K));
  const size_t ws_bytes = variant_ws(variant, s, sizeof(T));
  DevBuf<unsigned char> ws(ws_bytes);
  CUDA_CHECK(cudaMemcpy(dx.p, hx.data(), nx * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dw.p, hw.data(), nw * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dres.p, hres.data(), ny * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(db.p, hb.data(), hb.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dscale.p, scale.data(), scale.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dbias.p, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice));
  std::vector<T> got(ny);
  bool ok = true;

  // plain
  CUDA_CHECK(cudaMemset(dy.p, 0xff, ny * sizeof(T)));
  CUDA_CHECK(run_variant<T>(variant, s, dx.p, dw.p, nullptr, dy.p, ws.p, ws_bytes));
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(got.data(), dy.p, ny * sizeof(T), cudaMemcpyDeviceToHost));
  const std::string fname = std::string("fprop") + variant_name(variant);
  ok &= compare(fname.c_str(), c, got, ref, mag);
  if (variant != kRule) return ok;
  if constexpr (sizeof(T) == 4) {
    // TF32 ran: some element is farther from the exact product sum than FP32 accumulation explains.
    bool differs = false;
    for (size_t i = 0; i < ny && !differs; ++i)
      differs = std::fabs(double(got[i]) - exact[i]) > 1e-5 + std::ldexp(mag[i], -20) + 1e-6 * std::fabs(exact[i]);
    std::printf("%s %-5s %-26s %-12s %s\n", differs ? "ok  " : "FAIL", "tf32", c.name, "tf32-used",
                differs ? "differs from exact FP32 by more than FP32 rounding" : "bit-close to exact FP32");
    if (!differs) ++g_failures;
    ok &= differs;
  }

  // + bias (unfused entry point)
  std::vector<double> refb(ref);
  for (size_t i = 0; i < ny; ++i) refb[i] += to_f(hb[i % size_t(s.K)]);
  CUDA_CHECK(cudaMemset(dy.p, 0xff, ny * sizeof(T)));
  CUDA_CHECK(conv2d_implicit_gemm_sm90_fprop<T>(s, dx.p, dw.p, db.p, dy.p, ws.p, ws_bytes, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(got.data(), dy.p, ny * sizeof(T), cudaMemcpyDeviceToHost));
  ok &= compare("fprop+bias", c, got, refb, mag);
  // the bias needs no workspace (the epilogue reads it in T): the rule's plan without any
  CUDA_CHECK(cudaMemset(dy.p, 0xff, ny * sizeof(T)));
  CUDA_CHECK(conv2d_implicit_gemm_sm90_fprop<T>(s, dx.p, dw.p, db.p, dy.p, nullptr, 0, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(got.data(), dy.p, ny * sizeof(T), cudaMemcpyDeviceToHost));
  ok &= compare("bias no-ws", c, got, refb, mag);

  // fused epilogue
  std::vector<double> reff(ny);
  for (size_t i = 0; i < ny; ++i) {
    const size_t k = i % size_t(s.K);
    const double v = ref[i] * scale[k] + bias[k] + to_f(hres[i]);
    reff[i] = v > 0 ? v : 0;
  }
  CUDA_CHECK(cudaMemset(dy.p, 0xff, ny * sizeof(T)));
  CUDA_CHECK(conv2d_implicit_gemm_sm90_fprop_fused<T>(s, dx.p, dw.p, dscale.p, dbias.p, dres.p, true, dy.p, nullptr, 0, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(got.data(), dy.p, ny * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<double> magf(mag);
  for (size_t i = 0; i < ny; ++i) magf[i] *= scale[i % size_t(s.K)];
  ok &= compare("fused", c, got, reff, magf);
  if constexpr (sizeof(T) == 2) {
    if (variant == kRule) ok &= check_stats<T>(c, s, dx.p, dw.p, ref, mag);
  }
  return ok;
}

// Calls f(y index, x index, w index) for every multiply-add of the conv (each tap that lands inside x):
// the scatter form the dgrad and wgrad references sum over.
template <typename F>
void each_mac(const Conv2dShape& s, F f) {
  const int64_t Cg = s.Cg(), Kg = s.Kg();
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const size_t yi = size_t(((n * s.P + p) * s.Q + q) * s.K + k);
          const int64_t g = k / Kg;
          for (int64_t r = 0; r < s.R; ++r) {
            const int64_t h = s.in_h(p, r);
            if (h < 0 || h >= s.H) continue;
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t ww = s.in_w(q, t);
              if (ww < 0 || ww >= s.W) continue;
              for (int64_t c2 = 0; c2 < Cg; ++c2)
                f(yi, size_t(((n * s.H + h) * s.W + ww) * s.C + g * Cg + c2), size_t(((k * s.R + r) * s.S + t) * Cg + c2));
            }
          }
        }
}

template <typename T>
bool check_dgrad(const Case& c) {
  const Conv2dShape s = make_shape(c);
  if (!accepted<T>(s, ConvDir::kDgrad, c, "dgrad")) return false;
  const size_t nx = size_t(s.N * s.H * s.W * s.C), nw = size_t(s.K * s.R * s.S * s.Cg()), ny = size_t(s.N * s.P * s.Q * s.K);
  std::vector<T> hdy(ny), hw(nw);
  for (auto& v : hdy) v = to_t<T>(rnd());
  for (auto& v : hw) v = to_t<T>(rnd() * 0.25f);
  std::vector<double> ref(nx, 0.0), mag(nx, 0.0);
  each_mac(s, [&](size_t yi, size_t xi, size_t wi) {
    const double prod = mma_value(hdy[yi]) * mma_value(hw[wi]);
    ref[xi] += prod;
    mag[xi] += std::fabs(prod);
  });
  DevBuf<T> ddy(ny), dw(nw), ddx(nx);
  const size_t ws_bytes = conv2d_implicit_gemm_sm90_workspace_bytes(s, ConvDir::kDgrad, sizeof(T), size_t(1) << 30);
  DevBuf<unsigned char> ws(ws_bytes);
  CUDA_CHECK(cudaMemcpy(ddy.p, hdy.data(), ny * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dw.p, hw.data(), nw * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(ddx.p, 0xff, nx * sizeof(T)));
  CUDA_CHECK(conv2d_implicit_gemm_sm90_dgrad<T>(s, ddy.p, dw.p, ddx.p, ws.p, ws_bytes, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> got(nx);
  CUDA_CHECK(cudaMemcpy(got.data(), ddx.p, nx * sizeof(T), cudaMemcpyDeviceToHost));
  bool ok = compare("dgrad", c, got, ref, mag);
  if constexpr (sizeof(T) == 2) {
    // 16-bit reads w itself (no flipped copy): no workspace at all, the rule's plan without split-K.
    CUDA_CHECK(cudaMemset(ddx.p, 0xff, nx * sizeof(T)));
    CUDA_CHECK(conv2d_implicit_gemm_sm90_dgrad<T>(s, ddy.p, dw.p, ddx.p, nullptr, 0, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(got.data(), ddx.p, nx * sizeof(T), cudaMemcpyDeviceToHost));
    ok &= compare("dgrad no-ws", c, got, ref, mag);
  }
  return ok;
}

// wgrad: dw[k][r][s][c] = Σ_{n,p,q} dy[n][p][q][k] · x[n][in_h(p, r)][in_w(q, s)][g·Cg + c], against a double
// reference; dw pre-filled with NaN. `ws_limit` caps the workspace (the rule then takes fewer K slices).
template <typename T>
bool check_wgrad(const Case& c, Variant variant = kRule, size_t ws_limit = size_t(1) << 30) {
  const Conv2dShape s = make_shape(c);
  if (!accepted<T>(s, ConvDir::kWgrad, c, "wgrad")) return false;
  const size_t nx = size_t(s.N * s.H * s.W * s.C), nw = size_t(s.K * s.R * s.S * s.Cg()), ny = size_t(s.N * s.P * s.Q * s.K);
  std::vector<T> hdy(ny), hx(nx);
  for (auto& v : hdy) v = to_t<T>(rnd());
  for (auto& v : hx) v = to_t<T>(rnd());
  std::vector<double> ref(nw, 0.0), mag(nw, 0.0);
  each_mac(s, [&](size_t yi, size_t xi, size_t wi) {
    const double prod = mma_value(hdy[yi]) * mma_value(hx[xi]);
    ref[wi] += prod;
    mag[wi] += std::fabs(prod);
  });
  const size_t ws_bytes = variant_ws(variant, s, sizeof(T), ConvDir::kWgrad, ws_limit);
  DevBuf<T> ddy(ny), dx(nx), ddw(nw);
  DevBuf<unsigned char> ws(ws_bytes);
  CUDA_CHECK(cudaMemcpy(ddy.p, hdy.data(), ny * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dx.p, hx.data(), nx * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(ddw.p, 0xff, nw * sizeof(T)));
  void* wsp = ws_bytes ? static_cast<void*>(ws.p) : nullptr;
  CUDA_CHECK(run_wgrad_variant<T>(variant, s, ddy.p, dx.p, ddw.p, wsp, ws_bytes));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> got(nw);
  CUDA_CHECK(cudaMemcpy(got.data(), ddw.p, nw * sizeof(T), cudaMemcpyDeviceToHost));
  std::string what = std::string("wgrad") + variant_name(variant) + (ws_limit < (size_t(1) << 30) ? " ws=0" : "") +
                     (ws_bytes ? " split" : "");
  return compare(what.c_str(), c, got, ref, mag);
}

void expect(bool cond, const char* what) {
  std::printf("%s refusal: %s\n", cond ? "ok  " : "FAIL", what);
  if (!cond) ++g_failures;
}

void check_refusals() {
  const Conv2dShape stem = make_shape({"stem", 1, 3, 16, 16, 64, 7, 7, 3, 2, 1, 1});
  expect(!conv2d_implicit_gemm_sm90_can_implement(stem, ConvDir::kFprop, 2), "C = 3 (TMA needs 16-byte pixel strides)");
  const Conv2dShape s2 = make_shape({"s2", 1, 64, 14, 14, 64, 3, 3, 1, 2, 1, 1});
  expect(conv2d_implicit_gemm_sm90_can_implement(s2, ConvDir::kFprop, 2), "stride-2 fprop is accepted");
  expect(conv2d_implicit_gemm_sm90_can_implement(s2, ConvDir::kDgrad, 2), "stride-2 dgrad (residue classes) is accepted");
  expect(!conv2d_implicit_gemm_sm90_splitk_can_implement(s2, ConvDir::kDgrad, 2), "forced split-K on a strided dgrad");
  const Conv2dShape s2d2 = make_shape({"s2d2", 1, 64, 14, 14, 64, 3, 3, 2, 2, 2, 1});
  expect(conv2d_implicit_gemm_sm90_can_implement(s2d2, ConvDir::kDgrad, 2), "strided dgrad with dilation 2 is accepted");
  expect(conv2d_implicit_gemm_sm90_can_implement(s2, ConvDir::kWgrad, 2), "16-bit wgrad is accepted");
  expect(!conv2d_implicit_gemm_sm90_can_implement(s2, ConvDir::kWgrad, 4), "float (TF32) wgrad: no MN-major tf32 wgmma");
  const Conv2dShape k36 = make_shape({"k36", 1, 64, 8, 8, 36, 3, 3, 1, 1, 1, 1});
  expect(!conv2d_implicit_gemm_sm90_can_implement(k36, ConvDir::kWgrad, 2), "wgrad with K = 36 (dy rows not 16-byte strided)");
  const Conv2dShape tiny = make_shape({"tiny", 1, 64, 4, 4, 64, 1, 1, 0, 1, 1, 1});
  expect(!conv2d_implicit_gemm_sm90_splitk_can_implement(tiny, ConvDir::kWgrad, 2),
         "forced split-K wgrad with one k-iteration (N·P·Q = 16)");
  const Conv2dShape g = make_shape({"groups", 1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 2});
  expect(!conv2d_implicit_gemm_sm90_can_implement(g, ConvDir::kFprop, 2), "groups with C/groups = 32 f16 (< 128 bytes)");
  expect(!conv2d_implicit_gemm_sm90_can_implement(s2, ConvDir::kFprop, 8), "8-byte elements");
#if defined(FASTCONV_EMU)
  fc_emu::set_device_arch(80);
  expect(!conv2d_implicit_gemm_sm90_can_implement(s2, ConvDir::kFprop, 2), "an sm_80 device");
  fc_emu::set_device_arch(90);
#endif
}

// One shape per layer class, small batch (the emulator runs every thread).
const Case kCases[] = {
    {"1x1 64->256 14x14", 1, 64, 14, 14, 256, 1, 1, 0, 1, 1, 1},
    {"3x3 64 s1 p1 14x14", 2, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1},
    {"3x3 128 s2 p1 15x15", 1, 128, 15, 15, 128, 3, 3, 1, 2, 1, 1},
    {"1x1 s2 64->128 14x14", 1, 64, 14, 14, 128, 1, 1, 0, 2, 1, 1},
    {"5x5 32->48 p2 9x9", 1, 32, 9, 9, 48, 5, 5, 2, 1, 1, 1},
    {"3x3 C24 K40 p2 d2 9x9", 2, 24, 9, 9, 40, 3, 3, 2, 1, 2, 1},
    {"3x3 g2 C256 K128 7x7", 1, 256, 7, 7, 128, 3, 3, 1, 1, 1, 2},
    {"split-K 3x3 512 7x7 N1", 1, 512, 7, 7, 64, 3, 3, 1, 1, 1, 1},
};
// 132 tiles of 128 x 128: the large configuration (f16 only: the emulator runs all 138 M multiply-adds).
const Case kLargeCase = {"large tile 1x1 64->128 130x130", 1, 64, 130, 130, 128, 1, 1, 0, 1, 1, 1};
// 133 tiles of 128 x 64 (Kg = 64): the rule's wide configuration.
const Case kWideCase = {"wide tile 1x1 64->64 130x130", 1, 64, 130, 130, 64, 1, 1, 0, 1, 1, 1};
const Case kDgradCases[] = {
    {"dgrad 3x3 64 p1 14x14", 1, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1},
    {"dgrad 3x3 s2 p1 C32 K64 14x14", 1, 32, 14, 14, 64, 3, 3, 1, 2, 1, 1},
    {"dgrad 1x1 s2 C24 K64 9x9", 2, 24, 9, 9, 64, 1, 1, 0, 2, 1, 1},
    {"dgrad 5x5 s3 p2 C16 K40 11x11", 1, 16, 11, 11, 40, 5, 5, 2, 3, 1, 1},
    {"dgrad 3x3 s2 p2 g2 C32 K128 9x9", 1, 32, 9, 9, 128, 3, 3, 2, 2, 1, 2},
    {"dgrad 1x1 64->32 9x9", 2, 32, 9, 9, 64, 1, 1, 0, 1, 1, 1},
    {"dgrad 3x3 d2 p2 C40 K24", 1, 40, 9, 9, 24, 3, 3, 2, 1, 2, 1},
    // Strided and dilated: gcd(d, s) = 2 (classes of taps step 1, dilation 1; odd rows get none), 1 (step 2,
    // dilation 3), and stride 4 dilation 2 (step 2, dilation 1; half the classes empty).
    {"dgrad 3x3 s2 d2 p2 C16 K32 10x10", 1, 16, 10, 10, 32, 3, 3, 2, 2, 2, 1},
    {"dgrad 3x3 s2 d3 p3 C24 K16 11x11", 2, 24, 11, 11, 16, 3, 3, 3, 2, 3, 1},
    {"dgrad 5x5 s4 d2 p4 C16 K24 13x13", 1, 16, 13, 13, 24, 5, 5, 4, 4, 2, 1},
};

const Case kWgradCases[] = {
    {"wgrad 3x3 64 p1 8x8", 2, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1},
    {"wgrad 1x1 64->256 14x14", 1, 64, 14, 14, 256, 1, 1, 0, 1, 1, 1},
    {"wgrad 3x3 s2 128 15x15", 1, 128, 15, 15, 128, 3, 3, 1, 2, 1, 1},
    {"wgrad 3x3 C24 K40 p2 d2 9x9", 2, 24, 9, 9, 40, 3, 3, 2, 1, 2, 1},
    {"wgrad 3x3 g2 C64 K64 7x7", 2, 64, 7, 7, 64, 3, 3, 1, 1, 1, 2},
    {"wgrad 5x5 s3 p2 C16 K40 11x11", 1, 16, 11, 11, 40, 5, 5, 2, 3, 1, 1},
    {"wgrad split 1x1 64 16x16 N4", 4, 64, 16, 16, 64, 1, 1, 0, 1, 1, 1},
};

#if !defined(FASTCONV_EMU)
template <typename T>
void time_fprop(const Case& c) {
  const Conv2dShape s = make_shape(c);
  const size_t nx = size_t(s.N * s.H * s.W * s.C), nw = size_t(s.K * s.R * s.S * s.Cg()), ny = size_t(s.N * s.P * s.Q * s.K);
  DevBuf<T> dx(nx), dw(nw), dy(ny);
  DevBuf<float> sc(size_t(s.K)), bi(size_t(s.K));
  cudaMemset(dx.p, 0, nx * sizeof(T));
  cudaMemset(dw.p, 0, nw * sizeof(T));
  cudaMemset(sc.p, 0, size_t(s.K) * 4);
  cudaMemset(bi.p, 0, size_t(s.K) * 4);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int i = 0; i < kWarmup + kReps; ++i) {
    cudaEventRecord(a);
    conv2d_implicit_gemm_sm90_fprop_fused<T>(s, dx.p, dw.p, sc.p, bi.p, nullptr, true, dy.p, nullptr, 0, 0);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i >= kWarmup) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  const double tflops = s.fprop_flops() / (med * 1e-3) / 1e12;
  std::printf("time %-5s %-28s N=%-4lld %8.4f ms (IQR %.4f-%.4f) %7.1f TFLOP/s %5.1f%% of %.0f\n", type_name<T>(),
              c.name, static_cast<long long>(c.N), med, ms[ms.size() / 4], ms[3 * ms.size() / 4], tflops,
              100 * tflops / kH200DenseTflops, kH200DenseTflops);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

// wgrad (split-K by the rule, its workspace allocated once): the conv's FLOPs at the same peak.
template <typename T>
void time_wgrad(const Case& c) {
  const Conv2dShape s = make_shape(c);
  const size_t nx = size_t(s.N * s.H * s.W * s.C), nw = size_t(s.K * s.R * s.S * s.Cg()), ny = size_t(s.N * s.P * s.Q * s.K);
  DevBuf<T> dx(nx), ddw(nw), ddy(ny);
  cudaMemset(dx.p, 0, nx * sizeof(T));
  cudaMemset(ddy.p, 0, ny * sizeof(T));
  const size_t ws_bytes = conv2d_implicit_gemm_sm90_workspace_bytes(s, ConvDir::kWgrad, sizeof(T), size_t(1) << 30);
  DevBuf<unsigned char> ws(ws_bytes);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int i = 0; i < kWarmup + kReps; ++i) {
    cudaEventRecord(a);
    conv2d_implicit_gemm_sm90_wgrad<T>(s, ddy.p, dx.p, ddw.p, ws_bytes ? ws.p : nullptr, ws_bytes, 0);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i >= kWarmup) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  const double tflops = s.fprop_flops() / (med * 1e-3) / 1e12;
  std::printf("time wgrad %-5s %-22s N=%-4lld %8.4f ms (IQR %.4f-%.4f) %7.1f TFLOP/s %5.1f%% of %.0f\n",
              type_name<T>(), c.name, static_cast<long long>(c.N), med, ms[ms.size() / 4], ms[3 * ms.size() / 4],
              tflops, 100 * tflops / kH200DenseTflops, kH200DenseTflops);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}
#endif

int main() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    std::printf("no CUDA device\n");
    return 1;
  }
  if (major != 9) {
    std::printf("igemm_sm90_harness: needs a compute capability 9.0 device (got %d.x): nothing to check\n", major);
    return 0;
  }
  check_refusals();
  for (const Case& c : kCases) {
    check_fprop<__half>(c);
    check_fprop<__nv_bfloat16>(c);
  }
  for (const Case& c : kCases) check_fprop<float>(c);
  check_fprop<__half>(kLargeCase);
  // Each tile configuration forced on shapes the rule would not give it (tails, few tiles).
  check_fprop<__half>(kCases[5], kForce128);
  check_fprop<__nv_bfloat16>(kCases[2], kForce128);
  check_fprop<__half>(kLargeCase, kForce64);
  check_fprop<__nv_bfloat16>(kWideCase);
  check_fprop<__half>(kCases[5], kForceWide);  // K = 40: one n-tile, 24 columns masked
  check_fprop<float>(kCases[2], kForceWide);
  check_fprop<float>(kCases[1], kForceSplitK);
  check_fprop<__half>(kCases[4], kForceSplitK);
  for (const Case& c : kDgradCases) {
    check_dgrad<__half>(c);
    check_dgrad<float>(c);
  }
  for (const Case& c : kWgradCases) {
    check_wgrad<__half>(c);
    check_wgrad<__nv_bfloat16>(c);
  }
  check_wgrad<__half>(kWgradCases[6], kRule, 0);          // no workspace: one slice
  check_wgrad<__nv_bfloat16>(kWgradCases[2], kForce64);    // the small tile on a large-tile shape
  check_wgrad<__half>(kWgradCases[0], kForce128);          // the large tile on 64 filters (half the rows masked)
  check_wgrad<__nv_bfloat16>(kWgradCases[3], kForceWide);
  check_wgrad<__half>(kWgradCases[3], kForceSplitK);
  check_wgrad<__nv_bfloat16>(kWgradCases[4], kForceSplitK);
#if !defined(FASTCONV_EMU)
  const Case kTimed[] = {
      {"res2 1x1 64->256 56x56", 32, 64, 56, 56, 256, 1, 1, 0, 1, 1, 1},
      {"res2 3x3 64 56x56", 32, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1},
      {"res3 3x3 128 28x28", 32, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1},
      {"res4 3x3 256 14x14", 32, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1},
      {"res5 3x3 512 7x7", 32, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},
      {"res5 3x3 512 7x7", 256, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},
      {"res2 3x3 64 56x56", 256, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1},
  };
  for (const Case& c : kTimed) time_fprop<__nv_bfloat16>(c);
  for (const Case& c : kTimed) time_wgrad<__nv_bfloat16>(c);
#endif
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "igemm_sm90_harness: all checks passed", g_failures);
  return g_failures ? 1 : 0;
}
