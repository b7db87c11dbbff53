// conv2d_igemm_sm90.cu — the Hopper implicit-GEMM convolution: warp-specialised wgmma + TMA, NHWC / KRSC /
// NPQK, f16 / bf16, and float32 on TF32 tensor cores (only when the caller allows TF32).
//
// fprop, per group g (Cg = C/groups, Kg = K/groups), as conv2d_igemm_tc.cu:
//   GEMM  M = N·P·Q output pixels, N = Kg filters, K = R·S·Cg taps (k-iteration kit = (r·S + s)·CC + cc,
//         CC = ceil(Cg / BK) channel chunks of BK elements = 128 bytes)
//   A[m][k] = x[n, p·sh − ph + r·dh, q·sw − pw + s·dw, g·Cg + c] (0 in padding)   B[j][k] = w[g·Kg + j, r, s, c]
//
// Kernel: igemm_sm90_kernel<Cfg, T, kSplitK, kWgrad, kStats, kDgradW>, Cfg one of Sm90Large (128 x 128), Sm90Wide (128 x 64)
// and Sm90Small (64 x 64), a persistent grid (min(tiles, SMs · Cfg::kBlocksPerSm = 1)) of
// blocks of 1 producer warpgroup + Cfg::kConsumers consumer warpgroups (128 threads each). Block b
// processes tiles b, b + gridDim.x, ... (tile = (split, m-tile, n-tile, group), m fastest so that
// neighbouring blocks share filter tiles in L2); producer and consumers walk the same sequence.
//   Shared memory: a kStages ring; stage s = A tile (BM pixel rows x 128 bytes) + B tile (BN filter rows x
//   128 bytes), both written by TMA with the 128-byte swizzle (16-byte chunk ^= row % 8) and read by
//   wgmma through K-major SW128 descriptors (SBO = 1024 bytes per 8 rows); 1024-byte aligned stages.
//   Barriers per stage: full[s] (count 1: the producer's arrive.expect_tx; the TMA bytes complete it) and
//   empty[s] (count kConsumers·128: every consumer thread arrives once its wgmma reading s completed).
//   Producer (warp 0 of warpgroup 0, one elected lane; setmaxnreg.dec to 40): for each k-iteration waits
//   empty[s] (parity phase ^ 1: a fresh ring counts as released), arms full[s] with the stage's bytes,
//   issues the A load — TMA im2col mode: BM consecutive pixels of the im2col column starting at the
//   tile's first output pixel (its window corner (q0·sw − pw, p0·sh − ph, n0)), channels [g·Cg + cc·BK,
//   +BK), at filter offset (s·dw, r·dh); the traversal wraps rows and images and zero-fills past N —
//   and the B load (tiled mode on w viewed as [K][R·S][Cg]: box {BK, 1, BN} at {cc·BK, r·S + s, g·Kg +
//   n0}; channels past Cg and filters past K are zero-filled).
//   Consumers (setmaxnreg.inc to 232): consumer c owns tile rows [64c, 64c + 64): per k-iteration it
//   waits full[s], issues 4 wgmma m64nBNk{16,8} (128 bytes of K, 32 bytes each: the descriptors' start
//   addresses step 32 bytes inside the swizzle atom), commits, waits until only this group is in
//   flight (wait_group 1) and then releases the previous stage: loads for stage s + kStages − 1 overlap
//   the MMAs of stage s. After the last k-iteration: wait_group 0, release, epilogue.
//   Epilogue (from the accumulators): thread (warp w, lane l) holds rows 16w + l/4 (+8) and columns
//   8i + 2(l%4) (+1) of its 64 x BN block (PTX ISA wgmma D fragment): y through ConvEpilogue
//   (scale, bias, residual, ReLU, rounding to T once), paired 32-bit stores for 16-bit T when aligned.
//   kSplitK: the K range is cut into `splits` slices (one more tile coordinate); the epilogue stores
//   FP32 partials to the workspace ([split][M][K]), and splitk_reduce_kernel adds them in split order
//   (deterministic) and applies the epilogue once.
//   kStats (conv2d_bn_train, 16-bit): plain y, no split-K, and per warp's 16 rows the per-channel (mean, M2)
//   of y as rounded to T, merged over the 8 lanes of a column by shuffles; bn_stats_finalize_kernel merges
//   the slots in a fixed order.
// dgrad (stride 1 only): dx = fprop(dy, w') with w'[c][r][s][k] = w[k][R−1−r][S−1−s][c], padding
// dh·(R−1) − ph (must be >= 0): the same kernel and tiles. 16-bit (kDgradW): B is loaded from w itself at
// the flipped tap (64 channels x 64 filters per box: N-major, imm-trans-b); TF32: flip_filter_kernel
// writes w' to the workspace.
// dgrad (stride > 1, any dilation): by residue classes (dgrad_classes): each of the sh·sw classes of dx
// pixels is a stride-1 fprop of dy with its own flipped sub-filter (16-bit: read from w; TF32:
// class_filter_kernel), asymmetric window corners, and output rows remapped into dx (Sm90Params::o_*); no
// zero taps, so none of the predicated gather's stride² wasted MMAs.
// wgrad (f16/bf16; kWgrad): per group, GEMM M = Kg filters, N = R·S·CCw·64 filter columns (tap rs, chunk
// cc of 64 channels; columns past Cg are computed and not stored), K = N·P·Q pixels in k-iterations of
// 64: dw[f][rs][c] = Σ_pix dy[pix][g·Kg + f] · x_im2col[pix][rs][g·Cg + c]. The producer loads A = dy by a
// tiled TMA (dy as [N·P·Q][K], boxes of 64 pixels x 64 filters: BM/64 per stage) and B = x by TMA im2col
// (the fprop's A load with 64 pixels per box: BN/64 chunks per stage), so both stage tiles have pixel
// rows — MN-major operands, read by wgmma with imm-trans 1 (SW128 MN-major: SBO = 1024 per 8 pixel rows,
// LBO = 8 KB per 64 columns); the ISA has no transposed tf32, so float wgrad is refused. K is long and
// M·N small, so split-K is the norm (make_wgrad_plan): FP32 partials per slice and the same fixed-order
// splitk_reduce_kernel.
//
// can_implement: a CC 9.0 device (the sm_90a code runs nowhere else), NHWC x (channel stride 1, pixel
// strides multiples of 16 bytes), dense KRSC w, dense NPQK y, C·elem and Cg·elem multiples of 16 bytes
// (TMA strides), groups == 1 or Cg a multiple of BK (a channel chunk must not reach the next group),
// 16-byte aligned x and w, TMA im2col limits (corners and offsets, below), every index below 2^31; for
// wgrad 16-bit elements and K·elem a multiple of 16 bytes (dy's TMA row stride), groups unrestricted.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "bn_stats_finalize.cuh"
#include "common.cuh"
#include "epilogue.cuh"
#include "ptx.cuh"
#include "tensor_map.cuh"

namespace fastconv {
namespace cuda {
namespace {

// ---- tile configurations ------------------------------------------------------------------------------

// BM x BN x (128 bytes of K) per tile, BM / 64 consumer warpgroups, kStages-deep TMA ring.
template <int BM_, int BN_, int kStages_>
struct Sm90Config {
  static constexpr int kBM = BM_, kBN = BN_, kStages = kStages_;
  static constexpr int kConsumers = kBM / 64;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kRowBytes = 128;                  // one swizzle atom row = the stage's K extent
  static constexpr int kStepBytes = 32;                  // K bytes per wgmma (k16 x 2 B, k8 x 4 B)
  static constexpr int kSteps = kRowBytes / kStepBytes;  // wgmma per stage per consumer
  static constexpr int kTileABytes = kBM * kRowBytes, kTileBBytes = kBN * kRowBytes;
  // wgrad: a stage is kRowBytes / 2 = 64 pixels (the GEMM's K) of BM filters and BN filter columns, as
  // sub-tiles of 64 pixel rows x 128 bytes (64 channels); a wgmma's 16 pixels are 16 rows.
  static constexpr int kSubTileBytes = 64 * kRowBytes;
  static constexpr int kWgradStepBytes = 16 * kRowBytes;
  static constexpr int kStageBytes = kTileABytes + kTileBBytes;
  static constexpr int kAlign = 1024;                    // the 128-byte swizzle's pattern repeat
  static constexpr int kBarrierBytes = 2 * kStages * 8;
  static constexpr int kSmemBytes = kAlign + kStages * kStageBytes + kBarrierBytes;
  // setmaxnreg budgets: the producer needs few; the consumers hold BN/2 accumulators each.
  static constexpr int kProducerRegs = 40, kConsumerRegs = kConsumers == 2 ? 232 : 240;

