// tensor_map.cuh — host-side TMA tensor-map encoders (included by a .cu launcher).
//
//   encode_tensor_map_tiled(...)   as cuTensorMapEncodeTiled
//   encode_tensor_map_im2col(...)  as cuTensorMapEncodeIm2col
// with interleave NONE, L2 promotion NONE and OOB fill NONE (out-of-bounds elements read as zeros).
// `strides_bytes` has rank - 1 entries (dims 1..rank-1; dim 0 is dense), `lower_corner` /
// `upper_corner` rank - 2 entries in the order of the dims ({W, H} for a 4-D {C, W, H, N} tensor).
//
// One validation (below) checks the driver's documented requirements and returns cudaErrorInvalidValue
// on a violation in both builds; then nvcc builds call the driver's encoder (found with
// cudaGetDriverEntryPointByVersion: no -lcuda), mapping a failure to cudaErrorInvalidValue, and the
// emulator (FASTCONV_EMU) packs the fields into its own CUtensorMap format (runtime.cpp).
// Narrower than the driver, in both builds: data types UINT8, UINT16, UINT32, INT32, FLOAT16, BFLOAT16,
// FLOAT32 only; swizzle NONE / 32B / 64B / 128B only (not the 128B_ATOM_* modes); and in im2col mode
// channelsPerPixel·elemsize must be a multiple of 16 bytes, as a tiled box's inner extent must be.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(FASTCONV_EMU)
#include "../emu/runtime.h"
#else
#include <cudaTypedefs.h>
#endif

namespace fastconv {
namespace cuda {

namespace tensor_map_detail {

constexpr int kMaxRank = 5;
constexpr uint64_t kMaxDim = uint64_t(1) << 32;
constexpr uint64_t kStrideLimit = uint64_t(1) << 40;  // strides < 2^40
constexpr uint64_t kStrideMultiple = 16;
constexpr uintptr_t kAddressAlign = 16;
constexpr uint32_t kMaxBox = 256;
constexpr uint32_t kBoxInnerMultiple = 16;  // bytes
constexpr uint32_t kMaxElementStride = 8;
constexpr uint32_t kMaxChannelsPerPixel = 256;
constexpr uint32_t kMaxPixelsPerColumn = 1024;

inline int element_bytes(CUtensorMapDataType t) {
  switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: return 4;
    default: return 0;  // not supported here
  }
}

inline int swizzle_span(CUtensorMapSwizzle s) {
  switch (s) {
    case CU_TENSOR_MAP_SWIZZLE_NONE: return 0;
    case CU_TENSOR_MAP_SWIZZLE_32B: return 32;
    case CU_TENSOR_MAP_SWIZZLE_64B: return 64;
    case CU_TENSOR_MAP_SWIZZLE_128B: return 128;
    default: return -1;  // not supported here
  }
}

// The im2col corner range per rank (cuTensorMapEncodeIm2col): 3: [-32768, 32767], 4: [-128, 127],
// 5: [-16, 15].
inline bool corner_in_range(int rank, int v) {
  const int lo = rank == 3 ? -32768 : (rank == 4 ? -128 : -16);
  return v >= lo && v <= -lo - 1;
}

// The requirements both encoders share, then the mode's own. `box` is null in im2col mode.
inline cudaError_t validate(CUtensorMap* map, CUtensorMapDataType dtype, int rank, const void* base,
                            const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* box,
                            const uint32_t* elem_strides, CUtensorMapSwizzle swizzle, bool im2col,
                            const int* lower, const int* upper, uint32_t channels, uint32_t pixels) {
  const int eb = element_bytes(dtype);
  const int span = swizzle_span(swizzle);
  if (map == nullptr || (reinterpret_cast<uintptr_t>(map) % 64) != 0) return cudaErrorInvalidValue;
  if (eb == 0 || span < 0) return cudaErrorInvalidValue;
  if (im2col ? (rank < 3 || rank > kMaxRank) : (rank < 1 || rank > kMaxRank)) return cudaErrorInvalidValue;
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kAddressAlign != 0) return cudaErrorInvalidValue;
  if (dims == nullptr || elem_strides == nullptr || (rank > 1 && strides_bytes == nullptr)) return cudaErrorInvalidValue;
  for (int i = 0; i < rank; ++i) {
    if (dims[i] == 0 || dims[i] > kMaxDim) return cudaErrorInvalidValue;
    if (elem_strides[i] == 0 || elem_strides[i] > kMaxElementStride) return cudaErrorInvalidValue;
  }
  for (int i = 0; i + 1 < rank; ++i)
    if (strides_bytes[i] % kStrideMultiple != 0 || strides_bytes[i] >= kStrideLimit) return cudaErrorInvalidValue;
  uint64_t inner_bytes = 0;
  if (!im2col) {
    if (box == nullptr) return cudaErrorInvalidValue;
    for (int i = 0; i < rank; ++i)
      if (box[i] == 0 || box[i] > kMaxBox) return cudaErrorInvalidValue;
    inner_bytes = uint64_t(box[0]) * uint64_t(eb);
  } else {
    if (lower == nullptr || upper == nullptr) return cudaErrorInvalidValue;
    for (int s = 0; s < rank - 2; ++s) {
      if (!corner_in_range(rank, lower[s]) || !corner_in_range(rank, upper[s])) return cudaErrorInvalidValue;
      // The bounding box must have non-zero area: lower <= dims - 1 + upper.
      if (int64_t(lower[s]) > int64_t(dims[s + 1]) - 1 + upper[s]) return cudaErrorInvalidValue;
    }
    if (channels == 0 || channels > kMaxChannelsPerPixel) return cudaErrorInvalidValue;
    if (pixels == 0 || pixels > kMaxPixelsPerColumn) return cudaErrorInvalidValue;
    inner_bytes = uint64_t(channels) * uint64_t(eb);
  }
  if (inner_bytes % kBoxInnerMultiple != 0) return cudaErrorInvalidValue;
  if (span > 0 && inner_bytes > uint64_t(span)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

#if !defined(FASTCONV_EMU)
inline void* driver_entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  constexpr unsigned kDriverApiVersion = 12000;  // the _v12000 signatures of cudaTypedefs.h
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, kDriverApiVersion, cudaEnableDefault, &status);
#else
  const cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &status);
#endif
  if (e != cudaSuccess || status != cudaDriverEntryPointSuccess) return nullptr;
  return fn;
}
#else
inline void fill_common(::fc_emu::TensorMapDesc& d, CUtensorMapDataType dtype, int rank, const void* base,
                        const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* elem_strides,
                        CUtensorMapSwizzle swizzle) {
  d.rank = rank;
  d.dtype = static_cast<int>(dtype);
  d.elem_bytes = element_bytes(dtype);
  d.swizzle_bytes = swizzle_span(swizzle);
  d.base = reinterpret_cast<uint64_t>(base);
  for (int i = 0; i < rank; ++i) {
    d.dims[i] = dims[i];
    d.strides[i] = i == 0 ? uint64_t(d.elem_bytes) : strides_bytes[i - 1];
    d.elem_strides[i] = elem_strides[i];
  }
}
#endif

}  // namespace tensor_map_detail

