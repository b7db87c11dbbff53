// CUDA implementations of every torch.ops.fastconv.* op: tensors -> raw pointers + shape struct +
// current stream, then one launcher from fastconv/cuda_api.h. Compiled only against a CUDA build of
// torch (setup.py adds csrc/torch/cuda_*.cpp and defines FASTCONV_WITH_CUDA).
//
// Host order in every op: argument checks -> CUDAGuard -> current stream -> empty early return ->
// operands made dense in one memory format (the launchers' layout contract) -> shape struct ->
// launch -> cudaError_t check. Nothing synchronises and scratch memory comes from the caching
// allocator, so every op is safe to capture in a CUDA graph.
//
// Only light headers: no ATen/cuda/CUDAContext.h (it drags in cuBLAS headers).
#include <ATen/ATen.h>
#include <c10/core/SymIntArrayRef.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>

#include "checks.h"
#include "cuda_device.h"
#include "prepare.h"
#include "fastconv/cuda_api.h"

namespace fastconv {
namespace {

using c10::MemoryFormat;
using cuda::ConvDir;

// at::Half / at::BFloat16 and __half / __nv_bfloat16 are both a bare 16-bit pattern, so a
// reinterpret_cast of the data pointer is the whole conversion.
static_assert(sizeof(at::Half) == sizeof(__half) && alignof(at::Half) == alignof(__half),
              "at::Half must be layout-compatible with __half to pass its data pointer to the kernels");
static_assert(sizeof(at::BFloat16) == sizeof(__nv_bfloat16) && alignof(at::BFloat16) == alignof(__nv_bfloat16),
              "at::BFloat16 must be layout-compatible with __nv_bfloat16 to pass its data pointer to the kernels");

constexpr int64_t kDefaultWorkspaceLimitMB = 256;

// ---- small helpers ------------------------------------------------------------------------------

template <typename T> struct Tag { using type = T; };

template <typename T> T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }
template <typename T> const T* cptr(const at::Tensor& t) { return reinterpret_cast<const T*>(t.const_data_ptr()); }

bool defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Storage type the kernels see for an at::ScalarType; f is called with Tag<T>.
template <typename F>
void dispatch_float(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(Tag<float>{}); return;
    case at::kHalf: f(Tag<__half>{}); return;
    case at::kBFloat16: f(Tag<__nv_bfloat16>{}); return;
    case at::kDouble: f(Tag<double>{}); return;
    default: TORCH_INTERNAL_ASSERT(false, "fastconv: dtype ", st, " reached a CUDA launcher unchecked");
  }
}

void check_dtype(const at::Tensor& t, const char* op, const std::string& algo, bool allow_double) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || (allow_double && st == at::kDouble);
  TORCH_CHECK_TYPE(ok, "fastconv.", op, ": CUDA algo '", algo, "' supports float32, float16, bfloat16",
                   allow_double ? " and float64" : "", ", got ", st);
}

// Every defined tensor on the same CUDA device as the first one (the dispatcher routes here when
// any argument is a CUDA tensor, so the others may still be on the CPU).
void check_same_cuda(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> ts) {
  const auto& first = *ts.begin();
  TORCH_CHECK(on_cuda_device(*first.second), "fastconv.", op, ": expected ", first.first, " to be a CUDA tensor, got ",
              first.first, " on ", first.second->device());
  for (const auto& t : ts) {
    if (t.second == nullptr || !t.second->defined()) continue;
    TORCH_CHECK(t.second->device() == first.second->device(), "fastconv.", op,
                ": expected all tensors to be on the same device, but found ", first.first, " on ",
                first.second->device(), " and ", t.first, " on ", t.second->device());
  }
}

const at::Tensor* opt_ptr(const std::optional<at::Tensor>& t) { return defined(t) ? &*t : nullptr; }

void check_cuda(cudaError_t err, const char* op, const std::string& algo) {
  if (err == cudaSuccess) return;
  const std::string report = emu_take_fault_report();
  TORCH_CHECK(false, "fastconv.", op, " (algo='", algo, "'): CUDA error ", static_cast<int>(err), ": ",
              cudaGetErrorString(err), report.empty() ? "" : "\n", report);
}

// Dense strides of a tensor of `sizes` in `fmt`. A tensor that is_contiguous(fmt) addresses exactly
// these elements (size-1 dims may carry any stride), and using the canonical values guarantees that
// tensors sharing one stride set in the shape struct (y/dy/indices, x/dx) really agree.
Strides4 dense_strides(at::IntArrayRef sizes, MemoryFormat fmt) {
  return fmt == MemoryFormat::ChannelsLast ? channels_last_strides(sizes[1], sizes[2], sizes[3])
                                           : contiguous_strides(sizes[1], sizes[2], sizes[3]);
}

// t made dense in fmt; the assert documents the layout contract the launchers rely on.
at::Tensor dense(const at::Tensor& t, MemoryFormat fmt) {
  at::Tensor d = t.contiguous(fmt);
  TORCH_INTERNAL_ASSERT(d.is_contiguous(fmt));
  return d;
}

