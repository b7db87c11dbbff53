// ptx_emu_wgmma.h — the emulated twins of ptx.cuh's wgmma instructions (sm_90a warpgroup MMA), from
// the PTX ISA 8.x §9.7.15 "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"
// (9.x: §9.7.15 as well): wgmma.fence, wgmma.commit_group, wgmma.wait_group and
// wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16} / .m64nNk8.f32.tf32 with both operands in shared
// memory (descriptors), each K-major (imm-trans = 0) or, for f16/bf16 only, MN-major (imm-trans = 1),
// imm-scale-a = imm-scale-b = 1.
//
// What is implemented:
//   * Descriptor (§9.7.15.5.1.2.2 "Matrix Descriptor Format"): start = bits 0-13 << 4, LBO = bits 16-29
//     << 4, SBO = bits 32-45 << 4, base offset = bits 49-51, swizzle = bits 62-63 (0 none, 1 128B,
//     2 64B, 3 32B). The encoding cannot hold a start, LBO or SBO that is not a multiple of 16.
//   * Element (row r, k) of a K-major operand (A: r = m of 64; B: r = n of N), kb = k·sizeof(elem)
//     (§9.7.15.5.1.2 "Shared Memory Matrix Layout" swizzle atoms 8 x {1,2,4,8} 16-byte units, and the
//     LBO/SBO definitions of "Strides"; CUTLASS's canonical K-major GMMA layouts read the same way):
//       no swizzle:  start + (r/8)·SBO + (kb/16)·LBO + (r%8)·16 + kb%16   (8x16-byte core matrices)
//       swizzle W:   a = start + (r/8)·SBO + (r%8)·W + kb, then on the shared address a the 16-byte
//                    chunk bits are XORed with the row bits: 128B a[4:6] ^= a[7:9], 64B a[4:5] ^=
//                    a[7:8], 32B a[4] ^= a[7]; LBO is not used (the ISA: "assumed to be 1").
//   * Element (mn, k) of an MN-major operand (imm-trans = 1; A: mn = m, B: mn = n), mb = mn·sizeof(elem)
//     (same sections: MN-major swizzle atoms are {1,2,4,8} 16-byte units along MN x 8 along K; ISA
//     "Strides", MN-major: LBO = interleave "the first 8 columns to the next 8 columns" (K), swizzled "the
//     first (swizzle-byte-size/16) rows to the next" (MN atoms); SBO = the other direction; CUTLASS's
//     make_gmma_desc<Major::MN> reads the same way):
//       no swizzle:  start + (mb/16)·SBO + (k/8)·LBO + (k%8)·16 + mb%16   (core matrix: 8 K rows x 16 bytes)
//       swizzle W:   a = start + (mb/W)·LBO + (k/8)·SBO + (k%8)·W + mb%W, then the same XOR as below.
//     The XOR is on the absolute address, which is what the hardware does when the base offset is 0
//     and the pattern starts on its 1024/512/256-byte boundary; so a start address off that boundary
//     by a whole row (bits 7.. of the start non-zero) faults, as does any non-zero base offset (not
//     modelled). Moving the start along K inside an atom row (+32 bytes per k16 block) is fine.
//   * Accumulator fragment (§9.7.15.5.1.1 "Register Fragments", Figure "WGMMA .m64nNk16 register
//     fragment layout for accumulator matrix D"; CUTLASS CLayout_64xN agrees): thread t = 32·w + l of the
//     warpgroup holds d[4i + 2h + j] = D[16w + l/4 + 8h][8i + 2(l%4) + j].
//   * Asynchrony: wgmma_ss records the operation; commit_group closes the open ones into a group
//     (none: an empty group); wait_group<N> executes the oldest groups, in issue order, until at most N
//     remain — the latest moment the hardware may read shared memory, so operands are read there. From
//     issue to execution the accumulator array holds NaN (reading it before the wait is undefined, §
//     9.7.15.5.2); the old D is kept aside and the result lands in the array at the execution of the
//     last pending operation on it.
//   * Numerics: f16/bf16 products exact, summed in double with the old D (or 0 when scale-d is false:
//     an old NaN is ignored), rounded once to FP32. tf32: the emulator's reading is that the tensor core
//     ignores the low 13 mantissa bits of each 32-bit operand (truncation), then as above.
//   * Each thread computes only its own fragment, reading A and B itself (so the sanitizers attribute
//     the reads to it); no cross-thread collective, so .sync.aligned convergence is not checked.
// Faults (cudaErrorLaunchFailure unless noted), naming the thread and the issuing file:line:
//   a wgmma_ss without a wgmma_fence since the thread started or since a wait_group that completed
//   operations (the ISA requires wgmma.fence before the first wgmma.mma_async and between register
//   accesses and a wgmma.mma_async using those registers; this check is the stricter reading: after a
//   wait that handed accumulators back, fence again); a block that is not whole warpgroups; an operand
//   outside the block's shared memory (at execution); a non-zero base offset; a swizzled start address
//   off its pattern boundary (cudaErrorMisalignedAddress); a thread that exits with uncommitted or
//   un-waited operations.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime.h"

