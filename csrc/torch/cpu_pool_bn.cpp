// CPU implementations of the pooling and batch-norm ops (schemas in ops.cpp).
// Host order per op: dtype/device checks -> torch's argument and shape checks -> outputs in the
// input's suggested memory format -> empty early return -> kernel -> status check.
// Kernels read inputs through strides, so only tensors that must share a stride set with an
// output (dy, indices, y) are made to match it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "checks.h"
#include "prepare.h"
#include "fastconv/cpu_api.h"

namespace fastconv {
namespace {

void check_float_dtype(const at::Tensor& t, const char* op) { check_dtype_in(t, {at::kFloat, at::kDouble}, op, "CPU"); }

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fastconv.", op, ": expected all tensors to be on the same device, but ",
              name, " is on ", t.device(), " and the op runs on cpu");
}


// True when a and b address their elements identically (dims of size 1 may have any stride).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// t with exactly ref's strides (a copy only when they differ).
at::Tensor like_layout(const at::Tensor& t, const at::Tensor& ref) {
  if (same_layout(t, ref)) return t;
  return at::empty_strided(ref.sizes(), ref.strides(), t.options()).copy_(t);
}

void check_status_op(Status st, const char* op) {
  TORCH_CHECK(st == Status::kSuccess, "fastconv.", op, ": kernel failed: ", status_string(st));
}

// ---- pooling -------------------------------------------------------------------------------------

at::Tensor empty_pool_output(const at::Tensor& x, int64_t P, int64_t Q, at::ScalarType dtype) {
  return at::empty({x.size(0), x.size(1), P, Q}, x.options().dtype(dtype).memory_format(x.suggest_memory_format()));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride,
                                                  at::IntArrayRef pad, at::IntArrayRef dil, bool ceil_mode) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "max_pool2d";
  Pool2dShape s = prepare_pool(x, k, stride, pad, dil, ceil_mode, op);
  // Integer inputs too, as torch's CPU max_pool2d (no gradient flows through them).
  check_dtype_in(x, {at::kFloat, at::kDouble, at::kByte, at::kChar, at::kShort, at::kInt, at::kLong}, op, "CPU");
  at::Tensor y = empty_pool_output(x, s.P, s.Q, x.scalar_type());
  at::Tensor idx = like_layout(empty_pool_output(x, s.P, s.Q, at::kLong), y);
  if (y.numel() == 0) return {y, idx};
  s.x = strides4(x);
  s.y = strides4(y);
  AT_DISPATCH_ALL_TYPES(x.scalar_type(), "fastconv_max_pool2d", [&] {
    check_status_op(cpu::max_pool2d_fwd<scalar_t>(s, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                                  idx.mutable_data_ptr<int64_t>()),
                    op);
  });
  return {y, idx};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& indices,
                                   at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                                   at::IntArrayRef dil, bool ceil_mode) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "max_pool2d_backward";
  Pool2dShape s = prepare_max_pool2d_backward(dy, x, indices, k, stride, pad, dil, ceil_mode, op);
  check_cpu(x, op, "input");
  check_float_dtype(x, op);
  const auto fmt = x.suggest_memory_format();
  at::Tensor dy_c = dy.contiguous(fmt);
  at::Tensor idx_c = like_layout(indices, dy_c);  // the kernel reads both through one stride set
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  s.x = strides4(dx);
  s.y = strides4(dy_c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_max_pool2d_backward", [&] {
    check_status_op(cpu::max_pool2d_bwd<scalar_t>(s, dy_c.const_data_ptr<scalar_t>(),
                                                  idx_c.const_data_ptr<int64_t>(), dx.mutable_data_ptr<scalar_t>()),
                    op);
  });
  return dx;
}

