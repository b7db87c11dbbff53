// conv2d_igemm_tc.cu — implicit-GEMM convolution on tensor cores (sm_80+ mma.sync), NHWC / KRSC / NPQK.
//
// fprop, per group g (Cg = C/groups, Kg = K/groups), with no im2col buffer:
//   GEMM  M = N·P·Q (output pixels m = (n·P + p)·Q + q), N = Kg (filters), K = R·S·Cg (taps in KRSC
//         order, k = (r·S + s)·Cg + c)
//   A[m][k] = x[n, p·stride_h − pad_h + r·dil_h, q·stride_w − pad_w + s·dil_w, g·Cg + c]  (0 in padding)
//   B[j][k] = w[g·Kg + j, r, s, c]                      (a KRSC filter row is a row of B: "col" layout)
//   y[m, g·Kg + j] = epilogue( Σ_k A[m][k] · B[j][k] )  (csrc/cuda/epilogue.cuh)
//
// Kernel: igemm_kernel<Cfg, T, ConvDir::kFprop, kVec>
//   grid  (ceil(M / BM), ceil(Kg / BN), groups); block Cfg::kThreads = (BM/WM)·(BN/WN) warps.
//   Row table: at the start each block writes, per tile row m, the image offset n·x.n and the window
//   origin (p·stride_h − pad_h, q·stride_w − pad_w) to shared memory (rows past M get an origin far
//   outside the image, so every later bounds check zero-fills them).
//   Mainloop: a Cfg::kStages-deep ring of BM x BK (A) and BN x BK (B) tiles in shared memory; tile
//   kt + kStages − 1 is fetched while tile kt is multiplied.
//     kVec = true : each thread issues 16-byte cp.async copies (8 channels of one tap; 4 for float) with
//                   the source size set to 0 outside the image or past M, Kg, K, which zero-fills the
//                   chunk. Needs Cg and Kg multiples of 8 (4 for float: a chunk never straddles a tap or
//                   the matrix edge) and 16-byte aligned pointers and strides: the launcher proves it.
//     kVec = false: element-wise predicated loads through registers, any C and K (C = 3, odd K).
//   Shared tiles are rows of BK = 32 elements (16 floats) = 4 16-byte chunks, stored at chunk ^ ((row >> 1) & 3):
//   the 8 rows addressed by one ldmatrix (or cp.async) phase then fall in 8 distinct bank groups.
//   Warp (wm, wn) owns the WM x WN sub-tile at (wm·WM, wn·WN). Per 16-wide k step it loads its A
//   fragments (ldmatrix.x4 per 16 rows) and B fragments (ldmatrix.x4 per 16 filters) and issues
//   (WM/16)·(WN/8) mma.sync.aligned.m16n8k16 with FP32 accumulators in registers.
//   Epilogue: straight from the accumulators to y. In each 16x8 mma tile, lane l holds rows l/4 and
//   l/4 + 8, channels 2·(l%4) and 2·(l%4) + 1: one paired 32-bit store per row (kVec), else two
//   predicated scalar stores.
//
// dgrad and wgrad: the same kernel template (igemm_kernel<Cfg, T, kDir, kVec>) and mainloop, with
// other loaders and epilogues. Operands whose rows are contiguous in memory are stored MN-major
// ([BK][BM|BN], chunk ^ (k & 7)) and read with ldmatrix.trans, so every global load stays 16 bytes.
//   dgrad  M = N·H·W (dx pixels), N = Cg, K = R·S·Kg (k = (r·S + s)·Kg + kk). A (K-major) gathers
//          dy[n, (h + pad − r·dil)/stride, (w + pad − s·dil)/stride, kk] through the row table (origin
//          h + pad, w + pad); a tap whose quotient is inexact or out of range is zero-filled (predicated
//          gather, wasting stride_h·stride_w of the MMAs at stride > 1). B (MN-major) = w as
//          [K·R·S][Cg]. Epilogue: dense NHWC dx, one grid z per group.
//   wgrad  M = Kg, N = R·S·Cg (KRSC order), K = N·P·Q pixels, split into slices of k_tiles_per_split
//          k-tiles (blockIdx.z = slice·groups + g). A (MN-major) = dy as [N·P·Q][Kg]; B (MN-major) =
//          x gathered as [N·P·Q][R·S·Cg]. Epilogue: FP32 partial sums into the workspace slice; then
//          wgrad_reduce_kernel (one thread per dw element) adds the slices in order and rounds to T.
// fprop with batch statistics (conv2d_bn_train): igemm_kernel<Cfg, T, kFprop, kVec, kStats = true>
//   stores plain y and, from the same registers, per-channel Welford/Chan partials of the rounded y
//   (what the caller gets back and what BN normalises): each lane takes its 2·kMmaM rows per channel
//   two-pass in registers (mean, then Σ(v − mean)², exact values already at hand), the 8 lanes sharing
//   a channel column merge by Chan's formula over __shfl_xor 4, 8, 16, and lane (l < 4) writes the
//   warp's (mean, M2) for its WM rows to ws as partial[slot][k], slot = blockIdx.x·kWarpsM + warp_m:
//   one writer per element, no atomics, no shared memory, no extra barrier. The count of a slot is
//   implicit (min(WM, M − slot·WM) rows), so the partials cost 8 bytes per channel per 32 or 64 rows.
//   bn_stats_finalize_kernel (bn_stats_finalize.cuh; one block per channel) merges the slots in a fixed
//   order (strided per-thread runs, then a fixed tree) in double and writes save_mean, batch_var (biased)
//   and save_invstd = 1/sqrt(var + eps). Deterministic: the same bits on every run.
//   Why (mean, M2) rather than (Σ, Σ²): a conv output's mean is often large next to its spread (a
//   ReLU'd input through positive filters); Σ² − (Σ)²/n in FP32 then cancels catastrophically
//   (variance < 0 or all of its digits lost), while the Chan merge only ever adds non-negative M2s
//   and a δ² term, as batchnorm2d.cu does for the unfused path.
// float (T = float) on TF32: the same kernel, loaders and mainloop with IgemmConfig<..., kElemBytes = 4>
// (IgemmLargeTf32 / IgemmSmallTf32, the same tiles and shared bytes): BK = 16 floats, so a shared row is
// still 64 bytes = 4 chunks and every swizzle, cp.async and ldmatrix address is the 16-bit path's byte
// for byte; a k step is one mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 per 16x8 tile (8 deep
// instead of 16). K-major fragments (fprop A and B, dgrad A) come from ldmatrix (b16) on the FP32
// data: an 8 x 4-float block is an 8x8 b16 matrix and lane l receives float [l/4][l%4], which is the
// .tf32 fragment layout. MN-major fragments (dgrad B, wgrad A and B) come from 32-bit shared loads
// (ldmatrix.trans would split each float). The FP32 bits reach the tensor core unconverted: it reads
// their TF32 part (sign, exponent, top 10 mantissa bits; the low 13 are ignored, i.e. each operand is
// truncated toward zero), with FP32 accumulation. kVec: 16-byte chunks of 4 floats (Cg % 4 == 0,
// Kg % 4 == 0); element-wise otherwise. Paired epilogue stores are float2; the fprop bias is used as
// it is (no workspace). fprop with batch statistics is 16-bit only.
#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "bn_stats_finalize.cuh"
#include "common.cuh"
#include "epilogue.cuh"
#include "ptx.cuh"

namespace fastconv {
namespace cuda {
namespace {

// ---- tile configurations ----------------------------------------------------------------------------

// Threadblock tile BM x BN x BK (BK in elements), warp tile WM x WN, kStages-deep pipeline, for
// kElemBytes-byte elements: 2 (__half, __nv_bfloat16: mma m16n8k16) or 4 (float: mma m16n8k8 on TF32).
// A shared tile row is 64 bytes either way (BK = 32 or 16), and one mma k step reads 32 bytes of it.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int kStages_, int kElemBytes_ = 2>
struct IgemmConfig {
  static constexpr int kBM = BM_, kBN = BN_, kBK = BK_, kWM = WM_, kWN = WN_, kStages = kStages_;
  static constexpr int kElemBytes = kElemBytes_;
  using Elem = std::conditional_t<kElemBytes == 2, uint16_t, uint32_t>;  // an element's bits in shared memory
  static constexpr int kWarpsM = kBM / kWM, kWarpsN = kBN / kWN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMmaM = kWM / 16, kMmaN = kWN / 8;    // mma tiles per warp
  static constexpr int kInstrK = 32 / kElemBytes;             // mma k: 16 (m16n8k16) or 8 (m16n8k8 .tf32)
  static constexpr int kChunk = 16 / kElemBytes;              // elements per 16-byte chunk
  static constexpr int kChunkShift = kElemBytes == 2 ? 3 : 2;  // log2(kChunk)
  static constexpr int kChunksPerRow = kBK / kChunk;
  static constexpr int kTileA = kBM * kBK, kTileB = kBN * kBK;  // elements per stage
  static constexpr int kRowTableBytes = kBM * 16;
  static constexpr int kSmemBytes = kStages * (kTileA + kTileB) * kElemBytes + kRowTableBytes;

