// igemm_harness.cu — standalone check + timing of the tensor-core implicit GEMM (conv2d_igemm_tc.cu):
// fprop, dgrad and wgrad.
//
//   make -C csrc dev && ./csrc/build/dev/igemm_harness
//
// 1. Checks, float16 and bfloat16, NHWC x / KRSC w / NPQK y: small shapes covering both tile configs,
//    both load paths (16-byte cp.async when C/groups and K/groups are multiples of 8, element-wise
//    otherwise: C = 3, C = 12, K = 10), M tails, stride, padding, dilation, groups, 1x1 — each run as
//    plain fprop, fprop + bias (the unfused entry point), and the fused epilogue (scale, bias,
//    residual, ReLU). y is pre-filled with NaN so an unwritten element fails. Reference: the same
//    rounded inputs on the CPU in double, epilogue in double. Pass: |gpu − ref| <= atol + rtol·|ref|,
//    rtol = one unit of the output format's rounding (2^-10 half, 2^-7 bf16), atol = 1e-3. The maximum
//    error per case is printed.
//    dgrad and wgrad on the same shapes against double CPU references (scatter-form loops over y), with
//    the tolerance widened by sqrt(terms)·2^-8·rtol for the FP32 sums of many products; wgrad runs
//    with the split-K workspace that workspace_bytes reports (1 GiB limit).
//    fprop with batch statistics (conv2d_implicit_gemm_fprop_stats) on the same shapes, plus a
//    large-mean case (inputs offset by +8, positive filters: mean/std ~ 100): y against the same
//    reference; mean / biased variance / invstd against double statistics of the kernel's own rounded
//    y (what the op returns and BN normalises), |err| <= 1e-5·|ref| (+1e-6 for the mean); and two
//    runs bit-identical (fixed-order partials and merge).
//    float on TF32 (mma m16n8k8 .tf32), fprop (plain, bias, fused epilogue), dgrad and wgrad: C = 3,
//    odd K, stride 2, dilation, groups, M tails, Kg > BN, the 16-byte path (C/groups, K/groups multiples
//    of 4: C = 12, 8) and the element-wise one, both tile configs (the 128x128 ones on two 1x1 shapes
//    and on wgrad at K = 200). Inputs are full FP32 values (random low mantissa bits). Reference: the
//    untruncated inputs in double, with S = Σ|a·b| per output. Pass: |err| <= (2^-9 + n·2^-22)·|scale|·S
//    + 2^-22·(|scale|·S + |bias| + |res|), n = ceil(K_gemm/8) + wgrad slices + 4 (each TF32 operand
//    is off by < 2^-10 relative, so a product by < 2^-9; n FP32 roundings of partial sums <= S, 4 units
//    each; 3 FP32 roundings in the epilogue). TF32 evidence: the result follows the reference on the
//    truncated operands (mean distance <= 1/8 of the distance to the exact result) and is not
//    bit-equal to the FP32-rounded exact result. The error per case is printed as a fraction of the
//    bound. can_implement refuses element sizes other than 2 and 4.
// 2. Timing: fprop + folded-BN + ReLU epilogue on ResNet-50 layers at N = 32 (CUDA events, warm-up,
//    median of kReps), printed as ms, TFLOP/s, % of 798 TFLOP/s (our measured bf16 GEMM on the H100)
//    and compulsory-traffic GB/s; then bf16 dgrad and wgrad on the same layers. (No float timings yet.)
// Exit status 1 when any check fails or a CUDA call errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fastconv/cuda_api.h"
#include "harness.h"

using Case = IgemmCase;

using namespace fastconv;
using namespace fastconv::cuda;

constexpr int kWarmup = 3;
constexpr int kReps = 20;
constexpr double kMeasuredBf16GemmTflops = 798.0;


size_t numel_x(const Conv2dShape& s) { return static_cast<size_t>(s.N * s.C * s.H * s.W); }
size_t numel_y(const Conv2dShape& s) { return static_cast<size_t>(s.N * s.K * s.P * s.Q); }
size_t numel_w(const Conv2dShape& s) { return static_cast<size_t>(s.K * s.Cg() * s.R * s.S); }

// Host conversions for the two storage types.
template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "tf32"; }
template <> const char* type_name<__half>() { return "f16"; }
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <typename T> double rtol();
template <> double rtol<__half>() { return 1.0 / 1024; }
template <> double rtol<__nv_bfloat16>() { return 1.0 / 128; }

// Deterministic uniform values in [-1, 1).
void fill(std::vector<float>& v, uint32_t seed) {
  uint32_t st = seed * 2654435761u + 12345u;
  for (auto& e : v) {
    st = st * 1664525u + 1013904223u;
    e = static_cast<float>(st >> 8) / static_cast<float>(1u << 23) - 1.f;
  }
}

// Rounds v to T in place and returns the T copy.
template <typename T>
std::vector<T> round_to(std::vector<float>& v) {
  std::vector<T> t(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    t[i] = to_t<T>(v[i]);
    v[i] = to_f(t[i]);
  }
  return t;
}