at::Tensor empty_in(at::IntArrayRef sizes, const at::Tensor& like, MemoryFormat fmt) {
  return at::empty(sizes, like.options().memory_format(fmt));
}

// Read per call, never cached: tests and the autotuner change it between calls.
size_t workspace_limit_bytes(const char* op) {
  int64_t mb = kDefaultWorkspaceLimitMB;
  const char* env = std::getenv("FASTCONV_WORKSPACE_LIMIT_MB");
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK_VALUE(end != env && *end == '\0' && v >= 0, "fastconv.", op,
                      ": FASTCONV_WORKSPACE_LIMIT_MB must be a non-negative integer, got '", env, "'");
    mb = static_cast<int64_t>(v);
  }
  return static_cast<size_t>(mb) << 20;
}

// Scratch bytes from torch's caching allocator on like's device: no cudaMalloc, graph-capturable.
at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte).memory_format(MemoryFormat::Contiguous));
}

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// Parameter or statistic in the accumulation dtype, dense (AMP keeps BN parameters in float with
// half activations; a half model keeps them in half).
at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

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
  return "it implements float16 and bfloat16 only (no float32/TF32 yet), with every size below 2^30; got " +
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
       FASTCONV_CONV_FNS(direct, __nv_bfloat16), FASTCONV_CONV_FNS(direct, double), false},
      {"im2col", &cuda::conv2d_im2col_can_implement, &cuda::conv2d_im2col_workspace_bytes, &generic_why_not,
       FASTCONV_CONV_FNS(im2col, float), FASTCONV_CONV_FNS(im2col, __half),
       FASTCONV_CONV_FNS(im2col, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), false},
      {"gemm1x1", &cuda::conv2d_gemm1x1_can_implement, &cuda::conv2d_gemm1x1_workspace_bytes, &gemm1x1_why_not,
       FASTCONV_CONV_FNS(gemm1x1, float), FASTCONV_CONV_FNS(gemm1x1, __half),
       FASTCONV_CONV_FNS(gemm1x1, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), false},
      // Tensor cores: half and bf16 only (can_implement rejects float before its null table is used).
      {"implicit_gemm", &cuda::conv2d_implicit_gemm_can_implement, &cuda::conv2d_implicit_gemm_workspace_bytes,
       &implicit_gemm_why_not, FASTCONV_NO_CONV_FNS(float), FASTCONV_CONV_FNS(implicit_gemm, __half),
       FASTCONV_CONV_FNS(implicit_gemm, __nv_bfloat16), FASTCONV_NO_CONV_FNS(double), true},
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
                    "' (expected one of 'direct', 'im2col', 'gemm1x1', 'implicit_gemm')");
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
  TORCH_CHECK_NOT_IMPLEMENTED(a.can_implement(s, dir, elem), "fastconv.", op, ": CUDA algo '", a.name,
                              "' cannot implement this ", dir_name(dir), ": ", a.why_not(s));
  const size_t limit = workspace_limit_bytes(op);
  const size_t bytes = a.workspace_bytes(s, dir, elem, limit);
  TORCH_CHECK_NOT_IMPLEMENTED(bytes <= limit, "fastconv.", op, ": CUDA algo '", a.name, "' needs ", bytes,
                              " bytes of workspace for this ", dir_name(dir), ", over FASTCONV_WORKSPACE_LIMIT_MB (",
                              limit >> 20, " MiB); ", describe(s));
  return workspace(like, bytes);
}

void check_conv_operand_dtypes(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                               const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastconv.", op, ": ", a_name, " type (", a.scalar_type(),
              ") and ", b_name, " type (", b.scalar_type(), ") should be the same");
}

void set_conv_strides(Conv2dShape& s, MemoryFormat fmt) {
  s.x = fmt == MemoryFormat::ChannelsLast ? channels_last_strides(s.C, s.H, s.W) : contiguous_strides(s.C, s.H, s.W);
  s.w = fmt == MemoryFormat::ChannelsLast ? channels_last_strides(s.Cg(), s.R, s.S)
                                          : contiguous_strides(s.Cg(), s.R, s.S);
  s.y = fmt == MemoryFormat::ChannelsLast ? channels_last_strides(s.K, s.P, s.Q) : contiguous_strides(s.K, s.P, s.Q);
}

void check_grad_output_size(const at::Tensor& dy, const Conv2dShape& s, const char* op) {
  check_4d(dy, op, "grad_output");
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.K && dy.size(2) == s.P && dy.size(3) == s.Q, "fastconv.", op,
              ": expected grad_output of size [", s.N, ", ", s.K, ", ", s.P, ", ", s.Q, "], got ", dy.sizes());
}

