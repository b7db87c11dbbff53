// CPU pooling kernels, PyTorch semantics bit for bit where the summation order allows it.
//
//   max_pool2d_fwd           one (n, c) plane per OpenMP iteration; y and idx per output element
//   max_pool2d_bwd           one (n, c) plane per iteration; each dx element gathers the dy of the
//                            windows that chose it (idx == its flat index)
//   avg_pool2d_fwd / _bwd    same split; torch's window / divisor rule, backward by gather
//   adaptive_avg_pool2d_fwd / _bwd
//                            same split; windows [floor(o·in/out), ceil((o+1)·in/out))
//
// Every tensor is addressed through the 64-bit strides in Pool2dShape, so NCHW, channels_last and
// strided views need no copy. Gather-form backward keeps the result deterministic and, because it
// visits the windows in the same (oh, ow) order as torch's scatter loop, identical to torch's.
#include <cmath>
#include <limits>
#include <type_traits>

#include "fastconv/cpu_api.h"

namespace fastconv {
namespace cpu {
namespace {

bool valid_pool(const Pool2dShape& s) {
  return s.N >= 0 && s.C >= 0 && s.H >= 0 && s.W >= 0 && s.P >= 0 && s.Q >= 0 && s.kh > 0 && s.kw > 0 &&
         s.stride_h > 0 && s.stride_w > 0 && s.pad_h >= 0 && s.pad_w >= 0 && s.dil_h > 0 && s.dil_w > 0;
}

bool valid_adaptive(const Pool2dShape& s) {
  return s.N >= 0 && s.C >= 0 && s.H >= 0 && s.W >= 0 && s.P >= 0 && s.Q >= 0;
}

// Output windows [lo, hi] of a (possibly dilated) pooling along one axis that can contain input
// index i: o·stride − pad ≤ i ≤ o·stride − pad + (k − 1)·dil, clamped to [0, out).
struct WindowRange {
  int64_t lo, hi;  // inclusive; empty when lo > hi
};
WindowRange windows_containing(int64_t i, int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  int64_t lo = max64(0, -floor_div(-(i + pad - (k - 1) * dil), stride));  // ceil division
  int64_t hi = min64(out - 1, floor_div(i + pad, stride));
  return {lo, hi};
}

// torch's avg-pool window along one axis: [start, end) clipped to the input, and the unclipped
// extent (which may reach into the right padding) used by count_include_pad.
struct AvgWindow {
  int64_t start, end, padded_len;
};
AvgWindow avg_window(int64_t o, int64_t in, int64_t k, int64_t stride, int64_t pad) {
  int64_t start = o * stride - pad;
  int64_t end = min64(start + k, in + pad);
  int64_t padded_len = end - start;
  return {max64(start, 0), min64(end, in), padded_len};
}

template <typename T>
T avg_divisor(const AvgWindow& h, const AvgWindow& w, bool count_include_pad, int64_t divisor_override) {
  if (divisor_override > 0) return T(divisor_override);
  if (count_include_pad) return T(h.padded_len * w.padded_len);
  return T((h.end - h.start) * (w.end - w.start));
}

}  // namespace

// The first tap at or after 0 of a window starting at h0 with taps every dil (h0 may be far below 0:
// a loop stepping by dil would take pad / dil steps).
inline int64_t first_tap_inside(int64_t h0, int64_t dil) { return h0 >= 0 ? h0 : h0 + ((-h0 + dil - 1) / dil) * dil; }

// The max's starting value: -inf for floating point (torch's), the lowest value for integers.
template <typename T>
T lowest_value() {
  if constexpr (std::numeric_limits<T>::has_infinity) return -std::numeric_limits<T>::infinity();
  return std::numeric_limits<T>::lowest();
}

template <typename T>
bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) return std::isnan(v);
  return false;
}

