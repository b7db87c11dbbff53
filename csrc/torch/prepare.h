// prepare.h — the device-independent half of the bindings (ATen's meta/impl split): argument checks,
// output sizes and shape structs that every device (CPU, CUDA, the emulated CUDA device) must apply
// identically, written once, with torch's rules, exception types and messages. A device file adds
// only what differs: its dtype set, layout policy, guard/stream, workspace and the launch.
//
// Sizes are checked so that no arithmetic the kernels do on them can overflow int64: torch's bounds
// where torch has them (conv padding < 2^62, pooling arguments fit an int), the output size computed
// in 128-bit arithmetic, and everything else follows from a positive output size.
#pragma once

#include <ATen/ATen.h>

#include <climits>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "checks.h"
#include "fastconv/shapes.h"

namespace fastconv {

inline bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }
inline const at::Tensor* opt_ptr(const std::optional<at::Tensor>& t) { return has(t) ? &*t : nullptr; }

inline void check_pair(at::IntArrayRef a, const char* op, const char* name) {
  TORCH_CHECK(a.size() == 2, "fastconv.", op, ": ", name, " must have 2 elements, got ", a);
}

// Every defined tensor on the first one's device (torch's message). Which device a kernel runs on is
// the device file's check; this one is the same everywhere.
inline void check_same_device(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> ts) {
  const auto& first = *ts.begin();
  for (const auto& t : ts) {
    if (t.second == nullptr || !t.second->defined()) continue;
    TORCH_CHECK(t.second->device() == first.second->device(), "fastconv.", op,
                ": Expected all tensors to be on the same device, but found at least two devices, ",
                first.second->device(), " (", first.first, ") and ", t.second->device(), " (", t.first, ")");
  }
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                             const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastconv.", op, ": ", a_name, " type (", a.scalar_type(),
              ") and ", b_name, " type (", b.scalar_type(), ") should be the same");
}

// A dtype this device has no kernels for: NotImplementedError, as torch's dispatch macros raise
// ("... not implemented for 'Bool'").
inline void check_dtype_in(const at::Tensor& t, std::initializer_list<at::ScalarType> ok, const char* op,
                           const std::string& device_word) {
  for (at::ScalarType st : ok)
    if (t.scalar_type() == st) return;
  std::string names;
  for (at::ScalarType st : ok) names += std::string(names.empty() ? "" : ", ") + c10::toString(st);
  TORCH_CHECK_NOT_IMPLEMENTED(false, "\"fastconv.", op, "\" not implemented for '", t.scalar_type(), "' on ",
                              device_word, " (its kernels support ", names, ")");
}

// ---- convolution ----------------------------------------------------------------------------------

// torch's bound (ConvUtils.h): padding at most 2^62 - 1, so H + 2·pad stays inside int64.
constexpr int64_t kMaxConvPadding = (int64_t{1} << 62) - 1;

// (in + 2·pad − dil·(k − 1) − 1) / stride + 1 in 128-bit arithmetic: huge strides and dilations
// (which torch accepts) cannot wrap. <= 0 when the window does not fit.
inline int64_t safe_conv_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil) {
  const __int128 num = static_cast<__int128>(in) + 2 * static_cast<__int128>(pad) -
                       static_cast<__int128>(dil) * (static_cast<__int128>(k) - 1) - 1;
  if (num < 0) return 0;
  return static_cast<int64_t>(num / stride + 1);
}

