// conv2d_igemm_tc.cu — implicit-GEMM convolution on tensor cores (sm_80+ mma.sync), NHWC / KRSC / NPQK.
//
// fprop, per group g (Cg = C/groups, Kg = K/groups), with no im2col buffer:
//   GEMM  M = N·P·Q (output pixels m = (n·P + p)·Q + q), N = Kg (filters), K = R·S·Cg (taps in KRSC
//         order, k = (r·S + s)·Cg + c)
//   A[m][k] = x[n, p·stride_h − pad_h + r·dil_h, q·stride_w − pad_w + s·dil_w, g·Cg + c]  (0 in padding)
//   B[j][k] = w[g·Kg + j, r, s, c]                      (a KRSC filter row is a row of B: "col" layout)
//   y[m, g·Kg + j] = epilogue( Σ_k A[m][k] · B[j][k] )  (csrc/cuda/epilogue.cuh)
//
// Kernel: igemm_fprop_kernel<Cfg, T, kVec>
//   grid  (ceil(M / BM), ceil(Kg / BN), groups); block Cfg::kThreads = (BM/WM)·(BN/WN) warps.
//   Row table: at the start each block writes, per tile row m, the image offset n·x.n and the window
//   origin (p·stride_h − pad_h, q·stride_w − pad_w) to shared memory (rows past M get an origin far
//   outside the image, so every later bounds check zero-fills them).
//   Mainloop: a Cfg::kStages-deep ring of BM x BK (A) and BN x BK (B) tiles in shared memory; tile
//   kt + kStages − 1 is fetched while tile kt is multiplied.
//     kVec = true : each thread issues 16-byte cp.async copies (8 channels of one tap) with the source
//                   size set to 0 outside the image or past M, Kg, K, which zero-fills the chunk. Needs
//                   Cg % 8 == 0 and Kg % 8 == 0 (a chunk never straddles a tap or the matrix edge) and
//                   16-byte aligned pointers and strides: the launcher proves it.
//     kVec = false: element-wise predicated loads through registers, any C and K (C = 3, odd K).
//   Shared tiles are rows of BK = 32 elements = 4 16-byte chunks, stored at chunk ^ ((row >> 1) & 3):
//   the 8 rows addressed by one ldmatrix (or cp.async) phase then fall in 8 distinct bank groups.
//   Warp (wm, wn) owns the WM x WN sub-tile at (wm·WM, wn·WN). Per 16-wide k step it loads its A
//   fragments (ldmatrix.x4 per 16 rows) and B fragments (ldmatrix.x4 per 16 filters) and issues
//   (WM/16)·(WN/8) mma.sync.aligned.m16n8k16 with FP32 accumulators in registers.
//   Epilogue: straight from the accumulators to y. In each 16x8 mma tile, lane l holds rows l/4 and
//   l/4 + 8, channels 2·(l%4) and 2·(l%4) + 1: one paired 32-bit store per row (kVec), else two
//   predicated scalar stores.
//
// dgrad and wgrad are not implemented yet (can_implement is false for them); float/TF32 neither.
#include "common.cuh"
#include "epilogue.cuh"

namespace fastconv {
namespace cuda {
namespace {

// ---- tile configurations ----------------------------------------------------------------------------

// Threadblock tile BM x BN x BK, warp tile WM x WN, instruction m16n8k16, kStages-deep pipeline.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int kStages_>
struct IgemmConfig {
  static constexpr int kBM = BM_, kBN = BN_, kBK = BK_, kWM = WM_, kWN = WN_, kStages = kStages_;
  static constexpr int kWarpsM = kBM / kWM, kWarpsN = kBN / kWN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMmaM = kWM / 16, kMmaN = kWN / 8;    // mma tiles per warp
  static constexpr int kChunk = 8;                            // 16-bit elements per 16-byte chunk
  static constexpr int kChunksPerRow = kBK / kChunk;
  static constexpr int kTileA = kBM * kBK, kTileB = kBN * kBK;  // elements per stage
  static constexpr int kRowTableBytes = kBM * 16;
  static constexpr int kSmemBytes = kStages * (kTileA + kTileB) * 2 + kRowTableBytes;

