// The fused convolution epilogue, shared by every CUDA conv path that finishes in registers:
//
//   y = relu?( acc · scale[k] + bias[k] + residual )   computed in AccT<T> from the accumulator and
//                                                      rounded once, on the store to T
//
// scale/bias are per output channel (a folded batch norm), in the accumulation type; the unfused
// conv's own bias (y's type) is read as it is, widened in the add (no conversion pass, no
// workspace); residual has y's layout. Every operand is optional. ReLU keeps NaN (torch.relu does). The CPU reference is
// csrc/cpu/epilogue.cpp (which rounds after every operation, like the unfused torch composition).
#pragma once

#include "common.cuh"

namespace fastconv {
namespace cuda {

// Two consecutive 16-bit elements as one 32-bit register (paired stores of adjacent channels).
template <typename T> struct Pair;
template <> struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_float2(type v) { return __half22float2(v); }
  static __device__ __forceinline__ type from_floats(float a, float b) { return __floats2half2_rn(a, b); }
};
template <> struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(type v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ type from_floats(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

template <typename T>
struct ConvEpilogue {
  using Acc = AccT<T>;
  const Acc* scale = nullptr;   // [K], nullable (= 1)
  const Acc* bias = nullptr;    // [K], nullable (= 0)
  const T* conv_bias = nullptr; // [K] in y's type, nullable (= 0): conv2d's bias=, added after `bias`
  const T* residual = nullptr;  // y's layout, nullable (= 0)
  bool relu = false;

  // The value of output channel k from its accumulator and its residual element (0 when none).
  __device__ __forceinline__ Acc apply(Acc acc, int64_t k, Acc res) const {
    Acc v = acc;
    if (scale != nullptr) v *= scale[k];
    if (bias != nullptr) v += bias[k];
    if (conv_bias != nullptr) v += to_acc<T>(conv_bias[k]);
    if (residual != nullptr) v += res;
    if (relu && v < Acc(0)) v = Acc(0);  // NaN compares false and passes through
    return v;
  }

  // y[off] for channel k.
  __device__ __forceinline__ void store(T* __restrict__ y, int64_t off, int64_t k, Acc acc) const {
    const Acc res = residual != nullptr ? to_acc<T>(residual[off]) : Acc(0);
    y[off] = from_acc<T>(apply(acc, k, res));
  }

  // y[off], y[off + 1] for channels k, k + 1 with one 32-bit load/store; off must be even and y,
  // residual 4-byte aligned (16-bit T only).
  __device__ __forceinline__ void store2(T* __restrict__ y, int64_t off, int64_t k, Acc a0, Acc a1) const {
    using P = Pair<T>;
    float2 res = make_float2(0.f, 0.f);
    if (residual != nullptr) res = P::to_float2(*reinterpret_cast<const typename P::type*>(residual + off));
    *reinterpret_cast<typename P::type*>(y + off) = P::from_floats(apply(a0, k, res.x), apply(a1, k + 1, res.y));
  }
};

}  // namespace cuda
}  // namespace fastconv
