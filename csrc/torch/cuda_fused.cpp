// CUDA implementations of the fused convolution ops (schemas in ops.cpp).
//
// conv2d_fused:  y = relu?( conv2d(x, w) · scale[k] + bias[k] + residual )
//
// algo "implicit_gemm" / "implicit_gemm_sm90": one tensor-core kernel with the epilogue fused
//   (conv2d_igemm_tc.cu / conv2d_igemm_sm90.cu; float32 on TF32, only while TF32 is allowed). Host
//   order: checks -> CUDAGuard -> current stream -> channels_last operands (the kernel's layout; the
//   output is converted back to conv_output_format at the end) -> empty early return ->
//   can_implement -> launch -> cudaError_t check.
// any other algo: the conv2d op (cuda_conv.cpp, through the dispatcher) then the epilogue as ATen
//   ops in the accumulation dtype, rounded once to the output dtype — the same numerics as the fused
//   kernel, one extra pass over y.
//
// conv2d_bn_train: conv_out = conv2d(x, w); batch statistics of conv_out; out = relu?(BN(conv_out)).
// algo "implicit_gemm" / "implicit_gemm_sm90" (16-bit): the tensor-core kernel stores conv_out and
//   per-warp-slot Welford partials of it, a finalize kernel merges them in fixed order into save_mean /
//   batch_var / save_invstd (conv2d_implicit_gemm{,_sm90}_fprop_stats), then the batch_norm_eval op
//   with the batch statistics as its "running" statistics writes out in one elementwise pass: the
//   separate statistics pass over conv_out is gone. float32, and partials that would not fit the
//   workspace limit, run the composition below instead (the same results, one more pass).
// any other algo (the engine's forced tiles too): the conv2d op, then the batch_norm_train op (its
//   Welford statistics kernels).
// Compiled only against a CUDA build of torch (setup.py), syntax-checked by scripts/check_cuda_binding.sh.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <optional>
#include <string>
#include <tuple>

#include "cuda_common.h"
#include "fused_checks.h"
#include "op_calls.h"
#include "workspace.h"

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

// The fused kernels' can_implement (NHWC strides set), the same words for both fused ops.
void check_fprop_kernel(bool sm90, const Conv2dShape& s, int elem, const at::Tensor& input, const at::Tensor& weight,
                        const char* op) {
  if (sm90) {
    TORCH_CHECK_NOT_IMPLEMENTED(cuda::conv2d_implicit_gemm_sm90_can_implement(s, cuda::ConvDir::kFprop, elem),
                                "fastconv.", op,
                                ": CUDA algo 'implicit_gemm_sm90' cannot implement this convolution (it needs a "
                                "compute capability 9.0 device, C and C/groups multiples of 16 bytes and TMA's "
                                "im2col limits): input ", input.sizes(), ", weight ", weight.sizes());
  } else {
    TORCH_CHECK_NOT_IMPLEMENTED(cuda::conv2d_implicit_gemm_can_implement(s, cuda::ConvDir::kFprop, elem), "fastconv.",
                                op, ": CUDA algo 'implicit_gemm' cannot implement this convolution (every size must "
                                "be below 2^30): input ", input.sizes(), ", weight ", weight.sizes());
  }
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

  const bool sm90 = algo == "implicit_gemm_sm90";
  if (algo != "implicit_gemm" && !sm90) {
    at::Tensor y = call_conv2d(input, weight, stride, padding, dilation, groups, algo);
    check_residual(residual, y, kOp);
    if (y.numel() == 0) return y;
    CudaDeviceGuard guard(input.device());
    aten_epilogue(y, scale, bias, residual, relu);
    return y;
  }

  Conv2dShape s = prepare_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, kOp);
  const char* algo_name = sm90 ? "implicit_gemm_sm90" : "implicit_gemm";
  if (input.scalar_type() == at::kFloat) {
    TORCH_CHECK_NOT_IMPLEMENTED(allow_tf32_setting().load(), "fastconv.", kOp, ": CUDA algo '", algo_name,
                                "' runs float32 on TF32 tensor cores, which is off; set "
                                "fastconv.backends.allow_tf32 = True to allow it");
  } else {
    check_dtype_in(input, {at::kHalf, at::kBFloat16}, kOp, sm90 ? "CUDA algo 'implicit_gemm_sm90'" : "CUDA algo 'implicit_gemm'");
  }
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
  const int elem = static_cast<int>(input.element_size());
  check_fprop_kernel(sm90, s, elem, input, weight, kOp);
  const at::Tensor sc = is_defined(scale) ? scale->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor bi = is_defined(bias) ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* scp = sc.defined() ? sc.const_data_ptr<float>() : nullptr;
  const float* bip = bi.defined() ? bi.const_data_ptr<float>() : nullptr;

  cudaError_t err = cudaSuccess;
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = reinterpret_cast<const T*>(x.const_data_ptr());
    const T* wp = reinterpret_cast<const T*>(w.const_data_ptr());
    const T* rp = res.defined() ? reinterpret_cast<const T*>(res.const_data_ptr()) : nullptr;
    T* yp = reinterpret_cast<T*>(y.data_ptr());
    err = sm90 ? cuda::conv2d_implicit_gemm_sm90_fprop_fused<T>(s, xp, wp, scp, bip, rp, relu, yp, nullptr, 0, stream)
               : cuda::conv2d_implicit_gemm_fprop_fused<T>(s, xp, wp, scp, bip, rp, relu, yp, nullptr, 0, stream);
  };
  if (st == at::kHalf) {
    run(Tag<__half>{});
  } else if (st == at::kBFloat16) {
    run(Tag<__nv_bfloat16>{});
  } else {
    run(Tag<float>{});
  }
  check_cuda(err, kOp, algo_name);
  return y.contiguous(fmt);
}

