// runtime.cpp — the emulated CUDA device's runtime: the CUDA runtime API on host memory, and the
// execution model the kernels run under.
//
// Execution model. A launch runs its blocks one after another in blockIdx order (x fastest). The
// threads of a block are cooperative fibers on their own stacks (fiber.h), run round-robin in
// threadIdx order; a fiber runs until it finishes or waits — at __syncthreads (released when every
// live thread of the block has arrived, exited threads don't count, as on sm_70+) or in a warp
// collective (released when every lane of its mask has arrived at the same collective with the same
// mask). The schedule depends on nothing but the program, so runs repeat exactly.
//
// Rules a real GPU enforces, enforced: launch configuration limits (cudaErrorInvalidConfiguration),
// shared-memory limits per device and cudaFuncSetAttribute (cudaErrorInvalidValue), and faults during
// execution, which are sticky as on the hardware (cudaErrorLaunchFailure for a divergent barrier, a
// bad collective mask, a shared-memory access outside the block's allocations, misaligned PTX
// operands; cudaErrorLaunchTimeout for a block that can never complete). A fault prints one report
// naming the kernel, block, threads and source lines; FASTCONV_EMU_ABORT=1 aborts instead, in the
// faulting fiber, so gdb shows the kernel's stack.
//
// Sanitizers. Under ASan the fiber switches are annotated (__sanitizer_*_switch_fiber). Under TSan
// (built with FASTCONV_EMU_TSAN) every CUDA thread is a TSan fiber switched without synchronisation;
// the only happens-before edges are the ones CUDA gives: __syncthreads and __syncwarp (release on
// arrival, acquire on release), launch boundaries and host copies. Two threads of a block touching
// the same shared byte between barriers, one writing, is then a TSan data race report; the fibers are
// named "kernel block(x,y,z) thread(x,y,z)". This file itself is compiled without TSan
// instrumentation: its bookkeeping is single-threaded by construction, and the memory it touches on a
// CUDA thread's behalf (cp.async copies) is announced explicitly.
#include "runtime.h"

// The kernels' built-in variables are macros; the runtime implements them and needs the plain names.
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#undef warpSize

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fiber.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FC_EMU_ASAN 1
#endif
#if defined(FASTCONV_EMU_TSAN)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_read_range(void* addr, unsigned long size);
void __tsan_write_range(void* addr, unsigned long size);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

namespace fc_emu {
namespace {

std::string thread_label_of_current();  // for the ASan death callback

constexpr size_t kPoisonByte = 0xff;  // NaN in every float format, -1 in every integer
constexpr int kMaxThreadsPerBlock = 1024;
ThreadSlotExitHook g_slot_exit_hooks[kThreadSlots] = {};
constexpr unsigned kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimYZ = 65535;
constexpr unsigned kMaxGridDimX = 0x7fffffffu;
constexpr size_t kDefaultSmemPerBlock = 48 * 1024;
constexpr size_t kSharedAlign = 1024;  // every shared allocation starts on a 1024-byte window boundary

struct DeviceModel {
  int arch;  // 80 or 90
  const char* name;
  size_t smem_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int sms;
};
const DeviceModel kSm80{80, "fastconv emulated CUDA device (sm_80, A100 limits)", 166912, 108};
const DeviceModel kSm90{90, "fastconv emulated CUDA device (sm_90, H100/H200 limits)", 232448, 132};

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}
size_t env_size(const char* name, size_t dflt) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return dflt;
  return static_cast<size_t>(std::strtoull(v, nullptr, 10));
}

// ---- per-process device state (the "driver") --------------------------------------------------------

struct Allocation {
  size_t bytes;
};

struct DeviceState {
  std::mutex mu;
  const DeviceModel* model = nullptr;
  std::map<uintptr_t, Allocation> allocs;   // cudaMalloc'd ranges
  std::map<const void*, int> max_dyn_smem;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
  cudaError_t sticky = cudaSuccess;         // a fault during execution poisons the context
  std::string sticky_report;
  std::map<std::string, Counters> counters;
  bool counters_on = false;
  bool abort_on_fault = false;
  bool quiet = false;
#if defined(FASTCONV_EMU_TSAN)
  // Host -> kernel: the host releases host_sync before a launch, every CUDA thread acquires it when
  // it starts. Kernel -> host: every CUDA thread releases exit_sync when it ends (or is abandoned),
  // the host acquires it. Two objects, so that no CUDA thread acquires what another one released:
  // one object for both would order all of thread 0 (run first, up to its first wait) before
  // thread 1's start and hide every race between them that a missing __syncthreads makes.
  char host_sync = 0;
  char exit_sync = 0;
#endif
  DeviceState() {
    const char* arch = std::getenv("FASTCONV_EMU_ARCH");
    model = (arch != nullptr && std::strstr(arch, "80") != nullptr) ? &kSm80 : &kSm90;
    counters_on = env_flag("FASTCONV_EMU_COUNTERS");
    if (counters_on) std::atexit([] { print_counters(stdout); });
    abort_on_fault = env_flag("FASTCONV_EMU_ABORT");
    quiet = env_flag("FASTCONV_EMU_QUIET");
#if defined(FC_EMU_ASAN)
    // An ASan report names the host thread only: add the CUDA coordinates of the running fiber.
    __sanitizer_set_death_callback([] {
      const std::string who = thread_label_of_current();
      if (!who.empty()) std::fprintf(stderr, "fastconv-emu: the faulting access was made by %s\n", who.c_str());
    });
#endif
  }
};
DeviceState& dev() {
  static DeviceState* d = new DeviceState();  // never destroyed: kernels may run from atexit handlers
  return *d;
}

thread_local cudaError_t t_last_error = cudaSuccess;  // cudaGetLastError's, per host thread

// ---- one launch in flight -----------------------------------------------------------------------------

struct CpAsyncCopy {
  uint8_t* dst;
  const uint8_t* src;
  int cp_size, src_size;
};

struct CollectiveArrival {
  unsigned mask;
  CollectiveOp op;
  const char* what;
  const void* in;
  void* out;
};

enum class FiberState { kRunnable, kBarrier, kCollective, kMbarrier, kDone };

// One cp.async.bulk.tensor in flight: the destination is poisoned at issue; the copy lands when its
// barrier has no pending arrivals left and a thread polls it (or nothing else can run).
struct TmaCopy {
  uint8_t* dst;       // host pointer of the destination's first byte
  uint32_t dst_addr;  // its shared address (the swizzle works on it)
  uint32_t bytes;     // the box, out-of-bounds elements included: what complete_tx counts
  uint32_t footprint; // bytes from dst that the swizzled box touches
  TensorMapDesc map;
  int32_t coords[kTensorMapMaxRank];
  uint16_t offsets[kTensorMapMaxRank - 2];
  bool im2col;
  const char* file;
  int line;
  int issuer;  // linear thread index
};

// mbarrier state (PTX ISA "mbarrier": phase, pending arrival count, expected arrival count, tx-count).
struct Mbarrier {
  uint32_t count = 0;    // expected arrivals per phase
  uint32_t pending = 0;  // arrivals still missing in the current phase
  int64_t tx = 0;        // tx-count of the current phase
  uint32_t phase = 0;    // completed phases; the current phase's parity is phase & 1
  std::vector<TmaCopy> inflight;
  const char* file = nullptr;  // where it was initialised
  int line = 0;
  char sync = 0;  // TSan: arrive releases, a successful wait acquires
};

struct Thread {
  Fiber fiber;
  ThreadCoords coords;
  int linear = 0, lane = 0, warp = 0;
  FiberState state = FiberState::kRunnable;
  bool started = false;
  const char* file = nullptr;  // where it waits
  int line = 0;
  CollectiveArrival coll{};
  uint32_t mb_addr = 0, mb_parity = 0;  // the mbarrier phase it waits for (kMbarrier)
  bool mb_released = false;             // that phase completed while it waited
  std::vector<CpAsyncCopy> cp_open;                // issued, not yet committed
  std::vector<std::vector<CpAsyncCopy>> cp_groups;  // committed, oldest first
  uint32_t cp_seq = 0;                             // counts this thread's cp.async (for counters)
  void* slots[kThreadSlots] = {};                   // per-thread state of instruction families (runtime.h)
#if defined(FASTCONV_EMU_TSAN)
  void* tsan_fiber = nullptr;
  std::string tsan_name;
#endif
};

struct SharedAlloc {
  const void* tag;  // null: the dynamic buffer
  uint8_t* ptr;
  size_t bytes;
  uint32_t base;
  const char* name;
};

struct CpRecord {  // one lane's cp.async, for the counters
  int warp, lane;
  uint32_t seq, dst;
  uintptr_t src;
  int cp_size, src_size;
};

struct Exec {
  LaunchSpec spec;
  void (*body)(void*);
  void* ctx;
  size_t smem_limit_dyn;  // the dynamic size this launch may use
  size_t smem_optin;
  std::vector<Thread> threads;
  int nthreads = 0, nwarps = 0;
  // block state
  uint3 block{};
  int live = 0, at_barrier = 0;
  uint64_t barrier_gen = 0;
  std::vector<uint64_t> warp_gen;
  std::vector<SharedAlloc> shared;
  std::map<uint32_t, Mbarrier> mbarriers;  // by shared address; node addresses are stable (TSan syncs)
  size_t static_bytes = 0;
  uint32_t next_static_base = 0;
  // scheduler
  Thread* current = nullptr;
  void* sched_sp = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  cudaError_t fault = cudaSuccess;
  std::string report;
  // counters
  bool counting = false;
  Counters* ctr = nullptr;
  std::vector<CpRecord> cp_records;
#if defined(FASTCONV_EMU_TSAN)
  void* tsan_sched = nullptr;
  char barrier_sync[2] = {0, 0};
  std::vector<char> warp_sync;  // 2 per warp
#endif
};

thread_local Exec* t_exec = nullptr;
const ThreadCoords kHostCoords{};