at::Tensor avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                          bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "avg_pool2d";
  const std::vector<int64_t> one{1, 1};
  Pool2dShape s = prepare_pool(x, k, stride, pad, one, ceil_mode, op);
  check_float_dtype(x, op);
  bool negate = false;
  const int64_t divisor = avg_pool_divisor(divisor_override, op, &negate);
  at::Tensor y = empty_pool_output(x, s.P, s.Q, x.scalar_type());
  if (y.numel() == 0) return y;
  s.x = strides4(x);
  s.y = strides4(y);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_avg_pool2d", [&] {
    check_status_op(cpu::avg_pool2d_fwd<scalar_t>(s, count_include_pad, divisor, x.const_data_ptr<scalar_t>(),
                                                  y.mutable_data_ptr<scalar_t>()),
                    op);
  });
  if (negate) y.neg_();
  return y;
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& dy, const at::Tensor& x, at::IntArrayRef k,
                                   at::IntArrayRef stride, at::IntArrayRef pad, bool ceil_mode,
                                   bool count_include_pad, std::optional<int64_t> divisor_override) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "avg_pool2d_backward";
  Pool2dShape s = prepare_avg_pool2d_backward(dy, x, k, stride, pad, ceil_mode, op);
  check_cpu(x, op, "input");
  check_float_dtype(x, op);
  bool negate = false;
  const int64_t divisor = avg_pool_divisor(divisor_override, op, &negate);
  const auto fmt = x.suggest_memory_format();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  s.x = strides4(dx);
  s.y = strides4(dy);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_avg_pool2d_backward", [&] {
    check_status_op(cpu::avg_pool2d_bwd<scalar_t>(s, count_include_pad, divisor, dy.const_data_ptr<scalar_t>(),
                                                  dx.mutable_data_ptr<scalar_t>()),
                    op);
  });
  if (negate) dx.neg_();
  return dx;
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef output_size) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "adaptive_avg_pool2d";
  Pool2dShape s = prepare_adaptive_pool(x, output_size, op);
  check_float_dtype(x, op);
  at::Tensor y = empty_pool_output(x, s.P, s.Q, x.scalar_type());
  if (y.numel() == 0) return y;
  s.x = strides4(x);
  s.y = strides4(y);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_adaptive_avg_pool2d", [&] {
    check_status_op(
        cpu::adaptive_avg_pool2d_fwd<scalar_t>(s, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>()), op);
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& dy, const at::Tensor& x) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "adaptive_avg_pool2d_backward";
  Pool2dShape s = prepare_adaptive_pool_backward(dy, x, op);
  check_cpu(x, op, "input");
  check_float_dtype(x, op);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(x.suggest_memory_format()));
  if (dx.numel() == 0) return dx;
  s.x = strides4(dx);
  s.y = strides4(dy);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_adaptive_avg_pool2d_backward", [&] {
    check_status_op(
        cpu::adaptive_avg_pool2d_bwd<scalar_t>(s, dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>()),
        op);
  });
  return dx;
}

// ---- batch norm ----------------------------------------------------------------------------------

// x as [N, C, H, W]: 4-D inputs as they are, other (N, C, *) inputs as a contiguous [N, C, L, 1] view.
at::Tensor as_bn4d(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() >= 2, "fastconv.", op, ": expected ", name, " with at least 2 dimensions (N, C, *), got ",
              x.sizes());
  if (x.dim() == 4) return x;
  int64_t L = 1;
  for (int64_t d = 2; d < x.dim(); ++d) L *= x.size(d);
  return x.contiguous().view({x.size(0), x.size(1), L, 1});
}

BatchNormShape bn_shape(const at::Tensor& x4, const at::Tensor& y4) {
  BatchNormShape s;
  s.N = x4.size(0); s.C = x4.size(1); s.H = x4.size(2); s.W = x4.size(3);
  s.x = strides4(x4);
  s.y = strides4(y4);
  return s;
}

// A checked (prepare.h) parameter or statistic as a dense [C] vector in dtype; None stays undefined.
at::Tensor channel_vector(const std::optional<at::Tensor>& t, int64_t C, at::ScalarType dtype) {
  if (!has(t)) return at::Tensor();
  return t->to(dtype).contiguous().view({C});
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    bool relu) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "batch_norm_train";
  check_float_dtype(x, op);
  const int64_t C = prepare_bn(x, weight, bias, op);
  check_cpu(x, op, "input");
  const at::Tensor x4 = as_bn4d(x, op, "input");
  const at::Tensor w = channel_vector(weight, C, x.scalar_type());
  const at::Tensor b = channel_vector(bias, C, x.scalar_type());
  at::Tensor y4 = at::empty(x4.sizes(), x4.options().memory_format(x4.suggest_memory_format()));
  at::Tensor save_mean = at::empty({C}, x.options());
  at::Tensor save_invstd = at::empty({C}, x.options());
  at::Tensor batch_var = at::empty({C}, x.options());
  const BatchNormShape s = bn_shape(x4, y4);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_batch_norm_train", [&] {
    check_status_op(cpu::batch_norm_train_fwd<scalar_t>(
                        s, x4.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w), ptr_or_null<scalar_t>(b), eps,
                        relu, y4.mutable_data_ptr<scalar_t>(), save_mean.mutable_data_ptr<scalar_t>(),
                        save_invstd.mutable_data_ptr<scalar_t>(), batch_var.mutable_data_ptr<scalar_t>()),
                    op);
  });
  at::Tensor y = x.dim() == 4 ? y4 : y4.view(x.sizes());
  return {y, save_mean, save_invstd, batch_var};
}

