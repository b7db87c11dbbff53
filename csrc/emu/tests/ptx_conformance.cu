// ptx_conformance.cu — per-instruction conformance tests of the PTX wrappers in csrc/cuda/ptx.cuh.
//
// The expected values are written from the PTX ISA's own text and fragment tables, NOT from
// csrc/emu/ptx_emu.h. Sections are cited by name, with their number in the PTX ISA 8.x reference
// (the numbers move between releases: e.g. ldmatrix is §9.7.13.4.15 in 7.x, §9.7.14.5.15 in 8.x,
// §9.7.16.5.15 in 9.4; cp.async is §9.7.9.25.3.1 in 8.x, §9.7.10.28.3.x in 9.4). The file is a plain CUDA source: built by nvcc it checks the hardware
// (sm_80+), built by `make -C csrc emu` it checks the emulated device. Every input is a known,
// distinct value, so a wrong lane / register / half / element mapping shows up as a mismatch naming
// the lane and element.
//
//   1. ldmatrix .x1/.x2/.x4, with and without .trans, 2 warps, rows at permuted addresses
//   2. mma.m16n8k16.row.col.f32.{f16,bf16}: general integers, one-hot A, one-hot B, 2 warps; plus a
//      host-only check that each data set tells a mislaid fragment from the ISA's
//   3. mma.m16n8k8.row.col.f32.tf32.tf32.f32: distinct integers carrying non-zero low mantissa bits
//      (which the tensor core ignores), 2 warps; plus the host-only discrimination check
//   4. cp.async: cp-size 4/8/16 (.ca) and 16 (.cg), src-size < cp-size, src-size 0; commit_group,
//      wait_group N, wait_all, empty groups
//   5. (emulator only) faults: misaligned ldmatrix row, misaligned cp.async, cp.async outside shared
//
// Output: one line per check, then "N passed, M failed"; exit status 0 only if all passed.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../cuda/common.cuh"
#include "../../cuda/ptx.cuh"

#if defined(FASTCONV_EMU)
#include "../runtime.h"
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FC_PTX_TEST_TSAN 1
#endif
#endif

namespace fc = fastconv::cuda;

#include "conformance.h"

// =========================================================================================================
// 1. ldmatrix
// =========================================================================================================
//
// PTX ISA §9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix" (PTX ISA 9.x: §9.7.15.5.15 /
// §9.7.16.5.15), shape .m8n8, type .b16:
//  * "The eight addresses required for each matrix are provided by eight threads, depending upon the
//    value of .num": .x1 threads 0-7 give addr0-addr7; .x2 threads 0-15 give addr0-addr15; .x4 threads
//    0-31 give addr0-addr31. "Each address corresponds to the start of a matrix row. Addresses
//    addr0-addr7 correspond to the rows of the first matrix, addresses addr8-addr15 correspond to the
//    rows of the second matrix, and so on." -> thread L (L < 8·num) addresses row L%8 of matrix L/8.
//  * "Consecutive instances of row need not be stored contiguously in memory."
//  * For sm_80 (above sm_75) only those threads' addresses are used; the others are don't-care.
//  * "When reading 8x8 matrices, a group of four consecutive threads loads 16 bytes. The matrix
//    addresses must be naturally aligned accordingly." -> 16-byte aligned rows.
//  * Figure 104 "ldmatrix fragment layout for one 8x8 Matrix with 16-bit elements": "Each thread in
//    a warp loads fragments of a row, with thread 0 receiving the first fragment in its register r,
//    and so on. A group of four threads loads an entire row" -> lane L holds row L/4, columns
//    2·(L%4) (low 16 bits) and 2·(L%4)+1 (high 16 bits).
//  * "When .num = .x2, the elements of the second matrix are loaded in the next destination register
//    in each thread ... .x4, elements of the third and fourth matrices are loaded in the subsequent
//    destination registers" -> register j holds matrix j.
//  * ".trans indicates that the matrix is loaded in column-major format" -> the Figure 104 layout
//    applies to the transpose of the stored matrix: lane L holds stored element
//    [row 2·(L%4)+h][col L/4] in half h.
//
// The test: 2 warps; warp w's matrix j row r is stored at a permuted 16-byte slot of its own region
// (slots not in order, not contiguous, interleaved with filler); element (w, j, r, c) = w·256 + j·64 +
// r·8 + c. Lanes that supply no address (x1: 8-31, x2: 16-31) point at a decoy row (0x8000 + c),
// which must never appear.

constexpr int kLdWarps = 2;
constexpr int kLdRegionSlots = 64;                       // per warp; 32 used
constexpr int kLdDecoySlot = kLdWarps * kLdRegionSlots;  // 128
constexpr int kLdSlots = kLdDecoySlot + 2;               // + decoy + one spare filler slot

static int ld_slot(int warp, int q /* matrix*8 + row */) {
  return warp * kLdRegionSlots + (q * 37 + 5 + 11 * warp) % kLdRegionSlots;  // 37 odd: a permutation
}
static uint16_t ld_id(int warp, int mat, int row, int col) {
  return static_cast<uint16_t>(warp * 256 + mat * 64 + row * 8 + col);
}

template <int kNum, bool kTrans>
__global__ void ldmatrix_kernel(const uint16_t* image, const unsigned int* row_offset, unsigned int* out) {
  FC_SHARED_ALIGNED(16, uint16_t, tile, [kLdSlots * 8]);
  for (int i = threadIdx.x; i < kLdSlots * 8; i += blockDim.x) tile[i] = image[i];
  __syncthreads();
  unsigned int r[kNum];
  fc::ldmatrix<kNum, kTrans>(r, fc::smem_addr(tile) + row_offset[threadIdx.x]);
#pragma unroll
  for (int j = 0; j < kNum; ++j) out[threadIdx.x * 4 + j] = r[j];
}

static std::vector<uint16_t> ld_image() {
  std::vector<uint16_t> img(kLdSlots * 8);
  for (int s = 0; s < kLdSlots; ++s)
    for (int c = 0; c < 8; ++c) img[s * 8 + c] = static_cast<uint16_t>(0x4000 + s * 8 + c);  // filler
  for (int c = 0; c < 8; ++c) img[kLdDecoySlot * 8 + c] = static_cast<uint16_t>(0x8000 + c);
  for (int w = 0; w < kLdWarps; ++w)
    for (int q = 0; q < 32; ++q)
      for (int c = 0; c < 8; ++c) img[ld_slot(w, q) * 8 + c] = ld_id(w, q / 8, q % 8, c);
  return img;
}

