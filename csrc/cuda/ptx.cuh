// ptx.cuh — every inline PTX instruction the kernels use, in one place (`asm` appears nowhere else
// in csrc/cuda; scripts/check_seams.sh fails CI otherwise). Under the emulator (FASTCONV_EMU) the same
// functions come from csrc/emu/ptx_emu.h, which implements each instruction from the PTX ISA.
//
//   smem_addr(p)                       __cvta_generic_to_shared: 32-bit shared-window address
//   cp_async<kBytes, kL2Only>(d, s, n) cp.async.{ca,cg}.shared.global [d], [s], kBytes, n
//                                      (n < kBytes source bytes, the rest zero-filled; .cg: 16 only)
//   cp_async_16(d, s, n)               cp.async.cg ... 16, n
//   cp_async_commit()                  cp.async.commit_group
//   cp_async_wait<N>()                 cp.async.wait_group N
//   cp_async_wait_all()                cp.async.wait_all
//   ldmatrix<kNum, kTrans>(r, a)       ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16
//   ldmatrix_x4(r, a), ldmatrix_x4_trans(r, a)
//   mma_16816<T>(d, a, b)              mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, d += a·b
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if defined(FASTCONV_EMU)
#include "../emu/ptx_emu.h"
#else

namespace fastconv {
namespace cuda {

__device__ __forceinline__ unsigned int smem_addr(const void* p) {
  return static_cast<unsigned int>(__cvta_generic_to_shared(p));
}

// ---- cp.async (sm_80+) --------------------------------------------------------------------------------

template <int kBytes, bool kL2Only = false>
__device__ __forceinline__ void cp_async(unsigned int dst, const void* src, int src_bytes) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  static_assert(!kL2Only || kBytes == 16, "cp.async.cg copies 16 bytes only");
  if constexpr (kL2Only) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(kBytes),
                 "r"(src_bytes));
  }
}
// 16-byte global -> shared copy bypassing L1; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(unsigned int dst, const void* src, int src_bytes) {
  cp_async<16, true>(dst, src, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// ---- ldmatrix (sm_75+) -----------------------------------------------------------------------------------

template <int kNum, bool kTrans>
__device__ __forceinline__ void ldmatrix(unsigned int (&r)[kNum], unsigned int addr) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
  if constexpr (kNum == 1 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
  } else if constexpr (kNum == 1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
  } else if constexpr (kNum == 2 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  } else if constexpr (kNum == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
  } else if constexpr (!kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
}
__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], unsigned int addr) { ldmatrix<4, false>(r, addr); }
// For tiles stored MN-major ([k][m]): each lane gets the same fragment elements as ldmatrix on the
// K-major tile.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned int (&r)[4], unsigned int addr) {
  ldmatrix<4, true>(r, addr);
}

// ---- mma.sync m16n8k16 (sm_80+) -----------------------------------------------------------------------------

// d += a · b for one 16x8x16 tile (row-major A fragment, column-major B fragment, FP32 accumulators).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const unsigned int (&a)[4],
                                                  const unsigned int (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const unsigned int (&a)[4],
                                                         const unsigned int (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace cuda
}  // namespace fastconv

#endif  // FASTCONV_EMU