std::string kernel_label(const Exec& ex) {
  std::string s = ex.spec.name ? ex.spec.name : "?";
  const char* f = ex.spec.file ? std::strrchr(ex.spec.file, '/') : nullptr;
  char buf[64];
  std::snprintf(buf, sizeof(buf), " (%s:%d)", f ? f + 1 : (ex.spec.file ? ex.spec.file : "?"), ex.spec.line);
  s += buf;
  // The launcher's template arguments say which instantiation this is.
  const char* with = ex.spec.context ? std::strstr(ex.spec.context, "[with ") : nullptr;
  if (with != nullptr) {
    // Keep the template arguments, drop the typedefs of the signature (cudaError_t = ..., ...).
    std::string args(with + 6), kept;
    if (!args.empty() && args.back() == ']') args.pop_back();
    size_t pos = 0;
    while (pos <= args.size()) {
      size_t end = args.find("; ", pos);
      if (end == std::string::npos) end = args.size();
      const std::string item = args.substr(pos, end - pos);
      if (item.rfind("cudaError_t", 0) != 0 && item.rfind("cudaStream_t", 0) != 0 && item.rfind("size_t", 0) != 0)
        kept += (kept.empty() ? "" : "; ") + item;
      pos = end + 2;
    }
    if (!kept.empty()) s += " [" + kept + "]";
  }
  return s;
}
std::string where(const char* file, int line) {
  const char* f = file ? std::strrchr(file, '/') : nullptr;
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s:%d", f ? f + 1 : (file ? file : "?"), line);
  return buf;
}
std::string thread_label(const Thread& t) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "thread (%u,%u,%u) [warp %d lane %d]", t.coords.thread_idx.x, t.coords.thread_idx.y,
                t.coords.thread_idx.z, t.warp, t.lane);
  return buf;
}

std::string thread_label_of_current() {
  Exec* ex = t_exec;
  if (ex == nullptr || ex->current == nullptr) return "";
  const Thread& t = *ex->current;
  return "kernel " + kernel_label(*ex) + ", block (" + std::to_string(ex->block.x) + "," +
         std::to_string(ex->block.y) + "," + std::to_string(ex->block.z) + "), " + thread_label(t);
}

// ---- fibers ---------------------------------------------------------------------------------------------

void fiber_main(void* arg);

void switch_into(Exec& ex, Thread& t) {
  ex.current = &t;
#if defined(FC_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t.fiber.stack_lo, t.fiber.stack_size);
#endif
#if defined(FASTCONV_EMU_TSAN)
  __tsan_switch_to_fiber(t.tsan_fiber, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
  fiber_switch(&ex.sched_sp, t.fiber.sp);
#if defined(FC_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  ex.current = nullptr;
}

// From a fiber back to the scheduler. `final`: the fiber's stack is done with (re-initialised next block).
void switch_out(Exec& ex, Thread& t, bool final) {
#if defined(FC_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(final ? nullptr : &fake, ex.sched_stack_bottom, ex.sched_stack_size);
#endif
#if defined(FASTCONV_EMU_TSAN)
  __tsan_switch_to_fiber(ex.tsan_sched, 1);
#endif
  fiber_switch(&t.fiber.sp, ex.sched_sp);
#if defined(FC_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, &ex.sched_stack_bottom, &ex.sched_stack_size);
#endif
  (void)final;
  // Resumed after another thread faulted: this thread is abandoned (run_block resumes each parked
  // thread once, so that its accesses happen-before the host's clean-up, as a finished thread's do).
  if (ex.fault != cudaSuccess) {
#if defined(FASTCONV_EMU_TSAN)
    __tsan_release(&dev().exit_sync);
#endif
    t.state = FiberState::kDone;
    switch_out(ex, t, true);
    std::abort();
  }
}

// Records the first fault of the launch and leaves the fiber for good (its block is abandoned).
[[noreturn]] void fault_in_fiber(cudaError_t code, const std::string& msg) {
  Exec& ex = *t_exec;
  if (ex.fault == cudaSuccess) {
    ex.fault = code;
    ex.report = "fastconv-emu: " + std::string(cudaGetErrorName(code)) + " in kernel " + kernel_label(ex) +
                ", block (" + std::to_string(ex.block.x) + "," + std::to_string(ex.block.y) + "," +
                std::to_string(ex.block.z) + "): " + msg;
  }
  if (dev().abort_on_fault) {
    std::fprintf(stderr, "%s\n", ex.report.c_str());
    std::abort();
  }
  Thread& t = *ex.current;
  t.state = FiberState::kDone;
#if defined(FASTCONV_EMU_TSAN)
  __tsan_release(&dev().exit_sync);
#endif
  switch_out(ex, t, true);
  std::abort();  // an abandoned fiber is never resumed
}

// ---- cp.async completion ------------------------------------------------------------------------------

void complete_copies(std::vector<CpAsyncCopy>& copies) {
  for (const CpAsyncCopy& c : copies) {
#if defined(FASTCONV_EMU_TSAN)
    if (c.src_size > 0) __tsan_read_range(const_cast<uint8_t*>(c.src), c.src_size);
    __tsan_write_range(c.dst, c.cp_size);
#endif
    if (c.src_size > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_size));
    if (c.src_size < c.cp_size) std::memset(c.dst + c.src_size, 0, static_cast<size_t>(c.cp_size - c.src_size));
  }
  copies.clear();
}

// ---- barriers ---------------------------------------------------------------------------------------------

void release_barrier(Exec& ex) {
  // Every live thread waits here: they must all wait at the same __syncthreads.
  const Thread* first = nullptr;
  for (Thread& t : ex.threads) {
    if (t.state != FiberState::kBarrier) continue;
    if (first == nullptr) {
      first = &t;
    } else if (t.line != first->line || std::strcmp(t.file, first->file) != 0) {
      fault_in_fiber(cudaErrorLaunchFailure,
                     "divergent barrier: " + thread_label(*first) + " waits at __syncthreads() " +
                         where(first->file, first->line) + " while " + thread_label(t) +
                         " waits at __syncthreads() " + where(t.file, t.line));
    }
  }
  for (Thread& t : ex.threads)
    if (t.state == FiberState::kBarrier) t.state = FiberState::kRunnable;
  ex.at_barrier = 0;
  ++ex.barrier_gen;
}

// ---- warp collectives ---------------------------------------------------------------------------------------

unsigned warp_lanes_present(const Exec& ex, int warp) {
  const int n = std::min(32, ex.nthreads - warp * 32);
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

// True and executed when every lane of t's mask has arrived at t's collective.
bool try_complete_collective(Exec& ex, Thread& t) {
  const unsigned mask = t.coll.mask;
  const int base = t.warp * 32;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Thread& o = ex.threads[base + l];
    if (o.state == FiberState::kDone)
      fault_in_fiber(cudaErrorLaunchFailure, std::string("warp collective ") + t.coll.what + " at " +
                                                 where(t.file, t.line) + " with mask 0x" +
                                                 [&] { char b[16]; std::snprintf(b, 16, "%08x", mask); return std::string(b); }() +
                                                 " names lane " + std::to_string(l) + ", which has exited");
    // The same deadlock the scheduler reports when nobody can run, found earlier: the same code.
    if (o.state == FiberState::kBarrier)
      fault_in_fiber(cudaErrorLaunchTimeout, std::string("warp collective ") + t.coll.what + " at " +
                                                 where(t.file, t.line) + " waits for lane " + std::to_string(l) +
                                                 ", which waits at __syncthreads() " + where(o.file, o.line) +
                                                 ": the block can never complete");
    if (o.state == FiberState::kCollective && (o.coll.mask != mask || o.coll.op != t.coll.op)) {
      char b[160];
      std::snprintf(b, sizeof(b), "(mask 0x%08x) vs %s (mask 0x%08x)", mask, o.coll.what, o.coll.mask);
      fault_in_fiber(cudaErrorLaunchFailure, "mismatched warp collective: " + thread_label(t) + " at " +
                                                 t.coll.what + " " + where(t.file, t.line) + " " + b + " of " +
                                                 thread_label(o) + " at " + where(o.file, o.line));
    }
    if (o.state != FiberState::kCollective) return false;
  }
  const void* ins[32] = {};
  void* outs[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    ins[l] = ex.threads[base + l].coll.in;
    outs[l] = ex.threads[base + l].coll.out;
  }
  CollectiveContext cc{mask, t.warp, t.file, t.line};
  // The exchange moves register values between lanes: no memory access of any CUDA thread.
#if defined(FASTCONV_EMU_TSAN)
  __tsan_ignore_thread_begin();
#endif
  t.coll.op(cc, ins, outs);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_ignore_thread_end();
#endif
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) ex.threads[base + l].state = FiberState::kRunnable;
  ++ex.warp_gen[t.warp];
  return true;
}

// A fiber exits: lanes waiting for it in a collective, or a barrier now complete without it.
void on_thread_exit(Exec& ex, Thread& t) {
  for (int i = 0; i < kThreadSlots; ++i) {
    void* v = t.slots[i];
    t.slots[i] = nullptr;
    if (v != nullptr && g_slot_exit_hooks[i] != nullptr) g_slot_exit_hooks[i](v);
  }
  complete_copies(t.cp_open);  // un-waited copies still land, as on the hardware
  for (auto& g : t.cp_groups) complete_copies(g);
  t.cp_groups.clear();
  t.state = FiberState::kDone;
  --ex.live;
  const int base = t.warp * 32;
  for (int l = 0; l < 32 && base + l < ex.nthreads; ++l) {
    Thread& o = ex.threads[base + l];
    if (o.state == FiberState::kCollective && (o.coll.mask >> t.lane & 1u)) {
      ex.current = &t;
      fault_in_fiber(cudaErrorLaunchFailure, thread_label(t) + " exited while " + thread_label(o) +
                                                 " waits for it in warp collective " + o.coll.what + " at " +
                                                 where(o.file, o.line));
    }
  }
  if (ex.live > 0 && ex.at_barrier == ex.live) release_barrier(ex);
}

