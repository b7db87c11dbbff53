// ptx_sm90_wgmma.cu — conformance tests of ptx.cuh's wgmma wrappers (sm_90a warpgroup MMA with both
// operands in shared memory): wgmma_fence, wgmma_ss<T, N>, wgmma_commit_group, wgmma_wait_group<N>.
//
// Expected values come from the PTX ISA's text and CUTLASS's canonical GMMA layouts, NOT from
// csrc/emu/ptx_emu_wgmma.h: the host lays A and B out in shared memory by its own reading of the
// canonical layouts (sw_offset below), the kernel stores that image with ordinary stores, and the host
// predicts every accumulator register from the ISA's fragment table. A plain CUDA source: built by nvcc
// for sm_90a it checks the hardware, built by `make -C csrc emu` the emulated device.
// PTX ISA 8.x sections (numbers move between releases): §9.7.15.5.1.1 "Register Fragments",
// §9.7.15.5.1.2 "Shared Memory Matrix Layout" (swizzle atoms), "Strides" (LBO/SBO), §9.7.15.5.1.2.2
// "Matrix Descriptor Format", §9.7.15.5.2 "wgmma.mma_async", §9.7.15.6 wgmma.fence / commit_group /
// wait_group.
//
//   1. wgmma_ss<{f16, bf16, tf32}, {64, 128}> x swizzle {none (odd LBO/SBO), 32B, 64B, 128B} x 3 data
//      sets, K spread over 2 (none, 32B, 64B) or 4 (128B) chained wgmma in one group, the start address
//      moved along K inside the swizzle atom (+32 bytes per k block); scale-d false over a NaN D and over
//      a finite D, and true; one warpgroup and blocks of two warpgroups with their own operands.
//      MN-major operands (imm-trans-a/b = 1, wgmma_ss<T, N, kTransA, kTransB>): {f16, bf16} x {64, 128} x
//      swizzle {none, 32B, 64B, 128B} x {A M-major + B K-major, A K-major + B N-major, both MN-major} x
//      the 3 data sets, laid out by the test's own reading of CUTLASS's make_gmma_desc<Major::MN>
//      canonical layouts (mn_offset below); 2 (128B: 4) chained wgmma, the start stepping two 8-K-row
//      groups per k16 block; LBO and SBO are not the packed distances (gaps between core matrices or
//      atoms: A gapped along K, B along N), so a device that took one for the other would read elsewhere.
//      Host only: the data sets tell swapped K chunks / rows / columns / registers apart; every MN-major
//      case's D would differ with LBO and SBO swapped, or with imm-trans ignored; the placements do not
//      overlap and agree with a descriptor-relative reading (start + the in-wgmma part of the layout)
//   2. two groups on two accumulators: wait_group 1 completes the older, then wait_group 0
//   3. (emulator only) the operands are read at the wait: smem rewritten between issue and wait
//      changes the result; faults: exit with an un-waited group / an uncommitted wgmma, operand outside
//      shared memory, no wgmma.fence, non-zero base offset, swizzled start off its pattern boundary,
//      a block that is not whole warpgroups
//
// Output: one line per check, then "N passed, M failed"; exit status 0 only if all passed.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../cuda/common.cuh"
#include "../../cuda/ptx.cuh"

#if defined(FASTCONV_EMU)
#include "../runtime.h"
#endif

namespace fc = fastconv::cuda;

#include "conformance.h"

// wgmma.mma_async reads shared memory through the async proxy (§9.7.15.5.2), so the operands' ordinary
// (generic-proxy) stores need fence.proxy.async.shared::cta before the barrier that publishes them.
#define FC_WGMMA_TEST_PROXY_FENCE() fc::fence_proxy_async_shared()

// =========================================================================================================
// The ISA model the expected values are written from
// =========================================================================================================
//
// Element types. f16/bf16: 2 bytes, K = 16 per wgmma; tf32: 4-byte FP32 patterns, K = 8, of which the
// tensor core reads sign, exponent and the top 10 mantissa bits: every tf32 operand here carries
// non-zero junk in its low 13 mantissa bits (half of them >= half an ulp of TF32), and the expected
// value is the truncated one. All values are small integers, every product and sum exact in FP32, so
// D must match bit for bit whatever the order of accumulation.
enum Elem { kF16 = 0, kBf16 = 1, kTf32 = 2 };
static const char* const kElemName[3] = {"f16", "bf16", "tf32"};
static int elem_bytes(Elem e) { return e == kTf32 ? 4 : 2; }
static int k_per_op(Elem e) { return e == kTf32 ? 8 : 16; }  // 32 bytes of K per wgmma either way

static uint32_t elem_bits(Elem e, int v, uint32_t junk) {
  const float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (e == kTf32) return u | (junk & 0x1FFFu);
  if (v == 0) return 0;
  if (e == kBf16) return u >> 16;  // |v| <= 255: exact
  const uint32_t sign = u >> 31;
  const int ex = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  return (sign << 15) | (static_cast<uint32_t>(ex) << 10) | ((u >> 13) & 0x3ff);
}

// Swizzle atom of a K-major operand (§9.7.15.5.1.2, Table "swizzle atom layout", K-major: 8 rows x
// {1, 2, 4, 8} 16-byte units for none / 32B / 64B / 128B) in CuTe's words (CUTLASS
// Layout_K_SW{32,64,128}_Atom): Swizzle<B, 4, 3> o (8 rows x W bytes, row-major), B = log2(W / 16).
// Swizzle<B, M, S>(x) = x ^ ((x & (((1 << B) - 1) << (M + S))) >> S): address bits [7, 7+B) are XORed
// into bits [4, 4+B). Applied to the byte offset from a 1024-aligned base, i.e. to the shared address.
static uint32_t cute_swizzle(uint32_t x, int b) {
  const uint32_t yyy = ((1u << b) - 1u) << (4 + 3);
  return x ^ ((x & yyy) >> 3);
}

// How one warpgroup's A (64 x Ktot) or B (N x Ktot) is stored: K-major (row = m of A or n of B; the
// fields as commented) or MN-major (mn_major: see mn_offset, where LBO and SBO mean other things).
struct Placement {
  int swizzle_bytes;  // 0 (none), 32, 64, 128
  uint32_t lbo;       // none: byte distance between the two 16-byte K halves of a wgmma (next core matrix in K)
  uint32_t sbo;       // byte distance between 8-row groups (next core matrix / atom in M or N)
  uint32_t col;       // swizzled: byte distance between atoms along K (when a row of K spans several atoms)
  bool mn_major = false;
};