  static_assert(kBM == 64 || kBM == 128, "one or two consumer warpgroups of 64 rows (wgmma m64)");
  static_assert(kBN == 64 || kBN == 128, "ptx.cuh has wgmma_ss for N = 64 and 128");
  static_assert(kStages >= 2, "the ring needs at least two stages");
  static_assert(kSteps * kStepBytes == kRowBytes, "the wgmma steps cover the stage's K extent");
  static_assert(kTileABytes % kAlign == 0 && kTileBBytes % kAlign == 0, "every tile starts on a swizzle pattern");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory must fit an H100/H200's 227 KB per block");
  static constexpr int kRegBudget = 128 * kProducerRegs + 128 * kConsumers * kConsumerRegs;
  static_assert(kRegBudget <= 65536, "the register budgets must fit the SM's 64K registers");
  // Resident blocks per SM: the setmaxnreg budgets claim most of the register file (every configuration
  // here: one block), whatever the shared memory would allow. The persistent grid is SMs x this.
  static constexpr int kBlocksPerSm = (227 * 1024 / kSmemBytes) < (65536 / kRegBudget) ? (227 * 1024 / kSmemBytes)
                                                                                         : (65536 / kRegBudget);
  static_assert(kBlocksPerSm >= 1, "one block must fit an SM");
};
// 128 x 128, 4 stages (129 KB): the large-problem tile.
using Sm90Large = Sm90Config<128, 128, 4>;
// 128 x 64, 4 stages (97 KB): two consumers of 64 x 64 — Kg <= 64 layers with many pixels (ResNet-50's
// 3x3 64 at 56²), where 128 x 128 would compute half its columns for nothing and 64 x 64 has one consumer.
using Sm90Wide = Sm90Config<128, 64, 4>;
// 64 x 64, 4 stages (65 KB): small M or Kg; also the split-K configuration (late layers at small batch).
using Sm90Small = Sm90Config<64, 64, 4>;

constexpr int kWgThreads = 128;
static_assert(Sm90Large::kThreads == 3 * kWgThreads, "producer + two consumer warpgroups");
// Large tiles only when there are enough of them to give every SM one.
constexpr int64_t kSm90LargeMinTiles = 132;
// Split-K when the MN tiles cannot fill the GPU and each slice still has this many k-iterations.
constexpr int64_t kSplitKMinIters = 8;
constexpr int64_t kSplitKMaxSplits = 16;
constexpr int64_t kSm90IndexLimit = int64_t(1) << 31;
constexpr size_t kWorkspaceAlign = 256;
// TMA im2col limits for a 4-D tensor (driver API, cuTensorMapEncodeIm2col / PTX im2col offsets).
constexpr int kIm2colCornerMin = -128, kIm2colCornerMax = 127;
constexpr int kIm2colOffsetMax = 255;

// Kernel parameters (torch-free). The tensor maps are separate __grid_constant__ parameters.
template <typename T>
struct Sm90Params {
  T* out;             // y (dense NPQK), or null with kSplitK
  float* partial;     // kSplitK: [splits][M][K] FP32
  ConvEpilogue<T> epi;
  int M, Kg, K, Cg;   // GEMM M, N per group, y's row length, channels per group
  int PQ, Q, S;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  int chunks;         // CC: channel chunks per tap
  int k_iters;        // R·S·CC
  int m_tiles, n_tiles, groups, splits, iters_per_split;
  int tiles;          // m_tiles · n_tiles · groups · splits
  bool vec_store;     // paired 32-bit stores are aligned
  // Output row of GEMM row m = (n, p, q): out + n·o_n + p·o_p + q·o_q + o_base (dense NPQK: P·Q·K, Q·K,
  // K, 0); rows with p >= Pv or q >= Qv are not stored (strided dgrad's residue classes, below).
  int64_t o_n, o_p, o_q, o_base;
  int Pv, Qv;
  // wgrad (GEMM M = Kg filters, N = R·S·chunks·64 filter columns, K = N·P·Q pixels): RS = R·S taps,
  // `chunks` 64-channel chunks per tap, Cg channels, k_iters of 64 pixels; dw row length RS·Cg,
  // partial_total = K·R·S·Cg (one split's partials).
  int RS;
  int64_t partial_total;
  // kStats (conv2d_bn_train): [m_tiles·BM/16][K] (mean, M2) of the rounded y per warp's 16 rows.
  float2* stats;
  // kDgradW (16-bit dgrad): B from w itself; the flipped filter's tap (r, s) is w's tap
  // (tap_r0 − tap_dr·r, tap_s0 − tap_ds·s) of tap_S columns.
  int tap_r0, tap_dr, tap_s0, tap_ds, tap_S;
};

template <typename Cfg>
__device__ __forceinline__ void decode_tile(int t, int m_tiles, int n_tiles, int groups, int& mt, int& nt, int& g,
                                            int& split) {
  mt = t % m_tiles;
  t /= m_tiles;
  nt = t % n_tiles;
  t /= n_tiles;
  g = t % groups;
  split = t / groups;
}

// The ring position after a k-iteration: the next stage, and the phase bit flipped on each wrap (producer
// and consumers walk the same sequence).
template <typename Cfg>
__device__ __forceinline__ void next_stage(int& stage, unsigned int& phase) {
  if (++stage == Cfg::kStages) {
    stage = 0;
    phase ^= 1u;
  }
}

// ---- the kernel ---------------------------------------------------------------------------------------------

// kWgrad: dw = dy^T · im2col(x) on the same ring and roles: A = dy by a tiled TMA (M-major: rows are
// pixels, 128 bytes of filters each), B = x by TMA im2col (N-major: rows are pixels, 64 channels of one
// tap), both read by wgmma as MN-major operands (imm-trans 1, f16/bf16 only); tmap_w is dy's map.
// kStats: plain fprop (no split-K, empty epilogue) that also leaves the batch statistics of y (below).
// kDgradW: dgrad as an fprop over dy whose B is read from w itself (16-bit): tiles of 64 filters (the GEMM's
// K) x 64 channels (N, contiguous in KRSC) at the flipped tap, so B is N-major (imm-trans-b, the wgrad B
// descriptor) and no flipped copy of w is written.
template <typename Cfg, typename T, bool kSplitK, bool kWgrad, bool kStats = false, bool kDgradW = false>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    igemm_sm90_kernel(const __grid_constant__ CUtensorMap tmap_x, const __grid_constant__ CUtensorMap tmap_w,
                      const Sm90Params<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(FASTCONV_EMU)
  FC_DYNAMIC_SHARED(1024, unsigned char, smem_raw);
  // The dynamic window is only guaranteed 16-byte aligned: round up to the swizzle pattern.
  const unsigned int raw = smem_addr(smem_raw);
  const unsigned int base = (raw + Cfg::kAlign - 1) / Cfg::kAlign * Cfg::kAlign;
  const unsigned int bars = base + Cfg::kStages * Cfg::kStageBytes;
  auto stage_a = [&](int s) { return base + static_cast<unsigned int>(s * Cfg::kStageBytes); };
  auto stage_b = [&](int s) { return stage_a(s) + static_cast<unsigned int>(Cfg::kTileABytes); };
  auto full = [&](int s) { return bars + static_cast<unsigned int>(8 * s); };
  auto empty = [&](int s) { return bars + static_cast<unsigned int>(8 * (Cfg::kStages + s)); };

  const int wg = static_cast<int>(threadIdx.x) / kWgThreads;
  if (threadIdx.x == 0) {
    for (int s = 0; s < Cfg::kStages; ++s) {
      mbarrier_init(full(s), 1);
      mbarrier_init(empty(s), Cfg::kConsumers * kWgThreads);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ---- producer ----
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x >= 32) return;
    if (!elect_one_sync()) return;
    tma_prefetch_desc(&tmap_x);
    tma_prefetch_desc(&tmap_w);
    int stage = 0;
    unsigned int phase = 0;
    for (int t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      int mt, nt, g, split;
      decode_tile<Cfg>(t, p.m_tiles, p.n_tiles, p.groups, mt, nt, g, split);
      const int kb = split * p.iters_per_split, ke = min(p.k_iters, kb + p.iters_per_split);
      if constexpr (kWgrad) {
        constexpr int kSub = Cfg::kRowBytes / int(sizeof(T));  // 64 channels / filters / pixels
        for (int kit = kb; kit < ke; ++kit) {
          const int pix = kit * kSub, n_img = pix / p.PQ, pq = pix % p.PQ;
          const int corner_h = (pq / p.Q) * p.stride_h - p.pad_h, corner_w = (pq % p.Q) * p.stride_w - p.pad_w;
          // B chunks past the last tap are not loaded (their columns are not stored).
          const int chunk0 = nt * (Cfg::kBN / kSub);
          const int b_chunks = max(0, min(Cfg::kBN / kSub, p.RS * p.chunks - chunk0));
          mbarrier_wait_parity(empty(stage), phase ^ 1u);
          mbarrier_arrive_expect_tx(full(stage), Cfg::kTileABytes + b_chunks * Cfg::kSubTileBytes);
#pragma unroll
          for (int j = 0; j < Cfg::kBM / kSub; ++j)
            tma_load_tile_3d(stage_a(stage) + j * Cfg::kSubTileBytes, &tmap_w, full(stage),
                             g * p.Kg + mt * Cfg::kBM + j * kSub, pix, 0);
          for (int j = 0; j < b_chunks; ++j) {
            const int rs = (chunk0 + j) / p.chunks, cc = (chunk0 + j) % p.chunks;
            tma_load_im2col_4d(stage_b(stage) + j * Cfg::kSubTileBytes, &tmap_x, full(stage), g * p.Cg + cc * kSub,
                               corner_w, corner_h, n_img, static_cast<uint16_t>((rs % p.S) * p.dil_w),
                               static_cast<uint16_t>((rs / p.S) * p.dil_h));
          }
          next_stage<Cfg>(stage, phase);
        }
        continue;
      }
      const int m0 = mt * Cfg::kBM;
      const int n_img = m0 / p.PQ, pq = m0 % p.PQ;
      const int corner_h = (pq / p.Q) * p.stride_h - p.pad_h, corner_w = (pq % p.Q) * p.stride_w - p.pad_w;
      for (int kit = kb; kit < ke; ++kit) {
        const int rs = kit / p.chunks, cc = kit % p.chunks;
        const int r = rs / p.S, s = rs % p.S;
        mbarrier_wait_parity(empty(stage), phase ^ 1u);
        mbarrier_arrive_expect_tx(full(stage), Cfg::kStageBytes);
        tma_load_im2col_4d(stage_a(stage), &tmap_x, full(stage), g * p.Cg + cc * (Cfg::kRowBytes / int(sizeof(T))),
                           corner_w, corner_h, n_img, static_cast<uint16_t>(s * p.dil_w),
                           static_cast<uint16_t>(r * p.dil_h));
        if constexpr (kDgradW) {
          constexpr int kSub = Cfg::kRowBytes / int(sizeof(T));  // 64 filters / channels
          const int rs_w = (p.tap_r0 - p.tap_dr * r) * p.tap_S + p.tap_s0 - p.tap_ds * s;
#pragma unroll
          for (int j = 0; j < Cfg::kBN / kSub; ++j)  // channels past Cg and filters past K are zero-filled
            tma_load_tile_3d(stage_b(stage) + j * Cfg::kSubTileBytes, &tmap_w, full(stage), nt * Cfg::kBN + j * kSub,
                             rs_w, g * p.Cg + cc * kSub);
        } else {
          tma_load_tile_3d(stage_b(stage), &tmap_w, full(stage), cc * (Cfg::kRowBytes / int(sizeof(T))), rs,
                           g * p.Kg + nt * Cfg::kBN);
        }
        next_stage<Cfg>(stage, phase);
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<Cfg::kConsumerRegs>();
  const int consumer = wg - 1;
  const int tid = static_cast<int>(threadIdx.x) % kWgThreads;
  const int warp = tid / 32, lane = tid % 32;
  int stage = 0;
  unsigned int phase = 0;
  for (int t = blockIdx.x; t < p.tiles; t += gridDim.x) {
    int mt, nt, g, split;
    decode_tile<Cfg>(t, p.m_tiles, p.n_tiles, p.groups, mt, nt, g, split);
    const int kb = split * p.iters_per_split, ke = min(p.k_iters, kb + p.iters_per_split);
    float acc[Cfg::kBN / 2];
    int prev = -1;
    for (int kit = kb; kit < ke; ++kit) {
      mbarrier_wait_parity(full(stage), phase);
      wgmma_fence();
      const unsigned int a = stage_a(stage) + static_cast<unsigned int>(consumer * 64 * Cfg::kRowBytes);
      const unsigned int b = stage_b(stage);
#pragma unroll
      for (int k = 0; k < Cfg::kSteps; ++k) {
        // K-major SW128 (fprop's A and B, dgrad's A): 128-byte rows of K, SBO = 1024 per 8 rows, the k16
        // step 32 bytes inside the atom. MN-major SW128 (wgrad's A and B, 16-bit dgrad's B read from w):
        // rows of K (pixels / filters) of 128 bytes of M or N, the next 8 rows at SBO = 1024, the next 64
        // columns (a second sub-tile) at LBO = 8 KB; 16 K rows per wgmma.
        const auto k_major = [&](unsigned int base) {
          return make_smem_desc(base + k * Cfg::kStepBytes, 16, 8 * Cfg::kRowBytes, SmemSwizzle::k128B);
        };
        const auto mn_major = [&](unsigned int base) {
          return make_smem_desc(base + k * Cfg::kWgradStepBytes, Cfg::kSubTileBytes, 8 * Cfg::kRowBytes,
                                SmemSwizzle::k128B);
        };
        constexpr bool kTransA = kWgrad, kTransB = kWgrad || kDgradW;
        const uint64_t da = kTransA ? mn_major(a) : k_major(a);
        const uint64_t db = kTransB ? mn_major(b) : k_major(b);
        wgmma_ss<T, Cfg::kBN, kTransA, kTransB>(acc, da, db, kit > kb || k > 0);
      }
      wgmma_commit_group();
      // The previous stage's MMAs are complete once at most this group is in flight.
      wgmma_wait_group<1>();
      if (prev >= 0) mbarrier_arrive(empty(prev));
      prev = stage;
      next_stage<Cfg>(stage, phase);
    }
    wgmma_wait_group<0>();
    if (prev >= 0) mbarrier_arrive(empty(prev));

    // ---- epilogue ----
    if constexpr (kWgrad) {
      // D[filter][column]: column n = 64·chunk + channel-in-chunk, chunk = tap·chunks + cc; dw is KRSC.
      constexpr int kSub = Cfg::kRowBytes / int(sizeof(T));
      const int f0 = mt * Cfg::kBM + consumer * 64 + warp * 16 + lane / 4;
      const int64_t row_len = int64_t(p.RS) * p.Cg;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int f = f0 + 8 * half;
        if (f >= p.Kg) continue;
        const int64_t row_off = int64_t(g * p.Kg + f) * row_len;
#pragma unroll
        for (int i = 0; i < Cfg::kBN / 8; ++i) {
          const int n = nt * Cfg::kBN + 8 * i + 2 * (lane % 4);
          const int chunk = n / kSub, rs = chunk / p.chunks, c = (chunk % p.chunks) * kSub + n % kSub;
          if (rs >= p.RS) continue;
          const int64_t off = row_off + int64_t(rs) * p.Cg + c;
          const float v0 = acc[4 * i + 2 * half], v1 = acc[4 * i + 2 * half + 1];
          if constexpr (kSplitK) {
            float* dst = p.partial + int64_t(split) * p.partial_total + off;
            if (c < p.Cg) dst[0] = v0;
            if (c + 1 < p.Cg) dst[1] = v1;
          } else {
            if (p.vec_store && c + 1 < p.Cg) {
              p.epi.store2(p.out, off, 0, v0, v1);
              continue;
            }
            if (c < p.Cg) p.epi.store(p.out, off, 0, v0);
            if (c + 1 < p.Cg) p.epi.store(p.out, off + 1, 0, v1);
          }
        }
      }
      continue;
    }
    const int row0 = mt * Cfg::kBM + consumer * 64 + warp * 16 + lane / 4;
    const int col_base = nt * Cfg::kBN + 2 * (lane % 4);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = row0 + 8 * half;
      if (m >= p.M) continue;
      const int m_n = m / p.PQ, m_p = (m % p.PQ) / p.Q, m_q = m % p.Q;
      if (!kSplitK && (m_p >= p.Pv || m_q >= p.Qv)) continue;
      const int64_t row_off = int64_t(m_n) * p.o_n + int64_t(m_p) * p.o_p + int64_t(m_q) * p.o_q + p.o_base;
#pragma unroll
      for (int i = 0; i < Cfg::kBN / 8; ++i) {
        const int j = col_base + 8 * i;
        const float v0 = acc[4 * i + 2 * half], v1 = acc[4 * i + 2 * half + 1];
        if constexpr (kSplitK) {
          float* dst = p.partial + (int64_t(split) * p.M + m) * p.K + int64_t(g) * p.Kg;
          if (j < p.Kg) dst[j] = v0;
          if (j + 1 < p.Kg) dst[j + 1] = v1;
        } else {
          const int64_t off = row_off + int64_t(g) * p.Kg + j;
          const int64_t k = int64_t(g) * p.Kg + j;
          if constexpr (sizeof(T) == 2) {
            if (p.vec_store && j + 1 < p.Kg) {
              p.epi.store2(p.out, off, k, v0, v1);
              continue;
            }
          }
          if (j < p.Kg) p.epi.store(p.out, off, k, v0);
          if (j + 1 < p.Kg) p.epi.store(p.out, off + 1, k + 1, v1);
        }
      }
    }
    if constexpr (kStats) {
      // Per warp (its 16 rows: slot rows [16·slot, 16·slot + 16)) and channel column: (mean, M2) of the
      // outputs as rounded to T, rows below M only; each lane holds 2 rows of a column, the 8 lanes
      // sharing it (lane % 4) merge by Chan over xor 4, 8, 16; lanes 0..3 write. One writer per
      // element, no atomics, no shared memory; every lane runs it (the shuffles need all 32).
      static_assert(!kSplitK && !kWgrad, "statistics need whole accumulators of an fprop");
      const int64_t slot = int64_t(mt) * (Cfg::kBM / 16) + consumer * 4 + warp;
      float2* part = p.stats + slot * p.K + int64_t(g) * p.Kg;
#pragma unroll
      for (int i = 0; i < Cfg::kBN / 8; ++i) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float a0 = to_acc<T>(from_acc<T>(acc[4 * i + c])), a1 = to_acc<T>(from_acc<T>(acc[4 * i + 2 + c]));
          const bool in0 = row0 < p.M, in1 = row0 + 8 < p.M;
          float n = float(in0) + float(in1);
          float mean = n > 0.f ? ((in0 ? a0 : 0.f) + (in1 ? a1 : 0.f)) / n : 0.f;
          const float d0 = in0 ? a0 - mean : 0.f, d1 = in1 ? a1 - mean : 0.f;
          float m2 = d0 * d0 + d1 * d1;
          merge_column_lanes(mean, m2, n);
          const int j = col_base + 8 * i + c;
          if (lane < 4 && j < p.Kg) part[j] = make_float2(mean, m2);
        }
      }
    }
  }
#endif
}

// Split-K's second pass: y[m][k] = epilogue(Σ_split partial[split][m][k]) in split order.
template <typename T>
__global__ void __launch_bounds__(256) splitk_reduce_kernel(const float* __restrict__ partial, int splits,
                                                            int64_t total, ConvEpilogue<T> epi, T* __restrict__ y,
                                                            int64_t K) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int sp = 0; sp < splits; ++sp) v += partial[sp * total + e];
    epi.store(y, e, e % K, v);
  }
}