void fiber_main(void* arg) {
  Exec& ex = *t_exec;
  Thread& t = *static_cast<Thread*>(arg);
  t.started = true;
#if defined(FC_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &ex.sched_stack_bottom, &ex.sched_stack_size);
#endif
#if defined(FASTCONV_EMU_TSAN)
  __tsan_acquire(&dev().host_sync);
#endif
  ex.body(ex.ctx);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_release(&dev().exit_sync);
#endif
  on_thread_exit(ex, t);
  switch_out(ex, t, true);
  std::abort();
}

// ---- shared memory ------------------------------------------------------------------------------------------

// Shared memory comes into being at block start on the hardware: neither its allocation nor its
// poison is an access of any CUDA thread, so TSan is told to look away.
uint8_t* alloc_shared(size_t bytes) {
  void* p = nullptr;
#if defined(FASTCONV_EMU_TSAN)
  __tsan_ignore_thread_begin();
#endif
  if (posix_memalign(&p, 128, bytes == 0 ? 1 : bytes) != 0) std::abort();
  std::memset(p, kPoisonByte, bytes);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_ignore_thread_end();
#endif
  return static_cast<uint8_t*>(p);
}

void free_block_shared(Exec& ex) {
#if defined(FASTCONV_EMU_TSAN)
  // Every thread of the block released exit_sync when it finished.
  __tsan_acquire(&dev().exit_sync);
#endif
  for (SharedAlloc& a : ex.shared) std::free(a.ptr);
  ex.shared.clear();
  ex.static_bytes = 0;
}

// ---- counters -------------------------------------------------------------------------------------------------

// Wavefronts for one shared-memory request: per phase, the most distinct 4-byte words that fall in
// one of the 32 banks. Phases: 32 lanes of <= 4 bytes, 16 lanes of 8 bytes, 8 lanes of 16 bytes.
struct Access {
  uint32_t addr;
  int bytes;
};
int wavefronts(const Access* acc, int n) {
  int words[32][32];
  int count[32] = {0};
  int worst = 0;
  for (int i = 0; i < n; ++i) {
    for (uint32_t w = acc[i].addr / 4; w < (acc[i].addr + acc[i].bytes + 3) / 4; ++w) {
      const int bank = static_cast<int>(w % 32);
      bool seen = false;
      for (int j = 0; j < count[bank]; ++j) seen |= words[bank][j] == static_cast<int>(w);
      if (!seen && count[bank] < 32) words[bank][count[bank]++] = static_cast<int>(w);
      worst = std::max(worst, count[bank]);
    }
  }
  return std::max(worst, n > 0 ? 1 : 0);
}

void flush_cp_records(Exec& ex) {
  if (!ex.counting || ex.cp_records.empty()) return;
  std::sort(ex.cp_records.begin(), ex.cp_records.end(), [](const CpRecord& a, const CpRecord& b) {
    return a.warp != b.warp ? a.warp < b.warp : (a.seq != b.seq ? a.seq < b.seq : a.lane < b.lane);
  });
  size_t i = 0;
  while (i < ex.cp_records.size()) {
    size_t j = i;
    while (j < ex.cp_records.size() && ex.cp_records[j].warp == ex.cp_records[i].warp &&
           ex.cp_records[j].seq == ex.cp_records[i].seq)
      ++j;
    // One warp-wide cp.async: its shared-memory store wavefronts and its global sectors.
    const int bytes = ex.cp_records[i].cp_size;
    const int per_phase = bytes >= 16 ? 8 : (bytes == 8 ? 16 : 32);
    std::vector<Access> acc;
    std::vector<uintptr_t> sectors;
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
    for (size_t k = i; k < j; ++k) {
      acc.push_back({ex.cp_records[k].dst, ex.cp_records[k].cp_size});
      if (ex.cp_records[k].src_size > 0) {
        ranges.push_back({ex.cp_records[k].src, ex.cp_records[k].src + ex.cp_records[k].src_size});
        for (uintptr_t s = ex.cp_records[k].src / 32; s <= (ex.cp_records[k].src + ex.cp_records[k].src_size - 1) / 32; ++s)
          sectors.push_back(s);
      }
    }
    // Ideal: the distinct bytes asked for, in whole sectors (lanes that read the same bytes share them).
    std::sort(ranges.begin(), ranges.end());
    size_t src_bytes = 0;
    uintptr_t covered = 0;
    for (const auto& r : ranges) {
      const uintptr_t lo = std::max(r.first, covered);
      if (r.second > lo) src_bytes += r.second - lo;
      covered = std::max(covered, r.second);
    }
    std::sort(sectors.begin(), sectors.end());
    sectors.erase(std::unique(sectors.begin(), sectors.end()), sectors.end());
    // Phases are formed by lane number, as the hardware groups them.
    int w = 0, phases = 0;
    for (int p = 0; p < 32 / per_phase; ++p) {
      std::vector<Access> ph;
      for (size_t k = i; k < j; ++k)
        if (ex.cp_records[k].lane / per_phase == p) ph.push_back({ex.cp_records[k].dst, ex.cp_records[k].cp_size});
      if (!ph.empty()) {
        w += wavefronts(ph.data(), static_cast<int>(ph.size()));
        ++phases;
      }
    }
    ex.ctr->cp_async_instr += 1;
    ex.ctr->cp_smem_wavefronts += w;
    ex.ctr->cp_smem_ideal += phases;
    ex.ctr->cp_gmem_sectors += sectors.size();
    ex.ctr->cp_gmem_ideal += (src_bytes + 31) / 32;
    i = j;
  }
  ex.cp_records.clear();
}

// ---- mbarriers at the scheduler's level ------------------------------------------------------------------------

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof(b), "0x%x", v);
  return b;
}

std::string describe_mbarrier(const Exec& ex, uint32_t addr) {
  auto it = ex.mbarriers.find(addr);
  if (it == ex.mbarriers.end()) return "not initialised";
  const Mbarrier& b = it->second;
  char buf[192];
  std::snprintf(buf, sizeof(buf), "phase %u (parity %u), %u of %u arrivals pending, tx-count %lld, %zu TMA copies in flight",
                b.phase, b.phase & 1u, b.pending, b.count, static_cast<long long>(b.tx), b.inflight.size());
  return buf;
}

// Nothing can run: a thread waiting on a barrier whose arrivals are all in but whose copies have not
// landed is polling it, so the copies may land now — resume it to poll (it lands them on its fiber).
bool wake_mbarrier_poller(Exec& ex) {
  for (Thread& t : ex.threads) {
    if (t.state != FiberState::kMbarrier) continue;
    auto it = ex.mbarriers.find(t.mb_addr);
    if (it != ex.mbarriers.end() && it->second.pending == 0 && !it->second.inflight.empty()) {
      t.state = FiberState::kRunnable;
      return true;
    }
  }
  return false;
}

// The block has finished: a copy still in flight was never waited for (its bytes would land in shared
// memory that no longer belongs to the block).
void check_mbarriers_at_exit(Exec& ex) {
  for (const auto& kv : ex.mbarriers) {
    if (kv.second.inflight.empty()) continue;
    const TmaCopy& c = kv.second.inflight.front();
    ex.fault = cudaErrorLaunchFailure;
    ex.report = "fastconv-emu: " + std::string(cudaGetErrorName(ex.fault)) + " in kernel " + kernel_label(ex) +
                ", block (" + std::to_string(ex.block.x) + "," + std::to_string(ex.block.y) + "," +
                std::to_string(ex.block.z) + "): the TMA copy (cp.async.bulk.tensor) issued at " +
                where(c.file, c.line) + " by " + thread_label(ex.threads[static_cast<size_t>(c.issuer)]) +
                " on mbarrier " + hex32(kv.first) + " was never waited for: the block exited with it in flight (" +
                describe_mbarrier(ex, kv.first) + ")";
    if (dev().abort_on_fault) {
      std::fprintf(stderr, "%s\n", ex.report.c_str());
      std::abort();
    }
    return;
  }
}

// ---- running a launch -----------------------------------------------------------------------------------------

void run_block(Exec& ex) {
  ex.mbarriers.clear();
  ex.live = ex.nthreads;
  ex.at_barrier = 0;
  if (ex.spec.dyn_smem > 0) {
    ex.shared.push_back({nullptr, alloc_shared(ex.spec.dyn_smem), ex.spec.dyn_smem, 0, "dynamic shared memory"});
  }
  ex.next_static_base = static_cast<uint32_t>((ex.spec.dyn_smem + kSharedAlign - 1) / kSharedAlign * kSharedAlign);
  for (Thread& t : ex.threads) {
    t.state = FiberState::kRunnable;
    t.started = false;
    t.coords.block_idx = ex.block;
    t.cp_open.clear();
    t.cp_groups.clear();
    t.cp_seq = 0;
    for (void*& v : t.slots) v = nullptr;
#if defined(FC_EMU_ASAN)
    __asan_unpoison_memory_region(t.fiber.stack_lo, t.fiber.stack_size);
#endif
    fiber_init(t.fiber, fiber_main, &t);
#if defined(FASTCONV_EMU_TSAN)
    char buf[96];
    std::snprintf(buf, sizeof(buf), " block(%u,%u,%u) thread(%u,%u,%u)", ex.block.x, ex.block.y, ex.block.z,
                  t.coords.thread_idx.x, t.coords.thread_idx.y, t.coords.thread_idx.z);
    t.tsan_name = (ex.spec.name ? ex.spec.name : "kernel") + std::string(buf);
    __tsan_set_fiber_name(t.tsan_fiber, t.tsan_name.c_str());
#endif
  }
  size_t next = 0;
  while (ex.live > 0 && ex.fault == cudaSuccess) {
    bool progress = false;
    for (int k = 0; k < ex.nthreads && ex.fault == cudaSuccess; ++k) {
      Thread& t = ex.threads[(next + k) % ex.nthreads];
      if (t.state != FiberState::kRunnable) continue;
      switch_into(ex, t);
      progress = true;
    }
    if (!progress && ex.fault == cudaSuccess && wake_mbarrier_poller(ex)) {
      next = 0;
      continue;
    }
    if (!progress && ex.fault == cudaSuccess) {
      // Nobody can run and somebody is alive: the block can never complete.
      std::string who;
      int shown = 0;
      for (Thread& t : ex.threads) {
        if (t.state == FiberState::kDone || shown >= 4) continue;
        std::string what;
        if (t.state == FiberState::kBarrier) {
          what = "at __syncthreads() " + where(t.file, t.line);
        } else if (t.state == FiberState::kMbarrier) {
          what = "on mbarrier " + hex32(t.mb_addr) + " parity " + std::to_string(t.mb_parity) + " at " +
                 where(t.file, t.line) + " (" + describe_mbarrier(ex, t.mb_addr) + ")";
        } else {
          what = std::string("in ") + t.coll.what + " " + where(t.file, t.line);
        }
        who += (shown ? "; " : "") + thread_label(t) + " waits " + what;
        ++shown;
      }
      ex.fault = cudaErrorLaunchTimeout;
      ex.report = "fastconv-emu: " + std::string(cudaGetErrorName(ex.fault)) + " in kernel " + kernel_label(ex) +
                  ", block (" + std::to_string(ex.block.x) + "," + std::to_string(ex.block.y) + "," +
                  std::to_string(ex.block.z) + "): the block can never complete: " + who;
      if (dev().abort_on_fault) {
        std::fprintf(stderr, "%s\n", ex.report.c_str());
        std::abort();
      }
    }
    next = 0;
  }
  if (ex.fault == cudaSuccess) check_mbarriers_at_exit(ex);
  if (ex.fault != cudaSuccess) {
    for (Thread& t : ex.threads)
      if (t.started && t.state != FiberState::kDone) switch_into(ex, t);
  }
  ex.mbarriers.clear();
  flush_cp_records(ex);
  free_block_shared(ex);
}

