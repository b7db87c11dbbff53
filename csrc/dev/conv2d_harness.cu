// conv2d_harness.cu — standalone check + timing of the SIMT convolutions (direct, im2col, gemm1x1).
//
//   make -C csrc dev && ./csrc/build/dev/conv2d_harness
//
// 1. For a few small shapes (C = 3 stem, 1x1 at stride 1 and 2, 3x3, depthwise, grouped, odd tails,
//    dilation, NCHW and NHWC) every algorithm that can implement the shape runs fprop, dgrad and wgrad
//    in float, with an unlimited workspace and with the smallest one (one image per chunk), and is
//    compared with a double-precision CPU reference: |gpu - ref| <= atol + rtol·|ref|.
// 2. fprop of a few ResNet/MobileNet-sized layers is timed with CUDA events (warm-up, median of
//    kReps) and printed as ms and TFLOP/s.
// Exit status 1 when any check fails or a CUDA call errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fastconv/cuda_api.h"
#include "harness.h"

using namespace fastconv;
using namespace fastconv::cuda;

struct Case {
  const char* name;
  int64_t N, C, H, W, K, R, S, pad, stride, dil, groups;
  bool nhwc;
};

Conv2dShape make_shape(const Case& c) {
  Conv2dShape s = make_conv2d_shape(c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.pad, c.pad, c.stride, c.stride, c.dil, c.dil,
                                    c.groups);
  if (c.nhwc) {
    s.x = channels_last_strides(s.C, s.H, s.W);
    s.y = channels_last_strides(s.K, s.P, s.Q);
    s.w = channels_last_strides(s.Cg(), s.R, s.S);  // KRSC
  }
  return s;
}

size_t numel_x(const Conv2dShape& s) { return static_cast<size_t>(s.N * s.C * s.H * s.W); }
size_t numel_y(const Conv2dShape& s) { return static_cast<size_t>(s.N * s.K * s.P * s.Q); }
size_t numel_w(const Conv2dShape& s) { return static_cast<size_t>(s.K * s.Cg() * s.R * s.S); }
int64_t woff(const Conv2dShape& s, int64_t k, int64_t c, int64_t r, int64_t q) {
  return k * s.w.n + c * s.w.c + r * s.w.h + q * s.w.w;
}

// ---- CPU reference (double accumulation, strided) -------------------------------------------------
void ref_fprop(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t g = k / s.Kg();
          double acc = b ? b[k] : 0.0;
          for (int64_t c = 0; c < s.Cg(); ++c)
            for (int64_t r = 0; r < s.R; ++r)
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t h = s.in_h(p, r), ww = s.in_w(q, t);
                if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
                acc += double(x[s.x.offset(n, g * s.Cg() + c, h, ww)]) * double(w[woff(s, k, c, r, t)]);
              }
          y[s.y.offset(n, k, p, q)] = float(acc);
        }
}

void ref_dgrad(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  std::vector<double> acc(numel_x(s), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t g = k / s.Kg();
          const double d = dy[s.y.offset(n, k, p, q)];
          for (int64_t c = 0; c < s.Cg(); ++c)
            for (int64_t r = 0; r < s.R; ++r)
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t h = s.in_h(p, r), ww = s.in_w(q, t);
                if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
                acc[s.x.offset(n, g * s.Cg() + c, h, ww)] += d * double(w[woff(s, k, c, r, t)]);
              }
        }
  for (size_t i = 0; i < acc.size(); ++i) dx[i] = float(acc[i]);
}

void ref_wgrad(const Conv2dShape& s, const float* dy, const float* x, float* dw) {
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t c = 0; c < s.Cg(); ++c)
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t t = 0; t < s.S; ++t) {
          const int64_t g = k / s.Kg();
          double acc = 0.0;
          for (int64_t n = 0; n < s.N; ++n)
            for (int64_t p = 0; p < s.P; ++p)
              for (int64_t q = 0; q < s.Q; ++q) {
                const int64_t h = s.in_h(p, r), ww = s.in_w(q, t);
                if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
                acc += double(dy[s.y.offset(n, k, p, q)]) * double(x[s.x.offset(n, g * s.Cg() + c, h, ww)]);
              }
          dw[woff(s, k, c, r, t)] = float(acc);
        }
}