// ---- conv2d_bn_train --------------------------------------------------------------------------------

at::Tensor call_batch_norm_eval(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var,
                                double eps, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastconv::batch_norm_eval", "")
          .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            const at::Tensor&, const at::Tensor&, double, bool)>();
  return op.call(x, weight, bias, mean, var, eps, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv2d_bn_train_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bn_weight,
    const std::optional<at::Tensor>& bn_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, bool relu, c10::string_view algo) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_bn_train";
  check_on_cuda(input, op, "input");
  Conv2dShape s = prepare_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, op);
  // BN parameters: prepare_bn's checks against an empty stand-in with the conv output's channels (as
  // on the CPU, so the devices cannot drift), before any work.
  prepare_bn(at::empty({0, s.K}, input.options()), bn_weight, bn_bias, op);

  const bool sm90 = algo == "implicit_gemm_sm90";
  const char* algo_name = sm90 ? "implicit_gemm_sm90" : "implicit_gemm";
  // 16-bit only (float32 composes: its conv applies the TF32 policy).
  const bool half = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  bool stats_kernel = (algo == "implicit_gemm" || sm90) && half && input.numel() > 0 && s.N * s.P * s.Q > 0;
  size_t ws_bytes = 0;  // the statistics partials
  if (stats_kernel) {  // the kernels' NHWC / KRSC / NPQK layouts (the operands are made so below)
    s.x = channels_last_strides(s.C, s.H, s.W);
    s.w = channels_last_strides(s.Cg(), s.R, s.S);
    s.y = channels_last_strides(s.K, s.P, s.Q);
    ws_bytes = sm90 ? cuda::conv2d_implicit_gemm_sm90_fprop_stats_workspace_bytes(s)
                    : cuda::conv2d_implicit_gemm_fprop_stats_workspace_bytes(s);
    stats_kernel = ws_bytes <= workspace_limit_bytes();
  }
  if (!stats_kernel) {
    // Every other algorithm (and the empty cases, where there is nothing to fuse): the composition.
    at::Tensor conv_out = call_conv2d(input, weight, stride, padding, dilation, groups, algo);
    auto [out, mean, invstd, var] = call_batch_norm_train(conv_out, bn_weight, bn_bias, eps, relu);
    return {out, conv_out, mean, invstd, var};
  }

  const at::ScalarType st = input.scalar_type();
  CudaDeviceGuard guard(input.device());
  const cudaStream_t stream = current_cuda_stream();

  const MemoryFormat fmt = conv_output_format(input, weight);
  constexpr MemoryFormat kfmt = MemoryFormat::ChannelsLast;  // the kernel's NHWC / KRSC / NPQK layout
  const at::Tensor x = input.contiguous(kfmt);
  const at::Tensor w = weight.contiguous(kfmt);
  TORCH_INTERNAL_ASSERT(x.is_contiguous(kfmt) && w.is_contiguous(kfmt));
  check_fprop_kernel(sm90, s, 2, input, weight, op);

  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(kfmt));
  const at::TensorOptions stat_opts = input.options().dtype(at::kFloat).memory_format(MemoryFormat::Contiguous);
  at::Tensor save_mean = at::empty({s.K}, stat_opts);
  at::Tensor save_invstd = at::empty({s.K}, stat_opts);
  at::Tensor batch_var = at::empty({s.K}, stat_opts);
  const at::Tensor ws = workspace(input, ws_bytes);

  const auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto fn = sm90 ? &cuda::conv2d_implicit_gemm_sm90_fprop_stats<T> : &cuda::conv2d_implicit_gemm_fprop_stats<T>;
    return fn(s, cptr<T>(x), cptr<T>(w), ptr<T>(y), ptr<float>(save_mean), ptr<float>(save_invstd),
              ptr<float>(batch_var), eps, ws.data_ptr(), ws_bytes, stream);
  };
  const cudaError_t err = st == at::kHalf ? run(Tag<__half>{}) : run(Tag<__nv_bfloat16>{});
  check_cuda(err, op, algo_name);
  // The apply pass: (y − mean)·invstd·w + b (+ReLU) with the batch statistics, y's layout.
  at::Tensor out = call_batch_norm_eval(y, bn_weight, bn_bias, save_mean, batch_var, eps, relu);
  return {out.contiguous(fmt), y.contiguous(fmt), save_mean, save_invstd, batch_var};
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d_fused", TORCH_FN(fastconv::conv2d_fused_cuda));
  m.impl("conv2d_bn_train", TORCH_FN(fastconv::conv2d_bn_train_cuda));
}