namespace fastconv {
namespace cuda {
namespace emu_detail {

enum class WgmmaType { kF16, kBf16, kTf32 };

struct WgmmaOp {
  WgmmaType type;
  int n;
  uint64_t desc_a, desc_b;
  bool accumulate;
  bool trans_a, trans_b;  // MN-major operand (imm-trans-a / imm-trans-b = 1)
  float* d;
  const char* file;
  int line;
};

// The old D of an accumulator array while operations on it are pending (the array itself holds NaN).
struct WgmmaAccum {
  float* d;
  int n;
  int pending;
  std::vector<float> value;
};

struct WgmmaState {
  std::vector<WgmmaOp> open;                 // issued, not committed
  std::vector<std::vector<WgmmaOp>> groups;  // committed, oldest first
  std::vector<WgmmaAccum> accums;
  bool fenced = false;
};

inline std::string wgmma_where(const char* file, int line) {
  const char* f = file ? std::strrchr(file, '/') : nullptr;
  return std::string(f ? f + 1 : (file ? file : "?")) + ":" + std::to_string(line);
}

inline void wgmma_exit_hook(void* slot) {
  WgmmaState* st = static_cast<WgmmaState*>(slot);
  size_t pending = 0;
  for (const auto& g : st->groups) pending += g.size();
  const size_t open = st->open.size();
  const WgmmaOp* any = open ? &st->open.front() : nullptr;
  for (const auto& g : st->groups)
    if (any == nullptr && !g.empty()) any = &g.front();
  std::string msg;
  if (open > 0 || pending > 0) {
    msg = ::fc_emu::describe_thread() + " exited with";
    if (open > 0) msg += " " + std::to_string(open) + " uncommitted";
    if (open > 0 && pending > 0) msg += " and";
    if (pending > 0) msg += " " + std::to_string(pending) + " committed but un-waited";
    msg += " wgmma.mma_async (first issued at " + wgmma_where(any->file, any->line) +
           "): wgmma.commit_group and wgmma.wait_group must complete them while the accumulators and the "
           "shared operands are alive";
  }
  delete st;
  if (!msg.empty()) ::fc_emu::fault(cudaErrorLaunchFailure, msg);
}

inline WgmmaState& wgmma_state() {
  void** slot = ::fc_emu::thread_slot(::fc_emu::kSlotWgmma);
  if (*slot == nullptr) {
    ::fc_emu::set_thread_slot_exit_hook(::fc_emu::kSlotWgmma, wgmma_exit_hook);
    *slot = new WgmmaState();
  }
  return *static_cast<WgmmaState*>(*slot);
}

struct WgmmaDesc {
  uint32_t start, lbo, sbo, base_offset, width;  // width: swizzle bytes (0 = none)
};

inline WgmmaDesc wgmma_decode(uint64_t desc) {
  WgmmaDesc d;
  d.start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  d.lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFFu) << 4;
  d.sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  d.base_offset = static_cast<uint32_t>((desc >> 49) & 0x7u);
  static const uint32_t kWidth[4] = {0, 128, 64, 32};
  d.width = kWidth[(desc >> 62) & 0x3u];
  return d;
}

// Shared address of the 16-byte chunk holding K-bytes [kb, kb + 16) of row r (kb a multiple of 16):
// the chunk stays contiguous under every swizzle (the XOR moves whole 16-byte chunks).
inline uint32_t wgmma_chunk_addr(const WgmmaDesc& d, int r, uint32_t kb) {
  if (d.width == 0) return d.start + (r / 8) * d.sbo + (kb / 16) * d.lbo + (r % 8) * 16;
  uint32_t a = d.start + (r / 8) * d.sbo + (r % 8) * d.width + kb;
  const uint32_t row_mask = d.width / 16 - 1;  // 7, 3, 1: the bits [7..] XORed into [4..]
  return a ^ (((a >> 7) & row_mask) << 4);
}

inline double wgmma_elem(const uint8_t* p, WgmmaType type) {
  if (type == WgmmaType::kTf32) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    u &= 0xFFFFE000u;  // TF32: sign, 8 exponent bits, the top 10 mantissa bits
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  uint16_t v;
  std::memcpy(&v, p, 2);
  return b16_to_float(v, type == WgmmaType::kBf16);
}

// Reads row r (K elements: 32 bytes, two chunks) of an operand into out[].
inline void wgmma_read_row(const WgmmaDesc& d, int r, WgmmaType type, const char* what, const WgmmaOp& op,
                           double* out) {
  const int elem = type == WgmmaType::kTf32 ? 4 : 2;
  for (uint32_t kb = 0; kb < 32; kb += 16) {
    const uint8_t* p = ::fc_emu::shared_pointer(wgmma_chunk_addr(d, r, kb), 16, what, op.file, op.line);
    for (int e = 0; e < 16 / elem; ++e) out[kb / elem + e] = wgmma_elem(p + e * elem, type);
  }
}

// Shared address of element (mn, k) of an MN-major operand (16-bit elements; see the header comment).
inline uint32_t wgmma_mn_addr(const WgmmaDesc& d, int mn, int k) {
  const uint32_t mb = static_cast<uint32_t>(mn) * 2u;
  if (d.width == 0) return d.start + (mb / 16) * d.sbo + (k / 8) * d.lbo + (k % 8) * 16 + mb % 16;
  const uint32_t a = d.start + (mb / d.width) * d.lbo + (k / 8) * d.sbo + (k % 8) * d.width + mb % d.width;
  const uint32_t row_mask = d.width / 16 - 1;
  return a ^ (((a >> 7) & row_mask) << 4);
}

// Reads the 16 K elements of index mn of an operand, K-major (a row) or MN-major (a column).
inline void wgmma_read(const WgmmaDesc& d, bool mn_major, int mn, WgmmaType type, const char* what,
                       const WgmmaOp& op, double* out) {
  if (!mn_major) return wgmma_read_row(d, mn, type, what, op, out);
  for (int k = 0; k < 16; ++k)
    out[k] = wgmma_elem(::fc_emu::shared_pointer(wgmma_mn_addr(d, mn, k), 2, what, op.file, op.line), type);
}

inline WgmmaAccum* wgmma_find_accum(WgmmaState& st, const float* d) {
  for (WgmmaAccum& a : st.accums)
    if (a.d == d) return &a;
  return nullptr;
}

// One thread's share of one wgmma: its N/2 accumulators.
inline void wgmma_execute(WgmmaState& st, const WgmmaOp& op) {
  const unsigned linear =
      threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int w = static_cast<int>((linear / 32) % 4), l = static_cast<int>(linear % 32);
  const WgmmaDesc da = wgmma_decode(op.desc_a), db = wgmma_decode(op.desc_b);
  const int kk = op.type == WgmmaType::kTf32 ? 8 : 16;
  double a[2][16], b[16];
  const char* what_a = "wgmma.mma_async (operand A, read at its wait_group)";
  wgmma_read(da, op.trans_a, 16 * w + l / 4, op.type, what_a, op, a[0]);
  wgmma_read(da, op.trans_a, 16 * w + l / 4 + 8, op.type, what_a, op, a[1]);
  WgmmaAccum* acc = wgmma_find_accum(st, op.d);
  for (int i = 0; i < op.n / 8; ++i)
    for (int j = 0; j < 2; ++j) {
      const int col = 8 * i + 2 * (l % 4) + j;
      wgmma_read(db, op.trans_b, col, op.type, "wgmma.mma_async (operand B, read at its wait_group)", op, b);
      for (int h = 0; h < 2; ++h) {
        const int reg = 4 * i + 2 * h + j;
        double s = op.accumulate ? static_cast<double>(acc->value[reg]) : 0.0;
        for (int k = 0; k < kk; ++k) s += a[h][k] * b[k];
        acc->value[reg] = static_cast<float>(s);
      }
    }
  if (--acc->pending == 0) {
    std::memcpy(acc->d, acc->value.data(), sizeof(float) * acc->value.size());
    if (acc != &st.accums.back()) *acc = std::move(st.accums.back());
    st.accums.pop_back();
  }
}

[[noreturn]] inline void wgmma_fault(cudaError_t code, const char* file, int line, const std::string& why) {
  ::fc_emu::fault(code, "wgmma.mma_async at " + wgmma_where(file, line) + " of " + ::fc_emu::describe_thread() +
                            ": " + why);
}

inline void wgmma_check_desc(uint64_t desc, const char* operand, const char* file, int line) {
  const WgmmaDesc d = wgmma_decode(desc);
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%016llx", static_cast<unsigned long long>(desc));
  if (d.base_offset != 0)
    wgmma_fault(cudaErrorLaunchFailure, file, line,
                std::string(operand) + " descriptor " + hex + " has a non-zero matrix base offset (bits 49-51), "
                "which the emulator does not model: start swizzled tiles on their pattern boundary");
  if (d.width != 0 && (d.start % (8 * d.width)) >= 128)
    wgmma_fault(cudaErrorMisalignedAddress, file, line,
                std::string(operand) + " descriptor " + hex + ": start address " + std::to_string(d.start) +
                    " is not on the " + std::to_string(8 * d.width) + "-byte boundary of its " +
                    std::to_string(d.width) + "B swizzle pattern (only a K offset inside the first row may be "
                    "added), so base offset 0 is wrong");
}

inline void wgmma_issue(float* d, int n, WgmmaType type, uint64_t desc_a, uint64_t desc_b, bool accumulate,
                        bool trans_a, bool trans_b, const char* file, int line) {
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  if (threads % 128 != 0)
    wgmma_fault(cudaErrorLaunchFailure, file, line,
                "a block of " + std::to_string(threads) + " threads is not made of whole warpgroups (128 threads)");
  WgmmaState& st = wgmma_state();
  if (!st.fenced)
    wgmma_fault(cudaErrorLaunchFailure, file, line,
                "no wgmma.fence since the thread started or since a wgmma.wait_group handed accumulators back "
                "(the ISA requires wgmma.fence before the first wgmma.mma_async and between register accesses "
                "and a wgmma.mma_async that uses those registers)");
  wgmma_check_desc(desc_a, "A", file, line);
  wgmma_check_desc(desc_b, "B", file, line);
  WgmmaAccum* acc = wgmma_find_accum(st, d);
  if (acc == nullptr) {
    st.accums.push_back(WgmmaAccum{d, n, 0, std::vector<float>(d, d + n / 2)});
    acc = &st.accums.back();
    std::memset(d, 0xff, sizeof(float) * (n / 2));  // NaN until the operation executes
  } else if (acc->n != n) {
    wgmma_fault(cudaErrorLaunchFailure, file, line,
                "accumulator array is in flight with another wgmma of a different N (" + std::to_string(acc->n) +
                    " vs " + std::to_string(n) + ")");
  }
  ++acc->pending;
  st.open.push_back(WgmmaOp{type, n, desc_a, desc_b, accumulate, trans_a, trans_b, d, file, line});
}

template <typename T>
constexpr WgmmaType wgmma_type_of();
template <>
constexpr WgmmaType wgmma_type_of<__half>() { return WgmmaType::kF16; }
template <>
constexpr WgmmaType wgmma_type_of<__nv_bfloat16>() { return WgmmaType::kBf16; }
template <>
constexpr WgmmaType wgmma_type_of<float>() { return WgmmaType::kTf32; }

}  // namespace emu_detail

inline void wgmma_fence(const char* = __builtin_FILE(), int = __builtin_LINE()) {
  emu_detail::wgmma_state().fenced = true;
}

inline void wgmma_commit_group(const char* = __builtin_FILE(), int = __builtin_LINE()) {
  emu_detail::WgmmaState& st = emu_detail::wgmma_state();
  st.groups.push_back(std::move(st.open));
  st.open.clear();
}

template <int kPending>
inline void wgmma_wait_group(const char* = __builtin_FILE(), int = __builtin_LINE()) {
  static_assert(kPending >= 0 && kPending <= 7, "wgmma.wait_group takes 0..7");
  void** slot = ::fc_emu::thread_slot(::fc_emu::kSlotWgmma);
  if (*slot == nullptr) return;  // nothing was ever issued: trivially complete
  emu_detail::WgmmaState& st = *static_cast<emu_detail::WgmmaState*>(*slot);
  while (static_cast<int>(st.groups.size()) > kPending) {
    std::vector<emu_detail::WgmmaOp> g = std::move(st.groups.front());
    st.groups.erase(st.groups.begin());
    for (const emu_detail::WgmmaOp& op : g) emu_detail::wgmma_execute(st, op);
    if (!g.empty()) st.fenced = false;  // accumulators handed back: the next wgmma needs a fence
  }
}

// D (64 x N, FP32) = A (64 x K) · B (K x N) + (accumulate ? D : 0), A M-major if kTransA, B N-major if
// kTransB; see the header comment.
template <typename T, int N, bool kTransA = false, bool kTransB = false>
inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(N == 64 || N == 128, "wgmma_ss is instantiated for N = 64 and 128");
  static_assert(!std::is_same<T, float>::value || (!kTransA && !kTransB),
                "the PTX ISA allows MN-major (transposed) wgmma operands only for .f16/.bf16");
  emu_detail::wgmma_issue(d, N, emu_detail::wgmma_type_of<T>(), desc_a, desc_b, accumulate, kTransA, kTransB, file,
                          line);
}

}  // namespace cuda
}  // namespace fastconv
