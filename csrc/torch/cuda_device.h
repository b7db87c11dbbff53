// cuda_device.h — what the CUDA binding (cuda_ops.cpp, cuda_fused.cpp) needs of "the CUDA device",
// for the two devices it is built for:
//   a real GPU (fastconv._C, torch's CUDA build): c10::cuda's guard and current stream, tensors with
//     is_cuda(), registrations under the CUDA dispatch key;
//   the emulated CUDA device (fastconv._C_emu, FASTCONV_EMU_BINDING): the same binding and kernels on
//     host memory, tensors on torch's PrivateUse1 device (named "fcemu", csrc/emu/torch_device.cpp),
//     registrations under PrivateUse1, the kernels run by csrc/emu at launch (stream 0).
// Everything else in the binding is the same text for both.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <string>

#if defined(FASTCONV_EMU_BINDING)
#include <c10/core/DeviceGuard.h>
#define FASTCONV_CUDA_DISPATCH_KEY PrivateUse1
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define FASTCONV_CUDA_DISPATCH_KEY CUDA
#endif

namespace fastconv {

#if defined(FASTCONV_EMU_BINDING)
using CudaDeviceGuard = c10::DeviceGuard;
inline cudaStream_t current_cuda_stream() { return nullptr; }  // the emulator runs launches in order
inline bool on_cuda_device(const at::Tensor& t) { return t.device().is_privateuseone(); }
constexpr const char* kCudaDeviceWord = "emulated CUDA (fcemu)";
// The emulator's fault report for the last failed launch ("" if none), and a reset so that one
// failing test does not poison the process's device (a real GPU's context would stay poisoned).
std::string emu_take_fault_report();
#else
using CudaDeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_cuda_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
inline bool on_cuda_device(const at::Tensor& t) { return t.is_cuda(); }
constexpr const char* kCudaDeviceWord = "CUDA";
inline std::string emu_take_fault_report() { return ""; }
#endif

}  // namespace fastconv