  static_assert(kElemBytes == 2 || kElemBytes == 4, "elements are 16-bit (f16, bf16) or 32-bit (float on TF32)");
  static_assert((1 << kChunkShift) == kChunk, "kChunkShift is log2 of the chunk's element count");
  static_assert(kBK * kElemBytes == 64, "the shared-memory swizzle is written for rows of 4 16-byte chunks (64 bytes)");
  static_assert(kInstrK * kElemBytes == 32 && kBK % kInstrK == 0,
                "an mma k step reads 2 chunks of every row (ldmatrix matrices 0/1 and 2/3), a tile holds whole steps");
  static_assert(kBM % kWM == 0 && kBN % kWN == 0, "warp tiles must divide the threadblock tile");
  static_assert(kWM % 16 == 0 && kWN % 16 == 0, "A and B fragments are loaded 16 rows at a time (ldmatrix.x4)");
  static_assert(kBM % 16 == 0 && kBN % 16 == 0, "the swizzle pairs rows: tiles must be whole 16-row groups");
  static_assert(kThreads % kBK == 0, "element-wise loads give every thread one fixed k column");
  static_assert((kBM * kChunksPerRow) % kThreads == 0 && (kBN * kChunksPerRow) % kThreads == 0,
                "every thread must copy the same number of A and B chunks");
  static_assert(kThreads % kBM == 0 && kThreads % kBN == 0,
                "element-wise MN-major loads give every thread one fixed column (dgrad B, wgrad A and B)");
  static_assert(kBK % (kThreads / (kBM / kChunk)) == 0 && kBK % (kThreads / (kBN / kChunk)) == 0,
                "every thread must copy the same number of MN-major chunks");
  static_assert(kStages >= 2, "the pipeline needs at least two stages");
  static_assert(kSmemBytes <= 160 * 1024, "shared memory must fit an A100's 163 KB per block");
};
// 128x128x32, 2x2 warps of 64x64, 3 stages (51 KB): the large-problem tile.
using IgemmLarge = IgemmConfig<128, 128, 32, 64, 64, 3>;
// 64x64x32, 2x2 warps of 32x32, 3 stages (26 KB): small M or Kg, or too few large tiles to fill the GPU.
using IgemmSmall = IgemmConfig<64, 64, 32, 32, 32, 3>;
// float on TF32: the same tiles, byte for byte (BK = 16 floats per 64-byte row), so the same occupancy
// and the same large/small choice.
using IgemmLargeTf32 = IgemmConfig<128, 128, 16, 64, 64, 3, 4>;
using IgemmSmallTf32 = IgemmConfig<64, 64, 16, 32, 32, 3, 4>;
template <typename T> struct IgemmTiles { using Large = IgemmLarge; using Small = IgemmSmall; };
template <> struct IgemmTiles<float> { using Large = IgemmLargeTf32; using Small = IgemmSmallTf32; };
static_assert(IgemmLargeTf32::kBM == IgemmLarge::kBM && IgemmLargeTf32::kBN == IgemmLarge::kBN &&
                  IgemmSmallTf32::kBM == IgemmSmall::kBM && IgemmSmallTf32::kBN == IgemmSmall::kBN,
              "the host picks tiles and checks grid extents from IgemmLarge / IgemmSmall for every T");

// Large tiles only when they still give two blocks per SM on an H100 (132 SMs).
constexpr int64_t kLargeTileMinBlocks = 264;
constexpr unsigned int kMaxGridYZ = 65535;
// Every int32 index (M, K, H + window reach, ...) stays below this; rows past M get this origin.
constexpr int64_t kIndexLimit = int64_t(1) << 30;
constexpr int kInvalidOrigin = -(1 << 30);
constexpr size_t kWorkspaceAlign = 256;

// ---- kernel parameters (torch-free, 64-bit strides) -------------------------------------------------

// One struct for the three directions (unused fields stay zero). GEMM extents per group: M x Ngemm x
// Kgemm; the output is a dense row-major [M][out_ld] matrix per group, at column g·Ngemm.
template <typename T>
struct IgemmParams {
  const T* x;       // fprop, wgrad: the activation (NHWC, channel stride 1)
  const T* w;       // fprop, dgrad: the filter (KRSC, channel stride 1)
  const T* dy;      // dgrad, wgrad: the output gradient (dense NPQK)
  T* out;           // fprop: y, dgrad: dx (dense NHWC)
  float* partial;   // wgrad: [splits][K][R·S·Cg] FP32 partial sums
  float2* stats;    // fprop with statistics: [ceil(M/BM)·kWarpsM][K] (mean, M2) per warp slot
  ConvEpilogue<T> epi;
  int H, W, P, Q, S, Cg, Kg, K;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  int M, Ngemm, Kgemm;          // per group
  int out_ld;                   // fprop: K, dgrad: C
  int k_tiles_per_split;        // wgrad: k-tiles per blockIdx.z slice; others: all of them
  int64_t xs_n, xs_h, xs_w;     // x strides (channel stride 1)
  int64_t ws_k, ws_r, ws_s;     // w strides (channel stride 1)
  int64_t ys_n;                 // dy image stride (dense: P·Q·K)
};

// One tile row of A (fprop, dgrad): where output pixel m's window starts.
//   fprop: (n·x.n, p·stride_h − pad_h, q·stride_w − pad_w); tap (r, s) reads x at origin + (r, s)·dil.
//   dgrad: (n·dy.n, h + pad_h, w + pad_w); tap (r, s) reads dy at (origin − (r, s)·dil) / stride.
struct RowInfo {
  int64_t base;
  int h0, w0;    // kInvalidOrigin past M: every later bounds check fails
};
static_assert(sizeof(RowInfo) == 16, "the row table is sized at 16 bytes per row");
// PTX wrappers (cp.async, ldmatrix, mma.sync): ptx.cuh.

// Element offset of (row, chunk) in a swizzled K-major tile of 64-byte rows (Cfg::kBK elements).
template <typename Cfg>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * Cfg::kBK + ((chunk ^ ((row >> 1) & 3)) << Cfg::kChunkShift);
}

// Tap (r, s) and channel c of GEMM column k (KRSC order), for k < Kgemm.
struct Tap {
  int r, s, c;
};
__device__ __forceinline__ Tap tap_of(int k, int Cg, int S) {
  const int rs = k / Cg;
  const int r = rs / S;
  return Tap{r, rs - r * S, k - rs * Cg};
}

// MN-major tile of kCols (64 or 128) elements per k row: chunk c of row k at c ^ (k & 7). The 8 k rows
// one ldmatrix.trans matrix addresses share a logical chunk, so they land in 8 distinct bank groups.
template <typename Cfg, int kCols>
__device__ __forceinline__ int swizzle_t(int row, int chunk) {
  return row * kCols + ((chunk ^ (row & 7)) << Cfg::kChunkShift);
}

// Output-pixel decomposition m = (n·P + p)·Q + q (fprop rows, wgrad k columns), or (n·H + h)·W + w.
struct Pixel {
  int n, p, q;
};
__device__ __forceinline__ Pixel pixel_of(int m, int P, int Q) {
  const int PQ = P * Q;
  const int n = m / PQ, pq = m - n * PQ;
  const int p = pq / Q;
  return Pixel{n, p, pq - p * Q};
}

// ---- tile loaders -----------------------------------------------------------------------------------
// K-major tiles ([rows][BK], swizzle) hold operands whose GEMM-k is contiguous in memory (fprop A and
// B, dgrad A); MN-major tiles ([BK][cols], swizzle_t) hold operands whose rows are contiguous (dgrad
// B = w viewed as [Kg·R·S][Cg], wgrad A = dy as [N·P·Q][Kg], wgrad B = gathered x as [N·P·Q][R·S·Cg]).

// fprop, 16-byte chunks. Thread tid copies chunk tid % 4 of rows tid / 4 + i·(kThreads / 4): its k
// column, hence its tap, is the same for every row.
template <typename Cfg, typename T>
__device__ __forceinline__ void load_fprop_vec(const IgemmParams<T>& p, const RowInfo* rows, const T* xg,
                                               const T* wg, int n0, int kt,
                                               typename Cfg::Elem* As, typename Cfg::Elem* Bs, int tid) {
  constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kChunksPerRow;
  const int chunk = tid % Cfg::kChunksPerRow;
  const int k = kt * Cfg::kBK + chunk * Cfg::kChunk;
  const bool k_ok = k < p.Kgemm;
  const Tap t = tap_of(k_ok ? k : 0, p.Cg, p.S);
  const int dh = t.r * p.dil_h, dw = t.s * p.dil_w;
#pragma unroll
  for (int i = 0; i < Cfg::kBM / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kChunksPerRow + i * kRowsPerPass;
    const RowInfo ri = rows[row];
    const int h = ri.h0 + dh, w = ri.w0 + dw;
    const bool ok = k_ok && static_cast<unsigned int>(h) < static_cast<unsigned int>(p.H) &&
                    static_cast<unsigned int>(w) < static_cast<unsigned int>(p.W);
    const T* src = ok ? xg + ri.base + h * p.xs_h + w * p.xs_w + t.c : p.x;
    cp_async_16(smem_addr(As + swizzle<Cfg>(row, chunk)), src, ok ? 16 : 0);
  }
#pragma unroll
  for (int i = 0; i < Cfg::kBN / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kChunksPerRow + i * kRowsPerPass;
    const int j = n0 + row;
    const bool ok = k_ok && j < p.Kg;
    const T* src = ok ? wg + j * p.ws_k + t.r * p.ws_r + t.s * p.ws_s + t.c : p.w;
    cp_async_16(smem_addr(Bs + swizzle<Cfg>(row, chunk)), src, ok ? 16 : 0);
  }
}

// fprop, one predicated 16-bit load per element through registers (any C, K). Thread tid owns k column
// tid % 32 of rows tid / 32 + i·(kThreads / 32).
template <typename Cfg, typename T>
__device__ __forceinline__ void load_fprop_scalar(const IgemmParams<T>& p, const RowInfo* rows, const T* xg,
                                                  const T* wg, int n0, int kt,
                                                  typename Cfg::Elem* As, typename Cfg::Elem* Bs, int tid) {
  constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kBK;
  const int kcol = tid % Cfg::kBK;
  const int k = kt * Cfg::kBK + kcol;
  const bool k_ok = k < p.Kgemm;
  const Tap t = tap_of(k_ok ? k : 0, p.Cg, p.S);
  const int dh = t.r * p.dil_h, dw = t.s * p.dil_w;
  using E = typename Cfg::Elem;  // bit patterns: 0 is +0 in every T
  const E* xb = reinterpret_cast<const E*>(xg);
  const E* wb = reinterpret_cast<const E*>(wg);
  const int sub = kcol % Cfg::kChunk, chunk = kcol / Cfg::kChunk;
#pragma unroll 8
  for (int i = 0; i < Cfg::kBM / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kBK + i * kRowsPerPass;
    const RowInfo ri = rows[row];
    const int h = ri.h0 + dh, w = ri.w0 + dw;
    const bool ok = k_ok && static_cast<unsigned int>(h) < static_cast<unsigned int>(p.H) &&
                    static_cast<unsigned int>(w) < static_cast<unsigned int>(p.W);
    As[swizzle<Cfg>(row, chunk) + sub] = ok ? xb[ri.base + h * p.xs_h + w * p.xs_w + t.c] : E(0);
  }
#pragma unroll 8
  for (int i = 0; i < Cfg::kBN / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kBK + i * kRowsPerPass;
    const int j = n0 + row;
    const bool ok = k_ok && j < p.Kg;
    Bs[swizzle<Cfg>(row, chunk) + sub] = ok ? wb[j * p.ws_k + t.r * p.ws_r + t.s * p.ws_s + t.c] : E(0);
  }
}

// dgrad A: dy gathered through the flipped filter. Tap (r, s) of dx pixel (h, w) reads dy at
// ((h + pad − r·dil) / stride, (w + pad − s·dil) / stride) when both divide exactly and land inside
// [0, P) x [0, Q); every other (pixel, tap) pair contributes 0 (the predicated gather: no residue
// classes, stride² more MMA work than needed for stride > 1).
__device__ __forceinline__ bool dgrad_src(const RowInfo& ri, int dh, int dw, int stride_h, int stride_w, int P, int Q,
                                          int& pp, int& qq) {
  const int hh = ri.h0 - dh, ww = ri.w0 - dw;
  if (hh < 0 || ww < 0) return false;  // also every row past M (origin −2^30)
  pp = hh / stride_h;
  qq = ww / stride_w;
  return pp * stride_h == hh && qq * stride_w == ww && pp < P && qq < Q;
}

// dgrad, 16-byte chunks (Cg % 8 == 0, Kg % 8 == 0). A as fprop's (k = (r·S + s)·Kg + kk, chunk = 8
// filters of one tap); B is MN-major: thread tid copies chunk tid % (BN/8) (8 channels) of k rows
// tid / (BN/8) + i·kRowsPerPass, decoding each row's tap.
template <typename Cfg, typename T>
__device__ __forceinline__ void load_dgrad_vec(const IgemmParams<T>& p, const RowInfo* rows, const T* dyg,
                                               const T* wg, int n0, int kt,
                                               typename Cfg::Elem* As, typename Cfg::Elem* Bs, int tid) {
  {
    constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kChunksPerRow;
    const int chunk = tid % Cfg::kChunksPerRow;
    const int k = kt * Cfg::kBK + chunk * Cfg::kChunk;
    const bool k_ok = k < p.Kgemm;
    const Tap t = tap_of(k_ok ? k : 0, p.Kg, p.S);  // t.c is the filter kk
    const int dh = t.r * p.dil_h, dw = t.s * p.dil_w;
#pragma unroll
    for (int i = 0; i < Cfg::kBM / kRowsPerPass; ++i) {
      const int row = tid / Cfg::kChunksPerRow + i * kRowsPerPass;
      const RowInfo ri = rows[row];
      int pp = 0, qq = 0;
      const bool ok = k_ok && dgrad_src(ri, dh, dw, p.stride_h, p.stride_w, p.P, p.Q, pp, qq);
      const T* src = ok ? dyg + ri.base + (static_cast<int64_t>(pp) * p.Q + qq) * p.K + t.c : p.dy;
      cp_async_16(smem_addr(As + swizzle<Cfg>(row, chunk)), src, ok ? 16 : 0);
    }
  }
  {
    constexpr int kChunksPerRowT = Cfg::kBN / Cfg::kChunk;
    constexpr int kRowsPerPass = Cfg::kThreads / kChunksPerRowT;
    const int chunk = tid % kChunksPerRowT;
    const int c = n0 + chunk * Cfg::kChunk;
#pragma unroll
    for (int i = 0; i < Cfg::kBK / kRowsPerPass; ++i) {
      const int row = tid / kChunksPerRowT + i * kRowsPerPass;
      const int k = kt * Cfg::kBK + row;
      const bool ok = k < p.Kgemm && c < p.Cg;
      const Tap t = tap_of(ok ? k : 0, p.Kg, p.S);
      const T* src = ok ? wg + t.c * p.ws_k + t.r * p.ws_r + t.s * p.ws_s + c : p.w;
      cp_async_16(smem_addr(Bs + swizzle_t<Cfg, Cfg::kBN>(row, chunk)), src, ok ? 16 : 0);
    }
  }
}

// dgrad, element-wise (any C, K). A: thread tid owns k column tid % 32 (as fprop). B: thread tid owns
// channel column tid % BN of k rows tid / BN + i·(kThreads / BN): consecutive threads read consecutive
// channels.
template <typename Cfg, typename T>
__device__ __forceinline__ void load_dgrad_scalar(const IgemmParams<T>& p, const RowInfo* rows, const T* dyg,
                                                  const T* wg, int n0, int kt,
                                                  typename Cfg::Elem* As, typename Cfg::Elem* Bs,
                                                  int tid) {
  using E = typename Cfg::Elem;
  const E* dyb = reinterpret_cast<const E*>(dyg);
  const E* wb = reinterpret_cast<const E*>(wg);
  {
    constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kBK;
    const int kcol = tid % Cfg::kBK;
    const int k = kt * Cfg::kBK + kcol;
    const bool k_ok = k < p.Kgemm;
    const Tap t = tap_of(k_ok ? k : 0, p.Kg, p.S);
    const int dh = t.r * p.dil_h, dw = t.s * p.dil_w;
    const int sub = kcol % Cfg::kChunk, chunk = kcol / Cfg::kChunk;
#pragma unroll 8
    for (int i = 0; i < Cfg::kBM / kRowsPerPass; ++i) {
      const int row = tid / Cfg::kBK + i * kRowsPerPass;
      const RowInfo ri = rows[row];
      int pp = 0, qq = 0;
      const bool ok = k_ok && dgrad_src(ri, dh, dw, p.stride_h, p.stride_w, p.P, p.Q, pp, qq);
      As[swizzle<Cfg>(row, chunk) + sub] =
          ok ? dyb[ri.base + (static_cast<int64_t>(pp) * p.Q + qq) * p.K + t.c] : E(0);
    }
  }
  {
    constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kBN;
    const int col = tid % Cfg::kBN;
    const int c = n0 + col;
    const int sub = col % Cfg::kChunk, chunk = col / Cfg::kChunk;
#pragma unroll 4
    for (int i = 0; i < Cfg::kBK / kRowsPerPass; ++i) {
      const int row = tid / Cfg::kBN + i * kRowsPerPass;
      const int k = kt * Cfg::kBK + row;
      const bool ok = k < p.Kgemm && c < p.Cg;
      const Tap t = tap_of(ok ? k : 0, p.Kg, p.S);
      Bs[swizzle_t<Cfg, Cfg::kBN>(row, chunk) + sub] =
          ok ? wb[t.c * p.ws_k + t.r * p.ws_r + t.s * p.ws_s + c] : E(0);
    }
  }
}

// wgrad, 16-byte chunks (Cg % 8 == 0, Kg % 8 == 0). Both tiles are MN-major with GEMM-k = output pixel
// pix = (n·P + p)·Q + q. A row pix = 8 filters of dy[pix]; B row pix = 8 channels of one tap (r, s) of
// x at (p·stride − pad + r·dil, q·stride − pad + s·dil). Thread tid copies chunk tid % (cols/8) of k
// rows tid / (cols/8) + i·kRowsPerPass; its B column, hence its tap, is fixed for the whole block.
template <typename Cfg, typename T>
__device__ __forceinline__ void load_wgrad_vec(const IgemmParams<T>& p, const T* dyg, const T* xg, int m0, int n0,
                                               int kt, typename Cfg::Elem* As, typename Cfg::Elem* Bs, int tid) {
  {
    constexpr int kChunksPerRowT = Cfg::kBM / Cfg::kChunk;
    constexpr int kRowsPerPass = Cfg::kThreads / kChunksPerRowT;
    const int chunk = tid % kChunksPerRowT;
    const int kk = m0 + chunk * Cfg::kChunk;
#pragma unroll
    for (int i = 0; i < Cfg::kBK / kRowsPerPass; ++i) {
      const int row = tid / kChunksPerRowT + i * kRowsPerPass;
      const int pix = kt * Cfg::kBK + row;
      const bool ok = pix < p.Kgemm && kk < p.Kg;
      const T* src = ok ? dyg + static_cast<int64_t>(pix) * p.K + kk : p.dy;
      cp_async_16(smem_addr(As + swizzle_t<Cfg, Cfg::kBM>(row, chunk)), src, ok ? 16 : 0);
    }
  }
  {
    constexpr int kChunksPerRowT = Cfg::kBN / Cfg::kChunk;
    constexpr int kRowsPerPass = Cfg::kThreads / kChunksPerRowT;
    const int chunk = tid % kChunksPerRowT;
    const int j = n0 + chunk * Cfg::kChunk;
    const bool j_ok = j < p.Ngemm;
    const Tap t = tap_of(j_ok ? j : 0, p.Cg, p.S);
    const int dh = t.r * p.dil_h - p.pad_h, dw = t.s * p.dil_w - p.pad_w;
#pragma unroll
    for (int i = 0; i < Cfg::kBK / kRowsPerPass; ++i) {
      const int row = tid / kChunksPerRowT + i * kRowsPerPass;
      const int pix = kt * Cfg::kBK + row;
      const Pixel px = pixel_of(pix, p.P, p.Q);
      const int h = px.p * p.stride_h + dh, w = px.q * p.stride_w + dw;
      const bool ok = j_ok && pix < p.Kgemm && static_cast<unsigned int>(h) < static_cast<unsigned int>(p.H) &&
                      static_cast<unsigned int>(w) < static_cast<unsigned int>(p.W);
      const T* src = ok ? xg + px.n * p.xs_n + h * p.xs_h + w * p.xs_w + t.c : p.x;
      cp_async_16(smem_addr(Bs + swizzle_t<Cfg, Cfg::kBN>(row, chunk)), src, ok ? 16 : 0);
    }
  }
}

// wgrad, element-wise (any C, K): thread tid owns column tid % cols of k rows tid / cols + i·(kThreads /
// cols), so consecutive threads read consecutive filters (A) or channels (B).
template <typename Cfg, typename T>
__device__ __forceinline__ void load_wgrad_scalar(const IgemmParams<T>& p, const T* dyg, const T* xg, int m0,
                                                  int n0, int kt,
                                                  typename Cfg::Elem* As, typename Cfg::Elem* Bs, int tid) {
  using E = typename Cfg::Elem;
  const E* dyb = reinterpret_cast<const E*>(dyg);
  const E* xb = reinterpret_cast<const E*>(xg);
  {
    constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kBM;
    const int col = tid % Cfg::kBM;
    const int kk = m0 + col;
    const int sub = col % Cfg::kChunk, chunk = col / Cfg::kChunk;
#pragma unroll 4
    for (int i = 0; i < Cfg::kBK / kRowsPerPass; ++i) {
      const int row = tid / Cfg::kBM + i * kRowsPerPass;
      const int pix = kt * Cfg::kBK + row;
      const bool ok = pix < p.Kgemm && kk < p.Kg;
      As[swizzle_t<Cfg, Cfg::kBM>(row, chunk) + sub] = ok ? dyb[static_cast<int64_t>(pix) * p.K + kk] : E(0);
    }
  }
  {
    constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kBN;
    const int col = tid % Cfg::kBN;
    const int j = n0 + col;
    const bool j_ok = j < p.Ngemm;
    const Tap t = tap_of(j_ok ? j : 0, p.Cg, p.S);
    const int dh = t.r * p.dil_h - p.pad_h, dw = t.s * p.dil_w - p.pad_w;
    const int sub = col % Cfg::kChunk, chunk = col / Cfg::kChunk;
#pragma unroll 4
    for (int i = 0; i < Cfg::kBK / kRowsPerPass; ++i) {
      const int row = tid / Cfg::kBN + i * kRowsPerPass;
      const int pix = kt * Cfg::kBK + row;
      const Pixel px = pixel_of(pix, p.P, p.Q);
      const int h = px.p * p.stride_h + dh, w = px.q * p.stride_w + dw;
      const bool ok = j_ok && pix < p.Kgemm && static_cast<unsigned int>(h) < static_cast<unsigned int>(p.H) &&
                      static_cast<unsigned int>(w) < static_cast<unsigned int>(p.W);
      Bs[swizzle_t<Cfg, Cfg::kBN>(row, chunk) + sub] = ok ? xb[px.n * p.xs_n + h * p.xs_h + w * p.xs_w + t.c] : E(0);
    }
  }
}

// ---- the shared mainloop ----------------------------------------------------------------------------

// Element col of k row krow of an MN-major tile of kCols elements per row (one 32-bit shared load).
template <typename Cfg, int kCols>
__device__ __forceinline__ unsigned int ld_mn(const typename Cfg::Elem* tile, int krow, int col) {
  return tile[swizzle_t<Cfg, kCols>(krow, col / Cfg::kChunk) + col % Cfg::kChunk];
}

// acc += A · Bᵀ over k-tiles [kt0, kt1) through the kStages-deep cp.async ring. load(stage, kt) fills one
// stage; kATrans / kBTrans say the tile is MN-major (16-bit: read with ldmatrix.trans; 32-bit: with
// 32-bit shared loads, since ldmatrix.trans would transpose the halves of each float).
//
// 32-bit elements (float on TF32, mma m16n8k8): a K-major 8 x 4-float block is an 8x8 b16 matrix, and
// ldmatrix gives lane l its b16 elements [l/4][2(l%4)], [l/4][2(l%4)+1] = float [l/4][l%4]: with
// matrices (rows 0-7 | 8-15) x (k 0-3 | 4-7) in the order below that is a0 = A[g][t], a1 = A[g+8][t],
// a2 = A[g][t+4], a3 = A[g+8][t+4] and b0 = B[t][g], b1 = B[t+4][g] (g = l/4, t = l%4), the .tf32
// fragments of m16n8k8. Each k step still reads chunks 2kk and 2kk + 1 of a row, so the addressing is
// the 16-bit path's, byte for byte. The FP32 bits go to the tensor core as they are (it reads their
// TF32 part: sign, exponent, top 10 mantissa bits).
template <typename Cfg, typename T, bool kATrans, bool kBTrans, typename Load>
__device__ __forceinline__ void mainloop(float (&acc)[Cfg::kMmaM][Cfg::kMmaN][4], const typename Cfg::Elem* smem_a,
                                         const typename Cfg::Elem* smem_b, int kt0, int kt1, int lane, int warp_m,
                                         int warp_n, Load&& load) {
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, BK = Cfg::kBK, WM = Cfg::kWM, WN = Cfg::kWN;
  constexpr int kStages = Cfg::kStages, kMmaM = Cfg::kMmaM, kMmaN = Cfg::kMmaN, kInstrK = Cfg::kInstrK;
  constexpr bool kTf32 = Cfg::kElemBytes == 4;
  static_assert(sizeof(T) == Cfg::kElemBytes, "the tile config is for another element size");
  static_assert(!kATrans || BM / Cfg::kChunk >= 8, "an MN-major tile needs at least 8 chunks per row for its swizzle");
  static_assert(!kBTrans || BN / Cfg::kChunk >= 8, "an MN-major tile needs at least 8 chunks per row for its swizzle");
  const int g = lane >> 2, tg = lane & 3;  // the fragments' groupID and threadID_in_group (32-bit MN-major)
  const int num_k_tiles = kt1 - kt0;

  // Prologue: tiles 0 .. kStages − 2 in flight (one commit group each, empty past the last tile).
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < num_k_tiles) load(st, kt0 + st);
    cp_async_commit();
  }

