// im2col and gather-form col2im for one image and one group, float and double.
//
// The column buffer of image n, group g is a dense row-major [Cg·R·S, P·Q] matrix whose row
// (c·R + r)·S + s holds x[n, g·Cg + c, p·stride − pad + r·dil, q·stride − pad + s·dil] over (p, q),
// zero where that lands in the padding. fprop is then W_g [Kg, Cg·R·S] @ col, dgrad is
// col = W_g^T @ dY followed by col2im.
//
// Kernels and who computes what (OpenMP threads split the outer loop, static schedule; inside an
// enclosing parallel region, e.g. the binding's at::parallel_for over images, they run serially):
//   im2col  one col row (c, r, s) per iteration
//   col2im  one dx[n, g·Cg + c, h, :] row per iteration of the (c, h) loop; each dx element sums the
//           col entries im2col copied from it (gather form: no scatter, deterministic)
#include <cstdint>

#include "fastconv/cpu_api.h"

namespace fastconv {
namespace cpu {

template <typename T>
Status im2col(const Conv2dShape& s, const T* x, int64_t n, int64_t g, T* col) {
  if (!s.valid() || n < 0 || n >= s.N || g < 0 || g >= s.groups) return Status::kInvalidShape;
  if (x == nullptr || col == nullptr) return Status::kNullPointer;
  const int64_t Cg = s.Cg();
  const int64_t PQ = s.P * s.Q;
  const int64_t rows = Cg * s.R * s.S;

#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = row % s.S;
    const int64_t r = (row / s.S) % s.R;
    const int64_t c = row / (s.S * s.R);
    const T* xc = x + n * s.x.n + (g * Cg + c) * s.x.c;
    T* out = col + row * PQ;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t ih = s.in_h(p, r);
      T* orow = out + p * s.Q;
      if (ih < 0 || ih >= s.H) {
        for (int64_t q = 0; q < s.Q; ++q) orow[q] = T(0);
        continue;
      }
      const T* xr = xc + ih * s.x.h;
      for (int64_t q = 0; q < s.Q; ++q) {
        const int64_t iw = s.in_w(q, t);
        orow[q] = (iw >= 0 && iw < s.W) ? xr[iw * s.x.w] : T(0);
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status col2im(const Conv2dShape& s, const T* col, int64_t n, int64_t g, T* dx) {
  if (!s.valid() || n < 0 || n >= s.N || g < 0 || g >= s.groups) return Status::kInvalidShape;
  if (col == nullptr || dx == nullptr) return Status::kNullPointer;
  const int64_t Cg = s.Cg();
  const int64_t PQ = s.P * s.Q;

#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < Cg; ++c) {
    for (int64_t h = 0; h < s.H; ++h) {
      T* dxrow = dx + s.x.offset(n, g * Cg + c, h, 0);
      for (int64_t iw = 0; iw < s.W; ++iw) {
        T acc = 0;  // fixed summation order over (r, s): deterministic
        for (int64_t r = 0; r < s.R; ++r) {
          // Output row p with p·stride − pad + r·dil == h, if one exists.
          const int64_t th = h + s.pad_h - r * s.dil_h;
          if (th < 0 || th % s.stride_h != 0) continue;
          const int64_t p = th / s.stride_h;
          if (p >= s.P) continue;
          const T* crow = col + (c * s.R + r) * s.S * PQ + p * s.Q;
          for (int64_t t = 0; t < s.S; ++t) {
            const int64_t tw = iw + s.pad_w - t * s.dil_w;
            if (tw < 0 || tw % s.stride_w != 0) continue;
            const int64_t q = tw / s.stride_w;
            if (q >= s.Q) continue;
            acc += crow[t * PQ + q];
          }
        }
        dxrow[iw * s.x.w] = acc;
      }
    }
  }
  return Status::kSuccess;
}

template Status im2col<float>(const Conv2dShape&, const float*, int64_t, int64_t, float*);
template Status im2col<double>(const Conv2dShape&, const double*, int64_t, int64_t, double*);
template Status col2im<float>(const Conv2dShape&, const float*, int64_t, int64_t, float*);
template Status col2im<double>(const Conv2dShape&, const double*, int64_t, int64_t, double*);

}  // namespace cpu
}  // namespace fastconv
