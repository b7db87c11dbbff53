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

void check_float_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fastconv.", op,
                   ": CPU kernels support float32 and float64, got ", t.scalar_type());
}

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

void check_grad_output(const at::Tensor& dy, const Pool2dShape& s, const char* op, const char* name) {
  check_4d(dy, op, name);
  const std::vector<int64_t> want{s.N, s.C, s.P, s.Q};
  TORCH_CHECK(dy.sizes() == at::IntArrayRef(want), "fastconv.", op, ": expected ", name, " of size ",
              at::IntArrayRef(want), ", but got ", dy.sizes());
}

at::Tensor empty_pool_output(const at::Tensor& x, int64_t P, int64_t Q, at::ScalarType dtype) {
  return at::empty({x.size(0), x.size(1), P, Q}, x.options().dtype(dtype).memory_format(x.suggest_memory_format()));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride,
                                                  at::IntArrayRef pad, at::IntArrayRef dil, bool ceil_mode) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "max_pool2d";
  check_float_dtype(x, op);
  Pool2dShape s = prepare_pool(x, k, stride, pad, dil, ceil_mode, op);
  at::Tensor y = empty_pool_output(x, s.P, s.Q, x.scalar_type());
  at::Tensor idx = like_layout(empty_pool_output(x, s.P, s.Q, at::kLong), y);
  if (y.numel() == 0) return {y, idx};
  s.x = strides4(x);
  s.y = strides4(y);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_max_pool2d", [&] {
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
  check_float_dtype(x, op);
  check_cpu(dy, op, "grad_output");
  check_cpu(indices, op, "indices");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "fastconv.", op, ": expected grad_output of dtype ",
              x.scalar_type(), ", got ", dy.scalar_type());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "fastconv.", op, ": expected indices of dtype Long, got ",
              indices.scalar_type());
  Pool2dShape s = prepare_pool(x, k, stride, pad, dil, ceil_mode, op);
  check_grad_output(dy, s, op, "grad_output");
  check_grad_output(indices, s, op, "indices");
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

// The kernels take divisor_override <= 0 as "none"; a negative override is applied as its
// magnitude and the result negated, which is exact in IEEE arithmetic.
int64_t divisor_magnitude(std::optional<int64_t> divisor_override, const char* op, bool* negate) {
  *negate = false;
  if (!divisor_override.has_value()) return 0;
  TORCH_CHECK(*divisor_override != 0, "fastconv.", op, ": divisor must be not zero");
  *negate = *divisor_override < 0;
  return *negate ? -*divisor_override : *divisor_override;
}

at::Tensor avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                          bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "avg_pool2d";
  check_float_dtype(x, op);
  bool negate = false;
  const int64_t divisor = divisor_magnitude(divisor_override, op, &negate);
  const std::vector<int64_t> one{1, 1};
  Pool2dShape s = prepare_pool(x, k, stride, pad, one, ceil_mode, op);
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
  check_float_dtype(x, op);
  check_cpu(dy, op, "grad_output");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "fastconv.", op, ": expected grad_output of dtype ",
              x.scalar_type(), ", got ", dy.scalar_type());
  bool negate = false;
  const int64_t divisor = divisor_magnitude(divisor_override, op, &negate);
  const std::vector<int64_t> one{1, 1};
  Pool2dShape s = prepare_pool(x, k, stride, pad, one, ceil_mode, op);
  check_grad_output(dy, s, op, "grad_output");
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

Pool2dShape adaptive_shape(const at::Tensor& x, int64_t P, int64_t Q, const char* op) {
  check_4d(x, op, "input");
  for (int64_t d = 1; d < 4; ++d) {
    TORCH_CHECK(x.size(d) > 0, "fastconv.", op,
                ": Expected input to have non-zero size for non-batch dimensions, but input has sizes ", x.sizes(),
                " with dimension ", d, " being empty");
  }
  Pool2dShape s;
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.W = x.size(3);
  s.P = P; s.Q = Q;
  return s;
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef output_size) {
  FASTCONV_BELOW_AUTOGRAD();
  const char* op = "adaptive_avg_pool2d";
  check_float_dtype(x, op);
  check_pair(output_size, op, "output_size");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, "fastconv.", op,
              ": elements of output_size must be greater than or equal to 0 but received {", output_size[0], ", ",
              output_size[1], "}");
  Pool2dShape s = adaptive_shape(x, output_size[0], output_size[1], op);
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
  check_float_dtype(x, op);
  check_cpu(dy, op, "grad_output");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "fastconv.", op, ": expected grad_output of dtype ",
              x.scalar_type(), ", got ", dy.scalar_type());
  check_4d(dy, op, "grad_output");
  Pool2dShape s = adaptive_shape(x, dy.size(2), dy.size(3), op);
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.C, "fastconv.", op, ": grad_output of size ", dy.sizes(),
              " does not match input of size ", x.sizes());
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

// A dense [C] vector in dtype (None stays undefined); checks its length like torch.
at::Tensor channel_vector(const std::optional<at::Tensor>& t, int64_t C, at::ScalarType dtype, const char* op,
                          const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_cpu(*t, op, name);
  check_bn_affine(*t, C, op, name);
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
  const at::Tensor x4 = as_bn4d(x, op, "input");
  const int64_t C = x4.size(1);
  const at::Tensor w = channel_vector(weight, C, x.scalar_type(), op, "weight");
  const at::Tensor b = channel_vector(bias, C, x.scalar_type(), op, "bias");
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
  const at::Tensor x4 = as_bn4d(x, op, "input");
  const int64_t C = x4.size(1);
  const at::Tensor w = channel_vector(weight, C, x.scalar_type(), op, "weight");
  const at::Tensor b = channel_vector(bias, C, x.scalar_type(), op, "bias");
  const at::Tensor rm = channel_vector(running_mean, C, x.scalar_type(), op, "running_mean");
  const at::Tensor rv = channel_vector(running_var, C, x.scalar_type(), op, "running_var");
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
  check_cpu(dy, op, "grad_output");
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
  const int64_t C = x4.size(1);
  const at::Tensor w = channel_vector(weight, C, x.scalar_type(), op, "weight");
  const at::Tensor m = channel_vector(mean, C, x.scalar_type(), op, "mean");
  const at::Tensor is = channel_vector(invstd, C, x.scalar_type(), op, "invstd");
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
  for (const at::Tensor* t : {&running_mean, &running_var, &batch_var}) check_cpu(*t, op, "a running statistic");
  const int64_t C = save_mean.numel();
  TORCH_CHECK(batch_var.numel() == C && running_mean.numel() == C && running_var.numel() == C, "fastconv.", op,
              ": running_mean, running_var, save_mean and batch_var must all have ", C, " elements");
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
