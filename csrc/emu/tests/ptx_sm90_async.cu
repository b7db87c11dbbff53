// ptx_sm90_async.cu — conformance tests of ptx.cuh's Hopper asynchronous instructions (mbarrier,
// cp.async.bulk.tensor tile / im2col, elect.sync, setmaxnreg) and of tensor_map.cuh's encoders.
//
// The expected values are computed on the host from the PTX ISA's and the driver documentation's own
// definitions, by code independent of csrc/emu (e.g. im2col's pixel order from the linear GEMM-row index,
// as CUTLASS's make_im2col_tma_copy_desc states it, where the emulator steps a traversal). The file is a
// plain CUDA source: built by nvcc for sm_90a it checks the hardware, built by `make -C csrc emu` the
// emulated device.
//
//   1. mbarrier: count 4 (one arrival per warp) over 6 phases; waits on the preceding phase's parity
//      return at once (a fresh barrier's "phase -1" included); arrivals' writes visible after the wait
//   2. TMA tile 3-D: every swizzle mode (none, 32B, 64B, 128B with full and half rows), boxes starting at
//      negative and past-the-end coordinates (zero fill), every shared byte's position checked;
//      arrive.expect_tx with the full box's bytes
//   3. TMA im2col 4-D (NHWC): padding, stride 2, dilation 2 with offsets, traversal wrapping across rows
//      and images, n past N, channels past C, a swizzled variant
//   4. a producer/consumer ring: 3 stages, 1 producer warp (elect.sync issues), 2 consumer warps,
//      full/empty barriers, 10 iterations
//   5. elect.sync: exactly one lane, the same one twice; setmaxnreg inc/dec passes
//   6. encoders: each documented requirement rejected (cudaErrorInvalidValue), valid maps accepted
//   7. (emulator only) faults: deadlock on a barrier that cannot complete, over-arrival, un-initialised
//      barrier, misaligned TMA destination, a copy never waited for; and a stage read before its wait
//      holds poison (NaN) (not under TSan: that read is the race TSan reports)
//
// Output: one line per check, then "N passed, M failed"; exit status 0 only if all passed.

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../../cuda/common.cuh"
#include "../../cuda/ptx.cuh"
#include "../../cuda/tensor_map.cuh"

#if defined(FASTCONV_EMU)
#include "../runtime.h"
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FC_PTX_TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define FC_PTX_TEST_TSAN 1
#endif

namespace fc = fastconv::cuda;

#include "conformance.h"

constexpr unsigned kSwizzleRepeat = 1024;  // the largest swizzle pattern repeat (128B x 8 rows)

// PTX ISA "Tensor swizzling modes": the 16-byte chunk index inside a span-byte row is XORed with the
// index of the 128-byte row modulo (span / 16). Offsets here are from a 1024-byte aligned base.
static unsigned swizzled(unsigned offset, int span) {
  if (span == 0) return offset;
  const unsigned chunks = static_cast<unsigned>(span) / 16u;
  const unsigned row = (offset / 128u) % chunks;
  const unsigned chunk = (offset / 16u) % chunks;
  return offset - chunk * 16u + ((chunk ^ row) * 16u);
}

static CUtensorMapSwizzle swizzle_enum(int span) {
  return span == 32 ? CU_TENSOR_MAP_SWIZZLE_32B
                    : span == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                 : span == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE;
}

// =========================================================================================================
// 1. mbarrier phases
// =========================================================================================================
//
// PTX ISA "mbarrier": init sets the expected arrival count, pending count = count, phase 0; arrive
// decrements the pending count; "the current phase completes when the pending arrival count reaches zero
// (and the tx-count is zero)", then the phase advances and the pending count is reset. try_wait.parity
// waits for "the completion of the phase indicated by phaseParity ... the parity of either the current
// phase or the immediately preceding phase": parity of the preceding phase -> complete at once.

constexpr int kPhWarps = 4;
constexpr int kPhThreads = 32 * kPhWarps;
constexpr int kPhPhases = 6;

__global__ void mbarrier_phases_kernel(unsigned* out) {
  FC_SHARED_ALIGNED(8, uint64_t, bar, [1]);
  FC_SHARED(unsigned, slot, [kPhPhases * kPhWarps]);
  const unsigned b = fc::smem_addr(bar);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    fc::mbarrier_init(b, kPhWarps);
    fc::fence_mbarrier_init();
  }
  __syncthreads();
  for (int k = 0; k < kPhPhases; ++k) {
    // Phase k-1 completed (every thread waited for it) and phase k cannot complete before this warp's
    // arrival below: the barrier is in phase k, and the preceding phase's parity is complete at once.
    fc::mbarrier_wait_parity(b, (k + 1) & 1);
    __syncwarp();
    if (lane == 0) {
      slot[k * kPhWarps + warp] = 100u * k + warp + 1;
      fc::mbarrier_arrive(b);
    }
    fc::mbarrier_wait_parity(b, k & 1);
    unsigned sum = 0;
    for (int w = 0; w < kPhWarps; ++w) sum += slot[k * kPhWarps + w];
    out[k * kPhThreads + threadIdx.x] = sum;
  }
}