// w'[c][r][s][k] = w[k][R−1−r][S−1−s][c] per group (dgrad as an fprop): one thread per element of w'.
template <typename T>
__global__ void __launch_bounds__(256) flip_filter_kernel(const T* __restrict__ w, T* __restrict__ wf, int64_t K,
                                                          int64_t R, int64_t S, int64_t Cg, int64_t groups) {
  const int64_t Kg = K / groups, total = K * R * S * Cg;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    // e indexes w' as [groups·Cg][R][S][Kg]: output channel (of the dgrad conv) gc = g·Cg + c.
    const int64_t kk = e % Kg, s = (e / Kg) % S, r = (e / (Kg * S)) % R, gc = e / (Kg * S * R);
    const int64_t g = gc / Cg, c = gc % Cg;
    wf[e] = w[((g * Kg + kk) * R + (R - 1 - r)) * S * Cg + (S - 1 - s) * Cg + c];
  }
}

// Strided dgrad, residue class (rh, rw): wc[c][t][u][k] = w[k][r0h + step_h·(Rt−1−t)][r0w + step_w·(St−1−u)][c]
// per group, the taps whose contributions land on dx rows ≡ rh (mod sh) and columns ≡ rw (mod sw), flipped
// (step = stride / gcd(dilation, stride); see dgrad_classes).
template <typename T>
__global__ void __launch_bounds__(256) class_filter_kernel(const T* __restrict__ w, T* __restrict__ wc, int64_t K,
                                                           int64_t R, int64_t S, int64_t Cg, int64_t groups,
                                                           int64_t r0h, int64_t r0w, int64_t step_h, int64_t step_w,
                                                           int64_t Rt, int64_t St) {
  const int64_t Kg = K / groups, total = K * Rt * St * Cg;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t kk = e % Kg, u = (e / Kg) % St, t = (e / (Kg * St)) % Rt, gc = e / (Kg * St * Rt);
    const int64_t g = gc / Cg, c = gc % Cg;
    const int64_t r = r0h + step_h * (Rt - 1 - t), q = r0w + step_w * (St - 1 - u);
    wc[e] = w[((g * Kg + kk) * R + r) * S * Cg + q * Cg + c];
  }
}

// ---- host side ------------------------------------------------------------------------------------------------

template <typename T> CUtensorMapDataType tma_dtype();
template <> CUtensorMapDataType tma_dtype<__half>() { return CU_TENSOR_MAP_DATA_TYPE_FLOAT16; }
template <> CUtensorMapDataType tma_dtype<__nv_bfloat16>() { return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16; }
// The tensor core reads the TF32 part of the FP32 bits: the copy keeps them as they are.
template <> CUtensorMapDataType tma_dtype<float>() { return CU_TENSOR_MAP_DATA_TYPE_FLOAT32; }

