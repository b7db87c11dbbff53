// The CUDA kernel ABI: raw device pointers + a shape struct + a stream, no torch, no cuBLAS/cuDNN.
// Every launcher enqueues on the given stream, never synchronises, never allocates (scratch comes
// from the caller's workspace), and returns the first cudaError_t it meets (cudaErrorInvalidValue
// for a configuration it cannot implement or a workspace that is too small).
//
// T is float, __half, __nv_bfloat16 or double where noted; accumulation is in AccT<T> (float, or
// double for double). Layout contract (the binding guarantees it): x, y, dy, dx are densely packed
// in the SAME format, either NCHW or NHWC (channels_last), and the strides in the shape structs
// are exact; the weight is packed KCRS for NCHW and KRSC for NHWC. Output tensors are overwritten.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "fastconv/shapes.h"

namespace fastconv {
namespace cuda {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using AccT = typename AccType<T>::type;

enum class ConvDir : int { kFprop = 0, kDgrad = 1, kWgrad = 2 };

// Every conv algorithm has the same five entry points, so the binding can table them:
//   bool   conv2d_<algo>_can_implement(shape, dir, elem_bytes)
//   size_t conv2d_<algo>_workspace_bytes(shape, dir, elem_bytes, workspace_limit)
//   fprop: (shape, x, w, bias|null, y, ws, ws_bytes, stream)
//   dgrad: (shape, dy, w, dx, ws, ws_bytes, stream)
//   wgrad: (shape, dy, x, dw, ws, ws_bytes, stream)
// workspace_limit bounds what the algorithm asks for (im2col chunks the batch to stay under it).
#define FASTCONV_DECLARE_CONV_ALGO(algo)                                                               \
  bool conv2d_##algo##_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes);              \
  size_t conv2d_##algo##_workspace_bytes(const Conv2dShape& s, ConvDir dir, int elem_bytes,           \
                                         size_t workspace_limit);                                     \
  template <typename T>                                                                               \
  cudaError_t conv2d_##algo##_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, \
                                    void* ws, size_t ws_bytes, cudaStream_t stream);                  \
  template <typename T>                                                                               \
  cudaError_t conv2d_##algo##_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx, void* ws,   \
                                    size_t ws_bytes, cudaStream_t stream);                            \
  template <typename T>                                                                               \
  cudaError_t conv2d_##algo##_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws,   \
                                    size_t ws_bytes, cudaStream_t stream);

// conv2d_direct.cu — any config; T in {float, __half, __nv_bfloat16, double}.
FASTCONV_DECLARE_CONV_ALGO(direct)
// im2col.cu + gemm_simt.cu — any config; T in {float, __half, __nv_bfloat16}.
FASTCONV_DECLARE_CONV_ALGO(im2col)
// conv2d_1x1.cu — R = S = 1, no padding, any stride/groups; T in {float, __half, __nv_bfloat16}.
FASTCONV_DECLARE_CONV_ALGO(gemm1x1)
// conv2d_igemm_tc.cu — tensor-core implicit GEMM (sm_80+ mma.sync, FP32 accumulate) on NHWC x / KRSC w /
// NPQK y (channels_last tensors; y, dy, dx and dw dense). T in {__half, __nv_bfloat16} (m16n8k16) and
// float (elem_bytes 4) on TF32 (m16n8k8 .tf32: each operand is read with 10 mantissa bits, the low 13
// ignored, i.e. truncated; not an exact-FP32 algorithm, the caller decides whether TF32 is allowed).
// fprop, dgrad and wgrad for both element sizes; any C, K, groups, stride, padding, dilation: the
// 16-byte cp.async path needs C/groups and K/groups multiples of 8 (4 for float), any other size runs
// the predicated element-wise path. can_implement is false for elem_bytes other than 2 and 4.
// Workspace: fprop none (the epilogue reads the bias in T); dgrad none; wgrad FP32 split-K
// partials (as many K·R·S·C/groups slices as workspace_limit allows, at least one), summed in a fixed
// order (deterministic, no atomics).
FASTCONV_DECLARE_CONV_ALGO(implicit_gemm)