at::Tensor batch_norm_eval_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                               const at::Tensor& running_var, double eps, bool relu) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "batch_norm_eval";
  check_float_dtype(x, op);
  const int64_t C = prepare_bn(x, weight, bias, op);
  prepare_bn_stats(x, C, op, {{"running_mean", &running_mean}, {"running_var", &running_var}});
  check_cpu(x, op, "input");
  const at::Tensor x4 = as_bn4d(x, op, "input");
  const at::Tensor w = channel_vector(weight, C, x.scalar_type());
  const at::Tensor b = channel_vector(bias, C, x.scalar_type());
  const at::Tensor rm = channel_vector(running_mean, C, x.scalar_type());
  const at::Tensor rv = channel_vector(running_var, C, x.scalar_type());
  at::Tensor y4 = at::empty(x4.sizes(), x4.options().memory_format(x4.suggest_memory_format()));
  const BatchNormShape s = bn_shape(x4, y4);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_batch_norm_eval", [&] {
    check_status_op(cpu::batch_norm_eval_fwd<scalar_t>(s, x4.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w),
                                                       ptr_or_null<scalar_t>(b), rm.const_data_ptr<scalar_t>(),
                                                       rv.const_data_ptr<scalar_t>(), eps, relu,
                                                       y4.mutable_data_ptr<scalar_t>()),
                    op);
  });
  return x.dim() == 4 ? y4 : y4.view(x.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& output,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd, bool train, bool relu,
    std::array<bool, 3> output_mask) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "batch_norm_backward";
  check_float_dtype(x, op);
  const int64_t C = prepare_bn(x, weight, std::nullopt, op);
  prepare_bn_stats(x, C, op, {{"mean", &mean}, {"invstd", &invstd}});
  check_same_device(op, {{"input", &x}, {"grad_output", &dy}, {"output", opt_ptr(output)}});
  check_cpu(x, op, "input");
  TORCH_CHECK(dy.sizes() == x.sizes(), "fastconv.", op, ": grad_output of size ", dy.sizes(),
              " does not match input of size ", x.sizes());
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "fastconv.", op, ": expected grad_output of dtype ",
              x.scalar_type(), ", got ", dy.scalar_type());
  const bool has_output = output.has_value() && output->defined();
  TORCH_CHECK(!relu || has_output, "fastconv.", op, ": relu=True needs the forward output");
  if (has_output) {
    check_cpu(*output, op, "output");
    TORCH_CHECK(output->sizes() == x.sizes(), "fastconv.", op, ": output of size ", output->sizes(),
                " does not match input of size ", x.sizes());
  }
  const at::Tensor x4 = as_bn4d(x, op, "input");
  const at::Tensor w = channel_vector(weight, C, x.scalar_type());
  const at::Tensor m = channel_vector(mean, C, x.scalar_type());
  const at::Tensor is = channel_vector(invstd, C, x.scalar_type());
  // dy, y and dx share one stride set in the kernel: a dense layout in x's memory format.
  const at::Tensor dy4 = as_bn4d(dy, op, "grad_output").contiguous(x4.suggest_memory_format());
  at::Tensor y4;
  if (relu) y4 = like_layout(as_bn4d(output->to(x.scalar_type()), op, "output"), dy4);
  at::Tensor dx4, dw, db;
  if (output_mask[0]) dx4 = at::empty_strided(dy4.sizes(), dy4.strides(), x.options());
  if (output_mask[1]) dw = at::empty({C}, x.options());
  if (output_mask[2]) db = at::empty({C}, x.options());
  const BatchNormShape s = bn_shape(x4, dy4);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_batch_norm_backward", [&] {
    auto mut = [](at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr; };
    check_status_op(cpu::batch_norm_bwd<scalar_t>(s, dy4.const_data_ptr<scalar_t>(), x4.const_data_ptr<scalar_t>(),
                                                  ptr_or_null<scalar_t>(y4), ptr_or_null<scalar_t>(w),
                                                  m.const_data_ptr<scalar_t>(), is.const_data_ptr<scalar_t>(), train,
                                                  relu, mut(dx4), mut(dw), mut(db)),
                    op);
  });
  // Parameter gradients come back in the parameter's dtype, as torch's.
  const bool has_weight = weight.has_value() && weight->defined();
  if (has_weight && weight->scalar_type() != x.scalar_type()) {
    if (dw.defined()) dw = dw.to(weight->scalar_type());
    if (db.defined()) db = db.to(weight->scalar_type());
  }
  const auto none = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = dx4.defined() ? (x.dim() == 4 ? dx4 : dx4.view(x.sizes())) : none();
  return {dx, dw.defined() ? dw : none(), db.defined() ? db : none()};
}

