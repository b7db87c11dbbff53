// The CPU kernel ABI: raw pointers + a shape struct, no torch. Every launcher returns a Status
// and never prints or exits. T is float or double (explicitly instantiated in csrc/cpu/*.cpp).
//
// Pointers address element (0,0,0,0) of their tensor; all other elements are reached through the
// strides in the shape struct, so NCHW, channels_last and other strided views need no copies.
// Output tensors are fully overwritten (backward kernels write, never accumulate).
#pragma once

#include <cstdint>

#include "fastconv/shapes.h"
#include "fastconv/status.h"

namespace fastconv {
namespace cpu {

// ---- conv2d_direct.cpp: loops over the output, any configuration -------------------------------
template <typename T>
Status conv2d_direct_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias /*nullable*/, T* y);
// dx (strides s.x) from dy (strides s.y) and w; gather form, one output element per loop iteration.
template <typename T>
Status conv2d_direct_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx);
// dw (strides s.w) from dy and x.
template <typename T>
Status conv2d_direct_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw);

// ---- im2col.cpp: the column buffer of image n, group g ------------------------------------------
// col is a dense row-major [Cg·R·S, P·Q] matrix, row index (c·R + r)·S + s.
template <typename T>
Status im2col(const Conv2dShape& s, const T* x, int64_t n, int64_t g, T* col);
// Gather-form col2im: writes (overwrites) dx[n, g·Cg:(g+1)·Cg, :, :] as the sum of every column
// entry that im2col would have copied from that element. Deterministic, no scatter.
template <typename T>
Status col2im(const Conv2dShape& s, const T* col, int64_t n, int64_t g, T* dx);

// ---- pool2d.cpp ----------------------------------------------------------------------------------
// idx uses y's strides and holds PyTorch's flat index h·W + w inside the (n, c) plane.
template <typename T>
Status max_pool2d_fwd(const Pool2dShape& s, const T* x, T* y, int64_t* idx);
// Gather form: each dx element sums the dy of the windows that chose it. No atomics.
template <typename T>
Status max_pool2d_bwd(const Pool2dShape& s, const T* dy, const int64_t* idx, T* dx);
// divisor_override <= 0 means none.
template <typename T>
Status avg_pool2d_fwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* x, T* y);
template <typename T>
Status avg_pool2d_bwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* dy, T* dx);
// Uses N, C, H, W, P, Q and the strides of s; window geometry from adaptive_start/adaptive_end.
template <typename T>
Status adaptive_avg_pool2d_fwd(const Pool2dShape& s, const T* x, T* y);
template <typename T>
Status adaptive_avg_pool2d_bwd(const Pool2dShape& s, const T* dy, T* dx);

// ---- batchnorm2d.cpp (statistics accumulated in double) ------------------------------------------
// Training forward: per-channel mean and biased variance of x, y = (x − mean)·invstd·w + b, ReLU'd
// when relu. save_mean, save_invstd, batch_var (biased) are [C]. weight/bias nullable (= 1 / 0).
template <typename T>
Status batch_norm_train_fwd(const BatchNormShape& s, const T* x, const T* weight, const T* bias, double eps,
                            bool relu, T* y, T* save_mean, T* save_invstd, T* batch_var);
// Eval forward with running statistics.
template <typename T>
Status batch_norm_eval_fwd(const BatchNormShape& s, const T* x, const T* weight, const T* bias,
                           const T* running_mean, const T* running_var, double eps, bool relu, T* y);
// Backward. mean/invstd are the saved batch statistics when train, else running_mean and
// 1/sqrt(running_var + eps). y (the forward output) is read only when relu, to mask dy.
// Any of dx, dweight, dbias may be null (not requested); dweight/dbias are [C].
template <typename T>
Status batch_norm_bwd(const BatchNormShape& s, const T* dy, const T* x, const T* y, const T* weight,
                      const T* mean, const T* invstd, bool train, bool relu, T* dx, T* dweight, T* dbias);
// running = (1 − factor)·running + factor·batch, with the unbiased batch variance count/(count−1)·var.
template <typename T>
Status batch_norm_update_running_stats(int64_t C, const T* save_mean, const T* batch_var, int64_t count,
                                       double factor, T* running_mean, T* running_var);

// ---- epilogue.cpp: the fused convolution epilogue, in place on a conv output ----------------------
// y[n, k, p, q] = relu?( y·scale[k] + bias[k] + residual[n, k, p, q] ), computed in T in that order
// (one rounding per operation, as the unfused torch composition does). y has strides s.y (sizes
// N, K, P, Q); residual has its own strides res (same sizes). scale, bias, residual nullable (= 1,
// 0, 0). ReLU keeps NaN, as torch.relu does.
template <typename T>
Status conv2d_epilogue(const Conv2dShape& s, const T* scale, const T* bias, const T* residual,
                       const Strides4& res, bool relu, T* y);

}  // namespace cpu
}  // namespace fastconv
