// The emulated driver's state, shared by its translation units (see README.md beside this file):
//   errors.cpp   CUresult names and messages, sticky faults, the lock, the trace
//   device.cpp   the emulated device (from environment variables), cuInit, primary contexts
//   memory.cpp   allocations (NaN-filled, poisoned and quarantined when freed), copies, memsets
//   streams.cpp  streams and events: lazy queues, the seeded interleaving, hazard checks
//   graphs.cpp   stream capture, graphs and their replay
//   modules.cpp  PTX parsing, kernels and their CPU twins, cuLaunchKernel's checks and a kernel's run
//   threads.cpp  a grid's GPU threads: serially, or as fibers switched at __syncthreads
//   stubs.cpp    every other driver function: CUDA_ERROR_NOT_SUPPORTED
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda_abi.h"
#include "include/emu_builtins.h"
#include "include/emu_twin.h"

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace emu {

// ------------------------------------------------------------------------------------------ errors.cpp

// Every exported function holds this lock: one API call, and one grid, at a time.
std::recursive_mutex& api_lock();
#define EMU_LOCK std::lock_guard<std::recursive_mutex> emu_lock_guard(emu::api_lock())

// Returns `code` and keeps the message as the detail cuGetErrorString adds for that code.
CUresult fail(CUresult code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// A fault as a GPU reports one, at the next call: sticky (every later call that waits, queues or allocates
// returns it), printed to stderr with the seed at once.
void fault(CUresult code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
CUresult sticky();
// One line in the file TIEDAE_EMU_TRACE names (nothing when unset).
void trace(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ------------------------------------------------------------------------------------------ device.cpp

struct Config {
    int devices = 1;
    int sms = 10;
    int cc_major = 6, cc_minor = 1;
    int driver_version = 12020;  // as cuDriverGetVersion: 1000·major + 10·minor
    size_t total_memory = size_t(6) << 30;
    bool memory_pools = true;
    uint64_t seed = 0;
    bool interleave = true;  // TIEDAE_EMU_INTERLEAVE=0: other streams run only when waited for
    std::string trace;
};
const Config& config();
extern const char* const DEVICE_NAME;
bool initialized();
// CUDA_SUCCESS when cuInit ran and a context is current on this thread; else the error to return.
CUresult need_context();
void release_context_resources();  // the primary context's last release: drains and frees everything

// ------------------------------------------------------------------------------------------ memory.cpp

struct Allocation {
    uintptr_t base = 0;
    size_t size = 0;
    enum State { Pending, Live, Freed } state = Live;
    struct EmuStreamState* alloc_stream = nullptr;  // for Pending: the stream of cuMemAllocAsync
    uint64_t alloc_seq = 0;
    std::string freed_by;
};
// The device allocation holding `addr` (live, pending or in quarantine), or null.
Allocation* find_device(uintptr_t addr);
// Whether [p, p + n) lies inside one page-locked host allocation.
bool is_pinned(const void* p, size_t n);
void free_device(Allocation* a, const char* how);  // poison, quarantine
void free_everything();
size_t device_bytes_in_use();
// Whether [addr, addr + n) lies inside one live device allocation; else a fault message.
bool device_range_ok(uintptr_t addr, size_t n, std::string& why);
void allocation_reached(uintptr_t base);  // its cuMemAllocAsync was reached in stream order

// ------------------------------------------------------------------------------------------ streams.cpp

enum class OpKind { Kernel, Memset, CopyHtoD, CopyDtoH, CopyDtoD, Record, Wait, AllocAsync, FreeAsync };

struct KernelLaunch {
    struct EmuFunctionState* fn = nullptr;
    dim3 grid, block;
    unsigned shared_bytes = 0;
    std::vector<unsigned char> args;  // each argument at its offset, copied by the kernel's own types
};

struct Op {
    OpKind kind = OpKind::Kernel;
    uint64_t seq = 0;
    struct EmuStreamState* stream = nullptr;
    std::shared_ptr<const KernelLaunch> kernel;
    uintptr_t dst = 0, src = 0;  // device addresses, or host ones for the host side of a copy
    size_t bytes = 0;
    unsigned char value = 0;
    bool pinned = false;  // CopyHtoD: from page-locked memory, read when the copy runs
    // CopyHtoD: pageable: the bytes as they were at the call (the driver stages them); pinned: the same
    // snapshot, compared when the copy runs to catch a host write in between.
    std::shared_ptr<std::vector<unsigned char>> data;
    struct EmuEventState* event = nullptr;          // Record
    struct EmuStreamState* wait_stream = nullptr;   // Wait: the event's stream and the record's position
    uint64_t wait_seq = 0;
    const char* origin = "";  // " (graph replay)" for ops a graph launch queued
};

const char* op_name(OpKind k);

struct EmuStreamState {
    uint64_t id = 0;
    std::deque<Op> pending;
    uint64_t next_seq = 1;
    uint64_t done_seq = 0;  // every op with seq <= done_seq has run
    bool destroyed = false;
    // Capture (graphs.cpp).
    int capture_status = CAPTURE_STATUS_NONE;
    int capture_mode = CAPTURE_MODE_GLOBAL;
    std::thread::id capture_thread;
    struct EmuGraphState* capture_graph = nullptr;
};

struct EmuEventState {
    EmuStreamState* stream = nullptr;  // the last record's stream and position (null: never recorded)
    uint64_t seq = 0;
    unsigned flags = 0;
    bool captured = false;  // recorded into a capture
    double time_ms = 0;
    bool destroyed = false;
};

EmuStreamState* stream_of(CUstream s, CUresult& error);  // null, legacy and per-thread handles included
EmuEventState* event_of(CUevent e);
// Queues `op` on its stream (or records it into the stream's capture); returns the error of a refused op.
CUresult enqueue(Op& op);  // sets op.seq
void run_until(EmuStreamState* s, uint64_t seq);
void drain(EmuStreamState* s);
void drain_all();
std::vector<EmuStreamState*> all_streams();

// ------------------------------------------------------------------------------------------ graphs.cpp

struct EmuGraphState {
    std::vector<Op> nodes;
    bool destroyed = false;
};
// Capture rules: `what` (a call CUDA refuses while `s`, or any stream this thread captures in a mode that
// forbids it, is recording) invalidates the capture; returns the error to give, or CUDA_SUCCESS.
CUresult refuse_if_capturing(EmuStreamState* s, const char* what);
CUresult refuse_unsafe_call(const char* what);
// An op queued on a capturing stream: recorded into the graph, or refused (and the capture invalidated).
CUresult capture_op(EmuStreamState* s, const Op& op);

// ------------------------------------------------------------------------------------------ modules.cpp

struct EmuFunctionState {
    std::string name;
    const Twin* twin = nullptr;
    bool barriers = false;
    unsigned max_threads = 1024;
    unsigned static_shared = 0;
    std::vector<size_t> offsets;  // of each argument in a launch's blob
    size_t args_bytes = 0;
};
void execute_kernel(const Op& op);

// ------------------------------------------------------------------------------------------ threads.cpp

// The kernel being run, for messages (kernel name) and for a __syncthreads outside any fiber.
extern const char* running_kernel;

}  // namespace emu