// Per host thread: fiber stacks (and TSan fibers) kept between launches.
struct FiberPool {
  std::vector<Thread> threads;
  ~FiberPool() {
    for (Thread& t : threads) {
      fiber_free(t.fiber);
#if defined(FASTCONV_EMU_TSAN)
      if (t.tsan_fiber) __tsan_destroy_fiber(t.tsan_fiber);
#endif
    }
  }
};
thread_local FiberPool t_pool;

cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

}  // namespace

// ---- the interface of cuda_emu.h ---------------------------------------------------------------------------

const ThreadCoords& coords() {
  Exec* ex = t_exec;
  return (ex && ex->current) ? ex->current->coords : kHostCoords;
}

Thread& current_thread(const char* what) {
  Exec* ex = t_exec;
  if (ex == nullptr || ex->current == nullptr) {
    std::fprintf(stderr, "fastconv-emu: %s called outside a kernel\n", what);
    std::abort();
  }
  return *ex->current;
}

void syncthreads(const char* file, int line) {
  Thread& t = current_thread("__syncthreads");
  Exec& ex = *t_exec;
#if defined(FASTCONV_EMU_TSAN)
  char* sync = &ex.barrier_sync[ex.barrier_gen & 1];
  __tsan_release(sync);
#endif
  t.state = FiberState::kBarrier;
  t.file = file;
  t.line = line;
  if (++ex.at_barrier == ex.live) {
    release_barrier(ex);
  } else {
    switch_out(ex, t, false);
  }
#if defined(FASTCONV_EMU_TSAN)
  __tsan_acquire(sync);
#endif
}

void collective(unsigned mask, CollectiveOp op, const char* what, const void* in, void* out, const char* file,
                int line) {
  Thread& t = current_thread(what);
  Exec& ex = *t_exec;
  if (!(mask >> t.lane & 1u)) {
    char b[64];
    std::snprintf(b, sizeof(b), "0x%08x", mask);
    fault_in_fiber(cudaErrorLaunchFailure, std::string("warp collective ") + what + " at " + where(file, line) +
                                               ": mask " + b + " does not name the calling " + thread_label(t));
  }
  if (mask & ~warp_lanes_present(ex, t.warp)) {
    char b[64];
    std::snprintf(b, sizeof(b), "0x%08x (lanes present 0x%08x)", mask, warp_lanes_present(ex, t.warp));
    fault_in_fiber(cudaErrorLaunchFailure, std::string("warp collective ") + what + " at " + where(file, line) +
                                               ": mask " + b + " names lanes that do not exist in this block");
  }
  t.coll = CollectiveArrival{mask, op, what, in, out};
  t.file = file;
  t.line = line;
  t.state = FiberState::kCollective;
  if (!try_complete_collective(ex, t)) switch_out(ex, t, false);
}

namespace {
void syncwarp_op(const CollectiveContext&, const void* const*, void* const*) {}
}  // namespace

void syncwarp(unsigned mask, const char* file, int line) {
  Thread& t = current_thread("__syncwarp");
#if defined(FASTCONV_EMU_TSAN)
  Exec& ex = *t_exec;
  char* sync = &ex.warp_sync[2 * t.warp + (ex.warp_gen[t.warp] & 1)];
  __tsan_release(sync);
#endif
  collective(mask, syncwarp_op, "__syncwarp", nullptr, nullptr, file, line);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_acquire(sync);
#endif
  (void)t;
}

namespace {
struct ShflIn {
  const void* value;
  int mode, bytes, arg, width;
};
void shfl_op(const CollectiveContext& cc, const void* const* ins, void* const* outs) {
  for (int l = 0; l < 32; ++l) {
    if (!(cc.mask >> l & 1u)) continue;
    const ShflIn& in = *static_cast<const ShflIn*>(ins[l]);
    // PTX shfl.sync: the lane operand counts only its low 5 bits; a computed source outside the
    // range [first lane of the segment, last lane of the segment] (up: below the first, down and
    // xor: above the last) gives the lane its own value. So xor may read an earlier segment.
    const int w = in.width;
    const int seg = l & ~(w - 1);  // first lane of this lane's width-segment
    const int last = seg + w - 1;
    const int b = in.arg & 31;
    int src = l;
    switch (in.mode) {
      case 0: src = seg + (b & (w - 1)); break;
      case 1: src = l - b >= seg ? l - b : l; break;
      case 2: src = l + b <= last ? l + b : l; break;
      case 3: src = (l ^ b) <= last ? (l ^ b) : l; break;
    }
    // A source lane outside the mask is undefined on the hardware: the emulator returns poison.
    if (!(cc.mask >> src & 1u)) {
      std::memset(outs[l], kPoisonByte, static_cast<size_t>(in.bytes));
      continue;
    }
    std::memcpy(outs[l], static_cast<const ShflIn*>(ins[src])->value, static_cast<size_t>(in.bytes));
  }
}
struct BallotIn {
  int pred;
  unsigned* result;
};
void ballot_op(const CollectiveContext& cc, const void* const* ins, void* const* outs) {
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if ((cc.mask >> l & 1u) && static_cast<const BallotIn*>(ins[l])->pred) r |= 1u << l;
  for (int l = 0; l < 32; ++l)
    if (cc.mask >> l & 1u) *static_cast<unsigned*>(outs[l]) = r;
}
}  // namespace

void shfl(int mode, unsigned mask, const void* in, void* out, int bytes, int arg, int width, const char* file,
          int line) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    Thread& t = current_thread("__shfl_sync");
    (void)t;
    fault_in_fiber(cudaErrorLaunchFailure, "__shfl_*_sync at " + where(file, line) + ": width " +
                                               std::to_string(width) + " is not a power of two <= 32");
  }
  ShflIn si{in, mode, bytes, arg, width};
  collective(mask, shfl_op, "__shfl_sync", &si, out, file, line);
}

unsigned ballot(unsigned mask, int pred, const char* file, int line) {
  unsigned r = 0;
  BallotIn bi{pred, &r};
  collective(mask, ballot_op, "__ballot_sync", &bi, &r, file, line);
  return r;
}

unsigned lane_id() { return static_cast<unsigned>(current_thread("lane_id").lane); }

void** thread_slot(int i) { return &current_thread("thread_slot").slots[i]; }
void set_thread_slot_exit_hook(int i, ThreadSlotExitHook hook) { g_slot_exit_hooks[i] = hook; }

void fault(cudaError_t code, const std::string& msg) {
  current_thread("fault");
  fault_in_fiber(code, msg);
}

std::string describe_thread() { return thread_label(current_thread("describe_thread")); }

void* dynamic_shared() {
  current_thread("dynamic shared memory");
  Exec& ex = *t_exec;
  for (SharedAlloc& a : ex.shared)
    if (a.tag == nullptr) return a.ptr;
  return nullptr;
}

void* static_shared(const void* tag, size_t bytes, size_t align, const char* name) {
  current_thread("static shared memory");
  Exec& ex = *t_exec;
  for (SharedAlloc& a : ex.shared)
    if (a.tag == tag) return a.ptr;
  const size_t total = ex.static_bytes + bytes;
  if (total > kDefaultSmemPerBlock) {
    fault_in_fiber(cudaErrorInvalidValue, std::string("static shared memory of ") + std::to_string(total) +
                                              " bytes (at " + name + ") exceeds the 48 KB a block may declare");
  }
  if (ex.spec.dyn_smem > 0 && ex.spec.dyn_smem > ex.smem_limit_dyn - std::min(ex.smem_limit_dyn, total) &&
      ex.smem_limit_dyn == kDefaultSmemPerBlock) {
    fault_in_fiber(cudaErrorInvalidValue,
                   std::to_string(total) + " bytes of static plus " + std::to_string(ex.spec.dyn_smem) +
                       " bytes of dynamic shared memory exceed 48 KB without cudaFuncSetAttribute(" +
                       "cudaFuncAttributeMaxDynamicSharedMemorySize)");
  }
  if (total + ex.spec.dyn_smem > ex.smem_optin) {
    fault_in_fiber(cudaErrorInvalidValue, std::to_string(total + ex.spec.dyn_smem) +
                                              " bytes of shared memory exceed the device's " +
                                              std::to_string(ex.smem_optin) + " per block");
  }
  const uint32_t base = static_cast<uint32_t>((ex.next_static_base + align - 1) / align * align);
  uint8_t* const mem = alloc_shared(bytes);
  // The runtime's own list, grown on the calling CUDA thread's fiber: not an access of that thread.
#if defined(FASTCONV_EMU_TSAN)
  __tsan_ignore_thread_begin();
#endif
  ex.shared.push_back({tag, mem, bytes, base, name});
#if defined(FASTCONV_EMU_TSAN)
  __tsan_ignore_thread_end();
#endif
  ex.next_static_base = static_cast<uint32_t>((base + bytes + kSharedAlign - 1) / kSharedAlign * kSharedAlign);
  ex.static_bytes = total;
  return ex.shared.back().ptr;
}