// Per-thread byte offset of the row address the thread supplies (ISA address table above).
static std::vector<unsigned int> ld_offsets(int num) {
  std::vector<unsigned int> off(kLdWarps * 32);
  for (int w = 0; w < kLdWarps; ++w)
    for (int lane = 0; lane < 32; ++lane)
      off[w * 32 + lane] = 16u * static_cast<unsigned>(lane < 8 * num ? ld_slot(w, lane) : kLdDecoySlot);
  return off;
}

template <int kNum, bool kTrans>
static cudaError_t ld_run(const std::vector<unsigned int>& offsets, std::vector<unsigned int>& out, bool* io_ok) {
  DevBuf<uint16_t> d_img(kLdSlots * 8);
  DevBuf<unsigned int> d_off(kLdWarps * 32), d_out(kLdWarps * 32 * 4);
  if (!d_img.up(ld_image()) || !d_off.up(offsets)) {
    *io_ok = false;
    return cudaErrorUnknown;
  }
  FC_LAUNCH(dim3(1), dim3(32 * kLdWarps), 0, 0, ldmatrix_kernel<kNum, kTrans>)(d_img.p, d_off.p, d_out.p);
  const cudaError_t e = launch_result();
  *io_ok = d_out.down(out);
  return e;
}

template <int kNum, bool kTrans>
static void test_ldmatrix() {
  const std::string name = std::string("ldmatrix.sync.aligned.m8n8.x") + std::to_string(kNum) +
                           (kTrans ? ".trans" : "") + ".shared.b16";
  std::vector<unsigned int> out;
  bool io_ok = false;
  const cudaError_t e = ld_run<kNum, kTrans>(ld_offsets(kNum), out, &io_ok);
  if (e != cudaSuccess || !io_ok) {
    report(false, name, std::string("launch/copy failed: ") + cudaGetErrorString(e));
    return;
  }
  Mismatches mm;
  for (int w = 0; w < kLdWarps; ++w)
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < kNum; ++j)
        for (int h = 0; h < 2; ++h) {
          const int row = kTrans ? 2 * (lane % 4) + h : lane / 4;  // stored row
          const int col = kTrans ? lane / 4 : 2 * (lane % 4) + h;  // stored column
          const unsigned want = ld_id(w, j, row, col);
          const unsigned got = (out[(w * 32 + lane) * 4 + j] >> (16 * h)) & 0xffffu;
          if (got != want)
            mm.add("warp %d lane %d r%d.%s = 0x%04x, ISA wants matrix %d [%d][%d] = 0x%04x", w, lane, j,
                   h ? "hi" : "lo", got, j, row, col, want);
        }
  report(mm.count == 0, name + " (2 warps x 32 lanes x " + std::to_string(kNum) + " regs x 2 halves)",
         mm.count ? mm.summary() : "");
}

// =========================================================================================================
// 2. mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
// =========================================================================================================
//
// PTX ISA §9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type" (PTX ISA 9.x:
// §9.7.15.5.8), with groupID = %laneid >> 2, threadID_in_group = %laneid % 4:
//  * A (16x16, .row), four .f16x2 registers holding a0..a7 "low to high" (register k holds a(2k) in
//    its low half and a(2k+1) in its high half), Figure 79:
//      row = groupID for ai with 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise
//      col = threadID_in_group*2 + (i & 1) for i < 4, threadID_in_group*2 + (i & 1) + 8 for i >= 4
//  * B (16x8, .col), two .f16x2 registers holding b0..b3, Figure 81:
//      row = threadID_in_group*2 + (i & 1) for i < 2, threadID_in_group*2 + (i & 1) + 8 for i >= 2
//      col = groupID
//  * C/D (16x8, .f32), four .f32 registers c0..c3, Figure 83:
//      row = groupID for i < 2, groupID + 8 for i >= 2;  col = threadID_in_group*2 + (i & 1)
// and §9.7.14.5.14 "Multiply-and-Accumulate Instruction: mma": D = A·B + C (A is MxK, B is KxN).
// Inputs are small integers: exact in f16 and bf16 (|v| <= 255), every product and sum exact in f32,
// so D must match bit for bit whatever the accumulation order.

struct Frag {
  int row, col;
};
// mut selects a deliberately mislaid layout (used only by the host-side discrimination check).
enum Mutation { kIsa = 0, kAHalvesSwapped, kARegs12Swapped, kATransposed, kBHalvesSwapped, kBRegsSwapped,
                kCRegs12Swapped, kNumMutations };
static const char* const kMutationName[kNumMutations] = {
    "ISA", "A halves swapped", "A regs 1<->2", "A transposed", "B halves swapped", "B regs swapped", "C/D c1<->c2"};

static Frag frag_a(int lane, int i, int mut = kIsa) {
  if (mut == kAHalvesSwapped) i ^= 1;
  if (mut == kARegs12Swapped && i >= 2 && i < 6) i ^= 6;  // a2,a3 <-> a4,a5
  const int g = lane >> 2, t = lane % 4;
  Frag f;
  f.row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  f.col = i < 4 ? t * 2 + (i & 1) : t * 2 + (i & 1) + 8;
  if (mut == kATransposed) std::swap(f.row, f.col);
  return f;
}
static Frag frag_b(int lane, int i, int mut = kIsa) {
  if (mut == kBHalvesSwapped) i ^= 1;
  if (mut == kBRegsSwapped) i ^= 2;
  const int g = lane >> 2, t = lane % 4;
  return Frag{i < 2 ? t * 2 + (i & 1) : t * 2 + (i & 1) + 8, g};
}
static Frag frag_c(int lane, int i, int mut = kIsa) {
  if (mut == kCRegs12Swapped && (i == 1 || i == 2)) i ^= 3;
  const int g = lane >> 2, t = lane % 4;
  return Frag{i < 2 ? g : g + 8, t * 2 + (i & 1)};
}

