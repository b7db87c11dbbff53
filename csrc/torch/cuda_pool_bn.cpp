// CUDA binding of the pooling and batch-norm ops (schemas in ops.cpp): tensors -> raw pointers +
// shape struct + current stream, then one launcher from fastconv/cuda_api.h. Built into fastconv._C
// against a CUDA build of torch, and into fastconv._C_emu for the emulated CUDA device.
//
// Host order in every op: prepare.h's device-independent checks and shape -> the CUDA dtype set ->
// CUDAGuard -> current stream -> empty early return -> operands dense in the input's suggested
// memory format -> launch -> cudaError_t check.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <tuple>

#include "cuda_common.h"

namespace fastconv {
namespace {

using namespace cuda_binding;

// ---- pooling --------------------------------------------------------------------------------------

void set_pool_strides(Pool2dShape& s, MemoryFormat fmt) {
  s.x = dense_strides({s.N, s.C, s.H, s.W}, fmt);
  s.y = dense_strides({s.N, s.C, s.P, s.Q}, fmt);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "max_pool2d";
  Pool2dShape s = prepare_pool(self, kernel_size, stride, padding, dilation, ceil_mode, op);
  check_on_cuda(self, op, "input");
  check_cuda_dtype(self, op, true);

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
  Pool2dShape s = prepare_max_pool2d_backward(grad_output, self, indices, kernel_size, stride, padding, dilation,
                                              ceil_mode, op);
  check_on_cuda(grad_output, op, "grad_output");
  check_cuda_dtype(grad_output, op, true);

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

at::Tensor avg_pool2d_cuda(const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "avg_pool2d";
  const int64_t one[2] = {1, 1};
  Pool2dShape s = prepare_pool(self, kernel_size, stride, padding, one, ceil_mode, op);
  check_on_cuda(self, op, "input");
  check_cuda_dtype(self, op, true);
  bool negate = false;
  const int64_t divisor = avg_pool_divisor(divisor_override, op, &negate);

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
  Pool2dShape s = prepare_avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, op);
  check_on_cuda(grad_output, op, "grad_output");
  check_cuda_dtype(grad_output, op, true);
  bool negate = false;
  const int64_t divisor = avg_pool_divisor(divisor_override, op, &negate);

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

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& self, at::IntArrayRef output_size) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "adaptive_avg_pool2d";
  Pool2dShape s = prepare_adaptive_pool(self, output_size, op);
  check_on_cuda(self, op, "input");
  check_cuda_dtype(self, op, true);

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
  Pool2dShape s = prepare_adaptive_pool_backward(grad_output, self, op);
  check_on_cuda(grad_output, op, "grad_output");
  check_cuda_dtype(grad_output, op, true);

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

at::Tensor opt_as_acc(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  return has(t) ? as_acc(*t, acc) : at::Tensor();
}

// A [N, C, L, 1] result back to the caller's (N, C, *) shape; 4-D results are already in shape.
at::Tensor bn_unview(const at::Tensor& y4, const at::Tensor& x) { return x.dim() == 4 ? y4 : y4.view(x.sizes()); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    double eps, bool relu) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "batch_norm_train";
  check_on_cuda(input, op, "input");
  check_cuda_dtype(input, op, true);
  const int64_t C = prepare_bn(input, weight, bias, op);
  const at::ScalarType acc = acc_type(input.scalar_type());

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
  check_on_cuda(input, op, "input");
  check_cuda_dtype(input, op, true);
  const int64_t C = prepare_bn(input, weight, bias, op);
  prepare_bn_stats(input, C, op, {{"running_mean", &running_mean}, {"running_var", &running_var}});
  const at::ScalarType acc = acc_type(input.scalar_type());

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
  check_on_cuda(input, op, "input");
  check_cuda_dtype(input, op, true);
  const int64_t C = prepare_bn(input, weight, std::nullopt, op);
  prepare_bn_stats(input, C, op, {{"mean", &mean}, {"invstd", &invstd}});
  check_same_device(op, {{"input", &input}, {"grad_output", &grad_output}, {"output", opt_ptr(output)}});
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(), "fastconv.",
              op, ": expected grad_output of size ", input.sizes(), " and dtype ", input.scalar_type(), ", got ",
              grad_output.sizes(), " and ", grad_output.scalar_type());
  TORCH_CHECK(!relu || has(output), "fastconv.", op, ": relu=True needs the forward output");
  if (relu) {
    TORCH_CHECK(output->sizes() == input.sizes() && output->scalar_type() == input.scalar_type(), "fastconv.", op,
                ": expected output of size ", input.sizes(), " and dtype ", input.scalar_type(), ", got ",
                output->sizes(), " and ", output->scalar_type());
  }
  const at::ScalarType acc = acc_type(input.scalar_type());
  // dweight/dbias come back in the parameters' dtype (float under AMP, half for a .half() model).
  // Without a weight: the accumulation dtype, as the fake kernel (fastconv/_meta.py) promises; the
  // input dtype here made db half for half input under compile/opcheck where the fake says float.
  const at::ScalarType param_dtype = has(weight) ? weight->scalar_type() : acc;

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
  check_same_device(op, {{"running_mean", &running_mean},
                         {"running_var", &running_var},
                         {"save_mean", &save_mean},
                         {"batch_var", &batch_var}});
  check_on_cuda(running_mean, op, "running_mean");
  const at::ScalarType acc = save_mean.scalar_type();
  TORCH_CHECK_TYPE(acc == at::kFloat || acc == at::kDouble, "fastconv.", op,
                   ": CUDA kernel 'batch_norm_update_running_stats' supports float32 and float64 statistics, got ",
                   acc);
  const int64_t C = save_mean.numel();
  TORCH_CHECK(save_mean.dim() == 1, "fastconv.", op, ": expected 1-D save_mean, got ", save_mean.sizes());
  // count == 0 (an empty batch in training) must be a no-op, as on the CPU and in torch: functional
  // batch_norm calls this after a training forward on an (0, C, ...) input.
  TORCH_CHECK(count >= 0, "fastconv.", op, ": count must be non-negative, got ", count);
  check_bn_stat(batch_var, C, op, "batch_var");
  check_bn_stat(running_mean, C, op, "running_mean");
  check_bn_stat(running_var, C, op, "running_var");
  check_running_stat_dtype(running_mean, save_mean, op, "running_mean");
  check_running_stat_dtype(running_var, save_mean, op, "running_var");

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

TORCH_LIBRARY_IMPL(fastconv, FASTCONV_CUDA_DISPATCH_KEY, m) {
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
