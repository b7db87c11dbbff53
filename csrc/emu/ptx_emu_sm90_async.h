// ptx_emu_sm90_async.h — the emulated twins of ptx.cuh's Hopper asynchronous instructions:
// mbarrier, elect.sync, setmaxnreg, the proxy fences, and TMA (cp.async.bulk.tensor tile / im2col).
// Same names and signatures as the nvcc versions, plus defaulted source locations for fault reports.
// The state machines live in runtime.cpp (the scheduler owns blocking and landing).
//
// Modelled (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier"):
//   mbarrier.init     count in [1, 2^20 - 1]: phase 0, pending = count, tx-count 0. The 8 bytes must lie in
//                     the block's shared memory, 8-byte aligned. Faults: re-init while a thread waits on
//                     it or a TMA copy on it is in flight.
//   arrive            pending -= 1; arrive.expect_tx: tx-count += bytes first. The current phase completes
//                     when pending == 0 and tx-count == 0: the parity flips, pending = count. Faults: an
//                     un-initialised barrier, over-arrival (pending already 0), tx-count outside
//                     [-(2^20 - 1), 2^20 - 1].
//   try_wait.parity p true once the phase with parity p has completed (the current phase's parity != p; so
//                     on a fresh barrier parity 1 is complete at once). The ISA lets try_wait suspend:
//                     here it blocks the fiber until that phase completes and then returns true, so spin
//                     loops cost nothing and a barrier that can never complete is the scheduler's
//                     deadlock report ("... waits on mbarrier 0x.. parity p at file:line (state)").
//                     It never returns false (the hardware's time-limit is not modelled).
//   cp.async.bulk.tensor (TMA), issued by one thread: the map must be one made by tensor_map.cuh's encoders
//                     (magic + checksum), 64-byte aligned; mode and rank must match the instruction; the
//                     barrier initialised; the destination in shared memory and aligned to 128 bytes, or to
//                     the swizzle pattern's repeat: 256 (32B), 512 (64B), 1024 (128B) bytes. The global
//                     tensor must lie in one cudaMalloc allocation. At issue the destination is poisoned
//                     (0xff: NaN); the copy lands — the whole box, zero for out-of-bounds elements — at the
//                     latest moment a thread could observe it: when its barrier has no arrival pending and a
//                     thread polls it (try_wait, or an arrival that needs the phase done), or when nothing
//                     else in the block can run. Then tx-count -= box bytes (out-of-bounds elements
//                     included, as on the hardware) and the phase may complete. A copy still in flight when
//                     the block exits is a fault ("never waited for").
//     tile mode       box element (j0, j1, ...) = tensor element (c0 + j0, c1 + j1·es1, ...), ceil(box_i /
//                     es_i) elements per dim (elementStrides[0] is ignored, as the driver documents), stored
//                     row-major (dim 0 innermost, rows of box0·elemsize bytes, no padding), then swizzled.
//     im2col mode     (4-D here, {C, W, H, N}; rank 3..5 in the runtime) pixelsPerColumn rows of
//                     channelsPerPixel elements [c, c + channelsPerPixel). Pixel j's corner is the j-th step
//                     of a row-major traversal (W fastest, then H, then N) over the corner box
//                     w in [lowerW, W - 1 + upperW] stepping elementStrides[1], h likewise with [2], starting
//                     at the instruction's (w, h, n); stepping past the box's end in W restarts at lowerW and
//                     steps H, past H restarts at lowerH and steps n by one. The element read is
//                     x[n][h + off_h][w + off_w][c..], zero where out of bounds (n >= N included). This is the
//                     geometry of the PTX ISA's "im2col mode" (bounding box from the corners, traversal
//                     stride, im2col offsets) and of CUTLASS's make_im2col_tma_copy_desc (Q = (W + upper -
//                     lower - 1) / stride + 1 corners per row). The emulator's reading: a start corner
//                     outside the corner box is a fault (the ISA does not define it for tensor loads), and
//                     the offsets are unsigned.
//     swizzle         on the absolute shared address of each 16-byte chunk: 128B: bits [4:6] ^= [7:9];
//                     64B: [4:5] ^= [7:8]; 32B: bit 4 ^= bit 7 (the ISA's "swizzling modes"; CUTLASS
//                     Swizzle<3,4,3> / <2,4,3> / <1,4,3>). A box row narrower than the span is NOT padded
//                     to it (rows are packed; the emulator's reading).
//   elect.sync        a warp collective over mask 0xffffffff: exactly one lane gets true. The ISA says only
//                     that the choice is deterministic; the emulator elects the lowest lane of the mask.
//   setmaxnreg        a checked no-op: a warp collective in which all 32 lanes must pass the same count
//                     (a multiple of 8 in [24, 256], static_asserted). Register budgets are not modelled, nor
//                     the warpgroup-wide agreement the ISA asks for (only the warp's).
//   fence.proxy.async.shared::cta, fence.mbarrier_init.release.cluster, prefetch.tensormap: no-ops. The
//                     emulator has one proxy and no cluster, and every mbarrier and TMA operation works on
//                     the side table directly, so there is nothing to order or prefetch; a missing fence is
//                     NOT reported.
// TSan (FASTCONV_EMU_TSAN): init writes the barrier's 8 bytes and every other operation reads them (an
// init not ordered before a use by __syncthreads is a race); an arrive is a release on the barrier, a
// completed wait an acquire; the poison at issue is the issuing thread's write; a landing copy is
// written by the polling thread, ordered after the issue and released to the barrier before any waiter
// goes on.
#pragma once

