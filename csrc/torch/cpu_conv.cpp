// CPU implementations of fastconv::conv2d, conv2d_dgrad and conv2d_wgrad (schemas in ops.cpp).
//
// Host order per op: checks -> shape -> can_implement(algo) -> allocate (output memory format per
// conv_output_format) -> empty early return -> kernels -> status check. Algorithms:
//   "direct"   the loop-nest kernels of csrc/cpu/conv2d_direct.cpp on the tensors' own strides
//              (NCHW, channels_last and sliced views need no copies).
//   "im2col"   per image (at::parallel_for over the batch, one column buffer per chunk) and per
//              group: csrc/cpu/im2col.cpp, then a GEMM with torch's CPU BLAS. dgrad is
//              col = W_g^T @ dY_ng followed by gather-form col2im; wgrad sums dY_ng @ col^T over a
//              fixed partition of the batch, then adds the partial sums in order, so the result does
//              not depend on the thread count.
//   "gemm1x1"  1x1 filters with zero padding: the (strided-subsampled) input itself is the GEMM
//              operand, no column buffer; dgrad writes into the strided positions of a zeroed dx.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/SymIntArrayRef.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "checks.h"
#include "cpu_conv.h"
#include "fastconv/cpu_api.h"

namespace fastconv {
namespace {

enum class ConvAlgo { kDirect, kIm2col, kGemm1x1 };

// The batch is split into at most this many fixed chunks for the im2col wgrad reduction: enough to
// keep every core busy, few enough that the per-chunk partial weight gradients stay small.
constexpr int64_t kWgradMaxChunks = 8;

ConvAlgo parse_algo(c10::string_view name, const char* op) {
  const std::string algo(name.data(), name.size());
  if (algo == "direct") return ConvAlgo::kDirect;
  if (algo == "im2col") return ConvAlgo::kIm2col;
  if (algo == "gemm1x1") return ConvAlgo::kGemm1x1;
  TORCH_CHECK_VALUE(false, "fastconv.", op, ": unknown CPU convolution algorithm '", algo,
                    "' (expected 'direct', 'im2col' or 'gemm1x1')");
}

const char* algo_name(ConvAlgo a) {
  switch (a) {
    case ConvAlgo::kDirect: return "direct";
    case ConvAlgo::kIm2col: return "im2col";
    case ConvAlgo::kGemm1x1: return "gemm1x1";
  }
  return "?";
}

// Empty when algo can implement s, else the reason it cannot.
std::string cannot_implement(ConvAlgo algo, const Conv2dShape& s) {
  if (algo == ConvAlgo::kGemm1x1 && (s.R != 1 || s.S != 1 || s.pad_h != 0 || s.pad_w != 0)) {
    return "it needs a 1x1 kernel and zero padding, got a " + std::to_string(s.R) + "x" + std::to_string(s.S) +
           " kernel with padding (" + std::to_string(s.pad_h) + ", " + std::to_string(s.pad_w) + ")";
  }
  return "";
}

void check_can_implement(ConvAlgo algo, const Conv2dShape& s, const char* op) {
  const std::string why = cannot_implement(algo, s);
  TORCH_CHECK_NOT_IMPLEMENTED(why.empty(), "fastconv.", op, ": algo '", algo_name(algo),
                              "' cannot implement this convolution: ", why);
}

void check_cpu(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name, const char* op) {
  TORCH_CHECK(t.device().is_cpu() && ref.device().is_cpu(), "fastconv.", op,
              " (CPU): expected all tensors to be on the same device, but found ", ref_name, " on ", ref.device(),
              " and ", name, " on ", t.device());
}

void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                      const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastconv.", op, ": ", a_name, " type (", a.scalar_type(),
              ") and ", b_name, " type (", b.scalar_type(), ") should be the same");
}

void check_float_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fastconv.", op,
                   ": CPU kernels support float32 and float64, got ", t.scalar_type());
}

// grad_output must have the size the forward would have produced.
void check_grad_output(const at::Tensor& dy, const Conv2dShape& s, const char* op) {
  TORCH_CHECK(dy.size(0) == s.N && dy.size(1) == s.K && dy.size(2) == s.P && dy.size(3) == s.Q, "fastconv.", op,
              ": expected grad_output of size [", s.N, ", ", s.K, ", ", s.P, ", ", s.Q, "], got ", dy.sizes());
}

// Every (stride_h, stride_w)-th row and column starting at 0: what a 1x1 unpadded filter reads.
at::Tensor subsample(const at::Tensor& t, const Conv2dShape& s) {
  if (s.stride_h == 1 && s.stride_w == 1) return t;
  return t.slice(2, 0, t.size(2), s.stride_h).slice(3, 0, t.size(3), s.stride_w);
}

