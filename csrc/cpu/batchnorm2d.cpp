// CPU batch norm over x [N, C, H, W], one channel per OpenMP iteration.
//
//   batch_norm_train_fwd           per channel: two passes in double (mean, then Σ(x − mean)²) so a
//                                  large mean (1e3 with std 1) does not cancel away the variance;
//                                  then y = x·a + b with a = w·invstd, b = bias − mean·a
//   batch_norm_eval_fwd            per channel: the same affine map from the running statistics
//   batch_norm_bwd                 per channel: Σdy and Σdy·(x − mean) in double, then dx by torch's
//                                  formula dx = w·invstd·(dy − mean(dy) − x̂·mean(dy·x̂)) (train) or
//                                  dx = dy·w·invstd (eval); relu masks dy by y > 0 first
//   batch_norm_update_running_stats  per channel, the momentum update with the unbiased variance
//
// x, y, dy and dx are addressed through 64-bit strides (NCHW, channels_last or any view);
// per-channel vectors (weight, bias, statistics) are dense [C].
#include <cmath>

#include "fastconv/cpu_api.h"

namespace fastconv {
namespace cpu {
namespace {

bool valid_bn(const BatchNormShape& s) { return s.N >= 0 && s.C >= 0 && s.H >= 0 && s.W >= 0; }

// Visits every (n, h, w) of channel c, passing the offsets into the x-strided and y-strided tensors.
template <typename F>
void for_each_in_channel(const BatchNormShape& s, int64_t c, F&& f) {
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t w = 0; w < s.W; ++w) f(s.x.offset(n, c, h, w), s.y.offset(n, c, h, w));
}

template <typename T>
T relu_if(double v, bool relu) {
  // v < 0 rather than max(v, 0) so that NaN passes through, as torch.relu.
  return T(relu && v < 0.0 ? 0.0 : v);
}

}  // namespace

template <typename T>
Status batch_norm_train_fwd(const BatchNormShape& s, const T* x, const T* weight, const T* bias, double eps,
                            bool relu, T* y, T* save_mean, T* save_invstd, T* batch_var) {
  if (!valid_bn(s)) return Status::kInvalidShape;
  if (s.C == 0) return Status::kSuccess;
  if (!save_mean || !save_invstd || !batch_var) return Status::kNullPointer;
  const int64_t count = s.count();
  if (count > 0 && (!x || !y)) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.C; ++c) {
    // An empty batch has no statistics; report mean 0, variance 0 so nothing downstream is NaN.
    double mean = 0.0, var = 0.0;
    if (count > 0) {
      double sum = 0.0;
      for_each_in_channel(s, c, [&](int64_t xo, int64_t) { sum += double(x[xo]); });
      mean = sum / double(count);
      double sq = 0.0;
      for_each_in_channel(s, c, [&](int64_t xo, int64_t) {
        const double d = double(x[xo]) - mean;
        sq += d * d;
      });
      var = sq / double(count);
    }
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean[c] = T(mean);
    save_invstd[c] = T(invstd);
    batch_var[c] = T(var);
    const double a = (weight ? double(weight[c]) : 1.0) * invstd;
    const double b = (bias ? double(bias[c]) : 0.0) - mean * a;
    for_each_in_channel(s, c, [&](int64_t xo, int64_t yo) { y[yo] = relu_if<T>(double(x[xo]) * a + b, relu); });
  }
  return Status::kSuccess;
}

template <typename T>
Status batch_norm_eval_fwd(const BatchNormShape& s, const T* x, const T* weight, const T* bias,
                           const T* running_mean, const T* running_var, double eps, bool relu, T* y) {
  if (!valid_bn(s)) return Status::kInvalidShape;
  if (s.C == 0 || s.count() == 0) return Status::kSuccess;
  if (!x || !y || !running_mean || !running_var) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.C; ++c) {
    const double invstd = 1.0 / std::sqrt(double(running_var[c]) + eps);
    const double a = (weight ? double(weight[c]) : 1.0) * invstd;
    const double b = (bias ? double(bias[c]) : 0.0) - double(running_mean[c]) * a;
    for_each_in_channel(s, c, [&](int64_t xo, int64_t yo) { y[yo] = relu_if<T>(double(x[xo]) * a + b, relu); });
  }
  return Status::kSuccess;
}