// One warp's integer problem.
struct MmaProblem {
  int a[16][16], b[16][8], c[16][8];
};

// Bits of small integer v as f16 / bf16 (exactly representable values only).
static uint16_t to_b16(int v, bool bf16) {
  const float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (v == 0) return 0;
  if (bf16) return static_cast<uint16_t>(u >> 16);  // exact: |v| <= 255 has <= 8 significant bits
  const uint32_t sign = u >> 31;
  const int e = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  return static_cast<uint16_t>((sign << 15) | (static_cast<uint32_t>(e) << 10) | ((u >> 13) & 0x3ff));
}

// Packs one warp's A, B, C into per-lane registers by the (possibly mutated) layout.
static void mma_pack(const MmaProblem& p, bool bf16, int mut, unsigned* a, unsigned* b, float* c) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int k = 0; k < 4; ++k) {
      const Frag lo = frag_a(lane, 2 * k, mut), hi = frag_a(lane, 2 * k + 1, mut);
      a[lane * 4 + k] = to_b16(p.a[lo.row][lo.col], bf16) | (unsigned(to_b16(p.a[hi.row][hi.col], bf16)) << 16);
    }
    for (int k = 0; k < 2; ++k) {
      const Frag lo = frag_b(lane, 2 * k, mut), hi = frag_b(lane, 2 * k + 1, mut);
      b[lane * 2 + k] = to_b16(p.b[lo.row][lo.col], bf16) | (unsigned(to_b16(p.b[hi.row][hi.col], bf16)) << 16);
    }
    for (int i = 0; i < 4; ++i) {
      const Frag f = frag_c(lane, i, mut);
      c[lane * 4 + i] = static_cast<float>(p.c[f.row][f.col]);
    }
  }
}
static void mma_reference(const MmaProblem& p, long long (&d)[16][8]) {
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      long long s = p.c[m][n];
      for (int k = 0; k < 16; ++k) s += static_cast<long long>(p.a[m][k]) * p.b[k][n];
      d[m][n] = s;
    }
}
// D registers per lane, by the (possibly mutated) C/D layout.
static void mma_expected(const MmaProblem& p, int mut, float* d) {
  long long ref[16][8];
  mma_reference(p, ref);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const Frag f = frag_c(lane, i, mut);
      d[lane * 4 + i] = static_cast<float>(ref[f.row][f.col]);
    }
}

// The data sets. All |a|, |b| <= 255 (exact in bf16), |D| < 2^24. The one-hot permutation is not
// affine: with p(m) = (odd·m + c) % 16, p(m + 8) = p(m) ^ 8 and swapping A's off-diagonal 8x8 blocks
// (a mislaid a2,a3 <-> a4,a5) would leave A unchanged.
static const int kOneHotPerm[16] = {5, 12, 0, 9, 14, 3, 7, 10, 1, 15, 6, 2, 11, 4, 13, 8};
static MmaProblem mma_data(int set, int warp) {
  MmaProblem p;
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 16; ++k) {
      if (set == 0) p.a[m][k] = (m * 5 + k * 3 + 7 * warp) % 11 - 5;             // general
      if (set == 1) p.a[m][k] = k == kOneHotPerm[(m + 3 * warp) % 16] ? 1 : 0;  // one-hot rows: A picks B's row
      if (set == 2) p.a[m][k] = (m * 16 + k + 37 * warp) % 256;                  // unique ids 0..255
    }
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      if (set == 0) p.b[k][n] = (k * 7 + n * 2 + 3 * warp) % 9 - 4;
      if (set == 1) p.b[k][n] = (k * 8 + n + 19 * warp) % 128;                    // unique ids 0..127
      if (set == 2) p.b[k][n] = k == (n * 3 + 1 + 5 * warp) % 16 ? 1 : 0;        // one-hot columns: B picks A's col
    }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) p.c[m][n] = set == 0 ? (m * 8 + n) - 64 + warp : 256 * (m * 8 + n) + warp * 32768;
  return p;
}
static const char* const kMmaSetName[3] = {"general integers", "one-hot A x unique B", "unique A x one-hot B"};
constexpr int kMmaWarps = 2;

template <typename T>
__global__ void mma_kernel(const unsigned int* a, const unsigned int* b, const float* c, float* d) {
  const int t = threadIdx.x;
  unsigned int ra[4], rb[2];
  float acc[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) ra[i] = a[t * 4 + i];
#pragma unroll
  for (int i = 0; i < 2; ++i) rb[i] = b[t * 2 + i];
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] = c[t * 4 + i];
  fc::mma_16816<T>(acc, ra, rb);
#pragma unroll
  for (int i = 0; i < 4; ++i) d[t * 4 + i] = acc[i];
}

template <typename T>
static void test_mma(int set) {
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const std::string name = std::string("mma.sync.aligned.m16n8k16.row.col.f32.") + (kBf16 ? "bf16.bf16" : "f16.f16") +
                           ".f32 " + kMmaSetName[set] + " (2 warps)";
  std::vector<unsigned> ha(kMmaWarps * 32 * 4), hb(kMmaWarps * 32 * 2);
  std::vector<float> hc(kMmaWarps * 32 * 4), want(kMmaWarps * 32 * 4), got;
  for (int w = 0; w < kMmaWarps; ++w) {
    const MmaProblem p = mma_data(set, w);
    mma_pack(p, kBf16, kIsa, &ha[w * 128], &hb[w * 64], &hc[w * 128]);
    mma_expected(p, kIsa, &want[w * 128]);
  }
  DevBuf<unsigned> da(ha.size()), db(hb.size());
  DevBuf<float> dc(hc.size()), dd(hc.size());
  if (!da.up(ha) || !db.up(hb) || !dc.up(hc)) {
    report(false, name, "upload failed");
    return;
  }
  FC_LAUNCH(dim3(1), dim3(32 * kMmaWarps), 0, 0, mma_kernel<T>)(da.p, db.p, dc.p, dd.p);
  const cudaError_t e = launch_result();
  if (e != cudaSuccess || !dd.down(got)) {
    report(false, name, std::string("launch/copy failed: ") + cudaGetErrorString(e));
    return;
  }
  Mismatches mm;
  for (int w = 0; w < kMmaWarps; ++w)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const int k = (w * 32 + lane) * 4 + i;
        if (!(got[k] == want[k])) {
          const Frag f = frag_c(lane, i);
          mm.add("warp %d lane %d d%d (D[%d][%d]) = %.1f, want %.1f", w, lane, i, f.row, f.col, got[k], want[k]);
        }
      }
  report(mm.count == 0, name, mm.count ? mm.summary() : "");
}