// ---- im2col + GEMM ----------------------------------------------------------------------------

template <typename T>
void fprop_im2col(const Conv2dShape& s, const at::Tensor& x, const at::Tensor& w, at::Tensor& y) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const at::Tensor w3 = w.contiguous().view({s.groups, Kg, CRS});
  const T* xp = x.const_data_ptr<T>();
  at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
    FASTCONV_BELOW_AUTOGRAD();  // thread-local: worker threads need their own guard
    at::Tensor col = at::empty({CRS, PQ}, x.options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t g = 0; g < s.groups; ++g) {
        check_status(cpu::im2col<T>(s, xp, n, g, col.mutable_data_ptr<T>()), "conv2d", "im2col");
        at::Tensor y_ng = y.select(0, n).narrow(0, g * Kg, Kg).view({Kg, PQ});
        at::mm_out(y_ng, w3.select(0, g), col);
      }
    }
  });
}

template <typename T>
void dgrad_im2col(const Conv2dShape& s, const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const at::Tensor w3 = w.contiguous().view({s.groups, Kg, CRS});
  T* dxp = dx.mutable_data_ptr<T>();
  at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
    FASTCONV_BELOW_AUTOGRAD();  // thread-local: worker threads need their own guard
    at::Tensor col = at::empty({CRS, PQ}, dy.options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t g = 0; g < s.groups; ++g) {
        const at::Tensor dy_ng = dy.select(0, n).narrow(0, g * Kg, Kg).reshape({Kg, PQ});
        at::mm_out(col, w3.select(0, g).t(), dy_ng);
        check_status(cpu::col2im<T>(s, col.const_data_ptr<T>(), n, g, dxp), "conv2d_dgrad", "im2col");
      }
    }
  });
}

template <typename T>
at::Tensor wgrad_im2col(const Conv2dShape& s, const at::Tensor& dy, const at::Tensor& x) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const int64_t chunks = min64(s.N, kWgradMaxChunks);
  at::Tensor partial = at::zeros({chunks, s.groups, Kg, CRS}, x.options());
  const T* xp = x.const_data_ptr<T>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    FASTCONV_BELOW_AUTOGRAD();  // thread-local: worker threads need their own guard
    at::Tensor col = at::empty({CRS, PQ}, x.options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t ch = begin; ch < end; ++ch) {
      // Fixed chunk boundaries: the summation order does not depend on the thread count.
      const int64_t n0 = ch * s.N / chunks, n1 = (ch + 1) * s.N / chunks;
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t g = 0; g < s.groups; ++g) {
          check_status(cpu::im2col<T>(s, xp, n, g, col.mutable_data_ptr<T>()), "conv2d_wgrad", "im2col");
          const at::Tensor dy_ng = dy.select(0, n).narrow(0, g * Kg, Kg).reshape({Kg, PQ});
          partial.select(0, ch).select(0, g).addmm_(dy_ng, col.t());
        }
      }
    }
  });
  at::Tensor sum = partial.select(0, 0).clone();
  for (int64_t ch = 1; ch < chunks; ++ch) sum.add_(partial.select(0, ch));
  return sum.view({s.K, s.Cg(), s.R, s.S});
}

// ---- 1x1 GEMM -----------------------------------------------------------------------------------
// Two operand orders: NHWC tensors multiply as [N·P·Q, C] rows (no copies when channels_last),
// NCHW tensors as [C, P·Q] planes per image.

void fprop_gemm1x1(const Conv2dShape& s, const at::Tensor& x, const at::Tensor& w, at::Tensor& y, bool nhwc) {
  const int64_t G = s.groups, Kg = s.Kg(), Cg = s.Cg(), NPQ = s.N * s.P * s.Q;
  const at::Tensor xs = subsample(x, s);
  const at::Tensor w3 = w.reshape({G, Kg, Cg});
  if (nhwc) {
    const at::Tensor a = xs.permute({0, 2, 3, 1}).reshape({NPQ, G, Cg}).transpose(0, 1);  // [G, NPQ, Cg]
    at::Tensor y3 = y.permute({0, 2, 3, 1}).view({NPQ, G, Kg}).transpose(0, 1);          // [G, NPQ, Kg]
    if (G == 1) {
      at::Tensor y2 = y3.select(0, 0);
      at::mm_out(y2, a.select(0, 0), w3.select(0, 0).t());
    } else {
      y3.copy_(at::bmm(a, w3.transpose(1, 2)));
    }
  } else {
    const at::Tensor b = xs.reshape({s.N, G, Cg, s.P * s.Q});
    y.view({s.N, G, Kg, s.P * s.Q}).copy_(at::matmul(w3, b));
  }
}