static void test_mbarrier_phases() {
  DevBuf<unsigned> d_out(kPhPhases * kPhThreads);
  FC_LAUNCH(dim3(1), dim3(kPhThreads), 0, 0, mbarrier_phases_kernel)(d_out.p);
  const cudaError_t e = launch_result();
  std::vector<unsigned> out;
  const bool io = d_out.down(out);
  Mismatches mm;
  for (int k = 0; k < kPhPhases && io; ++k)
    for (int t = 0; t < kPhThreads; ++t) {
      unsigned want = 0;
      for (int w = 0; w < kPhWarps; ++w) want += 100u * k + w + 1;
      if (out[k * kPhThreads + t] != want) mm.add("phase %d thread %d saw %u, want %u", k, t, out[k * kPhThreads + t], want);
    }
  report(e == cudaSuccess && io && mm.count == 0,
         "mbarrier count 4 over 6 phases: parity waits, preceding phase complete at once, arrivals visible",
         e != cudaSuccess ? cudaGetErrorName(e) : mm.summary());
}

// =========================================================================================================
// 2. TMA tile mode (3-D)
// =========================================================================================================
//
// PTX ISA "Tensor Access Modes: Tiled mode" + cuTensorMapEncodeTiled: the box of boxDim elements starts at
// the instruction's signed coordinates; elements outside the tensor are filled with zeros (OOB fill NONE);
// the box lands in shared memory row-major with dim 0 innermost, each 16-byte chunk at its swizzled
// address; complete_tx counts the whole box. The destination is 1024-byte aligned here.

constexpr int kTD0 = 80, kTD1 = 10, kTD2 = 3;  // uint16 tensor, 160-byte rows
constexpr int kTBox1 = 8, kTBox2 = 2;

static uint16_t tile_value(int i0, int i1, int i2) { return static_cast<uint16_t>(1 + i0 + kTD0 * (i1 + kTD1 * i2)); }

__global__ void tma_tile_kernel(const __grid_constant__ CUtensorMap map, int c0, int c1, int c2, unsigned bytes,
                                unsigned footprint, uint8_t* out) {
  FC_SHARED_ALIGNED(8, uint64_t, bar, [1]);
  FC_DYNAMIC_SHARED(1024, uint8_t, smem);
  const unsigned base = fc::smem_addr(smem);
  const unsigned dst = (base + kSwizzleRepeat - 1) & ~(kSwizzleRepeat - 1);
  const unsigned b = fc::smem_addr(bar);
  if (threadIdx.x == 0) {
    fc::mbarrier_init(b, 1);
    fc::fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    fc::mbarrier_arrive_expect_tx(b, bytes);
    fc::tma_load_tile_3d(dst, &map, b, c0, c1, c2);
  }
  fc::mbarrier_wait_parity(b, 0);
  for (unsigned i = threadIdx.x; i < footprint; i += blockDim.x) out[i] = smem[dst - base + i];
}

static void test_tma_tile(int span, int box0, int c0, int c1, int c2) {
  std::vector<uint16_t> h(kTD0 * kTD1 * kTD2);
  for (int i2 = 0; i2 < kTD2; ++i2)
    for (int i1 = 0; i1 < kTD1; ++i1)
      for (int i0 = 0; i0 < kTD0; ++i0) h[i0 + kTD0 * (i1 + kTD1 * i2)] = tile_value(i0, i1, i2);
  DevBuf<uint16_t> d_in(h.size());
  const unsigned bytes = box0 * kTBox1 * kTBox2 * 2;
  unsigned footprint = 0;
  for (unsigned o = 0; o < bytes; o += 16) footprint = std::max(footprint, swizzled(o, span) + 16);
  DevBuf<uint8_t> d_out(footprint);
  char name[160];
  std::snprintf(name, sizeof(name), "TMA tile 3-D swizzle %d box {%d,%d,%d} at (%d,%d,%d): every shared byte", span,
                box0, kTBox1, kTBox2, c0, c1, c2);
  const uint64_t dims[3] = {kTD0, kTD1, kTD2};
  const uint64_t strides[2] = {kTD0 * 2, kTD0 * kTD1 * 2};
  const uint32_t box[3] = {static_cast<uint32_t>(box0), kTBox1, kTBox2};
  const uint32_t es[3] = {1, 1, 1};
  CUtensorMap map;
  const cudaError_t enc =
      fc::encode_tensor_map_tiled(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, d_in.p, dims, strides, box, es, swizzle_enum(span));
  if (enc != cudaSuccess || !d_in.up(h)) {
    report(false, name, std::string("encode: ") + cudaGetErrorName(enc));
    return;
  }
  const size_t smem = footprint + kSwizzleRepeat;
  FC_LAUNCH(dim3(1), dim3(64), smem, 0, tma_tile_kernel)(map, c0, c1, c2, bytes, footprint, d_out.p);
  const cudaError_t e = launch_result();
  std::vector<uint8_t> out;
  const bool io = d_out.down(out);
  Mismatches mm;
  for (int j2 = 0; j2 < kTBox2 && io; ++j2)
    for (int j1 = 0; j1 < kTBox1; ++j1)
      for (int j0 = 0; j0 < box0; ++j0) {
        const int g0 = c0 + j0, g1 = c1 + j1, g2 = c2 + j2;
        const bool in = g0 >= 0 && g0 < kTD0 && g1 >= 0 && g1 < kTD1 && g2 >= 0 && g2 < kTD2;
        const uint16_t want = in ? tile_value(g0, g1, g2) : 0;
        const unsigned at = swizzled(2u * (j0 + box0 * (j1 + kTBox1 * j2)), span);
        const uint16_t got = static_cast<uint16_t>(out[at] | (out[at + 1] << 8));
        if (got != want) mm.add("box (%d,%d,%d) at byte %u = %u, want %u", j0, j1, j2, at, got, want);
      }
  report(e == cudaSuccess && io && mm.count == 0, name, e != cudaSuccess ? cudaGetErrorName(e) : mm.summary());
}