  for (int t = 0; t < num_k_tiles; ++t) {
    // kStages − 1 + t groups are committed; allowing kStages − 2 pending means group t has landed.
    cp_async_wait<kStages - 2>();
    // Tile t is visible to every thread, and every thread is done with tile t − 1, whose stage the
    // next load overwrites.
    __syncthreads();
    const int next = t + kStages - 1;
    if (next < num_k_tiles) load(next % kStages, kt0 + next);
    cp_async_commit();

    const typename Cfg::Elem* As = smem_a + (t % kStages) * Cfg::kTileA;
    const typename Cfg::Elem* Bs = smem_b + (t % kStages) * Cfg::kTileB;
#pragma unroll
    for (int kk = 0; kk < BK / kInstrK; ++kk) {
      unsigned int af[kMmaM][4], bf[kMmaN][2];
#pragma unroll
      for (int i = 0; i < kMmaM; ++i) {
        if constexpr (kATrans && kTf32) {
          // a0..a3 = A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]; A[m][k] is k row k, column m.
          const int krow = kk * kInstrK + tg, m = warp_m * WM + i * 16 + g;
          af[i][0] = ld_mn<Cfg, BM>(As, krow, m);
          af[i][1] = ld_mn<Cfg, BM>(As, krow, m + 8);
          af[i][2] = ld_mn<Cfg, BM>(As, krow + 4, m);
          af[i][3] = ld_mn<Cfg, BM>(As, krow + 4, m + 8);
        } else if constexpr (kATrans) {
          // Matrix l/8 = (rows 0-7 | 8-15) x (k 0-7 | 8-15) in a0..a3 order; lane l gives k row l % 8.
          const int krow = kk * kInstrK + ((lane >> 4) << 3) + (lane & 7);
          const int mchunk = (warp_m * WM + i * 16) / 8 + ((lane >> 3) & 1);
          ldmatrix_x4_trans(af[i], smem_addr(As + swizzle_t<Cfg, BM>(krow, mchunk)));
        } else {
          // Lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15: a0..a3.
          const int row = warp_m * WM + i * 16 + (lane & 15);
          ldmatrix_x4(af[i], smem_addr(As + swizzle<Cfg>(row, kk * 2 + (lane >> 4))));
        }
      }
#pragma unroll
      for (int j = 0; j < kMmaN; j += 2) {
        // Matrices: (cols 0-7, k 0-7), (0-7, k 8-15), (8-15, k 0-7), (8-15, k 8-15) = b0, b1 of n-tiles
        // j and j + 1.
        unsigned int r[4];
        if constexpr (kBTrans && kTf32) {
          // b0, b1 = B[t][g], B[t+4][g] of n-tiles j and j + 1; B[k][n] is k row k, column n.
          const int krow = kk * kInstrK + tg, n = warp_n * WN + j * 8 + g;
          r[0] = ld_mn<Cfg, BN>(Bs, krow, n);
          r[1] = ld_mn<Cfg, BN>(Bs, krow + 4, n);
          r[2] = ld_mn<Cfg, BN>(Bs, krow, n + 8);
          r[3] = ld_mn<Cfg, BN>(Bs, krow + 4, n + 8);
        } else if constexpr (kBTrans) {
          const int krow = kk * kInstrK + (((lane >> 3) & 1) << 3) + (lane & 7);
          const int nchunk = (warp_n * WN + j * 8) / 8 + (lane >> 4);
          ldmatrix_x4_trans(r, smem_addr(Bs + swizzle_t<Cfg, BN>(krow, nchunk)));
        } else {
          const int row = warp_n * WN + j * 8 + (lane & 7) + ((lane >> 4) << 3);
          ldmatrix_x4(r, smem_addr(Bs + swizzle<Cfg>(row, kk * 2 + ((lane >> 3) & 1))));
        }
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) {
          if constexpr (kTf32) mma_1688_tf32(acc[i][j], af[i], bf[j]);
          else mma_16816<T>(acc[i][j], af[i], bf[j]);
        }
    }
  }
  cp_async_wait<0>();
}