void dgrad_gemm1x1(const Conv2dShape& s, const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx, bool nhwc) {
  const int64_t G = s.groups, Kg = s.Kg(), Cg = s.Cg(), NPQ = s.N * s.P * s.Q;
  at::Tensor dxs = subsample(dx, s);
  const at::Tensor w3 = w.reshape({G, Kg, Cg});
  if (nhwc) {
    const at::Tensor a = dy.permute({0, 2, 3, 1}).reshape({NPQ, G, Kg}).transpose(0, 1);  // [G, NPQ, Kg]
    const at::Tensor r = at::bmm(a, w3);                                                  // [G, NPQ, Cg]
    dxs.permute({0, 2, 3, 1}).view({s.N, s.P, s.Q, G, Cg}).copy_(
        r.view({G, s.N, s.P, s.Q, Cg}).permute({1, 2, 3, 0, 4}));
  } else {
    const at::Tensor b = dy.reshape({s.N, G, Kg, s.P * s.Q});
    dxs.copy_(at::matmul(w3.transpose(1, 2), b).view({s.N, s.C, s.P, s.Q}));
  }
}

at::Tensor wgrad_gemm1x1(const Conv2dShape& s, const at::Tensor& dy, const at::Tensor& x, bool nhwc) {
  const int64_t G = s.groups, Kg = s.Kg(), Cg = s.Cg(), PQ = s.P * s.Q, NPQ = s.N * PQ;
  const at::Tensor xs = subsample(x, s);
  at::Tensor a, b;  // [G, Kg, NPQ] and [G, NPQ, Cg]
  if (nhwc) {
    a = dy.permute({0, 2, 3, 1}).reshape({NPQ, G, Kg}).permute({1, 2, 0});
    b = xs.permute({0, 2, 3, 1}).reshape({NPQ, G, Cg}).transpose(0, 1);
  } else {
    a = dy.reshape({s.N, G, Kg, PQ}).permute({1, 2, 0, 3}).reshape({G, Kg, NPQ});
    b = xs.reshape({s.N, G, Cg, PQ}).permute({1, 0, 3, 2}).reshape({G, NPQ, Cg});
  }
  return at::bmm(a, b).view({s.K, Cg, 1, 1});
}

}  // namespace

// ---- ops ----------------------------------------------------------------------------------------

// Also the convolution step of conv2d_fused (cpu_fused.cpp), hence outside the anonymous namespace.
at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view algo_str) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d";
  const ConvAlgo algo = parse_algo(algo_str, op);
  check_4d(input, op, "input");
  check_4d(weight, op, "weight");
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  check_cpu(weight, "weight", input, "input", op);
  check_same_dtype(input, "Input", weight, "weight", op);
  if (has_bias) {
    check_cpu(*bias_opt, "bias", input, "input", op);
    check_same_dtype(input, "Input", *bias_opt, "bias", op);
  }
  check_float_dtype(input, op);
  Conv2dShape s = conv_shape_from_sizes(input.sizes(), weight.sizes(), stride, padding, dilation, groups, op);
  if (has_bias) {
    TORCH_CHECK(bias_opt->dim() == 1 && bias_opt->size(0) == s.K, "fastconv.", op, ": Given weight of size ",
                weight.sizes(), ", expected bias to be 1-dimensional with ", s.K, " elements, but got bias of size ",
                bias_opt->sizes(), " instead");
  }
  check_can_implement(algo, s, op);

  const c10::MemoryFormat fmt = conv_output_format(input, weight);
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  s.x = strides4(input);
  s.w = strides4(weight);
  s.y = strides4(y);

  const at::Tensor bias = has_bias ? bias_opt->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastconv_conv2d_cpu", [&] {
    switch (algo) {
      case ConvAlgo::kDirect:
        check_status(cpu::conv2d_direct_fprop<scalar_t>(s, input.const_data_ptr<scalar_t>(),
                                                        weight.const_data_ptr<scalar_t>(),
                                                        has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
                                                        y.mutable_data_ptr<scalar_t>()),
                     op, algo_name(algo));
        break;
      case ConvAlgo::kIm2col:
        fprop_im2col<scalar_t>(s, input, weight, y);
        break;
      case ConvAlgo::kGemm1x1:
        fprop_gemm1x1(s, input, weight, y, fmt == c10::MemoryFormat::ChannelsLast);
        break;
    }
  });
  // The direct kernel fuses the bias; the GEMM paths add it here.
  if (has_bias && algo != ConvAlgo::kDirect) y.add_(bias.view({1, s.K, 1, 1}));
  return y;
}

