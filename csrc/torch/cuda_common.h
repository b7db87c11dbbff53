// cuda_common.h — what the CUDA binding's files (cuda_conv.cpp, cuda_pool_bn.cpp, cuda_fused.cpp)
// share beyond the device-independent checks of prepare.h: the CUDA dtype set, the device check,
// the layout policy (every operand dense in one memory format, the launchers' contract), scratch
// memory from torch's caching allocator and the cudaError_t -> exception mapping.
//
// Only light headers: no ATen/cuda/CUDAContext.h (it drags in cuBLAS headers).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <initializer_list>
#include <string>
#include <utility>

#include "checks.h"
#include "cuda_device.h"
#include "prepare.h"
#include "fastconv/cuda_api.h"

namespace fastconv {
namespace cuda_binding {

using c10::MemoryFormat;

// at::Half / at::BFloat16 and __half / __nv_bfloat16 are both a bare 16-bit pattern, so a
// reinterpret_cast of the data pointer is the whole conversion.
static_assert(sizeof(at::Half) == sizeof(__half) && alignof(at::Half) == alignof(__half),
              "at::Half must be layout-compatible with __half to pass its data pointer to the kernels");
static_assert(sizeof(at::BFloat16) == sizeof(__nv_bfloat16) && alignof(at::BFloat16) == alignof(__nv_bfloat16),
              "at::BFloat16 must be layout-compatible with __nv_bfloat16 to pass its data pointer to the kernels");

template <typename T> struct Tag { using type = T; };

template <typename T> T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }
template <typename T> const T* cptr(const at::Tensor& t) { return reinterpret_cast<const T*>(t.const_data_ptr()); }
template <typename A> const A* cptr_or_null(const at::Tensor& t) { return t.defined() ? cptr<A>(t) : nullptr; }

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

// The CUDA dtype set: float32, float16, bfloat16, and float64 where the kernel has it.
// `algo` names the algorithm in the message where the set depends on it.
inline void check_cuda_dtype(const at::Tensor& t, const char* op, bool allow_double, const char* algo = nullptr) {
  const std::string where = algo ? std::string(kCudaDeviceWord) + " algo '" + algo + "'" : kCudaDeviceWord;
  if (allow_double) {
    check_dtype_in(t, {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}, op, where);
  } else {
    check_dtype_in(t, {at::kFloat, at::kHalf, at::kBFloat16}, op, where);
  }
}

// The dispatcher routes here when any argument is on this device, so the first operand may still
// be on the CPU; prepare.h's check_same_device then covers the others.
inline void check_on_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(on_cuda_device(t), "fastconv.", op, ": expected ", name, " to be a ", kCudaDeviceWord,
              " tensor, got ", name, " on ", t.device());
}

inline void check_cuda(cudaError_t err, const char* op, const std::string& algo) {
  if (err == cudaSuccess) return;
  const std::string report = emu_take_fault_report();
  TORCH_CHECK(false, "fastconv.", op, " (algo='", algo, "'): CUDA error ", static_cast<int>(err), ": ",
              cudaGetErrorString(err), report.empty() ? "" : "\n", report);
}

// Dense strides of a tensor of `sizes` in `fmt`. A tensor that is_contiguous(fmt) addresses exactly
// these elements (size-1 dims may carry any stride), and using the canonical values guarantees that
// tensors sharing one stride set in the shape struct (y/dy/indices, x/dx) really agree.
inline Strides4 dense_strides(at::IntArrayRef sizes, MemoryFormat fmt) {
  return fmt == MemoryFormat::ChannelsLast ? channels_last_strides(sizes[1], sizes[2], sizes[3])
                                           : contiguous_strides(sizes[1], sizes[2], sizes[3]);
}

// t made dense in fmt; the assert documents the layout contract the launchers rely on.
inline at::Tensor dense(const at::Tensor& t, MemoryFormat fmt) {
  at::Tensor d = t.contiguous(fmt);
  TORCH_INTERNAL_ASSERT(d.is_contiguous(fmt));
  return d;
}

inline at::Tensor empty_in(at::IntArrayRef sizes, const at::Tensor& like, MemoryFormat fmt) {
  return at::empty(sizes, like.options().memory_format(fmt));
}

// Scratch bytes from torch's caching allocator on like's device: no cudaMalloc, graph-capturable.
inline at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)},
                   like.options().dtype(at::kByte).memory_format(MemoryFormat::Contiguous));
}

inline at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// Parameter or statistic in the accumulation dtype, dense (AMP keeps BN parameters in float with
// half activations; a half model keeps them in half).
inline at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

}  // namespace cuda_binding
}  // namespace fastconv