// ---- the kernel -------------------------------------------------------------------------------------

// y[off], y[off + 1] (channels ch, ch + 1) through the epilogue with one paired store: a 32-bit
// __half2 / __nv_bfloat162 (ConvEpilogue::store2), or for float a 64-bit float2 (off even, y and
// residual 8-byte aligned).
template <typename T>
__device__ __forceinline__ void store_pair(const ConvEpilogue<T>& epi, T* y, int64_t off, int64_t ch, float v0,
                                           float v1) {
  if constexpr (std::is_same<T, float>::value) {
    float2 res = make_float2(0.f, 0.f);
    if (epi.residual != nullptr) res = *reinterpret_cast<const float2*>(epi.residual + off);
    *reinterpret_cast<float2*>(y + off) = make_float2(epi.apply(v0, ch, res.x), epi.apply(v1, ch + 1, res.y));
  } else {
    epi.store2(y, off, ch, v0, v1);
  }
}

template <typename Cfg, typename T, ConvDir kDir, bool kVec, bool kStats = false>
__global__ void __launch_bounds__(Cfg::kThreads, 1) igemm_kernel(const IgemmParams<T> p) {
  static_assert(!kStats || kDir == ConvDir::kFprop, "batch statistics are an fprop epilogue");
  constexpr int BM = Cfg::kBM, WM = Cfg::kWM, WN = Cfg::kWN;
  constexpr int kStages = Cfg::kStages, kMmaM = Cfg::kMmaM, kMmaN = Cfg::kMmaN;
  FC_DYNAMIC_SHARED(128, unsigned char, smem);
  using E = typename Cfg::Elem;
  E* smem_a = reinterpret_cast<E*>(smem);                            // [kStages][BM·BK]
  E* smem_b = smem_a + kStages * Cfg::kTileA;                        // [kStages][BN·BK]
  RowInfo* rows = reinterpret_cast<RowInfo*>(smem_b + kStages * Cfg::kTileB);  // [BM], fprop and dgrad

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % Cfg::kWarpsM, warp_n = warp / Cfg::kWarpsM;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * Cfg::kBN;
  const int groups = p.K / p.Kg;
  // wgrad: blockIdx.z = split · groups + g; split handles k-tiles [split, split + 1)·k_tiles_per_split.
  const int g = static_cast<int>(blockIdx.z) % groups, split = static_cast<int>(blockIdx.z) / groups;
  const int num_k_tiles = (p.Kgemm + Cfg::kBK - 1) / Cfg::kBK;
  const int kt0 = split * p.k_tiles_per_split;
  const int kt1 = min(num_k_tiles, kt0 + p.k_tiles_per_split);

  if constexpr (kDir != ConvDir::kWgrad) {
    for (int i = tid; i < BM; i += Cfg::kThreads) {
      const int m = m0 + i;
      RowInfo ri{0, kInvalidOrigin, kInvalidOrigin};
      if (m < p.M) {
        if constexpr (kDir == ConvDir::kFprop) {
          const Pixel px = pixel_of(m, p.P, p.Q);
          ri.base = px.n * p.xs_n;
          ri.h0 = px.p * p.stride_h - p.pad_h;
          ri.w0 = px.q * p.stride_w - p.pad_w;
        } else {
          const Pixel px = pixel_of(m, p.H, p.W);
          ri.base = px.n * p.ys_n;
          ri.h0 = px.p + p.pad_h;
          ri.w0 = px.q + p.pad_w;
        }
      }
      rows[i] = ri;
    }
    __syncthreads();
  }

  float acc[kMmaM][kMmaN][4];
#pragma unroll
  for (int i = 0; i < kMmaM; ++i)
#pragma unroll
    for (int j = 0; j < kMmaN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  if constexpr (kDir == ConvDir::kFprop) {
    const T* xg = p.x + static_cast<int64_t>(g) * p.Cg;
    const T* wg = p.w + static_cast<int64_t>(g) * p.Kg * p.ws_k;
    mainloop<Cfg, T, false, false>(acc, smem_a, smem_b, kt0, kt1, lane, warp_m, warp_n, [&](int stage, int kt) {
      E* As = smem_a + stage * Cfg::kTileA;
      E* Bs = smem_b + stage * Cfg::kTileB;
      if constexpr (kVec) load_fprop_vec<Cfg, T>(p, rows, xg, wg, n0, kt, As, Bs, tid);
      else load_fprop_scalar<Cfg, T>(p, rows, xg, wg, n0, kt, As, Bs, tid);
    });
  } else if constexpr (kDir == ConvDir::kDgrad) {
    const T* dyg = p.dy + static_cast<int64_t>(g) * p.Kg;
    const T* wg = p.w + static_cast<int64_t>(g) * p.Kg * p.ws_k;
    mainloop<Cfg, T, false, true>(acc, smem_a, smem_b, kt0, kt1, lane, warp_m, warp_n, [&](int stage, int kt) {
      E* As = smem_a + stage * Cfg::kTileA;
      E* Bs = smem_b + stage * Cfg::kTileB;
      if constexpr (kVec) load_dgrad_vec<Cfg, T>(p, rows, dyg, wg, n0, kt, As, Bs, tid);
      else load_dgrad_scalar<Cfg, T>(p, rows, dyg, wg, n0, kt, As, Bs, tid);
    });
  } else {
    const T* dyg = p.dy + static_cast<int64_t>(g) * p.Kg;
    const T* xg = p.x + static_cast<int64_t>(g) * p.Cg;
    mainloop<Cfg, T, true, true>(acc, smem_a, smem_b, kt0, kt1, lane, warp_m, warp_n, [&](int stage, int kt) {
      E* As = smem_a + stage * Cfg::kTileA;
      E* Bs = smem_b + stage * Cfg::kTileB;
      if constexpr (kVec) load_wgrad_vec<Cfg, T>(p, dyg, xg, m0, n0, kt, As, Bs, tid);
      else load_wgrad_scalar<Cfg, T>(p, dyg, xg, m0, n0, kt, As, Bs, tid);
    });
  }

  // Epilogue. In each 16x8 mma tile lane l holds rows l/4 and l/4 + 8, columns 2·(l%4) and 2·(l%4) + 1.
  // fprop / dgrad: out is dense [M][out_ld] (NHWC), column g·Ngemm + jj, through ConvEpilogue.
  // wgrad: FP32 partial [split][K][Ngemm] (KRSC order), reduced by wgrad_reduce_kernel.
  const int64_t partial_split = static_cast<int64_t>(split) * p.K * p.Ngemm;
#pragma unroll
  for (int i = 0; i < kMmaM; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + warp_m * WM + i * 16 + (lane >> 2) + half * 8;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < kMmaN; ++j) {
        const int jj = n0 + warp_n * WN + j * 8 + (lane & 3) * 2;  // column inside the group
        const float v0 = acc[i][j][2 * half], v1 = acc[i][j][2 * half + 1];
        if constexpr (kDir == ConvDir::kWgrad) {
          const int64_t off = partial_split + (static_cast<int64_t>(g) * p.Kg + m) * p.Ngemm + jj;
          if constexpr (kVec) {
            // Ngemm a multiple of the chunk and jj even: the pair is whole and 8-byte aligned.
            if (jj < p.Ngemm) *reinterpret_cast<float2*>(p.partial + off) = make_float2(v0, v1);
          } else {
            if (jj < p.Ngemm) p.partial[off] = v0;
            if (jj + 1 < p.Ngemm) p.partial[off + 1] = v1;
          }
        } else {
          const int64_t ch = static_cast<int64_t>(g) * p.Ngemm + jj;
          const int64_t off = static_cast<int64_t>(m) * p.out_ld + ch;
          if constexpr (kVec) {
            // Ngemm a multiple of the chunk and jj even: the pair is entirely inside or entirely outside
            // the group, and off is even.
            if (jj < p.Ngemm) store_pair(p.epi, p.out, off, ch, v0, v1);
          } else {
            if (jj < p.Ngemm) p.epi.store(p.out, off, ch, v0);
            if (jj + 1 < p.Ngemm) p.epi.store(p.out, off + 1, ch + 1, v1);
          }
        }
      }
    }
  }

  if constexpr (kStats) {
    // Per warp slot and channel column: (mean, M2) of the rounded outputs of its rows below M. Every
    // lane runs this (the shuffles need all 32); rows past M and channels past Kg are left out.
    const int slot_m0 = m0 + warp_m * WM;
    float2* part = p.stats + (static_cast<int64_t>(blockIdx.x) * Cfg::kWarpsM + warp_m) * p.K +
                   static_cast<int64_t>(g) * p.Ngemm;
#pragma unroll
    for (int j = 0; j < kMmaN; ++j) {
      const int jj = n0 + warp_n * WN + j * 8 + (lane & 3) * 2;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float n = 0.f, sum = 0.f;
#pragma unroll
        for (int i = 0; i < kMmaM; ++i)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int m = slot_m0 + i * 16 + (lane >> 2) + half * 8;
            if (m < p.M) {
              n += 1.f;
              sum += to_acc<T>(from_acc<T>(acc[i][j][2 * half + c]));
            }
          }
        float mean = n > 0.f ? sum / n : 0.f, m2 = 0.f;
#pragma unroll
        for (int i = 0; i < kMmaM; ++i)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int m = slot_m0 + i * 16 + (lane >> 2) + half * 8;
            if (m < p.M) {
              const float d = to_acc<T>(from_acc<T>(acc[i][j][2 * half + c])) - mean;
              m2 += d * d;
            }
          }
        merge_column_lanes(mean, m2, n);
        if ((lane >> 2) == 0 && jj + c < p.Ngemm) part[jj + c] = make_float2(mean, m2);
      }
    }
  }
}