unsigned shared_address(const void* p, const char* file, int line) {
  current_thread("__cvta_generic_to_shared");
  Exec& ex = *t_exec;
  const uint8_t* q = static_cast<const uint8_t*>(p);
  for (const SharedAlloc& a : ex.shared)
    if (q >= a.ptr && q <= a.ptr + a.bytes) return a.base + static_cast<uint32_t>(q - a.ptr);
  fault_in_fiber(cudaErrorLaunchFailure, "__cvta_generic_to_shared at " + where(file, line) +
                                             ": the pointer is not in this block's shared memory");
}

uint8_t* shared_pointer(uint32_t addr, size_t bytes, const char* what, const char* file, int line) {
  Thread& t = current_thread(what);
  Exec& ex = *t_exec;
  for (const SharedAlloc& a : ex.shared)
    if (addr >= a.base && addr + bytes <= a.base + a.bytes) return a.ptr + (addr - a.base);
  char b[96];
  std::snprintf(b, sizeof(b), ": shared address 0x%x (+%zu bytes) is outside the block's shared memory", addr,
                bytes);
  fault_in_fiber(cudaErrorLaunchFailure, std::string("invalid __shared__ access by ") + what + " at " +
                                             where(file, line) + " of " + thread_label(t) + b);
}

void cp_async(uint32_t dst, const void* src, int cp_size, int src_size, const char* file, int line) {
  Thread& t = current_thread("cp.async");
  Exec& ex = *t_exec;
  if ((dst % static_cast<uint32_t>(cp_size)) != 0 || (reinterpret_cast<uintptr_t>(src) % cp_size) != 0)
    fault_in_fiber(cudaErrorMisalignedAddress, "cp.async at " + where(file, line) + " of " + thread_label(t) +
                                                   ": operands not aligned to the copy size " +
                                                   std::to_string(cp_size));
  if (src_size < 0 || src_size > cp_size)
    fault_in_fiber(cudaErrorLaunchFailure, "cp.async at " + where(file, line) + ": src-size " +
                                               std::to_string(src_size) + " outside [0, " +
                                               std::to_string(cp_size) + "]");
  uint8_t* d = shared_pointer(dst, static_cast<size_t>(cp_size), "cp.async", file, line);
  if (src_size > 0 && !is_device_range(src, static_cast<size_t>(src_size)))
    fault_in_fiber(cudaErrorIllegalAddress, "cp.async at " + where(file, line) + " of " + thread_label(t) +
                                                ": global source is outside every cudaMalloc allocation");
  // Until the wait that covers it, the destination holds garbage: poison it now, so a read before
  // the wait sees NaN (and under TSan this is the write that races with readers of the old stage).
#if defined(FASTCONV_EMU_TSAN)
  __tsan_write_range(d, cp_size);
#endif
  std::memset(d, kPoisonByte, static_cast<size_t>(cp_size));
  t.cp_open.push_back({d, static_cast<const uint8_t*>(src), cp_size, src_size});
  if (ex.counting)
    ex.cp_records.push_back(
        {t.warp, t.lane, t.cp_seq, dst, reinterpret_cast<uintptr_t>(src), cp_size, src_size});
  ++t.cp_seq;
}

void cp_async_commit() {
  Thread& t = current_thread("cp.async.commit_group");
  t.cp_groups.push_back(std::move(t.cp_open));
  t.cp_open.clear();
}

void cp_async_wait(int pending) {
  Thread& t = current_thread("cp.async.wait_group");
  while (static_cast<int>(t.cp_groups.size()) > pending) {
    complete_copies(t.cp_groups.front());
    t.cp_groups.erase(t.cp_groups.begin());
  }
}

void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait(0);
}

void count_ldmatrix(const uint32_t* row_addr, int matrices) {
  Exec& ex = *t_exec;
  if (!ex.counting) return;
  for (int m = 0; m < matrices; ++m) {
    Access acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = {row_addr[8 * m + i], 16};
    ex.ctr->ldmatrix_wavefronts += wavefronts(acc, 8);
    ex.ctr->ldmatrix_ideal += 1;
  }
  ex.ctr->ldmatrix_instr += 1;
}