// =========================================================================================================
// 3. TMA im2col mode (4-D NHWC)
// =========================================================================================================
//
// PTX ISA "Tensor Access Modes: im2col mode" + cuTensorMapEncodeIm2col: the corners' bounding box is
// [lower, dim - 1 + upper] per spatial dim, walked in steps of elementStrides (the convolution stride);
// each of pixelsPerColumn pixels gives one shared-memory row of channelsPerPixel channels from the corner
// plus the instruction's im2col offsets (the filter tap · dilation); zeros out of bounds. Reference (from
// CUTLASS's description of the same geometry): corners per row Q = (W + upper - lower - 1) / stride + 1,
// per column P likewise; GEMM row m = q + Q·(p + P·n) is the corner (lower + q·sw, lower + p·sh, n);
// the instruction's corner is row m0, pixel j is row m0 + j.

constexpr int kIN = 2, kIH = 5, kIW = 6, kIC = 16;

static uint16_t im_value(int n, int y, int x, int ch) { return static_cast<uint16_t>(1 + ch + kIC * (x + kIW * (y + kIH * n))); }

struct Im2colCase {
  const char* what;
  int lower[2], upper[2];  // {W, H}
  int sw, sh;
  int pixels, span;
  int c, w, h, n;
  int off_w, off_h;
};

__global__ void tma_im2col_kernel(const __grid_constant__ CUtensorMap map, int c, int w, int h, int n, int off_w,
                                  int off_h, unsigned bytes, uint8_t* out) {
  FC_SHARED_ALIGNED(8, uint64_t, bar, [1]);
  FC_DYNAMIC_SHARED(1024, uint8_t, smem);
  const unsigned base = fc::smem_addr(smem);
  const unsigned dst = (base + kSwizzleRepeat - 1) & ~(kSwizzleRepeat - 1);
  const unsigned b = fc::smem_addr(bar);
  if (threadIdx.x == 0) {
    fc::mbarrier_init(b, 1);
    fc::fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    fc::mbarrier_arrive_expect_tx(b, bytes);
    fc::tma_load_im2col_4d(dst, &map, b, c, w, h, n, static_cast<uint16_t>(off_w), static_cast<uint16_t>(off_h));
  }
  fc::mbarrier_wait_parity(b, 0);
  for (unsigned i = threadIdx.x; i < bytes; i += blockDim.x) out[i] = smem[dst - base + i];
}