namespace {

at::Tensor conv2d_dgrad_cpu(const at::Tensor& grad_output, const at::Tensor& weight, c10::SymIntArrayRef input_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view algo_str) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_dgrad";
  const ConvAlgo algo = parse_algo(algo_str, op);
  check_4d(grad_output, op, "grad_output");
  check_4d(weight, op, "weight");
  const at::IntArrayRef in_size = C10_AS_INTARRAYREF_SLOW(input_size);
  check_cpu(weight, "weight", grad_output, "grad_output", op);
  check_same_dtype(grad_output, "grad_output", weight, "weight", op);
  check_float_dtype(grad_output, op);
  Conv2dShape s = conv_shape_from_sizes(in_size, weight.sizes(), stride, padding, dilation, groups, op);
  check_grad_output(grad_output, s, op);
  check_can_implement(algo, s, op);

  const c10::MemoryFormat fmt = conv_output_format(grad_output, weight);
  const bool strided_1x1 = algo == ConvAlgo::kGemm1x1 && (s.stride_h != 1 || s.stride_w != 1);
  // gemm1x1 with stride > 1 writes only every stride-th position: the rest of dx stays zero.
  at::Tensor dx = strided_1x1 ? at::zeros(in_size, grad_output.options().memory_format(fmt))
                              : at::empty(in_size, grad_output.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  s.x = strides4(dx);
  s.w = strides4(weight);
  s.y = strides4(grad_output);

  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "fastconv_conv2d_dgrad_cpu", [&] {
    switch (algo) {
      case ConvAlgo::kDirect:
        check_status(cpu::conv2d_direct_dgrad<scalar_t>(s, grad_output.const_data_ptr<scalar_t>(),
                                                        weight.const_data_ptr<scalar_t>(),
                                                        dx.mutable_data_ptr<scalar_t>()),
                     op, algo_name(algo));
        break;
      case ConvAlgo::kIm2col:
        dgrad_im2col<scalar_t>(s, grad_output, weight, dx);
        break;
      case ConvAlgo::kGemm1x1:
        dgrad_gemm1x1(s, grad_output, weight, dx, fmt == c10::MemoryFormat::ChannelsLast);
        break;
    }
  });
  return dx;
}

at::Tensor conv2d_wgrad_cpu(const at::Tensor& grad_output, const at::Tensor& input, c10::SymIntArrayRef weight_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view algo_str) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_wgrad";
  const ConvAlgo algo = parse_algo(algo_str, op);
  check_4d(grad_output, op, "grad_output");
  check_4d(input, op, "input");
  const at::IntArrayRef w_size = C10_AS_INTARRAYREF_SLOW(weight_size);
  check_cpu(grad_output, "grad_output", input, "input", op);
  check_same_dtype(input, "Input", grad_output, "grad_output", op);
  check_float_dtype(input, op);
  Conv2dShape s = conv_shape_from_sizes(input.sizes(), w_size, stride, padding, dilation, groups, op);
  check_grad_output(grad_output, s, op);
  check_can_implement(algo, s, op);

  const c10::MemoryFormat fmt = conv_output_format(input, grad_output);
  const at::TensorOptions opts = input.options().memory_format(fmt);
  if (s.N == 0) return at::zeros(w_size, opts);  // an empty batch contributes nothing
  at::Tensor dw = at::empty(w_size, opts);
  if (dw.numel() == 0) return dw;
  s.x = strides4(input);
  s.w = strides4(dw);
  s.y = strides4(grad_output);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastconv_conv2d_wgrad_cpu", [&] {
    switch (algo) {
      case ConvAlgo::kDirect:
        check_status(cpu::conv2d_direct_wgrad<scalar_t>(s, grad_output.const_data_ptr<scalar_t>(),
                                                        input.const_data_ptr<scalar_t>(),
                                                        dw.mutable_data_ptr<scalar_t>()),
                     op, algo_name(algo));
        break;
      case ConvAlgo::kIm2col:
        dw.copy_(wgrad_im2col<scalar_t>(s, grad_output, input));
        break;
      case ConvAlgo::kGemm1x1:
        dw.copy_(wgrad_gemm1x1(s, grad_output, input, fmt == c10::MemoryFormat::ChannelsLast));
        break;
    }
  });
  return dw;
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &fastconv::conv2d_cpu);
  m.impl("conv2d_dgrad", &fastconv::conv2d_dgrad_cpu);
  m.impl("conv2d_wgrad", &fastconv::conv2d_wgrad_cpu);
}
