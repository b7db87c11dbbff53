// fiber.cpp — stacks and the context switch of fiber.h.
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if !defined(__x86_64__)
#error "the emulator's context switch is written for x86-64"
#endif

// fc_emu_fiber_switch(void** save /* rdi */, void* to /* rsi */): push the callee-saved registers and
// the FP control state, save rsp, load the other rsp, pop its state, return into it.
// fc_emu_fiber_start: the first "return address" of a new fiber; calls r12(r13) and never returns.
asm(R"(
  .text
  .globl fc_emu_fiber_switch
  .hidden fc_emu_fiber_switch
  .type fc_emu_fiber_switch, @function
fc_emu_fiber_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size fc_emu_fiber_switch, .-fc_emu_fiber_switch

  .globl fc_emu_fiber_start
  .hidden fc_emu_fiber_start
  .type fc_emu_fiber_start, @function
fc_emu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r13, %rdi
  callq *%r12
  ud2
  .cfi_endproc
  .size fc_emu_fiber_start, .-fc_emu_fiber_start
)");

extern "C" void fc_emu_fiber_start();

namespace fc_emu {

void fiber_alloc(Fiber& f, size_t stack_bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t size = (stack_bytes + page - 1) / page * page;
  void* m = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    std::perror("fastconv-emu: mmap of a fiber stack");
    std::abort();
  }
  mprotect(m, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
  f.map = static_cast<char*>(m);
  f.map_size = size + page;
  f.stack_lo = f.map + page;
  f.stack_size = size;
}

void fiber_free(Fiber& f) {
  if (f.map) munmap(f.map, f.map_size);
  f = Fiber{};
}

void fiber_init(Fiber& f, void (*fn)(void*), void* arg) {
  // Frame popped by fc_emu_fiber_switch, low to high: [mxcsr, fpucw] r15 r14 r13 r12 rbx rbp ret.
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack_lo + f.stack_size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 16 - 8 * 8);  // 16-aligned; rsp after ret is too
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
  sp[1] = 0;                                   // r15
  sp[2] = 0;                                   // r14
  sp[3] = reinterpret_cast<uint64_t>(arg);     // r13
  sp[4] = reinterpret_cast<uint64_t>(fn);      // r12
  sp[5] = 0;                                   // rbx
  sp[6] = 0;                                   // rbp
  sp[7] = reinterpret_cast<uint64_t>(&fc_emu_fiber_start);
  f.sp = sp;
}

}  // namespace fc_emu