  static_assert(kBK == 32, "the shared-memory swizzle is written for rows of 4 16-byte chunks (BK = 32)");
  static_assert(kBM % kWM == 0 && kBN % kWN == 0, "warp tiles must divide the threadblock tile");
  static_assert(kWM % 16 == 0 && kWN % 16 == 0, "A and B fragments are loaded 16 rows at a time (ldmatrix.x4)");
  static_assert(kBM % 16 == 0 && kBN % 16 == 0, "the swizzle pairs rows: tiles must be whole 16-row groups");
  static_assert(kThreads % kBK == 0, "element-wise loads give every thread one fixed k column");
  static_assert((kBM * kChunksPerRow) % kThreads == 0 && (kBN * kChunksPerRow) % kThreads == 0,
                "every thread must copy the same number of A and B chunks");
  static_assert(kStages >= 2, "the pipeline needs at least two stages");
  static_assert(kSmemBytes <= 160 * 1024, "shared memory must fit an A100's 163 KB per block");
};
// 128x128x32, 2x2 warps of 64x64, 3 stages (51 KB): the large-problem tile.
using IgemmLarge = IgemmConfig<128, 128, 32, 64, 64, 3>;
// 64x64x32, 2x2 warps of 32x32, 3 stages (26 KB): small M or Kg, or too few large tiles to fill the GPU.
using IgemmSmall = IgemmConfig<64, 64, 32, 32, 32, 3>;

// Large tiles only when they still give two blocks per SM on an H100 (132 SMs).
constexpr int64_t kLargeTileMinBlocks = 264;
constexpr unsigned int kMaxGridYZ = 65535;
// Every int32 index (M, K, H + window reach, ...) stays below this; rows past M get this origin.
constexpr int64_t kIndexLimit = int64_t(1) << 30;
constexpr int kInvalidOrigin = -(1 << 30);
constexpr size_t kWorkspaceAlign = 256;

// ---- kernel parameters (torch-free, 64-bit strides) -------------------------------------------------

template <typename T>
struct IgemmFpropParams {
  const T* x;
  const T* w;
  T* y;
  ConvEpilogue<T> epi;
  int H, W, P, Q, S, Cg, Kg, K;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  int M, Kgemm;                 // N·P·Q and R·S·Cg
  int64_t xs_n, xs_h, xs_w;     // x strides (channel stride 1)
  int64_t ws_k, ws_r, ws_s;     // w strides (channel stride 1)
};

// One tile row of A: where output pixel m's window starts.
struct RowInfo {
  int64_t base;  // n·x.n
  int h0, w0;    // p·stride_h − pad_h, q·stride_w − pad_w (kInvalidOrigin past M)
};
static_assert(sizeof(RowInfo) == 16, "the row table is sized at 16 bytes per row");

// ---- PTX wrappers -----------------------------------------------------------------------------------

__device__ __forceinline__ unsigned int smem_addr(const void* p) {
  return static_cast<unsigned int>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(unsigned int dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], unsigned int addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

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

// Element offset of (row, chunk) in a swizzled tile of 32-element rows.
__device__ __forceinline__ int swizzle(int row, int chunk) { return row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3); }

// Tap (r, s) and channel c of GEMM column k (KRSC order), for k < Kgemm.
struct Tap {
  int r, s, c;
};
__device__ __forceinline__ Tap tap_of(int k, int Cg, int S) {
  const int rs = k / Cg;
  const int r = rs / S;
  return Tap{r, rs - r * S, k - rs * Cg};
}

// ---- tile loaders -----------------------------------------------------------------------------------

// Tile kt of A and B into one stage, 16-byte chunks. Thread tid copies chunk tid % 4 of rows
// tid / 4 + i·(kThreads / 4): its k column, hence its tap, is the same for every row.
template <typename Cfg, typename T>
__device__ __forceinline__ void load_tiles_vec(const IgemmFpropParams<T>& p, const RowInfo* rows, const T* xg,
                                               const T* wg, int n0, int kt, uint16_t* As, uint16_t* Bs, int tid) {
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
    cp_async_16(smem_addr(As + swizzle(row, chunk)), src, ok ? 16 : 0);
  }
#pragma unroll
  for (int i = 0; i < Cfg::kBN / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kChunksPerRow + i * kRowsPerPass;
    const int j = n0 + row;
    const bool ok = k_ok && j < p.Kg;
    const T* src = ok ? wg + j * p.ws_k + t.r * p.ws_r + t.s * p.ws_s + t.c : p.w;
    cp_async_16(smem_addr(Bs + swizzle(row, chunk)), src, ok ? 16 : 0);
  }
}

// The same tile, one predicated 16-bit load per element through registers (any C, K). Thread tid
// owns k column tid % 32 of rows tid / 32 + i·(kThreads / 32).
template <typename Cfg, typename T>
__device__ __forceinline__ void load_tiles_scalar(const IgemmFpropParams<T>& p, const RowInfo* rows, const T* xg,
                                                  const T* wg, int n0, int kt, uint16_t* As, uint16_t* Bs, int tid) {
  constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kBK;
  const int kcol = tid % Cfg::kBK;
  const int k = kt * Cfg::kBK + kcol;
  const bool k_ok = k < p.Kgemm;
  const Tap t = tap_of(k_ok ? k : 0, p.Cg, p.S);
  const int dh = t.r * p.dil_h, dw = t.s * p.dil_w;
  const uint16_t* xb = reinterpret_cast<const uint16_t*>(xg);  // 16-bit patterns: 0 is +0 in half and bf16
  const uint16_t* wb = reinterpret_cast<const uint16_t*>(wg);
  const int sub = kcol % Cfg::kChunk, chunk = kcol / Cfg::kChunk;
#pragma unroll 8
  for (int i = 0; i < Cfg::kBM / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kBK + i * kRowsPerPass;
    const RowInfo ri = rows[row];
    const int h = ri.h0 + dh, w = ri.w0 + dw;
    const bool ok = k_ok && static_cast<unsigned int>(h) < static_cast<unsigned int>(p.H) &&
                    static_cast<unsigned int>(w) < static_cast<unsigned int>(p.W);
    As[swizzle(row, chunk) + sub] = ok ? xb[ri.base + h * p.xs_h + w * p.xs_w + t.c] : uint16_t(0);
  }
#pragma unroll 8
  for (int i = 0; i < Cfg::kBN / kRowsPerPass; ++i) {
    const int row = tid / Cfg::kBK + i * kRowsPerPass;
    const int j = n0 + row;
    const bool ok = k_ok && j < p.Kg;
    Bs[swizzle(row, chunk) + sub] = ok ? wb[j * p.ws_k + t.r * p.ws_r + t.s * p.ws_s + t.c] : uint16_t(0);
  }
}

// ---- the kernel -------------------------------------------------------------------------------------

template <typename Cfg, typename T, bool kVec>
__global__ void __launch_bounds__(Cfg::kThreads, 1) igemm_fprop_kernel(const IgemmFpropParams<T> p) {
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, BK = Cfg::kBK, WM = Cfg::kWM, WN = Cfg::kWN;
  constexpr int kStages = Cfg::kStages, kMmaM = Cfg::kMmaM, kMmaN = Cfg::kMmaN;
  extern __shared__ __align__(128) unsigned char smem[];
  uint16_t* smem_a = reinterpret_cast<uint16_t*>(smem);             // [kStages][BM·BK]
  uint16_t* smem_b = smem_a + kStages * Cfg::kTileA;                 // [kStages][BN·BK]
  RowInfo* rows = reinterpret_cast<RowInfo*>(smem_b + kStages * Cfg::kTileB);  // [BM]

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % Cfg::kWarpsM, warp_n = warp / Cfg::kWarpsM;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, g = blockIdx.z;
  const T* xg = p.x + static_cast<int64_t>(g) * p.Cg;
  const T* wg = p.w + static_cast<int64_t>(g) * p.Kg * p.ws_k;

  const int PQ = p.P * p.Q;
  for (int i = tid; i < BM; i += Cfg::kThreads) {
    const int m = m0 + i;
    RowInfo ri{0, kInvalidOrigin, kInvalidOrigin};
    if (m < p.M) {
      const int n = m / PQ, pq = m - n * PQ;
      const int pp = pq / p.Q, qq = pq - pp * p.Q;
      ri.base = n * p.xs_n;
      ri.h0 = pp * p.stride_h - p.pad_h;
      ri.w0 = qq * p.stride_w - p.pad_w;
    }
    rows[i] = ri;
  }
  __syncthreads();

  const int num_k_tiles = (p.Kgemm + BK - 1) / BK;
  auto load = [&](int stage, int kt) {
    uint16_t* As = smem_a + stage * Cfg::kTileA;
    uint16_t* Bs = smem_b + stage * Cfg::kTileB;
    if constexpr (kVec) load_tiles_vec<Cfg, T>(p, rows, xg, wg, n0, kt, As, Bs, tid);
    else load_tiles_scalar<Cfg, T>(p, rows, xg, wg, n0, kt, As, Bs, tid);
  };

  float acc[kMmaM][kMmaN][4];
#pragma unroll
  for (int i = 0; i < kMmaM; ++i)
#pragma unroll
    for (int j = 0; j < kMmaN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Prologue: tiles 0 .. kStages − 2 in flight (one commit group each, empty past the last tile).
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < num_k_tiles) load(st, st);
    cp_async_commit();
  }