static void test_tma_im2col(const Im2colCase& k) {
  std::vector<uint16_t> hx(kIN * kIH * kIW * kIC);
  for (int n = 0; n < kIN; ++n)
    for (int y = 0; y < kIH; ++y)
      for (int x = 0; x < kIW; ++x)
        for (int ch = 0; ch < kIC; ++ch) hx[ch + kIC * (x + kIW * (y + kIH * n))] = im_value(n, y, x, ch);
  DevBuf<uint16_t> d_in(hx.size());
  const int channels = kIC;
  const unsigned bytes = static_cast<unsigned>(k.pixels * channels * 2);
  DevBuf<uint8_t> d_out(bytes);
  const std::string name = std::string("TMA im2col 4-D: ") + k.what;
  const uint64_t dims[4] = {kIC, kIW, kIH, kIN};
  const uint64_t strides[3] = {kIC * 2, kIW * kIC * 2, kIH * kIW * kIC * 2};
  const uint32_t es[4] = {1, static_cast<uint32_t>(k.sw), static_cast<uint32_t>(k.sh), 1};
  CUtensorMap map;
  const cudaError_t enc = fc::encode_tensor_map_im2col(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, d_in.p, dims, strides,
                                                       k.lower, k.upper, channels, k.pixels, es, swizzle_enum(k.span));
  if (enc != cudaSuccess || !d_in.up(hx)) {
    report(false, name, std::string("encode: ") + cudaGetErrorName(enc));
    return;
  }
  FC_LAUNCH(dim3(1), dim3(64), bytes + kSwizzleRepeat, 0, tma_im2col_kernel)(map, k.c, k.w, k.h, k.n, k.off_w, k.off_h,
                                                                               bytes, d_out.p);
  const cudaError_t e = launch_result();
  std::vector<uint8_t> out;
  const bool io = d_out.down(out);
  const int Q = (kIW + k.upper[0] - k.lower[0] - 1) / k.sw + 1;
  const int P = (kIH + k.upper[1] - k.lower[1] - 1) / k.sh + 1;
  const int m0 = (k.w - k.lower[0]) / k.sw + Q * ((k.h - k.lower[1]) / k.sh + P * k.n);
  Mismatches mm;
  for (int j = 0; j < k.pixels && io; ++j) {
    const int m = m0 + j;
    const int q = m % Q, p = (m / Q) % P, n = m / (Q * P);
    const int x = k.lower[0] + q * k.sw + k.off_w, y = k.lower[1] + p * k.sh + k.off_h;
    for (int i = 0; i < channels; ++i) {
      const int ch = k.c + i;
      const bool in = n < kIN && x >= 0 && x < kIW && y >= 0 && y < kIH && ch >= 0 && ch < kIC;
      const uint16_t want = in ? im_value(n, y, x, ch) : 0;
      const unsigned at = swizzled(2u * (j * channels + i), k.span);
      const uint16_t got = static_cast<uint16_t>(out[at] | (out[at + 1] << 8));
      if (got != want) mm.add("pixel %d (n %d y %d x %d) channel %d = %u, want %u", j, n, y, x, ch, got, want);
    }
  }
  report(e == cudaSuccess && io && mm.count == 0, name, e != cudaSuccess ? cudaGetErrorName(e) : mm.summary());
}

// =========================================================================================================
// 4. Producer/consumer ring (full/empty barriers)
// =========================================================================================================
//
// The pattern of a warp-specialised kernel: stage s is refilled by the producer after the consumers
// released it (empty[s], count = consumer warps) and consumed after its copy completed (full[s], count 1
// with expect_tx). Iteration i uses stage i % S and phase parity (i / S) & 1; the producer's first wait on
// each empty barrier is on parity 1, the fresh barrier's preceding phase.

constexpr int kRingStages = 3, kRingIters = 10, kRingConsumerWarps = 2;
constexpr int kRingD0 = 32, kRingD1 = 4;
constexpr unsigned kRingStageBytes = kRingD0 * kRingD1 * 4;  // float32
constexpr int kRingElems = kRingD0 * kRingD1;

__global__ void ring_kernel(const __grid_constant__ CUtensorMap map, float* out) {
  FC_SHARED_ALIGNED(8, uint64_t, full, [kRingStages]);
  FC_SHARED_ALIGNED(8, uint64_t, empty, [kRingStages]);
  FC_DYNAMIC_SHARED(1024, uint8_t, smem);
  const unsigned base = fc::smem_addr(smem);
  const unsigned dst0 = (base + 127u) & ~127u;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kRingStages; ++s) {
      fc::mbarrier_init(fc::smem_addr(&full[s]), 1);
      fc::mbarrier_init(fc::smem_addr(&empty[s]), kRingConsumerWarps);
    }
    fc::fence_mbarrier_init();
  }
  __syncthreads();
  if (warp == 0) {
    for (int i = 0; i < kRingIters; ++i) {
      const int s = i % kRingStages;
      const unsigned ph = (i / kRingStages) & 1;
      if (fc::elect_one_sync()) {
        fc::mbarrier_wait_parity(fc::smem_addr(&empty[s]), ph ^ 1u);
        fc::mbarrier_arrive_expect_tx(fc::smem_addr(&full[s]), kRingStageBytes);
        fc::tma_load_tile_3d(dst0 + s * kRingStageBytes, &map, fc::smem_addr(&full[s]), 0, 0, i);
      }
      __syncwarp();
    }
  } else {
    const int t = (warp - 1) * 32 + lane;
    for (int i = 0; i < kRingIters; ++i) {
      const int s = i % kRingStages;
      fc::mbarrier_wait_parity(fc::smem_addr(&full[s]), (i / kRingStages) & 1);
      const float* stage = reinterpret_cast<const float*>(smem + (dst0 - base) + s * kRingStageBytes);
      for (int e = t; e < kRingElems; e += 32 * kRingConsumerWarps) out[i * kRingElems + e] = stage[e];
      __syncwarp();
      if (lane == 0) fc::mbarrier_arrive(fc::smem_addr(&empty[s]));
    }
  }
}

static void test_ring() {
  std::vector<float> h(kRingElems * kRingIters);
  for (size_t i = 0; i < h.size(); ++i) h[i] = 0.5f + static_cast<float>(i);
  DevBuf<float> d_in(h.size()), d_out(h.size());
  const uint64_t dims[3] = {kRingD0, kRingD1, kRingIters};
  const uint64_t strides[2] = {kRingD0 * 4, kRingD0 * kRingD1 * 4};
  const uint32_t box[3] = {kRingD0, kRingD1, 1};
  const uint32_t es[3] = {1, 1, 1};
  CUtensorMap map;
  const cudaError_t enc =
      fc::encode_tensor_map_tiled(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, d_in.p, dims, strides, box, es, CU_TENSOR_MAP_SWIZZLE_NONE);
  const char* name = "producer/consumer ring: 3 stages, 1 producer warp, 2 consumer warps, 10 iterations";
  if (enc != cudaSuccess || !d_in.up(h)) {
    report(false, name, std::string("encode: ") + cudaGetErrorName(enc));
    return;
  }
  FC_LAUNCH(dim3(1), dim3(32 * (1 + kRingConsumerWarps)), kRingStages * kRingStageBytes + 128, 0, ring_kernel)(map, d_out.p);
  const cudaError_t e = launch_result();
  std::vector<float> out;
  const bool io = d_out.down(out);
  Mismatches mm;
  for (size_t i = 0; i < h.size() && io; ++i)
    if (out[i] != h[i]) mm.add("iteration %zu element %zu = %g, want %g", i / kRingElems, i % kRingElems, out[i], h[i]);
  report(e == cudaSuccess && io && mm.count == 0, name, e != cudaSuccess ? cudaGetErrorName(e) : mm.summary());
}

// =========================================================================================================
// 5. elect.sync, setmaxnreg
// =========================================================================================================
//
// elect.sync: "elects one predicated active leader thread from among a set of threads specified by
// membermask ... The predicate destination p is set to True for the leader thread, and False for all
// other threads ... the same leader thread is elected for the same membermask every time."
// setmaxnreg.{inc,dec}.sync.aligned.u32: a multiple of 8 in [24, 256]; inc asks for at least the current
// count, dec for at most it (here: inc to 232, then dec to 40, in every warp of one warpgroup).

__global__ void elect_kernel(unsigned* out) {
  const bool a = fc::elect_one_sync();
  const bool b = fc::elect_one_sync();
  out[threadIdx.x] = (a ? 1u : 0u) | (b ? 2u : 0u);
}

__global__ void __launch_bounds__(128, 1) setmaxnreg_kernel(unsigned* out) {
  fc::setmaxnreg_inc<232>();
  fc::setmaxnreg_dec<40>();
  out[threadIdx.x] = threadIdx.x + 1;
}

static void test_elect_setmaxnreg() {
  constexpr int kWarps = 2;
  DevBuf<unsigned> d_out(32 * kWarps);
  FC_LAUNCH(dim3(1), dim3(32 * kWarps), 0, 0, elect_kernel)(d_out.p);
  cudaError_t e = launch_result();
  std::vector<unsigned> out;
  bool io = d_out.down(out);
  Mismatches mm;
  for (int w = 0; w < kWarps && io; ++w) {
    int first = 0, second = 0, same = 0;
    for (int l = 0; l < 32; ++l) {
      const unsigned v = out[w * 32 + l];
      first += (v & 1u) != 0;
      second += (v & 2u) != 0;
      same += v == 3u;
    }
    if (first != 1 || second != 1 || same != 1)
      mm.add("warp %d: %d lanes elected first, %d second, %d both", w, first, second, same);
  }
  report(e == cudaSuccess && io && mm.count == 0, "elect.sync 0xffffffff: exactly one lane, the same one twice",
         e != cudaSuccess ? cudaGetErrorName(e) : mm.summary());

  DevBuf<unsigned> d_regs(128);
  FC_LAUNCH(dim3(1), dim3(128), 0, 0, setmaxnreg_kernel)(d_regs.p);
  e = launch_result();
  io = d_regs.down(out);
  bool ok = e == cudaSuccess && io;
  for (int t = 0; t < 128 && ok; ++t) ok = out[t] == unsigned(t + 1);
  report(ok, "setmaxnreg.inc 232 then .dec 40 in a warpgroup: passes", cudaGetErrorName(e));
}

// =========================================================================================================
// 6. Encoder requirements (cuTensorMapEncodeTiled / cuTensorMapEncodeIm2col documentation)
// =========================================================================================================

struct TiledArgs {
  CUtensorMapDataType dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  int rank = 3;
  const void* base = nullptr;
  uint64_t dims[5] = {64, 16, 4, 1, 1};
  uint64_t strides[4] = {128, 128 * 16, 128 * 64, 128 * 64};
  uint32_t box[5] = {64, 8, 2, 1, 1};
  uint32_t es[5] = {1, 1, 1, 1, 1};
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
};
struct Im2colArgs {
  CUtensorMapDataType dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  int rank = 4;
  const void* base = nullptr;
  uint64_t dims[5] = {64, 8, 8, 2, 1};
  uint64_t strides[4] = {128, 128 * 8, 128 * 64, 128 * 128};
  int lower[3] = {-1, -1, -1}, upper[3] = {-1, -1, -1};
  uint32_t channels = 64, pixels = 128;
  uint32_t es[5] = {1, 1, 1, 1, 1};
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
};

static void test_encoders() {
  DevBuf<uint8_t> mem(1 << 20);
  const uint8_t* base = mem.p;
  auto tiled = [&](const std::function<void(TiledArgs&)>& change) {
    TiledArgs a;
    a.base = base;
    change(a);
    CUtensorMap map;
    return fc::encode_tensor_map_tiled(&map, a.dtype, a.rank, a.base, a.dims, a.strides, a.box, a.es, a.swizzle);
  };
  auto im2col = [&](const std::function<void(Im2colArgs&)>& change) {
    Im2colArgs a;
    a.base = base;
    change(a);
    CUtensorMap map;
    return fc::encode_tensor_map_im2col(&map, a.dtype, a.rank, a.base, a.dims, a.strides, a.lower, a.upper, a.channels,
                                        a.pixels, a.es, a.swizzle);
  };
  struct TCase {
    const char* what;
    std::function<void(TiledArgs&)> change;
  };
  const TCase bad_tiled[] = {
      {"rank 0", [](TiledArgs& a) { a.rank = 0; }},
      {"rank 6", [](TiledArgs& a) { a.rank = 6; }},
      {"global address 8-byte aligned only", [&](TiledArgs& a) { a.base = base + 8; }},
      {"globalDim 0", [](TiledArgs& a) { a.dims[1] = 0; }},
      {"globalDim 2^32 + 1", [](TiledArgs& a) { a.dims[2] = (uint64_t(1) << 32) + 1; }},
      {"globalStride not a multiple of 16", [](TiledArgs& a) { a.strides[0] = 136; }},
      {"globalStride 2^40", [](TiledArgs& a) { a.strides[1] = uint64_t(1) << 40; }},
      {"boxDim 0", [](TiledArgs& a) { a.box[1] = 0; }},
      {"boxDim 257", [](TiledArgs& a) { a.box[2] = 257; }},
      {"inner box 8 bytes (not a multiple of 16)", [](TiledArgs& a) { a.box[0] = 4; a.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; }},
      {"inner box 64 bytes > 32B swizzle span", [](TiledArgs& a) { a.box[0] = 32; a.swizzle = CU_TENSOR_MAP_SWIZZLE_32B; }},
      {"inner box 256 bytes > 128B swizzle span", [](TiledArgs& a) { a.box[0] = 128; a.dims[0] = 128; a.strides[0] = 256; }},
      {"elementStrides 0", [](TiledArgs& a) { a.es[1] = 0; }},
      {"elementStrides 9", [](TiledArgs& a) { a.es[2] = 9; }},
  };
  for (const TCase& c : bad_tiled) {
    const cudaError_t e = tiled(c.change);
    report(e == cudaErrorInvalidValue, std::string("encode tiled rejects ") + c.what, cudaGetErrorName(e));
  }
  struct ICase {
    const char* what;
    std::function<void(Im2colArgs&)> change;
  };
  const ICase bad_im2col[] = {
      {"rank 2", [](Im2colArgs& a) { a.rank = 2; }},
      {"corner -129 at rank 4", [](Im2colArgs& a) { a.lower[0] = -129; }},
      {"corner 128 at rank 4", [](Im2colArgs& a) { a.upper[1] = 128; }},
      {"corner -17 at rank 5", [](Im2colArgs& a) {
         a.rank = 5;
         a.dims[4] = 2;
         a.lower[2] = -17;
       }},
      {"bounding box of zero area", [](Im2colArgs& a) { a.lower[0] = 0; a.upper[0] = -8; }},
      {"channelsPerPixel 0", [](Im2colArgs& a) { a.channels = 0; }},
      {"channelsPerPixel 257", [](Im2colArgs& a) { a.channels = 257; a.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; }},
      {"pixelsPerColumn 1025", [](Im2colArgs& a) { a.pixels = 1025; }},
      {"channels 128 bytes > 64B swizzle span", [](Im2colArgs& a) { a.swizzle = CU_TENSOR_MAP_SWIZZLE_64B; }},
      {"elementStrides 9", [](Im2colArgs& a) { a.es[1] = 9; }},
      {"globalStride not a multiple of 16", [](Im2colArgs& a) { a.strides[2] = 8200; }},
  };
  for (const ICase& c : bad_im2col) {
    const cudaError_t e = im2col(c.change);
    report(e == cudaErrorInvalidValue, std::string("encode im2col rejects ") + c.what, cudaGetErrorName(e));
  }
  const cudaError_t ok_t = tiled([](TiledArgs&) {});
  const cudaError_t ok_t1 = tiled([](TiledArgs& a) {
    a.rank = 1;
    a.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE;
  });
  const cudaError_t ok_t5 = tiled([](TiledArgs& a) {
    a.rank = 5;
    a.dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    a.box[0] = 32;
    a.es[3] = 8;
  });
  const cudaError_t ok_i = im2col([](Im2colArgs&) {});
  const cudaError_t ok_i3 = im2col([](Im2colArgs& a) {
    a.rank = 3;
    a.lower[0] = -300;
    a.upper[0] = 200;
  });
  report(ok_t == cudaSuccess && ok_t1 == cudaSuccess && ok_t5 == cudaSuccess && ok_i == cudaSuccess && ok_i3 == cudaSuccess,
         "encoders accept valid tiled (rank 1, 3, 5) and im2col (rank 3, 4) maps",
         std::string(cudaGetErrorName(ok_t)) + " " + cudaGetErrorName(ok_t1) + " " + cudaGetErrorName(ok_t5) + " " +
             cudaGetErrorName(ok_i) + " " + cudaGetErrorName(ok_i3));
}

// =========================================================================================================
// 7. Faults (emulator only: on the hardware these hang, are undefined, or kill the context)
// =========================================================================================================

#if defined(FASTCONV_EMU)
enum FaultKind { kDeadlock, kOverArrival, kUninit, kMisalignedDst, kNeverWaited, kReadEarly };

__global__ void fault_kernel(const __grid_constant__ CUtensorMap map, int kind, float* out) {
  FC_SHARED_ALIGNED(8, uint64_t, bar, [2]);
  FC_DYNAMIC_SHARED(1024, uint8_t, smem);
  const unsigned base = fc::smem_addr(smem);
  const unsigned dst = (base + kSwizzleRepeat - 1) & ~(kSwizzleRepeat - 1);
  const unsigned b = fc::smem_addr(&bar[0]);
  if (threadIdx.x == 0) fc::mbarrier_init(b, kind == kDeadlock ? 2 : 1);
  __syncthreads();
  switch (kind) {
    case kDeadlock:  // count 2, one arrival: the phase never completes
      if (threadIdx.x == 0) fc::mbarrier_arrive(b);
      fc::mbarrier_wait_parity(b, 0);
      break;
    case kOverArrival:
      if (threadIdx.x == 0) {
        fc::mbarrier_arrive_expect_tx(b, 64);  // pending 0, the phase waits for 64 bytes
        fc::mbarrier_arrive(b);
      }
      break;
    case kUninit:
      if (threadIdx.x == 0) fc::mbarrier_arrive(fc::smem_addr(&bar[1]));
      break;
    case kMisalignedDst:  // 128B swizzle needs 1024-byte alignment
      if (threadIdx.x == 0) fc::tma_load_tile_3d(dst + 128, &map, b, 0, 0, 0);
      break;
    case kNeverWaited:
      if (threadIdx.x == 0) {
        fc::mbarrier_arrive_expect_tx(b, 32 * 4 * 4);
        fc::tma_load_tile_3d(dst, &map, b, 0, 0, 0);
      }
      break;
    case kReadEarly: {
      if (threadIdx.x == 0) {
        fc::mbarrier_arrive_expect_tx(b, 32 * 4 * 4);
        fc::tma_load_tile_3d(dst, &map, b, 0, 0, 0);
      }
      __syncthreads();
      const float* stage = reinterpret_cast<const float*>(smem + (dst - base));
      out[threadIdx.x] = stage[threadIdx.x];  // before any wait: the copy has not landed
      __syncthreads();
      fc::mbarrier_wait_parity(b, 0);
      out[blockDim.x + threadIdx.x] = stage[threadIdx.x];
      break;
    }
  }
}

static void expect_fault(const char* name, cudaError_t got, cudaError_t want, const char* report_word) {
  const std::string rep = fc_emu::last_fault_report();
  const bool ok = got == want && rep.find(report_word) != std::string::npos;
  report(ok, name,
         ok ? "" : std::string("got ") + cudaGetErrorName(got) + ", want " + cudaGetErrorName(want) +
                       " with a report naming '" + report_word + "': " + rep);
  fc_emu::reset_device();
}

static void test_faults() {
  constexpr int kThreads = 128;
  std::vector<float> h(32 * 4);
  for (size_t i = 0; i < h.size(); ++i) h[i] = 1.0f + static_cast<float>(i);
  DevBuf<float> d_in(h.size()), d_out(2 * kThreads);
  const uint64_t dims[3] = {32, 4, 1};
  const uint64_t strides[2] = {32 * 4, 32 * 4 * 4};
  const uint32_t box[3] = {32, 4, 1};
  const uint32_t es[3] = {1, 1, 1};
  CUtensorMap plain, sw128;
  const uint32_t box128[3] = {32, 4, 1};  // 128-byte rows
  if (!d_in.up(h) ||
      fc::encode_tensor_map_tiled(&plain, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, d_in.p, dims, strides, box, es,
                                  CU_TENSOR_MAP_SWIZZLE_NONE) != cudaSuccess ||
      fc::encode_tensor_map_tiled(&sw128, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, d_in.p, dims, strides, box128, es,
                                  CU_TENSOR_MAP_SWIZZLE_128B) != cudaSuccess) {
    report(false, "emu faults: set-up");
    return;
  }
  const size_t smem = 2 * kSwizzleRepeat;
  auto run = [&](const CUtensorMap& m, int kind) {
    FC_LAUNCH(dim3(1), dim3(kThreads), smem, 0, fault_kernel)(m, kind, d_out.p);
    return launch_result();
  };
  expect_fault("emu fault: mbarrier that can never complete -> cudaErrorLaunchTimeout naming the mbarrier",
               run(plain, kDeadlock), cudaErrorLaunchTimeout, "waits on mbarrier");
  expect_fault("emu fault: arrive on a phase with no pending arrival -> over-arrival", run(plain, kOverArrival),
               cudaErrorLaunchFailure, "over-arrival");
  expect_fault("emu fault: arrive on an un-initialised mbarrier", run(plain, kUninit), cudaErrorLaunchFailure,
               "not initialised");
  expect_fault("emu fault: TMA destination not 1024-byte aligned under 128B swizzle -> cudaErrorMisalignedAddress",
               run(sw128, kMisalignedDst), cudaErrorMisalignedAddress, "1024-byte aligned");
  expect_fault("emu fault: block exits with a TMA copy never waited for", run(plain, kNeverWaited),
               cudaErrorLaunchFailure, "never waited");
#if !defined(FC_PTX_TEST_TSAN)
  const cudaError_t e = run(plain, kReadEarly);
  std::vector<float> out;
  const bool io = d_out.down(out);
  int early_nan = 0, late_ok = 0;
  for (int t = 0; t < kThreads && io; ++t) {
    uint32_t bits;
    std::memcpy(&bits, &out[t], 4);
    early_nan += bits == 0xffffffffu;
    late_ok += out[kThreads + t] == h[t];
  }
  report(e == cudaSuccess && early_nan == kThreads && late_ok == kThreads,
         "emu: a TMA stage read before its mbarrier wait holds poison (NaN), after the wait the data",
         std::string(cudaGetErrorName(e)) + ", " + std::to_string(early_nan) + " NaN before, " +
             std::to_string(late_ok) + " right after");
#endif
}
#endif

int main() {
  test_mbarrier_phases();

  const int spans[] = {0, 32, 64, 128};
  const int inner[] = {24, 16, 32, 64};  // uint16 elements: 48, 32, 64, 128 bytes
  const int coords[][3] = {{0, 0, 0}, {-8, -3, -1}, {72, 6, 2}, {-16, 5, 1}};
  for (int s = 0; s < 4; ++s)
    for (const auto& c : coords) test_tma_tile(spans[s], inner[s], c[0], c[1], c[2]);
  test_tma_tile(128, 32, -8, -3, -1);  // 64-byte rows under the 128B swizzle
  test_tma_tile(64, 16, 72, 6, 2);     // 32-byte rows under the 64B swizzle

  const Im2colCase cases[] = {
      {"pad 1, stride 1, from (w,h) = (-1,-1): wraps rows and into image 1", {-1, -1}, {-1, -1}, 1, 1, 40, 0, 0, -1, -1, 0, 0, 0},
      {"pad 1, stride 1, offsets (2,2), from image 1 row 3: runs past N", {-1, -1}, {-1, -1}, 1, 1, 24, 0, 0, -1, 2, 1, 2, 2},
      {"pad 1, stride 2, offsets (1,2), mid-row start, wraps and runs past N", {-1, -1}, {-1, -1}, 2, 2, 16, 0, 0, 1, 1, 1, 1, 2},
      {"dilation 2 (pad 2), offsets (4,2), channels 8..23 past C", {-2, -2}, {-2, -2}, 1, 1, 24, 0, 8, -2, 0, 0, 4, 2},
      {"pad 1, stride 2, 32B swizzle", {-1, -1}, {-1, -1}, 2, 2, 16, 32, 0, -1, -1, 0, 0, 0},
      {"pad 1, stride 1, 64B swizzle, offsets (1,0)", {-1, -1}, {-1, -1}, 1, 1, 32, 64, 0, 3, 0, 0, 1, 0},
  };
  for (const Im2colCase& k : cases) test_tma_im2col(k);

  test_ring();
  test_elect_setmaxnreg();
  test_encoders();

#if defined(FASTCONV_EMU)
  test_faults();
#endif

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
