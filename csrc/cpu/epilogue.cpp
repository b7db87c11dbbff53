// The fused convolution epilogue on the CPU, applied in place on a finished conv output:
//
//   conv2d_epilogue   y = relu?( y·scale[k] + bias[k] + residual ),  one OpenMP iteration per (n, k)
//                     plane; the p, q loops follow y's strides, so NCHW and channels_last both work.
//
// This is the reference semantics of torch.ops.fastconv.conv2d_fused; the CUDA twin is the functor
// in csrc/cuda/epilogue.cuh (which rounds once, in FP32, instead of after every operation).
#include <cstdint>

#include "fastconv/cpu_api.h"

namespace fastconv {
namespace cpu {

template <typename T>
Status conv2d_epilogue(const Conv2dShape& s, const T* scale, const T* bias, const T* residual,
                       const Strides4& res, bool relu, T* y) {
  if (s.N < 0 || s.K < 0 || s.P < 0 || s.Q < 0) return Status::kInvalidShape;
  if (y == nullptr && s.N * s.K * s.P * s.Q > 0) return Status::kNullPointer;
  const int64_t planes = s.N * s.K;
#pragma omp parallel for schedule(static)
  for (int64_t nk = 0; nk < planes; ++nk) {
    const int64_t n = nk / s.K, k = nk % s.K;
    const T a = scale != nullptr ? scale[k] : T(1);
    const T b = bias != nullptr ? bias[k] : T(0);
    for (int64_t p = 0; p < s.P; ++p) {
      for (int64_t q = 0; q < s.Q; ++q) {
        T& v = y[s.y.offset(n, k, p, q)];
        T t = v;
        if (scale != nullptr) t = t * a;
        if (bias != nullptr) t = t + b;
        if (residual != nullptr) t = t + residual[res.offset(n, k, p, q)];
        if (relu && t < T(0)) t = T(0);  // NaN compares false and passes through
        v = t;
      }
    }
  }
  return Status::kSuccess;
}

#define FASTCONV_INSTANTIATE_EPILOGUE(T) \
  template Status conv2d_epilogue<T>(const Conv2dShape&, const T*, const T*, const T*, const Strides4&, bool, T*);
FASTCONV_INSTANTIATE_EPILOGUE(float)
FASTCONV_INSTANTIATE_EPILOGUE(double)
#undef FASTCONV_INSTANTIATE_EPILOGUE

}  // namespace cpu
}  // namespace fastconv