// conv2d_igemm_sm90.cu — the Hopper engine: warp-specialised wgmma + TMA implicit GEMM (sm_90a; a
// CC 9.0 device only: can_implement is false elsewhere) on NHWC x / KRSC w / NPQK y. T in {__half,
// __nv_bfloat16, float}; float runs on TF32 tensor cores (the binding allows it only when TF32 is
// enabled). fprop (any stride/padding/dilation within TMA's im2col limits; C·elem and C/groups·elem
// multiples of 16 bytes; groups > 1 needs C/groups a multiple of 128 bytes of channels), dgrad (stride 1
// as an fprop of the flipped filter; stride > 1 by residue classes; K·elem a multiple of 16 bytes) and
// wgrad (16-bit only; K·elem a multiple of 16 bytes). Workspace: fprop, when it fits the limit, FP32
// split-K partials (small-M problems); dgrad the same for stride 1, plus (TF32 only: 16-bit reads w
// itself) the flipped filter or the classes' sub-filters; wgrad the split-K partials, as many slices as
// fit. With none at all, every 16-bit direction of the rule's algorithm still runs (without split-K).
// Never run on a GPU yet: verified on the emulated sm_90 device only. The tile configuration is the
// launcher's rule (conv2d_igemm_sm90.cu: make_plan, make_wgrad_plan); the _128x128, _128x64, _64x64 and
// _splitk algorithms force one (same contract; _splitk needs its partials in the workspace), for the autotuner
// and for users. _describe says in words what the launcher would run under a workspace limit ("" when
// it cannot implement s): explain() shows it.
#define FASTCONV_DECLARE_SM90_ALGO(algo)                                                                  \
  FASTCONV_DECLARE_CONV_ALGO(algo)                                                                        \
  std::string conv2d_##algo##_describe(const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t limit);
FASTCONV_DECLARE_SM90_ALGO(implicit_gemm_sm90)
FASTCONV_DECLARE_SM90_ALGO(implicit_gemm_sm90_128x128)
FASTCONV_DECLARE_SM90_ALGO(implicit_gemm_sm90_128x64)
FASTCONV_DECLARE_SM90_ALGO(implicit_gemm_sm90_64x64)
FASTCONV_DECLARE_SM90_ALGO(implicit_gemm_sm90_splitk)
#undef FASTCONV_DECLARE_SM90_ALGO

#undef FASTCONV_DECLARE_CONV_ALGO

// conv2d_igemm_tc.cu — fprop with the fused epilogue (csrc/cuda/epilogue.cuh), in one kernel:
//   y = relu?( conv(x, w) · scale[k] + bias[k] + residual )
// scale, bias: [K] in AccT<T>, nullable; residual: y's shape and layout (dense NHWC), nullable.
// Same contract as conv2d_implicit_gemm_fprop (no workspace is needed: ws may be null).
template <typename T>
cudaError_t conv2d_implicit_gemm_fprop_fused(const Conv2dShape& s, const T* x, const T* w, const AccT<T>* scale,
                                             const AccT<T>* bias, const T* residual, bool relu, T* y, void* ws,
                                             size_t ws_bytes, cudaStream_t stream);

// conv2d_igemm_sm90.cu — the same fused fprop on the Hopper engine (T in {__half, __nv_bfloat16, float =
// TF32}); ws: optional FP32 split-K partials (conv2d_implicit_gemm_sm90_workspace_bytes(s, kFprop, ...)),
// null runs without split-K.
template <typename T>
cudaError_t conv2d_implicit_gemm_sm90_fprop_fused(const Conv2dShape& s, const T* x, const T* w, const float* scale,
                                                  const float* bias, const T* residual, bool relu, T* y, void* ws,
                                                  size_t ws_bytes, cudaStream_t stream);

// conv2d_igemm_tc.cu — fprop that also yields the batch statistics of its output (conv2d_bn_train):
//   y = conv(x, w) (no epilogue); per output channel k, over the N·P·Q outputs as rounded to T:
//   save_mean[k], batch_var[k] (biased), save_invstd[k] = 1/sqrt(batch_var[k] + eps), all float.
// Welford/Chan (mean, M2) partials per warp slot in ws, merged in a fixed order by a second kernel
// (deterministic, no atomics). ws: at least conv2d_implicit_gemm_fprop_stats_workspace_bytes(s)
// bytes, 16-byte aligned. Shapes as conv2d_implicit_gemm_can_implement(s, kFprop, 2).
size_t conv2d_implicit_gemm_fprop_stats_workspace_bytes(const Conv2dShape& s);
template <typename T>
cudaError_t conv2d_implicit_gemm_fprop_stats(const Conv2dShape& s, const T* x, const T* w, T* y, float* save_mean,
                                             float* save_invstd, float* batch_var, double eps, void* ws,
                                             size_t ws_bytes, cudaStream_t stream);