void batch_norm_update_running_stats_cpu(const at::Tensor& running_mean, const at::Tensor& running_var,
                                         const at::Tensor& save_mean, const at::Tensor& batch_var, c10::SymInt count_sym,
                                         double factor) {
  FASTCONV_BELOW_AUTOGRAD();
  const int64_t count = count_sym.expect_int();  // SymInt in the schema so tracing keeps N symbolic
  const char* op = "batch_norm_update_running_stats_";
  check_float_dtype(save_mean, op);
  check_same_device(op, {{"running_mean", &running_mean},
                         {"running_var", &running_var},
                         {"save_mean", &save_mean},
                         {"batch_var", &batch_var}});
  check_cpu(save_mean, op, "save_mean");
  const int64_t C = save_mean.numel();
  check_bn_stat(save_mean, C, op, "save_mean");
  check_bn_stat(batch_var, C, op, "batch_var");
  check_bn_stat(running_mean, C, op, "running_mean");
  check_bn_stat(running_var, C, op, "running_var");
  check_running_stat_dtype(running_mean, save_mean, op, "running_mean");
  check_running_stat_dtype(running_var, save_mean, op, "running_var");
  TORCH_CHECK(count >= 0, "fastconv.", op, ": count must be non-negative, got ", count);
  if (count == 0 || C == 0) return;  // an empty batch leaves the running statistics alone, as torch
  const auto dtype = save_mean.scalar_type();
  // Update in the statistics' dtype; write back only when the conversion made a copy.
  at::Tensor rm = running_mean.to(dtype).contiguous();
  at::Tensor rv = running_var.to(dtype).contiguous();
  const at::Tensor sm = save_mean.contiguous();
  const at::Tensor bv = batch_var.to(dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "fastconv_batch_norm_update_running_stats", [&] {
    check_status_op(cpu::batch_norm_update_running_stats<scalar_t>(
                        C, sm.const_data_ptr<scalar_t>(), bv.const_data_ptr<scalar_t>(), count, factor,
                        rm.mutable_data_ptr<scalar_t>(), rv.mutable_data_ptr<scalar_t>()),
                    op);
  });
  if (!rm.is_same(running_mean)) running_mean.copy_(rm.view(running_mean.sizes()));
  if (!rv.is_same(running_var)) running_var.copy_(rv.view(running_var.sizes()));
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d", &fastconv::max_pool2d_cpu);
  m.impl("max_pool2d_backward", &fastconv::max_pool2d_backward_cpu);
  m.impl("avg_pool2d", &fastconv::avg_pool2d_cpu);
  m.impl("avg_pool2d_backward", &fastconv::avg_pool2d_backward_cpu);
  m.impl("adaptive_avg_pool2d", &fastconv::adaptive_avg_pool2d_cpu);
  m.impl("adaptive_avg_pool2d_backward", &fastconv::adaptive_avg_pool2d_backward_cpu);
  m.impl("batch_norm_train", &fastconv::batch_norm_train_cpu);
  m.impl("batch_norm_eval", &fastconv::batch_norm_eval_cpu);
  m.impl("batch_norm_backward", &fastconv::batch_norm_backward_cpu);
  m.impl("batch_norm_update_running_stats_", &fastconv::batch_norm_update_running_stats_cpu);
}