// wgrad's second pass: dw[e] = Σ_split partial[split][e] in split order (deterministic, no atomics),
// rounded once to T. dw is dense KRSC, the partials' own order. One thread per element, grid-stride.
template <typename T>
__global__ void __launch_bounds__(256) wgrad_reduce_kernel(const float* __restrict__ partial, int splits,
                                                           int64_t total, T* __restrict__ dw) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int sp = 0; sp < splits; ++sp) v += partial[sp * total + e];
    dw[e] = from_acc<T>(v);
  }
}

// ---- host side --------------------------------------------------------------------------------------

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

bool same_strides(const Strides4& a, const Strides4& b) { return a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w; }

// Dense NHWC / NPQK / KRSC (the layouts the kernels index without strides).
bool dense_nhwc_x(const Conv2dShape& s) { return same_strides(s.x, channels_last_strides(s.C, s.H, s.W)); }
bool dense_nhwc_y(const Conv2dShape& s) { return same_strides(s.y, channels_last_strides(s.K, s.P, s.Q)); }
bool dense_krsc_w(const Conv2dShape& s) { return same_strides(s.w, channels_last_strides(s.Cg(), s.R, s.S)); }

// Shape checks common to the three directions: every index the kernels keep in 32 bits (with room for
// the window reach), the grid's y and z extents.
bool common_shape_ok(const Conv2dShape& s) {
  if (!s.valid() || s.N <= 0 || s.P <= 0 || s.Q <= 0) return false;
  const int64_t reach_h = s.P * s.stride_h + s.H + s.pad_h + (s.R - 1) * s.dil_h;
  const int64_t reach_w = s.Q * s.stride_w + s.W + s.pad_w + (s.S - 1) * s.dil_w;
  const int64_t limits[] = {s.fprop_m(), s.fprop_k(), s.dgrad_m(), s.dgrad_k(), s.wgrad_n(), s.wgrad_k(),
                            reach_h,     reach_w,     s.K,         s.C};
  for (int64_t v : limits) {
    if (v >= kIndexLimit) return false;
  }
  return s.groups <= kMaxGridYZ;
}

