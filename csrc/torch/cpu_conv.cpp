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

#include <algorithm>
#include <climits>
#include <optional>
#include <string>

#include "checks.h"
#include "conv_query.h"
#include "cpu_conv.h"
#include "prepare.h"
#include "workspace.h"
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

void check_on_cpu(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), "fastconv.", op, " (CPU): expected CPU tensors, got one on ", t.device());
}

void check_cpu_dtype(const at::Tensor& t, const char* op) { check_dtype_in(t, {at::kFloat, at::kDouble}, op, "CPU"); }

// Every (stride_h, stride_w)-th row and column starting at 0: what a 1x1 unpadded filter reads.
// A step beyond the extent takes only the first row either way; clamping it keeps the view's stride
// (step · stride) inside int64 for the huge strides torch accepts.
at::Tensor subsample(const at::Tensor& t, const Conv2dShape& s) {
  if (s.stride_h == 1 && s.stride_w == 1) return t;
  const int64_t sh = std::min(s.stride_h, std::max<int64_t>(t.size(2), 1));
  const int64_t sw = std::min(s.stride_w, std::max<int64_t>(t.size(3), 1));
  return t.slice(2, 0, t.size(2), sh).slice(3, 0, t.size(3), sw);
}

// ---- im2col + GEMM ----------------------------------------------------------------------------

// Scratch memory of im2col, sized to the workspace limit (workspace.h). Every at::parallel_for task
// allocates one [C/groups·R·S, P·Q] column buffer; wgrad also keeps one [K, C/groups·R·S] partial
// sum per fixed batch chunk. The limit caps the number of tasks (and of wgrad chunks, which is what
// makes wgrad's summation order depend on the limit, never on the thread count); when even one task
// does not fit, the algorithm refuses.
struct Im2colPlan {
  int64_t tasks = 0;  // fprop/dgrad: concurrent tasks over the batch; wgrad: batch chunks
  int64_t grain = 1;  // at::parallel_for grain over the batch (fprop/dgrad)
  int64_t bytes = 0;  // scratch at that plan (at one task when it does not fit)
  std::string why_not;
};

int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// dir: 0 fprop, 1 dgrad, 2 wgrad.
Im2colPlan plan_im2col(const Conv2dShape& s, int dir, int64_t elem, size_t limit_bytes) {
  Im2colPlan p;
  const int64_t limit = static_cast<int64_t>(std::min<size_t>(limit_bytes, static_cast<size_t>(INT64_MAX)));
  const int64_t crs = s.Cg() * s.R * s.S;
  const int64_t col = crs * s.P * s.Q * elem;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (dir == 2) {
    const int64_t partial = s.K * crs * elem;
    const int64_t want = std::max<int64_t>(1, min64(s.N, kWgradMaxChunks));
    const int64_t fit = (col + partial) > 0 ? limit / (col + partial) : want;
    p.tasks = std::max<int64_t>(1, min64(want, fit));
    p.bytes = p.tasks * partial + min64(threads, p.tasks) * col;
    if (fit < 1) p.why_not = "one column buffer and one partial weight gradient need " + std::to_string(col + partial);
  } else {
    const int64_t want = std::max<int64_t>(1, min64(threads, s.N));
    const int64_t fit = col > 0 ? limit / col : want;
    p.tasks = std::max<int64_t>(1, min64(want, fit));
    p.grain = std::max<int64_t>(1, ceil_div64(s.N, p.tasks));
    p.bytes = p.tasks * col;
    if (fit < 1) p.why_not = "one column buffer needs " + std::to_string(col);
  }
  if (!p.why_not.empty()) p.why_not += " bytes, over the workspace limit of " + std::to_string(limit) + " bytes";
  return p;
}

Im2colPlan checked_plan_im2col(const Conv2dShape& s, int dir, const at::Tensor& like, const char* op) {
  Im2colPlan p = plan_im2col(s, dir, like.element_size(), workspace_limit_bytes());
  TORCH_CHECK_NOT_IMPLEMENTED(p.why_not.empty(), "fastconv.", op, ": algo 'im2col' cannot run this convolution: ",
                              p.why_not, " (fastconv.backends.workspace_limit_mb)");
  return p;
}


