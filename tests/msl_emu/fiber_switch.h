// Minimal fiber switch for the emulator: saves the callee-saved registers on the current stack,
// stores the stack pointer in *from and resumes the stack `to`. glibc's swapcontext does a
// signal-mask syscall per switch (~600 ns here), which made barrier-heavy kernels crawl; this is
// ~5 ns. x86-64 (System V) and aarch64 (AAPCS64) only.
#pragma once
#include <cstddef>
#include <cstdint>

// The assembler name is given so that it is the same on ELF and on Mach-O (macOS), which would
// otherwise prefix an underscore.
extern "C" void emu_fiber_switch(void** from, void* to) __asm__("emu_fiber_switch");

#if defined(__x86_64__)
asm(R"(
.text
.globl emu_fiber_switch
.type emu_fiber_switch,@function
emu_fiber_switch:
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
.size emu_fiber_switch,.-emu_fiber_switch
)");

// A fresh stack that "returns" into entry(): control word slot, 6 registers, entry, fake return.
// With flush_subnormals the fiber's MXCSR sets FTZ and DAZ (the fast-math model).
inline void* emu_fiber_init(char* stack, size_t size, void (*entry)(), bool flush_subnormals) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                  // fake return address of entry (never used)
    *--sp = reinterpret_cast<uint64_t>(entry);  // popped by ret
    for (int i = 0; i < 6; ++i) *--sp = 0;      // rbp rbx r12-r15
    *--sp = flush_subnormals ? 0x037f00009fc0ull // mxcsr with FTZ | DAZ, x87 control word
                             : 0x037f00001f80ull; // mxcsr default, x87 control word default
    return sp;
}
#elif defined(__aarch64__)
// ELF's .type and .size directives; Mach-O (macOS, Apple's assembler) has neither.
#if defined(__APPLE__)
#define EMU_ELF_ONLY(directive) ""
#else
#define EMU_ELF_ONLY(directive) directive "\n"
#endif
asm(R"(
.text
.globl emu_fiber_switch
.p2align 2
)" EMU_ELF_ONLY(".type emu_fiber_switch,%function") R"(emu_fiber_switch:
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x2, sp
    str x2, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
)" EMU_ELF_ONLY(".size emu_fiber_switch,.-emu_fiber_switch"));

// A fresh stack whose saved x30 (link register) is entry(). FPCR is per OS thread here: the
// driver sets its flush-to-zero bit on the worker thread for the fast-math model.
inline void* emu_fiber_init(char* stack, size_t size, void (*entry)(), bool) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top - 160);
    for (int i = 0; i < 20; ++i) sp[i] = 0;
    sp[11] = reinterpret_cast<uint64_t>(entry); // x30 at offset 88
    return sp;
}
#else
#error "the MSL emulator's fiber switch supports x86-64 and aarch64 only"
#endif