  for (int kt = 0; kt < num_k_tiles; ++kt) {
    // kStages − 1 + kt groups are committed; allowing kStages − 2 pending means group kt has landed.
    cp_async_wait<kStages - 2>();
    // Tile kt is visible to every thread, and every thread is done with tile kt − 1, whose stage the
    // next load overwrites.
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < num_k_tiles) load(next % kStages, next);
    cp_async_commit();

    const uint16_t* As = smem_a + (kt % kStages) * Cfg::kTileA;
    const uint16_t* Bs = smem_b + (kt % kStages) * Cfg::kTileB;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      unsigned int af[kMmaM][4], bf[kMmaN][2];
#pragma unroll
      for (int i = 0; i < kMmaM; ++i) {
        // Lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15: a0..a3.
        const int row = warp_m * WM + i * 16 + (lane & 15);
        ldmatrix_x4(af[i], smem_addr(As + swizzle(row, kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int j = 0; j < kMmaN; j += 2) {
        // Matrices: (filters 0-7, k 0-7), (0-7, k 8-15), (8-15, k 0-7), (8-15, k 8-15) = b0, b1 of
        // n-tiles j and j + 1.
        const int row = warp_n * WN + j * 8 + (lane & 7) + ((lane >> 4) << 3);
        unsigned int r[4];
        ldmatrix_x4(r, smem_addr(Bs + swizzle(row, kk * 2 + ((lane >> 3) & 1))));
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) mma_16816<T>(acc[i][j], af[i], bf[j]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: y is dense NHWC, so output pixel m, channel ch sits at m·K + ch.
#pragma unroll
  for (int i = 0; i < kMmaM; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + warp_m * WM + i * 16 + (lane >> 2) + half * 8;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < kMmaN; ++j) {
        const int jj = n0 + warp_n * WN + j * 8 + (lane & 3) * 2;  // filter inside the group
        const int64_t ch = static_cast<int64_t>(g) * p.Kg + jj;
        const int64_t off = static_cast<int64_t>(m) * p.K + ch;
        const float v0 = acc[i][j][2 * half], v1 = acc[i][j][2 * half + 1];
        if constexpr (kVec) {
          // Kg % 8 == 0 and jj even: the pair is entirely inside or entirely outside the group.
          if (jj < p.Kg) p.epi.store2(p.y, off, ch, v0, v1);
        } else {
          if (jj < p.Kg) p.epi.store(p.y, off, ch, v0);
          if (jj + 1 < p.Kg) p.epi.store(p.y, off + 1, ch + 1, v1);
        }
      }
    }
  }
}

// bias (T) -> float, for the unfused fprop entry point.
template <typename T>
__global__ void __launch_bounds__(256) bias_to_acc_kernel(const T* __restrict__ b, float* __restrict__ out, int64_t K) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(gridDim.x) * blockDim.x) {
    out[k] = to_acc<T>(b[k]);
  }
}

// ---- host side --------------------------------------------------------------------------------------

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// y dense NHWC: offset(n, k, p, q) = ((n·P + p)·Q + q)·K + k.
bool dense_nhwc_y(const Conv2dShape& s) {
  return s.y.c == 1 && s.y.w == s.K && s.y.h == s.Q * s.K && s.y.n == s.P * s.Q * s.K;
}

bool fprop_shape_ok(const Conv2dShape& s) {
  if (!s.valid() || s.N <= 0 || s.P <= 0 || s.Q <= 0) return false;
  if (s.x.c != 1 || s.w.c != 1 || !dense_nhwc_y(s)) return false;  // channels_last operands only
  // Every index the kernel keeps in 32 bits, with room for the window reach.
  const int64_t reach_h = s.P * s.stride_h + s.pad_h + (s.R - 1) * s.dil_h;
  const int64_t reach_w = s.Q * s.stride_w + s.pad_w + (s.S - 1) * s.dil_w;
  const int64_t limits[] = {s.fprop_m(), s.fprop_k(), s.H, s.W, reach_h, reach_w, s.K, s.C};
  for (int64_t v : limits) {
    if (v >= kIndexLimit) return false;
  }
  return ceil_div(s.Kg(), IgemmSmall::kBN) <= kMaxGridYZ && s.groups <= kMaxGridYZ &&
         ceil_div(s.fprop_m(), IgemmSmall::kBM) <= 0x7fffffffLL;
}

template <typename T>
IgemmFpropParams<T> make_params(const Conv2dShape& s, const T* x, const T* w, T* y, const ConvEpilogue<T>& epi) {
  IgemmFpropParams<T> p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.epi = epi;
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
  p.M = static_cast<int>(s.fprop_m());
  p.Kgemm = static_cast<int>(s.fprop_k());
  p.xs_n = s.x.n;
  p.xs_h = s.x.h;
  p.xs_w = s.x.w;
  p.ws_k = s.w.n;
  p.ws_r = s.w.h;
  p.ws_s = s.w.w;
  return p;
}

// The 16-byte path's preconditions: whole chunks per tap and per filter group, aligned rows.
template <typename T>
bool vec_ok(const Conv2dShape& s, const T* x, const T* w, const T* y, const T* residual) {
  constexpr int64_t V = 16 / sizeof(T);
  return s.Cg() % V == 0 && s.Kg() % V == 0 && s.x.n % V == 0 && s.x.h % V == 0 && s.x.w % V == 0 &&
         s.w.n % V == 0 && s.w.h % V == 0 && s.w.w % V == 0 && aligned16(x) && aligned16(w) && aligned16(y) &&
         (residual == nullptr || aligned16(residual));
}

template <typename Cfg, typename T, bool kVec>
cudaError_t launch_cfg(const IgemmFpropParams<T>& p, int64_t groups, cudaStream_t stream) {
  const auto kernel = igemm_fprop_kernel<Cfg, T, kVec>;
  // Above 48 KB, dynamic shared memory must be opted into (per kernel, idempotent).
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned int>(ceil_div(p.M, Cfg::kBM)), static_cast<unsigned int>(ceil_div(p.Kg, Cfg::kBN)),
                  static_cast<unsigned int>(groups));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return launch_status();
}