inline cudaError_t encode_tensor_map_tiled(CUtensorMap* map, CUtensorMapDataType dtype, int rank, const void* base,
                                           const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* box,
                                           const uint32_t* elem_strides, CUtensorMapSwizzle swizzle) {
  namespace d = tensor_map_detail;
  const cudaError_t e = d::validate(map, dtype, rank, base, dims, strides_bytes, box, elem_strides, swizzle, false,
                                    nullptr, nullptr, 0, 0);
  if (e != cudaSuccess) return e;
#if defined(FASTCONV_EMU)
  ::fc_emu::TensorMapDesc desc;
  d::fill_common(desc, dtype, rank, base, dims, strides_bytes, elem_strides, swizzle);
  for (int i = 0; i < rank; ++i) desc.box[i] = box[i];
  ::fc_emu::encode_tensor_map(map, desc);
  return cudaSuccess;
#else
  auto fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(d::driver_entry("cuTensorMapEncodeTiled"));
  if (fn == nullptr) return cudaErrorNotSupported;
  const CUresult r = fn(map, dtype, static_cast<cuuint32_t>(rank), const_cast<void*>(base), dims, strides_bytes, box,
                        elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
#endif
}

inline cudaError_t encode_tensor_map_im2col(CUtensorMap* map, CUtensorMapDataType dtype, int rank, const void* base,
                                            const uint64_t* dims, const uint64_t* strides_bytes,
                                            const int* lower_corner, const int* upper_corner,
                                            uint32_t channels_per_pixel, uint32_t pixels_per_column,
                                            const uint32_t* elem_strides, CUtensorMapSwizzle swizzle) {
  namespace d = tensor_map_detail;
  const cudaError_t e = d::validate(map, dtype, rank, base, dims, strides_bytes, nullptr, elem_strides, swizzle, true,
                                    lower_corner, upper_corner, channels_per_pixel, pixels_per_column);
  if (e != cudaSuccess) return e;
#if defined(FASTCONV_EMU)
  ::fc_emu::TensorMapDesc desc;
  d::fill_common(desc, dtype, rank, base, dims, strides_bytes, elem_strides, swizzle);
  desc.im2col = true;
  for (int s = 0; s < rank - 2; ++s) {
    desc.lower[s] = lower_corner[s];
    desc.upper[s] = upper_corner[s];
  }
  desc.channels = channels_per_pixel;
  desc.pixels = pixels_per_column;
  ::fc_emu::encode_tensor_map(map, desc);
  return cudaSuccess;
#else
  auto fn = reinterpret_cast<PFN_cuTensorMapEncodeIm2col_v12000>(d::driver_entry("cuTensorMapEncodeIm2col"));
  if (fn == nullptr) return cudaErrorNotSupported;
  const CUresult r = fn(map, dtype, static_cast<cuuint32_t>(rank), const_cast<void*>(base), dims, strides_bytes,
                        lower_corner, upper_corner, channels_per_pixel, pixels_per_column, elem_strides,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
#endif
}

}  // namespace cuda
}  // namespace fastconv