// Host only: a device whose A, B or C/D fragment layout differs from the ISA's in one of the listed
// ways, fed the ISA-packed registers, would return different D registers for this data set — so the
// device checks above would catch that mistake.
static void test_mma_data_discriminates(int set) {
  std::string undetected;
  for (int mut = 1; mut < kNumMutations; ++mut) {
    bool differs = false;
    for (int w = 0; w < kMmaWarps && !differs; ++w) {
      const MmaProblem p = mma_data(set, w);
      unsigned a[128], b[64];
      float c[128], want[128];
      mma_pack(p, false, kIsa, a, b, c);
      mma_expected(p, kIsa, want);
      // What the mislaid device sees: unpack the registers with the mutated layout.
      MmaProblem q;
      std::memset(&q, 0, sizeof(q));
      auto from_b16 = [](unsigned bits) {  // f16 bits of a small integer back to the integer
        if ((bits & 0x7fff) == 0) return 0;
        const int e = static_cast<int>((bits >> 10) & 0x1f) - 15, m = static_cast<int>(bits & 0x3ff) | 0x400;
        const int v = e >= 10 ? m << (e - 10) : m >> (10 - e);
        return (bits & 0x8000) ? -v : v;
      };
      for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 8; ++i) {
          const Frag f = frag_a(lane, i, mut);
          q.a[f.row][f.col] = from_b16((a[lane * 4 + i / 2] >> (16 * (i & 1))) & 0xffff);
        }
        for (int i = 0; i < 4; ++i) {
          const Frag f = frag_b(lane, i, mut);
          q.b[f.row][f.col] = from_b16((b[lane * 2 + i / 2] >> (16 * (i & 1))) & 0xffff);
        }
        for (int i = 0; i < 4; ++i) {
          const Frag f = frag_c(lane, i, mut);
          q.c[f.row][f.col] = static_cast<int>(c[lane * 4 + i]);
        }
      }
      float d[128];
      mma_expected(q, mut, d);
      for (int k = 0; k < 128; ++k) differs = differs || d[k] != want[k];
    }
    if (!differs) undetected += std::string(undetected.empty() ? "" : ", ") + kMutationName[mut];
  }
  report(undetected.empty(),
         std::string("mma m16n8k16 data set '") + kMmaSetName[set] +
             "' tells every mislaid fragment (A halves/regs/transposed, B halves/regs, C/D regs) from the ISA's",
         undetected.empty() ? "" : "not detected: " + undetected);
}

// =========================================================================================================
// 3. mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
// =========================================================================================================
//
// PTX ISA §9.7.14.5.7 "Matrix Fragments for mma.m16n8k8" (PTX ISA 9.x: §9.7.15.5.7), .tf32, with
// groupID = %laneid >> 2, threadID_in_group = %laneid % 4:
//  * A (16x8, .row), "four .b32 registers, containing four .tf32 elements" a0..a3, Figure 72:
//      row = groupID for a0 and a2, groupID + 8 for a1 and a3
//      col = threadID_in_group for a0 and a1, threadID_in_group + 4 for a2 and a3
//  * B (8x8, .col), two .b32 registers b0, b1:
//      row = threadID_in_group for b0, threadID_in_group + 4 for b1;  col = groupID
//  * C/D (16x8, .f32) as m16n8k16: row = groupID for c0, c1, groupID + 8 for c2, c3;
//      col = threadID_in_group*2 + (i & 1)
// A .tf32 operand is a .b32 register in the FP32 format of which the tensor core reads sign, exponent
// and the top 10 mantissa bits. Every operand here is a small integer (exact in 10 mantissa bits)
// whose FP32 bits also carry a non-zero pattern in the low 13 bits, some above and some below half a
// TF32 unit: only a device that ignores those bits returns the integer result bit for bit (one that
// used them, or rounded to nearest, would not). Products and sums are exact in FP32 (|D| < 2^17).

static Frag frag_a_tf32(int lane, int i, bool swap12 = false) {
  if (swap12 && (i == 1 || i == 2)) i ^= 3;
  const int g = lane >> 2, t = lane % 4;
  return Frag{(i & 1) ? g + 8 : g, (i & 2) ? t + 4 : t};
}
static Frag frag_b_tf32(int lane, int i, bool swapped = false) {
  if (swapped) i ^= 1;
  const int g = lane >> 2, t = lane % 4;
  return Frag{i ? t + 4 : t, g};
}

struct MmaTf32Problem {
  int a[16][8], b[8][8], c[16][8];
};
// Distinct values per element: A 128 ids in [-64, 64), B 64 ids in [-32, 32), C 128 multiples of 64.
static MmaTf32Problem mma_tf32_data(int warp) {
  MmaTf32Problem p;
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 8; ++k) p.a[m][k] = (m * 8 + k + 37 * warp) % 128 - 64;
  for (int k = 0; k < 8; ++k)
    for (int n = 0; n < 8; ++n) p.b[k][n] = (k * 8 + n + 19 * warp) % 64 - 32;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) p.c[m][n] = 64 * ((m * 8 + n + 11 * warp) % 128) - 4096;
  return p;
}
// FP32 bits of integer v with a non-zero pattern in the 13 mantissa bits below TF32's 10 (0 becomes
// a denormal whose TF32 part is +0 or −0).
static unsigned tf32_bits(int v, unsigned salt) {
  const float f = static_cast<float>(v);
  unsigned u;
  std::memcpy(&u, &f, 4);
  const unsigned low = 1u + ((salt * 2654435761u) >> 13) % 0x1fffu;  // 1 .. 0x1fff
  return u | low;
}
static void mma_tf32_pack(const MmaTf32Problem& p, int warp, unsigned* a, unsigned* b, float* c, bool a_swap12 = false,
                          bool b_swapped = false) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const Frag f = frag_a_tf32(lane, i, a_swap12);
      a[lane * 4 + i] = tf32_bits(p.a[f.row][f.col], 1000u * warp + 16u * f.row + f.col);
    }
    for (int i = 0; i < 2; ++i) {
      const Frag f = frag_b_tf32(lane, i, b_swapped);
      b[lane * 2 + i] = tf32_bits(p.b[f.row][f.col], 1000u * warp + 500u + 8u * f.row + f.col);
    }
    for (int i = 0; i < 4; ++i) {
      const Frag f = frag_c(lane, i);
      c[lane * 4 + i] = static_cast<float>(p.c[f.row][f.col]);
    }
  }
}
static void mma_tf32_expected(const MmaTf32Problem& p, float* d, bool c_swapped = false) {
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const Frag f = frag_c(lane, i, c_swapped ? kCRegs12Swapped : kIsa);
      long long s = p.c[f.row][f.col];
      for (int k = 0; k < 8; ++k) s += static_cast<long long>(p.a[f.row][k]) * p.b[k][f.col];
      d[lane * 4 + i] = static_cast<float>(s);
    }
}

