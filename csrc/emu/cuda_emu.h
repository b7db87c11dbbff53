// cuda_emu.h — the emulated CUDA device: what a .cu file sees when it is compiled by the host C++
// compiler instead of nvcc. Force-included (g++ -include emu/cuda_emu.h -DFASTCONV_EMU) in front of
// every csrc/cuda/*.cu and csrc/dev/*.cu, so the kernel sources stay the same text for both compilers.
//
// What it provides, and where it is implemented:
//   the toolkit's own host headers    cuda_runtime.h (dim3, uint3, cudaError_t, the runtime API's
//                                     declarations), cuda_fp16.h, cuda_bf16.h — used as they are
//   runtime API (cudaMalloc, ...)     runtime.cpp, on host memory; kernels run at launch, in order
//   threadIdx, blockIdx, ...          macros reading the running fiber's coordinates
//   __syncthreads, __syncwarp,        barriers and warp rendezvous on cooperative fibers (one fiber
//   __shfl_*_sync, __ballot_sync      per CUDA thread, deterministic round-robin), runtime.cpp
//   FC_LAUNCH / FC_SHARED /           the three seams of csrc/cuda/seams.cuh, emulated
//   FC_DYNAMIC_SHARED
//   device math and bit casts         below
//   inline PTX                        csrc/cuda/ptx.cuh includes ptx_emu.h instead of its asm
#pragma once

#ifndef FASTCONV_EMU
#define FASTCONV_EMU 1
#endif

// Execution-space keywords mean nothing to the host compiler. The toolkit's host_defines.h keeps
// definitions made before it.
#define __global__
#define __device__
#define __host__
#define __shared__ FASTCONV_EMU_use_FC_SHARED_instead_of___shared__
#define __constant__ FASTCONV_EMU_no_constant_memory
#define __launch_bounds__(...)
// Kernel parameters are one copy per launch, shared by its threads (as the driver's parameter space).
#define __grid_constant__

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fc_emu {

// ---- the running CUDA thread ------------------------------------------------------------------------

struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
// Points at the coordinates of the fiber that runs now (set by the scheduler at every switch).
const ThreadCoords& coords();

// ---- barriers and warp collectives (runtime.cpp) ----------------------------------------------------

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
// Generic warp shuffle of `bytes` (<= 16) bytes: mode 0 idx, 1 up, 2 down, 3 xor.
void shfl(int mode, unsigned mask, const void* in, void* out, int bytes, int arg, int width, const char* file,
          int line);
unsigned ballot(unsigned mask, int pred, const char* file, int line);
unsigned lane_id();

// Generic warp collective: every lane of `mask` calls it (with the same op); when the last one
// arrives, op runs once with each lane's `in` and `out` pointers (indexed by lane, null outside the
// mask), then all of them continue. Faults on a mask that omits the caller, names an absent or exited
// lane, or disagrees with a lane waiting at another collective. Memory is not synchronised by it.
struct CollectiveContext {
  unsigned mask;
  int warp;
  const char* file;
  int line;
};
using CollectiveOp = void (*)(const CollectiveContext&, const void* const* ins, void* const* outs);
void collective(unsigned mask, CollectiveOp op, const char* what, const void* in, void* out, const char* file,
                int line);

// ---- shared memory (runtime.cpp) --------------------------------------------------------------------

// The block's dynamic shared memory (exactly the launched size, poisoned), or null when 0 bytes.
void* dynamic_shared();
// The block's copy of the static __shared__ variable identified by `tag` (one per declaration and
// template instantiation): allocated and poisoned at its first use in the block.
void* static_shared(const void* tag, size_t bytes, size_t align, const char* name);
// Generic pointer -> 32-bit shared-window address (as __cvta_generic_to_shared); faults if p is not
// inside one of the block's shared allocations.
unsigned shared_address(const void* p, const char* file, int line);

// ---- launches (runtime.cpp) -------------------------------------------------------------------------

struct LaunchSpec {
  dim3 grid, block;
  size_t dyn_smem;
  cudaStream_t stream;
  const void* kernel;  // identity for cudaFuncSetAttribute
  const char* name;    // source text of the kernel expression
  const char* file;
  int line;
  const char* context;  // __PRETTY_FUNCTION__ of the launching function (its template arguments)
};
// Runs body(ctx) once per CUDA thread of every block; returns the launch's error (also recorded for
// cudaGetLastError).
cudaError_t launch(const LaunchSpec& spec, void (*body)(void*), void* ctx);

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  LaunchSpec spec;

  template <typename... A>
  cudaError_t operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    // Kernel parameters are copied once at launch, as the driver does; every thread gets its own copy.
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    return launch(
        spec,
        [](void* c) {
          auto* cx = static_cast<Ctx*>(c);
          std::apply([cx](const auto&... p) { cx->kernel(p...); }, cx->params);
        },
        &ctx);
  }
};

