// CUDA implementation of fastconv::conv2d_fused (schema in ops.cpp):
//   y = relu?( conv2d(x, w) · scale[k] + bias[k] + residual )
//
// algo "implicit_gemm": one tensor-core kernel with the epilogue fused (conv2d_igemm_tc.cu). Host
//   order: checks -> CUDAGuard -> current stream -> channels_last operands (the kernel's layout; the
//   output is converted back to conv_output_format at the end) -> empty early return ->
//   can_implement -> launch -> cudaError_t check.
// any other algo: the conv2d op (cuda_conv.cpp, through the dispatcher) then the epilogue as ATen
//   ops in the accumulation dtype, rounded once to the output dtype — the same numerics as the fused
//   kernel, one extra pass over y.
// Compiled only against a CUDA build of torch (setup.py), syntax-checked by scripts/check_cuda_binding.sh.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <optional>
#include <string>

#include "cuda_common.h"
#include "fused_checks.h"

namespace fastconv {
namespace {

using namespace cuda_binding;

constexpr const char* kOp = "conv2d_fused";

// torch.ops.fastconv.conv2d for the current dispatch key set (we run below autograd: the CUDA kernel).
at::Tensor call_conv2d(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view algo) {
  const auto conv2d =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastconv::conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view)>();
  return conv2d.call(input, weight, std::nullopt, stride, padding, dilation, groups, algo);
}

// The epilogue on a finished conv output y, in place: computed in the accumulation dtype, one rounding.
void aten_epilogue(at::Tensor& y, const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias,
                   const std::optional<at::Tensor>& residual, bool relu) {
  const at::ScalarType acc = acc_type(y.scalar_type());
  const int64_t K = y.size(1);
  at::Tensor v = y.to(acc);
  if (is_defined(scale)) v.mul_(scale->to(acc).view({1, K, 1, 1}));
  if (is_defined(bias)) v.add_(bias->to(acc).view({1, K, 1, 1}));
  if (is_defined(residual)) v.add_(residual->to(acc));
  if (relu) v.relu_();
  if (!v.is_same(y)) y.copy_(v);
}

at::Tensor conv2d_fused_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             bool relu, c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  check_4d(input, kOp, "input");
  check_4d(weight, kOp, "weight");
  check_same_device(kOp, {{"input", &input}, {"weight", &weight}});
  check_on_cuda(input, kOp, "input");
  check_fused_devices(input, scale, bias, residual, kOp);
  check_channel_param(scale, "scale", weight.size(0), kOp);
  check_channel_param(bias, "bias", weight.size(0), kOp);

  if (algo != "implicit_gemm") {
    at::Tensor y = call_conv2d(input, weight, stride, padding, dilation, groups, algo);
    check_residual(residual, y, kOp);
    if (y.numel() == 0) return y;
    CudaDeviceGuard guard(input.device());
    aten_epilogue(y, scale, bias, residual, relu);
    return y;
  }

  Conv2dShape s = prepare_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, kOp);
  check_dtype_in(input, {at::kHalf, at::kBFloat16}, kOp, "CUDA algo 'implicit_gemm'");
  const at::ScalarType st = input.scalar_type();

  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = conv_output_format(input, weight);
  constexpr MemoryFormat kfmt = MemoryFormat::ChannelsLast;  // the kernel's NHWC / KRSC / NPQK layout
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(kfmt));
  check_residual(residual, y, kOp);
  if (y.numel() == 0) return y.contiguous(fmt);
  if (input.numel() == 0) {  // C == 0: every conv output is 0
    y.zero_();
    aten_epilogue(y, scale, bias, residual, relu);
    return y.contiguous(fmt);
  }

  const at::Tensor x = input.contiguous(kfmt);
  const at::Tensor w = weight.contiguous(kfmt);
  const at::Tensor res = is_defined(residual) ? residual->contiguous(kfmt) : at::Tensor();
  TORCH_INTERNAL_ASSERT(x.is_contiguous(kfmt) && w.is_contiguous(kfmt) && (!res.defined() || res.is_contiguous(kfmt)));
  s.x = channels_last_strides(s.C, s.H, s.W);
  s.w = channels_last_strides(s.Cg(), s.R, s.S);
  s.y = channels_last_strides(s.K, s.P, s.Q);
  TORCH_CHECK_NOT_IMPLEMENTED(cuda::conv2d_implicit_gemm_can_implement(s, cuda::ConvDir::kFprop, 2), "fastconv.", kOp,
                              ": CUDA algo 'implicit_gemm' cannot implement this convolution (every size must be "
                              "below 2^30): input ", input.sizes(), ", weight ", weight.sizes());
  const at::Tensor sc = is_defined(scale) ? scale->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor bi = is_defined(bias) ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* scp = sc.defined() ? sc.const_data_ptr<float>() : nullptr;
  const float* bip = bi.defined() ? bi.const_data_ptr<float>() : nullptr;

  cudaError_t err = cudaSuccess;
  if (st == at::kHalf) {
    err = cuda::conv2d_implicit_gemm_fprop_fused<__half>(
        s, reinterpret_cast<const __half*>(x.const_data_ptr()), reinterpret_cast<const __half*>(w.const_data_ptr()),
        scp, bip, res.defined() ? reinterpret_cast<const __half*>(res.const_data_ptr()) : nullptr, relu,
        reinterpret_cast<__half*>(y.data_ptr()), nullptr, 0, stream);
  } else {
    err = cuda::conv2d_implicit_gemm_fprop_fused<__nv_bfloat16>(
        s, reinterpret_cast<const __nv_bfloat16*>(x.const_data_ptr()),
        reinterpret_cast<const __nv_bfloat16*>(w.const_data_ptr()), scp, bip,
        res.defined() ? reinterpret_cast<const __nv_bfloat16*>(res.const_data_ptr()) : nullptr, relu,
        reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), nullptr, 0, stream);
  }
  check_cuda(err, kOp, "implicit_gemm");
  return y.contiguous(fmt);
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) { m.impl("conv2d_fused", TORCH_FN(fastconv::conv2d_fused_cuda)); }