#include <cstdint>
#include <string>

#include "runtime.h"

namespace fastconv {
namespace cuda {

inline void mbarrier_init(unsigned int bar, unsigned int count, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  ::fc_emu::mbarrier_init(bar, count, file, line);
}
// Orders the inits before the async proxy's (TMA's) use: one proxy here, nothing to order.
inline void fence_mbarrier_init() {}
inline void mbarrier_arrive(unsigned int bar, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fc_emu::mbarrier_arrive(bar, false, 0, file, line);
}
inline void mbarrier_arrive_expect_tx(unsigned int bar, unsigned int bytes, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
  ::fc_emu::mbarrier_arrive(bar, true, bytes, file, line);
}
inline bool mbarrier_try_wait_parity(unsigned int bar, unsigned int parity, const char* file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
  return ::fc_emu::mbarrier_try_wait_parity(bar, parity, file, line);
}
inline void mbarrier_wait_parity(unsigned int bar, unsigned int parity, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  while (!::fc_emu::mbarrier_try_wait_parity(bar, parity, file, line)) {
  }
}
// Generic-proxy stores before async-proxy (TMA) accesses: one proxy here, nothing to order.
inline void fence_proxy_async_shared() {}

namespace emu_detail {

constexpr unsigned kFullWarp = 0xffffffffu;

inline void elect_op(const ::fc_emu::CollectiveContext& cc, const void* const*, void* const* outs) {
  const int leader = __builtin_ctz(cc.mask);  // deterministic: the lowest lane of the mask
  for (int l = 0; l < 32; ++l)
    if (cc.mask >> l & 1u) *static_cast<bool*>(outs[l]) = l == leader;
}

struct SetmaxnregIn {
  int regs;
};
inline void setmaxnreg_op(const ::fc_emu::CollectiveContext& cc, const void* const* ins, void* const* outs) {
  const int first = static_cast<const SetmaxnregIn*>(ins[0])->regs;
  bool same = true;
  for (int l = 0; l < 32; ++l)
    if (cc.mask >> l & 1u) same = same && static_cast<const SetmaxnregIn*>(ins[l])->regs == first;
  for (int l = 0; l < 32; ++l)
    if (cc.mask >> l & 1u) *static_cast<bool*>(outs[l]) = same;
}

inline void setmaxnreg_emu(int regs, bool inc, const char* file, int line) {
  SetmaxnregIn in{regs};
  bool same = false;
  const char* what = inc ? "setmaxnreg.inc (.sync.aligned: whole warp)" : "setmaxnreg.dec (.sync.aligned: whole warp)";
  ::fc_emu::collective(kFullWarp, setmaxnreg_op, what, &in, &same, file, line);
  if (!same)
    ::fc_emu::fault(cudaErrorLaunchFailure, std::string(what) + ": the lanes of the warp pass different counters (" +
                                                ::fc_emu::describe_thread() + " passes " + std::to_string(regs) + ")");
}

}  // namespace emu_detail

inline bool elect_one_sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  bool elected = false;
  ::fc_emu::collective(emu_detail::kFullWarp, emu_detail::elect_op, "elect.sync", nullptr, &elected, file, line);
  return elected;
}

template <int kRegs>
inline void setmaxnreg_inc(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
  emu_detail::setmaxnreg_emu(kRegs, true, file, line);
}
template <int kRegs>
inline void setmaxnreg_dec(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
  emu_detail::setmaxnreg_emu(kRegs, false, file, line);
}

inline void tma_load_tile_3d(unsigned int dst, const CUtensorMap* map, unsigned int bar, int c0, int c1, int c2,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const int32_t coords[3] = {c0, c1, c2};
  ::fc_emu::tma_load(dst, map, bar, 3, coords, false, nullptr, file, line);
}
inline void tma_load_im2col_4d(unsigned int dst, const CUtensorMap* map, unsigned int bar, int c, int w, int h, int n,
                               uint16_t off_w, uint16_t off_h, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
  const int32_t coords[4] = {c, w, h, n};
  const uint16_t offsets[2] = {off_w, off_h};
  ::fc_emu::tma_load(dst, map, bar, 4, coords, true, offsets, file, line);
}
// A hint to the descriptor cache: nothing to prefetch here.
inline void tma_prefetch_desc(const CUtensorMap* map) { (void)map; }

}  // namespace cuda
}  // namespace fastconv