__global__ void mma_tf32_kernel(const unsigned int* a, const unsigned int* b, const float* c, float* d) {
  const int t = threadIdx.x;
  unsigned int ra[4], rb[2];
  float acc[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) ra[i] = a[t * 4 + i];
#pragma unroll
  for (int i = 0; i < 2; ++i) rb[i] = b[t * 2 + i];
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] = c[t * 4 + i];
  fc::mma_1688_tf32(acc, ra, rb);
#pragma unroll
  for (int i = 0; i < 4; ++i) d[t * 4 + i] = acc[i];
}

static void test_mma_tf32() {
  const std::string name =
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 distinct integers + low-bit noise (2 warps)";
  std::vector<unsigned> ha(kMmaWarps * 32 * 4), hb(kMmaWarps * 32 * 2);
  std::vector<float> hc(kMmaWarps * 32 * 4), want(kMmaWarps * 32 * 4), got;
  for (int w = 0; w < kMmaWarps; ++w) {
    const MmaTf32Problem p = mma_tf32_data(w);
    mma_tf32_pack(p, w, &ha[w * 128], &hb[w * 64], &hc[w * 128]);
    mma_tf32_expected(p, &want[w * 128]);
  }
  DevBuf<unsigned> da(ha.size()), db(hb.size());
  DevBuf<float> dc(hc.size()), dd(hc.size());
  if (!da.up(ha) || !db.up(hb) || !dc.up(hc)) {
    report(false, name, "upload failed");
    return;
  }
  FC_LAUNCH(dim3(1), dim3(32 * kMmaWarps), 0, 0, mma_tf32_kernel)(da.p, db.p, dc.p, dd.p);
  const cudaError_t e = launch_result();
  if (e != cudaSuccess || !dd.down(got)) {
    report(false, name, std::string("launch/copy failed: ") + cudaGetErrorString(e));
    return;
  }
  Mismatches mm;
  for (int w = 0; w < kMmaWarps; ++w)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const int k = (w * 32 + lane) * 4 + i;
        if (!(got[k] == want[k])) {
          const Frag f = frag_c(lane, i);
          mm.add("warp %d lane %d d%d (D[%d][%d]) = %.4f, want %.1f", w, lane, i, f.row, f.col, got[k], want[k]);
        }
      }
  report(mm.count == 0, name, mm.count ? mm.summary() : "");
}

// Host only: the data set tells the ISA's layout from a1<->a2 swapped (row + 8 vs col + 4), b0<->b1
// swapped and c1<->c2 swapped, and the low bits matter: the FP32 values (low bits kept) or the
// nearest-TF32 values give a different D for some element.
static void test_mma_tf32_data_discriminates() {
  std::string undetected;
  auto unpack = [](unsigned bits, int mode) {  // 0: TF32 truncation (the ISA), 1: full FP32, 2: nearest TF32
    if (mode == 2) bits = (bits + 0x1000u) & 0xffffe000u;
    if (mode == 0) bits &= 0xffffe000u;
    float f;
    std::memcpy(&f, &bits, 4);
    return static_cast<double>(f);
  };
  const char* names[] = {"a1<->a2", "b0<->b1", "c1<->c2", "low bits used", "rounded to nearest"};
  for (int mut = 0; mut < 5; ++mut) {
    bool differs = false;
    for (int w = 0; w < kMmaWarps && !differs; ++w) {
      const MmaTf32Problem p = mma_tf32_data(w);
      unsigned a[128], b[64];
      float c[128], want[128];
      mma_tf32_pack(p, w, a, b, c);
      mma_tf32_expected(p, want);
      // What the mislaid device computes from the ISA-packed registers.
      double A[16][8], B[8][8], C[16][8];
      const int mode = mut == 3 ? 1 : mut == 4 ? 2 : 0;
      for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) {
          const Frag f = frag_a_tf32(lane, i, mut == 0);
          A[f.row][f.col] = unpack(a[lane * 4 + i], mode);
        }
        for (int i = 0; i < 2; ++i) {
          const Frag f = frag_b_tf32(lane, i, mut == 1);
          B[f.row][f.col] = unpack(b[lane * 2 + i], mode);
        }
        for (int i = 0; i < 4; ++i) {
          const Frag f = frag_c(lane, i, mut == 2 ? kCRegs12Swapped : kIsa);
          C[f.row][f.col] = c[lane * 4 + i];
        }
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const Frag f = frag_c(lane, i, mut == 2 ? kCRegs12Swapped : kIsa);
          double s = C[f.row][f.col];
          for (int k = 0; k < 8; ++k) s += A[f.row][k] * B[k][f.col];
          differs = differs || static_cast<float>(s) != want[lane * 4 + i];
        }
    }
    if (!differs) undetected += std::string(undetected.empty() ? "" : ", ") + names[mut];
  }
  report(undetected.empty(),
         "mma m16n8k8 tf32 data set tells every mislaid fragment (a1<->a2, b0<->b1, c1<->c2) and every "
         "other reading of the low bits (used, rounded to nearest) from the ISA's",
         undetected.empty() ? "" : "not detected: " + undetected);
}

