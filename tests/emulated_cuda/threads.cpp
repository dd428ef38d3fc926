// A grid's GPU threads on the CPU. Blocks run one after another. A kernel whose PTX has no barrier runs its
// threads one after another (it cannot tell); one with __syncthreads runs each thread of a block as a fiber
// on a stack of its own, switched by hand (no OS thread per GPU thread): every fiber runs to its next barrier,
// then the next one does, and once all are there (or done) they all go on. Threads waiting at different
// __syncthreads (by source line) are reported as compute-sanitizer's synccheck would; a thread that has
// finished counts as arrived, as on Volta and later.
#include <sys/mman.h>

#include <cstdio>
#include <cstring>

#include "emulator.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__)
// emu_fiber_switch(from, to): saves the callee-saved registers, the SSE and x87 control words and the stack
// pointer into *from, and resumes the context whose stack pointer is `to`. A new fiber's stack is laid out
// so that its first resumption "returns" into emu_fiber_entry with the fiber in r12 and its function in r13.
asm(R"(
    .text
    .p2align 4
    .hidden emu_fiber_switch
    .type emu_fiber_switch, @function
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
    .size emu_fiber_switch, .-emu_fiber_switch

    .p2align 4
    .hidden emu_fiber_entry
    .type emu_fiber_entry, @function
emu_fiber_entry:
    andq $-16, %rsp
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_entry, .-emu_fiber_entry
)");
extern "C" void emu_fiber_switch(void** from, void* to);
extern "C" void emu_fiber_entry();
#else
#include <ucontext.h>
#endif

namespace emu {
namespace {

constexpr size_t STACK_BYTES = 128 * 1024;  // a kernel's frames, with AddressSanitizer's redzones
constexpr size_t GUARD_BYTES = 4096;        // below each stack: an overflow faults instead of corrupting

struct Fiber {
    unsigned char* stack_lo = nullptr;  // usable stack: [stack_lo, stack_lo + STACK_BYTES)
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t context;
#endif
    uint3 tid{0, 0, 0};
    bool done = false;
    const char* wait_file = nullptr;
    int wait_line = 0;
    void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping across switches
};

std::vector<Fiber>& fiber_pool() {
    static std::vector<Fiber> pool;
    return pool;
}

// The running block's scheduler, and what the fibers run.
Fiber* running = nullptr;
#if defined(__x86_64__)
void* scheduler_sp = nullptr;
#else
ucontext_t scheduler_context;
#endif
const void* scheduler_stack_bottom = nullptr;
size_t scheduler_stack_size = 0;
void (*fiber_body)(void*) = nullptr;
void* fiber_argument = nullptr;
bool barrier_outside_fiber_reported = false;

void start_switch(void** fake_save, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
    (void)fake_save, (void)bottom, (void)size;
#endif
}
void finish_switch(void* fake_save, const void** bottom_old, size_t* size_old) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
    (void)fake_save, (void)bottom_old, (void)size_old;
#endif
}

// From a fiber back to the scheduler; `finished` lets AddressSanitizer drop the fiber's fake stack.
void yield_to_scheduler(Fiber* f, bool finished) {
    start_switch(finished ? nullptr : &f->fake_stack, scheduler_stack_bottom, scheduler_stack_size);
#if defined(__x86_64__)
    emu_fiber_switch(&f->sp, scheduler_sp);
#else
    swapcontext(&f->context, &scheduler_context);
#endif
    finish_switch(f->fake_stack, &scheduler_stack_bottom, &scheduler_stack_size);
}

extern "C" void fiber_main(Fiber* f) {
    finish_switch(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
    fiber_body(fiber_argument);
    f->done = true;
    yield_to_scheduler(f, true);
    __builtin_trap();  // a finished fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_trampoline(unsigned hi, unsigned lo) {
    fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
#endif

void prepare(Fiber& f) {
    if (f.stack_lo == nullptr) {
        void* m = mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "emulated CUDA: cannot map a fiber stack\n");
            __builtin_trap();
        }
        mprotect(m, GUARD_BYTES, PROT_NONE);
        f.stack_lo = static_cast<unsigned char*>(m) + GUARD_BYTES;
    }
    f.done = false;
    f.wait_file = nullptr;
    f.fake_stack = nullptr;
#if defined(__x86_64__)
    auto* top = reinterpret_cast<uint64_t*>(f.stack_lo + STACK_BYTES);
    uint64_t* sp = top;
    *--sp = 0;                                                  // alignment slot
    *--sp = reinterpret_cast<uint64_t>(&emu_fiber_entry);      // where the first switch returns
    *--sp = 0;                                                  // rbp
    *--sp = 0;                                                  // rbx
    *--sp = reinterpret_cast<uint64_t>(&f);                     // r12: the fiber
    *--sp = reinterpret_cast<uint64_t>(&fiber_main);           // r13: its function
    *--sp = 0;                                                  // r14
    *--sp = 0;                                                  // r15
    uint32_t control[2] = {0x1F80, 0x037F};                     // default MXCSR, x87 control word
    *--sp = 0;
    std::memcpy(sp, control, sizeof control);
    f.sp = sp;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack_lo;
    f.context.uc_stack.ss_size = STACK_BYTES;
    f.context.uc_link = nullptr;
    uintptr_t p = reinterpret_cast<uintptr_t>(&f);
    makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_trampoline), 2, unsigned(p >> 32), unsigned(p));