enum class Epi { kNone, kBias, kFused };
const char* epi_name(Epi e) { return e == Epi::kNone ? "plain" : e == Epi::kBias ? "bias" : "scale+bias+res+relu"; }

// ---- CPU reference: NHWC / KRSC / NPQK, double accumulation, epilogue in double ----------------------
// mag (nullable): per output, Σ|x·w| over its terms (for the TF32 error bound).
void ref_fprop(const Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w, const float* scale,
               const float* bias, const float* res, bool relu, std::vector<double>& y,
               std::vector<double>* mag = nullptr) {
  const int64_t Cg = s.Cg(), Kg = s.Kg();
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t g = k / Kg;
          double acc = 0.0, acc_mag = 0.0;
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t h = s.in_h(p, r), ww = s.in_w(q, t);
              if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
              const float* xp = &x[static_cast<size_t>(s.x.offset(n, g * Cg, h, ww))];
              const float* wp = &w[static_cast<size_t>(k * s.w.n + r * s.w.h + t * s.w.w)];
              for (int64_t c = 0; c < Cg; ++c) {
                acc += double(xp[c]) * double(wp[c]);
                acc_mag += std::fabs(double(xp[c]) * double(wp[c]));
              }
            }
          const size_t off = static_cast<size_t>(s.y.offset(n, k, p, q));
          if (mag) (*mag)[off] = acc_mag;
          if (scale) acc *= scale[k];
          if (bias) acc += bias[k];
          if (res) acc += res[off];
          if (relu && acc < 0) acc = 0;
          y[off] = acc;
        }
}