// ---- conv2d ---------------------------------------------------------------------------------------

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d";
  check_4d(input, op, "input");
  check_4d(weight, op, "weight");
  check_same_cuda(op, {{"input", &input}, {"weight", &weight}, {"bias", opt_ptr(bias)}});
  const ConvAlgo& a = lookup_conv_algo(algo, op);
  check_dtype(input, op, a.name, a.has_double());
  check_conv_operand_dtypes(input, "Input", weight, "weight", op);
  Conv2dShape s = conv_shape_from_sizes(input.sizes(), weight.sizes(), stride, padding, dilation, groups, op);
  if (defined(bias)) {
    check_conv_operand_dtypes(input, "Input", *bias, "bias", op);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.K, "fastconv.", op, ": Given weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", s.K, " elements, but got bias of size ", bias->sizes(),
                " instead");
  }

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = conv_output_format(input, weight);
  at::Tensor y = empty_in({s.N, s.K, s.P, s.Q}, input, fmt);
  if (y.numel() == 0) return y;
  if (input.numel() == 0) {  // C == 0 or an all-padding window: every output is the bias
    y.zero_();
    if (defined(bias)) y.add_(bias->view({1, s.K, 1, 1}));
    return y;
  }

  // An NHWC-only algorithm computes into a channels_last output, converted back to fmt at the end.
  const MemoryFormat kfmt = a.nhwc_only ? MemoryFormat::ChannelsLast : fmt;
  if (kfmt != fmt) y = empty_in({s.N, s.K, s.P, s.Q}, input, kfmt);
  const at::Tensor x = dense(input, kfmt);
  const at::Tensor w = dense(weight, kfmt);
  const at::Tensor b = defined(bias) ? bias->contiguous() : at::Tensor();
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
  check_4d(weight, op, "weight");
  check_same_cuda(op, {{"grad_output", &grad_output}, {"weight", &weight}});
  const ConvAlgo& a = lookup_conv_algo(algo, op);
  check_dtype(grad_output, op, a.name, a.has_double());
  check_conv_operand_dtypes(grad_output, "grad_output", weight, "weight", op);
  const at::IntArrayRef in_size = C10_AS_INTARRAYREF_SLOW(input_size);
  Conv2dShape s = conv_shape_from_sizes(in_size, weight.sizes(), stride, padding, dilation, groups, op);
  check_grad_output_size(grad_output, s, op);

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
  check_4d(input, op, "input");
  check_same_cuda(op, {{"grad_output", &grad_output}, {"input", &input}});
  const ConvAlgo& a = lookup_conv_algo(algo, op);
  check_dtype(input, op, a.name, a.has_double());
  check_conv_operand_dtypes(grad_output, "grad_output", input, "input", op);
  const at::IntArrayRef w_size = C10_AS_INTARRAYREF_SLOW(weight_size);
  Conv2dShape s = conv_shape_from_sizes(input.sizes(), w_size, stride, padding, dilation, groups, op);
  check_grad_output_size(grad_output, s, op);

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

// ---- pooling --------------------------------------------------------------------------------------

// torch's non-batch-dims rule for 4-D pooling inputs: only N may be zero.
void check_pool_input(const at::Tensor& x, const char* op) {
  check_4d(x, op, "input");
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, "fastconv.", op,
              ": Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got: ",
              x.sizes());
}

void set_pool_strides(Pool2dShape& s, MemoryFormat fmt) {
  s.x = dense_strides({s.N, s.C, s.H, s.W}, fmt);
  s.y = dense_strides({s.N, s.C, s.P, s.Q}, fmt);
}

void check_pool_grad(const at::Tensor& dy, const Pool2dShape& s, const char* op) {
  check_4d(dy, op, "grad_output");
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.C && dy.size(2) == s.P && dy.size(3) == s.Q, "fastconv.", op,
              ": expected grad_output of size [", s.N, ", ", s.C, ", ", s.P, ", ", s.Q, "], got ", dy.sizes());
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "max_pool2d";
  check_pool_input(self, op);
  check_same_cuda(op, {{"input", &self}});
  check_dtype(self, op, "max_pool2d_fwd", true);
  Pool2dShape s = prepare_pool(self, kernel_size, stride, padding, dilation, ceil_mode, op);

  CudaDeviceGuard guard(self.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = self.suggest_memory_format();
  at::Tensor y = empty_in({s.N, s.C, s.P, s.Q}, self, fmt);
  at::Tensor idx = at::empty({s.N, s.C, s.P, s.Q}, self.options().dtype(at::kLong).memory_format(fmt));
  if (y.numel() == 0) return {y, idx};

  const at::Tensor x = dense(self, fmt);
  set_pool_strides(s, fmt);
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda(cuda::max_pool2d_fwd<T>(s, cptr<T>(x), ptr<T>(y), ptr<int64_t>(idx), stream), op, "max_pool2d_fwd");
  });
  return {y, idx};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& self, const at::Tensor& indices,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, bool ceil_mode) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "max_pool2d_backward";
  check_pool_input(self, op);
  check_same_cuda(op, {{"grad_output", &grad_output}, {"input", &self}, {"indices", &indices}});
  check_dtype(grad_output, op, "max_pool2d_bwd", true);
  TORCH_CHECK(indices.scalar_type() == at::kLong, "fastconv.", op, ": expected indices of dtype int64, got ",
              indices.scalar_type());
  Pool2dShape s = prepare_pool(self, kernel_size, stride, padding, dilation, ceil_mode, op);
  check_pool_grad(grad_output, s, op);
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), "fastconv.", op, ": expected indices of size ",
              grad_output.sizes(), ", got ", indices.sizes());

  CudaDeviceGuard guard(self.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = self.suggest_memory_format();
  at::Tensor dx = empty_in(self.sizes(), grad_output, fmt);
  if (dx.numel() == 0) return dx;

  const at::Tensor dy = dense(grad_output, fmt);
  const at::Tensor idx = dense(indices, fmt);
  set_pool_strides(s, fmt);
  dispatch_float(dy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda(cuda::max_pool2d_bwd<T>(s, cptr<T>(dy), cptr<int64_t>(idx), ptr<T>(dx), stream), op, "max_pool2d_bwd");
  });
  return dx;
}