// Conv2dShape from an input of size [N, C, H, W] and a weight of size [K, C/groups, R, S]: torch's
// checks (check_shape_forward) in its order, with its messages.
inline Conv2dShape conv_shape_from_sizes(at::IntArrayRef in, at::IntArrayRef wt, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                         const char* op) {
  TORCH_CHECK(in.size() == 4 && wt.size() == 4, "fastconv.", op, ": expected 4-D input and weight sizes, got ", in,
              " and ", wt);
  check_pair(stride, op, "stride");
  check_pair(padding, op, "padding");
  check_pair(dilation, op, "dilation");
  for (int64_t v : in) TORCH_CHECK(v >= 0, "fastconv.", op, ": negative input size ", in);
  for (int64_t v : wt) TORCH_CHECK(v >= 0, "fastconv.", op, ": negative weight size ", wt);
  TORCH_CHECK(groups > 0, "fastconv.", op, ": non-positive groups is not supported");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fastconv.", op, ": non-positive stride is not supported");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "fastconv.", op, ": negative padding is not supported");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "fastconv.", op, ": dilation should be greater than zero");
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(padding[i] <= kMaxConvPadding, "fastconv.", op, ": Given padding=", padding[i], " at dimension ", i,
                " , expected padding to be at most ", kMaxConvPadding);
  }
  TORCH_CHECK(wt[0] >= groups, "fastconv.", op, ": Given groups=", groups, ", expected weight to be at least ",
              groups, " at dimension 0, but got weight of size ", wt, " instead");
  TORCH_CHECK(wt[0] % groups == 0, "fastconv.", op, ": Given groups=", groups,
              ", expected weight to be divisible by ", groups, " at dimension 0, but got weight of size ", wt,
              " instead");
  TORCH_CHECK(in[1] == wt[1] * groups, "fastconv.", op, ": Given groups=", groups, ", weight of size ", wt,
              ", expected input", in, " to have ", wt[1] * groups, " channels, but got ", in[1],
              " channels instead");
  TORCH_CHECK(in[0] == 0 || in[1] == 0 || (in[2] > 0 && in[3] > 0), "fastconv.", op,
              ": Only zero batch or zero channel inputs are supported, but got input shape: ", in);
  Conv2dShape s = make_conv2d_shape(in[0], in[1], in[2], in[3], wt[0], wt[2], wt[3], padding[0], padding[1],
                                    stride[0], stride[1], dilation[0], dilation[1], groups);
  s.P = safe_conv_output_size(in[2], wt[2], padding[0], stride[0], dilation[0]);
  s.Q = safe_conv_output_size(in[3], wt[3], padding[1], stride[1], dilation[1]);
  TORCH_CHECK(s.P > 0 && s.Q > 0, "fastconv.", op, ": Calculated output size: (", wt[0], "x", s.P, "x", s.Q,
              "). Output size is too small (input ", in, ", weight ", wt, ")");
  s.y = contiguous_strides(s.K, s.P, s.Q);
  return s;
}

// grad_output must have the size the forward would have produced.
inline void check_conv_grad_output(const at::Tensor& dy, const Conv2dShape& s, const char* op) {
  check_4d(dy, op, "grad_output");
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.K && dy.size(2) == s.P && dy.size(3) == s.Q, "fastconv.", op,
              ": expected grad_output of size [", s.N, ", ", s.K, ", ", s.P, ", ", s.Q, "], got ", dy.sizes());
}

// fprop: input [N, C, H, W], weight [K, C/groups, R, S], optional bias [K], one device and dtype.
inline Conv2dShape prepare_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const char* op) {
  check_4d(input, op, "input");
  check_4d(weight, op, "weight");
  check_same_device(op, {{"input", &input}, {"weight", &weight}, {"bias", opt_ptr(bias)}});
  check_same_dtype(input, "Input", weight, "weight", op);
  if (has(bias)) check_same_dtype(input, "Input", *bias, "bias", op);
  Conv2dShape s = conv_shape_from_sizes(input.sizes(), weight.sizes(), stride, padding, dilation, groups, op);
  if (has(bias)) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.K, "fastconv.", op, ": Given weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", s.K, " elements, but got bias of size ", bias->sizes(),
                " instead");
  }
  return s;
}

inline Conv2dShape prepare_conv2d_dgrad(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, int64_t groups, const char* op) {
  check_4d(grad_output, op, "grad_output");
  check_4d(weight, op, "weight");
  check_same_device(op, {{"grad_output", &grad_output}, {"weight", &weight}});
  check_same_dtype(grad_output, "grad_output", weight, "weight", op);
  Conv2dShape s = conv_shape_from_sizes(input_size, weight.sizes(), stride, padding, dilation, groups, op);
  check_conv_grad_output(grad_output, s, op);
  return s;
}