template <typename T>
Status batch_norm_bwd(const BatchNormShape& s, const T* dy, const T* x, const T* y, const T* weight,
                      const T* mean, const T* invstd, bool train, bool relu, T* dx, T* dweight, T* dbias) {
  if (!valid_bn(s)) return Status::kInvalidShape;
  if (s.C == 0 || (!dx && !dweight && !dbias)) return Status::kSuccess;
  const int64_t count = s.count();
  if (!mean || !invstd) return Status::kNullPointer;
  if (count > 0 && (!dy || !x || (relu && !y))) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.C; ++c) {
    const double m = double(mean[c]), is = double(invstd[c]);
    const double w = weight ? double(weight[c]) : 1.0;
    // relu: the gradient reaching the affine output is dy where the fused output was positive.
    auto grad = [&](int64_t yo) { return (relu && !(double(y[yo]) > 0.0)) ? 0.0 : double(dy[yo]); };
    double sum_dy = 0.0, dot = 0.0;  // Σg and Σg·(x − mean)
    const bool need_sums = dweight || dbias || (dx && train);
    if (need_sums) {
      for_each_in_channel(s, c, [&](int64_t xo, int64_t yo) {
        const double g = grad(yo);
        sum_dy += g;
        dot += g * (double(x[xo]) - m);
      });
    }
    if (dbias) dbias[c] = T(sum_dy);
    if (dweight) dweight[c] = T(dot * is);
    if (!dx || count == 0) continue;
    if (train) {
      // dx = w·invstd·(g − mean(g) − (x − mean)·invstd²·mean(g·(x − mean)))
      const double proj = dot * is * is / double(count);
      const double gmean = sum_dy / double(count);
      const double scale = w * is;
      for_each_in_channel(s, c, [&](int64_t xo, int64_t yo) {
        dx[yo] = T((grad(yo) - (double(x[xo]) - m) * proj - gmean) * scale);
      });
    } else {
      const double scale = w * is;
      for_each_in_channel(s, c, [&](int64_t, int64_t yo) { dx[yo] = T(grad(yo) * scale); });
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status batch_norm_update_running_stats(int64_t C, const T* save_mean, const T* batch_var, int64_t count,
                                       double factor, T* running_mean, T* running_var) {
  if (C < 0 || count < 0) return Status::kInvalidShape;
  if (C == 0) return Status::kSuccess;
  if (!save_mean || !batch_var || !running_mean || !running_var) return Status::kNullPointer;
  // count == 1 gives 0/0 = NaN, as torch's own update does.
  const double unbias = double(count) / double(count - 1);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    running_mean[c] = T(factor * double(save_mean[c]) + (1.0 - factor) * double(running_mean[c]));
    running_var[c] = T(factor * (double(batch_var[c]) * unbias) + (1.0 - factor) * double(running_var[c]));
  }
  return Status::kSuccess;
}

#define FASTCONV_INSTANTIATE_BATCHNORM2D(T)                                                              \
  template Status batch_norm_train_fwd<T>(const BatchNormShape&, const T*, const T*, const T*, double, bool, \
                                          T*, T*, T*, T*);                                               \
  template Status batch_norm_eval_fwd<T>(const BatchNormShape&, const T*, const T*, const T*, const T*,    \
                                         const T*, double, bool, T*);                                    \
  template Status batch_norm_bwd<T>(const BatchNormShape&, const T*, const T*, const T*, const T*,         \
                                    const T*, const T*, bool, bool, T*, T*, T*);                         \
  template Status batch_norm_update_running_stats<T>(int64_t, const T*, const T*, int64_t, double, T*, T*);
FASTCONV_INSTANTIATE_BATCHNORM2D(float)
FASTCONV_INSTANTIATE_BATCHNORM2D(double)
#undef FASTCONV_INSTANTIATE_BATCHNORM2D

}  // namespace cpu
}  // namespace fastconv