// The launchers read <= 0 as "no override", so a negative override (torch divides by it) was
// silently ignored: pass its magnitude and negate the result (exact in IEEE), as the CPU binding does.
int64_t divisor_or_zero(const std::optional<int64_t>& d, const char* op, bool* negate) {
  *negate = false;
  if (!d.has_value()) return 0;
  TORCH_CHECK(*d != 0, "fastconv.", op, ": divisor must be not zero");
  *negate = *d < 0;
  return *negate ? -*d : *d;
}

at::Tensor avg_pool2d_cuda(const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "avg_pool2d";
  check_pool_input(self, op);
  check_same_cuda(op, {{"input", &self}});
  check_dtype(self, op, "avg_pool2d_fwd", true);
  bool negate = false;
  const int64_t divisor = divisor_or_zero(divisor_override, op, &negate);
  const int64_t one[2] = {1, 1};
  Pool2dShape s = prepare_pool(self, kernel_size, stride, padding, one, ceil_mode, op);

  CudaDeviceGuard guard(self.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = self.suggest_memory_format();
  at::Tensor y = empty_in({s.N, s.C, s.P, s.Q}, self, fmt);
  if (y.numel() == 0) return y;

  const at::Tensor x = dense(self, fmt);
  set_pool_strides(s, fmt);
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda(cuda::avg_pool2d_fwd<T>(s, count_include_pad, divisor, cptr<T>(x), ptr<T>(y), stream), op,
               "avg_pool2d_fwd");
  });
  if (negate) y.neg_();
  return y;
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& self, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                    bool count_include_pad, std::optional<int64_t> divisor_override) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "avg_pool2d_backward";
  check_pool_input(self, op);
  check_same_cuda(op, {{"grad_output", &grad_output}, {"input", &self}});
  check_dtype(grad_output, op, "avg_pool2d_bwd", true);
  bool negate = false;
  const int64_t divisor = divisor_or_zero(divisor_override, op, &negate);
  const int64_t one[2] = {1, 1};
  Pool2dShape s = prepare_pool(self, kernel_size, stride, padding, one, ceil_mode, op);
  check_pool_grad(grad_output, s, op);

  CudaDeviceGuard guard(self.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = self.suggest_memory_format();
  at::Tensor dx = empty_in(self.sizes(), grad_output, fmt);
  if (dx.numel() == 0) return dx;

  const at::Tensor dy = dense(grad_output, fmt);
  set_pool_strides(s, fmt);
  dispatch_float(dy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda(cuda::avg_pool2d_bwd<T>(s, count_include_pad, divisor, cptr<T>(dy), ptr<T>(dx), stream), op,
               "avg_pool2d_bwd");
  });
  if (negate) dx.neg_();
  return dx;
}

