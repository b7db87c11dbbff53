// runtime.h — the emulator's internal interface: what ptx_emu.h and the tests use beyond cuda_emu.h,
// and the controls a harness or the Python binding has over the emulated device.
#pragma once

#include <cstdio>
#include <map>
#include <string>

#include "cuda_emu.h"

#include <cuda.h>  // CUtensorMap and its enums

namespace fc_emu {

// A fault during execution: the launch stops, the device's error becomes `code` (sticky), and the
// report names the kernel, block, thread and `msg`. Never returns.
[[noreturn]] void fault(cudaError_t code, const std::string& msg);
std::string describe_thread();

// Host pointer of [addr, addr + bytes) in the running block's shared window; faults outside it.
uint8_t* shared_pointer(uint32_t addr, size_t bytes, const char* what, const char* file, int line);

// cp.async: the copy is issued now (destination poisoned), lands at the wait that covers its group.
void cp_async(uint32_t dst, const void* src, int cp_size, int src_size, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int pending);
void cp_async_wait_all();

// Per-CUDA-thread state of an instruction family (e.g. wgmma's uncommitted and in-flight groups):
// slot i of the running thread, null at block start. At thread exit a non-null slot is cleared and
// handed to the family's exit hook (set once, e.g. from a static initialiser), which may fault (an
// un-waited group) and must free it.
constexpr int kThreadSlots = 4;
enum ThreadSlotId { kSlotWgmma = 0, kSlotSpare1 = 1, kSlotSpare2 = 2, kSlotSpare3 = 3 };
using ThreadSlotExitHook = void (*)(void* slot_value);
void** thread_slot(int i);
void set_thread_slot_exit_hook(int i, ThreadSlotExitHook hook);

// ---- sm_90 asynchronous barriers and copies (ptx_emu_sm90_async.h) -------------------------------------
// mbarrier: the state lives in a per-block side table keyed by the barrier's shared address (its 8 bytes
// must lie in the block's shared memory, 8-byte aligned). try_wait blocks the fiber until the phase with
// the given parity has completed, then returns true (a barrier that can never complete is the
// scheduler's deadlock report, not an endless spin).
void mbarrier_init(uint32_t bar, uint32_t count, const char* file, int line);
void mbarrier_arrive(uint32_t bar, bool expect_tx, uint32_t tx_bytes, const char* file, int line);
bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity, const char* file, int line);

// A tensor map as the emulator keeps it (encode_tensor_map packs it into the 128-byte CUtensorMap with
// a magic word and a checksum; decode_tensor_map refuses anything else).
constexpr int kTensorMapMaxRank = 5;
struct TensorMapDesc {
  bool im2col = false;
  int rank = 0;
  int dtype = 0;          // CUtensorMapDataType
  int elem_bytes = 0;
  int swizzle_bytes = 0;  // 0 (none), 32, 64, 128
  uint64_t base = 0;
  uint64_t dims[kTensorMapMaxRank] = {};
  uint64_t strides[kTensorMapMaxRank] = {};  // bytes; strides[0] = elem_bytes
  uint32_t box[kTensorMapMaxRank] = {};      // tiled mode
  uint32_t elem_strides[kTensorMapMaxRank] = {};
  int lower[kTensorMapMaxRank - 2] = {}, upper[kTensorMapMaxRank - 2] = {};  // im2col, spatial dims 1..rank-2
  uint32_t channels = 0, pixels = 0;                                           // im2col
};
void encode_tensor_map(CUtensorMap* map, const TensorMapDesc& d);
bool decode_tensor_map(const CUtensorMap* map, TensorMapDesc* d);
// cp.async.bulk.tensor.{N}d.shared::cluster.global.{tile,im2col}.mbarrier::complete_tx::bytes, issued by
// the calling thread: `coords` has map rank entries, `offsets` rank - 2 (im2col only).
void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int rank, const int32_t* coords, bool im2col,
              const uint16_t* offsets, const char* file, int line);

// Memory-access counters (FASTCONV_EMU_COUNTERS=1 or set_counters), per kernel and launch site.
struct Counters {
  uint64_t launches = 0;
  uint64_t ldmatrix_instr = 0, ldmatrix_wavefronts = 0, ldmatrix_ideal = 0;
  uint64_t cp_async_instr = 0, cp_smem_wavefronts = 0, cp_smem_ideal = 0;
  uint64_t cp_gmem_sectors = 0, cp_gmem_ideal = 0;
  // TMA (cp.async.bulk.tensor): instructions, bytes written to shared memory (the whole box, zero fill
  // included) and bytes read from global memory (the in-bounds elements).
  uint64_t tma_instr = 0, tma_smem_bytes = 0, tma_gmem_bytes = 0;
};
void count_ldmatrix(const uint32_t* row_addr, int matrices);  // 8 row addresses per matrix
void set_counters(bool on);
std::map<std::string, Counters> counters();
void clear_counters();
void print_counters(FILE* out);

// The emulated device: 80 (A100 limits) or 90 (H100/H200 limits); FASTCONV_EMU_ARCH picks the default.
int device_arch();
void set_device_arch(int arch);
// Clears a sticky fault (as cudaDeviceReset would) and the function attributes.
void reset_device();
std::string last_fault_report();

}  // namespace fc_emu
