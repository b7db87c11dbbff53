// Portability macros so index math compiles both in .cpp (g++) and .cu (nvcc) files.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FC_HD __host__ __device__ __forceinline__
#else
#define FC_HD inline
#endif

#include <cstdint>

namespace fastconv {

FC_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FC_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FC_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Floor division that is correct for negative numerators (C++ '/' truncates towards zero).
FC_HD int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b > a) ? q - 1 : q;
}

}  // namespace fastconv