inline Conv2dShape prepare_conv2d_wgrad(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, int64_t groups, const char* op) {
  check_4d(grad_output, op, "grad_output");
  check_4d(input, op, "input");
  check_same_device(op, {{"grad_output", &grad_output}, {"input", &input}});
  check_same_dtype(input, "Input", grad_output, "grad_output", op);
  Conv2dShape s = conv_shape_from_sizes(input.sizes(), weight_size, stride, padding, dilation, groups, op);
  check_conv_grad_output(grad_output, s, op);
  return s;
}

// The forward of an input with no elements (C == 0 or N == 0): a sum over nothing, so every output
// is the bias (or zero). torch returns an oddly shaped empty tensor for C == 0; this is the value
// the convolution defines, the same on every device.
inline void fill_conv_of_empty_input(at::Tensor& y, const std::optional<at::Tensor>& bias) {
  y.zero_();
  if (has(bias)) y.add_(bias->view({1, y.size(1), 1, 1}));
}

// ---- pooling --------------------------------------------------------------------------------------

// torch casts every pooling argument to int (safe_downcast): larger values are refused there, and
// here, so that window arithmetic stays far from int64's range.
inline void check_fits_int(at::IntArrayRef v, const char* op, const char* name) {
  for (int64_t e : v) {
    TORCH_CHECK(e >= INT_MIN && e <= INT_MAX, "fastconv.", op, ": ", name, " value ", e,
                " cannot be converted to type int without overflow");
  }
}

// torch's pooling_output_shape + pool2d_shape_check, in torch's order and with its messages; avg
// pooling passes dilation {1, 1}. Both bounds on the padding apply, as in torch: half the dilated
// kernel and half the kernel itself.
inline Pool2dShape prepare_pool(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                                at::IntArrayRef dil, bool ceil_mode, const char* op) {
  check_pair(k, op, "kernel_size");
  check_pair(stride, op, "stride");
  check_pair(pad, op, "padding");
  check_pair(dil, op, "dilation");
  check_fits_int(k, op, "kernel_size");
  check_fits_int(stride, op, "stride");
  check_fits_int(pad, op, "padding");
  check_fits_int(dil, op, "dilation");
  check_4d(x, op, "input");
  TORCH_CHECK(k[0] > 0 && k[1] > 0, "fastconv.", op, ": kernel size should be greater than zero, but got kH: ",
              k[0], " kW: ", k[1]);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fastconv.", op,
              ": stride should be greater than zero, but got dH: ", stride[0], " dW: ", stride[1]);
  TORCH_CHECK(dil[0] > 0 && dil[1] > 0, "fastconv.", op, ": dilation should be greater than zero, but got dilationH: ",
              dil[0], " dilationW: ", dil[1]);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(pad[i] >= 0, "fastconv.", op, ": pad must be non-negative, but got pad: ", pad[i]);
    TORCH_CHECK(pad[i] <= ((k[i] - 1) * dil[i] + 1) / 2, "fastconv.", op,
                ": pad should be at most half of effective kernel size, but got pad=", pad[i],
                ", kernel_size=", k[i], " and dilation=", dil[i]);
  }
  TORCH_CHECK(x.size(1) != 0 && x.size(2) != 0 && x.size(3) != 0, "fastconv.", op,
              ": Expected 4D (batch mode) tensor with optional 0 dim batch size for input, but got: ", x.sizes());
  TORCH_CHECK(k[1] / 2 >= pad[1] && k[0] / 2 >= pad[0], "fastconv.", op,
              ": pad should be smaller than or equal to half of kernel size, but got padW = ", pad[1],
              ", padH = ", pad[0], ", kW = ", k[1], ", kH = ", k[0]);
  Pool2dShape s;
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.W = x.size(3);
  s.kh = k[0]; s.kw = k[1];
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.dil_h = dil[0]; s.dil_w = dil[1];
  s.P = pool_output_size(s.H, s.kh, s.pad_h, s.stride_h, s.dil_h, ceil_mode);
  s.Q = pool_output_size(s.W, s.kw, s.pad_w, s.stride_w, s.dil_w, ceil_mode);
  TORCH_CHECK(s.P >= 1 && s.Q >= 1, "fastconv.", op, ": Given input size: (", s.C, "x", s.H, "x", s.W,
              "). Calculated output size: (", s.C, "x", s.P, "x", s.Q, "). Output size is too small");
  return s;
}