// Byte offset of element (row, kbyte) of the tile. No swizzle: core matrices of 8 rows x 16 bytes, rows
// 16 bytes apart, the next core matrix along K at +LBO, along rows at +SBO (ISA "Strides": K-major
// LBO = "the stride from the first column to the second column of the 8x2 tile in the 128-bit element
// type normalized matrix", SBO = from the first 8 rows to the next 8). Swizzled: atoms of 8 rows x W
// bytes, rows W apart, the next atom along rows at +SBO (LBO unused, "assumed to be 1").
static uint32_t sw_offset(const Placement& p, int row, uint32_t kbyte) {
  if (p.swizzle_bytes == 0) return (row / 8) * p.sbo + (kbyte / 16) * p.lbo + (row % 8) * 16 + kbyte % 16;
  const uint32_t w = static_cast<uint32_t>(p.swizzle_bytes);
  const int b = p.swizzle_bytes == 128 ? 3 : (p.swizzle_bytes == 64 ? 2 : 1);
  const uint32_t atom_col = kbyte / w, in_row = kbyte % w;
  return cute_swizzle(atom_col * p.col + (row / 8) * p.sbo + (row % 8) * w + in_row, b);
}

// Where wgmma number j (K bytes [32j, 32j + 32)) starts: none: 2j core matrices along K; swizzled: the
// atom column, plus 32j inside the atom row — CUTLASS's K-iteration moves the descriptor start this way.
static uint32_t op_start(const Placement& p, int j) {
  const uint32_t kb = 32u * j;
  if (p.swizzle_bytes == 0) return (kb / 16) * p.lbo;
  const uint32_t w = static_cast<uint32_t>(p.swizzle_bytes);
  return (kb / w) * p.col + kb % w;
}

// MN-major operands (imm-trans = 1; 16-bit elements only, §9.7.15.5.2: .tf32 takes no transpose). The
// ISA's Table "swizzle atom layout", MN-major: an atom is {8, 4, 2, 1} 16-byte units along MN x 8 along
// K for 128B / 64B / 32B / none — i.e. along MN it is W bytes wide (16 for none) and K is the slow
// direction, 8 K-rows W bytes apart. CUTLASS make_gmma_desc<Major::MN> (cute/atom/mma_traits_sm90_gmma.hpp)
// spells the canonical layouts in elements, T = 8 per 16 bytes, ((MN modes), (K modes)) : (strides):
//   none: Swizzle<0,4,3> o ((T,1,m),(8,k)) : ((1,T,SBO),(1T,LBO))
//   32B:  Swizzle<1,4,3> o ((T,2,m),(8,k)) : ((1,T,LBO),(2T,SBO))
//   64B:  Swizzle<2,4,3> o ((T,4,m),(8,k)) : ((1,T,LBO),(4T,SBO))
//   128B: Swizzle<3,4,3> o ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))
// Read in bytes, for element (mn, k), mn_byte = 2·mn:
//   none: core matrix = 8 K-rows x 16 bytes (8 MN-consecutive elements contiguous, K-rows 16 bytes
//         apart); the next 8 MN at +SBO, the next 8 K at +LBO. The ISA's "Strides" text agrees: MN-major
//         interleave LBO is "the stride from the first 8 columns to the next 8 columns" (columns = K).
//   W:    atom = 8 K-rows x W bytes (W/2 MN-consecutive elements a row, rows W bytes apart); the next
//         atom along MN at +LBO ("the stride from the first (swizzle-byte-size/16) rows to the next
//         (swizzle-byte-size/16) rows", rows = 16-byte MN units), the next 8 K-rows at +SBO; Swizzle<B,4,3>
//         on the shared address, the atoms on 8·W-byte boundaries (so on the offset from the 1024-aligned
//         tile base, as cute_swizzle does).
static uint32_t mn_offset(const Placement& p, int mn, int k) {
  const uint32_t mb = 2u * static_cast<uint32_t>(mn);
  const uint32_t kg = static_cast<uint32_t>(k) / 8, kr = static_cast<uint32_t>(k) % 8;
  if (p.swizzle_bytes == 0) return (mb / 16) * p.sbo + kg * p.lbo + kr * 16 + mb % 16;
  const uint32_t w = static_cast<uint32_t>(p.swizzle_bytes);
  const int b = p.swizzle_bytes == 128 ? 3 : (p.swizzle_bytes == 64 ? 2 : 1);
  return cute_swizzle((mb / w) * p.lbo + kg * p.sbo + kr * w + mb % w, b);
}

// Where wgmma number j (K elements [16j, 16j + 16)) of an MN-major operand starts: two 8-K-row groups
// further, 2·LBO (none) or 2·SBO (swizzled) — the K-mode stride of the layout above, as CUTLASS's
// descriptor iterator moves the start (a whole number of atoms, multiples of 8·W: it commutes with the
// swizzle, so the start stays on its pattern boundary).
static uint32_t mn_op_start(const Placement& p, int j) {
  return 2u * static_cast<uint32_t>(j) * (p.swizzle_bytes == 0 ? p.lbo : p.sbo);
}

// Either majorness: byte offset of element (row, k) (row = m of A or n of B), and wgmma j's start.
static uint32_t elem_offset(const Placement& p, int row, int k, int eb) {
  return p.mn_major ? mn_offset(p, row, k) : sw_offset(p, row, static_cast<uint32_t>(k * eb));
}
static uint32_t start_offset(const Placement& p, int j) { return p.mn_major ? mn_op_start(p, j) : op_start(p, j); }

static int swizzle_code(int bytes) { return bytes == 128 ? 1 : bytes == 64 ? 2 : bytes == 32 ? 3 : 0; }

// Accumulator fragment (§9.7.15.5.1.1, Figure "WGMMA .m64nNk16 register fragment layout for
// accumulator matrix D"; the same for .m64nNk8): thread t = 32·w + l of the warpgroup, register r:
//   row = 16·w + l/4 + 8·((r / 2) % 2),  col = 8·(r / 4) + 2·(l % 4) + r % 2.
static int frag_row(int t, int r) { return 16 * ((t / 32) % 4) + (t % 32) / 4 + 8 * ((r / 2) % 2); }
static int frag_col(int t, int r) { return 8 * (r / 4) + 2 * (t % 4) + r % 2; }

// ---- data ---------------------------------------------------------------------------------------------

// Integer operands of one warpgroup. Data sets as in ptx_conformance.cu: general small integers;
// one-hot A rows (A picks one K column of B per row) x hashed ids in B; hashed ids in A x one-hot B.
// Ids are distinct along K within a row, so a mislaid row, column, K chunk or register shows up.
struct Operands {
  int kt = 0, n = 0;
  std::vector<int> a, b, c;  // a[m·kt + k], b[n·kt + k], c[m·n + col]
};
static const char* const kSetName[3] = {"general integers", "one-hot A x ids B", "ids A x one-hot B"};