Pool2dShape adaptive_shape(const at::Tensor& x, int64_t P, int64_t Q) {
  Pool2dShape s;
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.W = x.size(3);
  s.P = P; s.Q = Q;
  return s;
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& self, at::IntArrayRef output_size) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "adaptive_avg_pool2d";
  check_pool_input(self, op);
  check_same_cuda(op, {{"input", &self}});
  check_dtype(self, op, "adaptive_avg_pool2d_fwd", true);
  check_pair(output_size, op, "output_size");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, "fastconv.", op,
              ": elements of output_size must be greater than or equal to 0 but received {", output_size[0], ", ",
              output_size[1], "}");
  Pool2dShape s = adaptive_shape(self, output_size[0], output_size[1]);

  CudaDeviceGuard guard(self.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = self.suggest_memory_format();
  at::Tensor y = empty_in({s.N, s.C, s.P, s.Q}, self, fmt);
  if (y.numel() == 0) return y;

  const at::Tensor x = dense(self, fmt);
  set_pool_strides(s, fmt);
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda(cuda::adaptive_avg_pool2d_fwd<T>(s, cptr<T>(x), ptr<T>(y), stream), op, "adaptive_avg_pool2d_fwd");
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& self) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "adaptive_avg_pool2d_backward";
  check_pool_input(self, op);
  check_4d(grad_output, op, "grad_output");
  check_same_cuda(op, {{"grad_output", &grad_output}, {"input", &self}});
  check_dtype(grad_output, op, "adaptive_avg_pool2d_bwd", true);
  TORCH_CHECK(grad_output.size(0) == self.size(0) && grad_output.size(1) == self.size(1), "fastconv.", op,
              ": grad_output of size ", grad_output.sizes(), " does not match input of size ", self.sizes());
  Pool2dShape s = adaptive_shape(self, grad_output.size(2), grad_output.size(3));

  CudaDeviceGuard guard(self.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = self.suggest_memory_format();
  at::Tensor dx = empty_in(self.sizes(), grad_output, fmt);
  if (dx.numel() == 0) return dx;
  if (grad_output.numel() == 0) {  // output_size had a zero: no window touches any input
    dx.zero_();
    return dx;
  }

  const at::Tensor dy = dense(grad_output, fmt);
  set_pool_strides(s, fmt);
  dispatch_float(dy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_cuda(cuda::adaptive_avg_pool2d_bwd<T>(s, cptr<T>(dy), ptr<T>(dx), stream), op, "adaptive_avg_pool2d_bwd");
  });
  return dx;
}

// ---- batch norm -----------------------------------------------------------------------------------

// x (N, C, *) as a dense 4-D tensor the kernels accept: 4-D keeps its suggested memory format,
// other ranks are made contiguous and viewed as [N, C, L, 1].
struct BnView {
  at::Tensor x4;     // dense 4-D view of x
  MemoryFormat fmt;  // format of x4 (and of y, dy, dx)
  BatchNormShape s;  // strides filled for fmt
};

BnView bn_view(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 2, "fastconv.", op, ": expected input with at least 2 dims (N, C, *), got ", x.dim(),
              "-D tensor of shape ", x.sizes());
  BnView v;
  if (x.dim() == 4) {
    v.fmt = x.suggest_memory_format();
    v.x4 = dense(x, v.fmt);
  } else {
    v.fmt = MemoryFormat::Contiguous;
    const int64_t L = x.dim() == 2 ? 1 : x.numel() / std::max<int64_t>(1, x.size(0) * x.size(1));
    v.x4 = x.contiguous().view({x.size(0), x.size(1), L, 1});
  }
  v.s.N = v.x4.size(0); v.s.C = v.x4.size(1); v.s.H = v.x4.size(2); v.s.W = v.x4.size(3);
  v.s.x = dense_strides(v.x4.sizes(), v.fmt);
  v.s.y = v.s.x;
  return v;
}

// A per-channel vector (weight, bias, running or saved statistics): [C] and floating point.
void check_bn_param(const at::Tensor& t, const char* name, int64_t C, const char* op) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, "fastconv.", op, ": expected ", name, " of size [", C, "], got ",
              t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastconv.", op, ": expected a floating-point ", name, ", got ",
              t.scalar_type());
}

// weight / bias: any shape with C elements (torch's rule, shared with the CPU binding).
void check_bn_affine(const std::optional<at::Tensor>& t, const char* name, int64_t C, const char* op) {
  if (!defined(t)) return;
  ::fastconv::check_bn_affine(*t, C, op, name);
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fastconv.", op, ": expected a floating-point ", name, ", got ",
              t->scalar_type());
}

void check_bn_param(const std::optional<at::Tensor>& t, const char* name, int64_t C, const char* op) {
  if (defined(t)) check_bn_param(*t, name, C, op);
}

at::Tensor opt_as_acc(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  return defined(t) ? as_acc(*t, acc) : at::Tensor();
}

template <typename A> const A* cptr_or_null(const at::Tensor& t) { return t.defined() ? cptr<A>(t) : nullptr; }