template <typename T>
cudaError_t launch_fprop(const Conv2dShape& s, const T* x, const T* w, const ConvEpilogue<T>& epi, T* y,
                         cudaStream_t stream) {
  if (!fprop_shape_ok(s) || x == nullptr || w == nullptr || y == nullptr) return cudaErrorInvalidValue;
  const IgemmFpropParams<T> p = make_params(s, x, w, y, epi);
  const bool vec = vec_ok(s, x, w, y, epi.residual);
  const bool large = s.Kg() >= IgemmLarge::kBN && s.fprop_m() >= IgemmLarge::kBM &&
                     ceil_div(s.fprop_m(), IgemmLarge::kBM) * ceil_div(s.Kg(), IgemmLarge::kBN) * s.groups >=
                         kLargeTileMinBlocks;
  if (large) {
    return vec ? launch_cfg<IgemmLarge, T, true>(p, s.groups, stream)
               : launch_cfg<IgemmLarge, T, false>(p, s.groups, stream);
  }
  return vec ? launch_cfg<IgemmSmall, T, true>(p, s.groups, stream)
             : launch_cfg<IgemmSmall, T, false>(p, s.groups, stream);
}

size_t bias_workspace_bytes(int64_t K) {
  return (static_cast<size_t>(K) * sizeof(float) + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

}  // namespace

bool conv2d_implicit_gemm_can_implement(const Conv2dShape& s, ConvDir dir, int elem_bytes) {
  return dir == ConvDir::kFprop && elem_bytes == 2 && fprop_shape_ok(s);
}

size_t conv2d_implicit_gemm_workspace_bytes(const Conv2dShape& s, ConvDir dir, int /*elem_bytes*/,
                                            size_t /*workspace_limit*/) {
  return dir == ConvDir::kFprop ? bias_workspace_bytes(s.K) : 0;
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
cudaError_t conv2d_implicit_gemm_fprop(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, void* ws,
                                       size_t ws_bytes, cudaStream_t stream) {
  ConvEpilogue<T> epi;
  if (bias != nullptr) {
    if (ws == nullptr || ws_bytes < bias_workspace_bytes(s.K)) return cudaErrorInvalidValue;
    float* bias_acc = static_cast<float*>(ws);
    bias_to_acc_kernel<T><<<grid_for(s.K, 256, 64), 256, 0, stream>>>(bias, bias_acc, s.K);
    const cudaError_t err = launch_status();
    if (err != cudaSuccess) return err;
    epi.bias = bias_acc;
  }
  return launch_fprop<T>(s, x, w, epi, y, stream);
}

// Not implemented yet: can_implement is false for these directions, so the binding never calls them.
template <typename T>
cudaError_t conv2d_implicit_gemm_dgrad(const Conv2dShape&, const T*, const T*, T*, void*, size_t, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template <typename T>
cudaError_t conv2d_implicit_gemm_wgrad(const Conv2dShape&, const T*, const T*, T*, void*, size_t, cudaStream_t) {
  return cudaErrorInvalidValue;
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
FASTCONV_INSTANTIATE_IGEMM(__half)
FASTCONV_INSTANTIATE_IGEMM(__nv_bfloat16)
#undef FASTCONV_INSTANTIATE_IGEMM

}  // namespace cuda
}  // namespace fastconv