// =========================================================================================================
// 4. cp.async
// =========================================================================================================
//
// PTX ISA §9.7.9.25.3.1 "Data Movement and Conversion Instructions: cp.async":
//  * "cp-size ... specifies the size of data in bytes to be copied to the destination dst. cp-size can
//    only be 4, 8 and 16"; .cg takes cp-size 16 only (syntax).
//  * "src-size represents the size of the data in bytes to be copied from src to dst and must be less
//    than cp-size. In such case, remaining bytes in destination dst are filled with zeros." -> with
//    src-size 0 all cp-size bytes are zeros and no source byte is read (so, on the emulator, the source
//    pointer given is not in any allocation at all).
//  * Alignment per "Addresses as Operands": dst and src aligned to cp-size.
// §9.7.9.25.3.2 "cp.async.commit_group": "batches all prior cp.async instructions initiated by the
//    executing thread but not committed to any cp.async-group into the new cp.async-group. If there are
//    no uncommitted cp.async instructions then cp.async.commit_group results in an empty cp.async-group."
// §9.7.9.25.3.3 "cp.async.wait_group / cp.async.wait_all": "wait till only N or fewer of the most recent
//    cp.async-groups are pending and all the prior cp.async-groups committed by the executing threads
//    are complete"; "cp.async.wait_all is equivalent to: cp.async.commit_group; cp.async.wait_group 0;";
//    "An empty cp.async-group is considered to be trivially complete."; "Writes performed by cp.async
//    operations are made visible to the executing thread only after ... the completion of
//    cp.async.wait_group on the cp.async-group in which the cp.async belongs to".
// §9.7.9.25.1 "Completion Mechanisms": reading the destination before completion is undefined on the
//    hardware, so the "still not landed" reads are compiled and checked on the emulator only, where a
//    pending destination reads as poison (0xFF bytes) by the emulator's own contract (runtime.h).

struct CpCase {
  int size, l2only, dst_off, src_off, src_bytes, nosrc;
};
// One case per thread; thread t copies into its own 16-byte slot t (dst_off within it) from
// src + 16·t + src_off. Bytes of the slot the copy does not cover must keep the 0xA5 fill.
static const CpCase kCpCases[] = {
    {4, 0, 0, 0, 4, 0},    {4, 0, 12, 4, 4, 0},  {4, 0, 4, 8, 3, 0},  {4, 0, 8, 0, 1, 0},  {4, 0, 0, 0, 0, 1},
    {8, 0, 0, 0, 8, 0},    {8, 0, 8, 0, 8, 0},   {8, 0, 0, 8, 5, 0},  {8, 0, 8, 0, 0, 1},
    {16, 0, 0, 0, 16, 0},  {16, 0, 0, 0, 9, 0},  {16, 0, 0, 0, 1, 0}, {16, 0, 0, 0, 0, 1},
    {16, 1, 0, 0, 16, 0},  {16, 1, 0, 0, 7, 0},  {16, 1, 0, 0, 15, 0}, {16, 1, 0, 0, 0, 1},
};
constexpr int kCpNumCases = static_cast<int>(sizeof(kCpCases) / sizeof(kCpCases[0]));
constexpr int kCpThreads = 32;
static_assert(kCpNumCases <= kCpThreads, "one case per thread");

static uint8_t cp_src_byte(int i) { return static_cast<uint8_t>(1 + (i * 13) % 150); }  // never 0, 0xA5, 0xFF

__global__ void cp_async_sizes_kernel(const CpCase* cases, int ncases, const uint8_t* src, const uint8_t* nosrc,
                                      uint8_t* out) {
  FC_SHARED_ALIGNED(16, uint8_t, sbuf, [kCpThreads * 16]);
  for (int i = threadIdx.x; i < kCpThreads * 16; i += blockDim.x) sbuf[i] = 0xA5;
  __syncthreads();
  const int t = threadIdx.x;
  if (t < ncases) {
    const CpCase k = cases[t];
    const unsigned int d = fc::smem_addr(sbuf) + 16u * t + k.dst_off;
    const uint8_t* s = k.nosrc ? nosrc : src + 16 * t + k.src_off;
    if (k.size == 4) fc::cp_async<4>(d, s, k.src_bytes);
    if (k.size == 8) fc::cp_async<8>(d, s, k.src_bytes);
    if (k.size == 16 && !k.l2only) fc::cp_async<16>(d, s, k.src_bytes);
    if (k.size == 16 && k.l2only) fc::cp_async<16, true>(d, s, k.src_bytes);
  }
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
  __syncthreads();  // other threads' completed copies, as every pipeline reads them
  for (int i = threadIdx.x; i < kCpThreads * 16; i += blockDim.x) out[i] = sbuf[i];
}

static void test_cp_async_sizes() {
  std::vector<uint8_t> hsrc(kCpThreads * 16 + 16), got;
  for (size_t i = 0; i < hsrc.size(); ++i) hsrc[i] = cp_src_byte(static_cast<int>(i));
  std::vector<CpCase> hcases(kCpCases, kCpCases + kCpNumCases);
  DevBuf<uint8_t> dsrc(hsrc.size()), dout(kCpThreads * 16);
  DevBuf<CpCase> dcases(hcases.size());
  DevBuf<uint8_t> dvalid(16);
  if (!dsrc.up(hsrc) || !dcases.up(hcases)) {
    report(false, "cp.async sizes", "upload failed");
    return;
  }
#if defined(FASTCONV_EMU)
  // src-size 0 reads nothing: on the emulator, give a 16-byte-aligned address outside every allocation.
  const uint8_t* nosrc = reinterpret_cast<const uint8_t*>(uintptr_t{16});
#else
  const uint8_t* nosrc = dsrc.p;  // valid memory with non-zero bytes: the zeros must come from the fill
#endif
  FC_LAUNCH(dim3(1), dim3(kCpThreads), 0, 0, cp_async_sizes_kernel)(dcases.p, kCpNumCases, dsrc.p, nosrc, dout.p);
  const cudaError_t e = launch_result();
  if (e != cudaSuccess || !dout.down(got)) {
    report(false, "cp.async sizes", std::string("launch/copy failed: ") + cudaGetErrorString(e));
    return;
  }
  for (int t = 0; t < kCpNumCases; ++t) {
    const CpCase& k = kCpCases[t];
    char nm[160];
    std::snprintf(nm, sizeof(nm), "cp.async.%s.shared.global cp-size %d, src-size %d%s, dst +%d, src +%d",
                  k.l2only ? "cg" : "ca", k.size, k.src_bytes, k.nosrc ? " (source not readable)" : "",
                  k.dst_off, k.src_off);
    Mismatches mm;
    for (int b = 0; b < 16; ++b) {
      unsigned want = 0xA5;  // untouched
      if (b >= k.dst_off && b < k.dst_off + k.size) {
        const int i = b - k.dst_off;
        want = i < k.src_bytes ? cp_src_byte(16 * t + k.src_off + i) : 0;
      }
      const unsigned g = got[16 * t + b];
      if (g != want) mm.add("slot byte %d = 0x%02x, want 0x%02x", b, g, want);
    }
    report(mm.count == 0, nm, mm.count ? mm.summary() : "");
  }
}