// A [N, C, L, 1] result back to the caller's (N, C, *) shape; 4-D results are already in shape.
at::Tensor bn_unview(const at::Tensor& y4, const at::Tensor& x) { return x.dim() == 4 ? y4 : y4.view(x.sizes()); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    double eps, bool relu) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "batch_norm_train";
  check_same_cuda(op, {{"input", &input}, {"weight", opt_ptr(weight)}, {"bias", opt_ptr(bias)}});
  check_dtype(input, op, "batch_norm_train_fwd", true);
  TORCH_CHECK(input.dim() >= 2, "fastconv.", op, ": expected input with at least 2 dims (N, C, *), got ",
              input.sizes());
  const int64_t C = input.size(1);
  const at::ScalarType acc = acc_type(input.scalar_type());
  check_bn_affine(weight, "weight", C, op);
  check_bn_affine(bias, "bias", C, op);

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const at::TensorOptions stat_opts = input.options().dtype(acc).memory_format(MemoryFormat::Contiguous);
  at::Tensor save_mean = at::empty({C}, stat_opts);
  at::Tensor save_invstd = at::empty({C}, stat_opts);
  at::Tensor batch_var = at::empty({C}, stat_opts);
  if (input.numel() == 0) {
    // Statistics of nothing: mean 0, variance 0 (the Python layer rejects this case in training).
    save_mean.zero_();
    batch_var.zero_();
    save_invstd.fill_(1.0 / std::sqrt(eps));
    return {at::empty_like(input), save_mean, save_invstd, batch_var};
  }

  BnView v = bn_view(input, op);
  const at::Tensor w = opt_as_acc(weight, acc);
  const at::Tensor b = opt_as_acc(bias, acc);
  at::Tensor y4 = empty_in(v.x4.sizes(), v.x4, v.fmt);
  const size_t ws_bytes = cuda::batch_norm_workspace_bytes(v.s, static_cast<int>(input.element_size()));
  const at::Tensor ws = workspace(input, ws_bytes);
  dispatch_float(input.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = cuda::AccT<T>;
    check_cuda(cuda::batch_norm_train_fwd<T>(v.s, cptr<T>(v.x4), cptr_or_null<A>(w), cptr_or_null<A>(b), eps, relu,
                                             ptr<T>(y4), ptr<A>(save_mean), ptr<A>(save_invstd), ptr<A>(batch_var),
                                             ws.data_ptr(), ws_bytes, stream),
               op, "batch_norm_train_fwd");
  });
  return {bn_unview(y4, input), save_mean, save_invstd, batch_var};
}

at::Tensor batch_norm_eval_cuda(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                                const at::Tensor& running_var, double eps, bool relu) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "batch_norm_eval";
  check_same_cuda(op, {{"input", &input},
                       {"weight", opt_ptr(weight)},
                       {"bias", opt_ptr(bias)},
                       {"running_mean", &running_mean},
                       {"running_var", &running_var}});
  check_dtype(input, op, "batch_norm_eval_fwd", true);
  TORCH_CHECK(input.dim() >= 2, "fastconv.", op, ": expected input with at least 2 dims (N, C, *), got ",
              input.sizes());
  const int64_t C = input.size(1);
  const at::ScalarType acc = acc_type(input.scalar_type());
  check_bn_affine(weight, "weight", C, op);
  check_bn_affine(bias, "bias", C, op);
  check_bn_param(running_mean, "running_mean", C, op);
  check_bn_param(running_var, "running_var", C, op);

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  if (input.numel() == 0) return at::empty_like(input);

  BnView v = bn_view(input, op);
  const at::Tensor w = opt_as_acc(weight, acc);
  const at::Tensor b = opt_as_acc(bias, acc);
  const at::Tensor rm = as_acc(running_mean, acc);
  const at::Tensor rv = as_acc(running_var, acc);
  at::Tensor y4 = empty_in(v.x4.sizes(), v.x4, v.fmt);
  dispatch_float(input.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = cuda::AccT<T>;
    check_cuda(cuda::batch_norm_eval_fwd<T>(v.s, cptr<T>(v.x4), cptr_or_null<A>(w), cptr_or_null<A>(b), cptr<A>(rm),
                                            cptr<A>(rv), eps, relu, ptr<T>(y4), stream),
               op, "batch_norm_eval_fwd");
  });
  return bn_unview(y4, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& output,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd, bool train, bool relu,
    std::array<bool, 3> output_mask) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "batch_norm_backward";
  check_same_cuda(op, {{"grad_output", &grad_output},
                       {"input", &input},
                       {"output", opt_ptr(output)},
                       {"weight", opt_ptr(weight)},
                       {"mean", &mean},
                       {"invstd", &invstd}});
  check_dtype(input, op, "batch_norm_bwd", true);
  TORCH_CHECK(input.dim() >= 2, "fastconv.", op, ": expected input with at least 2 dims (N, C, *), got ",
              input.sizes());
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(), "fastconv.",
              op, ": expected grad_output of size ", input.sizes(), " and dtype ", input.scalar_type(), ", got ",
              grad_output.sizes(), " and ", grad_output.scalar_type());
  TORCH_CHECK(!relu || defined(output), "fastconv.", op, ": relu=True needs the forward output");
  if (relu) {
    TORCH_CHECK(output->sizes() == input.sizes() && output->scalar_type() == input.scalar_type(), "fastconv.", op,
                ": expected output of size ", input.sizes(), " and dtype ", input.scalar_type(), ", got ",
                output->sizes(), " and ", output->scalar_type());
  }
  const int64_t C = input.size(1);
  const at::ScalarType acc = acc_type(input.scalar_type());
  check_bn_affine(weight, "weight", C, op);
  check_bn_param(mean, "mean", C, op);
  check_bn_param(invstd, "invstd", C, op);
  // dweight/dbias come back in the parameters' dtype (float under AMP, half for a .half() model).
  // Without a weight: the accumulation dtype, as the fake kernel (fastconv/_meta.py) promises; the
  // input dtype here made db half for half input under compile/opcheck where the fake says float.
  const at::ScalarType param_dtype = defined(weight) ? weight->scalar_type() : acc;

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const at::Tensor none = at::empty({0}, input.options());
  const at::TensorOptions acc_opts = input.options().dtype(acc).memory_format(MemoryFormat::Contiguous);
  at::Tensor dw_acc = output_mask[1] ? at::empty({C}, acc_opts) : at::Tensor();
  at::Tensor db_acc = output_mask[2] ? at::empty({C}, acc_opts) : at::Tensor();
  at::Tensor dx;

  if (input.numel() == 0) {
    if (output_mask[0]) dx = at::empty_like(input);
    if (dw_acc.defined()) dw_acc.zero_();
    if (db_acc.defined()) db_acc.zero_();
  } else if (output_mask[0] || output_mask[1] || output_mask[2]) {
    BnView v = bn_view(input, op);
    const at::Tensor w = opt_as_acc(weight, acc);
    const at::Tensor mu = as_acc(mean, acc);
    const at::Tensor is = as_acc(invstd, acc);
    const at::Tensor dy4 = bn_view(grad_output, op).x4.contiguous(v.fmt);
    const at::Tensor y4 = relu ? bn_view(*output, op).x4.contiguous(v.fmt) : at::Tensor();
    TORCH_INTERNAL_ASSERT(dy4.is_contiguous(v.fmt) && (!relu || y4.is_contiguous(v.fmt)));
    at::Tensor dx4 = output_mask[0] ? empty_in(v.x4.sizes(), v.x4, v.fmt) : at::Tensor();
    const size_t ws_bytes = cuda::batch_norm_workspace_bytes(v.s, static_cast<int>(input.element_size()));
    const at::Tensor ws = workspace(input, ws_bytes);
    dispatch_float(input.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = cuda::AccT<T>;
      check_cuda(cuda::batch_norm_bwd<T>(v.s, cptr<T>(dy4), cptr<T>(v.x4), relu ? cptr<T>(y4) : nullptr,
                                         cptr_or_null<A>(w), cptr<A>(mu), cptr<A>(is), train, relu,
                                         dx4.defined() ? ptr<T>(dx4) : nullptr,
                                         dw_acc.defined() ? ptr<A>(dw_acc) : nullptr,
                                         db_acc.defined() ? ptr<A>(db_acc) : nullptr, ws.data_ptr(), ws_bytes, stream),
                 op, "batch_norm_bwd");
    });
    if (dx4.defined()) dx = bn_unview(dx4, input);
  }

  return {output_mask[0] ? dx : none, dw_acc.defined() ? dw_acc.to(param_dtype) : none,
          db_acc.defined() ? db_acc.to(param_dtype) : none};
}

