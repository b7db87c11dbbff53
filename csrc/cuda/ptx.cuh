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
//   mma_1688_tf32(d, a, b)             mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, d += a·b (sm_80+)
//
// Hopper (sm_90 / sm_90a; the asm is emitted only where the architecture has it, elsewhere the
// function traps: a kernel calls these only in code compiled for sm_90a or the emulator):
//   mbarrier_init(bar, count)          mbarrier.init.shared::cta.b64 [bar], count
//   fence_mbarrier_init()              fence.mbarrier_init.release.cluster (inits visible to TMA)
//   mbarrier_arrive(bar)               mbarrier.arrive.shared::cta.b64 _, [bar]
//   mbarrier_arrive_expect_tx(bar, b)  mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], b
//   mbarrier_try_wait_parity(bar, ph)  mbarrier.try_wait.parity.shared::cta.b64 p, [bar], ph -> p
//   mbarrier_wait_parity(bar, ph)      loops on try_wait until the phase with parity ph completed
//   fence_proxy_async_shared()         fence.proxy.async.shared::cta (generic stores -> async proxy)
//   elect_one_sync()                   elect.sync _|p, 0xffffffff: true in exactly one lane
//   setmaxnreg_inc<N>() / _dec<N>()    setmaxnreg.{inc,dec}.sync.aligned.u32 N (warpgroup-wide)
//   tma_load_tile_3d(dst, map, bar, c0, c1, c2)
//                                      cp.async.bulk.tensor.3d.shared::cluster.global.tile
//                                      .mbarrier::complete_tx::bytes [dst], [map, {c0, c1, c2}], [bar]
//   tma_load_im2col_4d(dst, map, bar, c, w, h, n, off_w, off_h)
//                                      cp.async.bulk.tensor.4d.shared::cluster.global.im2col
//                                      .mbarrier::complete_tx::bytes [dst], [map, {c, w, h, n}], [bar],
//                                      {off_w, off_h}
//   tma_prefetch_desc(map)             prefetch.tensormap [map]
//   wgmma_fence()                      wgmma.fence.sync.aligned
//   wgmma_commit_group()               wgmma.commit_group.sync.aligned
//   wgmma_wait_group<N>()              wgmma.wait_group.sync.aligned N
//   wgmma_ss<T, N, kTA, kTB>(d, da, db, acc)
//                                      wgmma.mma_async.sync.aligned.m64nNk{16,16,8}.f32.{f16,bf16,tf32}
//                                      with both operands from shared memory (matrix descriptors
//                                      da, db), D = A·B + (acc ? D : 0); N in {64, 128}; imm-trans-a/b
//                                      = kTA/kTB (false: K-major; true: MN-major, f16/bf16 only)
//   make_smem_desc(addr, lbo, sbo, sw) the 64-bit wgmma shared-memory matrix descriptor
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace fastconv {
namespace cuda {

// ---- wgmma matrix descriptors (plain arithmetic: the same for nvcc and the emulator) ---------------

// The swizzle field of a wgmma shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format",
// bits 62-63). The pattern is the TMA's of the same width, on the absolute shared address: address
// bits [4, 4 + B) ^= bits [7, 7 + B), B = 3 / 2 / 1 for 128B / 64B / 32B (CuTe's Swizzle<B, 4, 3>;
// for 128B: the 16-byte chunk index within a 128-byte row XORed with the row index mod 8).
enum class SmemSwizzle : int { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

// Descriptor bits: 0-13 start address >> 4 (18-bit shared address), 16-29 leading-dimension byte
// offset >> 4, 32-45 stride-dimension byte offset >> 4, 49-51 base offset (0: the tiles this code
// builds start on their swizzle pattern's boundary), 62-63 swizzle.
__host__ __device__ constexpr uint64_t make_smem_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                                      SmemSwizzle swizzle) {
  return (uint64_t((addr & 0x3FFFFu) >> 4)) | (uint64_t((lbo_bytes & 0x3FFFFu) >> 4) << 16) |
         (uint64_t((sbo_bytes & 0x3FFFFu) >> 4) << 32) | (uint64_t(static_cast<int>(swizzle)) << 62);
}

}  // namespace cuda
}  // namespace fastconv

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


// ---- mma.sync m16n8k8 TF32 (sm_80+) --------------------------------------------------------------------------

// d += a · b for one 16x8x8 tile; a, b hold FP32 bit patterns of which the tensor core reads the TF32
// part (sign, exponent, 10 mantissa bits). Fragments as PTX ISA "mma.m16n8k8 .tf32": a0 = A[g][t],
// a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]; b0 = B[t][g], b1 = B[t+4][g]; c as m16n8k16.
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---- mbarrier, elect, setmaxnreg, proxy fences (sm_90) ----------------------------------------------------

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FC_SM90_ASM 1
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FC_SM90A_ASM 1
#endif