// conv2d_igemm_sm90.cu — the same on the Hopper engine (the rule's tiles without split-K; one (mean, M2)
// slot per warp's 16 rows). T in {__half, __nv_bfloat16}; shapes as
// conv2d_implicit_gemm_sm90_can_implement(s, kFprop, 2); ws: at least
// conv2d_implicit_gemm_sm90_fprop_stats_workspace_bytes(s) bytes, 16-byte aligned.
size_t conv2d_implicit_gemm_sm90_fprop_stats_workspace_bytes(const Conv2dShape& s);
template <typename T>
cudaError_t conv2d_implicit_gemm_sm90_fprop_stats(const Conv2dShape& s, const T* x, const T* w, T* y,
                                                  float* save_mean, float* save_invstd, float* batch_var, double eps,
                                                  void* ws, size_t ws_bytes, cudaStream_t stream);

// gemm_simt.cu — batched C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b], row-major, FP32 (or FP64)
// accumulate. op(A) is M x K, op(B) is K x N. T in {float, __half, __nv_bfloat16}; Out in {T, float}.
template <typename T, typename Out>
cudaError_t gemm_simt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, bool trans_a, const T* B,
                      int64_t ldb, bool trans_b, Out* C, int64_t ldc, float alpha, float beta, int64_t batch,
                      int64_t stride_a, int64_t stride_b, int64_t stride_c, cudaStream_t stream);

// ---- pool2d.cu — T in {float, __half, __nv_bfloat16, double}; idx has y's layout -------------------
template <typename T>
cudaError_t max_pool2d_fwd(const Pool2dShape& s, const T* x, T* y, int64_t* idx, cudaStream_t stream);
template <typename T>
cudaError_t max_pool2d_bwd(const Pool2dShape& s, const T* dy, const int64_t* idx, T* dx, cudaStream_t stream);
template <typename T>
cudaError_t avg_pool2d_fwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* x,
                           T* y, cudaStream_t stream);
template <typename T>
cudaError_t avg_pool2d_bwd(const Pool2dShape& s, bool count_include_pad, int64_t divisor_override, const T* dy,
                           T* dx, cudaStream_t stream);
template <typename T>
cudaError_t adaptive_avg_pool2d_fwd(const Pool2dShape& s, const T* x, T* y, cudaStream_t stream);
template <typename T>
cudaError_t adaptive_avg_pool2d_bwd(const Pool2dShape& s, const T* dy, T* dx, cudaStream_t stream);

// ---- batchnorm2d.cu — T in {float, __half, __nv_bfloat16, double}; parameters and stats in AccT<T> ---
size_t batch_norm_workspace_bytes(const BatchNormShape& s, int elem_bytes);
// Numerically stable (Welford / two-pass) per-channel statistics, then normalise (+ReLU).
template <typename T>
cudaError_t batch_norm_train_fwd(const BatchNormShape& s, const T* x, const AccT<T>* weight, const AccT<T>* bias,
                                 double eps, bool relu, T* y, AccT<T>* save_mean, AccT<T>* save_invstd,
                                 AccT<T>* batch_var, void* ws, size_t ws_bytes, cudaStream_t stream);
template <typename T>
cudaError_t batch_norm_eval_fwd(const BatchNormShape& s, const T* x, const AccT<T>* weight, const AccT<T>* bias,
                                const AccT<T>* running_mean, const AccT<T>* running_var, double eps, bool relu,
                                T* y, cudaStream_t stream);
// Same contract as the CPU batch_norm_bwd; dx/dweight/dbias nullable.
template <typename T>
cudaError_t batch_norm_bwd(const BatchNormShape& s, const T* dy, const T* x, const T* y, const AccT<T>* weight,
                           const AccT<T>* mean, const AccT<T>* invstd, bool train, bool relu, T* dx,
                           AccT<T>* dweight, AccT<T>* dbias, void* ws, size_t ws_bytes, cudaStream_t stream);
// A = float or double.
template <typename A>
cudaError_t batch_norm_update_running_stats(int64_t C, const A* save_mean, const A* batch_var, int64_t count,
                                            double factor, A* running_mean, A* running_var, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv
