// gemm_simt.cu — batched SIMT GEMM, the engine behind the im2col and gemm1x1 convolutions.
//
//   C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]      row-major, FP32 accumulate
//   op(A) is M x K (A stored K x M when trans_a), op(B) is K x N (B stored N x K when trans_b).
//
// Kernel: gemm_simt_kernel<Tile, T, Out, V>
//   grid  (ceil(M / BM), ceil(N / BN), min(batch, 65535)); a block grid-strides over the batch.
//   block Tile::kThreads threads; thread (ty, tx) owns the TM x TN sub-tile of C at rows
//         m0 + ty·TM .. +TM, columns n0 + tx·TN .. +TN, in registers.
//   Per BK step every thread copies its share of the BM x BK slice of op(A) and the BK x BN slice
//   of op(B) into shared memory (converted to float, stored k-major so the inner product reads
//   float4 rows), then does TM·TN·BK FMAs from registers.
//   V is the global-load vector width: 1 (any shape) or 16 / sizeof(T) (16-byte loads), chosen at
//   launch only when the contiguous extent, the leading dimension, the batch stride and the base
//   pointer prove that every vector is aligned and either fully inside or fully outside the matrix.
//   Every load and store is predicated, so M, N, K need not be multiples of the tile.
//   beta == 0 never reads C (C may hold NaNs, as after an allocation).
#include "common.cuh"

namespace fastconv {
namespace cuda {
namespace {

// Threadblock tile BM x BN x BK, thread tile TM x TN; threads derived from them.
template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct GemmTile {
  static constexpr int kBM = BM_, kBN = BN_, kBK = BK_, kTM = TM_, kTN = TN_;
  static constexpr int kThreadsN = kBN / kTN;
  static constexpr int kThreadsM = kBM / kTM;
  static constexpr int kThreads = kThreadsM * kThreadsN;
  // Shared rows are padded by 4 floats: keeps float4 alignment and spreads the transposed stores
  // of k-contiguous operands over more banks.
  static constexpr int kPad = 4;
  static_assert(kBM % kTM == 0 && kBN % kTN == 0, "the thread tile must divide the block tile");
  static_assert(kTM % 4 == 0 && kTN % 4 == 0, "thread tiles are read from shared memory as float4");
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "a block must be whole warps and at most 1024 threads");
};
// 128x128x8 with 8x8 per thread (256 threads) for large problems; 64x64x8 with 4x4 per thread
// (256 threads) when the large tile would leave the GPU idle or waste most of a tile on tails.
using TileLarge = GemmTile<128, 128, 8, 8, 8>;
using TileSmall = GemmTile<64, 64, 8, 4, 4>;

// Enough blocks to keep an H100's 132 SMs busy with two blocks each.
constexpr int64_t kTargetBlocks = 264;
constexpr unsigned int kMaxGridYZ = 65535;

// Loads V consecutive elements (16 bytes when V > 1) as floats. The vector is unpacked with bit
// operations so it stays in registers (a reinterpreted local array would go to the stack).
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&f)[V]);
template <>
__device__ __forceinline__ void load_vec<float, 1>(const float* __restrict__ p, float (&f)[1]) { f[0] = *p; }
template <>
__device__ __forceinline__ void load_vec<__half, 1>(const __half* __restrict__ p, float (&f)[1]) {
  f[0] = __half2float(*p);
}
template <>
__device__ __forceinline__ void load_vec<__nv_bfloat16, 1>(const __nv_bfloat16* __restrict__ p, float (&f)[1]) {
  f[0] = __bfloat162float(*p);
}
template <>
__device__ __forceinline__ void load_vec<float, 4>(const float* __restrict__ p, float (&f)[4]) {
  const float4 r = *reinterpret_cast<const float4*>(p);
  f[0] = r.x; f[1] = r.y; f[2] = r.z; f[3] = r.w;
}
template <>
__device__ __forceinline__ void load_vec<__half, 8>(const __half* __restrict__ p, float (&f)[8]) {
  const uint4 r = *reinterpret_cast<const uint4*>(p);
  const unsigned int w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // little-endian: the lower half-word is the lower address
    f[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xffffu)));
    f[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
  }
}
template <>
__device__ __forceinline__ void load_vec<__nv_bfloat16, 8>(const __nv_bfloat16* __restrict__ p, float (&f)[8]) {
  const uint4 r = *reinterpret_cast<const uint4*>(p);
  const unsigned int w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // a bf16 is the upper half of the float with the same bits
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// Copies the BK x BD slice of one operand into sm[k][d] (float). The operand element (d, k) lives
// at X[d·ld + k] when k_contig, else at X[k·ld + d]; D and Kdim bound d and k.
template <typename T, int V, int BD, int BK, int kThreads, int kPad>
__device__ __forceinline__ void load_tile(float (*sm)[BD + kPad], const T* __restrict__ X, int64_t ld,
                                          bool k_contig, int64_t d0, int64_t k0, int64_t D, int64_t Kdim,
                                          int tid) {
  static_assert(BK % V == 0 && BD % V == 0, "a vector must not straddle the tile edge");
  constexpr int kVecs = BD * BK / V;
  constexpr int kIters = (kVecs + kThreads - 1) / kThreads;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int vi = tid + it * kThreads;
    if (kVecs % kThreads != 0 && vi >= kVecs) break;
    int dl, kl;
    if (k_contig) {
      dl = vi / (BK / V);
      kl = (vi % (BK / V)) * V;
    } else {
      kl = vi / (BD / V);
      dl = (vi % (BD / V)) * V;
    }
    const int64_t d = d0 + dl, k = k0 + kl;
    float f[V];
#pragma unroll
    for (int j = 0; j < V; ++j) f[j] = 0.f;
    // V > 1 only when the contiguous extent is a multiple of V, so the first element decides.
    if (d < D && k < Kdim) load_vec<T, V>(k_contig ? X + d * ld + k : X + k * ld + d, f);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (k_contig) sm[kl + j][dl] = f[j];
      else sm[kl][dl + j] = f[j];
    }
  }
}

template <typename Tile, typename T, typename Out, int V>
__global__ void __launch_bounds__(Tile::kThreads, 1)
gemm_simt_kernel(int64_t M, int64_t N, int64_t K, const T* __restrict__ A, int64_t lda, bool trans_a,
                 const T* __restrict__ B, int64_t ldb, bool trans_b, Out* __restrict__ C, int64_t ldc,
                 float alpha, float beta, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  constexpr int BM = Tile::kBM, BN = Tile::kBN, BK = Tile::kBK, TM = Tile::kTM, TN = Tile::kTN;
  constexpr int kPad = Tile::kPad;
  FC_SHARED_ALIGNED(16, float, As, [BK][BM + kPad]);
  FC_SHARED_ALIGNED(16, float, Bs, [BK][BN + kPad]);

  const int tid = threadIdx.x;
  const int tx = tid % Tile::kThreadsN;
  const int ty = tid / Tile::kThreadsN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;

  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const T* Ab = A + b * stride_a;
    const T* Bb = B + b * stride_b;
    Out* Cb = C + b * stride_c;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    for (int64_t k0 = 0; k0 < K; k0 += BK) {
      // op(A)(m, k): k contiguous unless transposed. op(B)(k, n): n contiguous unless transposed.
      load_tile<T, V, BM, BK, Tile::kThreads, kPad>(As, Ab, lda, !trans_a, m0, k0, M, K, tid);
      load_tile<T, V, BN, BK, Tile::kThreads, kPad>(Bs, Bb, ldb, trans_b, n0, k0, N, K, tid);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        float a[TM], bv[TN];
#pragma unroll
        for (int i = 0; i < TM; i += 4) {
          const float4 t = *reinterpret_cast<const float4*>(&As[kk][ty * TM + i]);
          a[i] = t.x; a[i + 1] = t.y; a[i + 2] = t.z; a[i + 3] = t.w;
        }
#pragma unroll
        for (int j = 0; j < TN; j += 4) {
          const float4 t = *reinterpret_cast<const float4*>(&Bs[kk][tx * TN + j]);
          bv[j] = t.x; bv[j + 1] = t.y; bv[j + 2] = t.z; bv[j + 3] = t.w;
        }
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t m = m0 + ty * TM + i;
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t n = n0 + tx * TN + j;
        if (n >= N) continue;
        Out* c = Cb + m * ldc + n;
        float v = alpha * acc[i][j];
        if (beta != 0.f) v = fmaf(beta, to_acc<Out>(*c), v);
        *c = from_acc<Out>(v);
      }
    }
  }
}

// True when 16-byte loads of X are provably aligned and never straddle the matrix edge.
template <typename T>
bool vec_ok(const T* X, int64_t ld, int64_t contig_extent, int64_t stride, int64_t batch) {
  constexpr int V = 16 / sizeof(T);
  return reinterpret_cast<uintptr_t>(X) % 16 == 0 && ld % V == 0 && contig_extent % V == 0 &&
         (batch <= 1 || stride % V == 0);
}

template <typename Tile, typename T, typename Out>
cudaError_t launch_tile(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, bool trans_a, const T* B,
                        int64_t ldb, bool trans_b, Out* C, int64_t ldc, float alpha, float beta, int64_t batch,
                        int64_t stride_a, int64_t stride_b, int64_t stride_c, bool vec, cudaStream_t stream) {
  const int64_t gx = ceil_div(M, Tile::kBM), gy = ceil_div(N, Tile::kBN);
  if (gx > 0x7fffffffLL || gy > kMaxGridYZ) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy),
                  static_cast<unsigned int>(min64(batch, kMaxGridYZ)));
  constexpr int kV = 16 / sizeof(T);
  if (vec) {
    FC_LAUNCH(grid, Tile::kThreads, 0, stream, gemm_simt_kernel<Tile, T, Out, kV>)(
        M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, alpha, beta, batch, stride_a, stride_b, stride_c);
  } else {
    FC_LAUNCH(grid, Tile::kThreads, 0, stream, gemm_simt_kernel<Tile, T, Out, 1>)(
        M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, alpha, beta, batch, stride_a, stride_b, stride_c);
  }
  return launch_status();
}

}  // namespace

template <typename T, typename Out>
cudaError_t gemm_simt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, bool trans_a, const T* B,
                      int64_t ldb, bool trans_b, Out* C, int64_t ldc, float alpha, float beta, int64_t batch,
                      int64_t stride_a, int64_t stride_b, int64_t stride_c, cudaStream_t stream) {
  if (M < 0 || N < 0 || K < 0 || batch < 0) return cudaErrorInvalidValue;
  if (M == 0 || N == 0 || batch == 0) return cudaSuccess;
  if (lda < 1 || ldb < 1 || ldc < N) return cudaErrorInvalidValue;
  if (lda < (trans_a ? M : K) || ldb < (trans_b ? K : N)) return cudaErrorInvalidValue;
  // K == 0 leaves op(A)·op(B) = 0; the kernel then just scales C (or zeroes it when beta == 0).
  const bool vec = vec_ok(A, lda, trans_a ? M : K, stride_a, batch) && vec_ok(B, ldb, trans_b ? K : N, stride_b, batch);
  const bool large = M >= TileLarge::kBM && N >= TileLarge::kBN &&
                     ceil_div(M, TileLarge::kBM) * ceil_div(N, TileLarge::kBN) * batch >= kTargetBlocks;
  if (large) {
    return launch_tile<TileLarge>(M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, alpha, beta, batch, stride_a,
                                  stride_b, stride_c, vec, stream);
  }
  return launch_tile<TileSmall>(M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, alpha, beta, batch, stride_a,
                                stride_b, stride_c, vec, stream);
}

#define FASTCONV_INSTANTIATE_GEMM(T, Out)                                                                    \
  template cudaError_t gemm_simt<T, Out>(int64_t, int64_t, int64_t, const T*, int64_t, bool, const T*, int64_t, \
                                         bool, Out*, int64_t, float, float, int64_t, int64_t, int64_t, int64_t,  \
                                         cudaStream_t);
FASTCONV_INSTANTIATE_GEMM(float, float)
FASTCONV_INSTANTIATE_GEMM(__half, __half)
FASTCONV_INSTANTIATE_GEMM(__half, float)
FASTCONV_INSTANTIATE_GEMM(__nv_bfloat16, __nv_bfloat16)
FASTCONV_INSTANTIATE_GEMM(__nv_bfloat16, float)
#undef FASTCONV_INSTANTIATE_GEMM

}  // namespace cuda
}  // namespace fastconv