int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned(const void* ptr, uintptr_t a) { return reinterpret_cast<uintptr_t>(ptr) % a == 0; }
bool same_strides(const Strides4& a, const Strides4& b) { return a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w; }

// The device the launch goes to: CC 9.0 exactly (sm_90a SASS), and its SM count.
bool sm90_device(int* sms) {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  if (sms != nullptr && cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return false;
  return major == 9 && minor == 0;
}

// x as a TMA im2col source (fprop's A, wgrad's B): channel stride 1, 16-byte row strides, the window
// corners lower = −pad, upper = pad − (R−1)·dil in [−128, 127], offsets r·dil < 256, traversal strides 1..8.
bool im2col_geometry_ok(const Conv2dShape& s, int elem_bytes) {
  if (!s.valid() || s.N <= 0 || s.P <= 0 || s.Q <= 0) return false;
  if (s.x.c != 1 || (s.C * elem_bytes) % 16 != 0) return false;
  if ((s.x.w * elem_bytes) % 16 != 0 || (s.x.h * elem_bytes) % 16 != 0 || (s.x.n * elem_bytes) % 16 != 0) return false;
  const int64_t corners[] = {-s.pad_h, -s.pad_w, s.pad_h - (s.R - 1) * s.dil_h, s.pad_w - (s.S - 1) * s.dil_w};
  for (int64_t c : corners)
    if (c < kIm2colCornerMin || c > kIm2colCornerMax) return false;
  if ((s.R - 1) * s.dil_h > kIm2colOffsetMax || (s.S - 1) * s.dil_w > kIm2colOffsetMax) return false;
  if (s.stride_h > 8 || s.stride_w > 8) return false;
  const int64_t limits[] = {s.fprop_m(), s.K, s.C, s.H, s.W, s.N};
  for (int64_t v : limits)
    if (v >= kSm90IndexLimit) return false;
  return s.x.n * s.N < (int64_t(1) << 40);
}

// The fprop geometry this path can run (dgrad passes its equivalent fprop).
bool fprop_geometry_ok(const Conv2dShape& s, int elem_bytes) {
  if (elem_bytes != 2 && elem_bytes != 4) return false;
  if (!im2col_geometry_ok(s, elem_bytes)) return false;
  const int64_t bk = 128 / elem_bytes;
  if (!same_strides(s.w, channels_last_strides(s.Cg(), s.R, s.S)) ||
      !same_strides(s.y, channels_last_strides(s.K, s.P, s.Q)))
    return false;
  if ((s.Cg() * elem_bytes) % 16 != 0) return false;
  if (s.groups > 1 && s.Cg() % bk != 0) return false;  // a channel chunk must not reach the next group
  return s.R * s.S * ceil_div64(s.Cg(), bk) * 128 < kSm90IndexLimit;
}

// wgrad: 16-bit only (the ISA has no MN-major tf32 wgmma), dy dense NPQK as a tiled TMA source (K·elem a
// multiple of 16 bytes), dw dense KRSC. Channel chunks and filter boxes may run into the next group:
// those rows and columns are not stored.
bool wgrad_geometry_ok(const Conv2dShape& s, int elem_bytes) {
  if (elem_bytes != 2 || !im2col_geometry_ok(s, elem_bytes)) return false;
  if (!same_strides(s.w, channels_last_strides(s.Cg(), s.R, s.S)) ||
      !same_strides(s.y, channels_last_strides(s.K, s.P, s.Q)))
    return false;
  if ((s.K * elem_bytes) % 16 != 0) return false;
  const int64_t limits[] = {s.K * s.R * s.S * s.Cg(), s.R * s.S * ceil_div64(s.Cg(), 64) * 64 + 128,
                            s.fprop_m() + 64};
  for (int64_t v : limits)
    if (v >= kSm90IndexLimit) return false;
  return true;
}

// Which tile configuration: the launcher's rule below (kAuto), or one forced (the algorithms
// implicit_gemm_sm90_{128x128, 128x64, 64x64, splitk}, for the autotuner and for users).
enum class Sm90Tile { kAuto, kLarge, kWide, kSmall, kSplitK };

struct Sm90Plan {
  int bm, bn;  // the configuration: Sm90Large, Sm90Wide or Sm90Small
  int64_t m_tiles, n_tiles, splits, iters_per_split, k_iters;
};

// bm x bn of a forced tile, or of the rule's pick among large / wide / small.
void set_tile(Sm90Plan* plan, bool large, bool wide) {
  plan->bm = large ? Sm90Large::kBM : wide ? Sm90Wide::kBM : Sm90Small::kBM;
  plan->bn = large ? Sm90Large::kBN : wide ? Sm90Wide::kBN : Sm90Small::kBN;
}

int64_t k_iters_of(const Conv2dShape& s, int elem_bytes) { return s.R * s.S * ceil_div64(s.Cg(), 128 / elem_bytes); }

// The tile rule: 128 x 128 when Kg fills it and there are enough such tiles for every SM; 128 x 64 when
// Kg < 128 and its tiles fill the SMs; else 64 x 64, cut into K slices (split-K) when even those cannot
// fill the SMs and each slice keeps >= 8 k-iterations.
Sm90Plan make_plan(const Conv2dShape& s, int elem_bytes, Sm90Tile tile) {
  Sm90Plan plan{};
  const int64_t M = s.fprop_m(), Kg = s.Kg();
  plan.k_iters = k_iters_of(s, elem_bytes);
  const int64_t large_tiles = ceil_div64(M, Sm90Large::kBM) * ceil_div64(Kg, Sm90Large::kBN) * s.groups;
  const int64_t wide_tiles = ceil_div64(M, Sm90Wide::kBM) * ceil_div64(Kg, Sm90Wide::kBN) * s.groups;
  const bool large = tile == Sm90Tile::kLarge ||
                     (tile == Sm90Tile::kAuto && Kg >= Sm90Large::kBN && large_tiles >= kSm90LargeMinTiles);
  const bool wide = !large && (tile == Sm90Tile::kWide || (tile == Sm90Tile::kAuto && Kg < Sm90Large::kBN &&
                                                           wide_tiles >= kSm90LargeMinTiles));
  set_tile(&plan, large, wide);
  plan.m_tiles = ceil_div64(M, plan.bm);
  plan.n_tiles = ceil_div64(Kg, plan.bn);
  plan.splits = 1;
  const int64_t mn = plan.m_tiles * plan.n_tiles * s.groups;
  if (tile == Sm90Tile::kSplitK ||
      (tile == Sm90Tile::kAuto && plan.bm == Sm90Small::kBM && mn < kSm90LargeMinTiles)) {
    int64_t splits = ceil_div64(kSm90LargeMinTiles, mn);
    splits = std::min<int64_t>(splits, std::max<int64_t>(1, plan.k_iters / kSplitKMinIters));
    if (tile == Sm90Tile::kSplitK) splits = std::max<int64_t>(splits, 2);  // forced: at least two slices
    plan.splits = std::min<int64_t>({splits, kSplitKMaxSplits, plan.k_iters});
  }
  plan.iters_per_split = ceil_div64(plan.k_iters, plan.splits);
  plan.splits = ceil_div64(plan.k_iters, plan.iters_per_split);  // no empty slice
  return plan;
}

size_t align_ws(size_t b) { return (b + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// wgrad: GEMM M = Kg filters, N = R·S·chunks·64 columns, K = N·P·Q pixels in k-iterations of 64. The MN
// tiles are few (a 3x3 64→64 layer has 9 of 64 x 64) and K is long (N·P·Q / 64 k-iterations), so split-K is the rule's
// norm: slices until the tiles fill the SMs, >= 8 k-iterations each, at most kWgradMaxSplits, and only
// as many as the workspace holds (`ws_limit`; one slice = no partials). kSplitK forces >= 2 slices of the
// 64 x 64 tile whatever the workspace (the launcher refuses when they do not fit).
constexpr int64_t kWgradMaxSplits = 64;
constexpr int64_t kWgradChunk = 64;  // channels per B chunk, pixels per k-iteration (128 bytes of 16-bit)

size_t wgrad_split_bytes(const Conv2dShape& s) { return size_t(s.K) * size_t(s.R * s.S * s.Cg()) * sizeof(float); }

Sm90Plan make_wgrad_plan(const Conv2dShape& s, Sm90Tile tile, size_t ws_limit) {
  Sm90Plan plan{};
  const int64_t Kg = s.Kg(), cols = s.R * s.S * ceil_div64(s.Cg(), kWgradChunk) * kWgradChunk;
  plan.k_iters = ceil_div64(s.fprop_m(), kWgradChunk);
  // 128 x 128 when both Kg and the columns fill it; 128 x 64 for many filters over one 64-channel tap
  // (1x1 convs with C <= 64); else 64 x 64.
  const bool large = tile == Sm90Tile::kLarge ||
                     (tile == Sm90Tile::kAuto && Kg >= Sm90Large::kBM && cols >= Sm90Large::kBN);
  const bool wide = !large && (tile == Sm90Tile::kWide || (tile == Sm90Tile::kAuto && Kg >= Sm90Wide::kBM));
  set_tile(&plan, large, wide);
  plan.m_tiles = ceil_div64(Kg, plan.bm);
  plan.n_tiles = ceil_div64(cols, plan.bn);
  const int64_t mn = plan.m_tiles * plan.n_tiles * s.groups;
  int64_t splits = ceil_div64(kSm90LargeMinTiles, mn);
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, plan.k_iters / kSplitKMinIters), kWgradMaxSplits});
  if (tile == Sm90Tile::kSplitK) {
    splits = std::max<int64_t>(splits, 2);
  } else {
    int64_t fit = int64_t(ws_limit / wgrad_split_bytes(s));
    while (fit > 0 && align_ws(size_t(fit) * wgrad_split_bytes(s)) > ws_limit) --fit;
    if (splits > 1 && fit < splits) splits = fit >= 2 ? fit : 1;
  }
  splits = std::max<int64_t>(1, std::min(splits, plan.k_iters));
  plan.iters_per_split = ceil_div64(plan.k_iters, splits);
  plan.splits = ceil_div64(plan.k_iters, plan.iters_per_split);  // no empty slice
  return plan;
}