__device__ __forceinline__ void mbarrier_init(unsigned int bar, unsigned int count) {
#if defined(FC_SM90_ASM)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
#else
  (void)bar; (void)count; __trap();
#endif
}
__device__ __forceinline__ void fence_mbarrier_init() {
#if defined(FC_SM90_ASM)
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void mbarrier_arrive(unsigned int bar) {
#if defined(FC_SM90_ASM)
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#else
  (void)bar; __trap();
#endif
}
__device__ __forceinline__ void mbarrier_arrive_expect_tx(unsigned int bar, unsigned int bytes) {
#if defined(FC_SM90_ASM)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#else
  (void)bar; (void)bytes; __trap();
#endif
}
__device__ __forceinline__ bool mbarrier_try_wait_parity(unsigned int bar, unsigned int parity) {
#if defined(FC_SM90_ASM)
  unsigned int done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
#else
  (void)bar; (void)parity; __trap(); return false;
#endif
}
__device__ __forceinline__ void mbarrier_wait_parity(unsigned int bar, unsigned int parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(FC_SM90_ASM)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ bool elect_one_sync() {
#if defined(FC_SM90_ASM)
  unsigned int elected;
  asm volatile(
      "{\n.reg .b32 r;\n.reg .pred p;\nelect.sync r|p, 0xffffffff;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(elected));
  return elected != 0;
#else
  __trap(); return false;
#endif
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
#if defined(FC_SM90A_ASM)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
#if defined(FC_SM90A_ASM)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

// ---- TMA: cp.async.bulk.tensor (sm_90) ---------------------------------------------------------------------

// The tensor map lives in kernel parameter space (a __grid_constant__ CUtensorMap): its generic address.
__device__ __forceinline__ void tma_load_tile_3d(unsigned int dst, const CUtensorMap* map, unsigned int bar, int c0,
                                                 int c1, int c2) {
#if defined(FC_SM90_ASM)
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
#else
  (void)dst; (void)map; (void)bar; (void)c0; (void)c1; (void)c2; __trap();
#endif
}
__device__ __forceinline__ void tma_load_im2col_4d(unsigned int dst, const CUtensorMap* map, unsigned int bar, int c,
                                                   int w, int h, int n, uint16_t off_w, uint16_t off_h) {
#if defined(FC_SM90_ASM)
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, "
      "%6}], [%2], {%7, %8};\n" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c), "r"(w), "r"(h), "r"(n), "h"(off_w), "h"(off_h)
      : "memory");
#else
  (void)dst; (void)map; (void)bar; (void)c; (void)w; (void)h; (void)n; (void)off_w; (void)off_h; __trap();
#endif
}
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
#if defined(FC_SM90_ASM)
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
#else
  (void)map;
#endif
}

// ---- wgmma (sm_90a) -------------------------------------------------------------------------------------------

__device__ __forceinline__ void wgmma_fence() {
#if defined(FC_SM90A_ASM)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void wgmma_commit_group() {
#if defined(FC_SM90A_ASM)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(kPending >= 0 && kPending <= 7, "wgmma.wait_group takes 0..7");
#if defined(FC_SM90A_ASM)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#else
  __trap();
#endif
}

// D (64 x N, FP32) = A (64 x K, shared) · B (K x N, shared) + (accumulate ? D : 0), K = 16 (f16, bf16) or 8
// (tf32). Operand majorness (PTX ISA "Shared Memory Matrix Layout"): kTransA = false: A K-major, true: A
// M-major (imm-trans-a = 1); kTransB likewise for B (N-major). The ISA allows the transposed layouts only
// for .f16/.bf16. Accumulator fragment of thread t = 32·w + l of the warpgroup (PTX ISA "Register
// Fragments, wgmma .m64nNk16/.m64nNk8", D):
//   d[4i + 0, 1] = D[16w + l/4][8i + 2(l%4) + {0, 1}],  d[4i + 2, 3] = D[16w + l/4 + 8][same columns].
namespace wgmma_detail {
template <int kTransA, int kTransB>
__device__ __forceinline__ void mma_f16_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(kTransA), "n"(kTransB));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void mma_f16_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(kTransA), "n"(kTransB));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void mma_bf16_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(kTransA), "n"(kTransB));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void mma_bf16_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(kTransA), "n"(kTransB));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

__device__ __forceinline__ void mma_tf32_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

__device__ __forceinline__ void mma_tf32_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

}  // namespace wgmma_detail

template <typename T, int N, bool kTransA = false, bool kTransB = false>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma_ss is instantiated for N = 64 and 128");
  constexpr int ta = kTransA ? 1 : 0, tb = kTransB ? 1 : 0;
  if constexpr (std::is_same<T, __half>::value) {
    if constexpr (N == 64) wgmma_detail::mma_f16_n64<ta, tb>(d, desc_a, desc_b, accumulate);
    else wgmma_detail::mma_f16_n128<ta, tb>(d, desc_a, desc_b, accumulate);
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (N == 64) wgmma_detail::mma_bf16_n64<ta, tb>(d, desc_a, desc_b, accumulate);
    else wgmma_detail::mma_bf16_n128<ta, tb>(d, desc_a, desc_b, accumulate);
  } else {
    static_assert(std::is_same<T, float>::value, "wgmma_ss: f16, bf16 or float (tf32)");
    static_assert(!kTransA && !kTransB, "the PTX ISA allows MN-major (transposed) wgmma operands only for .f16/.bf16");
    if constexpr (N == 64) wgmma_detail::mma_tf32_n64(d, desc_a, desc_b, accumulate);
    else wgmma_detail::mma_tf32_n128(d, desc_a, desc_b, accumulate);
  }
}

#undef FC_SM90_ASM
#undef FC_SM90A_ASM

}  // namespace cuda
}  // namespace fastconv

#endif  // FASTCONV_EMU