void batch_norm_update_running_stats_cuda(const at::Tensor& running_mean, const at::Tensor& running_var,
                                          const at::Tensor& save_mean, const at::Tensor& batch_var, c10::SymInt count_sym,
                                          double factor) {
  FASTCONV_BELOW_AUTOGRAD();
  const int64_t count = count_sym.expect_int();  // SymInt in the schema so tracing keeps N symbolic
  constexpr const char* op = "batch_norm_update_running_stats_";
  check_same_cuda(op, {{"running_mean", &running_mean},
                       {"running_var", &running_var},
                       {"save_mean", &save_mean},
                       {"batch_var", &batch_var}});
  const at::ScalarType acc = save_mean.scalar_type();
  TORCH_CHECK_TYPE(acc == at::kFloat || acc == at::kDouble, "fastconv.", op,
                   ": CUDA kernel 'batch_norm_update_running_stats' supports float32 and float64 statistics, got ",
                   acc);
  const int64_t C = save_mean.numel();
  TORCH_CHECK(save_mean.dim() == 1, "fastconv.", op, ": expected 1-D save_mean, got ", save_mean.sizes());
  // count == 0 (an empty batch in training) must be a no-op, as on the CPU and in torch: functional
  // batch_norm calls this after a training forward on an (0, C, ...) input.
  TORCH_CHECK(count >= 0, "fastconv.", op, ": count must be non-negative, got ", count);
  check_bn_param(batch_var, "batch_var", C, op);
  TORCH_CHECK(running_mean.dim() == 1 && running_mean.size(0) == C && running_var.dim() == 1 &&
                  running_var.size(0) == C,
              "fastconv.", op, ": expected running_mean and running_var of size [", C, "], got ",
              running_mean.sizes(), " and ", running_var.sizes());

  CudaDeviceGuard guard(running_mean.device());
  const cudaStream_t stream = current_cuda_stream();
  if (C == 0 || count == 0) return;

  const at::Tensor sm = save_mean.contiguous();
  const at::Tensor bv = as_acc(batch_var, acc);

  // The kernel updates dense buffers in the statistics' dtype in place; anything else (a half
  // model's half running stats, a strided view) is updated through a copy that is written back.
  const auto direct = [&](const at::Tensor& t) { return t.scalar_type() == acc && t.is_contiguous(); };
  at::Tensor rm = direct(running_mean) ? running_mean : running_mean.to(acc).contiguous();
  at::Tensor rv = direct(running_var) ? running_var : running_var.to(acc).contiguous();
  if (acc == at::kDouble) {
    check_cuda(cuda::batch_norm_update_running_stats<double>(C, cptr<double>(sm), cptr<double>(bv), count, factor,
                                                             ptr<double>(rm), ptr<double>(rv), stream),
               op, "batch_norm_update_running_stats");
  } else {
    check_cuda(cuda::batch_norm_update_running_stats<float>(C, cptr<float>(sm), cptr<float>(bv), count, factor,
                                                            ptr<float>(rm), ptr<float>(rv), stream),
               op, "batch_norm_update_running_stats");
  }
  if (!rm.is_same(running_mean)) running_mean.copy_(rm);
  if (!rv.is_same(running_var)) running_var.copy_(rv);
}

}  // namespace
}  // namespace fastconv