size_t wgrad_partial_bytes(const Conv2dShape& s, const Sm90Plan& plan) {
  return plan.splits > 1 ? align_ws(size_t(plan.splits) * wgrad_split_bytes(s)) : 0;
}
size_t splitk_bytes(const Conv2dShape& s, const Sm90Plan& plan) {
  return plan.splits > 1 ? align_ws(size_t(plan.splits) * size_t(s.fprop_m()) * size_t(s.K) * sizeof(float)) : 0;
}

// The dgrad problem as an fprop over dy: x' = dy [N, P, Q, K], w' [C, R, S, Kg], y' = dx [N, H, W, C].
bool dgrad_as_fprop(const Conv2dShape& s, Conv2dShape* f) {
  if (s.stride_h != 1 || s.stride_w != 1) return false;
  const int64_t ph = s.dil_h * (s.R - 1) - s.pad_h, pw = s.dil_w * (s.S - 1) - s.pad_w;
  if (ph < 0 || pw < 0) return false;
  Conv2dShape d = make_conv2d_shape(s.N, s.K, s.P, s.Q, s.C, s.R, s.S, ph, pw, 1, 1, s.dil_h, s.dil_w, s.groups);
  if (d.P != s.H || d.Q != s.W) return false;
  d.x = channels_last_strides(s.K, s.P, s.Q);
  d.w = channels_last_strides(s.Kg(), s.R, s.S);
  d.y = channels_last_strides(s.C, s.H, s.W);
  if (!same_strides(s.y, d.x) || !same_strides(s.x, d.y)) return false;  // dy and dx dense NHWC
  *f = d;
  return true;
}

// A residue class of a strided dgrad as this kernel's problem (see dgrad_classes): the window's upper
// corners (asymmetric padding) and where its output rows go in dx.
struct Sm90Remap {
  int upper_h, upper_w;
  int64_t o_n, o_p, o_q, o_base;
};

// Strided dgrad by residue classes: dx row h = p·st − pad + r·d receives tap r from dy row p, so the rows
// h ≡ rr (mod st) receive only the taps with r·d ≡ rr + pad (mod st): r = r0 + step·u, step = st / g,
// g = gcd(d, st) (none when g does not divide rr + pad: those rows are 0), and then row rr + st·i reads dy
// row p = i − c0 − u·dd, c0 = (r0·d − pad − rr) / st, dd = d / g. Flipped (t = n − 1 − u), each class is a
// stride-1 correlation of dy with n taps at dilation dd and window corners from lower = −(c0 + (n−1)·dd)
// to upper = Hc − P + lower (Hc = ceil((H − rr) / st) rows): no zero taps, none of the predicated gather's
// stride² wasted MMAs. (Dilation 1: step = st, dd = 1, r0 = (rr + pad) % st.) One dimension of it:
struct ClassDim {
  int64_t r0, n, step, dd, lower;  // n = 0: no tap reaches these rows
};

ClassDim class_dim(int64_t rr, int64_t pad, int64_t st, int64_t d, int64_t R) {
  ClassDim c{0, 0, st / std::gcd(d, st), d / std::gcd(d, st), 0};
  for (int64_t r = 0; r < c.step && r < R; ++r) {
    if (((r * d - rr - pad) % st + st) % st != 0) continue;
    c.r0 = r;
    c.n = ceil_div64(R - r, c.step);
    const int64_t c0 = (r * d - pad - rr) / st;  // exact
    c.lower = -(c0 + (c.n - 1) * c.dd);
    break;
  }
  return c;
}

// Class (rh, rw) of a strided dgrad: its two dimensions, and it as this kernel's fprop over dy.
struct DgradClass {
  int64_t rh, rw, r0h, r0w, Rt, St, Hc, Wc, lower_h, lower_w, step_h, step_w;
  Conv2dShape f;  // the class as an fprop over dy (P = Hc, Q = Wc, pad = −lower; the upper corners apart)
  Sm90Remap rm;
};

bool dgrad_classes(const Conv2dShape& s, int elem_bytes, std::vector<DgradClass>* out) {
  if (s.stride_h == 1 && s.stride_w == 1) return false;  // the flipped-filter path
  if (s.stride_h > 8 || s.stride_w > 8) return false;
  if (!s.valid() || s.N <= 0 || s.P <= 0 || s.Q <= 0 || (elem_bytes != 2 && elem_bytes != 4)) return false;
  if (!same_strides(s.y, channels_last_strides(s.K, s.P, s.Q)) || !same_strides(s.x, channels_last_strides(s.C, s.H, s.W)) ||
      !same_strides(s.w, channels_last_strides(s.Cg(), s.R, s.S)))
    return false;
  const int64_t bk = 128 / elem_bytes;
  if ((s.K * elem_bytes) % 16 != 0 || (s.Kg() * elem_bytes) % 16 != 0) return false;  // dy is the TMA input
  if (s.groups > 1 && s.Kg() % bk != 0) return false;
  const int64_t limits[] = {s.N * s.H * s.W, s.K, s.C, s.H, s.W, s.N, s.R * s.S * ceil_div64(s.Kg(), bk) * 128};
  for (int64_t v : limits)
    if (v >= kSm90IndexLimit) return false;
  for (int64_t rh = 0; rh < std::min(s.stride_h, s.H); ++rh)
    for (int64_t rw = 0; rw < std::min(s.stride_w, s.W); ++rw) {
      DgradClass c{};
      c.rh = rh;
      c.rw = rw;
      const ClassDim dh = class_dim(rh, s.pad_h, s.stride_h, s.dil_h, s.R);
      const ClassDim dw = class_dim(rw, s.pad_w, s.stride_w, s.dil_w, s.S);
      c.r0h = dh.r0;
      c.r0w = dw.r0;
      c.Rt = dh.n;
      c.St = dw.n;
      c.step_h = dh.step;
      c.step_w = dw.step;
      c.Hc = ceil_div64(s.H - rh, s.stride_h);
      c.Wc = ceil_div64(s.W - rw, s.stride_w);
      if (c.Rt > 0 && c.St > 0) {
        c.lower_h = dh.lower;
        c.lower_w = dw.lower;
        const int64_t upper_h = c.Hc - s.P + c.lower_h, upper_w = c.Wc - s.Q + c.lower_w;
        for (int64_t v : {c.lower_h, c.lower_w, upper_h, upper_w})
          if (v < kIm2colCornerMin || v > kIm2colCornerMax) return false;
        if ((c.Rt - 1) * dh.dd > kIm2colOffsetMax || (c.St - 1) * dw.dd > kIm2colOffsetMax) return false;
        Conv2dShape& f = c.f;
        f.N = s.N; f.C = s.K; f.H = s.P; f.W = s.Q; f.K = s.C; f.R = c.Rt; f.S = c.St; f.P = c.Hc; f.Q = c.Wc;
        f.pad_h = -c.lower_h; f.pad_w = -c.lower_w; f.groups = s.groups;
        f.dil_h = dh.dd; f.dil_w = dw.dd;
        f.x = channels_last_strides(s.K, s.P, s.Q);
        f.w = channels_last_strides(s.Kg(), c.Rt, c.St);
        f.y = channels_last_strides(s.C, c.Hc, c.Wc);
        c.rm = Sm90Remap{int(upper_h), int(upper_w), s.H * s.W * s.C, s.stride_h * s.W * s.C, s.stride_w * s.C,
                         (rh * s.W + rw) * s.C};
      }
      out->push_back(c);
    }
  return true;
}

// dgrad's filter copies, TF32 only (16-bit reads w itself: kDgradW): the residue classes' sub-filters (every
// tap once, each class's start rounded up to 8 elements — 16-byte aligned for TMA —, at most sh·sw ≤ 64
// classes), or the stride-1 flipped filter.
size_t class_filter_bytes(const Conv2dShape& s, int elem_bytes) {
  if (elem_bytes == 2) return 0;
  return align_ws((size_t(s.K) * size_t(s.R * s.S * s.Cg()) + 8 * 64) * size_t(elem_bytes));
}
size_t flip_filter_bytes(const Conv2dShape& s, int elem_bytes) {
  if (elem_bytes == 2) return 0;
  return align_ws(size_t(s.K) * size_t(s.R * s.S * s.Cg()) * size_t(elem_bytes));
}

template <typename Cfg, typename T, bool kSplitK, bool kWgrad = false, bool kStats = false, bool kDgradW = false>
cudaError_t launch_cfg(const CUtensorMap& tx, const CUtensorMap& tw, const Sm90Params<T>& p, int sms,
                       cudaStream_t stream) {
  const auto kernel = igemm_sm90_kernel<Cfg, T, kSplitK, kWgrad, kStats, kDgradW>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(p.tiles, int64_t(sms) * Cfg::kBlocksPerSm));
  FC_LAUNCH(dim3(grid), Cfg::kThreads, Cfg::kSmemBytes, stream, kernel)(tx, tw, p);
  return launch_status();
}

// The conv geometry and the plan's tiling in the kernel's parameters (fprop and wgrad alike; `chunk`:
// channels per k-iteration chunk); false when the tile count does not fit an int.
template <typename T>
bool set_geometry(const Conv2dShape& s, const Sm90Plan& plan, int chunk, Sm90Params<T>* p) {
  p->Kg = int(s.Kg());
  p->K = int(s.K);
  p->Cg = int(s.Cg());
  p->PQ = int(s.P * s.Q);
  p->Q = int(s.Q);
  p->S = int(s.S);
  p->pad_h = int(s.pad_h);
  p->pad_w = int(s.pad_w);
  p->stride_h = int(s.stride_h);
  p->stride_w = int(s.stride_w);
  p->dil_h = int(s.dil_h);
  p->dil_w = int(s.dil_w);
  p->chunks = int(ceil_div64(s.Cg(), chunk));
  p->k_iters = int(plan.k_iters);
  p->m_tiles = int(plan.m_tiles);
  p->n_tiles = int(plan.n_tiles);
  p->groups = int(s.groups);
  p->splits = int(plan.splits);
  p->iters_per_split = int(plan.iters_per_split);
  const int64_t tiles = plan.m_tiles * plan.n_tiles * s.groups * plan.splits;
  p->tiles = int(tiles);
  return tiles < kSm90IndexLimit;
}