bool fprop_shape_ok(const Conv2dShape& s) {
  return common_shape_ok(s) && s.x.c == 1 && s.w.c == 1 && dense_nhwc_y(s) &&
         ceil_div(s.Kg(), IgemmSmall::kBN) <= kMaxGridYZ;
}

bool dgrad_shape_ok(const Conv2dShape& s) {
  return common_shape_ok(s) && dense_nhwc_x(s) && s.w.c == 1 && dense_nhwc_y(s) &&
         ceil_div(s.Cg(), IgemmSmall::kBN) <= kMaxGridYZ;
}

bool wgrad_shape_ok(const Conv2dShape& s) {
  return common_shape_ok(s) && s.x.c == 1 && dense_krsc_w(s) && dense_nhwc_y(s) &&
         ceil_div(s.Kg(), IgemmSmall::kBM) <= 0x7fffffffLL && ceil_div(s.wgrad_n(), IgemmSmall::kBN) <= kMaxGridYZ;
}

template <typename T>
IgemmParams<T> make_params(const Conv2dShape& s) {
  IgemmParams<T> p{};
  p.H = static_cast<int>(s.H);
  p.W = static_cast<int>(s.W);
  p.P = static_cast<int>(s.P);
  p.Q = static_cast<int>(s.Q);
  p.S = static_cast<int>(s.S);
  p.Cg = static_cast<int>(s.Cg());
  p.Kg = static_cast<int>(s.Kg());
  p.K = static_cast<int>(s.K);
  p.pad_h = static_cast<int>(s.pad_h);
  p.pad_w = static_cast<int>(s.pad_w);
  p.stride_h = static_cast<int>(s.stride_h);
  p.stride_w = static_cast<int>(s.stride_w);
  p.dil_h = static_cast<int>(s.dil_h);
  p.dil_w = static_cast<int>(s.dil_w);
  p.k_tiles_per_split = static_cast<int>(kIndexLimit);  // one split: every k-tile
  p.xs_n = s.x.n;
  p.xs_h = s.x.h;
  p.xs_w = s.x.w;
  p.ws_k = s.w.n;
  p.ws_r = s.w.h;
  p.ws_s = s.w.w;
  p.ys_n = s.P * s.Q * s.K;
  return p;
}