template <typename T>
Status max_pool2d_fwd(const Pool2dShape& s, const T* x, T* y, int64_t* idx) {
  if (!valid_pool(s)) return Status::kInvalidShape;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || s.P == 0 || s.Q == 0) return Status::kSuccess;
  if (!x || !y || !idx) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    const T* xp = x + n * s.x.n + c * s.x.c;
    T* yp = y + n * s.y.n + c * s.y.c;
    int64_t* ip = idx + n * s.y.n + c * s.y.c;
    for (int64_t oh = 0; oh < s.P; ++oh) {
      int64_t h0 = oh * s.stride_h - s.pad_h;
      const int64_t h1 = min64(h0 + (s.kh - 1) * s.dil_h + 1, s.H);
      h0 = first_tap_inside(h0, s.dil_h);
      for (int64_t ow = 0; ow < s.Q; ++ow) {
        int64_t w0 = ow * s.stride_w - s.pad_w;
        const int64_t w1 = min64(w0 + (s.kw - 1) * s.dil_w + 1, s.W);
        w0 = first_tap_inside(w0, s.dil_w);
        // torch starts from -inf at the first tap; '>' keeps the first of equal values, and every
        // NaN replaces the running max, so the last NaN in the window wins.
        T best = lowest_value<T>();
        int64_t best_i = h0 * s.W + w0;
        for (int64_t ih = h0; ih < h1; ih += s.dil_h) {
          for (int64_t iw = w0; iw < w1; iw += s.dil_w) {
            const T v = xp[ih * s.x.h + iw * s.x.w];
            if (v > best || is_nan(v)) {
              best = v;
              best_i = ih * s.W + iw;
            }
          }
        }
        yp[oh * s.y.h + ow * s.y.w] = best;
        ip[oh * s.y.h + ow * s.y.w] = best_i;
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status max_pool2d_bwd(const Pool2dShape& s, const T* dy, const int64_t* idx, T* dx) {
  if (!valid_pool(s)) return Status::kInvalidShape;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || s.H == 0 || s.W == 0) return Status::kSuccess;
  if (!dx || ((!dy || !idx) && s.P > 0 && s.Q > 0)) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    const T* gp = dy + n * s.y.n + c * s.y.c;
    const int64_t* ip = idx + n * s.y.n + c * s.y.c;
    T* dp = dx + n * s.x.n + c * s.x.c;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      const WindowRange rh = windows_containing(ih, s.P, s.kh, s.stride_h, s.pad_h, s.dil_h);
      for (int64_t iw = 0; iw < s.W; ++iw) {
        const WindowRange rw = windows_containing(iw, s.Q, s.kw, s.stride_w, s.pad_w, s.dil_w);
        const int64_t self = ih * s.W + iw;
        T acc = T(0);
        for (int64_t oh = rh.lo; oh <= rh.hi; ++oh) {
          for (int64_t ow = rw.lo; ow <= rw.hi; ++ow) {
            const int64_t o = oh * s.y.h + ow * s.y.w;
            if (ip[o] == self) acc += gp[o];
          }
        }
        dp[ih * s.x.h + iw * s.x.w] = acc;
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status avg_pool2d_fwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* x, T* y) {
  if (!valid_pool(s)) return Status::kInvalidShape;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || s.P == 0 || s.Q == 0) return Status::kSuccess;
  if (!x || !y) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    const T* xp = x + n * s.x.n + c * s.x.c;
    T* yp = y + n * s.y.n + c * s.y.c;
    for (int64_t oh = 0; oh < s.P; ++oh) {
      const AvgWindow wh = avg_window(oh, s.H, s.kh, s.stride_h, s.pad_h);
      for (int64_t ow = 0; ow < s.Q; ++ow) {
        const AvgWindow ww = avg_window(ow, s.W, s.kw, s.stride_w, s.pad_w);
        T* out = yp + oh * s.y.h + ow * s.y.w;
        // A window lying wholly in the padding (possible with ceil_mode) averages nothing: 0, as torch.
        if (wh.start >= wh.end || ww.start >= ww.end) {
          *out = T(0);
          continue;
        }
        T sum = T(0);
        for (int64_t ih = wh.start; ih < wh.end; ++ih)
          for (int64_t iw = ww.start; iw < ww.end; ++iw) sum += xp[ih * s.x.h + iw * s.x.w];
        *out = sum / avg_divisor<T>(wh, ww, count_include_pad, divisor_override);
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status avg_pool2d_bwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* dy, T* dx) {
  if (!valid_pool(s)) return Status::kInvalidShape;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || s.H == 0 || s.W == 0) return Status::kSuccess;
  if (!dx || (!dy && s.P > 0 && s.Q > 0)) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    const T* gp = dy + n * s.y.n + c * s.y.c;
    T* dp = dx + n * s.x.n + c * s.x.c;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      const WindowRange rh = windows_containing(ih, s.P, s.kh, s.stride_h, s.pad_h, 1);
      for (int64_t iw = 0; iw < s.W; ++iw) {
        const WindowRange rw = windows_containing(iw, s.Q, s.kw, s.stride_w, s.pad_w, 1);
        T acc = T(0);
        for (int64_t oh = rh.lo; oh <= rh.hi; ++oh) {
          const AvgWindow wh = avg_window(oh, s.H, s.kh, s.stride_h, s.pad_h);
          if (ih < wh.start || ih >= wh.end) continue;  // the clipped window ends before ih
          for (int64_t ow = rw.lo; ow <= rw.hi; ++ow) {
            const AvgWindow ww = avg_window(ow, s.W, s.kw, s.stride_w, s.pad_w);
            if (iw < ww.start || iw >= ww.end) continue;
            // torch divides each dy before adding it: same rounding as its scatter loop.
            acc += gp[oh * s.y.h + ow * s.y.w] / avg_divisor<T>(wh, ww, count_include_pad, divisor_override);
          }
        }
        dp[ih * s.x.h + iw * s.x.w] = acc;
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status adaptive_avg_pool2d_fwd(const Pool2dShape& s, const T* x, T* y) {
  if (!valid_adaptive(s)) return Status::kInvalidShape;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || s.P == 0 || s.Q == 0) return Status::kSuccess;
  if (s.H == 0 || s.W == 0) return Status::kInvalidShape;  // every window would be empty
  if (!x || !y) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    const T* xp = x + n * s.x.n + c * s.x.c;
    T* yp = y + n * s.y.n + c * s.y.c;
    for (int64_t oh = 0; oh < s.P; ++oh) {
      const int64_t h0 = adaptive_start(oh, s.P, s.H), h1 = adaptive_end(oh, s.P, s.H);
      for (int64_t ow = 0; ow < s.Q; ++ow) {
        const int64_t w0 = adaptive_start(ow, s.Q, s.W), w1 = adaptive_end(ow, s.Q, s.W);
        // A double sum (as the batch-norm statistics): a float sum over a 2048x2048 plane lost 3.6e-5.
        double sum = 0.0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) sum += double(xp[ih * s.x.h + iw * s.x.w]);
        // Two divisions, as torch: sum / kh / kw rounds differently from sum / (kh·kw).
        yp[oh * s.y.h + ow * s.y.w] = T(sum / double(h1 - h0) / double(w1 - w0));
      }
    }
  }
  return Status::kSuccess;
}

template <typename T>
Status adaptive_avg_pool2d_bwd(const Pool2dShape& s, const T* dy, T* dx) {
  if (!valid_adaptive(s)) return Status::kInvalidShape;
  const int64_t planes = s.N * s.C;
  if (planes == 0 || s.H == 0 || s.W == 0) return Status::kSuccess;
  if (!dx || (!dy && s.P > 0 && s.Q > 0)) return Status::kNullPointer;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / s.C, c = nc % s.C;
    const T* gp = dy + n * s.y.n + c * s.y.c;
    T* dp = dx + n * s.x.n + c * s.x.c;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      // start(o) <= ih  <=>  o < ceil((ih+1)·P/H);  end(o) > ih  <=>  o >= floor(ih·P/H).
      const int64_t oh_lo = (ih * s.P) / s.H, oh_hi = min64(s.P, ((ih + 1) * s.P + s.H - 1) / s.H);
      for (int64_t iw = 0; iw < s.W; ++iw) {
        const int64_t ow_lo = (iw * s.Q) / s.W, ow_hi = min64(s.Q, ((iw + 1) * s.Q + s.W - 1) / s.W);
        T acc = T(0);
        for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
          const int64_t h0 = adaptive_start(oh, s.P, s.H), h1 = adaptive_end(oh, s.P, s.H);
          if (ih < h0 || ih >= h1) continue;
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
            const int64_t w0 = adaptive_start(ow, s.Q, s.W), w1 = adaptive_end(ow, s.Q, s.W);
            if (iw < w0 || iw >= w1) continue;
            acc += gp[oh * s.y.h + ow * s.y.w] / T(h1 - h0) / T(w1 - w0);
          }
        }
        dp[ih * s.x.h + iw * s.x.w] = acc;
      }
    }
  }
  return Status::kSuccess;
}