#endif
}

void resume(Fiber& f) {
    running = &f;
    threadIdx = f.tid;
    void* fake = nullptr;
    start_switch(&fake, f.stack_lo, STACK_BYTES);
#if defined(__x86_64__)
    emu_fiber_switch(&scheduler_sp, f.sp);
#else
    swapcontext(&scheduler_context, &f.context);
#endif
    finish_switch(fake, nullptr, nullptr);
    running = nullptr;
}

void run_block_as_fibers(unsigned threads) {
    std::vector<Fiber>& pool = fiber_pool();
    if (pool.size() < threads) pool.resize(threads);
    for (unsigned t = 0; t < threads; ++t) {
        pool[t].tid = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        prepare(pool[t]);
    }
    for (;;) {
        bool any_waiting = false;
        for (unsigned t = 0; t < threads; ++t) {
            if (!pool[t].done) resume(pool[t]);
        }
        const Fiber* first = nullptr;
        for (unsigned t = 0; t < threads; ++t) {
            const Fiber& f = pool[t];
            if (f.done) continue;
            any_waiting = true;
            if (first == nullptr) {
                first = &f;
            } else if (f.wait_line != first->wait_line || std::strcmp(f.wait_file, first->wait_file) != 0) {
                fault(CUDA_ERROR_LAUNCH_FAILED,
                      "kernel %s, block (%u, %u, %u): threads wait at different __syncthreads: thread (%u, %u, %u) "
                      "at %s:%d, thread (%u, %u, %u) at %s:%d (a barrier in divergent code)",
                      running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, first->tid.x, first->tid.y, first->tid.z,
                      first->wait_file, first->wait_line, f.tid.x, f.tid.y, f.tid.z, f.wait_file, f.wait_line);
                break;
            }
        }
        if (!any_waiting) return;
    }
}

#if defined(__SANITIZE_ADDRESS__)
// After AddressSanitizer's report (and before it stops the process): which kernel, block and thread.
void after_asan_report(const char*) {
    if (running_kernel == nullptr) return;
    std::fprintf(stderr,
                 "emulated CUDA: while running kernel %s, block (%u, %u, %u), thread (%u, %u, %u) "
                 "[TIEDAE_EMU_SEED=%llu replays this run's interleaving]\n",
                 running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z,
                 (unsigned long long)config().seed);
}
__attribute__((constructor)) void install_asan_callback() { __asan_set_error_report_callback(&after_asan_report); }
#endif

}  // namespace

void run_grid(void (*thread)(void*), void* context, bool fibers) {
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    fiber_body = thread;
    fiber_argument = context;
    for (unsigned bz = 0; bz < gridDim.z; ++bz) {
        for (unsigned by = 0; by < gridDim.y; ++by) {
            for (unsigned bx = 0; bx < gridDim.x; ++bx) {
                blockIdx = uint3{bx, by, bz};
                if (fibers) {
                    run_block_as_fibers(threads);
                } else {
                    for (unsigned t = 0; t < threads; ++t) {
                        threadIdx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
                        thread(context);
                    }
                }
            }
        }
    }
}

}  // namespace emu

void emu_syncthreads(const char* file, int line) {
    using namespace emu;
    if (running == nullptr) {
        // The PTX of this kernel has no barrier, so its threads run one by one: a __syncthreads here means
        // the PTX and the source disagree.
        if (!barrier_outside_fiber_reported) {
            barrier_outside_fiber_reported = true;
            fault(CUDA_ERROR_LAUNCH_FAILED, "kernel %s reached __syncthreads at %s:%d, but its PTX has no barrier",
                  running_kernel ? running_kernel : "?", file, line);
        }
        return;
    }
    Fiber* f = running;
    f->wait_file = file;
    f->wait_line = line;
    yield_to_scheduler(f, false);
    threadIdx = f->tid;
}
