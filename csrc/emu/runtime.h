// runtime.h — the emulator's internal interface: what ptx_emu.h and the tests use beyond cuda_emu.h,
// and the controls a harness or the Python binding has over the emulated device.
#pragma once

#include <cstdio>
#include <map>
#include <string>

#include "cuda_emu.h"

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

// Memory-access counters (FASTCONV_EMU_COUNTERS=1 or set_counters), per kernel and launch site.
struct Counters {
  uint64_t launches = 0;
  uint64_t ldmatrix_instr = 0, ldmatrix_wavefronts = 0, ldmatrix_ideal = 0;
  uint64_t cp_async_instr = 0, cp_smem_wavefronts = 0, cp_smem_ideal = 0;
  uint64_t cp_gmem_sectors = 0, cp_gmem_ideal = 0;
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