// ---- algorithm table ------------------------------------------------------------------------------
struct Algo {
  const char* name;
  bool (*can_implement)(const Conv2dShape&, ConvDir, int);
  size_t (*workspace_bytes)(const Conv2dShape&, ConvDir, int, size_t);
  cudaError_t (*fprop)(const Conv2dShape&, const float*, const float*, const float*, float*, void*, size_t,
                       cudaStream_t);
  cudaError_t (*dgrad)(const Conv2dShape&, const float*, const float*, float*, void*, size_t, cudaStream_t);
  cudaError_t (*wgrad)(const Conv2dShape&, const float*, const float*, float*, void*, size_t, cudaStream_t);
};
const Algo kAlgos[] = {
    {"direct", conv2d_direct_can_implement, conv2d_direct_workspace_bytes, conv2d_direct_fprop<float>,
     conv2d_direct_dgrad<float>, conv2d_direct_wgrad<float>},
    {"im2col", conv2d_im2col_can_implement, conv2d_im2col_workspace_bytes, conv2d_im2col_fprop<float>,
     conv2d_im2col_dgrad<float>, conv2d_im2col_wgrad<float>},
    {"gemm1x1", conv2d_gemm1x1_can_implement, conv2d_gemm1x1_workspace_bytes, conv2d_gemm1x1_fprop<float>,
     conv2d_gemm1x1_dgrad<float>, conv2d_gemm1x1_wgrad<float>},
};

void fill(std::vector<float>& v, uint32_t seed) {
  for (auto& e : v) {
    seed = seed * 1664525u + 1013904223u;
    e = float((seed >> 8) & 0xffff) / 32768.f - 1.f;
  }
}

struct Compare {
  double max_err = 0.0;
  bool ok = true;
};
Compare compare(const std::vector<float>& got, const std::vector<float>& ref) {
  constexpr double kAtol = 1e-4, kRtol = 1e-4;
  Compare c;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(ref[i]));
    c.max_err = std::max(c.max_err, e);
    if (!(e <= kAtol + kRtol * std::fabs(double(ref[i])))) c.ok = false;  // NaN fails too
  }
  return c;
}

struct DeviceBuf {
  void* p = nullptr;
  ~DeviceBuf() { if (p) cudaFree(p); }
};