template <typename... P>
Launch<P...> make_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         const char* name, const char* file, int line, const char* context) {
  return Launch<P...>{kernel, LaunchSpec{grid, block, smem, stream, reinterpret_cast<const void*>(kernel), name,
                                         file, line, context}};
}

// Pointers handed out by cudaMalloc: true when [p, p + bytes) lies in one live allocation.
bool is_device_range(const void* p, size_t bytes);

}  // namespace fc_emu

// nvcc's runtime header overloads cudaFuncSetAttribute for kernel pointers; the host header doesn't.
template <typename... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- the seams (csrc/cuda/seams.cuh holds their nvcc definitions) -----------------------------------

#define FC_LAUNCH(grid, block, smem, stream, ...) \
  ::fc_emu::make_launch(__VA_ARGS__, (grid), (block), (smem), (stream), #__VA_ARGS__, __FILE__, __LINE__, \
                        __PRETTY_FUNCTION__)
#define FC_SHARED_ALIGNED(align, type, name, dims)                                                     \
  using fc_emu_shared_t_##name = type dims;                                                            \
  static const char fc_emu_shared_tag_##name = 0;                                                      \
  fc_emu_shared_t_##name& name = *static_cast<fc_emu_shared_t_##name*>(::fc_emu::static_shared(         \
      &fc_emu_shared_tag_##name, sizeof(fc_emu_shared_t_##name),                                      \
      (align) > alignof(fc_emu_shared_t_##name) ? (align) : alignof(fc_emu_shared_t_##name), #name))
#define FC_SHARED(type, name, dims) FC_SHARED_ALIGNED(1, type, name, dims)
#define FC_DYNAMIC_SHARED(align, type, name) type* const name = static_cast<type*>(::fc_emu::dynamic_shared())

// ---- built-in variables -----------------------------------------------------------------------------

#define threadIdx (::fc_emu::coords().thread_idx)
#define blockIdx (::fc_emu::coords().block_idx)
#define blockDim (::fc_emu::coords().block_dim)
#define gridDim (::fc_emu::coords().grid_dim)
#define warpSize 32

// ---- synchronisation and warp intrinsics ------------------------------------------------------------

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fc_emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fc_emu::syncwarp(mask, file, line);
}
// A fence orders one thread's own accesses: the emulator runs each thread's accesses in program order.
inline void __threadfence() {}
inline void __threadfence_block() {}

namespace fc_emu {
template <typename T>
T shfl_t(int mode, unsigned mask, T v, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of a non-register type");
  T out;
  shfl(mode, mask, &v, &out, static_cast<int>(sizeof(T)), arg, width, file, line);
  return out;
}
}  // namespace fc_emu

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return ::fc_emu::shfl_t(0, mask, v, src, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return ::fc_emu::shfl_t(1, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return ::fc_emu::shfl_t(2, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return ::fc_emu::shfl_t(3, mask, v, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return ::fc_emu::ballot(mask, pred, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::fc_emu::ballot(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::fc_emu::ballot(mask, pred, file, line) == mask;
}

inline size_t __cvta_generic_to_shared(const void* p, const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  return ::fc_emu::shared_address(p, file, line);
}

// ---- device math: CUDA's overloads that the host library lacks -----------------------------------

// CUDA's min/max are overloaded for every arithmetic type; mixed arguments take the common type.
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

namespace fc_emu {
template <typename To, typename From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}
}  // namespace fc_emu

inline float __uint_as_float(unsigned v) { return ::fc_emu::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return ::fc_emu::bit_cast<unsigned>(v); }
inline float __int_as_float(int v) { return ::fc_emu::bit_cast<float>(v); }
inline int __float_as_int(float v) { return ::fc_emu::bit_cast<int>(v); }
inline double __longlong_as_double(long long v) { return ::fc_emu::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return ::fc_emu::bit_cast<long long>(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}
template <typename T>
inline T __ldg(const T* p) { return *p; }
// The fast-math intrinsics: the emulator computes them exactly (hardware's are approximate).
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float v) { return 1.0f / v; }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
using std::fma;
using std::isinf;
using std::isnan;
using std::isfinite;
using std::sqrt;
using ::fmaf;
using ::sqrtf;