// A pooling gradient (or the indices) must have the forward output's size.
inline void check_pool_grad_output(const at::Tensor& dy, const Pool2dShape& s, const char* op, const char* name) {
  check_4d(dy, op, name);
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.C && dy.size(2) == s.P && dy.size(3) == s.Q, "fastconv.", op,
              ": expected ", name, " of size [", s.N, ", ", s.C, ", ", s.P, ", ", s.Q, "], got ", dy.sizes());
}

// max_pool2d_backward: grad_output and indices of the forward output's size, one device and dtype.
inline Pool2dShape prepare_max_pool2d_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& indices,
                                               at::IntArrayRef k, at::IntArrayRef stride, at::IntArrayRef pad,
                                               at::IntArrayRef dil, bool ceil_mode, const char* op) {
  check_same_device(op, {{"grad_output", &dy}, {"input", &x}, {"indices", &indices}});
  check_same_dtype(dy, "grad_output", x, "input", op);
  TORCH_CHECK(indices.scalar_type() == at::kLong, "fastconv.", op, ": expected indices of dtype Long, got ",
              indices.scalar_type());
  Pool2dShape s = prepare_pool(x, k, stride, pad, dil, ceil_mode, op);
  check_pool_grad_output(dy, s, op, "grad_output");
  check_pool_grad_output(indices, s, op, "indices");
  return s;
}

inline Pool2dShape prepare_avg_pool2d_backward(const at::Tensor& dy, const at::Tensor& x, at::IntArrayRef k,
                                               at::IntArrayRef stride, at::IntArrayRef pad, bool ceil_mode,
                                               const char* op) {
  check_same_device(op, {{"grad_output", &dy}, {"input", &x}});
  check_same_dtype(dy, "grad_output", x, "input", op);
  const int64_t one[2] = {1, 1};
  Pool2dShape s = prepare_pool(x, k, stride, pad, at::IntArrayRef(one, 2), ceil_mode, op);
  check_pool_grad_output(dy, s, op, "grad_output");
  return s;
}

// The kernels take a divisor <= 0 as "none"; a negative override (torch divides by it) is passed as
// its magnitude and the result negated, which is exact in IEEE arithmetic.
inline int64_t avg_pool_divisor(const std::optional<int64_t>& d, const char* op, bool* negate) {
  *negate = false;
  if (!d.has_value()) return 0;
  TORCH_CHECK(*d != 0, "fastconv.", op, ": divisor must be not zero");
  TORCH_CHECK(*d >= -int64_t{INT_MAX} && *d <= INT_MAX, "fastconv.", op, ": divisor_override value ", *d,
              " cannot be converted to type int without overflow");
  *negate = *d < 0;
  return *negate ? -*d : *d;
}

// Adaptive pooling: output_size >= 0, a 4-D input whose non-batch dims are not empty.
inline Pool2dShape prepare_adaptive_pool(const at::Tensor& x, at::IntArrayRef output_size, const char* op) {
  check_pair(output_size, op, "output_size");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, "fastconv.", op,
              ": elements of output_size must be greater than or equal to 0 but received {", output_size[0], ", ",
              output_size[1], "}");
  check_4d(x, op, "input");
  for (int64_t d = 1; d < 4; ++d) {
    TORCH_CHECK(x.size(d) > 0, "fastconv.", op,
                ": Expected input to have non-zero size for non-batch dimensions, but input has sizes ", x.sizes(),
                " with dimension ", d, " being empty");
  }
  Pool2dShape s;
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.W = x.size(3);
  s.P = output_size[0]; s.Q = output_size[1];
  return s;
}

