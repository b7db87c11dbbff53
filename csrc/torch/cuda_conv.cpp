// CUDA binding of the convolution ops (fastconv::conv2d, conv2d_dgrad, conv2d_wgrad; schemas in
// ops.cpp): tensors -> raw pointers + shape struct + current stream, then one launcher from
// fastconv/cuda_api.h chosen from the algorithm table below. Built into fastconv._C against a CUDA
// build of torch, and into fastconv._C_emu for the emulated CUDA device (cuda_device.h).
//
// Host order in every op: prepare.h's device-independent checks and shape -> the CUDA dtype set ->
// CUDAGuard -> current stream -> empty early return -> operands made dense in one memory format
// (the launchers' layout contract) -> can_implement + workspace (under the extension's workspace
// limit, workspace.h) -> launch -> cudaError_t check. Nothing synchronises and scratch memory
// comes from the caching allocator, so every op is safe to capture in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/core/SymIntArrayRef.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <sstream>
#include <string>

#include "conv_query.h"
#include "cuda_common.h"
#include "workspace.h"

namespace fastconv {
namespace {

using namespace cuda_binding;
using cuda::ConvDir;

// ---- convolution: the algorithm table -----------------------------------------------------------

template <typename T> struct ConvFns {
  cudaError_t (*fprop)(const Conv2dShape&, const T*, const T*, const T*, T*, void*, size_t, cudaStream_t);
  cudaError_t (*dgrad)(const Conv2dShape&, const T*, const T*, T*, void*, size_t, cudaStream_t);
  cudaError_t (*wgrad)(const Conv2dShape&, const T*, const T*, T*, void*, size_t, cudaStream_t);
};

struct ConvAlgo {
  const char* name;
  bool (*can_implement)(const Conv2dShape&, ConvDir, int);
  size_t (*workspace_bytes)(const Conv2dShape&, ConvDir, int, size_t);
  std::string (*why_not)(const Conv2dShape&);  // reason for a false can_implement, for the error
  ConvFns<float> f32;
  ConvFns<__half> f16;
  ConvFns<__nv_bfloat16> bf16;
  ConvFns<double> f64;  // all null where the algorithm has no double kernels
  // Runs on channels_last operands only: every direction computes in channels_last whatever the
  // caller's format and converts its output back.
  bool nhwc_only;
  // Its float32 kernels run on TF32 tensor cores: float32 only while TF32 is allowed (workspace.h).
  bool float_is_tf32;
  // What the launcher would run, in words (the Hopper engine's tile plan), for explain(); may be null.
  std::string (*describe)(const Conv2dShape&, ConvDir, int, size_t) = nullptr;
  bool has_double() const { return f64.fprop != nullptr; }
};

template <typename T> const ConvFns<T>& fns_for(const ConvAlgo& a);
template <> const ConvFns<float>& fns_for<float>(const ConvAlgo& a) { return a.f32; }
template <> const ConvFns<__half>& fns_for<__half>(const ConvAlgo& a) { return a.f16; }
template <> const ConvFns<__nv_bfloat16>& fns_for<__nv_bfloat16>(const ConvAlgo& a) { return a.bf16; }
template <> const ConvFns<double>& fns_for<double>(const ConvAlgo& a) { return a.f64; }

std::string describe(const Conv2dShape& s) {
  std::ostringstream os;
  os << "input [" << s.N << ", " << s.C << ", " << s.H << ", " << s.W << "], weight [" << s.K << ", " << s.Cg()
     << ", " << s.R << ", " << s.S << "], stride (" << s.stride_h << ", " << s.stride_w << "), padding ("
     << s.pad_h << ", " << s.pad_w << "), dilation (" << s.dil_h << ", " << s.dil_w << "), groups " << s.groups;
  return os.str();
}

std::string generic_why_not(const Conv2dShape& s) { return "its can_implement rejected " + describe(s); }

std::string implicit_gemm_why_not(const Conv2dShape& s) {
  return "it needs NHWC operands with every size below 2^30; got " + describe(s);
}

std::string implicit_gemm_sm90_why_not(const Conv2dShape& s) {
  return "it needs a compute capability 9.0 device (sm_90a: H100/H200), NHWC operands with C and C/groups "
         "multiples of 16 bytes (C/groups a multiple of 128 bytes when groups > 1), padding, dilation and "
         "stride within TMA's im2col limits, for dgrad and wgrad K a multiple of 16 bytes (dy is a TMA source), "
         "and for wgrad float16/bfloat16 (no MN-major TF32 wgmma) with K a multiple of 8; got " +
         describe(s);
}

std::string gemm1x1_why_not(const Conv2dShape& s) {
  if (s.R != 1 || s.S != 1 || s.pad_h != 0 || s.pad_w != 0) {
    return "it needs a 1x1 filter and zero padding, got " + describe(s);
  }
  return generic_why_not(s);
}

#define FASTCONV_CONV_FNS(algo, T) \
  ConvFns<T> { &cuda::conv2d_##algo##_fprop<T>, &cuda::conv2d_##algo##_dgrad<T>, &cuda::conv2d_##algo##_wgrad<T> }
#define FASTCONV_NO_CONV_FNS(T) \
  ConvFns<T> { nullptr, nullptr, nullptr }

// Constant data (function pointers only), not state. double kernels exist for "direct" only.
const ConvAlgo* find_conv_algo(c10::string_view name) {
  static const ConvAlgo kAlgos[] = {
      {"direct", &cuda::conv2d_direct_can_implement, &cuda::conv2d_direct_workspace_bytes, &generic_why_not,
       FASTCONV_CONV_FNS(direct, float), FASTCONV_CONV_FNS(direct, __half),
       FASTCONV_CONV_FNS(direct, __nv_bfloat16), FASTCONV_CONV_FNS(direct, double), false, false},
      {"im2col", &cuda::conv2d_im2col_can_implement, &cuda::conv2d_im2col_workspace_bytes, &generic_why_not,
       FASTCONV_CONV_FNS(im2col, float), FASTCONV_CONV_FNS(im2col, __half),
       FASTCONV_CONV_FNS(im2col, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), false, false},
      {"gemm1x1", &cuda::conv2d_gemm1x1_can_implement, &cuda::conv2d_gemm1x1_workspace_bytes, &gemm1x1_why_not,
       FASTCONV_CONV_FNS(gemm1x1, float), FASTCONV_CONV_FNS(gemm1x1, __half),
       FASTCONV_CONV_FNS(gemm1x1, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), false, false},
      // Tensor cores: half and bf16 on mma.sync m16n8k16, float on TF32 (m16n8k8), only while TF32 is allowed.
      {"implicit_gemm", &cuda::conv2d_implicit_gemm_can_implement, &cuda::conv2d_implicit_gemm_workspace_bytes,
       &implicit_gemm_why_not, FASTCONV_CONV_FNS(implicit_gemm, float), FASTCONV_CONV_FNS(implicit_gemm, __half),
       FASTCONV_CONV_FNS(implicit_gemm, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true, true},
      // The Hopper engine (wgmma + TMA): sm_90a only, float32 as TF32 (fprop and dgrad; its float wgrad
      // entry is never called: can_implement refuses it).
      {"implicit_gemm_sm90", &cuda::conv2d_implicit_gemm_sm90_can_implement,
       &cuda::conv2d_implicit_gemm_sm90_workspace_bytes, &implicit_gemm_sm90_why_not,
       FASTCONV_CONV_FNS(implicit_gemm_sm90, float), FASTCONV_CONV_FNS(implicit_gemm_sm90, __half),
       FASTCONV_CONV_FNS(implicit_gemm_sm90, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true, true,
       &cuda::conv2d_implicit_gemm_sm90_describe},
      // The same engine with one tile configuration forced (the kernel's rule picks among them above).
      {"implicit_gemm_sm90_128x128", &cuda::conv2d_implicit_gemm_sm90_128x128_can_implement,
       &cuda::conv2d_implicit_gemm_sm90_128x128_workspace_bytes, &implicit_gemm_sm90_why_not,
       FASTCONV_CONV_FNS(implicit_gemm_sm90_128x128, float), FASTCONV_CONV_FNS(implicit_gemm_sm90_128x128, __half),
       FASTCONV_CONV_FNS(implicit_gemm_sm90_128x128, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true, true,
       &cuda::conv2d_implicit_gemm_sm90_128x128_describe},
      {"implicit_gemm_sm90_128x64", &cuda::conv2d_implicit_gemm_sm90_128x64_can_implement,
       &cuda::conv2d_implicit_gemm_sm90_128x64_workspace_bytes, &implicit_gemm_sm90_why_not,
       FASTCONV_CONV_FNS(implicit_gemm_sm90_128x64, float), FASTCONV_CONV_FNS(implicit_gemm_sm90_128x64, __half),
       FASTCONV_CONV_FNS(implicit_gemm_sm90_128x64, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true, true,
       &cuda::conv2d_implicit_gemm_sm90_128x64_describe},
      {"implicit_gemm_sm90_64x64", &cuda::conv2d_implicit_gemm_sm90_64x64_can_implement,
       &cuda::conv2d_implicit_gemm_sm90_64x64_workspace_bytes, &implicit_gemm_sm90_why_not,
       FASTCONV_CONV_FNS(implicit_gemm_sm90_64x64, float), FASTCONV_CONV_FNS(implicit_gemm_sm90_64x64, __half),
       FASTCONV_CONV_FNS(implicit_gemm_sm90_64x64, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true, true,
       &cuda::conv2d_implicit_gemm_sm90_64x64_describe},
      {"implicit_gemm_sm90_splitk", &cuda::conv2d_implicit_gemm_sm90_splitk_can_implement,
       &cuda::conv2d_implicit_gemm_sm90_splitk_workspace_bytes, &implicit_gemm_sm90_why_not,
       FASTCONV_CONV_FNS(implicit_gemm_sm90_splitk, float), FASTCONV_CONV_FNS(implicit_gemm_sm90_splitk, __half),
       FASTCONV_CONV_FNS(implicit_gemm_sm90_splitk, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true, true,
       &cuda::conv2d_implicit_gemm_sm90_splitk_describe},
  };
  for (const auto& a : kAlgos) {
    if (name == a.name) return &a;
  }
  return nullptr;
}

#undef FASTCONV_CONV_FNS
#undef FASTCONV_NO_CONV_FNS

const ConvAlgo& lookup_conv_algo(c10::string_view name, const char* op) {
  const ConvAlgo* a = find_conv_algo(name);
  TORCH_CHECK_VALUE(a != nullptr, "fastconv.", op, ": unknown CUDA conv algo '", std::string(name),
                    "' (expected one of 'direct', 'im2col', 'gemm1x1', 'implicit_gemm', 'implicit_gemm_sm90', "
                    "'implicit_gemm_sm90_128x128', 'implicit_gemm_sm90_128x64', 'implicit_gemm_sm90_64x64', "
                    "'implicit_gemm_sm90_splitk')");
  return *a;
}

const char* dir_name(ConvDir dir) {
  switch (dir) {
    case ConvDir::kFprop: return "fprop";
    case ConvDir::kDgrad: return "dgrad";
    case ConvDir::kWgrad: return "wgrad";
  }
  return "?";
}

// can_implement and the workspace for one direction; raises NotImplementedError when the algorithm
// cannot run this configuration (the Python layer may then fall back to another algorithm).
at::Tensor conv_workspace(const ConvAlgo& a, const Conv2dShape& s, ConvDir dir, const at::Tensor& like,
                          const char* op) {
  const int elem = static_cast<int>(like.element_size());
  TORCH_CHECK_NOT_IMPLEMENTED(!(elem == 4 && a.float_is_tf32 && !allow_tf32_setting().load()), "fastconv.", op,
                              ": CUDA algo '", a.name, "' runs float32 on TF32 tensor cores, which is off; set "
                              "fastconv.backends.allow_tf32 = True to allow it (float32 means float32 by default)");
  TORCH_CHECK_NOT_IMPLEMENTED(a.can_implement(s, dir, elem), "fastconv.", op, ": CUDA algo '", a.name,
                              "' cannot implement this ", dir_name(dir), ": ", a.why_not(s));
  const size_t limit = workspace_limit_bytes();
  const size_t bytes = a.workspace_bytes(s, dir, elem, limit);
  TORCH_CHECK_NOT_IMPLEMENTED(bytes <= limit, "fastconv.", op, ": CUDA algo '", a.name, "' needs ", bytes,
                              " bytes of workspace for this ", dir_name(dir), ", over the workspace limit of ", limit,
                              " bytes (fastconv.backends.workspace_limit_mb); ", describe(s));
  return workspace(like, bytes);
}

void set_conv_strides(Conv2dShape& s, MemoryFormat fmt) {
  s.x = fmt == MemoryFormat::ChannelsLast ? channels_last_strides(s.C, s.H, s.W) : contiguous_strides(s.C, s.H, s.W);
  s.w = fmt == MemoryFormat::ChannelsLast ? channels_last_strides(s.Cg(), s.R, s.S)
                                          : contiguous_strides(s.Cg(), s.R, s.S);
  s.y = fmt == MemoryFormat::ChannelsLast ? channels_last_strides(s.K, s.P, s.Q) : contiguous_strides(s.K, s.P, s.Q);
}

// ---- conv2d ---------------------------------------------------------------------------------------

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d";
  const ConvAlgo& a = lookup_conv_algo(algo, op);
  Conv2dShape s = prepare_conv2d(input, weight, bias, stride, padding, dilation, groups, op);
  check_on_cuda(input, op, "input");
  check_cuda_dtype(input, op, a.has_double(), a.name);

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = conv_output_format(input, weight);
  at::Tensor y = empty_in({s.N, s.K, s.P, s.Q}, input, fmt);
  if (y.numel() == 0) return y;
  if (input.numel() == 0) {  // C == 0: a sum over no channels
    fill_conv_of_empty_input(y, bias);
    return y;
  }

  // An NHWC-only algorithm computes into a channels_last output, converted back to fmt at the end.
  const MemoryFormat kfmt = a.nhwc_only ? MemoryFormat::ChannelsLast : fmt;
  if (kfmt != fmt) y = empty_in({s.N, s.K, s.P, s.Q}, input, kfmt);
  const at::Tensor x = dense(input, kfmt);
  const at::Tensor w = dense(weight, kfmt);
  const at::Tensor b = has(bias) ? bias->contiguous() : at::Tensor();
  set_conv_strides(s, kfmt);
  const at::Tensor ws = conv_workspace(a, s, ConvDir::kFprop, x, op);

  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ConvFns<T>& f = fns_for<T>(a);
    TORCH_INTERNAL_ASSERT(f.fprop != nullptr);
    check_cuda(f.fprop(s, cptr<T>(x), cptr<T>(w), b.defined() ? cptr<T>(b) : nullptr, ptr<T>(y), ws.data_ptr(),
                       static_cast<size_t>(ws.numel()), stream),
               op, a.name);
  });
  return kfmt == fmt ? y : y.contiguous(fmt);
}

at::Tensor conv2d_dgrad_cuda(const at::Tensor& grad_output, const at::Tensor& weight, c10::SymIntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_dgrad";
  const ConvAlgo& a = lookup_conv_algo(algo, op);
  const at::IntArrayRef in_size = C10_AS_INTARRAYREF_SLOW(input_size);
  Conv2dShape s = prepare_conv2d_dgrad(grad_output, weight, in_size, stride, padding, dilation, groups, op);
  check_on_cuda(grad_output, op, "grad_output");
  check_cuda_dtype(grad_output, op, a.has_double(), a.name);

  CudaDeviceGuard guard(grad_output.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = conv_output_format(grad_output, weight);
  at::Tensor dx = empty_in(in_size, grad_output, fmt);
  if (dx.numel() == 0) return dx;

  // An NHWC-only algorithm computes into a channels_last dx, converted back to fmt at the end.
  const MemoryFormat kfmt = a.nhwc_only ? MemoryFormat::ChannelsLast : fmt;
  if (kfmt != fmt) dx = empty_in(in_size, grad_output, kfmt);
  const at::Tensor dy = dense(grad_output, kfmt);
  const at::Tensor w = dense(weight, kfmt);
  set_conv_strides(s, kfmt);
  const at::Tensor ws = conv_workspace(a, s, ConvDir::kDgrad, dy, op);

  dispatch_float(dy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ConvFns<T>& f = fns_for<T>(a);
    TORCH_INTERNAL_ASSERT(f.dgrad != nullptr);
    check_cuda(f.dgrad(s, cptr<T>(dy), cptr<T>(w), ptr<T>(dx), ws.data_ptr(), static_cast<size_t>(ws.numel()), stream),
               op, a.name);
  });
  return kfmt == fmt ? dx : dx.contiguous(fmt);
}

at::Tensor conv2d_wgrad_cuda(const at::Tensor& grad_output, const at::Tensor& input, c10::SymIntArrayRef weight_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_wgrad";
  const ConvAlgo& a = lookup_conv_algo(algo, op);
  const at::IntArrayRef w_size = C10_AS_INTARRAYREF_SLOW(weight_size);
  Conv2dShape s = prepare_conv2d_wgrad(grad_output, input, w_size, stride, padding, dilation, groups, op);
  check_on_cuda(input, op, "input");
  check_cuda_dtype(input, op, a.has_double(), a.name);

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = conv_output_format(input, grad_output);
  at::Tensor dw = empty_in(w_size, input, fmt);
  if (dw.numel() == 0) return dw;
  if (input.numel() == 0) {  // empty batch (or all-padding input): nothing to accumulate
    dw.zero_();
    return dw;
  }

  // An NHWC-only algorithm computes into a KRSC dw, converted back to fmt at the end.
  const MemoryFormat kfmt = a.nhwc_only ? MemoryFormat::ChannelsLast : fmt;
  if (kfmt != fmt) dw = empty_in(w_size, input, kfmt);
  const at::Tensor x = dense(input, kfmt);
  const at::Tensor dy = dense(grad_output, kfmt);
  set_conv_strides(s, kfmt);
  const at::Tensor ws = conv_workspace(a, s, ConvDir::kWgrad, x, op);

  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ConvFns<T>& f = fns_for<T>(a);
    TORCH_INTERNAL_ASSERT(f.wgrad != nullptr);
    check_cuda(f.wgrad(s, cptr<T>(dy), cptr<T>(x), ptr<T>(dw), ws.data_ptr(), static_cast<size_t>(ws.numel()), stream),
               op, a.name);
  });
  return kfmt == fmt ? dw : dw.contiguous(fmt);
}

}  // namespace

// What the CUDA algorithm table says of a configuration, without tensors: the Python layer asks
// this instead of mirroring can_implement and the workspace formulas (fastconv.algorithms).
ConvQuery cuda_conv_query(const std::string& algo, int dir, const std::array<int64_t, 4>& in,
                              const std::array<int64_t, 4>& wt, const std::array<int64_t, 6>& geom, int64_t groups,
                              int elem_bytes, bool channels_last, int64_t workspace_limit) {
  const ConvAlgo* a = find_conv_algo(algo);
  if (a == nullptr) return {false, "unknown CUDA conv algo '" + algo + "'", 0};
  if (dir < 0 || dir > 2) return {false, "direction must be 0 (fprop), 1 (dgrad) or 2 (wgrad)", 0};
  if (elem_bytes == 8 && !a->has_double())
    return {false, std::string("CUDA algo '") + a->name + "' has no float64 kernels", 0};
  const int64_t st[2] = {geom[0], geom[1]}, pd[2] = {geom[2], geom[3]}, dl[2] = {geom[4], geom[5]};
  // Invalid arguments raise (the same error the op would raise); only "cannot implement" is an answer.
  Conv2dShape s = conv_shape_from_sizes(at::IntArrayRef(in.data(), 4), at::IntArrayRef(wt.data(), 4),
                                        at::IntArrayRef(st, 2), at::IntArrayRef(pd, 2), at::IntArrayRef(dl, 2), groups,
                                        "conv2d");
  // The ops answer an input without elements (N == 0 or C == 0) themselves, without a kernel.
  if (in[0] == 0 || in[1] == 0) return {true, "", 0};
  // As the binding computes: the algorithms that run in channels_last get channels_last strides.
  set_conv_strides(s, channels_last || a->nhwc_only ? c10::MemoryFormat::ChannelsLast
                                                     : c10::MemoryFormat::Contiguous);
  const cuda::ConvDir d = static_cast<cuda::ConvDir>(dir);
  if (elem_bytes == 4 && a->float_is_tf32 && !allow_tf32_setting().load())
    return {false, "its float32 kernels are TF32, which is off (fastconv.backends.allow_tf32)", 0};
  if (!a->can_implement(s, d, elem_bytes)) return {false, a->why_not(s), 0};
  const size_t limit = static_cast<size_t>(std::max<int64_t>(workspace_limit, 0));
  const size_t bytes = a->workspace_bytes(s, d, elem_bytes, limit);
  if (bytes > limit)
    return {false, "needs " + std::to_string(bytes) + " bytes of workspace, over the limit of " +
                       std::to_string(limit), static_cast<int64_t>(bytes)};
  // Success: the reason field carries the plan in words where the algorithm has one (explain()).
  return {true, a->describe != nullptr ? a->describe(s, d, elem_bytes, limit) : std::string(),
          static_cast<int64_t>(bytes)};
}

}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d", TORCH_FN(fastconv::conv2d_cuda));
  m.impl("conv2d_dgrad", TORCH_FN(fastconv::conv2d_dgrad_cuda));
  m.impl("conv2d_wgrad", TORCH_FN(fastconv::conv2d_wgrad_cuda));
}