template <typename T>
bool check_case(const Case& cs, Epi epi, int& fails) {
  const Conv2dShape s = make_shape(cs);
  if (!conv2d_implicit_gemm_can_implement(s, ConvDir::kFprop, 2)) {
    std::printf("FAIL %-28s %-4s: can_implement is false\n", cs.name, type_name<T>());
    ++fails;
    return true;
  }
  std::vector<float> x(numel_x(s)), w(numel_w(s)), res(numel_y(s)), scale(s.K), bias(s.K);
  fill(x, 1);
  fill(w, 2);
  fill(res, 3);
  fill(scale, 4);
  fill(bias, 5);
  for (auto& v : scale) v = 0.5f + 0.5f * (v + 1.f);  // a folded BN scale in [0.5, 1.5)
  const std::vector<T> xt = round_to<T>(x), wt = round_to<T>(w), rt = round_to<T>(res), bt = round_to<T>(bias);

  const bool fused = epi == Epi::kFused;
  std::vector<double> ref(numel_y(s));
  ref_fprop(s, x, w, fused ? scale.data() : nullptr, epi != Epi::kNone ? bias.data() : nullptr,
            fused ? res.data() : nullptr, fused, ref);

  T *dx, *dw, *dy, *dres, *dbias_t;
  float *dscale, *dbias;
  void* ws;
  const size_t ws_bytes = conv2d_implicit_gemm_workspace_bytes(s, ConvDir::kFprop, 2, size_t(1) << 30);
  CUDA_CHECK(cudaMalloc(&dx, xt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dw, wt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dy, ref.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dres, rt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dbias_t, bt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dscale, scale.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dbias, bias.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemcpy(dx, xt.data(), xt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dw, wt.data(), wt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dres, rt.data(), rt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dbias_t, bt.data(), bt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dscale, scale.data(), scale.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dbias, bias.data(), bias.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(dy, 0xff, ref.size() * sizeof(T)));  // all-ones bits: NaN in half and bf16
  if (ws_bytes != 0) {  // the epilogue reads the bias in T: fprop has no scratch
    std::printf("FAIL %-28s fprop asks for %zu bytes of workspace\n", cs.name, ws_bytes);
    ++fails;
  }

  if (fused) {
    CUDA_CHECK(conv2d_implicit_gemm_fprop_fused<T>(s, dx, dw, dscale, dbias, dres, true, dy, nullptr, 0, 0));
  } else {
    CUDA_CHECK(conv2d_implicit_gemm_fprop<T>(s, dx, dw, epi == Epi::kBias ? dbias_t : nullptr, dy, ws, ws_bytes, 0));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> out(ref.size());
  CUDA_CHECK(cudaMemcpy(out.data(), dy, out.size() * sizeof(T), cudaMemcpyDeviceToHost));

  double max_err = 0.0;
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double got = to_f(out[i]), want = ref[i];
    const double err = std::fabs(got - want);
    if (!(err <= 1e-3 + rtol<T>() * std::fabs(want))) {  // NaN fails too
      if (bad++ == 0) first_bad = i;
    }
    if (err > max_err || std::isnan(err)) max_err = std::isnan(err) ? INFINITY : err;
  }
  std::printf("%s %-28s %-4s %-20s max|err| %.3e\n", bad ? "FAIL" : "ok  ", cs.name, type_name<T>(), epi_name(epi),
              max_err);
  if (bad) {
    std::printf("     %zu of %zu wrong; first at %zu: got %.6f want %.6f\n", bad, out.size(), first_bad,
                double(to_f(out[first_bad])), ref[first_bad]);
    ++fails;
  }
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  cudaFree(dres);
  cudaFree(dbias_t);
  cudaFree(dscale);
  cudaFree(dbias);
  cudaFree(ws);
  return true;
}

template <typename T>
bool time_case(const Case& cs) {
  const Conv2dShape s = make_shape(cs);
  T *dx, *dw, *dy;
  float *dscale, *dbias;
  CUDA_CHECK(cudaMalloc(&dx, numel_x(s) * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dw, numel_w(s) * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dy, numel_y(s) * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dscale, s.K * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dbias, s.K * sizeof(float)));
  CUDA_CHECK(cudaMemset(dx, 0, numel_x(s) * sizeof(T)));  // timing does not depend on the values
  CUDA_CHECK(cudaMemset(dw, 0, numel_w(s) * sizeof(T)));
  CUDA_CHECK(cudaMemset(dscale, 0, s.K * sizeof(float)));
  CUDA_CHECK(cudaMemset(dbias, 0, s.K * sizeof(float)));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms(kReps);
  for (int i = 0; i < kWarmup + kReps; ++i) {
    CUDA_CHECK(cudaEventRecord(e0));
    CUDA_CHECK(conv2d_implicit_gemm_fprop_fused<T>(s, dx, dw, dscale, dbias, nullptr, true, dy, nullptr, 0, 0));
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    if (i >= kWarmup) CUDA_CHECK(cudaEventElapsedTime(&ms[i - kWarmup], e0, e1));
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[kReps / 2];
  const double tflops = s.fprop_flops() / (med * 1e-3) / 1e12;
  const double bytes = double(numel_x(s) + numel_w(s) + numel_y(s)) * sizeof(T);
  std::printf("%-30s %-4s %9.4f ms %8.1f TFLOP/s (%5.1f %% of %.0f) %8.1f GB/s compulsory\n", cs.name, type_name<T>(),
              med, tflops, 100.0 * tflops / kMeasuredBf16GemmTflops, kMeasuredBf16GemmTflops,
              bytes / (med * 1e-3) / 1e9);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  cudaFree(dscale);
  cudaFree(dbias);
  return true;
}

// ---- dgrad / wgrad: CPU references (double accumulation), checks and timings ------------------------
void ref_dgrad(const Conv2dShape& s, const std::vector<float>& dy, const std::vector<float>& w,
               std::vector<double>& dx, std::vector<double>* mag = nullptr) {
  std::fill(dx.begin(), dx.end(), 0.0);
  if (mag) std::fill(mag->begin(), mag->end(), 0.0);
  const int64_t Cg = s.Cg(), Kg = s.Kg();
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t g = k / Kg;
          const double d = dy[static_cast<size_t>(s.y.offset(n, k, p, q))];
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t h = s.in_h(p, r), ww = s.in_w(q, t);
              if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
              const float* wp = &w[static_cast<size_t>(k * s.w.n + r * s.w.h + t * s.w.w)];
              const size_t off = static_cast<size_t>(s.x.offset(n, g * Cg, h, ww));
              double* xp = &dx[off];
              for (int64_t c = 0; c < Cg; ++c) xp[c] += d * double(wp[c]);
              if (mag)
                for (int64_t c = 0; c < Cg; ++c) (*mag)[off + c] += std::fabs(d * double(wp[c]));
            }
        }
}

void ref_wgrad(const Conv2dShape& s, const std::vector<float>& dy, const std::vector<float>& x,
               std::vector<double>& dw, std::vector<double>* mag = nullptr) {
  std::fill(dw.begin(), dw.end(), 0.0);
  if (mag) std::fill(mag->begin(), mag->end(), 0.0);
  const int64_t Cg = s.Cg(), Kg = s.Kg();
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t g = k / Kg;
          const double d = dy[static_cast<size_t>(s.y.offset(n, k, p, q))];
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t h = s.in_h(p, r), ww = s.in_w(q, t);
              if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
              const float* xp = &x[static_cast<size_t>(s.x.offset(n, g * Cg, h, ww))];
              const size_t off = static_cast<size_t>(k * s.w.n + r * s.w.h + t * s.w.w);
              double* wp = &dw[off];
              for (int64_t c = 0; c < Cg; ++c) wp[c] += d * double(xp[c]);
              if (mag)
                for (int64_t c = 0; c < Cg; ++c) (*mag)[off + c] += std::fabs(d * double(xp[c]));
            }
        }
}

// One dgrad or wgrad check. The output is pre-filled with NaN; a sum over many products gets the
// tolerance atol + rtol·(|ref| + sqrt(terms)·2^-8), rtol as fprop (inputs in [-1, 1)).
template <typename T>
bool check_bwd(const Case& cs, ConvDir dir, int& fails) {
  const Conv2dShape s = make_shape(cs);
  const bool dgrad = dir == ConvDir::kDgrad;
  const char* dname = dgrad ? "dgrad" : "wgrad";
  if (!conv2d_implicit_gemm_can_implement(s, dir, 2)) {
    std::printf("FAIL %-28s %-4s %s: can_implement is false\n", cs.name, type_name<T>(), dname);
    ++fails;
    return true;
  }
  std::vector<float> dy(numel_y(s)), other(dgrad ? numel_w(s) : numel_x(s));
  fill(dy, 6);
  fill(other, 7);
  const std::vector<T> dyt = round_to<T>(dy), ot = round_to<T>(other);
  std::vector<double> ref(dgrad ? numel_x(s) : numel_w(s));
  if (dgrad) ref_dgrad(s, dy, other, ref);
  else ref_wgrad(s, dy, other, ref);
  const double terms = dgrad ? double(s.Kg() * s.R * s.S) : double(s.N * s.P * s.Q);

  T *d_dy, *d_other, *d_out;
  void* ws = nullptr;
  const size_t ws_bytes = conv2d_implicit_gemm_workspace_bytes(s, dir, 2, size_t(1) << 30);
  CUDA_CHECK(cudaMalloc(&d_dy, dyt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&d_other, ot.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&d_out, ref.size() * sizeof(T)));
  if (ws_bytes) CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemcpy(d_dy, dyt.data(), dyt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_other, ot.data(), ot.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(d_out, 0xff, ref.size() * sizeof(T)));
  if (dgrad) CUDA_CHECK(conv2d_implicit_gemm_dgrad<T>(s, d_dy, d_other, d_out, ws, ws_bytes, 0));
  else CUDA_CHECK(conv2d_implicit_gemm_wgrad<T>(s, d_dy, d_other, d_out, ws, ws_bytes, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> out(ref.size());
  CUDA_CHECK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(T), cudaMemcpyDeviceToHost));

  double max_err = 0.0;
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double got = to_f(out[i]), want = ref[i];
    const double err = std::fabs(got - want);
    if (!(err <= 1e-3 + rtol<T>() * (std::fabs(want) + std::sqrt(terms) / 256.0))) {
      if (bad++ == 0) first_bad = i;
    }
    if (err > max_err || std::isnan(err)) max_err = std::isnan(err) ? INFINITY : err;
  }
  std::printf("%s %-28s %-4s %-20s max|err| %.3e (workspace %zu B)\n", bad ? "FAIL" : "ok  ", cs.name,
              type_name<T>(), dname, max_err, ws_bytes);
  if (bad) {
    std::printf("     %zu of %zu wrong; first at %zu: got %.6f want %.6f\n", bad, out.size(), first_bad,
                double(to_f(out[first_bad])), ref[first_bad]);
    ++fails;
  }
  cudaFree(d_dy);
  cudaFree(d_other);
  cudaFree(d_out);
  cudaFree(ws);
  return true;
}

template <typename T>
bool time_bwd(const Case& cs, ConvDir dir) {
  const Conv2dShape s = make_shape(cs);
  const bool dgrad = dir == ConvDir::kDgrad;
  T *d_dy, *d_other, *d_out;
  void* ws = nullptr;
  const size_t ws_bytes = conv2d_implicit_gemm_workspace_bytes(s, dir, 2, size_t(1) << 30);
  const size_t n_other = dgrad ? numel_w(s) : numel_x(s), n_out = dgrad ? numel_x(s) : numel_w(s);
  CUDA_CHECK(cudaMalloc(&d_dy, numel_y(s) * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&d_other, n_other * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&d_out, n_out * sizeof(T)));
  if (ws_bytes) CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemset(d_dy, 0, numel_y(s) * sizeof(T)));
  CUDA_CHECK(cudaMemset(d_other, 0, n_other * sizeof(T)));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms(kReps);
  for (int i = 0; i < kWarmup + kReps; ++i) {
    CUDA_CHECK(cudaEventRecord(e0));
    if (dgrad) CUDA_CHECK(conv2d_implicit_gemm_dgrad<T>(s, d_dy, d_other, d_out, ws, ws_bytes, 0));
    else CUDA_CHECK(conv2d_implicit_gemm_wgrad<T>(s, d_dy, d_other, d_out, ws, ws_bytes, 0));
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    if (i >= kWarmup) CUDA_CHECK(cudaEventElapsedTime(&ms[i - kWarmup], e0, e1));
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[kReps / 2];
  const double tflops = s.fprop_flops() / (med * 1e-3) / 1e12;  // same useful FLOPs as fprop
  const double bytes = double(numel_x(s) + numel_w(s) + numel_y(s)) * sizeof(T);
  std::printf("%-30s %-4s %s %9.4f ms %8.1f TFLOP/s (%5.1f %% of %.0f) %8.1f GB/s compulsory\n", cs.name,
              type_name<T>(), dgrad ? "dgrad" : "wgrad", med, tflops, 100.0 * tflops / kMeasuredBf16GemmTflops,
              kMeasuredBf16GemmTflops, bytes / (med * 1e-3) / 1e9);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(d_dy);
  cudaFree(d_other);
  cudaFree(d_out);
  cudaFree(ws);
  return true;
}