bool is_device_range(const void* p, size_t bytes) {
  DeviceState& d = dev();
  std::lock_guard<std::mutex> lock(d.mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = d.allocs.upper_bound(a);
  if (it == d.allocs.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second.bytes;
}

// ---- mbarrier and TMA (sm_90) ---------------------------------------------------------------------------------

namespace {

constexpr uint32_t kMbarrierBytes = 8;
constexpr uint32_t kMbarrierMaxCount = (1u << 20) - 1;  // PTX ISA: expected arrival count in [1, 2^20 - 1]
constexpr int64_t kTxCountLimit = (1 << 20) - 1;        // PTX ISA: tx-count in [-(2^20 - 1), 2^20 - 1]
constexpr uint32_t kTmaChunk = 16;                      // the swizzle permutes 16-byte chunks
constexpr uint32_t kTmaAlign = 128;                     // destination alignment without swizzle
constexpr int kTmaMaxRowBytes = 256 * 4;                // box inner extent <= 256 elements of <= 4 bytes
constexpr uint32_t kTensorMapMagic = 0x4d544346u;       // "FCTM"
constexpr uint32_t kTensorMapAlign = 64;

// The runtime's own allocations made on a CUDA thread's fiber are no access of that thread.
struct TsanIgnore {
#if defined(FASTCONV_EMU_TSAN)
  TsanIgnore() { __tsan_ignore_thread_begin(); }
  ~TsanIgnore() { __tsan_ignore_thread_end(); }
#else
  TsanIgnore() {}
  ~TsanIgnore() {}
#endif
  TsanIgnore(const TsanIgnore&) = delete;
  TsanIgnore& operator=(const TsanIgnore&) = delete;
};

// PTX ISA "Tensor swizzling modes": within each (span x 8)-byte pattern the 16-byte chunk index
// (shared-address bits [4, 4 + log2(span / 16))) is XORed with the 128-byte row index (bits [7, ...)).
// 128B: bits 4-6 ^= bits 7-9; 64B: bits 4-5 ^= bits 7-8; 32B: bit 4 ^= bit 7.
uint32_t swizzle_address(uint32_t addr, int swizzle_bytes) {
  if (swizzle_bytes == 0) return addr;
  const uint32_t mask = static_cast<uint32_t>(swizzle_bytes) / kTmaChunk - 1u;
  return addr ^ (((addr >> 7) & mask) << 4);
}

Mbarrier& mbarrier_at(uint32_t bar, const char* what, const char* file, int line) {
  Thread& t = current_thread(what);
  Exec& ex = *t_exec;
  if (bar % kMbarrierBytes != 0)
    fault_in_fiber(cudaErrorMisalignedAddress, std::string(what) + " at " + where(file, line) + " of " +
                                                   thread_label(t) + ": mbarrier address " + hex32(bar) +
                                                   " is not 8-byte aligned");
  uint8_t* p = shared_pointer(bar, kMbarrierBytes, what, file, line);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_read_range(p, kMbarrierBytes);  // ordered after the init only by a barrier, as on the hardware
#endif
  (void)p;
  auto it = ex.mbarriers.find(bar);
  if (it == ex.mbarriers.end())
    fault_in_fiber(cudaErrorLaunchFailure, std::string(what) + " at " + where(file, line) + " of " +
                                               thread_label(t) + ": mbarrier " + hex32(bar) +
                                               " is not initialised (no mbarrier.init of it in this block)");
  return it->second;
}

void check_tx(const Mbarrier& b, uint32_t bar, const char* what, const char* file, int line) {
  if (b.tx > kTxCountLimit || b.tx < -kTxCountLimit)
    fault_in_fiber(cudaErrorLaunchFailure, std::string(what) + " at " + where(file, line) + ": the tx-count of mbarrier " +
                                               hex32(bar) + " becomes " + std::to_string(b.tx) +
                                               ", outside the ISA's range [-(2^20 - 1), 2^20 - 1]");
}

// The current phase completes when no arrival is pending and the tx-count is zero: its waiters go on.
void complete_phase_if_done(Exec& ex, uint32_t bar, Mbarrier& b) {
  if (b.pending != 0 || b.tx != 0) return;
  const uint32_t done_parity = b.phase & 1u;
  ++b.phase;
  b.pending = b.count;
  for (Thread& o : ex.threads)
    if (o.state == FiberState::kMbarrier && o.mb_addr == bar && o.mb_parity == done_parity) {
      o.state = FiberState::kRunnable;
      o.mb_released = true;
    }
}

// Scatters one box row (row_bytes, a multiple of 16) to shared memory through the swizzle.
void write_row(const TmaCopy& c, uint32_t r, uint32_t row_bytes, const uint8_t* row) {
  for (uint32_t k = 0; k < row_bytes; k += kTmaChunk) {
    const uint32_t a = swizzle_address(c.dst_addr + r * row_bytes + k, c.map.swizzle_bytes);
    std::memcpy(c.dst + (a - c.dst_addr), row + k, kTmaChunk);
  }
}

// Copies elements [lo, hi) of a row from global memory (the rest of the row stays zero).
void read_span(uint8_t* row, const uint8_t* src, int64_t lo, int64_t hi, int eb) {
  if (hi <= lo) return;
  const size_t n = static_cast<size_t>(hi - lo) * static_cast<size_t>(eb);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_read_range(const_cast<uint8_t*>(src), n);
#endif
  std::memcpy(row + lo * eb, src, n);
}

// The copy lands: every box element from global memory, zero where out of bounds.
void count_tma_gmem(uint64_t bytes) {
  Exec* ex = t_exec;
  if (ex != nullptr && ex->counting) ex->ctr->tma_gmem_bytes += bytes;
}

void land_copy(const TmaCopy& c) {
  const TensorMapDesc& m = c.map;
  const int eb = m.elem_bytes;
  const uint8_t* base = reinterpret_cast<const uint8_t*>(m.base);
  uint8_t row[kTmaMaxRowBytes];
  if (!c.im2col) {
    // Tile mode: box element (j0, j1, ...) is tensor element (c0 + j0, c1 + j1·es1, ...), row-major in
    // shared memory with dim 0 innermost; elementStrides[0] is ignored (the driver's documentation).
    const uint32_t row_bytes = m.box[0] * static_cast<uint32_t>(eb);
    const uint32_t rows = c.bytes / row_bytes;
    for (uint32_t r = 0; r < rows; ++r) {
      std::memset(row, 0, row_bytes);
      bool inside = true;
      int64_t off = 0;
      uint32_t rest = r;
      for (int i = 1; i < m.rank; ++i) {
        const uint32_t n = (m.box[i] + m.elem_strides[i] - 1) / m.elem_strides[i];
        const int64_t g = int64_t(c.coords[i]) + int64_t(rest % n) * m.elem_strides[i];
        rest /= n;
        inside = inside && g >= 0 && g < int64_t(m.dims[i]);
        off += g * int64_t(m.strides[i]);
      }
      if (inside) {
        const int64_t c0 = c.coords[0];
        const int64_t lo = std::max<int64_t>(0, -c0), hi = std::min<int64_t>(m.box[0], int64_t(m.dims[0]) - c0);
        if (hi > lo) {
          read_span(row, base + off + (c0 + lo) * eb, lo, hi, eb);
          count_tma_gmem(uint64_t(hi - lo) * uint64_t(eb));
        }
      }
      write_row(c, r, row_bytes, row);
    }
    return;
  }
  // Im2col mode (dims {C, spatial..., N}): pixel j's corner is the j-th step of a row-major traversal
  // (first spatial dim fastest, then the next, then N) over the corner box [lower_s, dims_s - 1 + upper_s]
  // in steps of elementStrides[s], from the instruction's coordinates; the pixel read is the corner plus
  // the instruction's offsets, channels [c, c + channelsPerPixel), zero out of bounds (n >= N included).
  const int spatial = m.rank - 2;
  const uint32_t row_bytes = m.channels * static_cast<uint32_t>(eb);
  int64_t pos[kTensorMapMaxRank] = {};
  for (int i = 0; i < m.rank; ++i) pos[i] = c.coords[i];
  for (uint32_t j = 0; j < m.pixels; ++j) {
    std::memset(row, 0, row_bytes);
    bool inside = pos[m.rank - 1] >= 0 && pos[m.rank - 1] < int64_t(m.dims[m.rank - 1]);
    int64_t off = pos[m.rank - 1] * int64_t(m.strides[m.rank - 1]);
    for (int s = 1; s <= spatial; ++s) {
      const int64_t x = pos[s] + c.offsets[s - 1];
      inside = inside && x >= 0 && x < int64_t(m.dims[s]);
      off += x * int64_t(m.strides[s]);
    }
    if (inside) {
      const int64_t c0 = c.coords[0];
      const int64_t lo = std::max<int64_t>(0, -c0), hi = std::min<int64_t>(m.channels, int64_t(m.dims[0]) - c0);
      if (hi > lo) {
        read_span(row, base + off + (c0 + lo) * eb, lo, hi, eb);
        count_tma_gmem(uint64_t(hi - lo) * uint64_t(eb));
      }
    }
    write_row(c, j, row_bytes, row);
    for (int s = 1; s <= spatial + 1; ++s) {
      if (s == spatial + 1) {
        ++pos[m.rank - 1];
        break;
      }
      pos[s] += m.elem_strides[s];
      if (pos[s] <= int64_t(m.dims[s]) - 1 + m.upper[s - 1]) break;
      pos[s] = m.lower[s - 1];
    }
  }
}

// A thread polls a barrier whose arrivals are all in: its copies land now, on that thread's fiber (TSan:
// ordered after the issue, and before every waiter of the phase by the release).
void land_copies(Exec& ex, uint32_t bar, Mbarrier& b, const char* what, const char* file, int line) {
  std::vector<TmaCopy> copies;
  copies.swap(b.inflight);
  for (const TmaCopy& c : copies) {
#if defined(FASTCONV_EMU_TSAN)
    __tsan_acquire(&b.sync);
    __tsan_write_range(c.dst, c.footprint);
#endif
    land_copy(c);
    b.tx -= c.bytes;
#if defined(FASTCONV_EMU_TSAN)
    __tsan_release(&b.sync);
#endif
  }
  {
    TsanIgnore ignore;
    copies.clear();
    copies.shrink_to_fit();
  }
  check_tx(b, bar, what, file, line);
  complete_phase_if_done(ex, bar, b);
}

uint32_t fnv1a(const uint8_t* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

// The emulator's CUtensorMap: this record, then (in the last 4 bytes) a checksum of it.
struct PackedTensorMap {
  uint32_t magic;
  uint8_t im2col, rank, elem_bytes, swizzle_bytes;
  uint64_t base;
  uint64_t strides[kTensorMapMaxRank - 1];  // bytes, dims 1..rank-1
  uint32_t dims_minus1[kTensorMapMaxRank];  // dims are 1 .. 2^32
  uint16_t box[kTensorMapMaxRank];
  int16_t lower[kTensorMapMaxRank - 2], upper[kTensorMapMaxRank - 2];
  uint16_t channels, pixels;
  uint8_t elem_strides[kTensorMapMaxRank];
  uint8_t dtype;
};
constexpr size_t kTensorMapChecksumAt = sizeof(CUtensorMap) - sizeof(uint32_t);
static_assert(sizeof(PackedTensorMap) <= kTensorMapChecksumAt, "the packed tensor map must fit a CUtensorMap");

}  // namespace

void encode_tensor_map(CUtensorMap* map, const TensorMapDesc& d) {
  PackedTensorMap p;
  std::memset(&p, 0, sizeof(p));
  p.magic = kTensorMapMagic;
  p.im2col = d.im2col ? 1 : 0;
  p.rank = static_cast<uint8_t>(d.rank);
  p.elem_bytes = static_cast<uint8_t>(d.elem_bytes);
  p.swizzle_bytes = static_cast<uint8_t>(d.swizzle_bytes);
  p.base = d.base;
  p.dtype = static_cast<uint8_t>(d.dtype);
  for (int i = 0; i < d.rank; ++i) {
    if (i > 0) p.strides[i - 1] = d.strides[i];
    p.dims_minus1[i] = static_cast<uint32_t>(d.dims[i] - 1);
    p.box[i] = static_cast<uint16_t>(d.box[i]);
    p.elem_strides[i] = static_cast<uint8_t>(d.elem_strides[i]);
  }
  for (int s = 0; s < kTensorMapMaxRank - 2; ++s) {
    p.lower[s] = static_cast<int16_t>(d.lower[s]);
    p.upper[s] = static_cast<int16_t>(d.upper[s]);
  }
  p.channels = static_cast<uint16_t>(d.channels);
  p.pixels = static_cast<uint16_t>(d.pixels);
  uint8_t bytes[sizeof(CUtensorMap)] = {};
  std::memcpy(bytes, &p, sizeof(p));
  const uint32_t sum = fnv1a(bytes, kTensorMapChecksumAt);
  std::memcpy(bytes + kTensorMapChecksumAt, &sum, sizeof(sum));
  std::memcpy(map, bytes, sizeof(bytes));
}

bool decode_tensor_map(const CUtensorMap* map, TensorMapDesc* d) {
  uint8_t bytes[sizeof(CUtensorMap)];
  std::memcpy(bytes, map, sizeof(bytes));
  uint32_t sum;
  std::memcpy(&sum, bytes + kTensorMapChecksumAt, sizeof(sum));
  PackedTensorMap p;
  std::memcpy(&p, bytes, sizeof(p));
  if (p.magic != kTensorMapMagic || sum != fnv1a(bytes, kTensorMapChecksumAt) || p.rank < 1 ||
      p.rank > kTensorMapMaxRank || (p.elem_bytes != 1 && p.elem_bytes != 2 && p.elem_bytes != 4))
    return false;
  *d = TensorMapDesc{};
  d->im2col = p.im2col != 0;
  d->rank = p.rank;
  d->dtype = p.dtype;
  d->elem_bytes = p.elem_bytes;
  d->swizzle_bytes = p.swizzle_bytes;
  d->base = p.base;
  for (int i = 0; i < p.rank; ++i) {
    d->strides[i] = i == 0 ? p.elem_bytes : p.strides[i - 1];
    d->dims[i] = uint64_t(p.dims_minus1[i]) + 1;
    d->box[i] = p.box[i];
    d->elem_strides[i] = p.elem_strides[i];
  }
  for (int s = 0; s < kTensorMapMaxRank - 2; ++s) {
    d->lower[s] = p.lower[s];
    d->upper[s] = p.upper[s];
  }
  d->channels = p.channels;
  d->pixels = p.pixels;
  return true;
}

void mbarrier_init(uint32_t bar, uint32_t count, const char* file, int line) {
  Thread& t = current_thread("mbarrier.init");
  Exec& ex = *t_exec;
  const std::string what = "mbarrier.init at " + where(file, line) + " of " + thread_label(t);
  if (bar % kMbarrierBytes != 0)
    fault_in_fiber(cudaErrorMisalignedAddress, what + ": mbarrier address " + hex32(bar) + " is not 8-byte aligned");
  uint8_t* p = shared_pointer(bar, kMbarrierBytes, "mbarrier.init", file, line);
  if (count < 1 || count > kMbarrierMaxCount)
    fault_in_fiber(cudaErrorLaunchFailure, what + ": count " + std::to_string(count) + " outside [1, 2^20 - 1]");
  auto it = ex.mbarriers.find(bar);
  if (it != ex.mbarriers.end()) {
    for (const Thread& o : ex.threads)
      if (o.state == FiberState::kMbarrier && o.mb_addr == bar)
        fault_in_fiber(cudaErrorLaunchFailure, what + ": mbarrier " + hex32(bar) + " is re-initialised while " +
                                                   thread_label(o) + " waits on it at " + where(o.file, o.line));
    if (!it->second.inflight.empty())
      fault_in_fiber(cudaErrorLaunchFailure, what + ": mbarrier " + hex32(bar) +
                                                 " is re-initialised while a TMA copy on it (issued at " +
                                                 where(it->second.inflight.front().file, it->second.inflight.front().line) +
                                                 ") is in flight");
  }
#if defined(FASTCONV_EMU_TSAN)
  __tsan_write_range(p, kMbarrierBytes);
#endif
  (void)p;
  TsanIgnore ignore;
  Mbarrier& b = ex.mbarriers[bar];
  b.count = count;
  b.pending = count;
  b.tx = 0;
  b.phase = 0;
  b.file = file;
  b.line = line;
}

void mbarrier_arrive(uint32_t bar, bool expect_tx, uint32_t tx_bytes, const char* file, int line) {
  const char* what = expect_tx ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive";
  Thread& t = current_thread(what);
  Exec& ex = *t_exec;
  Mbarrier& b = mbarrier_at(bar, what, file, line);
  if (expect_tx && tx_bytes > uint32_t(kTxCountLimit))
    fault_in_fiber(cudaErrorLaunchFailure, std::string(what) + " at " + where(file, line) + ": expect-tx count " +
                                               std::to_string(tx_bytes) + " outside [0, 2^20 - 1]");
  // Copies that could have landed already (every arrival in): this arrival comes after them.
  if (b.pending == 0 && !b.inflight.empty()) land_copies(ex, bar, b, what, file, line);
  if (b.pending == 0)
    fault_in_fiber(cudaErrorLaunchFailure,
                   std::string(what) + " at " + where(file, line) + " of " + thread_label(t) + ": over-arrival on mbarrier " +
                       hex32(bar) + " (initialised at " + where(b.file, b.line) + "): its current phase has no pending arrival (" +
                       describe_mbarrier(ex, bar) + ")");
#if defined(FASTCONV_EMU_TSAN)
  __tsan_release(&b.sync);
#endif
  if (expect_tx) {
    b.tx += tx_bytes;
    check_tx(b, bar, what, file, line);
  }
  --b.pending;
  complete_phase_if_done(ex, bar, b);
}

bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity, const char* file, int line) {
  const char* what = "mbarrier.try_wait.parity";
  Thread& t = current_thread(what);
  Exec& ex = *t_exec;
  if (parity > 1)
    fault_in_fiber(cudaErrorLaunchFailure, std::string(what) + " at " + where(file, line) + ": phaseParity " +
                                               std::to_string(parity) + " is neither 0 nor 1");
  for (;;) {
    Mbarrier& b = mbarrier_at(bar, what, file, line);
    // The phase with parity p has completed iff the current phase's parity differs from p.
    if ((b.phase & 1u) != parity) break;
    if (b.pending == 0 && !b.inflight.empty()) {
      land_copies(ex, bar, b, what, file, line);
      continue;
    }
    t.state = FiberState::kMbarrier;
    t.mb_addr = bar;
    t.mb_parity = parity;
    t.mb_released = false;
    t.file = file;
    t.line = line;
    switch_out(ex, t, false);
    if (t.mb_released) break;
    // Resumed by the scheduler to poll (nothing else could run): look again.
  }
#if defined(FASTCONV_EMU_TSAN)
  __tsan_acquire(&ex.mbarriers.find(bar)->second.sync);
#endif
  return true;
}

void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int rank, const int32_t* coords, bool im2col,
              const uint16_t* offsets, const char* file, int line) {
  Thread& t = current_thread("cp.async.bulk.tensor");
  const std::string what = "cp.async.bulk.tensor." + std::to_string(rank) + "d." + (im2col ? "im2col" : "tile") +
                           " at " + where(file, line) + " of " + thread_label(t);
  if (reinterpret_cast<uintptr_t>(map) % kTensorMapAlign != 0)
    fault_in_fiber(cudaErrorMisalignedAddress, what + ": the tensor map's address is not 64-byte aligned");
  TensorMapDesc m;
  if (!decode_tensor_map(map, &m))
    fault_in_fiber(cudaErrorLaunchFailure,
                   what + ": the tensor map was not made by fastconv::cuda::encode_tensor_map_* (magic or checksum wrong)");
  if (m.im2col != im2col || m.rank != rank)
    fault_in_fiber(cudaErrorLaunchFailure, what + ": the tensor map is a rank-" + std::to_string(m.rank) + " " +
                                               (m.im2col ? "im2col" : "tiled") + " map");
  Mbarrier& b = mbarrier_at(bar, "cp.async.bulk.tensor", file, line);
  uint32_t row_bytes = 0, rows = 1;
  if (im2col) {
    row_bytes = m.channels * static_cast<uint32_t>(m.elem_bytes);
    rows = m.pixels;
    for (int s = 1; s <= rank - 2; ++s) {
      const int64_t lo = m.lower[s - 1], hi = int64_t(m.dims[s]) - 1 + m.upper[s - 1];
      if (coords[s] < lo || coords[s] > hi)
        fault_in_fiber(cudaErrorLaunchFailure, what + ": coordinate " + std::to_string(coords[s]) + " of dim " +
                                                   std::to_string(s) + " is outside the bounding box [" +
                                                   std::to_string(lo) + ", " + std::to_string(hi) +
                                                   "] of the tensor map's corners (emulator's rule)");
    }
  } else {
    row_bytes = m.box[0] * static_cast<uint32_t>(m.elem_bytes);
    for (int i = 1; i < rank; ++i) rows *= (m.box[i] + m.elem_strides[i] - 1) / m.elem_strides[i];
  }
  const uint32_t bytes = row_bytes * rows;
  // Destination alignment: 128 bytes; with a swizzle, the pattern's repeat (8 rows of the span).
  const uint32_t align = m.swizzle_bytes != 0 ? 8u * static_cast<uint32_t>(m.swizzle_bytes) : kTmaAlign;
  if (dst % align != 0)
    fault_in_fiber(cudaErrorMisalignedAddress, what + ": destination " + hex32(dst) + " is not " +
                                                   std::to_string(align) + "-byte aligned" +
                                                   (m.swizzle_bytes ? " (as its swizzle mode needs)" : ""));
  uint32_t footprint = 0;
  for (uint32_t k = 0; k < bytes; k += kTmaChunk)
    footprint = std::max(footprint, swizzle_address(dst + k, m.swizzle_bytes) - dst + kTmaChunk);
  uint8_t* d = shared_pointer(dst, footprint, "cp.async.bulk.tensor", file, line);
  uint64_t extent = static_cast<uint64_t>(m.elem_bytes);
  for (int i = 0; i < rank; ++i) extent += (m.dims[i] - 1) * m.strides[i];
  if (!is_device_range(reinterpret_cast<const void*>(m.base), extent))
    fault_in_fiber(cudaErrorIllegalAddress, what + ": the tensor map's global tensor (" + std::to_string(extent) +
                                                " bytes) is outside every cudaMalloc allocation");
  // Until it lands, the destination holds garbage (and under TSan this is the issuing thread's write).
#if defined(FASTCONV_EMU_TSAN)
  __tsan_write_range(d, footprint);
#endif
  for (uint32_t k = 0; k < bytes; k += kTmaChunk)
    std::memset(d + (swizzle_address(dst + k, m.swizzle_bytes) - dst), kPoisonByte, kTmaChunk);
#if defined(FASTCONV_EMU_TSAN)
  __tsan_release(&b.sync);  // the issue happens-before the landing
#endif
  Exec& ex = *t_exec;
  if (ex.counting) {
    ex.ctr->tma_instr += 1;
    ex.ctr->tma_smem_bytes += bytes;
  }
  TmaCopy c{};
  c.dst = d;
  c.dst_addr = dst;
  c.bytes = bytes;
  c.footprint = footprint;
  c.map = m;
  for (int i = 0; i < rank; ++i) c.coords[i] = coords[i];
  for (int s = 0; im2col && s < rank - 2; ++s) c.offsets[s] = offsets[s];
  c.im2col = im2col;
  c.file = file;
  c.line = line;
  c.issuer = t.linear;
  TsanIgnore ignore;
  b.inflight.push_back(c);
}

cudaError_t launch(const LaunchSpec& spec, void (*body)(void*), void* ctx) {
  DeviceState& d = dev();
  if (d.sticky != cudaSuccess) return record(d.sticky);
  if (t_exec != nullptr) {
    std::fprintf(stderr, "fastconv-emu: a kernel launched a kernel (dynamic parallelism is not emulated)\n");
    std::abort();
  }
  const dim3 g = spec.grid, b = spec.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0 || threads > kMaxThreadsPerBlock ||
      b.x > 1024 || b.y > 1024 || b.z > kMaxBlockDimZ || g.x > kMaxGridDimX || g.y > kMaxGridDimYZ ||
      g.z > kMaxGridDimYZ)
    return record(cudaErrorInvalidConfiguration);
  size_t dyn_limit = kDefaultSmemPerBlock;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    auto it = d.max_dyn_smem.find(spec.kernel);
    if (it != d.max_dyn_smem.end()) dyn_limit = static_cast<size_t>(it->second);
  }
  if (spec.dyn_smem > dyn_limit || spec.dyn_smem > d.model->smem_optin) return record(cudaErrorInvalidValue);

  Exec ex;
  ex.spec = spec;
  ex.body = body;
  ex.ctx = ctx;
  ex.smem_limit_dyn = dyn_limit;
  ex.smem_optin = d.model->smem_optin;
  ex.nthreads = static_cast<int>(threads);
  ex.nwarps = (ex.nthreads + 31) / 32;
  ex.warp_gen.assign(static_cast<size_t>(ex.nwarps), 0);
  if (d.counters_on) {
    std::lock_guard<std::mutex> lock(d.mu);
    ex.counting = true;
    ex.ctr = &d.counters[kernel_label(ex)];
    ex.ctr->launches += 1;
  }
  // Fibers: reuse this host thread's pool.
  const size_t stack = env_size("FASTCONV_EMU_STACK_KB", 256) * 1024;
  std::vector<Thread>& pool = t_pool.threads;
  while (pool.size() < threads) {
    pool.emplace_back();
    fiber_alloc(pool.back().fiber, stack);
#if defined(FASTCONV_EMU_TSAN)
    pool.back().tsan_fiber = __tsan_create_fiber(0);
#endif
  }
  ex.threads.swap(pool);
  for (int i = 0; i < ex.nthreads; ++i) {
    Thread& t = ex.threads[static_cast<size_t>(i)];
    t.linear = i;
    t.lane = i % 32;
    t.warp = i / 32;
    t.coords.thread_idx = make_uint3(i % b.x, (i / b.x) % b.y, i / (b.x * b.y));
    t.coords.block_dim = b;
    t.coords.grid_dim = g;
  }
  // Pool threads past nthreads are set aside for this launch (returned to the pool after it).
  std::vector<Thread> extra;
  if (ex.threads.size() > threads) {
    extra.assign(std::make_move_iterator(ex.threads.begin() + static_cast<long>(threads)),
                 std::make_move_iterator(ex.threads.end()));
    ex.threads.resize(threads);
  }