// Group semantics. Each thread copies 16 bytes per buffer into its own chunk and reads back only its
// own chunk (the ISA makes a completed cp.async visible to the executing thread).
constexpr int kGrpThreads = 32;
constexpr int kGrpBufs = 8;
constexpr int kGrpChunk = kGrpThreads * 16;  // bytes per buffer
enum Snap {
  kS2g_g0_after_w1,      // 2 groups, wait_group 1: group 0 landed
  kS2g_g1_after_w1,      //   (emulator) group 1 still poison
  kS2g_g1_after_w0,      //   wait_group 0: group 1 landed
  kS3g_g0_after_w2,      // 3 groups, wait_group 2: group 0 landed
  kS3g_g1_after_w2,      //   (emulator) group 1 poison
  kS3g_g2_after_w2,      //   (emulator) group 2 poison
  kS3g_g1_after_w1,      //   wait_group 1: group 1 landed
  kS3g_g2_after_w1,      //   (emulator) group 2 poison
  kS3g_g2_after_w0,      //   wait_group 0: group 2 landed
  kSwa_uncommitted,      // wait_all: uncommitted copies (two of them) landed
  kSwa_uncommitted2,
  kSempty_after_w1,      // group, then an empty group, wait_group 1: the non-empty group landed
  kNumSnaps
};

__device__ __forceinline__ void grp_copy(uint8_t* buf, const uint8_t* src, int t) {
  fc::cp_async_16(fc::smem_addr(buf + 16 * t), src + 16 * t, 16);
}
__device__ __forceinline__ void grp_snap(const uint8_t* buf, uint8_t* out, int snap, int t) {
  for (int i = 0; i < 16; ++i) out[snap * kGrpChunk + 16 * t + i] = buf[16 * t + i];
}

__global__ void cp_async_groups_kernel(const uint8_t* src, uint8_t* out) {
  FC_SHARED_ALIGNED(16, uint8_t, sb, [kGrpBufs][kGrpChunk]);
  const int t = threadIdx.x;
  // Two groups (the pattern of a 2-stage pipeline).
  grp_copy(sb[0], src + 0 * kGrpChunk, t);
  fc::cp_async_commit();
  grp_copy(sb[1], src + 1 * kGrpChunk, t);
  fc::cp_async_commit();
  fc::cp_async_wait<1>();
  grp_snap(sb[0], out, kS2g_g0_after_w1, t);
#if defined(FASTCONV_EMU)
  grp_snap(sb[1], out, kS2g_g1_after_w1, t);
#endif
  fc::cp_async_wait<0>();
  grp_snap(sb[1], out, kS2g_g1_after_w0, t);
  // Three groups, drained one at a time.
  grp_copy(sb[2], src + 2 * kGrpChunk, t);
  fc::cp_async_commit();
  grp_copy(sb[3], src + 3 * kGrpChunk, t);
  fc::cp_async_commit();
  grp_copy(sb[4], src + 4 * kGrpChunk, t);
  fc::cp_async_commit();
  fc::cp_async_wait<2>();
  grp_snap(sb[2], out, kS3g_g0_after_w2, t);
#if defined(FASTCONV_EMU)
  grp_snap(sb[3], out, kS3g_g1_after_w2, t);
  grp_snap(sb[4], out, kS3g_g2_after_w2, t);
#endif
  fc::cp_async_wait<1>();
  grp_snap(sb[3], out, kS3g_g1_after_w1, t);
#if defined(FASTCONV_EMU)
  grp_snap(sb[4], out, kS3g_g2_after_w1, t);
#endif
  fc::cp_async_wait<0>();
  grp_snap(sb[4], out, kS3g_g2_after_w0, t);
  // wait_all = commit_group + wait_group 0: completes copies never committed.
  grp_copy(sb[5], src + 5 * kGrpChunk, t);
  grp_copy(sb[6], src + 6 * kGrpChunk, t);
  fc::cp_async_wait_all();
  grp_snap(sb[5], out, kSwa_uncommitted, t);
  grp_snap(sb[6], out, kSwa_uncommitted2, t);
  // An empty group is trivially complete and counts as the one allowed pending group.
  grp_copy(sb[7], src + 7 * kGrpChunk, t);
  fc::cp_async_commit();
  fc::cp_async_commit();  // empty group
  fc::cp_async_wait<1>();
  grp_snap(sb[7], out, kSempty_after_w1, t);
  fc::cp_async_wait<0>();
}