// The kernel of a plan's configuration.
template <typename T, bool kSplitK, bool kWgrad, bool kStats = false, bool kDgradW = false>
cudaError_t launch_plan(const Sm90Plan& plan, const CUtensorMap& tx, const CUtensorMap& tw, const Sm90Params<T>& p,
                        int sms, cudaStream_t stream) {
  if (plan.bm == Sm90Large::kBM && plan.bn == Sm90Large::kBN)
    return launch_cfg<Sm90Large, T, kSplitK, kWgrad, kStats, kDgradW>(tx, tw, p, sms, stream);
  if (plan.bm == Sm90Wide::kBM && plan.bn == Sm90Wide::kBN)
    return launch_cfg<Sm90Wide, T, kSplitK, kWgrad, kStats, kDgradW>(tx, tw, p, sms, stream);
  return launch_cfg<Sm90Small, T, kSplitK, kWgrad, kStats, kDgradW>(tx, tw, p, sms, stream);
}

// The plan run_fprop launches with `ws_bytes` of workspace for the partials: the rule's split-K only when
// they fit (else the plain tiles, still correct), none when `whole` (strided dgrad's remapped rows, and the
// statistics epilogue, need whole accumulators); false for a forced split-K without its partials (the
// caller's error).
bool fprop_plan(const Conv2dShape& s, int elem_bytes, Sm90Tile tile, bool whole, size_t ws_bytes, Sm90Plan* out) {
  Sm90Plan plan = make_plan(s, elem_bytes, tile);
  if (whole && plan.splits > 1) plan = make_plan(s, elem_bytes, Sm90Tile::kSmall);
  if (plan.splits > 1 && ws_bytes < splitk_bytes(s, plan)) {
    if (tile != Sm90Tile::kAuto) return false;
    plan = make_plan(s, elem_bytes, Sm90Tile::kSmall);
  }
  *out = plan;
  return true;
}

// x's im2col map: `pixels` output pixels (a column of the im2col matrix) x 128 bytes of channels per box,
// window corners from the padding (or a residue class's remap), traversal strides = the conv's strides.
template <typename T>
cudaError_t encode_x_im2col(const Conv2dShape& s, const T* x, uint32_t pixels, const Sm90Remap* rm, CUtensorMap* tx) {
  const uint64_t dims[4] = {uint64_t(s.C), uint64_t(s.W), uint64_t(s.H), uint64_t(s.N)};
  const uint64_t strides[3] = {uint64_t(s.x.w) * sizeof(T), uint64_t(s.x.h) * sizeof(T), uint64_t(s.x.n) * sizeof(T)};
  const int lower[2] = {int(-s.pad_w), int(-s.pad_h)};
  const int upper[2] = {rm ? rm->upper_w : int(s.pad_w - (s.S - 1) * s.dil_w),
                        rm ? rm->upper_h : int(s.pad_h - (s.R - 1) * s.dil_h)};
  const uint32_t estr[4] = {1, uint32_t(s.stride_w), uint32_t(s.stride_h), 1};
  return encode_tensor_map_im2col(tx, tma_dtype<T>(), 4, x, dims, strides, lower, upper, 128 / sizeof(T), pixels,
                                  estr, CU_TENSOR_MAP_SWIZZLE_128B);
}

// 16-bit dgrad (kDgradW): w itself is the fprop's B — K filters x R·S taps x Cg channels, dense KRSC —
// and the fprop's tap (r, s) is w's (r0 − dr·r, s0 − ds·s).
struct Sm90TapMap {
  int r0, dr, s0, ds;
  int64_t K, R, S, Cg;
};

// y = epilogue(conv(x, w)) for a geometry fprop_geometry_ok accepted; ws: split-K partials. stats: also the
// statistics partials of y (kStats; no split-K, an empty epilogue). tm: dgrad with B read from the original
// filter w (kDgradW, 16-bit).
template <typename T>
cudaError_t run_fprop(Sm90Tile tile, const Conv2dShape& s, const T* x, const T* w, const ConvEpilogue<T>& epi, T* y,
                      void* ws, size_t ws_bytes, cudaStream_t stream, const Sm90Remap* rm = nullptr,
                      float2* stats = nullptr, const Sm90TapMap* tm = nullptr) {
  // statistics and w-as-B are 16-bit only, and not together
  if ((tm != nullptr || stats != nullptr) && (sizeof(T) != 2 || (tm != nullptr && stats != nullptr)))
    return cudaErrorInvalidValue;
  int sms = 0;
  if (!sm90_device(&sms) || (rm == nullptr && !fprop_geometry_ok(s, sizeof(T))) || x == nullptr || w == nullptr ||
      y == nullptr || !aligned(x, 16) || !aligned(w, 16))
    return cudaErrorInvalidValue;
  Sm90Plan plan;
  if (!fprop_plan(s, sizeof(T), tile, rm != nullptr || stats != nullptr,
                  ws == nullptr || !aligned(ws, 16) ? 0 : ws_bytes, &plan))
    return cudaErrorInvalidValue;
  const int bm = plan.bm, bn = plan.bn;
  constexpr uint32_t kBK = 128 / sizeof(T);

  CUtensorMap tx, tw;
  {
    cudaError_t err = encode_x_im2col<T>(s, x, uint32_t(bm), rm, &tx);
    if (err != cudaSuccess) return err;
  }
  if (tm != nullptr) {
    // w as [K][R·S][Cg]: boxes of 64 channels (128 bytes, the swizzle span) x 1 tap x 64 filters.
    const uint64_t dims[3] = {uint64_t(tm->Cg), uint64_t(tm->R * tm->S), uint64_t(tm->K)};
    const uint64_t strides[2] = {uint64_t(tm->Cg) * sizeof(T), uint64_t(tm->R * tm->S * tm->Cg) * sizeof(T)};
    const uint32_t box[3] = {kBK, 1, kBK};
    const uint32_t estr[3] = {1, 1, 1};
    cudaError_t err =
        encode_tensor_map_tiled(&tw, tma_dtype<T>(), 3, w, dims, strides, box, estr, CU_TENSOR_MAP_SWIZZLE_128B);
    if (err != cudaSuccess) return err;
  } else {
    const uint64_t dims[3] = {uint64_t(s.Cg()), uint64_t(s.R * s.S), uint64_t(s.K)};
    const uint64_t strides[2] = {uint64_t(s.w.w) * sizeof(T), uint64_t(s.w.n) * sizeof(T)};
    const uint32_t box[3] = {kBK, 1, uint32_t(bn)};
    const uint32_t estr[3] = {1, 1, 1};
    cudaError_t err =
        encode_tensor_map_tiled(&tw, tma_dtype<T>(), 3, w, dims, strides, box, estr, CU_TENSOR_MAP_SWIZZLE_128B);
    if (err != cudaSuccess) return err;
  }

  Sm90Params<T> p{};
  p.out = y;
  p.partial = plan.splits > 1 ? static_cast<float*>(ws) : nullptr;
  p.epi = epi;
  if (!set_geometry(s, plan, int(kBK), &p)) return cudaErrorInvalidValue;
  p.M = int(s.fprop_m());
  p.o_n = rm ? rm->o_n : s.P * s.Q * s.K;
  p.o_p = rm ? rm->o_p : s.Q * s.K;
  p.o_q = rm ? rm->o_q : s.K;
  p.o_base = rm ? rm->o_base : 0;
  p.Pv = int(s.P);
  p.Qv = int(s.Q);
  p.vec_store = s.K % 2 == 0 && s.Kg() % 2 == 0 && p.o_q % 2 == 0 && p.o_p % 2 == 0 && p.o_n % 2 == 0 &&
                p.o_base % 2 == 0 && aligned(y, 4) && (epi.residual == nullptr || aligned(epi.residual, 4));

  if (tm != nullptr) {
    p.tap_r0 = tm->r0;
    p.tap_dr = tm->dr;
    p.tap_s0 = tm->s0;
    p.tap_ds = tm->ds;
    p.tap_S = int(tm->S);
  }
  if (plan.splits > 1) {
    cudaError_t err = cudaSuccess;  // split plans are 64 x 64
    if constexpr (sizeof(T) == 2) {
      if (tm != nullptr) err = launch_cfg<Sm90Small, T, true, false, false, true>(tx, tw, p, sms, stream);
    }
    if (tm == nullptr) err = launch_cfg<Sm90Small, T, true>(tx, tw, p, sms, stream);
    if (err != cudaSuccess) return err;
    const int64_t total = s.fprop_m() * s.K;
    FC_LAUNCH(grid_for(total, 256), 256, 0, stream, splitk_reduce_kernel<T>)(p.partial, p.splits, total, epi, y, s.K);
    return launch_status();
  }
  if constexpr (sizeof(T) == 2) {  // (instantiated for 16-bit only)
    if (stats != nullptr) {
      p.stats = stats;
      return launch_plan<T, false, false, true>(plan, tx, tw, p, sms, stream);
    }
    if (tm != nullptr) return launch_plan<T, false, false, false, true>(plan, tx, tw, p, sms, stream);
  }
  return launch_plan<T, false, false>(plan, tx, tw, p, sms, stream);
}