#if defined(FASTCONV_EMU_TSAN)
  ex.tsan_sched = __tsan_get_current_fiber();
  ex.warp_sync.assign(2 * static_cast<size_t>(ex.nwarps), 0);
  __tsan_release(&d.host_sync);
#endif
  t_exec = &ex;
  for (unsigned z = 0; z < g.z && ex.fault == cudaSuccess; ++z)
    for (unsigned y = 0; y < g.y && ex.fault == cudaSuccess; ++y)
      for (unsigned x = 0; x < g.x && ex.fault == cudaSuccess; ++x) {
        ex.block = make_uint3(x, y, z);
        run_block(ex);
      }
  t_exec = nullptr;
#if defined(FASTCONV_EMU_TSAN)
  __tsan_acquire(&d.exit_sync);
#endif
  // Give the fibers back to the pool.
  for (Thread& t : extra) ex.threads.push_back(std::move(t));
  pool.swap(ex.threads);
  if (ex.fault != cudaSuccess) {
    free_block_shared(ex);
    std::lock_guard<std::mutex> lock(d.mu);
    d.sticky = ex.fault;
    d.sticky_report = ex.report;
    if (!d.quiet) std::fprintf(stderr, "%s\n", ex.report.c_str());
    return record(ex.fault);
  }
  return cudaSuccess;
}