inline Pool2dShape prepare_adaptive_pool_backward(const at::Tensor& dy, const at::Tensor& x, const char* op) {
  check_4d(dy, op, "grad_output");
  check_same_device(op, {{"grad_output", &dy}, {"input", &x}});
  check_same_dtype(dy, "grad_output", x, "input", op);
  const int64_t out[2] = {dy.size(2), dy.size(3)};
  Pool2dShape s = prepare_adaptive_pool(x, at::IntArrayRef(out, 2), op);
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.C, "fastconv.", op, ": grad_output of size ", dy.sizes(),
              " does not match input of size ", x.sizes());
  return s;
}

// ---- batch norm -----------------------------------------------------------------------------------

// A batch-norm weight or bias: any shape with C elements, as torch accepts ([C], [1, C], ...).
inline void check_bn_affine(const at::Tensor& t, int64_t C, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == C, "fastconv.", op, ": ", name, " should contain ", C, " elements not ", t.numel());
}

// Running or saved statistics: exactly [C] (torch refuses [C, 1] here while it takes a [1, C] weight).
inline void check_bn_stat(const at::Tensor& t, int64_t C, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == C, "fastconv.", op, ": ", name, " should contain ", C, " elements not ", t.numel());
  TORCH_CHECK(t.dim() == 1, "fastconv.", op, ": expected ", name, " of size [", C, "], got ", t.sizes());
}

// A parameter or statistic's dtype: the input's, or float32 with a float16/bfloat16 input (mixed
// precision, as torch allows); anything else is torch's "mixed dtype" error.
inline void check_bn_param_dtype(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  const at::ScalarType st = t.scalar_type(), xt = x.scalar_type();
  const bool low = xt == at::kHalf || xt == at::kBFloat16;
  TORCH_CHECK(st == xt || (low && st == at::kFloat), "fastconv.", op, ": mixed dtype: expected ", name,
              " to have scalar type ", xt, low ? " or Float" : "", ", got ", st);
}

// Running statistics updated from batch statistics `stat`: the same dtype, or float16/bfloat16
// running statistics of float32 batch statistics (a .half() model on CUDA, whose statistics
// accumulate in float). Anything else is torch's "mixed dtype" error.
inline void check_running_stat_dtype(const at::Tensor& running, const at::Tensor& stat, const char* op,
                                     const char* name) {
  const at::ScalarType rt = running.scalar_type(), st = stat.scalar_type();
  TORCH_CHECK(rt == st || (st == at::kFloat && (rt == at::kHalf || rt == at::kBFloat16)), "fastconv.", op,
              ": mixed dtype: expected ", name, " to have scalar type ", st, ", got ", rt);
}

// What every batch-norm op checks of its input and affine parameters; returns C.
inline int64_t prepare_bn(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const char* op) {
  TORCH_CHECK(x.dim() >= 2, "fastconv.", op, ": expected input with at least 2 dimensions (N, C, *), got ",
              x.sizes());
  check_same_device(op, {{"input", &x}, {"weight", opt_ptr(weight)}, {"bias", opt_ptr(bias)}});
  const int64_t C = x.size(1);
  const std::pair<const char*, const std::optional<at::Tensor>*> ps[] = {{"weight", &weight}, {"bias", &bias}};
  for (const auto& p : ps) {
    if (!has(*p.second)) continue;
    check_bn_affine(**p.second, C, op, p.first);
    check_bn_param_dtype(**p.second, x, op, p.first);
  }
  return C;
}

inline void prepare_bn_stats(const at::Tensor& x, int64_t C, const char* op,
                             std::initializer_list<std::pair<const char*, const at::Tensor*>> stats) {
  for (const auto& st : stats) {
    check_same_device(op, {{"input", &x}, st});
    check_bn_stat(*st.second, C, op, st.first);
    check_bn_param_dtype(*st.second, x, op, st.first);
  }
}

}  // namespace fastconv