template <typename T>
void fprop_im2col(const Conv2dShape& s, const Im2colPlan& plan, const at::Tensor& x, const at::Tensor& w,
                  at::Tensor& y) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const at::Tensor w3 = w.contiguous().view({s.groups, Kg, CRS});
  const T* xp = x.const_data_ptr<T>();
  at::parallel_for(0, s.N, plan.grain, [&](int64_t begin, int64_t end) {
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
void dgrad_im2col(const Conv2dShape& s, const Im2colPlan& plan, const at::Tensor& dy, const at::Tensor& w,
                  at::Tensor& dx) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const at::Tensor w3 = w.contiguous().view({s.groups, Kg, CRS});
  T* dxp = dx.mutable_data_ptr<T>();
  at::parallel_for(0, s.N, plan.grain, [&](int64_t begin, int64_t end) {
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
at::Tensor wgrad_im2col(const Conv2dShape& s, const Im2colPlan& plan, const at::Tensor& dy, const at::Tensor& x) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, PQ = s.P * s.Q;
  const int64_t chunks = plan.tasks;
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
  Conv2dShape s = prepare_conv2d(input, weight, bias_opt, stride, padding, dilation, groups, op);
  check_on_cpu(input, op);
  check_cpu_dtype(input, op);
  check_can_implement(algo, s, op);
  const bool has_bias = has(bias_opt);

  const c10::MemoryFormat fmt = conv_output_format(input, weight);
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  if (input.numel() == 0) {  // C == 0: a sum over no channels
    fill_conv_of_empty_input(y, bias_opt);
    return y;
  }
  const Im2colPlan plan = algo == ConvAlgo::kIm2col ? checked_plan_im2col(s, 0, input, op) : Im2colPlan{};
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
        fprop_im2col<scalar_t>(s, plan, input, weight, y);
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

// What the CPU algorithms say of a configuration, without tensors (fastconv.algorithms asks this
// instead of mirroring the rules and the im2col workspace). dir: 0 fprop, 1 dgrad, 2 wgrad.
ConvQuery cpu_conv_query(const std::string& algo_str, int dir, const std::array<int64_t, 4>& in,
                         const std::array<int64_t, 4>& wt, const std::array<int64_t, 6>& geom, int64_t groups,
                         int elem_bytes, bool /*channels_last*/, int64_t workspace_limit) {
  if (dir < 0 || dir > 2) return {false, "direction must be 0 (fprop), 1 (dgrad) or 2 (wgrad)", 0};
  if (elem_bytes != 4 && elem_bytes != 8) return {false, "CPU kernels support float32 and float64", 0};
  // Invalid arguments raise (the same error the op would raise); only "cannot implement" is an answer.
  const ConvAlgo algo = parse_algo(algo_str, "conv2d");
  const int64_t st[2] = {geom[0], geom[1]}, pd[2] = {geom[2], geom[3]}, dl[2] = {geom[4], geom[5]};
  const Conv2dShape s = conv_shape_from_sizes(at::IntArrayRef(in.data(), 4), at::IntArrayRef(wt.data(), 4),
                                              at::IntArrayRef(st, 2), at::IntArrayRef(pd, 2), at::IntArrayRef(dl, 2),
                                              groups, "conv2d");
  const std::string why = cannot_implement(algo, s);
  if (!why.empty()) return {false, why, 0};
  if (algo != ConvAlgo::kIm2col || in[0] == 0 || in[1] == 0) return {true, "", 0};  // no input: no kernel runs
  const Im2colPlan p = plan_im2col(s, dir, elem_bytes, static_cast<size_t>(std::max<int64_t>(workspace_limit, 0)));
  return {p.why_not.empty(), p.why_not, p.bytes};
}

namespace {

at::Tensor conv2d_dgrad_cpu(const at::Tensor& grad_output, const at::Tensor& weight, c10::SymIntArrayRef input_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view algo_str) {
  FASTCONV_BELOW_AUTOGRAD();
  constexpr const char* op = "conv2d_dgrad";
  const ConvAlgo algo = parse_algo(algo_str, op);
  const at::IntArrayRef in_size = C10_AS_INTARRAYREF_SLOW(input_size);
  Conv2dShape s = prepare_conv2d_dgrad(grad_output, weight, in_size, stride, padding, dilation, groups, op);
  check_on_cpu(grad_output, op);
  check_cpu_dtype(grad_output, op);
  check_can_implement(algo, s, op);

  const c10::MemoryFormat fmt = conv_output_format(grad_output, weight);
  const bool strided_1x1 = algo == ConvAlgo::kGemm1x1 && (s.stride_h != 1 || s.stride_w != 1);
  // gemm1x1 with stride > 1 writes only every stride-th position: the rest of dx stays zero; so does
  // all of it when no output exists (K == 0 cannot happen, P·Q == 0 cannot either: both are refused).
  at::Tensor dx = strided_1x1 ? at::zeros(in_size, grad_output.options().memory_format(fmt))
                              : at::empty(in_size, grad_output.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  const Im2colPlan plan = algo == ConvAlgo::kIm2col ? checked_plan_im2col(s, 1, grad_output, op) : Im2colPlan{};
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
        dgrad_im2col<scalar_t>(s, plan, grad_output, weight, dx);
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
  const at::IntArrayRef w_size = C10_AS_INTARRAYREF_SLOW(weight_size);
  Conv2dShape s = prepare_conv2d_wgrad(grad_output, input, w_size, stride, padding, dilation, groups, op);
  check_on_cpu(input, op);
  check_cpu_dtype(input, op);
  check_can_implement(algo, s, op);

  const c10::MemoryFormat fmt = conv_output_format(input, grad_output);
  const at::TensorOptions opts = input.options().memory_format(fmt);
  if (input.numel() == 0) return at::zeros(w_size, opts);  // an empty batch contributes nothing
  at::Tensor dw = at::empty(w_size, opts);
  if (dw.numel() == 0) return dw;
  const Im2colPlan plan = algo == ConvAlgo::kIm2col ? checked_plan_im2col(s, 2, input, op) : Im2colPlan{};
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
        dw.copy_(wgrad_im2col<scalar_t>(s, plan, grad_output, input));
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