#define FASTCONV_INSTANTIATE_POOL2D(T)                                                                  \
  template Status max_pool2d_fwd<T>(const Pool2dShape&, const T*, T*, int64_t*);                        \
  template Status max_pool2d_bwd<T>(const Pool2dShape&, const T*, const int64_t*, T*);                  \
  template Status avg_pool2d_fwd<T>(const Pool2dShape&, bool, int64_t, const T*, T*);                   \
  template Status avg_pool2d_bwd<T>(const Pool2dShape&, bool, int64_t, const T*, T*);                   \
  template Status adaptive_avg_pool2d_fwd<T>(const Pool2dShape&, const T*, T*);                         \
  template Status adaptive_avg_pool2d_bwd<T>(const Pool2dShape&, const T*, T*);
FASTCONV_INSTANTIATE_POOL2D(float)
FASTCONV_INSTANTIATE_POOL2D(double)
#undef FASTCONV_INSTANTIATE_POOL2D
// max_pool2d's forward also takes integer tensors, as torch's CPU kernel does.
template Status max_pool2d_fwd<uint8_t>(const Pool2dShape&, const uint8_t*, uint8_t*, int64_t*);
template Status max_pool2d_fwd<int8_t>(const Pool2dShape&, const int8_t*, int8_t*, int64_t*);
template Status max_pool2d_fwd<int16_t>(const Pool2dShape&, const int16_t*, int16_t*, int64_t*);
template Status max_pool2d_fwd<int32_t>(const Pool2dShape&, const int32_t*, int32_t*, int64_t*);
template Status max_pool2d_fwd<int64_t>(const Pool2dShape&, const int64_t*, int64_t*, int64_t*);

}  // namespace cpu
}  // namespace fastconv