// The 16-byte paths' preconditions: whole chunks per tap and per group, 16-byte aligned rows.
template <typename T>
bool vec_ok(const Conv2dShape& s, std::initializer_list<const void*> ptrs) {
  constexpr int64_t V = 16 / sizeof(T);
  bool ok = s.Cg() % V == 0 && s.Kg() % V == 0 && s.x.n % V == 0 && s.x.h % V == 0 && s.x.w % V == 0 &&
            s.w.n % V == 0 && s.w.h % V == 0 && s.w.w % V == 0;
  for (const void* ptr : ptrs) ok = ok && (ptr == nullptr || aligned16(ptr));
  return ok;
}

// Large tiles only when both GEMM extents fill them and they still give two blocks per SM.
template <typename Cfg>
int64_t tiles(int64_t M, int64_t N, int64_t groups) {
  return ceil_div(M, Cfg::kBM) * ceil_div(N, Cfg::kBN) * groups;
}
bool use_large(int64_t M, int64_t N, int64_t groups) {
  return N >= IgemmLarge::kBN && M >= IgemmLarge::kBM && tiles<IgemmLarge>(M, N, groups) >= kLargeTileMinBlocks;
}

template <typename Cfg, typename T, ConvDir kDir, bool kVec, bool kStats = false>
cudaError_t launch_cfg(const IgemmParams<T>& p, unsigned int grid_z, cudaStream_t stream) {
  const auto kernel = igemm_kernel<Cfg, T, kDir, kVec, kStats>;
  // Above 48 KB, dynamic shared memory must be opted into (per kernel, idempotent).
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned int>(ceil_div(p.M, Cfg::kBM)),
                  static_cast<unsigned int>(ceil_div(p.Ngemm, Cfg::kBN)), grid_z);
  FC_LAUNCH(grid, Cfg::kThreads, Cfg::kSmemBytes, stream, kernel)(p);
  return launch_status();
}

template <ConvDir kDir, typename T, bool kStats = false>
cudaError_t launch_dir(const IgemmParams<T>& p, bool large, bool vec, unsigned int grid_z, cudaStream_t stream) {
  using Large = typename IgemmTiles<T>::Large;
  using Small = typename IgemmTiles<T>::Small;
  if (large) {
    return vec ? launch_cfg<Large, T, kDir, true, kStats>(p, grid_z, stream)
               : launch_cfg<Large, T, kDir, false, kStats>(p, grid_z, stream);
  }
  return vec ? launch_cfg<Small, T, kDir, true, kStats>(p, grid_z, stream)
             : launch_cfg<Small, T, kDir, false, kStats>(p, grid_z, stream);
}

template <typename T>
IgemmParams<T> fprop_params(const Conv2dShape& s, const T* x, const T* w, const ConvEpilogue<T>& epi, T* y) {
  IgemmParams<T> p = make_params<T>(s);
  p.x = x;
  p.w = w;
  p.out = y;
  p.epi = epi;
  p.M = static_cast<int>(s.fprop_m());
  p.Ngemm = static_cast<int>(s.fprop_n());
  p.Kgemm = static_cast<int>(s.fprop_k());
  p.out_ld = static_cast<int>(s.K);
  return p;
}

template <typename T>
cudaError_t launch_fprop(const Conv2dShape& s, const T* x, const T* w, const ConvEpilogue<T>& epi, T* y,
                         cudaStream_t stream) {
  if (!fprop_shape_ok(s) || x == nullptr || w == nullptr || y == nullptr) return cudaErrorInvalidValue;
  const IgemmParams<T> p = fprop_params<T>(s, x, w, epi, y);
  const bool vec = vec_ok<T>(s, {x, w, y, epi.residual});
  return launch_dir<ConvDir::kFprop>(p, use_large(p.M, p.Ngemm, s.groups), vec, static_cast<unsigned int>(s.groups),
                                     stream);
}

// wgrad's split-K plan: the tile config, the number of k-slices and k-tiles per slice. Enough slices to
// give kLargeTileMinBlocks blocks, each at least kMinTilesPerSplit k-tiles long, the grid's z extent and
// the FP32 partials within workspace_limit (but always at least one slice: every wgrad goes through
// the workspace so that the result is rounded once, after the fixed-order sum).
constexpr int64_t kMinTilesPerSplit = 8;
struct WgradPlan {
  bool large;
  int64_t splits, tiles_per_split;
};
size_t wgrad_split_bytes(const Conv2dShape& s) {
  return static_cast<size_t>(s.K) * static_cast<size_t>(s.wgrad_n()) * sizeof(float);
}
// elem_bytes 2 or 4: the k-tile (BK elements) is 32 or 16 pixels deep.
WgradPlan wgrad_plan(const Conv2dShape& s, size_t workspace_limit, int elem_bytes) {
  WgradPlan plan{};
  const int64_t M = s.wgrad_m(), N = s.wgrad_n();
  plan.large = M >= IgemmLarge::kBM && N >= IgemmLarge::kBN;
  const int64_t mn_blocks = plan.large ? tiles<IgemmLarge>(M, N, s.groups) : tiles<IgemmSmall>(M, N, s.groups);
  const int64_t k_tiles = ceil_div(s.wgrad_k(), elem_bytes == 4 ? IgemmSmallTf32::kBK : IgemmSmall::kBK);
  int64_t splits = ceil_div(kLargeTileMinBlocks, mn_blocks);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, k_tiles / kMinTilesPerSplit));
  splits = std::min<int64_t>(splits, kMaxGridYZ / s.groups);
  splits = std::min<int64_t>(splits, static_cast<int64_t>(workspace_limit / wgrad_split_bytes(s)));
  splits = std::max<int64_t>(splits, 1);
  plan.tiles_per_split = ceil_div(k_tiles, splits);
  plan.splits = ceil_div(k_tiles, plan.tiles_per_split);  // no empty slice
  return plan;
}

size_t align_workspace(size_t bytes) { return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// fprop with statistics: the tile config launch_fprop would pick, and its warp slots (kWarpsM per
// M tile; both configs have 2, of WM = BM / 2 rows).
struct StatsPlan {
  bool large;
  int64_t slots;
  int rows_per_slot;
};
StatsPlan stats_plan(const Conv2dShape& s) {
  StatsPlan plan{};
  plan.large = use_large(s.fprop_m(), s.fprop_n(), s.groups);
  const int bm = plan.large ? IgemmLarge::kBM : IgemmSmall::kBM;
  plan.rows_per_slot = plan.large ? IgemmLarge::kWM : IgemmSmall::kWM;
  static_assert(IgemmLarge::kWarpsM * IgemmLarge::kWM == IgemmLarge::kBM &&
                    IgemmSmall::kWarpsM * IgemmSmall::kWM == IgemmSmall::kBM,
                "a slot is one warp row of an M tile");
  plan.slots = ceil_div(s.fprop_m(), bm) * (bm / plan.rows_per_slot);
  return plan;
}
size_t stats_workspace_bytes(const Conv2dShape& s) {
  return align_workspace(static_cast<size_t>(stats_plan(s).slots) * static_cast<size_t>(s.K) * sizeof(float2));
}

}  // namespace