static Operands make_operands(int set, int g, int n, int kt) {
  Operands o;
  o.kt = kt;
  o.n = n;
  o.a.resize(64 * kt);
  o.b.resize(n * kt);
  o.c.resize(64 * n);
  for (int m = 0; m < 64; ++m)
    for (int k = 0; k < kt; ++k) {
      int v = ((m * 7 + k * 3 + 5 * g) % 13) - 6;
      if (set == 1) v = k == (m * m + 3 * m + g) % kt ? 1 : 0;
      if (set == 2) v = ((m * kt + k) * 41 + 7 + 31 * g) % 255 - 127;
      o.a[m * kt + k] = v;
    }
  for (int c = 0; c < n; ++c)
    for (int k = 0; k < kt; ++k) {
      int v = ((c * 5 + k * 11 + 3 * g) % 17) - 8;
      if (set == 1) v = ((c * 16 + k) * 37 + 11 + 29 * g) % 255 - 127;
      if (set == 2) v = k == (c * c + 5 * c + 1 + g) % kt ? 1 : 0;
      o.b[c * kt + k] = v;
    }
  for (int m = 0; m < 64; ++m)
    for (int c = 0; c < n; ++c) o.c[m * n + c] = ((m * 128 + c) * 29 + 17 * g) % 1021 - 510;
  return o;
}

static uint32_t junk_of(int row, int k, int which) { return static_cast<uint32_t>((row * 131 + k * 71 + which * 977) % 8191 + 1); }

// One warpgroup's shared-memory region: A at 0, B at b_base (both 1024-aligned), filler elsewhere. The
// filler is a huge value in every type: reading it instead of an operand ruins D.
struct Region {
  Placement pa, pb;
  uint32_t b_base = 0, bytes = 0;
};

static uint32_t round_up(uint32_t x, uint32_t m) { return (x + m - 1) / m * m; }

// K-major placements as before; MN-major ones (ta: A, tb: B) with LBO and SBO both away from the packed
// distances where they matter: A's next 8 K-rows sit a gap further than the MN extent needs (and, for
// the gridded layouts, its MN atoms a gap apart), B's next MN atom sits a gap further than its K extent
// needs. LBO != SBO everywhere, and every stride of a swizzled layout is a multiple of 8·W (each atom on
// its pattern boundary). kt = K elements of the tile, eb = element bytes.
static Region make_region(int swz, int n, bool ta, bool tb, int kt, int eb) {
  Region r;
  const uint32_t kg = static_cast<uint32_t>(kt) / 8;  // 8-K-row groups of an MN-major tile
  if (swz == 0) {
    r.pa = {0, 1152, 144, 0};              // 8 core matrices 144 apart, then the next K column
    r.pb = {0, uint32_t(n / 8) * 160 + 32, 160, 0};
  } else if (swz == 32) {
    r.pa = {32, 16, 512, 256};             // two atoms (256 bytes) interleaved along K, row groups 512 apart
    r.pb = {32, 16, 512, 256};
  } else if (swz == 64) {
    r.pa = {64, 16, 1024, 0};              // a gap of one atom between row groups
    r.pb = {64, 16, 512, 0};
  } else {
    r.pa = {128, 16, 1024, 0};
    r.pb = {128, 16, 1024, 0};
  }
  if (ta) {  // A: 64 M = 128 bytes along MN
    if (swz == 0) r.pa = {0, 8 * 144 + 64, 144, 0, true};      // MN core matrices 144 apart (packed: 128), K after a gap
    if (swz == 32) r.pa = {32, 512, 4 * 512 + 256, 0, true};   // 4 MN atoms 512 apart (packed: 256), K after a gap
    if (swz == 64) r.pa = {64, 1024, 2 * 1024 + 512, 0, true}; // 2 MN atoms 1024 apart (packed: 512), K after a gap
    if (swz == 128) r.pa = {128, 1024, 2048, 0, true};         // 1 MN atom (LBO unused), K groups 2048 apart (packed: 1024)
  }
  if (tb) {  // B: N = 64 or 128 -> 128 or 256 bytes along MN; K groups packed, MN atoms after a gap
    if (swz == 0) r.pb = {0, 176, kg * 176 + 48, 0, true};     // K core matrices 176 apart (packed: 128)
    if (swz == 32) r.pb = {32, kg * 256 + 256, 256, 0, true};
    if (swz == 64) r.pb = {64, kg * 512 + 512, 512, 0, true};
    if (swz == 128) r.pb = {128, kg * 1024 + 1024, 1024, 0, true};
  }
  uint32_t a_end = 0, b_end = 0;
  for (int row = 0; row < 64; ++row)
    for (int k = 0; k < kt; ++k) a_end = std::max(a_end, elem_offset(r.pa, row, k, eb) + eb);
  for (int row = 0; row < n; ++row)
    for (int k = 0; k < kt; ++k) b_end = std::max(b_end, elem_offset(r.pb, row, k, eb) + eb);
  r.b_base = round_up(a_end, 1024);
  r.bytes = round_up(r.b_base + b_end, 1024);
  return r;
}

static void place(std::vector<uint8_t>& img, uint32_t at, Elem e, uint32_t bits) {
  std::memcpy(&img[at], &bits, elem_bytes(e));
}

// Returns false if two elements land on one byte (a placement that overlaps itself tests nothing).
static bool fill_region(std::vector<uint8_t>& img, uint32_t base, const Region& r, Elem e, const Operands& o) {
  std::memset(&img[base], 0x7B, r.bytes);
  const int eb = elem_bytes(e);
  std::vector<uint8_t> used(r.bytes, 0);
  bool ok = true;
  auto mark = [&](uint32_t at) {
    for (int i = 0; i < eb; ++i) {
      ok = ok && at + i < r.bytes && used[at + i] == 0;
      if (at + i < r.bytes) used[at + i] = 1;
    }
  };
  for (int m = 0; m < 64; ++m)
    for (int k = 0; k < o.kt; ++k) {
      const uint32_t at = elem_offset(r.pa, m, k, eb);
      mark(at);
      place(img, base + at, e, elem_bits(e, o.a[m * o.kt + k], junk_of(m, k, 0)));
    }
  for (int c = 0; c < o.n; ++c)
    for (int k = 0; k < o.kt; ++k) {
      const uint32_t at = r.b_base + elem_offset(r.pb, c, k, eb);
      mark(at);
      place(img, base + at, e, elem_bits(e, o.b[c * o.kt + k], junk_of(c, k, 1)));
    }
  return ok;
}