namespace fastconv {

// What the CUDA algorithm table says of a configuration, without tensors: the Python layer asks
// this instead of mirroring can_implement and the workspace formulas (fastconv.algorithms).
CudaConvQuery cuda_conv_query(const std::string& algo, int dir, const std::array<int64_t, 4>& in,
                              const std::array<int64_t, 4>& wt, const std::array<int64_t, 6>& geom, int64_t groups,
                              int elem_bytes, bool channels_last, int64_t workspace_limit) {
  const ConvAlgo* a = find_conv_algo(algo);
  if (a == nullptr) return {false, "unknown CUDA conv algo '" + algo + "'", 0};
  if (dir < 0 || dir > 2) return {false, "direction must be 0 (fprop), 1 (dgrad) or 2 (wgrad)", 0};
  if (elem_bytes == 8 && !a->has_double())
    return {false, std::string("CUDA algo '") + a->name + "' has no float64 kernels", 0};
  const int64_t st[2] = {geom[0], geom[1]}, pd[2] = {geom[2], geom[3]}, dl[2] = {geom[4], geom[5]};
  Conv2dShape s;
  try {
    s = conv_shape_from_sizes(at::IntArrayRef(in.data(), 4), at::IntArrayRef(wt.data(), 4), at::IntArrayRef(st, 2),
                              at::IntArrayRef(pd, 2), at::IntArrayRef(dl, 2), groups, "conv2d");
  } catch (const c10::Error& e) {
    return {false, e.what_without_backtrace(), 0};
  }
  // As the binding computes: the algorithms that run in channels_last get channels_last strides.
  set_conv_strides(s, channels_last || a->nhwc_only ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);
  const ConvDir d = static_cast<ConvDir>(dir);
  if (!a->can_implement(s, d, elem_bytes)) return {false, a->why_not(s), 0};
  const size_t limit = static_cast<size_t>(std::max<int64_t>(workspace_limit, 0));
  const size_t bytes = a->workspace_bytes(s, d, elem_bytes, limit);
  if (bytes > limit)
    return {false, "needs " + std::to_string(bytes) + " bytes of workspace, over the limit of " +
                       std::to_string(limit), static_cast<int64_t>(bytes)};
  return {true, "", static_cast<int64_t>(bytes)};
}

}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d", TORCH_FN(fastconv::conv2d_cuda));
  m.impl("conv2d_dgrad", TORCH_FN(fastconv::conv2d_dgrad_cuda));
  m.impl("conv2d_wgrad", TORCH_FN(fastconv::conv2d_wgrad_cuda));
  m.impl("max_pool2d", TORCH_FN(fastconv::max_pool2d_cuda));
  m.impl("max_pool2d_backward", TORCH_FN(fastconv::max_pool2d_backward_cuda));
  m.impl("avg_pool2d", TORCH_FN(fastconv::avg_pool2d_cuda));
  m.impl("avg_pool2d_backward", TORCH_FN(fastconv::avg_pool2d_backward_cuda));
  m.impl("adaptive_avg_pool2d", TORCH_FN(fastconv::adaptive_avg_pool2d_cuda));
  m.impl("adaptive_avg_pool2d_backward", TORCH_FN(fastconv::adaptive_avg_pool2d_backward_cuda));
  m.impl("batch_norm_train", TORCH_FN(fastconv::batch_norm_train_cuda));
  m.impl("batch_norm_eval", TORCH_FN(fastconv::batch_norm_eval_cuda));
  m.impl("batch_norm_backward", TORCH_FN(fastconv::batch_norm_backward_cuda));
  m.impl("batch_norm_update_running_stats_", TORCH_FN(fastconv::batch_norm_update_running_stats_cuda));
}
