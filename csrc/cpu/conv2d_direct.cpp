// Direct (loop-nest) 2-D convolution on the CPU: fprop, dgrad and wgrad for float and double.
// Any configuration torch accepts: groups (depthwise included), stride, padding, dilation, and
// any element strides (NCHW, channels_last, sliced views), all through Strides4.
//
// Kernels and who computes what (OpenMP threads split the collapsed outer loops, static schedule):
//   conv2d_direct_fprop  one y[n, k, p, :] row per iteration of the (n, k, p) loop
//   conv2d_direct_dgrad  one dx[n, c, h, :] row per iteration of the (n, c, h) loop (gather form:
//                        each dx element sums the dy entries whose window covers it, no scatter)
//   conv2d_direct_wgrad  one dw[k, c, r, s] element per iteration of the (k, c, r, s) loop, reduced
//                        over n, p, q
// Every output element is produced by exactly one thread in a fixed order, so results are
// deterministic and independent of the thread count. Sums are accumulated in double: the extra
// conversions are cheap next to the strided loads, and float results then match a float64 reference
// to the last bit or so.
#include <cstdint>

#include "fastconv/cpu_api.h"

namespace fastconv {
namespace cpu {
namespace {

using Acc = double;

// Ceiling division that is correct for negative numerators.
inline int64_t ceil_div_signed(int64_t a, int64_t b) { return -floor_div(-a, b); }

// The range [lo, hi) of filter taps t whose input coordinate o·stride − pad + t·dil lies in
// [0, in). Hoisting it out of the inner loops removes the padding branch.
inline void tap_range(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t taps, int64_t in,
                      int64_t* lo, int64_t* hi) {
  const int64_t base = o * stride - pad;
  *lo = max64(int64_t{0}, ceil_div_signed(-base, dil));
  *hi = min64(taps, floor_div(in - 1 - base, dil) + 1);
  if (*hi < *lo) *hi = *lo;
}

// The range [lo, hi) of output positions o whose input coordinate o·stride − pad + t·dil lies in
// [0, in), for a fixed tap t.
inline void out_range(int64_t t, int64_t stride, int64_t pad, int64_t dil, int64_t outs, int64_t in,
                      int64_t* lo, int64_t* hi) {
  const int64_t off = t * dil - pad;
  *lo = max64(int64_t{0}, ceil_div_signed(-off, stride));
  *hi = min64(outs, floor_div(in - 1 - off, stride) + 1);
  if (*hi < *lo) *hi = *lo;
}

inline int64_t numel4(int64_t a, int64_t b, int64_t c, int64_t d) { return a * b * c * d; }

}  // namespace

template <typename T>
Status conv2d_direct_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  if (!s.valid()) return Status::kInvalidShape;
  if (numel4(s.N, s.K, s.P, s.Q) == 0) return Status::kSuccess;
  if (x == nullptr || w == nullptr || y == nullptr) return Status::kNullPointer;
  const int64_t Cg = s.Cg(), Kg = s.Kg();

#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t k = 0; k < s.K; ++k) {
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t c0 = (k / Kg) * Cg;
        int64_t r_lo, r_hi;
        tap_range(p, s.stride_h, s.pad_h, s.dil_h, s.R, s.H, &r_lo, &r_hi);
        const T* xn = x + n * s.x.n;
        const T* wk = w + k * s.w.n;
        T* yrow = y + s.y.offset(n, k, p, 0);
        for (int64_t q = 0; q < s.Q; ++q) {
          int64_t s_lo, s_hi;
          tap_range(q, s.stride_w, s.pad_w, s.dil_w, s.S, s.W, &s_lo, &s_hi);
          Acc acc = bias != nullptr ? static_cast<Acc>(bias[k]) : Acc(0);
          for (int64_t c = 0; c < Cg; ++c) {
            const T* xc = xn + (c0 + c) * s.x.c;
            const T* wc = wk + c * s.w.c;
            for (int64_t r = r_lo; r < r_hi; ++r) {
              const T* xr = xc + s.in_h(p, r) * s.x.h;
              const T* wr = wc + r * s.w.h;
              for (int64_t t = s_lo; t < s_hi; ++t) {
                acc += static_cast<Acc>(xr[s.in_w(q, t) * s.x.w]) * static_cast<Acc>(wr[t * s.w.w]);
              }
            }
          }
          yrow[q * s.y.w] = static_cast<T>(acc);
        }
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status conv2d_direct_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  if (!s.valid()) return Status::kInvalidShape;
  if (numel4(s.N, s.C, s.H, s.W) == 0) return Status::kSuccess;
  if (dy == nullptr || w == nullptr || dx == nullptr) return Status::kNullPointer;
  const int64_t Cg = s.Cg(), Kg = s.Kg();

#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t c = 0; c < s.C; ++c) {
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t g = c / Cg;
        const int64_t cl = c - g * Cg;  // channel index inside the weight's C/groups dimension
        const T* dyn = dy + n * s.y.n;
        T* dxrow = dx + s.x.offset(n, c, h, 0);
        for (int64_t iw = 0; iw < s.W; ++iw) {
          Acc acc = 0;
          for (int64_t r = 0; r < s.R; ++r) {
            // Output row p with p·stride − pad + r·dil == h, if it exists.
            const int64_t th = h + s.pad_h - r * s.dil_h;
            if (th < 0 || th % s.stride_h != 0) continue;
            const int64_t p = th / s.stride_h;
            if (p >= s.P) continue;
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t tw = iw + s.pad_w - t * s.dil_w;
              if (tw < 0 || tw % s.stride_w != 0) continue;
              const int64_t q = tw / s.stride_w;
              if (q >= s.Q) continue;
              const T* dyp = dyn + p * s.y.h + q * s.y.w;
              const T* wp = w + cl * s.w.c + r * s.w.h + t * s.w.w;
              for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k) {
                acc += static_cast<Acc>(dyp[k * s.y.c]) * static_cast<Acc>(wp[k * s.w.n]);
              }
            }
          }
          dxrow[iw * s.x.w] = static_cast<T>(acc);
        }
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status conv2d_direct_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw) {
  if (!s.valid()) return Status::kInvalidShape;
  const int64_t Cg = s.Cg(), Kg = s.Kg();
  if (numel4(s.K, Cg, s.R, s.S) == 0) return Status::kSuccess;
  if (dw == nullptr || (s.N > 0 && (dy == nullptr || x == nullptr))) return Status::kNullPointer;

#pragma omp parallel for collapse(4) schedule(static)
  for (int64_t k = 0; k < s.K; ++k) {
    for (int64_t c = 0; c < Cg; ++c) {
      for (int64_t r = 0; r < s.R; ++r) {
        for (int64_t t = 0; t < s.S; ++t) {
          const int64_t cx = (k / Kg) * Cg + c;  // input channel read by this filter tap
          int64_t p_lo, p_hi, q_lo, q_hi;
          out_range(r, s.stride_h, s.pad_h, s.dil_h, s.P, s.H, &p_lo, &p_hi);
          out_range(t, s.stride_w, s.pad_w, s.dil_w, s.Q, s.W, &q_lo, &q_hi);
          Acc acc = 0;
          for (int64_t n = 0; n < s.N; ++n) {
            const T* dyk = dy + n * s.y.n + k * s.y.c;
            const T* xc = x + n * s.x.n + cx * s.x.c;
            for (int64_t p = p_lo; p < p_hi; ++p) {
              const T* dyp = dyk + p * s.y.h;
              const T* xr = xc + s.in_h(p, r) * s.x.h;
              for (int64_t q = q_lo; q < q_hi; ++q) {
                acc += static_cast<Acc>(dyp[q * s.y.w]) * static_cast<Acc>(xr[s.in_w(q, t) * s.x.w]);
              }
            }
          }
          dw[s.w.offset(k, c, r, t)] = static_cast<T>(acc);
        }
      }
    }
  }
  return Status::kSuccess;
}

#define FASTCONV_INSTANTIATE_CONV2D_DIRECT(T)                                                       \
  template Status conv2d_direct_fprop<T>(const Conv2dShape&, const T*, const T*, const T*, T*);   \
  template Status conv2d_direct_dgrad<T>(const Conv2dShape&, const T*, const T*, T*);             \
  template Status conv2d_direct_wgrad<T>(const Conv2dShape&, const T*, const T*, T*);

FASTCONV_INSTANTIATE_CONV2D_DIRECT(float)
FASTCONV_INSTANTIATE_CONV2D_DIRECT(double)
#undef FASTCONV_INSTANTIATE_CONV2D_DIRECT

}  // namespace cpu
}  // namespace fastconv