// ---- device side ----------------------------------------------------------------------------------------

constexpr int kMaxOps = 4;
struct WgOp {
  uint32_t a_off, b_off;  // from the warpgroup's region base
  uint32_t a_lbo, a_sbo, b_lbo, b_sbo;
  int swizzle;            // SmemSwizzle code
  int accumulate;
};
struct WgPlan {
  int nops;
  uint32_t region_bytes;
  WgOp op[kMaxOps];
};

__device__ __forceinline__ uint64_t plan_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, int sw) {
  return fc::make_smem_desc(addr, lbo, sbo, static_cast<fc::SmemSwizzle>(sw));
}

// The operand images of all warpgroups go to a 1024-aligned base with ordinary 4-byte stores.
__device__ __forceinline__ uint32_t fill_smem(uint8_t* raw, const uint32_t* image, uint32_t words) {
  const uint32_t addr = fc::smem_addr(raw);
  const uint32_t pad = (1024u - addr % 1024u) % 1024u;
  uint32_t* s = reinterpret_cast<uint32_t*>(raw + pad);
  for (uint32_t i = threadIdx.x; i < words; i += blockDim.x) s[i] = image[i];
  FC_WGMMA_TEST_PROXY_FENCE();
  __syncthreads();
  return addr + pad;
}

