// seams.cuh — the three places where a kernel file's text differs between nvcc and the emulated CUDA
// device (csrc/emu/cuda_emu.h defines the emulated versions; scripts/check_seams.sh fails CI when a
// kernel bypasses them):
//   FC_LAUNCH(grid, block, smem, stream, kernel)(args...)   kernel<<<grid, block, smem, stream>>>(args...)
//   FC_SHARED(type, name, [dims]) / FC_SHARED_ALIGNED(align, type, name, [dims])
//                                                           __shared__ [__align__(align)] type name[dims]
//   FC_DYNAMIC_SHARED(align, type, name)                    extern __shared__ __align__(align) type name[]
// The kernel goes last in FC_LAUNCH so that template arguments may contain commas.
#pragma once

#if !defined(FASTCONV_EMU)
#define FC_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define FC_SHARED(type, name, dims) __shared__ type name dims
#define FC_SHARED_ALIGNED(align, type, name, dims) __shared__ __align__(align) type name dims
#define FC_DYNAMIC_SHARED(align, type, name) extern __shared__ __align__(align) type name[]
#endif
