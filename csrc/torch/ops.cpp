// Every fastconv operator schema, in one table, plus the Python module stub for fastconv._C.
// Implementations live in cpu_*.cpp (TORCH_LIBRARY_IMPL CPU) and cuda_*.cpp (TORCH_LIBRARY_IMPL
// CUDA, compiled only against a CUDA build of torch). Fake kernels and autograd are registered in
// Python (fastconv/_meta.py, fastconv/autograd.py).
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include "checks.h"
#include "conv_query_py.h"
#include "workspace_py.h"

namespace fastconv {
namespace {

// Built with CUDA kernels? Archs they were compiled for?
bool built_with_cuda() {
#ifdef FASTCONV_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_arch_list() {
#ifdef FASTCONV_CUDA_ARCHS
  return FASTCONV_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY(fastconv, m) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  m.set_python_module("fastconv._meta");  // fake kernels live there
#else
  m.impl_abstract_pystub("fastconv._meta");
#endif
  // Convolution: forward and the two backward products. algo is a concrete name ("direct",
  // "im2col", "gemm1x1", ...): "auto" is resolved in Python before the op is called.
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, str algo) -> Tensor");
  m.def("conv2d_dgrad(Tensor grad_output, Tensor weight, SymInt[4] input_size, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, str algo) -> Tensor");
  m.def("conv2d_wgrad(Tensor grad_output, Tensor input, SymInt[4] weight_size, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, str algo) -> Tensor");
  // Pooling (4-D inputs; the Python layer adds/removes the batch dimension of 3-D inputs).
  m.def("max_pool2d(Tensor self, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor self, Tensor indices, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def("avg_pool2d(Tensor self, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
        "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, Tensor self, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor self, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor self) -> Tensor");
  // Batch norm over [N, C, H, W]. batch_norm_train returns (y, save_mean, save_invstd, batch_var)
  // with batch_var the biased variance; running statistics are updated by the separate mutating
  // op so the differentiable ops stay functional. relu fuses a ReLU after the affine transform.
  m.def("batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, float eps, bool relu) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("batch_norm_eval(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, "
        "Tensor running_var, float eps, bool relu) -> Tensor");
  // mean/invstd: saved batch statistics (train) or running_mean, 1/sqrt(running_var + eps) (eval).
  // output is the forward result, needed only when relu. Outputs not asked for by output_mask are
  // returned as empty tensors.
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? output, Tensor? weight, "
        "Tensor mean, Tensor invstd, bool train, bool relu, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_update_running_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, "
        "Tensor save_mean, Tensor batch_var, SymInt count, float factor) -> ()");
  // Convolution with a fused epilogue: y = relu?(conv(x, w) * scale[k] + bias[k] + residual).
  // scale/bias: [K] (a folded batch norm), any floating dtype, applied in the accumulation dtype;
  // residual: [N, K, P, Q] in the input's dtype. Every optional may be None. algo as for conv2d
  // ("implicit_gemm" on CUDA runs the whole epilogue inside the GEMM kernel).
  m.def("conv2d_fused(Tensor input, Tensor weight, Tensor? scale, Tensor? bias, Tensor? residual, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu, str algo) -> Tensor");
  // Training-mode conv -> batch norm (-> ReLU) whose convolution also yields the batch statistics:
  // conv_out = conv2d(input, weight) (no conv bias: it cancels under BN), save_mean / batch_var the
  // per-channel mean and biased variance of conv_out over (N, H, W), save_invstd = 1/sqrt(var + eps),
  // out = relu?((conv_out - mean)·invstd·bn_weight + bn_bias). Statistics in the accumulation dtype
  // (float32 for float16/bfloat16 inputs). Running statistics: batch_norm_update_running_stats_.
  m.def("conv2d_bn_train(Tensor input, Tensor weight, Tensor? bn_weight, Tensor? bn_bias, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, float eps, bool relu, str algo) -> (Tensor out, "
        "Tensor conv_out, Tensor save_mean, Tensor save_invstd, Tensor batch_var)");
}

// fastconv._C is imported for its side effect (the registrations above); it also answers the build
// questions, the algorithm tables' queries (conv_query.h) and holds the workspace limit
// (workspace.h), without pulling pybind11 into the build.
static PyObject* py_built_with_cuda(PyObject*, PyObject*) {
  return PyBool_FromLong(fastconv::built_with_cuda() ? 1 : 0);
}
static PyObject* py_cuda_arch_list(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastconv::cuda_arch_list().c_str());
}
static PyMethodDef fastconv_methods[] = {
    {"built_with_cuda", py_built_with_cuda, METH_NOARGS, "True if the CUDA kernels were compiled."},
    {"cuda_arch_list", py_cuda_arch_list, METH_NOARGS, "The CUDA archs the kernels were compiled for."},
    FASTCONV_CPU_QUERY_METHOD,
#ifdef FASTCONV_WITH_CUDA
    FASTCONV_CUDA_QUERY_METHOD,
#endif
    FASTCONV_WORKSPACE_METHODS,
    {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef fastconv_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fastconv_methods,
                                             nullptr, nullptr, nullptr, nullptr};
extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastconv_module); }