// elem_bytes 2 (__half, __nv_bfloat16) and 4 (float, on TF32): the same shapes, every direction.
bool conv2d_implicit_gemm_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  if (elem_bytes != 2 && elem_bytes != 4) return false;
  switch (dir) {
    case ConvDir::kFprop: return fprop_shape_ok(s);
    case ConvDir::kDgrad: return dgrad_shape_ok(s);
    case ConvDir::kWgrad: return wgrad_shape_ok(s);
  }
  return false;
}

// fprop: none (the epilogue reads the bias in y's type); wgrad: the split-K partials.
size_t conv2d_implicit_gemm_workspace_bytes(const Conv2dShape& s, ConvDir dir, int elem_bytes,
                                            size_t workspace_limit) {
  if (elem_bytes != 2 && elem_bytes != 4) return 0;
  switch (dir) {
    case ConvDir::kFprop: return 0;
    case ConvDir::kDgrad: return 0;
    case ConvDir::kWgrad:
      if (!wgrad_shape_ok(s)) return 0;
      return align_workspace(static_cast<size_t>(wgrad_plan(s, workspace_limit, elem_bytes).splits) *
                             wgrad_split_bytes(s));
  }
  return 0;
}

template <typename T>
cudaError_t conv2d_implicit_gemm_fprop_fused(const Conv2dShape& s, const T* x, const T* w, const AccT<T>* scale,
                                             const AccT<T>* bias, const T* residual, bool relu, T* y, void* /*ws*/,
                                             size_t /*ws_bytes*/, cudaStream_t stream) {
  ConvEpilogue<T> epi;
  epi.scale = scale;
  epi.bias = bias;
  epi.residual = residual;
  epi.relu = relu;
  return launch_fprop<T>(s, x, w, epi, y, stream);
}

template <typename T>
cudaError_t conv2d_implicit_gemm_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y,
                                       void* /*ws*/, size_t /*ws_bytes*/, cudaStream_t stream) {
  ConvEpilogue<T> epi;
  epi.conv_bias = bias;
  return launch_fprop<T>(s, x, w, epi, y, stream);
}

size_t conv2d_implicit_gemm_fprop_stats_workspace_bytes(const Conv2dShape& s) {
  if (!fprop_shape_ok(s)) return 0;
  return stats_workspace_bytes(s);
}

template <typename T>
cudaError_t conv2d_implicit_gemm_fprop_stats(const Conv2dShape& s, const T* x, const T* w, T* y, float* save_mean,
                                             float* save_invstd, float* batch_var, double eps, void* ws,
                                             size_t ws_bytes, cudaStream_t stream) {
  if (!fprop_shape_ok(s) || x == nullptr || w == nullptr || y == nullptr || save_mean == nullptr ||
      save_invstd == nullptr || batch_var == nullptr || ws == nullptr || !aligned16(ws) ||
      ws_bytes < stats_workspace_bytes(s) || !(eps >= 0.0)) {
    return cudaErrorInvalidValue;
  }
  const StatsPlan plan = stats_plan(s);
  IgemmParams<T> p = fprop_params<T>(s, x, w, ConvEpilogue<T>{}, y);
  p.stats = static_cast<float2*>(ws);
  const bool vec = vec_ok<T>(s, {x, w, y});
  cudaError_t err = launch_dir<ConvDir::kFprop, T, true>(p, plan.large, vec, static_cast<unsigned int>(s.groups),
                                                         stream);
  if (err != cudaSuccess) return err;
  FC_LAUNCH(dim3(static_cast<unsigned int>(s.K)), kStatsThreads, 0, stream, bn_stats_finalize_kernel)(
      p.stats, plan.slots, plan.rows_per_slot, p.M, p.K, eps, save_mean, save_invstd, batch_var);
  return launch_status();
}

// dx = dgrad(dy, w): M = N·H·W dx pixels, N = Cg channels, K = R·S·Kg; no workspace.
template <typename T>
cudaError_t conv2d_implicit_gemm_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx, void* /*ws*/,
                                       size_t /*ws_bytes*/, cudaStream_t stream) {
  if (!dgrad_shape_ok(s) || dy == nullptr || w == nullptr || dx == nullptr) return cudaErrorInvalidValue;
  IgemmParams<T> p = make_params<T>(s);
  p.dy = dy;
  p.w = w;
  p.out = dx;
  p.M = static_cast<int>(s.dgrad_m());
  p.Ngemm = static_cast<int>(s.dgrad_n());
  p.Kgemm = static_cast<int>(s.dgrad_k());
  p.out_ld = static_cast<int>(s.C);
  const bool vec = vec_ok<T>(s, {dy, w, dx});
  return launch_dir<ConvDir::kDgrad>(p, use_large(p.M, p.Ngemm, s.groups), vec, static_cast<unsigned int>(s.groups),
                                     stream);
}

// dw = wgrad(dy, x): M = Kg filters, N = R·S·Cg taps, K = N·P·Q pixels split into plan.splits slices
// (FP32 partials in ws), then the fixed-order reduction into dw.
template <typename T>
cudaError_t conv2d_implicit_gemm_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws,
                                       size_t ws_bytes, cudaStream_t stream) {
  if (!wgrad_shape_ok(s) || dy == nullptr || x == nullptr || dw == nullptr || ws == nullptr ||
      !aligned16(ws) || ws_bytes < wgrad_split_bytes(s)) {
    return cudaErrorInvalidValue;
  }
  // The same plan workspace_bytes made: ws_bytes covers exactly that many slices.
  const WgradPlan plan = wgrad_plan(s, ws_bytes, static_cast<int>(sizeof(T)));
  IgemmParams<T> p = make_params<T>(s);
  p.dy = dy;
  p.x = x;
  p.partial = static_cast<float*>(ws);
  p.M = static_cast<int>(s.wgrad_m());
  p.Ngemm = static_cast<int>(s.wgrad_n());
  p.Kgemm = static_cast<int>(s.wgrad_k());
  p.k_tiles_per_split = static_cast<int>(plan.tiles_per_split);
  const bool vec = vec_ok<T>(s, {dy, x});
  cudaError_t err = launch_dir<ConvDir::kWgrad>(p, plan.large, vec, static_cast<unsigned int>(plan.splits * s.groups),
                                                stream);
  if (err != cudaSuccess) return err;
  const int64_t total = s.K * s.wgrad_n();
  FC_LAUNCH(grid_for(total, 256), 256, 0, stream, wgrad_reduce_kernel<T>)(p.partial, static_cast<int>(plan.splits), total,
                                                                    dw);
  return launch_status();
}

#define FASTCONV_INSTANTIATE_IGEMM(T)                                                                             \
  template cudaError_t conv2d_implicit_gemm_fprop<T>(const Conv2dShape&, const T*, const T*, const T*, T*, void*, \
                                                     size_t, cudaStream_t);                                      \
  template cudaError_t conv2d_implicit_gemm_dgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,   \
                                                     cudaStream_t);                                              \
  template cudaError_t conv2d_implicit_gemm_wgrad<T>(const Conv2dShape&, const T*, const T*, T*, void*, size_t,   \
                                                     cudaStream_t);                                              \
  template cudaError_t conv2d_implicit_gemm_fprop_fused<T>(const Conv2dShape&, const T*, const T*, const AccT<T>*, \
                                                           const AccT<T>*, const T*, bool, T*, void*, size_t,     \
                                                           cudaStream_t);
#define FASTCONV_INSTANTIATE_IGEMM_STATS(T)                                                                       \
  template cudaError_t conv2d_implicit_gemm_fprop_stats<T>(const Conv2dShape&, const T*, const T*, T*, float*,    \
                                                           float*, float*, double, void*, size_t, cudaStream_t);
FASTCONV_INSTANTIATE_IGEMM(__half)
FASTCONV_INSTANTIATE_IGEMM(__nv_bfloat16)
FASTCONV_INSTANTIATE_IGEMM(float)  // on TF32
FASTCONV_INSTANTIATE_IGEMM_STATS(__half)
FASTCONV_INSTANTIATE_IGEMM_STATS(__nv_bfloat16)
#undef FASTCONV_INSTANTIATE_IGEMM_STATS
#undef FASTCONV_INSTANTIATE_IGEMM

}  // namespace cuda
}  // namespace fastconv
