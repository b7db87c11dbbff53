// Direct (loop-nest) 2-D convolution on the CPU: fprop, dgrad and wgrad for float and double.
// Any configuration torch accepts: groups (depthwise included), stride, padding, dilation, and
// any element strides (NCHW, channels_last, sliced views), all through Strides4.
//
// Kernels and who computes what (OpenMP threads split the collapsed outer loops, static schedule):
//   conv2d_direct_fprop  one y[n, k, p, :] row per iteration of the (n, k, p) loop, accumulated in
//                        a per-thread row buffer
//   conv2d_direct_dgrad  one dx[n, c, h, :] row per iteration of the (n, c, h) loop, in a per-thread
//                        row buffer (gather form across threads: only this thread writes the row)
//   conv2d_direct_wgrad  one dw[k, c, r, s] element per iteration of the (k, c, r, s) loop, reduced
//                        over n, p, q
// Every output element is produced by exactly one thread in a fixed order, so results are
// deterministic and independent of the thread count. Sums are accumulated in double: the extra
// conversions are cheap next to the loads, and a float result is then the float64 sum rounded once.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastconv/cpu_api.h"

namespace fastconv {
namespace cpu {
namespace {

using Acc = double;

// Independent partial sums in the dense wgrad dot product (one SIMD register of doubles or two).
constexpr int kLanes = 4;

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

#pragma omp parallel
  {
    // One output row of accumulators per thread: the inner loop runs over q with independent
    // sums, so it vectorises without reassociating any of them.
    std::vector<Acc> acc(static_cast<size_t>(s.Q));
#pragma omp for collapse(3) schedule(static)
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t k = 0; k < s.K; ++k) {
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t c0 = (k / Kg) * Cg;
          const Acc b0 = bias != nullptr ? static_cast<Acc>(bias[k]) : Acc(0);
          for (int64_t q = 0; q < s.Q; ++q) acc[q] = b0;
          int64_t r_lo, r_hi;
          tap_range(p, s.stride_h, s.pad_h, s.dil_h, s.R, s.H, &r_lo, &r_hi);
          for (int64_t c = 0; c < Cg; ++c) {
            const T* xc = x + n * s.x.n + (c0 + c) * s.x.c;
            const T* wc = w + k * s.w.n + c * s.w.c;
            for (int64_t r = r_lo; r < r_hi; ++r) {
              const T* xr = xc + s.in_h(p, r) * s.x.h;
              for (int64_t t = 0; t < s.S; ++t) {
                int64_t q_lo, q_hi;
                out_range(t, s.stride_w, s.pad_w, s.dil_w, s.Q, s.W, &q_lo, &q_hi);
                const Acc wv = static_cast<Acc>(wc[r * s.w.h + t * s.w.w]);
                // x column of output q is q·stride_w + (t·dil_w − pad_w), inside [0, W) for q in range.
                const int64_t off = (t * s.dil_w - s.pad_w) * s.x.w;
                const int64_t step = s.stride_w * s.x.w;
                if (step == 1) {  // dense rows (NCHW, stride 1): a unit-stride loop the compiler vectorises
                  const T* xt = xr + off;
                  for (int64_t q = q_lo; q < q_hi; ++q) acc[q] += wv * static_cast<Acc>(xt[q]);
                } else {
                  for (int64_t q = q_lo; q < q_hi; ++q) acc[q] += wv * static_cast<Acc>(xr[q * step + off]);
                }
              }
            }
          }
          T* yrow = y + s.y.offset(n, k, p, 0);
          for (int64_t q = 0; q < s.Q; ++q) yrow[q * s.y.w] = static_cast<T>(acc[q]);
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

#pragma omp parallel
  {
    // The dx row [n, c, h, :] is owned by one thread and accumulated in this buffer: within the
    // row, dy[q] adds into column q·stride_w − pad_w + t·dil_w, in a fixed (r, k, t, q) order.
    std::vector<Acc> acc(static_cast<size_t>(s.W));
#pragma omp for collapse(3) schedule(static)
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t c = 0; c < s.C; ++c) {
        for (int64_t h = 0; h < s.H; ++h) {
          const int64_t g = c / Cg;
          const int64_t cl = c - g * Cg;  // channel index inside the weight's C/groups dimension
          for (int64_t iw = 0; iw < s.W; ++iw) acc[iw] = 0;
          for (int64_t r = 0; r < s.R; ++r) {
            // Output row p with p·stride − pad + r·dil == h, if it exists.
            const int64_t th = h + s.pad_h - r * s.dil_h;
            if (th < 0 || th % s.stride_h != 0) continue;
            const int64_t p = th / s.stride_h;
            if (p >= s.P) continue;
            for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k) {
              const T* dyr = dy + s.y.offset(n, k, p, 0);
              const T* wr = w + k * s.w.n + cl * s.w.c + r * s.w.h;
              for (int64_t t = 0; t < s.S; ++t) {
                int64_t q_lo, q_hi;
                out_range(t, s.stride_w, s.pad_w, s.dil_w, s.Q, s.W, &q_lo, &q_hi);
                const Acc wv = static_cast<Acc>(wr[t * s.w.w]);
                const int64_t off = t * s.dil_w - s.pad_w;
                if (s.stride_w == 1 && s.y.w == 1) {  // unit-stride loop the compiler vectorises
                  Acc* at = acc.data() + off + q_lo;
                  const T* dq = dyr + q_lo;
                  for (int64_t q = 0; q < q_hi - q_lo; ++q) at[q] += wv * static_cast<Acc>(dq[q]);
                } else {
                  for (int64_t q = q_lo; q < q_hi; ++q) {
                    acc[q * s.stride_w + off] += wv * static_cast<Acc>(dyr[q * s.y.w]);
                  }
                }
              }
            }
          }
          T* dxrow = dx + s.x.offset(n, c, h, 0);
          for (int64_t iw = 0; iw < s.W; ++iw) dxrow[iw * s.x.w] = static_cast<T>(acc[iw]);
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
              if (s.y.w == 1 && s.x.w == 1 && s.stride_w == 1) {
                // Dense rows: kLanes independent partial sums (a fixed order, so still deterministic)
                // let the compiler vectorise the dot product without reassociating a single sum.
                const T* dq = dyp + q_lo;
                const T* xq = xr + (q_lo + t * s.dil_w - s.pad_w);  // in bounds: q_lo is a valid position
                const int64_t len = q_hi - q_lo;
                Acc lane[kLanes] = {};
                int64_t q = 0;
                for (; q + kLanes <= len; q += kLanes) {
                  for (int j = 0; j < kLanes; ++j) {
                    lane[j] += static_cast<Acc>(dq[q + j]) * static_cast<Acc>(xq[q + j]);
                  }
                }
                for (; q < len; ++q) acc += static_cast<Acc>(dq[q]) * static_cast<Acc>(xq[q]);
                for (int j = 0; j < kLanes; ++j) acc += lane[j];
              } else {
                for (int64_t q = q_lo; q < q_hi; ++q) {
                  acc += static_cast<Acc>(dyp[q * s.y.w]) * static_cast<Acc>(xr[s.in_w(q, t) * s.x.w]);
                }
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