// dw = dy^T · im2col(x) (see the kernel's kWgrad) for a geometry wgrad_geometry_ok accepted; ws: the
// split-K partials, as many slices as it holds (make_wgrad_plan).
template <typename T>
cudaError_t run_wgrad(Sm90Tile tile, const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws, size_t ws_bytes,
                      cudaStream_t stream) {
  if constexpr (sizeof(T) != 2) {
    return cudaErrorInvalidValue;  // no MN-major tf32 wgmma: can_implement refuses float wgrad
  } else {
    int sms = 0;
    if (!sm90_device(&sms) || !wgrad_geometry_ok(s, sizeof(T)) || dy == nullptr || x == nullptr || dw == nullptr ||
        !aligned(x, 16) || !aligned(dy, 16))
      return cudaErrorInvalidValue;
    const Sm90Plan plan = make_wgrad_plan(s, tile, ws == nullptr || !aligned(ws, 16) ? 0 : ws_bytes);
    if (plan.splits > 1 && (ws == nullptr || ws_bytes < wgrad_partial_bytes(s, plan) || !aligned(ws, 16)))
      return cudaErrorInvalidValue;  // only a forced split-K gets here (the rule fits the workspace)
    CUtensorMap tx, tdy;
    cudaError_t err = encode_x_im2col<T>(s, x, uint32_t(kWgradChunk), nullptr, &tx);
    if (err != cudaSuccess) return err;
    {
      // dy as [1][N·P·Q][K]: boxes of 64 pixels x 64 filters (128 bytes, the swizzle span).
      const uint64_t npq = uint64_t(s.fprop_m());
      const uint64_t dims[3] = {uint64_t(s.K), npq, 1};
      const uint64_t strides[2] = {uint64_t(s.K) * sizeof(T), uint64_t(s.K) * sizeof(T) * npq};
      const uint32_t box[3] = {uint32_t(kWgradChunk), uint32_t(kWgradChunk), 1};
      const uint32_t estr[3] = {1, 1, 1};
      err = encode_tensor_map_tiled(&tdy, tma_dtype<T>(), 3, dy, dims, strides, box, estr, CU_TENSOR_MAP_SWIZZLE_128B);
      if (err != cudaSuccess) return err;
    }
    Sm90Params<T> p{};
    p.out = dw;
    p.partial = plan.splits > 1 ? static_cast<float*>(ws) : nullptr;
    if (!set_geometry(s, plan, int(kWgradChunk), &p)) return cudaErrorInvalidValue;
    p.M = int(s.Kg());
    p.RS = int(s.R * s.S);
    p.partial_total = s.K * s.R * s.S * s.Cg();
    p.vec_store = s.Cg() % 2 == 0 && aligned(dw, 4);
    if (plan.splits > 1) {
      err = launch_plan<T, true, true>(plan, tx, tdy, p, sms, stream);
      if (err != cudaSuccess) return err;
      FC_LAUNCH(grid_for(p.partial_total, 256), 256, 0, stream, splitk_reduce_kernel<T>)(
          p.partial, p.splits, p.partial_total, ConvEpilogue<T>{}, dw, p.partial_total);
      return launch_status();
    }
    return launch_plan<T, false, true>(plan, tx, tdy, p, sms, stream);
  }
}

bool can_implement_tile(Sm90Tile tile, const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  if (!sm90_device(nullptr)) return false;
  Conv2dShape f = s;
  switch (dir) {
    case ConvDir::kFprop: break;
    case ConvDir::kDgrad:
      if (s.stride_h > 1 || s.stride_w > 1) {
        std::vector<DgradClass> classes;
        return tile != Sm90Tile::kSplitK && dgrad_classes(s, elem_bytes, &classes);  // classes: no split-K
      }
      if (!dgrad_as_fprop(s, &f)) return false;
      break;
    case ConvDir::kWgrad:
      return wgrad_geometry_ok(s, elem_bytes) && (tile != Sm90Tile::kSplitK || make_wgrad_plan(s, tile, 0).splits >= 2);
  }
  if (!fprop_geometry_ok(f, elem_bytes)) return false;
  return tile != Sm90Tile::kSplitK || k_iters_of(f, elem_bytes) >= 2;  // split-K needs two k-iterations
}

// fprop: the split-K partials (the bias is read in T); dgrad: the split-K partials of its fprop (+ the
// flipped filter or class sub-filters for TF32). The rule's (kAuto) partials are optional: counted only
// when they fit workspace_limit.
size_t workspace_bytes_tile(Sm90Tile tile, const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t workspace_limit) {
  if (elem_bytes != 2 && elem_bytes != 4) return 0;
  Conv2dShape f = s;
  size_t fixed = 0;
  if (dir == ConvDir::kFprop) {
    if (!fprop_geometry_ok(s, elem_bytes)) return 0;
  } else if (dir == ConvDir::kDgrad) {
    std::vector<DgradClass> classes;
    if (dgrad_classes(s, elem_bytes, &classes)) return class_filter_bytes(s, elem_bytes);  // no partials
    if (!dgrad_as_fprop(s, &f) || !fprop_geometry_ok(f, elem_bytes)) return 0;
    fixed = flip_filter_bytes(s, elem_bytes);
  } else {
    if (!wgrad_geometry_ok(s, elem_bytes)) return 0;
    const size_t limit = tile == Sm90Tile::kSplitK ? SIZE_MAX : workspace_limit;  // forced: its whole need
    return wgrad_partial_bytes(s, make_wgrad_plan(s, tile, limit));
  }
  const size_t split = splitk_bytes(f, make_plan(f, elem_bytes, tile));
  if (tile == Sm90Tile::kAuto && fixed + split > workspace_limit) return fixed;
  return fixed + split;
}

// The configuration the launcher runs for s under a workspace of `limit` bytes, in words (explain()).
std::string describe_plan(const Sm90Plan& p, int64_t groups) {
  const int64_t tiles = p.m_tiles * p.n_tiles * groups;
  return std::to_string(p.bm) + "x" + std::to_string(p.bn) + " tiles (" + std::to_string(tiles) + (tiles == 1 ? " tile" : " tiles") +
         (p.splits > 1 ? " x " + std::to_string(p.splits) + " K slices" : "") + ", " + std::to_string(p.k_iters) +
         " k-iterations)";
}

std::string describe_tile(Sm90Tile tile, const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t limit) {
  if (!can_implement_tile(tile, s, dir, elem_bytes)) return "";
  Sm90Plan plan;
  if (dir == ConvDir::kWgrad) {
    plan = make_wgrad_plan(s, tile, tile == Sm90Tile::kSplitK ? SIZE_MAX : limit);
    return "wgrad: " + describe_plan(plan, s.groups);
  }
  Conv2dShape f = s;
  size_t fixed = 0;
  if (dir == ConvDir::kDgrad) {
    std::vector<DgradClass> classes;
    if (dgrad_classes(s, elem_bytes, &classes)) {
      int64_t live = 0;
      for (const DgradClass& c : classes) live += c.Rt > 0 && c.St > 0 ? 1 : 0;
      return "dgrad: " + std::to_string(classes.size()) + " residue classes (" + std::to_string(live) +
             " with taps), each a stride-1 fprop of dy under the tile rule";
    }
    dgrad_as_fprop(s, &f);
    fixed = flip_filter_bytes(s, elem_bytes);
  }
  if (!fprop_plan(f, elem_bytes, tile, false, limit > fixed ? limit - fixed : 0, &plan)) plan = make_plan(f, elem_bytes, tile);
  const char* what = dir != ConvDir::kDgrad ? ""
                     : elem_bytes == 2     ? "dgrad (w read flipped): "
                                           : "dgrad (flipped filter): ";
  return what + describe_plan(plan, s.groups);
}

template <typename T>
cudaError_t fprop_fused_tile(Sm90Tile tile, const Conv2dShape& s, const T* x, const T* w, const float* scale,
                             const float* bias, const T* residual, bool relu, T* y, void* ws, size_t ws_bytes,
                             cudaStream_t stream) {
  ConvEpilogue<T> epi;
  epi.scale = scale;
  epi.bias = bias;
  epi.residual = residual;
  epi.relu = relu;
  return run_fprop<T>(tile, s, x, w, epi, y, ws, ws_bytes, stream);
}

template <typename T>
cudaError_t fprop_tile(Sm90Tile tile, const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, void* ws,
                       size_t ws_bytes, cudaStream_t stream) {
  ConvEpilogue<T> epi;
  epi.conv_bias = bias;  // read in T by the epilogue: the workspace is all the split-K partials'
  return run_fprop<T>(tile, s, x, w, epi, y, ws, ws_bytes, stream);
}

