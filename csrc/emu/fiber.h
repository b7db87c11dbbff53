// fiber.h — the emulator's cooperative fibers: one stack per emulated CUDA thread and a minimal
// context switch (callee-saved registers, MXCSR and the x87 control word; x86-64 SysV), so a switch
// costs a few nanoseconds and no system call (swapcontext saves the signal mask with one).
#pragma once

#include <cstddef>

namespace fc_emu {

struct Fiber {
  void* sp = nullptr;          // saved stack pointer while switched out
  char* stack_lo = nullptr;    // usable stack [stack_lo, stack_lo + stack_size)
  size_t stack_size = 0;
  char* map = nullptr;         // the mapping, a PROT_NONE guard page below the stack
  size_t map_size = 0;
};

void fiber_alloc(Fiber& f, size_t stack_bytes);
void fiber_free(Fiber& f);
// Prepares f to start fn(arg) on its next switch-in; fn must never return.
void fiber_init(Fiber& f, void (*fn)(void*), void* arg);
// Saves the running context's stack pointer in *save and resumes the context whose stack pointer is `to`.
extern "C" void fc_emu_fiber_switch(void** save, void* to);
inline void fiber_switch(void** save, void* to) { fc_emu_fiber_switch(save, to); }

}  // namespace fc_emu