// plan.nops chained wgmma into one accumulator, one group, wait_group 0; A M-major if kTransA, B N-major
// if kTransB (imm-trans-a / imm-trans-b).
template <typename T, int N, bool kTransA = false, bool kTransB = false>
__global__ void wgmma_chain_kernel(const WgPlan* plan, const uint32_t* image, const float* c_init, float* out) {
  FC_DYNAMIC_SHARED(1024, uint8_t, raw);
  const uint32_t region = plan->region_bytes;
  const int wgs = blockDim.x / 128;
  const uint32_t base = fill_smem(raw, image, wgs * region / 4) + (threadIdx.x / 128) * region;
  float d[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[i] = c_init[threadIdx.x * (N / 2) + i];
  fc::wgmma_fence();
  const int nops = plan->nops;
  for (int j = 0; j < nops; ++j) {
    const WgOp o = plan->op[j];
    fc::wgmma_ss<T, N, kTransA, kTransB>(d, plan_desc(base + o.a_off, o.a_lbo, o.a_sbo, o.swizzle),
                                         plan_desc(base + o.b_off, o.b_lbo, o.b_sbo, o.swizzle), o.accumulate != 0);
  }
  fc::wgmma_commit_group();
  fc::wgmma_wait_group<0>();
#pragma unroll
  for (int i = 0; i < N / 2; ++i) out[threadIdx.x * (N / 2) + i] = d[i];
}

// op 0 into d0 (group 0), op 1 into d1 (group 1); wait_group 1 must complete group 0 only.
template <typename T, int N>
__global__ void wgmma_two_groups_kernel(const WgPlan* plan, const uint32_t* image, const float* c_init, float* out0,
                                        float* out1, float* early1) {
  FC_DYNAMIC_SHARED(1024, uint8_t, raw);
  const uint32_t region = plan->region_bytes;
  const int wgs = blockDim.x / 128;
  const uint32_t base = fill_smem(raw, image, wgs * region / 4) + (threadIdx.x / 128) * region;
  float d0[N / 2], d1[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d0[i] = d1[i] = c_init[threadIdx.x * (N / 2) + i];
  const WgOp o0 = plan->op[0], o1 = plan->op[1];
  fc::wgmma_fence();
  fc::wgmma_ss<T, N>(d0, plan_desc(base + o0.a_off, o0.a_lbo, o0.a_sbo, o0.swizzle),
                     plan_desc(base + o0.b_off, o0.b_lbo, o0.b_sbo, o0.swizzle), o0.accumulate != 0);
  fc::wgmma_commit_group();
  fc::wgmma_ss<T, N>(d1, plan_desc(base + o1.a_off, o1.a_lbo, o1.a_sbo, o1.swizzle),
                     plan_desc(base + o1.b_off, o1.b_lbo, o1.b_sbo, o1.swizzle), o1.accumulate != 0);
  fc::wgmma_commit_group();
  fc::wgmma_wait_group<1>();
#pragma unroll
  for (int i = 0; i < N / 2; ++i) out0[threadIdx.x * (N / 2) + i] = d0[i];
#if defined(FASTCONV_EMU)
  // Reading d1 here is undefined on the hardware; the emulator holds NaN there until the wait.
#pragma unroll
  for (int i = 0; i < N / 2; ++i) early1[threadIdx.x * (N / 2) + i] = d1[i];
#else
  (void)early1;
#endif
  fc::wgmma_wait_group<0>();
#pragma unroll
  for (int i = 0; i < N / 2; ++i) out1[threadIdx.x * (N / 2) + i] = d1[i];
}

// ---- host driver --------------------------------------------------------------------------------------------

struct Case {
  Elem e;
  int n, swz, set, wgs;
  int first_acc;  // scale-d of the first wgmma (the later ones accumulate)
  bool nan_c;     // D before the first wgmma is NaN (with first_acc = 0: must be ignored)
  bool ta = false, tb = false;  // A M-major, B N-major (f16/bf16 only)
};

struct Built {
  Region r;
  WgPlan plan;
  std::vector<uint32_t> image;
  std::vector<float> c_init;
  std::vector<Operands> ops;  // per warpgroup
  int nops;
  bool layout_ok = true;  // no two elements on one byte
};

static Built build(const Case& cs) {
  Built b;
  b.nops = cs.swz == 128 ? 4 : 2;
  const int kt = b.nops * k_per_op(cs.e);
  b.r = make_region(cs.swz, cs.n, cs.ta, cs.tb, kt, elem_bytes(cs.e));
  std::vector<uint8_t> img(static_cast<size_t>(cs.wgs) * b.r.bytes);
  for (int g = 0; g < cs.wgs; ++g) {
    b.ops.push_back(make_operands(cs.set, g, cs.n, kt));
    b.layout_ok = fill_region(img, g * b.r.bytes, b.r, cs.e, b.ops.back()) && b.layout_ok;
  }
  b.image.resize(img.size() / 4);
  std::memcpy(b.image.data(), img.data(), img.size());
  std::memset(&b.plan, 0, sizeof(b.plan));
  b.plan.nops = b.nops;
  b.plan.region_bytes = b.r.bytes;
  for (int j = 0; j < b.nops; ++j) {
    WgOp& o = b.plan.op[j];
    o.a_off = start_offset(b.r.pa, j);
    o.b_off = b.r.b_base + start_offset(b.r.pb, j);
    o.a_lbo = b.r.pa.lbo;
    o.a_sbo = b.r.pa.sbo;
    o.b_lbo = b.r.pb.lbo;
    o.b_sbo = b.r.pb.sbo;
    o.swizzle = swizzle_code(cs.swz);
    o.accumulate = j == 0 ? cs.first_acc : 1;
  }
  const int regs = cs.n / 2;
  b.c_init.resize(static_cast<size_t>(cs.wgs) * 128 * regs);
  for (int g = 0; g < cs.wgs; ++g)
    for (int t = 0; t < 128; ++t)
      for (int r = 0; r < regs; ++r)
        b.c_init[(g * 128 + t) * regs + r] =
            cs.nan_c ? std::nanf("") : static_cast<float>(b.ops[g].c[frag_row(t, r) * cs.n + frag_col(t, r)]);
  return b;
}

// D of warpgroup g after wgmma ops [j0, j1) (K bytes [32·j0, 32·j1)) into one accumulator.
static long long ref_d(const Built& b, int g, int m, int col, int j0, int j1, Elem e, bool acc_first) {
  const Operands& o = b.ops[g];
  const int kk = k_per_op(e);
  long long s = acc_first ? o.c[m * o.n + col] : 0;
  for (int k = j0 * kk; k < j1 * kk; ++k) s += static_cast<long long>(o.a[m * o.kt + k]) * o.b[col * o.kt + k];
  return s;
}

static std::string case_name(const char* what, const Case& cs) {
  char nm[320];
  const char* major = !cs.ta && !cs.tb ? "" : (cs.ta && cs.tb ? ", A M-major, B N-major" : (cs.ta ? ", A M-major, B K-major" : ", A K-major, B N-major"));
  std::snprintf(nm, sizeof(nm), "%s m64n%dk%d.f32.%s swizzle %s%s, %s, %d wgmma, scale-d %d%s, %d warpgroup%s", what,
                cs.n, k_per_op(cs.e), kElemName[cs.e],
                cs.swz == 0 ? "none" : (cs.swz == 32 ? "32B" : (cs.swz == 64 ? "64B" : "128B")), major,
                kSetName[cs.set], cs.swz == 128 ? 4 : 2, cs.first_acc, cs.nan_c ? " over NaN" : "", cs.wgs,
                cs.wgs > 1 ? "s" : "");
  return nm;
}

static size_t smem_bytes(const Built& b, int wgs) { return static_cast<size_t>(wgs) * b.r.bytes + 1024; }

template <typename T, int N, bool kTransA = false, bool kTransB = false>
static void run_chain(const Case& cs) {
  const std::string name = case_name("wgmma.mma_async", cs);
  const Built b = build(cs);
  if (!b.layout_ok || cs.ta != kTransA || cs.tb != kTransB) {
    report(false, name, "test bug: overlapping placement or majorness not the kernel's");
    return;
  }
  DevBuf<WgPlan> dplan(1);
  DevBuf<uint32_t> dimg(b.image.size());
  DevBuf<float> dc(b.c_init.size()), dout(b.c_init.size());
  std::vector<WgPlan> hplan(1, b.plan);
  if (!dplan.up(hplan) || !dimg.up(b.image) || !dc.up(b.c_init)) {
    report(false, name, "upload failed");
    return;
  }
  const size_t smem = smem_bytes(b, cs.wgs);
  cudaFuncSetAttribute(wgmma_chain_kernel<T, N, kTransA, kTransB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(smem));
  FC_LAUNCH(dim3(1), dim3(128 * cs.wgs), smem, 0, wgmma_chain_kernel<T, N, kTransA, kTransB>)(dplan.p, dimg.p, dc.p,
                                                                                            dout.p);
  const cudaError_t e = launch_result();
  std::vector<float> got;
  if (e != cudaSuccess || !dout.down(got)) {
    report(false, name, std::string("launch/copy failed: ") + cudaGetErrorString(e));
#if defined(FASTCONV_EMU)
    fc_emu::reset_device();  // the fault is sticky: let the later checks run
#endif
    return;
  }
  Mismatches mm;
  for (int g = 0; g < cs.wgs; ++g)
    for (int t = 0; t < 128; ++t)
      for (int r = 0; r < N / 2; ++r) {
        const int m = frag_row(t, r), col = frag_col(t, r);
        const float want = static_cast<float>(ref_d(b, g, m, col, 0, b.nops, cs.e, cs.first_acc != 0));
        const float g_ = got[(g * 128 + t) * (N / 2) + r];
        if (!(g_ == want))
          mm.add("warpgroup %d thread %d d[%d] (D[%d][%d]) = %g, want %g", g, t, r, m, col, g_, want);
      }
  report(mm.count == 0, name, mm.count ? mm.summary() : "");
}

template <typename T, int N>
static void run_two_groups(Elem e) {
  const Case cs{e, N, 128, 0, 2, 1, false};
  const std::string name = std::string("wgmma two groups, wait_group 1 then 0: m64n") + std::to_string(N) + "k" +
                           std::to_string(k_per_op(e)) + ".f32." + kElemName[e] + " swizzle 128B, 2 warpgroups";
  Built b = build(cs);
  b.plan.op[1].accumulate = 0;  // d1 = A1·B1 alone (scale-d false over the finite C)
  DevBuf<WgPlan> dplan(1);
  DevBuf<uint32_t> dimg(b.image.size());
  DevBuf<float> dc(b.c_init.size()), d0(b.c_init.size()), d1(b.c_init.size()), dearly(b.c_init.size());
  std::vector<WgPlan> hplan(1, b.plan);
  if (!dplan.up(hplan) || !dimg.up(b.image) || !dc.up(b.c_init)) {
    report(false, name, "upload failed");
    return;
  }
  const size_t smem = smem_bytes(b, cs.wgs);
  cudaFuncSetAttribute(wgmma_two_groups_kernel<T, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(smem));
  FC_LAUNCH(dim3(1), dim3(128 * cs.wgs), smem, 0, wgmma_two_groups_kernel<T, N>)(dplan.p, dimg.p, dc.p, d0.p, d1.p,
                                                                                   dearly.p);
  const cudaError_t err = launch_result();
  std::vector<float> g0, g1, gearly;
  if (err != cudaSuccess || !d0.down(g0) || !d1.down(g1) || !dearly.down(gearly)) {
    report(false, name, std::string("launch/copy failed: ") + cudaGetErrorString(err));
    return;
  }
  Mismatches mm;
  int early_finite = 0;
  for (int g = 0; g < cs.wgs; ++g)
    for (int t = 0; t < 128; ++t)
      for (int r = 0; r < N / 2; ++r) {
        const int m = frag_row(t, r), col = frag_col(t, r), i = (g * 128 + t) * (N / 2) + r;
        const float w0 = static_cast<float>(ref_d(b, g, m, col, 0, 1, e, true));
        const float w1 = static_cast<float>(ref_d(b, g, m, col, 1, 2, e, false));
        if (!(g0[i] == w0)) mm.add("group 0: warpgroup %d thread %d d0[%d] = %g, want %g", g, t, r, g0[i], w0);
        if (!(g1[i] == w1)) mm.add("group 1: warpgroup %d thread %d d1[%d] = %g, want %g", g, t, r, g1[i], w1);
        early_finite += std::isfinite(gearly[i]) ? 1 : 0;
      }
  report(mm.count == 0, name, mm.count ? mm.summary() : "");
#if defined(FASTCONV_EMU)
  report(early_finite == 0, "emu: " + name + ": the younger group's accumulators read NaN before wait_group 0",
         std::to_string(early_finite) + " registers already finite");
#else
  (void)early_finite;
#endif
}

template <typename T>
static void run_type(Elem e) {
  const int swizzles[4] = {0, 32, 64, 128};
  for (int si = 0; si < 4; ++si) {
    // set 0: one warpgroup, scale-d 1; set 1: two, scale-d 0 over NaN; set 2: two, scale-d 0 over finite D.
    for (int set = 0; set < 3; ++set) {
      const Case c64{e, 64, swizzles[si], set, set == 0 ? 1 : 2, set == 0 ? 1 : 0, set == 1};
      run_chain<T, 64>(c64);
      Case c128 = c64;
      c128.n = 128;
      run_chain<T, 128>(c128);
    }
  }
  run_two_groups<T, 64>(e);
  run_two_groups<T, 128>(e);
}

// MN-major operands, f16/bf16 only: every swizzle x both N x the three majorness pairs x the three data
// sets (set 0: one warpgroup, scale-d 1; set 1: two, scale-d 0 over NaN; set 2: two, scale-d 0 over D).
template <typename T, bool kTransA, bool kTransB>
static void run_mn_layout(Elem e) {
  const int swizzles[4] = {0, 32, 64, 128};
  for (int si = 0; si < 4; ++si)
    for (int set = 0; set < 3; ++set) {
      Case c64{e, 64, swizzles[si], set, set == 0 ? 1 : 2, set == 0 ? 1 : 0, set == 1};
      c64.ta = kTransA;
      c64.tb = kTransB;
      run_chain<T, 64, kTransA, kTransB>(c64);
      Case c128 = c64;
      c128.n = 128;
      run_chain<T, 128, kTransA, kTransB>(c128);
    }
}

template <typename T>
static void run_mn_type(Elem e) {
  run_mn_layout<T, true, true>(e);
  run_mn_layout<T, true, false>(e);
  run_mn_layout<T, false, true>(e);
}

// ---- host only: would the MN-major cases catch a misread descriptor? ------------------------------------
//
// What a device computes for element (idx, kl) (idx = m of A or n of B, kl in [0, 16) the K of one
// wgmma) from the descriptor fields start / LBO / SBO / W alone: the start plus the in-wgmma part of the
// canonical layout (the same layouts as sw_offset and mn_offset, written relative to the start). With the
// true fields it must find every element where the placement put it (checked below: this ties the
// K-stepping of start_offset to the layouts); with LBO and SBO exchanged, or with the MN-major operand
// read as K-major (imm-trans ignored), it tells what such a device would multiply.
static uint32_t desc_relative_offset(uint32_t start, uint32_t lbo, uint32_t sbo, int w, bool mn_major, int idx,
                                     int kl) {
  const int b = w == 128 ? 3 : (w == 64 ? 2 : 1);
  const uint32_t uw = static_cast<uint32_t>(w);
  if (mn_major) {
    const uint32_t mb = 2u * static_cast<uint32_t>(idx), kg = kl / 8u, kr = kl % 8u;
    if (w == 0) return start + (mb / 16) * sbo + kg * lbo + kr * 16 + mb % 16;
    return cute_swizzle(start + (mb / uw) * lbo + kg * sbo + kr * uw + mb % uw, b);
  }
  const uint32_t kb = 2u * static_cast<uint32_t>(kl), r = static_cast<uint32_t>(idx);
  if (w == 0) return start + (r / 8) * sbo + (kb / 16) * lbo + (r % 8) * 16 + kb % 16;
  return cute_swizzle(start + (r / 8) * sbo + (r % 8) * uw + kb, b);
}

// The value of a 16-bit operand pattern (f16: 1-5-10 with subnormals; bf16: the top half of an FP32).
static double b16_value(Elem e, uint16_t bits) {
  if (e == kBf16) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const int sign = bits >> 15, ex = (bits >> 10) & 31, man = bits & 1023;
  const double mag = ex == 0 ? std::ldexp(man, -24) : (ex == 31 ? HUGE_VAL : std::ldexp(1024 + man, ex - 25));
  return sign ? -mag : mag;
}

// How a device reads one operand of the case: the true fields, LBO and SBO exchanged, or imm-trans ignored.
enum Misread { kTrue = 0, kSwapLboSbo = 1, kIgnoreTrans = 2 };

// The operand element a device reading `how` takes for (idx, k) of wgmma j; false if outside the region.
static bool read_as(const Built& b, Elem e, bool is_a, int idx, int j, int kl, Misread how, double* v) {
  const Placement& p = is_a ? b.r.pa : b.r.pb;
  const uint32_t base = is_a ? 0 : b.r.b_base;
  const uint32_t start = base + start_offset(p, j);
  const uint32_t lbo = how == kSwapLboSbo ? p.sbo : p.lbo, sbo = how == kSwapLboSbo ? p.lbo : p.sbo;
  const bool mn = how == kIgnoreTrans ? !p.mn_major : p.mn_major;
  const uint32_t at = desc_relative_offset(start, lbo, sbo, p.swizzle_bytes, mn, idx, kl);
  if (at + 2 > b.r.bytes) return false;
  uint16_t bits;
  std::memcpy(&bits, reinterpret_cast<const uint8_t*>(b.image.data()) + at, 2);
  *v = b16_value(e, bits);
  return true;
}

static void test_mn_discriminates() {
  const int swizzles[4] = {0, 32, 64, 128};
  const bool pairs[3][2] = {{true, true}, {true, false}, {false, true}};
  std::string misplaced, overlapping, undetected_swap, undetected_trans;
  int cases = 0;
  for (int ei = 0; ei < 2; ++ei)
    for (int si = 0; si < 4; ++si)
      for (int pi = 0; pi < 3; ++pi)
        for (int n = 64; n <= 128; n += 64)
          for (int set = 0; set < 3; ++set) {
            Case cs{ei == 0 ? kF16 : kBf16, n, swizzles[si], set, 1, 1, false};
            cs.ta = pairs[pi][0];
            cs.tb = pairs[pi][1];
            const Built b = build(cs);
            const std::string nm = case_name("", cs);
            ++cases;
            if (!b.layout_ok) overlapping += " [" + nm + "]";
            const Operands& o = b.ops[0];
            // The true reading finds every element's value (both operands, every wgmma).
            bool placed = true;
            for (int j = 0; j < b.nops; ++j)
              for (int kl = 0; kl < 16; ++kl) {
                double v = 0;
                for (int m = 0; m < 64; ++m)
                  placed = placed && read_as(b, cs.e, true, m, j, kl, kTrue, &v) && v == o.a[m * o.kt + 16 * j + kl];
                for (int c = 0; c < n; ++c)
                  placed = placed && read_as(b, cs.e, false, c, j, kl, kTrue, &v) && v == o.b[c * o.kt + 16 * j + kl];
              }
            if (!placed) misplaced += " [" + nm + "]";
            // A device misreading the MN-major operand(s) (the K-major one read right) gets another D.
            for (int how = kSwapLboSbo; how <= kIgnoreTrans; ++how) {
              bool differs = false;
              for (int m = 0; m < 64 && !differs; ++m)
                for (int c = 0; c < n && !differs; ++c) {
                  double d = 0, dm = 0;
                  for (int j = 0; j < b.nops && !differs; ++j)
                    for (int kl = 0; kl < 16; ++kl) {
                      const int k = 16 * j + kl;
                      double va = o.a[m * o.kt + k], vb = o.b[c * o.kt + k];
                      d += va * vb;
                      if (cs.ta && !read_as(b, cs.e, true, m, j, kl, static_cast<Misread>(how), &va)) differs = true;
                      if (cs.tb && !read_as(b, cs.e, false, c, j, kl, static_cast<Misread>(how), &vb)) differs = true;
                      dm += va * vb;
                    }
                  differs = differs || dm != d;  // reading outside the region counts as caught (fault / other data)
                }
              if (!differs) (how == kSwapLboSbo ? undetected_swap : undetected_trans) += " [" + nm + "]";
            }
          }
  report(overlapping.empty() && misplaced.empty(),
         "wgmma MN-major placements (" + std::to_string(cases) + " cases): no overlap, and start + the in-wgmma "
         "layout finds every element",
         (overlapping.empty() ? "" : "overlapping:" + overlapping) + (misplaced.empty() ? "" : " misplaced:" + misplaced));
  report(undetected_swap.empty(),
         "wgmma MN-major data: a device reading LBO and SBO exchanged would get another D in every case",
         undetected_swap.empty() ? "" : "not detected:" + undetected_swap);
  report(undetected_trans.empty(),
         "wgmma MN-major data: a device ignoring imm-trans (reading K-major) would get another D in every case",
         undetected_trans.empty() ? "" : "not detected:" + undetected_trans);
}

// Host only: the data sets tell mislaid layouts from the ISA's — a device that read the wrong K chunk,
// swapped the two 8-row halves of a warp's rows, or swapped fragment registers would give a different D.
static void test_data_discriminates() {
  std::string undetected;
  for (int set = 0; set < 3; ++set) {
    const Operands o = make_operands(set, 0, 64, 32);
    bool k_swap = false, row_swap = false, reg_swap = false, col_swap = false;
    for (int m = 0; m < 64; ++m)
      for (int c = 0; c < 64; ++c) {
        long long d = 0, dk = 0;
        for (int k = 0; k < 32; ++k) {
          d += static_cast<long long>(o.a[m * 32 + k]) * o.b[c * 32 + k];
          dk += static_cast<long long>(o.a[m * 32 + (k ^ 8)]) * o.b[c * 32 + k];  // 16-byte K chunks swapped (f16)
        }
        long long dr = 0, dc = 0;
        for (int k = 0; k < 32; ++k) {
          dr += static_cast<long long>(o.a[(m ^ 8) * 32 + k]) * o.b[c * 32 + k];
          dc += static_cast<long long>(o.a[m * 32 + k]) * o.b[(c ^ 1) * 32 + k];
        }
        long long dreg = 0;
        for (int k = 0; k < 32; ++k) dreg += static_cast<long long>(o.a[m * 32 + k]) * o.b[(c ^ 8) * 32 + k];
        k_swap |= dk != d;
        row_swap |= dr != d;
        col_swap |= dc != d;
        reg_swap |= dreg != d;
      }
    if (!k_swap) undetected += std::string(" K-chunks(set ") + std::to_string(set) + ")";
    if (!row_swap) undetected += std::string(" rows m^8(set ") + std::to_string(set) + ")";
    if (!col_swap) undetected += std::string(" cols n^1(set ") + std::to_string(set) + ")";
    if (!reg_swap) undetected += std::string(" regs i^1(set ") + std::to_string(set) + ")";
  }
  report(undetected.empty(), "wgmma data sets tell swapped K chunks, row halves, column pairs and register quads apart",
         undetected.empty() ? "" : "not detected:" + undetected);
}

// =========================================================================================================
// 3. Emulator only: the deferred read, and faults
// =========================================================================================================
//
// §9.7.15.5.2: wgmma.mma_async reads its shared-memory operands asynchronously; "accessing [them]
// ... before the wgmma.wait_group ... that completes it" is undefined. The emulator's contract
// (ptx_emu_wgmma.h): operands are read at the covering wait, so a stage overwritten between issue and
// wait gives the new data's product — on a GPU, either or garbage, hence emulator only.

#if defined(FASTCONV_EMU)
__global__ void wgmma_deferred_kernel(const WgPlan* plan, const uint32_t* image, const uint32_t* image2,
                                      const float* c_init, float* out) {
  FC_DYNAMIC_SHARED(1024, uint8_t, raw);
  const WgPlan p = *plan;
  const uint32_t words = (blockDim.x / 128) * p.region_bytes / 4;
  const uint32_t base = fill_smem(raw, image, words) + (threadIdx.x / 128) * p.region_bytes;
  float d[32];
  for (int i = 0; i < 32; ++i) d[i] = c_init[threadIdx.x * 32 + i];
  const WgOp& o = p.op[0];
  fc::wgmma_fence();
  fc::wgmma_ss<__half, 64>(d, plan_desc(base + o.a_off, o.a_lbo, o.a_sbo, o.swizzle),
                           plan_desc(base + o.b_off, o.b_lbo, o.b_sbo, o.swizzle), o.accumulate != 0);
  fc::wgmma_commit_group();
  __syncthreads();
  fill_smem(raw, image2, words);  // the kernel "releases the stage" too early and refills it
  fc::wgmma_wait_group<0>();
  for (int i = 0; i < 32; ++i) out[threadIdx.x * 32 + i] = d[i];
}

static void test_deferred_read() {
  const Case cs{kF16, 64, 128, 0, 1, 1, false};
  Built b = build(cs);
  b.plan.nops = 1;
  Case cs2 = cs;
  cs2.set = 2;
  const Built b2 = build(cs2);  // other A and B at the same places
  DevBuf<WgPlan> dplan(1);
  DevBuf<uint32_t> dimg(b.image.size()), dimg2(b2.image.size());
  DevBuf<float> dc(b.c_init.size()), dout(b.c_init.size());
  std::vector<WgPlan> hplan(1, b.plan);
  const std::string name = "emu: wgmma reads shared memory at wait_group: operands rewritten after issue give the new product";
  if (!dplan.up(hplan) || !dimg.up(b.image) || !dimg2.up(b2.image) || !dc.up(b.c_init)) {
    report(false, name, "upload failed");
    return;
  }
  const size_t smem = smem_bytes(b, 1);
  cudaFuncSetAttribute(wgmma_deferred_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  FC_LAUNCH(dim3(1), dim3(128), smem, 0, wgmma_deferred_kernel)(dplan.p, dimg.p, dimg2.p, dc.p, dout.p);
  const cudaError_t e = launch_result();
  std::vector<float> got;
  if (e != cudaSuccess || !dout.down(got)) {
    report(false, name, std::string("launch/copy failed: ") + cudaGetErrorString(e));
    return;
  }
  Mismatches mm;
  int same_as_old = 0;
  for (int t = 0; t < 128; ++t)
    for (int r = 0; r < 32; ++r) {
      const int m = frag_row(t, r), col = frag_col(t, r);
      // The old C (set 0's), the new operands (set 2's).
      const long long prod = ref_d(b2, 0, m, col, 0, 1, kF16, false);
      const float want = static_cast<float>(prod + b.ops[0].c[m * 64 + col]);
      const float old = static_cast<float>(ref_d(b, 0, m, col, 0, 1, kF16, true));
      same_as_old += got[t * 32 + r] == old && want != old ? 1 : 0;
      if (!(got[t * 32 + r] == want)) mm.add("thread %d d[%d] = %g, want %g (old operands: %g)", t, r, got[t * 32 + r], want, old);
    }
  report(mm.count == 0, name, mm.count ? mm.summary() + ", " + std::to_string(same_as_old) + " as with the old" : "");
}

enum FaultMode { kExitUnwaited, kExitUncommitted, kOutsideSmem, kNoFence, kBaseOffset, kOffPattern, kPartialWarpgroup };

__global__ void wgmma_fault_kernel(int mode) {
  FC_SHARED_ALIGNED(1024, uint8_t, tile, [8192]);
  for (int i = threadIdx.x; i < 8192; i += blockDim.x) tile[i] = 0;
  FC_WGMMA_TEST_PROXY_FENCE();
  __syncthreads();
  const uint32_t base = fc::smem_addr(tile);
  float d[32] = {};
  uint64_t da = fc::make_smem_desc(base, 16, 1024, fc::SmemSwizzle::k128B);
  const uint64_t db = fc::make_smem_desc(base + 4096, 16, 1024, fc::SmemSwizzle::k128B);
  if (mode == kOutsideSmem) da = fc::make_smem_desc(base + 0x30000, 16, 1024, fc::SmemSwizzle::k128B);
  if (mode == kBaseOffset) da |= uint64_t{3} << 49;
  if (mode == kOffPattern) da = fc::make_smem_desc(base + 384, 16, 1024, fc::SmemSwizzle::k128B);
  if (mode != kNoFence) fc::wgmma_fence();
  fc::wgmma_ss<__half, 64>(d, da, db, false);
  if (mode == kExitUncommitted) return;
  fc::wgmma_commit_group();
  if (mode == kExitUnwaited) return;
  fc::wgmma_wait_group<0>();
}

static void expect_fault(const char* name, cudaError_t got, cudaError_t want, const char* word) {
  const std::string rep = fc_emu::last_fault_report();
  const bool ok = got == want && rep.find(word) != std::string::npos;
  report(ok, name,
         ok ? "" : std::string("got ") + cudaGetErrorName(got) + ", want " + cudaGetErrorName(want) + "; report: " + rep);
  fc_emu::reset_device();
}

static void test_faults() {
  struct F {
    int mode, threads;
    cudaError_t want;
    const char *word, *name;
  };
  const F cases[] = {
      {kExitUnwaited, 128, cudaErrorLaunchFailure, "exited with 1 committed but un-waited", "emu fault: thread exits with a committed, un-waited wgmma group"},
      {kExitUncommitted, 128, cudaErrorLaunchFailure, "exited with 1 uncommitted wgmma", "emu fault: thread exits with an uncommitted wgmma"},
      {kOutsideSmem, 128, cudaErrorLaunchFailure, "wgmma.mma_async (operand A", "emu fault: descriptor A outside shared memory"},
      {kNoFence, 128, cudaErrorLaunchFailure, "wgmma.fence", "emu fault: wgmma.mma_async without wgmma.fence"},
      {kBaseOffset, 128, cudaErrorLaunchFailure, "base offset", "emu fault: descriptor with a non-zero base offset"},
      {kOffPattern, 128, cudaErrorMisalignedAddress, "1024-byte boundary", "emu fault: 128B-swizzled start 384 bytes into its pattern"},
      {kPartialWarpgroup, 96, cudaErrorLaunchFailure, "warpgroups", "emu fault: wgmma in a block of 96 threads"},
  };
  for (const F& f : cases) {
    FC_LAUNCH(dim3(1), dim3(f.threads), 0, 0, wgmma_fault_kernel)(f.mode);
    expect_fault(f.name, launch_result(), f.want, f.word);
  }
  // The device runs wgmma again after reset_device.
  run_chain<__half, 64>(Case{kF16, 64, 128, 0, 1, 1, false});
}
#endif

int main() {
  test_data_discriminates();
  run_type<__half>(kF16);
  run_type<__nv_bfloat16>(kBf16);
  run_type<float>(kTf32);
  test_mn_discriminates();
  run_mn_type<__half>(kF16);
  run_mn_type<__nv_bfloat16>(kBf16);
#if defined(FASTCONV_EMU)
  test_deferred_read();
  test_faults();
#endif
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