template <typename T>
cudaError_t strided_dgrad(Sm90Tile tile, const Conv2dShape& s, const std::vector<DgradClass>& classes, const T* dy,
                          const T* w, T* dx, void* ws, size_t ws_bytes, cudaStream_t stream) {
  constexpr bool kDirect = sizeof(T) == 2;  // w read by the loads (kDgradW); TF32 needs the sub-filters
  const size_t filt = class_filter_bytes(s, sizeof(T));
  if (dy == nullptr || w == nullptr || dx == nullptr || (filt > 0 && (ws == nullptr || ws_bytes < filt)) ||
      (ws != nullptr && !aligned(ws, 16)) || tile == Sm90Tile::kSplitK)
    return cudaErrorInvalidValue;
  bool any_empty = false;
  for (const DgradClass& c : classes) any_empty = any_empty || c.Rt == 0 || c.St == 0;
  if (any_empty) {  // rows/columns no tap reaches: dx is 0 there
    cudaError_t err = cudaMemsetAsync(dx, 0, size_t(s.N * s.H * s.W * s.C) * sizeof(T), stream);
    if (err != cudaSuccess) return err;
  }
  int64_t off = 0;  // TF32: each class's sub-filter, packed in class order (every tap once)
  for (const DgradClass& c : classes) {
    if (c.Rt == 0 || c.St == 0) continue;
    if constexpr (kDirect) {
      // class tap (t, u) is w's (r0h + step_h·(Rt − 1 − t), r0w + step_w·(St − 1 − u)), as class_filter_kernel
      const Sm90TapMap tm{int(c.r0h + c.step_h * (c.Rt - 1)), int(c.step_h), int(c.r0w + c.step_w * (c.St - 1)),
                          int(c.step_w), s.K, s.R, s.S, s.Cg()};
      cudaError_t err = run_fprop<T>(tile, c.f, dy, w, ConvEpilogue<T>{}, dx, nullptr, 0, stream, &c.rm, nullptr, &tm);
      if (err != cudaSuccess) return err;
    } else {  // TF32: each class's packed sub-filter (K-major B) in the workspace
      T* wc = static_cast<T*>(ws) + off;
      const int64_t total = s.K * c.Rt * c.St * s.Cg();
      off += (total + 7) / 8 * 8;  // 16-byte aligned starts (TMA)
      FC_LAUNCH(grid_for(total, 256), 256, 0, stream, class_filter_kernel<T>)(w, wc, s.K, s.R, s.S, s.Cg(),
                                                                            s.groups, c.r0h, c.r0w, c.step_h,
                                                                            c.step_w, c.Rt, c.St);
      cudaError_t err = launch_status();
      if (err != cudaSuccess) return err;
      err = run_fprop<T>(tile, c.f, dy, wc, ConvEpilogue<T>{}, dx, nullptr, 0, stream, &c.rm);
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t dgrad_tile(Sm90Tile tile, const Conv2dShape& s, const T* dy, const T* w, T* dx, void* ws, size_t ws_bytes,
                       cudaStream_t stream) {
  std::vector<DgradClass> classes;
  if (dgrad_classes(s, sizeof(T), &classes)) return strided_dgrad<T>(tile, s, classes, dy, w, dx, ws, ws_bytes, stream);
  Conv2dShape f;
  if (!dgrad_as_fprop(s, &f) || dy == nullptr || w == nullptr || dx == nullptr) return cudaErrorInvalidValue;
  if constexpr (sizeof(T) == 2) {  // w read flipped by the loads: the workspace is all split-K partials
    const Sm90TapMap tm{int(s.R - 1), 1, int(s.S - 1), 1, s.K, s.R, s.S, s.Cg()};
    return run_fprop<T>(tile, f, dy, w, ConvEpilogue<T>{}, dx, ws, ws_bytes, stream, nullptr, nullptr, &tm);
  } else {  // TF32: no N-major tf32 wgmma, so the flipped copy w' (K-major B) in the workspace
    const size_t flip = flip_filter_bytes(s, sizeof(T));
    if (ws == nullptr || ws_bytes < flip || !aligned(ws, 16)) return cudaErrorInvalidValue;
    T* wf = static_cast<T*>(ws);
    const int64_t total = s.K * s.R * s.S * s.Cg();
    FC_LAUNCH(grid_for(total, 256), 256, 0, stream, flip_filter_kernel<T>)(w, wf, s.K, s.R, s.S, s.Cg(), s.groups);
    cudaError_t err = launch_status();
    if (err != cudaSuccess) return err;
    unsigned char* rest = ws_bytes > flip ? static_cast<unsigned char*>(ws) + flip : nullptr;
    return run_fprop<T>(tile, f, dy, wf, ConvEpilogue<T>{}, dx, rest, ws_bytes > flip ? ws_bytes - flip : 0, stream);
  }
}

// conv2d_bn_train's fprop: the rule's plan without split-K (fprop_plan's `whole`), one (mean, M2) slot per
// warp's 16 rows of each M tile.
constexpr int kStatsRows = 16;
Sm90Plan stats_plan(const Conv2dShape& s) {
  Sm90Plan plan;
  fprop_plan(s, 2, Sm90Tile::kAuto, true, 0, &plan);  // kAuto never fails
  return plan;
}
int64_t stats_slots(const Sm90Plan& plan) { return plan.m_tiles * (plan.bm / kStatsRows); }

}  // namespace

// The five algorithms of this file: the rule's tiles, and each configuration forced.
#define FASTCONV_SM90_ALGO(algo, tile)                                                                               \
  bool conv2d_##algo##_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes) {                            \
    return can_implement_tile(tile, s, dir, elem_bytes);                                                             \
  }                                                                                                                  \
  size_t conv2d_##algo##_workspace_bytes(const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t limit) {          \
    return workspace_bytes_tile(tile, s, dir, elem_bytes, limit);                                                    \
  }                                                                                                                  \
  std::string conv2d_##algo##_describe(const Conv2dShape& s, ConvDir dir, int elem_bytes, size_t limit) {            \
    return describe_tile(tile, s, dir, elem_bytes, limit);                                                           \
  }                                                                                                                  \
  template <typename T>                                                                                              \
  cudaError_t conv2d_##algo##_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, void* ws,     \
                                    size_t ws_bytes, cudaStream_t stream) {                                          \
    return fprop_tile<T>(tile, s, x, w, bias, y, ws, ws_bytes, stream);                                              \
  }                                                                                                                  \
  template <typename T>                                                                                              \
  cudaError_t conv2d_##algo##_dgrad(const Conv2dShape& s, const T* dy, const T* w, T* dx, void* ws, size_t ws_bytes, \
                                    cudaStream_t stream) {                                                           \
    return dgrad_tile<T>(tile, s, dy, w, dx, ws, ws_bytes, stream);                                                  \
  }                                                                                                                  \
  template <typename T>                                                                                              \
  cudaError_t conv2d_##algo##_wgrad(const Conv2dShape& s, const T* dy, const T* x, T* dw, void* ws, size_t ws_bytes, \
                                    cudaStream_t stream) {                                                           \
    return run_wgrad<T>(tile, s, dy, x, dw, ws, ws_bytes, stream);                                                   \
  }                                                                                                                  \
  template cudaError_t conv2d_##algo##_fprop<__half>(const Conv2dShape&, const __half*, const __half*, const __half*, \
                                                     __half*, void*, size_t, cudaStream_t);                          \
  template cudaError_t conv2d_##algo##_fprop<__nv_bfloat16>(const Conv2dShape&, const __nv_bfloat16*,               \
                                                            const __nv_bfloat16*, const __nv_bfloat16*,             \
                                                            __nv_bfloat16*, void*, size_t, cudaStream_t);           \
  template cudaError_t conv2d_##algo##_fprop<float>(const Conv2dShape&, const float*, const float*, const float*,    \
                                                    float*, void*, size_t, cudaStream_t);                            \
  template cudaError_t conv2d_##algo##_dgrad<__half>(const Conv2dShape&, const __half*, const __half*, __half*,      \
                                                     void*, size_t, cudaStream_t);                                   \
  template cudaError_t conv2d_##algo##_dgrad<__nv_bfloat16>(const Conv2dShape&, const __nv_bfloat16*,               \
                                                            const __nv_bfloat16*, __nv_bfloat16*, void*, size_t,    \
                                                            cudaStream_t);                                           \
  template cudaError_t conv2d_##algo##_dgrad<float>(const Conv2dShape&, const float*, const float*, float*, void*,   \
                                                    size_t, cudaStream_t);                                           \
  template cudaError_t conv2d_##algo##_wgrad<__half>(const Conv2dShape&, const __half*, const __half*, __half*,      \
                                                     void*, size_t, cudaStream_t);                                   \
  template cudaError_t conv2d_##algo##_wgrad<__nv_bfloat16>(const Conv2dShape&, const __nv_bfloat16*,               \
                                                            const __nv_bfloat16*, __nv_bfloat16*, void*, size_t,    \
                                                            cudaStream_t);                                           \
  template cudaError_t conv2d_##algo##_wgrad<float>(const Conv2dShape&, const float*, const float*, float*, void*,   \
                                                    size_t, cudaStream_t);
FASTCONV_SM90_ALGO(implicit_gemm_sm90, Sm90Tile::kAuto)
FASTCONV_SM90_ALGO(implicit_gemm_sm90_128x128, Sm90Tile::kLarge)
FASTCONV_SM90_ALGO(implicit_gemm_sm90_128x64, Sm90Tile::kWide)
FASTCONV_SM90_ALGO(implicit_gemm_sm90_64x64, Sm90Tile::kSmall)
FASTCONV_SM90_ALGO(implicit_gemm_sm90_splitk, Sm90Tile::kSplitK)
#undef FASTCONV_SM90_ALGO

size_t conv2d_implicit_gemm_sm90_fprop_stats_workspace_bytes(const Conv2dShape& s) {
  if (!fprop_geometry_ok(s, 2)) return 0;
  return align_ws(size_t(stats_slots(stats_plan(s))) * size_t(s.K) * sizeof(float2));
}

template <typename T>
cudaError_t conv2d_implicit_gemm_sm90_fprop_stats(const Conv2dShape& s, const T* x, const T* w, T* y,
                                                  float* save_mean, float* save_invstd, float* batch_var, double eps,
                                                  void* ws, size_t ws_bytes, cudaStream_t stream) {
  static_assert(sizeof(T) == 2, "statistics are 16-bit only (as conv2d_implicit_gemm_fprop_stats)");
  if (!fprop_geometry_ok(s, 2) || save_mean == nullptr || save_invstd == nullptr || batch_var == nullptr ||
      ws == nullptr || !aligned(ws, 16) || ws_bytes < conv2d_implicit_gemm_sm90_fprop_stats_workspace_bytes(s) ||
      !(eps >= 0.0))
    return cudaErrorInvalidValue;
  const Sm90Plan plan = stats_plan(s);  // what run_fprop picks with `stats` and no split-K workspace
  float2* part = static_cast<float2*>(ws);
  cudaError_t err = run_fprop<T>(Sm90Tile::kAuto, s, x, w, ConvEpilogue<T>{}, y, nullptr, 0, stream, nullptr, part);
  if (err != cudaSuccess) return err;
  FC_LAUNCH(dim3(static_cast<unsigned int>(s.K)), kStatsThreads, 0, stream, bn_stats_finalize_kernel)(
      part, stats_slots(plan), kStatsRows, int(s.fprop_m()), int(s.K), eps, save_mean, save_invstd, batch_var);
  return launch_status();
}
template cudaError_t conv2d_implicit_gemm_sm90_fprop_stats<__half>(const Conv2dShape&, const __half*, const __half*,
                                                                   __half*, float*, float*, float*, double, void*,
                                                                   size_t, cudaStream_t);
template cudaError_t conv2d_implicit_gemm_sm90_fprop_stats<__nv_bfloat16>(const Conv2dShape&, const __nv_bfloat16*,
                                                                          const __nv_bfloat16*, __nv_bfloat16*,
                                                                          float*, float*, float*, double, void*,
                                                                          size_t, cudaStream_t);

template <typename T>
cudaError_t conv2d_implicit_gemm_sm90_fprop_fused(const Conv2dShape& s, const T* x, const T* w, const float* scale,
                                                  const float* bias, const T* residual, bool relu, T* y, void* ws,
                                                  size_t ws_bytes, cudaStream_t stream) {
  return fprop_fused_tile<T>(Sm90Tile::kAuto, s, x, w, scale, bias, residual, relu, y, ws, ws_bytes, stream);
}
template cudaError_t conv2d_implicit_gemm_sm90_fprop_fused<__half>(const Conv2dShape&, const __half*, const __half*,
                                                                   const float*, const float*, const __half*, bool,
                                                                   __half*, void*, size_t, cudaStream_t);
template cudaError_t conv2d_implicit_gemm_sm90_fprop_fused<__nv_bfloat16>(const Conv2dShape&, const __nv_bfloat16*,
                                                                          const __nv_bfloat16*, const float*,
                                                                          const float*, const __nv_bfloat16*, bool,
                                                                          __nv_bfloat16*, void*, size_t, cudaStream_t);
template cudaError_t conv2d_implicit_gemm_sm90_fprop_fused<float>(const Conv2dShape&, const float*, const float*,
                                                                  const float*, const float*, const float*, bool,
                                                                  float*, void*, size_t, cudaStream_t);

}  // namespace cuda
}  // namespace fastconv