// ---- the emulator's own controls (runtime.h) ---------------------------------------------------------------

int device_arch() { return dev().model->arch; }
void set_device_arch(int arch) { dev().model = arch == 80 ? &kSm80 : &kSm90; }
void reset_device() {
  DeviceState& d = dev();
  std::lock_guard<std::mutex> lock(d.mu);
  d.sticky = cudaSuccess;
  d.sticky_report.clear();
  d.max_dyn_smem.clear();
  t_last_error = cudaSuccess;
}
std::string last_fault_report() {
  DeviceState& d = dev();
  std::lock_guard<std::mutex> lock(d.mu);
  return d.sticky_report;
}
void set_counters(bool on) { dev().counters_on = on; }
std::map<std::string, Counters> counters() {
  DeviceState& d = dev();
  std::lock_guard<std::mutex> lock(d.mu);
  return d.counters;
}
void clear_counters() {
  DeviceState& d = dev();
  std::lock_guard<std::mutex> lock(d.mu);
  d.counters.clear();
}
void print_counters(FILE* out) {
  for (const auto& kv : counters()) {
    const Counters& c = kv.second;
    std::fprintf(out, "%s: %" PRIu64 " launches\n", kv.first.c_str(), c.launches);
    if (c.ldmatrix_instr)
      std::fprintf(out, "  ldmatrix      %10" PRIu64 " warp instrs, %10" PRIu64 " wavefronts (ideal %" PRIu64
                        ", %.3fx)\n",
                   c.ldmatrix_instr, c.ldmatrix_wavefronts, c.ldmatrix_ideal,
                   double(c.ldmatrix_wavefronts) / double(std::max<uint64_t>(1, c.ldmatrix_ideal)));
    if (c.cp_async_instr) {
      std::fprintf(out, "  cp.async smem %10" PRIu64 " warp instrs, %10" PRIu64 " wavefronts (ideal %" PRIu64
                        ", %.3fx)\n",
                   c.cp_async_instr, c.cp_smem_wavefronts, c.cp_smem_ideal,
                   double(c.cp_smem_wavefronts) / double(std::max<uint64_t>(1, c.cp_smem_ideal)));
      std::fprintf(out, "  cp.async gmem %10" PRIu64 " sectors of 32 B (ideal %" PRIu64 ", %.3fx)\n",
                   c.cp_gmem_sectors, c.cp_gmem_ideal,
                   double(c.cp_gmem_sectors) / double(std::max<uint64_t>(1, c.cp_gmem_ideal)));
    }
    if (c.tma_instr)
      std::fprintf(out, "  tma           %10" PRIu64 " instrs, %12" PRIu64 " B to shared, %12" PRIu64
                        " B read from global\n",
                   c.tma_instr, c.tma_smem_bytes, c.tma_gmem_bytes);
  }
}

}  // namespace fc_emu

// ---- the CUDA runtime API, on host memory ---------------------------------------------------------------------

using fc_emu::dev;

namespace {
cudaError_t sticky_or(cudaError_t e) {
  const cudaError_t s = dev().sticky;
  return fc_emu::record(s != cudaSuccess ? s : e);
}
}  // namespace

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (p == nullptr) return fc_emu::record(cudaErrorInvalidValue);
  if (dev().sticky != cudaSuccess) return sticky_or(cudaSuccess);
  void* q = nullptr;
  if (posix_memalign(&q, 256, bytes == 0 ? 1 : bytes) != 0) return fc_emu::record(cudaErrorMemoryAllocation);
  std::memset(q, fc_emu::kPoisonByte, bytes);  // device memory starts as garbage, not zeros
  {
    std::lock_guard<std::mutex> lock(dev().mu);
    dev().allocs[reinterpret_cast<uintptr_t>(q)] = fc_emu::Allocation{bytes};
  }
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(dev().mu);
    auto it = dev().allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == dev().allocs.end()) return fc_emu::record(cudaErrorInvalidValue);
    dev().allocs.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (dev().sticky != cudaSuccess) return sticky_or(cudaSuccess);
  if (bytes > 0 && (dst == nullptr || src == nullptr)) return fc_emu::record(cudaErrorInvalidValue);
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (dev().sticky != cudaSuccess) return sticky_or(cudaSuccess);
  if (bytes > 0 && p == nullptr) return fc_emu::record(cudaErrorInvalidValue);
  if (bytes > 0) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) { return cudaMemset(p, value, bytes); }

cudaError_t cudaDeviceSynchronize(void) { return sticky_or(cudaSuccess); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return sticky_or(cudaSuccess); }
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  static int dummy;  // a non-null handle; every stream is the same in-order queue
  *s = reinterpret_cast<cudaStream_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaGetLastError(void) {
  const cudaError_t sticky = dev().sticky;
  const cudaError_t e = fc_emu::t_last_error;
  fc_emu::t_last_error = cudaSuccess;
  return sticky != cudaSuccess ? sticky : e;
}
cudaError_t cudaPeekAtLastError(void) {
  const cudaError_t sticky = dev().sticky;
  return sticky != cudaSuccess ? sticky : fc_emu::t_last_error;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    default: return "unknown error";
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) return fc_emu::record(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > dev().model->smem_optin) return fc_emu::record(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(dev().mu);
    dev().max_dyn_smem[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  return fc_emu::record(cudaErrorInvalidValue);
}

cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fc_emu::record(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0 || p == nullptr) return fc_emu::record(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof(*p));
  const auto* m = dev().model;
  std::snprintf(p->name, sizeof(p->name), "%s", m->name);
  p->major = m->arch / 10;
  p->minor = m->arch % 10;
  p->multiProcessorCount = m->sms;
  p->sharedMemPerBlock = fc_emu::kDefaultSmemPerBlock;
  p->sharedMemPerBlockOptin = m->smem_optin;
  p->maxThreadsPerBlock = fc_emu::kMaxThreadsPerBlock;
  p->warpSize = 32;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->totalGlobalMem = size_t(1) << 34;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fc_emu::record(cudaErrorInvalidDevice);
  const auto* m = dev().model;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = m->sms; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(m->smem_optin); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(fc_emu::kDefaultSmemPerBlock); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = m->arch / 10; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = m->arch % 10; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = fc_emu::kMaxThreadsPerBlock; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default: return fc_emu::record(cudaErrorInvalidValue);
  }
}

// Events: the emulator has no device timeline; an event records host time, so harness timings
// (which the emulated harnesses skip) would only measure the emulator.
struct CUevent_st {
  std::chrono::steady_clock::time_point t;
};
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->t = std::chrono::steady_clock::now();
  return sticky_or(cudaSuccess);
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return sticky_or(cudaSuccess); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