// fprop + batch statistics. offset > 0 shifts x and makes w positive (a large-mean conv output).
template <typename T>
bool check_stats(const Case& cs, float offset, int& fails) {
  const Conv2dShape s = make_shape(cs);
  std::vector<float> x(numel_x(s)), w(numel_w(s));
  fill(x, 1);
  fill(w, 2);
  if (offset > 0.f) {
    for (auto& v : x) v = 0.5f * v + offset;
    for (auto& v : w) v = 0.05f + 0.5f * (v + 1.f) / static_cast<float>(s.Cg() * s.R * s.S);
  }
  const std::vector<T> xt = round_to<T>(x), wt = round_to<T>(w);
  std::vector<double> ref(numel_y(s));
  ref_fprop(s, x, w, nullptr, nullptr, nullptr, false, ref);

  const size_t ws_bytes = conv2d_implicit_gemm_fprop_stats_workspace_bytes(s);
  T *dx, *dw, *dy;
  float* dstats;
  void* ws;
  CUDA_CHECK(cudaMalloc(&dx, xt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dw, wt.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dy, ref.size() * sizeof(T)));
  CUDA_CHECK(cudaMalloc(&dstats, 3 * s.K * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemcpy(dx, xt.data(), xt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dw, wt.data(), wt.size() * sizeof(T), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(dy, 0xff, ref.size() * sizeof(T)));
  CUDA_CHECK(cudaMemset(dstats, 0xff, 3 * s.K * sizeof(float)));
  std::vector<float> stats[2];
  std::vector<T> out[2];
  const double eps = 1e-5;
  for (int run = 0; run < 2; ++run) {
    CUDA_CHECK(conv2d_implicit_gemm_fprop_stats<T>(s, dx, dw, dy, dstats, dstats + s.K, dstats + 2 * s.K, eps, ws,
                                                   ws_bytes, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    stats[run].resize(3 * s.K);
    out[run].resize(ref.size());
    CUDA_CHECK(cudaMemcpy(stats[run].data(), dstats, 3 * s.K * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(out[run].data(), dy, out[run].size() * sizeof(T), cudaMemcpyDeviceToHost));
  }
  size_t bad = 0;
  double max_y = 0.0, max_stat = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(to_f(out[0][i])) - ref[i]);
    if (!(err <= 1e-3 + rtol<T>() * std::fabs(ref[i]))) ++bad;
    max_y = std::max(max_y, std::isnan(err) ? INFINITY : err);
  }
  // Double statistics of the kernel's own y, per channel (NPQK: channel k at stride 1).
  const int64_t M = s.N * s.P * s.Q;
  for (int64_t k = 0; k < s.K; ++k) {
    double mean = 0.0, m2 = 0.0;
    for (int64_t m = 0; m < M; ++m) mean += to_f(out[0][static_cast<size_t>(m * s.K + k)]);
    mean /= double(M);
    for (int64_t m = 0; m < M; ++m) {
      const double d = to_f(out[0][static_cast<size_t>(m * s.K + k)]) - mean;
      m2 += d * d;
    }
    const double var = m2 / double(M), invstd = 1.0 / std::sqrt(var + eps);
    const double got[3] = {stats[0][k], stats[0][s.K + k], stats[0][2 * s.K + k]};
    const double want[3] = {mean, invstd, var};
    for (int i = 0; i < 3; ++i) {
      const double err = std::fabs(got[i] - want[i]);
      const double tol = 1e-5 * std::fabs(want[i]) + (i == 0 ? 1e-6 : 0.0);
      if (!(err <= tol)) ++bad;
      max_stat = std::max(max_stat, std::isnan(err) ? INFINITY : err / std::max(1e-30, std::fabs(want[i])));
    }
  }
  const bool same = std::memcmp(stats[0].data(), stats[1].data(), stats[0].size() * sizeof(float)) == 0 &&
                    std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(T)) == 0;
  if (!same) ++bad;
  std::printf("%s %-28s %-4s %-20s max|err| y %.3e, stats rel %.3e%s\n", bad ? "FAIL" : "ok  ", cs.name,
              type_name<T>(), offset > 0.f ? "stats (large mean)" : "stats", max_y, max_stat,
              same ? "" : ", runs differ");
  if (bad) ++fails;
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  cudaFree(dstats);
  cudaFree(ws);
  return true;
}

// ---- float on TF32 ------------------------------------------------------------------------------------
// Inputs are full FP32 values in [-1, 1) (23 random mantissa bits: the low 13 are almost never 0).
// Reference: the same FP32 inputs, untruncated, products and sums in double (ref), and per output
// S = Σ|a·b| over its terms. The bound follows from the TF32 reading of each operand (10 mantissa
// bits, truncated: relative error < 2^-10 each, so a product is off by < 2^-9·|a·b|) and from FP32
// accumulation (n roundings of partial sums bounded by S, n = ceil(K_gemm / 8) mma steps + wgrad's
// split-K slices + 4, each allowed 4 units of 2^-24 for the hardware's accumulation order):
//   |err| <= (2^-9 + n·2^-22)·|scale|·S + 2^-22·(|scale|·S + |bias| + |res|)   (epilogue: 3 FP32 roundings)
// TF32 evidence: ref_t, the same reference on the operands as the tensor core reads them (low 13
// mantissa bits cleared: csrc/emu/ptx_emu.h's reading, pinned by test_ptx_conformance). The result
// must follow it, Σ|y − ref_t| <= Σ|y − ref| / 8, which an FP32 (non-TF32) path cannot do on these
// inputs; and it must not be bit-equal to the FP32-rounded reference everywhere.
float tf32_trunc(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

std::vector<float> truncated(const std::vector<float>& v) {
  std::vector<float> t(v.size());
  for (size_t i = 0; i < v.size(); ++i) t[i] = tf32_trunc(v[i]);
  return t;
}

bool check_tf32(const Case& cs, ConvDir dir, Epi epi, int& fails) {
  const Conv2dShape s = make_shape(cs);
  const char* dname = dir == ConvDir::kFprop ? epi_name(epi) : dir == ConvDir::kDgrad ? "dgrad" : "wgrad";
  if (!conv2d_implicit_gemm_can_implement(s, dir, 4)) {
    std::printf("FAIL %-28s tf32 %s: can_implement is false\n", cs.name, dname);
    ++fails;
    return true;
  }
  const bool fused = dir == ConvDir::kFprop && epi == Epi::kFused;
  const bool has_bias = dir == ConvDir::kFprop && epi != Epi::kNone;
  std::vector<float> a, b, res(numel_y(s)), scale(s.K), bias(s.K);  // a = x or dy, b = w or x
  std::vector<double> ref, ref_t, mag, mag_t;
  double k_gemm = 0.0;
  if (dir == ConvDir::kFprop) {
    a.resize(numel_x(s));
    b.resize(numel_w(s));
    fill(a, 11);
    fill(b, 12);
    fill(res, 13);
    fill(scale, 14);
    fill(bias, 15);
    for (auto& v : scale) v = 0.5f + 0.5f * (v + 1.f);
    mag.resize(numel_y(s));
    ref.resize(numel_y(s));
    ref_t.resize(ref.size());
    ref_fprop(s, a, b, fused ? scale.data() : nullptr, has_bias ? bias.data() : nullptr, fused ? res.data() : nullptr,
              fused, ref, &mag);
    ref_fprop(s, truncated(a), truncated(b), fused ? scale.data() : nullptr, has_bias ? bias.data() : nullptr,
              fused ? res.data() : nullptr, fused, ref_t);
    k_gemm = double(s.fprop_k());
  } else {
    const bool dgrad = dir == ConvDir::kDgrad;
    a.resize(numel_y(s));
    b.resize(dgrad ? numel_w(s) : numel_x(s));
    fill(a, 16);
    fill(b, 17);
    ref.resize(dgrad ? numel_x(s) : numel_w(s));
    ref_t.resize(ref.size());
    mag.resize(ref.size());
    if (dgrad) {
      ref_dgrad(s, a, b, ref, &mag);
      ref_dgrad(s, truncated(a), truncated(b), ref_t);
    } else {
      ref_wgrad(s, a, b, ref, &mag);
      ref_wgrad(s, truncated(a), truncated(b), ref_t);
    }
    k_gemm = double(dgrad ? s.dgrad_k() : s.wgrad_k());
  }

  float *d_a, *d_b, *d_out, *d_res, *d_scale, *d_bias;
  void* ws = nullptr;
  const size_t ws_bytes = conv2d_implicit_gemm_workspace_bytes(s, dir, 4, size_t(1) << 30);
  CUDA_CHECK(cudaMalloc(&d_a, a.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_b, b.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_out, ref.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_res, res.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_scale, scale.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_bias, bias.size() * sizeof(float)));
  if (ws_bytes) CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemcpy(d_a, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_b, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_res, res.data(), res.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_scale, scale.data(), scale.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_bias, bias.data(), bias.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(d_out, 0xff, ref.size() * sizeof(float)));  // all-ones bits: NaN
  if (dir == ConvDir::kFprop) {
    if (fused) {
      CUDA_CHECK(conv2d_implicit_gemm_fprop_fused<float>(s, d_a, d_b, d_scale, d_bias, d_res, true, d_out, nullptr, 0,
                                                         0));
    } else {
      CUDA_CHECK(conv2d_implicit_gemm_fprop<float>(s, d_a, d_b, has_bias ? d_bias : nullptr, d_out, ws, ws_bytes, 0));
    }
  } else if (dir == ConvDir::kDgrad) {
    CUDA_CHECK(conv2d_implicit_gemm_dgrad<float>(s, d_a, d_b, d_out, ws, ws_bytes, 0));
  } else {
    CUDA_CHECK(conv2d_implicit_gemm_wgrad<float>(s, d_a, d_b, d_out, ws, ws_bytes, 0));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> out(ref.size());
  CUDA_CHECK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));

  // wgrad's slices: at most ws_bytes / (K·R·S·Cg floats).
  const double splits = dir == ConvDir::kWgrad ? std::floor(double(ws_bytes) / (double(s.K * s.wgrad_n()) * 4.0)) : 0.0;
  const double n_round = std::ceil(k_gemm / 8.0) + splits + 4.0;
  size_t bad = 0, first_bad = 0, bit_equal = 0;
  double max_err = 0.0, max_ratio = 0.0, sum_err = 0.0, sum_err_t = 0.0;  // ratio: err / bound
  for (size_t i = 0; i < out.size(); ++i) {
    const size_t ch = dir == ConvDir::kFprop ? i % static_cast<size_t>(s.K) : 0;  // NPQK: channel at stride 1
    const double sc = fused ? std::fabs(double(scale[ch])) : 1.0;
    const double epi_tol = 0x1p-22 * (sc * mag[i] + (has_bias ? std::fabs(double(bias[ch])) : 0.0) +
                                      (fused ? std::fabs(double(res[i])) : 0.0));
    const double tol = (0x1p-9 + n_round * 0x1p-22) * sc * mag[i] + epi_tol;
    const double err = std::fabs(double(out[i]) - ref[i]);
    if (!(err <= tol)) {  // NaN fails too
      if (bad++ == 0) first_bad = i;
    }
    sum_err += err;
    sum_err_t += std::fabs(double(out[i]) - ref_t[i]);
    if (out[i] == static_cast<float>(ref[i])) ++bit_equal;
    if (err > max_err || std::isnan(err)) max_err = std::isnan(err) ? INFINITY : err;
    if (tol > 0.0) max_ratio = std::max(max_ratio, std::isnan(err) ? INFINITY : err / tol);
  }
  const bool tf32_seen = sum_err > 0.0 && sum_err_t <= sum_err / 8 && bit_equal < out.size();
  std::printf("%s %-28s tf32 %-20s max|err| %.3e (%.3f of bound); mean|err| %.2e, vs TF32 ref %.2e; %zu of %zu "
              "bit-equal to FP32\n",
              bad || !tf32_seen ? "FAIL" : "ok  ", cs.name, dname, max_err, max_ratio, sum_err / double(out.size()),
              sum_err_t / double(out.size()), bit_equal, out.size());
  if (bad) {
    std::printf("     %zu of %zu wrong; first at %zu: got %.7f want %.7f (S = %.4f)\n", bad, out.size(), first_bad,
                double(out[first_bad]), ref[first_bad], mag[first_bad]);
    ++fails;
  } else if (!tf32_seen) {
    std::printf("     the result does not follow the TF32 reading of the operands: not the TF32 path\n");
    ++fails;
  }
  cudaFree(d_a);
  cudaFree(d_b);
  cudaFree(d_out);
  cudaFree(d_res);
  cudaFree(d_scale);
  cudaFree(d_bias);
  cudaFree(ws);
  return true;
}

int main() {
  // name, N, C, H, W, K, R, S, pad, stride, dil, groups
  const Case checks[] = {
      {"stem C=3 7x7/2 (elementwise)", 2, 3, 20, 18, 16, 7, 7, 3, 2, 1, 1},
      {"3x3 C=16 K=24 (cp.async)", 2, 16, 9, 11, 24, 3, 3, 1, 1, 1, 1},
      {"3x3 C=12 K=10 (elementwise)", 2, 12, 7, 9, 10, 3, 3, 1, 1, 1, 1},
      {"3x3/2 C=64 K=72 M tail", 3, 64, 13, 11, 72, 3, 3, 1, 2, 1, 1},
      {"3x3 dil2 C=8 K=8", 1, 8, 12, 10, 8, 3, 3, 2, 1, 2, 1},
      {"grouped g=2 C=32 K=48", 2, 32, 8, 8, 48, 3, 3, 1, 1, 1, 2},
      {"grouped g=3 C=9 K=6 (elem)", 2, 9, 6, 7, 6, 3, 3, 1, 1, 1, 3},
      {"1x1/2 C=40 K=136", 2, 40, 10, 9, 136, 1, 1, 0, 2, 1, 1},
      {"1x1 large tile C=64 K=1000", 8, 64, 28, 28, 1000, 1, 1, 0, 1, 1, 1},
      {"1x1 large tile C=12 K=1000", 8, 12, 28, 28, 1000, 1, 1, 0, 1, 1, 1},
      {"5x3 pad 2 K>BN C=24 K=200", 2, 24, 9, 10, 200, 5, 3, 2, 1, 1, 1},
  };
  int fails = 0;
  bool ok = true;
  std::printf("== checks (NHWC, vs double CPU reference)\n");
  for (const Case& c : checks) {
    for (Epi e : {Epi::kNone, Epi::kBias, Epi::kFused}) {
      ok = ok && check_case<__half>(c, e, fails);
      ok = ok && check_case<__nv_bfloat16>(c, e, fails);
    }
  }
  for (const Case& c : checks) {
    ok = ok && check_stats<__half>(c, 0.f, fails);
    ok = ok && check_stats<__nv_bfloat16>(c, 0.f, fails);
  }
  ok = ok && check_stats<__half>(checks[1], 8.f, fails);
  ok = ok && check_stats<__half>(checks[8], 8.f, fails);
  for (const Case& c : checks) {
    for (ConvDir d : {ConvDir::kDgrad, ConvDir::kWgrad}) {
      ok = ok && check_bwd<__half>(c, d, fails);
      ok = ok && check_bwd<__nv_bfloat16>(c, d, fails);
    }
  }
  // float on TF32, every direction; the 16-byte path needs C/groups and K/groups multiples of 4.
  const Case tf32_checks[] = {
      {"stem C=3 7x7/2 (elementwise)", 2, 3, 20, 18, 16, 7, 7, 3, 2, 1, 1},
      {"3x3 C=12 K=20 (cp.async f32)", 2, 12, 9, 11, 20, 3, 3, 1, 1, 1, 1},
      {"3x3 C=12 K=10 (elementwise)", 2, 12, 7, 9, 10, 3, 3, 1, 1, 1, 1},
      {"3x3/2 C=64 K=72 M tail", 3, 64, 13, 11, 72, 3, 3, 1, 2, 1, 1},
      {"3x3 dil2 C=8 K=8", 1, 8, 12, 10, 8, 3, 3, 2, 1, 2, 1},
      {"grouped g=2 C=8 K=24 (vec)", 2, 8, 8, 7, 24, 3, 3, 1, 1, 1, 2},
      {"grouped g=3 C=9 K=6 (elem)", 2, 9, 6, 7, 6, 3, 3, 1, 1, 1, 3},
      {"5x3 pad 2 K>BN C=24 K=200", 2, 24, 9, 10, 200, 5, 3, 2, 1, 1, 1},
  };
  for (const Case& c : tf32_checks) {
    for (Epi e : {Epi::kNone, Epi::kBias, Epi::kFused}) ok = ok && check_tf32(c, ConvDir::kFprop, e, fails);
    ok = ok && check_tf32(c, ConvDir::kDgrad, Epi::kNone, fails);
    ok = ok && check_tf32(c, ConvDir::kWgrad, Epi::kNone, fails);
  }
  // The 128x128 tiles (wgrad takes them above, at K = 200): fprop and dgrad need >= 264 of them.
  ok = ok && check_tf32({"1x1 large tile C=20 K=256", 22, 20, 28, 28, 256, 1, 1, 0, 1, 1, 1}, ConvDir::kFprop,
                        Epi::kFused, fails);
  ok = ok && check_tf32({"1x1 large tile C=256 K=12", 22, 256, 28, 28, 12, 1, 1, 0, 1, 1, 1}, ConvDir::kDgrad,
                        Epi::kNone, fails);
  // Elements of any other size are refused.
  for (int eb : {1, 3, 8}) {
    for (ConvDir d : {ConvDir::kFprop, ConvDir::kDgrad, ConvDir::kWgrad}) {
      if (conv2d_implicit_gemm_can_implement(make_shape(checks[1]), d, eb)) {
        std::printf("FAIL can_implement accepts %d-byte elements\n", eb);
        ++fails;
      }
    }
  }

#if defined(FASTCONV_EMU)
  std::printf("%s: %d check failure(s)%s\n", fails == 0 && ok ? "PASS" : "FAIL", fails,
              ok ? "" : ", CUDA error (see above)");
  return fails == 0 && ok ? 0 : 1;  // the emulated device has no timeline: checks only
#endif
  const Case timings[] = {
      {"resnet50 stem 7x7/2 3->64 224", 32, 3, 224, 224, 64, 7, 7, 3, 2, 1, 1},
      {"res2 1x1 64->64 56", 32, 64, 56, 56, 64, 1, 1, 0, 1, 1, 1},
      {"res2 3x3 64->64 56", 32, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1},
      {"res2 1x1 64->256 56", 32, 64, 56, 56, 256, 1, 1, 0, 1, 1, 1},
      {"res2 1x1 256->64 56", 32, 256, 56, 56, 64, 1, 1, 0, 1, 1, 1},
      {"res3 3x3/2 128->128 56", 32, 128, 56, 56, 128, 3, 3, 1, 2, 1, 1},
      {"res3 3x3 128->128 28", 32, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1},
      {"res4 3x3 256->256 14", 32, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1},
      {"res4 1x1 1024->256 14", 32, 1024, 14, 14, 256, 1, 1, 0, 1, 1, 1},
      {"res5 3x3 512->512 7", 32, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},
      {"res5 1x1/2 1024->2048 14", 32, 1024, 14, 14, 2048, 1, 1, 0, 2, 1, 1},
  };
  if (ok) {
    std::printf("== fprop + scale/bias/ReLU epilogue timings (median of %d, after %d warm-up)\n", kReps, kWarmup);
    for (const Case& c : timings) {
      ok = ok && time_case<__nv_bfloat16>(c);
      ok = ok && time_case<__half>(c);
    }
    std::printf("== dgrad / wgrad timings (bf16; TFLOP/s counts the fprop FLOPs)\n");
    for (const Case& c : timings) {
      ok = ok && time_bwd<__nv_bfloat16>(c, ConvDir::kDgrad);
      ok = ok && time_bwd<__nv_bfloat16>(c, ConvDir::kWgrad);
    }
  }
  std::printf("%s: %d check failure(s)%s\n", fails == 0 && ok ? "PASS" : "FAIL", fails,
              ok ? "" : ", CUDA error (see above)");
  return fails == 0 && ok ? 0 : 1;
}
