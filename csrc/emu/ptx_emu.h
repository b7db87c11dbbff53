// ptx_emu.h — the emulated twin of csrc/cuda/ptx.cuh: each PTX instruction implemented from the PTX
// ISA (section numbers of the PTX ISA 8.x/9.x reference):
//   cp.async / commit_group / wait_group / wait_all      §9.7.9.25 (data movement, asynchronous copy)
//   ldmatrix                                             §9.7.14.5.15 (warp-level matrix load)
//   mma.m16n8k16 .f16/.bf16 with .f32 accumulators       §9.7.14.5.8 (fragments for mma.m16n8k16)
//   mma.m16n8k8 .tf32 with .f32 accumulators             §9.7.14.5.7 (fragments for mma.m16n8k8)
// Same signatures as the nvcc versions, plus defaulted source locations for the fault reports.
// What is not modelled: the accumulation order and internal rounding of mma (here: exact products,
// summed in double, rounded once to FP32 per instruction), and cache behaviour (.ca vs .cg).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "runtime.h"

namespace fastconv {
namespace cuda {

inline unsigned int smem_addr(const void* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::fc_emu::shared_address(p, file, line);
}

// ---- cp.async: issued now (destination poisoned), lands at the wait that covers its group ------------

template <int kBytes, bool kL2Only = false>
inline void cp_async(unsigned int dst, const void* src, int src_bytes, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  static_assert(!kL2Only || kBytes == 16, "cp.async.cg copies 16 bytes only");
  ::fc_emu::cp_async(dst, src, kBytes, src_bytes, file, line);
}
inline void cp_async_16(unsigned int dst, const void* src, int src_bytes, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  ::fc_emu::cp_async(dst, src, 16, src_bytes, file, line);
}
inline void cp_async_commit() { ::fc_emu::cp_async_commit(); }
template <int kPending>
inline void cp_async_wait() {
  static_assert(kPending >= 0 && kPending <= 7, "cp.async.wait_group takes 0..7");
  ::fc_emu::cp_async_wait(kPending);
}
inline void cp_async_wait_all() { ::fc_emu::cp_async_wait_all(); }

// ---- ldmatrix ---------------------------------------------------------------------------------------------

namespace emu_detail {

struct LdmatrixIn {
  uint32_t addr;
  uint16_t row[8];  // the 8 b16 elements at addr, read by this lane when it supplies a row address
};

// Thread l receives, from each matrix j, register r[j] = {M_j[l/4][2(l%4)], M_j[l/4][2(l%4)+1]}
// (lower index in the low half); with .trans the matrix is read column-major:
// r[j] = {M_j[2(l%4)][l/4], M_j[2(l%4)+1][l/4]}. Row i of matrix j comes from lane 8j + i's address.
template <int kNum, bool kTrans>
void ldmatrix_op(const ::fc_emu::CollectiveContext&, const void* const* ins, void* const* outs) {
  uint32_t addrs[32];
  for (int l = 0; l < 8 * kNum; ++l) addrs[l] = static_cast<const LdmatrixIn*>(ins[l])->addr;
  ::fc_emu::count_ldmatrix(addrs, kNum);
  for (int l = 0; l < 32; ++l) {
    uint32_t* r = static_cast<uint32_t*>(outs[l]);
    const int g = l / 4, t = l % 4;
    for (int j = 0; j < kNum; ++j) {
      uint16_t lo, hi;
      if (!kTrans) {
        const LdmatrixIn& row = *static_cast<const LdmatrixIn*>(ins[8 * j + g]);
        lo = row.row[2 * t];
        hi = row.row[2 * t + 1];
      } else {
        lo = static_cast<const LdmatrixIn*>(ins[8 * j + 2 * t])->row[g];
        hi = static_cast<const LdmatrixIn*>(ins[8 * j + 2 * t + 1])->row[g];
      }
      r[j] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

}  // namespace emu_detail

template <int kNum, bool kTrans>
inline void ldmatrix(unsigned int (&r)[kNum], unsigned int addr, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
  emu_detail::LdmatrixIn in{};
  in.addr = addr;
  if (::fc_emu::lane_id() < 8u * kNum) {
    // This lane supplies a row address: 16-byte aligned, inside the block's shared memory. The row is
    // read here, by the lane that names it, so the sanitizers attribute the access to that thread.
    if (addr % 16 != 0)
    {
      char hex[16];
      std::snprintf(hex, sizeof(hex), "%#x", addr);
      ::fc_emu::fault(cudaErrorMisalignedAddress, std::string("ldmatrix row address ") + hex +
                                                      " is not 16-byte aligned (" + ::fc_emu::describe_thread() + ")");
    }
    std::memcpy(in.row, ::fc_emu::shared_pointer(addr, 16, "ldmatrix", file, line), 16);
  }
  uint32_t out[4];
  ::fc_emu::collective(0xffffffffu, emu_detail::ldmatrix_op<kNum, kTrans>, "ldmatrix (.sync.aligned: whole warp)",
                       &in, out, file, line);
  for (int j = 0; j < kNum; ++j) r[j] = out[j];
}
inline void ldmatrix_x4(unsigned int (&r)[4], unsigned int addr, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  ldmatrix<4, false>(r, addr, file, line);
}
inline void ldmatrix_x4_trans(unsigned int (&r)[4], unsigned int addr, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  ldmatrix<4, true>(r, addr, file, line);
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} -----------------------------------------------------------

namespace emu_detail {

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};

inline float b16_to_float(uint16_t v, bool bf16) {
  if (bf16) {
    uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw hr;
  hr.x = v;
  return __half2float(__half(hr));
}

// Fragments (groupID g = lane / 4, threadID_in_group t = lane % 4):
//   A (16x16, row): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1], a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9]
//   B (16x8, col):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C, D (16x8):    c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
template <bool kBf16>
void mma_16816_op(const ::fc_emu::CollectiveContext&, const void* const* ins, void* const* outs) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaIn& in = *static_cast<const MmaIn*>(ins[l]);
    const int g = l / 4, t = l % 4;
    auto lo = [](uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); };
    auto hi = [](uint32_t r) { return static_cast<uint16_t>(r >> 16); };
    A[g][2 * t] = b16_to_float(lo(in.a[0]), kBf16);
    A[g][2 * t + 1] = b16_to_float(hi(in.a[0]), kBf16);
    A[g + 8][2 * t] = b16_to_float(lo(in.a[1]), kBf16);
    A[g + 8][2 * t + 1] = b16_to_float(hi(in.a[1]), kBf16);
    A[g][2 * t + 8] = b16_to_float(lo(in.a[2]), kBf16);
    A[g][2 * t + 9] = b16_to_float(hi(in.a[2]), kBf16);
    A[g + 8][2 * t + 8] = b16_to_float(lo(in.a[3]), kBf16);
    A[g + 8][2 * t + 9] = b16_to_float(hi(in.a[3]), kBf16);
    B[2 * t][g] = b16_to_float(lo(in.b[0]), kBf16);
    B[2 * t + 1][g] = b16_to_float(hi(in.b[0]), kBf16);
    B[2 * t + 8][g] = b16_to_float(lo(in.b[1]), kBf16);
    B[2 * t + 9][g] = b16_to_float(hi(in.b[1]), kBf16);
    C[g][2 * t] = in.c[0];
    C[g][2 * t + 1] = in.c[1];
    C[g + 8][2 * t] = in.c[2];
    C[g + 8][2 * t + 1] = in.c[3];
  }
  float D[16][8];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double acc = C[m][n];
      for (int k = 0; k < 16; ++k) acc += double(A[m][k]) * double(B[k][n]);
      D[m][n] = static_cast<float>(acc);
    }
  for (int l = 0; l < 32; ++l) {
    float* d = static_cast<float*>(outs[l]);
    const int g = l / 4, t = l % 4;
    d[0] = D[g][2 * t];
    d[1] = D[g][2 * t + 1];
    d[2] = D[g + 8][2 * t];
    d[3] = D[g + 8][2 * t + 1];
  }
}

template <bool kBf16>
inline void mma_16816_emu(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const char* file,
                          int line) {
  MmaIn in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {d[0], d[1], d[2], d[3]}};
  float out[4];
  ::fc_emu::collective(0xffffffffu, mma_16816_op<kBf16>, "mma.sync.m16n8k16 (.sync.aligned: whole warp)", &in, out,
                       file, line);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace emu_detail

template <typename T>
inline void mma_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                      const char* file = __builtin_FILE(), int line = __builtin_LINE());
template <>
inline void mma_16816<__half>(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const char* file,
                              int line) {
  emu_detail::mma_16816_emu<false>(d, a, b, file, line);
}
template <>
inline void mma_16816<__nv_bfloat16>(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                     const char* file, int line) {
  emu_detail::mma_16816_emu<true>(d, a, b, file, line);
}

// ---- mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 ----------------------------------------------------

namespace emu_detail {

// The TF32 value the tensor core reads from an FP32 bit pattern: sign, exponent and the top 10
// mantissa bits. The ISA gives .tf32 operands as .b32 registers in the FP32 format and leaves the
// low 13 mantissa bits to the hardware; the emulator's reading is that it ignores them (clears
// them: truncation toward zero, which keeps Inf, and keeps a NaN a NaN unless its payload lies
// only in those bits, where it becomes Inf — such NaNs do not come out of FP32 arithmetic).
inline float tf32_operand(uint32_t bits) {
  const uint32_t t = bits & 0xffffe000u;
  float f;
  std::memcpy(&f, &t, 4);
  return f;
}

// Fragments, PTX ISA "Matrix Fragments for mma.m16n8k8", .tf32 (groupID g = lane / 4,
// threadID_in_group t = lane % 4), one element per .b32 register:
//   A (16x8, row): a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]
//   B (8x8, col):  b0 = B[t][g], b1 = B[t+4][g]
//   C, D (16x8):   c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1] (as m16n8k16)
// D = A·B + C: exact products of the TF32 operands summed with c in double, rounded once to FP32.
inline void mma_1688_tf32_op(const ::fc_emu::CollectiveContext&, const void* const* ins, void* const* outs) {
  float A[16][8], B[8][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaIn& in = *static_cast<const MmaIn*>(ins[l]);
    const int g = l / 4, t = l % 4;
    A[g][t] = tf32_operand(in.a[0]);
    A[g + 8][t] = tf32_operand(in.a[1]);
    A[g][t + 4] = tf32_operand(in.a[2]);
    A[g + 8][t + 4] = tf32_operand(in.a[3]);
    B[t][g] = tf32_operand(in.b[0]);
    B[t + 4][g] = tf32_operand(in.b[1]);
    C[g][2 * t] = in.c[0];
    C[g][2 * t + 1] = in.c[1];
    C[g + 8][2 * t] = in.c[2];
    C[g + 8][2 * t + 1] = in.c[3];
  }
  float D[16][8];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double acc = C[m][n];
      for (int k = 0; k < 8; ++k) acc += double(A[m][k]) * double(B[k][n]);
      D[m][n] = static_cast<float>(acc);
    }
  for (int l = 0; l < 32; ++l) {
    float* d = static_cast<float*>(outs[l]);
    const int g = l / 4, t = l % 4;
    d[0] = D[g][2 * t];
    d[1] = D[g][2 * t + 1];
    d[2] = D[g + 8][2 * t];
    d[3] = D[g + 8][2 * t + 1];
  }
}

}  // namespace emu_detail

inline void mma_1688_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu_detail::MmaIn in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {d[0], d[1], d[2], d[3]}};
  float out[4];
  ::fc_emu::collective(0xffffffffu, emu_detail::mma_1688_tf32_op, "mma.sync.m16n8k8 (.sync.aligned: whole warp)", &in,
                       out, file, line);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace cuda
}  // namespace fastconv

// Hopper (sm_90a): asynchronous data movement and barriers, then warpgroup MMA.
#include "ptx_emu_sm90_async.h"
#include "ptx_emu_wgmma.h"