static void test_cp_async_groups() {
  std::vector<uint8_t> hsrc(kGrpBufs * kGrpChunk), got;
  for (size_t i = 0; i < hsrc.size(); ++i) hsrc[i] = cp_src_byte(static_cast<int>(i) + 7);
  DevBuf<uint8_t> dsrc(hsrc.size()), dout(kNumSnaps * kGrpChunk);
  if (!dsrc.up(hsrc)) {
    report(false, "cp.async groups", "upload failed");
    return;
  }
  FC_LAUNCH(dim3(1), dim3(kGrpThreads), 0, 0, cp_async_groups_kernel)(dsrc.p, dout.p);
  const cudaError_t e = launch_result();
  if (e != cudaSuccess || !dout.down(got)) {
    report(false, "cp.async groups", std::string("launch/copy failed: ") + cudaGetErrorString(e));
    return;
  }
  struct Expect {
    int snap, buf;  // buf < 0: poison
    bool emu_only;
    const char* name;
  };
  const Expect ex[] = {
      {kS2g_g0_after_w1, 0, false, "cp.async.wait_group 1 after 2 committed groups: group 0 visible"},
      {kS2g_g1_after_w1, -1, true, "cp.async.wait_group 1 after 2 committed groups: group 1 not landed (0xFF poison)"},
      {kS2g_g1_after_w0, 1, false, "cp.async.wait_group 0: group 1 visible"},
      {kS3g_g0_after_w2, 2, false, "cp.async.wait_group 2 after 3 committed groups: group 0 visible"},
      {kS3g_g1_after_w2, -1, true, "cp.async.wait_group 2 after 3 committed groups: group 1 not landed (0xFF poison)"},
      {kS3g_g2_after_w2, -1, true, "cp.async.wait_group 2 after 3 committed groups: group 2 not landed (0xFF poison)"},
      {kS3g_g1_after_w1, 3, false, "cp.async.wait_group 1: group 1 visible"},
      {kS3g_g2_after_w1, -1, true, "cp.async.wait_group 1: group 2 not landed (0xFF poison)"},
      {kS3g_g2_after_w0, 4, false, "cp.async.wait_group 0: group 2 visible"},
      {kSwa_uncommitted, 5, false, "cp.async.wait_all completes uncommitted copies (1st)"},
      {kSwa_uncommitted2, 6, false, "cp.async.wait_all completes uncommitted copies (2nd)"},
      {kSempty_after_w1, 7, false, "cp.async.wait_group 1 after a group + an empty group: the group visible"},
  };
  for (const Expect& x : ex) {
#if !defined(FASTCONV_EMU)
    if (x.emu_only) continue;
#endif
    Mismatches mm;
    for (int t = 0; t < kGrpThreads; ++t)
      for (int i = 0; i < 16; ++i) {
        const unsigned want = x.buf < 0 ? 0xFFu : hsrc[x.buf * kGrpChunk + 16 * t + i];
        const unsigned g = got[x.snap * kGrpChunk + 16 * t + i];
        if (g != want) mm.add("thread %d byte %d = 0x%02x, want 0x%02x", t, i, g, want);
      }
    report(mm.count == 0, std::string(x.name) + " (32 threads x 16 B)", mm.count ? mm.summary() : "");
  }
}

// =========================================================================================================
// 5. Faults (emulator only: the hardware's behaviour on these is undefined or kills the context)
// =========================================================================================================
//
// ldmatrix §9.7.14.5.15: "The matrix addresses must be naturally aligned accordingly" (16-byte rows).
// cp.async §9.7.9.25.3.1: dst "specifies a location in the shared state space"; alignment per
// "Addresses as Operands" (an address must be naturally aligned to the access size).
// The emulator's contract (runtime.cpp): misaligned operands fault with cudaErrorMisalignedAddress, a
// shared access outside the block's allocations with cudaErrorLaunchFailure; faults are sticky until
// fc_emu::reset_device().

#if defined(FASTCONV_EMU)
__global__ void cp_async_bad_dst_kernel(const uint8_t* src, unsigned int dst_offset) {
  FC_SHARED_ALIGNED(16, uint8_t, sbuf, [64]);
  fc::cp_async_16(fc::smem_addr(sbuf) + dst_offset, src, 16);
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
}

static void expect_fault(const char* name, cudaError_t got, cudaError_t want, const char* report_word) {
  const std::string rep = fc_emu::last_fault_report();
  const bool ok = got == want && rep.find(report_word) != std::string::npos;
  report(ok, name,
         ok ? "" : std::string("got ") + cudaGetErrorName(got) + ", want " + cudaGetErrorName(want) +
                       " with a report naming " + report_word);
  fc_emu::reset_device();
}

static void test_faults() {
  {
    std::vector<unsigned int> off = ld_offsets(4);
    off[5] += 8;  // warp 0 lane 5: row address only 8-byte aligned
    std::vector<unsigned int> out;
    bool io_ok = false;
    const cudaError_t e = ld_run<4, false>(off, out, &io_ok);
    expect_fault("emu fault: ldmatrix row address not 16-byte aligned -> cudaErrorMisalignedAddress", e,
                 cudaErrorMisalignedAddress, "ldmatrix");
  }
  {
    DevBuf<uint8_t> src(16);
    FC_LAUNCH(dim3(1), dim3(32), 0, 0, cp_async_bad_dst_kernel)(src.p, 0x40000u);
    expect_fault("emu fault: cp.async destination outside shared memory -> cudaErrorLaunchFailure",
                 launch_result(), cudaErrorLaunchFailure, "cp.async");
  }
  {
    DevBuf<uint8_t> src(16);
    FC_LAUNCH(dim3(1), dim3(32), 0, 0, cp_async_bad_dst_kernel)(src.p, 8u);
    expect_fault("emu fault: cp.async cp-size 16 to an 8-byte-aligned destination -> cudaErrorMisalignedAddress",
                 launch_result(), cudaErrorMisalignedAddress, "cp.async");
  }
  // After reset_device the device runs kernels again.
  std::vector<unsigned int> out;
  bool io_ok = false;
  const cudaError_t e = ld_run<1, false>(ld_offsets(1), out, &io_ok);
  report(e == cudaSuccess && io_ok && out.size() == kLdWarps * 128u && out[0] == (ld_id(0, 0, 0, 0) | (unsigned(ld_id(0, 0, 0, 1)) << 16)),
         "emu: after fc_emu::reset_device() kernels run again", cudaGetErrorName(e));
}
#endif

int main() {
  test_ldmatrix<1, false>();
  test_ldmatrix<1, true>();
  test_ldmatrix<2, false>();
  test_ldmatrix<2, true>();
  test_ldmatrix<4, false>();
  test_ldmatrix<4, true>();

  for (int set = 0; set < 3; ++set) {
    test_mma_data_discriminates(set);
    test_mma<__half>(set);
    test_mma<__nv_bfloat16>(set);
  }
  test_mma_tf32_data_discriminates();
  test_mma_tf32();

  test_cp_async_sizes();
  test_cp_async_groups();

#if defined(FASTCONV_EMU)
  test_faults();
#endif

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