// Runs one algorithm/direction with the given workspace limit and compares with ref.
bool check_one(const Algo& a, ConvDir dir, const Conv2dShape& s, size_t limit, const float* dx_in, const float* dw_in,
               const float* db_in, const float* ddy_in, const std::vector<float>& ref, const char* label, int& fails) {
  const size_t ws_bytes = a.workspace_bytes(s, dir, sizeof(float), limit);
  DeviceBuf ws, out;
  if (ws_bytes) CUDA_CHECK(cudaMalloc(&ws.p, ws_bytes));
  CUDA_CHECK(cudaMalloc(&out.p, ref.size() * sizeof(float)));
  CUDA_CHECK(cudaMemset(out.p, 0xff, ref.size() * sizeof(float)));  // NaN: every element must be written
  float* o = static_cast<float*>(out.p);
  if (dir == ConvDir::kFprop) CUDA_CHECK(a.fprop(s, dx_in, dw_in, db_in, o, ws.p, ws_bytes, 0));
  if (dir == ConvDir::kDgrad) CUDA_CHECK(a.dgrad(s, ddy_in, dw_in, o, ws.p, ws_bytes, 0));
  if (dir == ConvDir::kWgrad) CUDA_CHECK(a.wgrad(s, ddy_in, dx_in, o, ws.p, ws_bytes, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> got(ref.size());
  CUDA_CHECK(cudaMemcpy(got.data(), o, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const Compare c = compare(got, ref);
  static const char* kDir[] = {"fprop", "dgrad", "wgrad"};
  std::printf("  %-8s %-5s %-7s ws=%10zu B  max_err=%.3e  %s\n", a.name, kDir[int(dir)], label, ws_bytes, c.max_err,
              c.ok ? "PASS" : "FAIL");
  if (!c.ok) ++fails;
  return true;
}

bool check_case(const Case& cs, int& fails) {
  const Conv2dShape s = make_shape(cs);
  std::printf("%s: N=%lld C=%lld H=%lld W=%lld K=%lld R=%lld S=%lld pad=%lld stride=%lld dil=%lld groups=%lld %s\n",
              cs.name, (long long)cs.N, (long long)cs.C, (long long)cs.H, (long long)cs.W, (long long)cs.K,
              (long long)cs.R, (long long)cs.S, (long long)cs.pad, (long long)cs.stride, (long long)cs.dil,
              (long long)cs.groups, cs.nhwc ? "NHWC" : "NCHW");
  std::vector<float> x(numel_x(s)), w(numel_w(s)), b(s.K), dy(numel_y(s));
  fill(x, 1), fill(w, 2), fill(b, 3), fill(dy, 4);
  std::vector<float> y_ref(numel_y(s)), dx_ref(numel_x(s)), dw_ref(numel_w(s));
  ref_fprop(s, x.data(), w.data(), b.data(), y_ref.data());
  ref_dgrad(s, dy.data(), w.data(), dx_ref.data());
  ref_wgrad(s, dy.data(), x.data(), dw_ref.data());

  DeviceBuf dx_, dw_, db_, ddy_;
  CUDA_CHECK(cudaMalloc(&dx_.p, x.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dw_.p, w.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&db_.p, b.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&ddy_.p, dy.size() * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(dx_.p, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dw_.p, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(db_.p, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(ddy_.p, dy.data(), dy.size() * sizeof(float), cudaMemcpyHostToDevice));
  const float* xd = static_cast<float*>(dx_.p);
  const float* wd = static_cast<float*>(dw_.p);
  const float* bd = static_cast<float*>(db_.p);
  const float* dyd = static_cast<float*>(ddy_.p);

  for (const Algo& a : kAlgos) {
    for (ConvDir dir : {ConvDir::kFprop, ConvDir::kDgrad, ConvDir::kWgrad}) {
      if (!a.can_implement(s, dir, sizeof(float))) {
        std::printf("  %-8s cannot implement\n", a.name);
        break;
      }
      const std::vector<float>& ref = dir == ConvDir::kFprop ? y_ref : dir == ConvDir::kDgrad ? dx_ref : dw_ref;
      if (!check_one(a, dir, s, size_t(1) << 30, xd, wd, bd, dyd, ref, "ws=big", fails)) return false;
      if (!check_one(a, dir, s, 0, xd, wd, bd, dyd, ref, "ws=min", fails)) return false;
    }
  }
  return true;
}

// ---- timing ---------------------------------------------------------------------------------------
bool time_case(const Case& cs) {
  constexpr int kWarmup = 3, kReps = 20;
  const Conv2dShape s = make_shape(cs);
  std::vector<float> x(numel_x(s)), w(numel_w(s)), b(s.K);
  fill(x, 5), fill(w, 6), fill(b, 7);
  DeviceBuf dx_, dw_, db_, dy_;
  CUDA_CHECK(cudaMalloc(&dx_.p, x.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dw_.p, w.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&db_.p, b.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&dy_.p, numel_y(s) * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(dx_.p, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dw_.p, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(db_.p, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  std::printf("%s (%s, %.2f GFLOP)\n", cs.name, cs.nhwc ? "NHWC" : "NCHW", s.fprop_flops() / 1e9);
  for (const Algo& a : kAlgos) {
    if (!a.can_implement(s, ConvDir::kFprop, sizeof(float))) continue;
    const size_t ws_bytes = a.workspace_bytes(s, ConvDir::kFprop, sizeof(float), size_t(1) << 30);
    DeviceBuf ws;
    if (ws_bytes) CUDA_CHECK(cudaMalloc(&ws.p, ws_bytes));
    auto run = [&]() {
      return a.fprop(s, static_cast<float*>(dx_.p), static_cast<float*>(dw_.p), static_cast<float*>(db_.p),
                     static_cast<float*>(dy_.p), ws.p, ws_bytes, 0);
    };
    for (int i = 0; i < kWarmup; ++i) CUDA_CHECK(run());
    std::vector<float> ms(kReps);
    for (int i = 0; i < kReps; ++i) {
      CUDA_CHECK(cudaEventRecord(e0));
      CUDA_CHECK(run());
      CUDA_CHECK(cudaEventRecord(e1));
      CUDA_CHECK(cudaEventSynchronize(e1));
      CUDA_CHECK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[kReps / 2];
    std::printf("  %-8s %8.3f ms  %6.2f TFLOP/s  ws=%zu B\n", a.name, med, s.fprop_flops() / (med * 1e-3) / 1e12,
                ws_bytes);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return true;
}

int main() {
  const Case checks[] = {
      {"stem 7x7 s2 C=3", 2, 3, 23, 21, 16, 7, 7, 3, 2, 1, 1, false},
      {"stem 7x7 s2 C=3", 2, 3, 23, 21, 16, 7, 7, 3, 2, 1, 1, true},
      {"1x1 s1", 3, 16, 9, 7, 24, 1, 1, 0, 1, 1, 1, false},
      {"1x1 s1", 3, 16, 9, 7, 24, 1, 1, 0, 1, 1, 1, true},
      {"1x1 s2 grouped", 2, 12, 9, 10, 8, 1, 1, 0, 2, 1, 2, false},
      {"1x1 s2 grouped", 2, 12, 9, 10, 8, 1, 1, 0, 2, 1, 2, true},
      {"3x3 p1", 2, 19, 13, 11, 33, 3, 3, 1, 1, 1, 1, false},
      {"3x3 p1", 2, 19, 13, 11, 33, 3, 3, 1, 1, 1, 1, true},
      {"depthwise 3x3 mult 2", 2, 10, 12, 9, 20, 3, 3, 1, 1, 1, 10, false},
      {"depthwise 3x3 s2", 2, 8, 13, 13, 8, 3, 3, 1, 2, 1, 8, true},
      {"tails 5x3 dil 2 groups 3", 3, 9, 17, 14, 15, 5, 3, 2, 1, 2, 3, false},
      {"tails 5x3 s3 dil 2 groups 3", 1, 9, 17, 14, 15, 5, 3, 2, 3, 2, 3, true},
      {"big tile 130 outputs", 1, 8, 20, 20, 130, 3, 3, 1, 1, 1, 1, false},
  };
  int fails = 0;
  for (const Case& c : checks)
    if (!check_case(c, fails)) return 1;
  std::printf("checks: %s (%d failures)\n\n", fails ? "FAIL" : "PASS", fails);

#if defined(FASTCONV_EMU)
  return fails ? 1 : 0;  // the emulated device has no timeline: checks only
#endif
  const Case timings[] = {
      {"resnet stem 7x7 s2 64", 32, 3, 224, 224, 64, 7, 7, 3, 2, 1, 1, false},
      {"resnet 3x3 64->64 56x56", 32, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, false},
      {"resnet 3x3 64->64 56x56", 32, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, true},
      {"resnet 1x1 256->64 56x56", 32, 256, 56, 56, 64, 1, 1, 0, 1, 1, 1, false},
      {"resnet 1x1 256->64 56x56", 32, 256, 56, 56, 64, 1, 1, 0, 1, 1, 1, true},
      {"resnet 3x3 512->512 7x7", 32, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1, false},
      {"depthwise 3x3 256 28x28", 32, 256, 28, 28, 256, 3, 3, 1, 1, 1, 256, false},
  };
  for (const Case& c : timings)
    if (!time_case(c)) return 1;
  return fails ? 1 : 0;
}
