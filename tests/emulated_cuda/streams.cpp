// Streams and events. Work queued on a stream runs lazily: only when something forces it (a synchronize on
// the stream or on one of its events, a copy to pageable memory, a free that waits, a wait by another stream
// whose own queue is being run). While a queue runs, another stream's runnable work may run in between, in an
// order drawn from TIEDAE_EMU_SEED: independent streams interleave as CUDA allows, late and early.
//
// Every op that runs is checked against the work still queued on other streams that no event orders after
// it (the hazards a missing cuStreamWaitEvent leaves):
//   - a kernel given a pointer into a range that such a copy or memset will write, or writing through a
//     pointer into a range such a copy will read, and the other way round;
//   - two copies or memsets touching the same bytes, one of them writing;
//   - a copy from page-locked host memory whose bytes the host changed between queuing it and its running
//     (a staging buffer refilled too early).
// Under AddressSanitizer the ranges such copies will write are also poisoned while a kernel runs, so that a
// read through any pointer (not only an argument's first element) is reported with the kernel's stack.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>

#include "emulator.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace emu {
namespace {

// Stream 0 is the legacy (null) stream; the others are numbered in creation order, never reused.
std::vector<std::unique_ptr<EmuStreamState>>& streams() {
    static std::vector<std::unique_ptr<EmuStreamState>> v = [] {
        std::vector<std::unique_ptr<EmuStreamState>> first;
        first.push_back(std::make_unique<EmuStreamState>());
        return first;
    }();
    return v;
}
std::set<const void*>& live_streams() {
    static std::set<const void*> s;
    return s;
}
std::vector<std::unique_ptr<EmuEventState>>& events() {
    static std::vector<std::unique_ptr<EmuEventState>> v;
    return v;
}
std::set<const void*>& live_events() {
    static std::set<const void*> s;
    return s;
}

EmuStreamState* new_stream() {
    streams().push_back(std::make_unique<EmuStreamState>());
    EmuStreamState* s = streams().back().get();
    s->id = streams().size() - 1;
    return s;
}

EmuStreamState* legacy() { return streams()[0].get(); }

std::mt19937_64& rng() {
    static std::mt19937_64 r(config().seed);
    return r;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

struct Range {
    uintptr_t begin, end;
    bool write;
};

// The device bytes a copy, memset or free touches.
std::vector<Range> ranges_of(const Op& op) {
    switch (op.kind) {
        case OpKind::Memset:
        case OpKind::CopyHtoD:
        case OpKind::FreeAsync:
            return {{op.dst, op.dst + op.bytes, true}};
        case OpKind::CopyDtoH:
            return {{op.src, op.src + op.bytes, false}};
        case OpKind::CopyDtoD:
            return {{op.src, op.src + op.bytes, false}, {op.dst, op.dst + op.bytes, true}};
        default:
            return {};
    }
}

// A kernel's pointer arguments: (value, name, writable).
struct PointerArg {
    uintptr_t value;
    std::string name;
    bool writable;
};
std::vector<PointerArg> pointer_args(const Op& op) {
    std::vector<PointerArg> out;
    const EmuFunctionState* f = op.kernel->fn;
    for (size_t i = 0; i < f->twin->params.size(); ++i) {
        const ParamType& p = f->twin->params[i];
        if (!p.pointer) continue;
        uintptr_t v = 0;
        std::memcpy(&v, op.kernel->args.data() + f->offsets[i], sizeof v);
        if (v == 0) continue;
        out.push_back({v, i < f->twin->param_names.size() ? f->twin->param_names[i] : "#" + std::to_string(i), p.writable});
    }
    return out;
}

std::string describe(const Op& op) {
    char buf[160];
    if (op.kind == OpKind::Kernel) {
        std::snprintf(buf, sizeof buf, "kernel %s (stream %llu, #%llu%s)", op.kernel->fn->name.c_str(),
                      (unsigned long long)op.stream->id, (unsigned long long)op.seq, op.origin);
    } else {
        std::snprintf(buf, sizeof buf, "%s (stream %llu, #%llu%s)", op_name(op.kind), (unsigned long long)op.stream->id,
                      (unsigned long long)op.seq, op.origin);
    }
    return buf;
}

std::string range_text(const Range& r) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "[0x%llx, +%llu)", (unsigned long long)r.begin,
                  (unsigned long long)(r.end - r.begin));
    return buf;
}

// Whether `x` (stream a, position xs) happens before the op at position ys of stream b, through the waits
// still queued on b (a wait that already ran would have run x first).
bool happens_before(const EmuStreamState* a, uint64_t xs, const EmuStreamState* b, uint64_t ys, int depth) {
    if (a == b) return xs < ys;
    if (depth > 16) return false;
    for (const Op& w : b->pending) {
        if (w.seq >= ys) break;
        if (w.kind == OpKind::Wait && happens_before(a, xs, w.wait_stream, w.wait_seq + 1, depth + 1)) return true;
    }
    return false;
}

// What makes `x` (running now) and `y` (queued, unordered with x) a hazard, or "".
std::string conflict(const Op& x, const Op& y) {
    if (x.kind == OpKind::Kernel && y.kind == OpKind::Kernel) return "";  // their extents are unknown
    if (x.kind == OpKind::Kernel || y.kind == OpKind::Kernel) {
        const Op& k = x.kind == OpKind::Kernel ? x : y;
        const Op& other = x.kind == OpKind::Kernel ? y : x;
        for (const Range& r : ranges_of(other)) {
            for (const PointerArg& p : pointer_args(k)) {
                if (p.value >= r.begin && p.value < r.end && (r.write || p.writable)) {
                    return "kernel " + k.kernel->fn->name + "'s argument " + p.name + " points into " + range_text(r) +
                           ", which the " + op_name(other.kind) + (r.write ? " writes" : " reads");
                }
            }
        }
        return "";
    }
    for (const Range& rx : ranges_of(x)) {
        for (const Range& ry : ranges_of(y)) {
            if (rx.begin < ry.end && ry.begin < rx.end && (rx.write || ry.write)) {
                return std::string("both touch ") + range_text(rx.begin < ry.begin ? ry : rx);
            }
        }
    }
    return "";
}

void check_hazards(const Op& x) {
    for (auto& b : streams()) {
        if (b.get() == x.stream) continue;
        for (const Op& y : b->pending) {
            if (y.kind == OpKind::Wait && happens_before(x.stream, x.seq, y.wait_stream, y.wait_seq + 1, 0)) {
                break;  // everything after this wait is ordered after x
            }
            std::string why = conflict(x, y);
            if (!why.empty()) {
                fault(CUDA_ERROR_LAUNCH_FAILED,
                      "hazard: %s runs while %s is still queued and no event orders the two: %s; the later one's "
                      "stream must wait (cuStreamWaitEvent) for an event recorded after the earlier one",
                      describe(x).c_str(), describe(y).c_str(), why.c_str());
                return;
            }
        }
    }
}

// Under AddressSanitizer: the device ranges that unordered queued work will write, poisoned while a kernel
// runs.
std::vector<Range> poison_unordered_writes(const Op& x) {
    std::vector<Range> poisoned;
#if defined(__SANITIZE_ADDRESS__)
    for (auto& b : streams()) {
        if (b.get() == x.stream) continue;
        for (const Op& y : b->pending) {
            if (y.kind == OpKind::Wait && happens_before(x.stream, x.seq, y.wait_stream, y.wait_seq + 1, 0)) break;
            if (y.kind == OpKind::FreeAsync) continue;
            for (const Range& r : ranges_of(y)) {
                std::string why;
                if (r.write && device_range_ok(r.begin, r.end - r.begin, why)) {
                    __asan_poison_memory_region(reinterpret_cast<void*>(r.begin), r.end - r.begin);
                    poisoned.push_back(r);
                }
            }
        }
    }
#else
    (void)x;
#endif
    return poisoned;
}

void unpoison(const std::vector<Range>& ranges) {
#if defined(__SANITIZE_ADDRESS__)
    for (const Range& r : ranges) __asan_unpoison_memory_region(reinterpret_cast<void*>(r.begin), r.end - r.begin);
#else
    (void)ranges;
#endif
}

void check_range(const Op& op, uintptr_t addr, size_t n) {
    std::string why;
    if (!device_range_ok(addr, n, why)) fault(CUDA_ERROR_ILLEGAL_ADDRESS, "%s: %s", describe(op).c_str(), why.c_str());
}

void execute(const Op& op) {
    if (op.kind != OpKind::Record && op.kind != OpKind::Wait) {
        trace("run %s", describe(op).c_str());
    }
    // After a fault the context is lost, as on a GPU: queued work only drains.
    if (sticky() != CUDA_SUCCESS && op.kind != OpKind::FreeAsync && op.kind != OpKind::Record) return;
    check_hazards(op);
    if (sticky() != CUDA_SUCCESS && op.kind != OpKind::FreeAsync && op.kind != OpKind::Record) return;
    switch (op.kind) {
        case OpKind::Kernel: {
            std::vector<Range> poisoned = poison_unordered_writes(op);
            execute_kernel(op);
            unpoison(poisoned);
            break;
        }
        case OpKind::Memset:
            check_range(op, op.dst, op.bytes);
            if (sticky() == CUDA_SUCCESS) std::memset(reinterpret_cast<void*>(op.dst), op.value, op.bytes);
            break;
        case OpKind::CopyHtoD: {
            check_range(op, op.dst, op.bytes);
            const void* from = op.data->data();
            if (op.pinned) {
                // The DMA engine reads the page-locked buffer now, whatever the host wrote there since.
                from = reinterpret_cast<const void*>(op.src);
                if (std::memcmp(from, op.data->data(), op.bytes) != 0) {
                    fault(CUDA_ERROR_LAUNCH_FAILED,
                          "hazard: the host wrote page-locked buffer [0x%llx, +%zu) after %s was queued to copy "
                          "it and before the copy ran; refill a staging buffer only after an event recorded after "
                          "its last copy has completed",
                          (unsigned long long)op.src, op.bytes, describe(op).c_str());
                }
            }
            if (sticky() == CUDA_SUCCESS) std::memcpy(reinterpret_cast<void*>(op.dst), from, op.bytes);
            break;
        }
        case OpKind::CopyDtoH:
            check_range(op, op.src, op.bytes);
            if (sticky() == CUDA_SUCCESS) {
                std::memcpy(reinterpret_cast<void*>(op.dst), reinterpret_cast<const void*>(op.src), op.bytes);
            }
            break;
        case OpKind::CopyDtoD:
            check_range(op, op.src, op.bytes);
            check_range(op, op.dst, op.bytes);
            if (sticky() == CUDA_SUCCESS) {
                std::memmove(reinterpret_cast<void*>(op.dst), reinterpret_cast<const void*>(op.src), op.bytes);
            }
            break;
        case OpKind::Record:
            if (op.event->stream == op.stream && op.event->seq == op.seq) op.event->time_ms = now_ms();
            break;
        case OpKind::Wait:
            break;
        case OpKind::AllocAsync:
            allocation_reached(op.dst);
            break;
        case OpKind::FreeAsync: {
            Allocation* a = find_device(op.dst);
            if (a == nullptr || a->base != op.dst) break;  // evicted from the quarantine long ago
            if (a->state == Allocation::Freed) {
                fault(CUDA_ERROR_ILLEGAL_ADDRESS, "%s frees 0x%llx a second time (it was freed by %s)",
                      describe(op).c_str(), (unsigned long long)op.dst, a->freed_by.c_str());
                break;
            }
            std::string how = "cuMemFreeAsync on stream " + std::to_string(op.stream->id);
            free_device(a, how.c_str());
            break;
        }
    }
}

bool runnable(const EmuStreamState* s) {
    if (s->pending.empty()) return false;
    const Op& head = s->pending.front();
    return head.kind != OpKind::Wait || head.wait_stream->done_seq >= head.wait_seq;
}

void step(EmuStreamState* s);

// One time in four, one runnable op of another stream runs first.
void maybe_interleave(EmuStreamState* target) {
    if (!config().interleave || rng()() % 4 != 0) return;
    std::vector<EmuStreamState*> others;
    for (auto& s : streams()) {
        if (s.get() != target && runnable(s.get())) others.push_back(s.get());
    }
    if (others.empty()) return;
    step(others[rng()() % others.size()]);
}

// Runs the head of `s`'s queue, after what its wait waits for.
void step(EmuStreamState* s) {
    const Op& head = s->pending.front();
    if (head.kind == OpKind::Wait && head.wait_stream->done_seq < head.wait_seq) {
        run_until(head.wait_stream, head.wait_seq);
        return;
    }
    Op op = std::move(s->pending.front());
    s->pending.pop_front();
    execute(op);
    s->done_seq = op.seq;
}

}  // namespace

const char* op_name(OpKind k) {
    switch (k) {
        case OpKind::Kernel: return "kernel";
        case OpKind::Memset: return "memset";
        case OpKind::CopyHtoD: return "host-to-device copy";
        case OpKind::CopyDtoH: return "device-to-host copy";
        case OpKind::CopyDtoD: return "device-to-device copy";
        case OpKind::Record: return "event record";
        case OpKind::Wait: return "event wait";
        case OpKind::AllocAsync: return "stream-ordered allocation";
        case OpKind::FreeAsync: return "stream-ordered free";
    }
    return "op";
}

EmuStreamState* stream_of(CUstream handle, CUresult& error) {
    uintptr_t h = reinterpret_cast<uintptr_t>(handle);
    if (h == 0 || h == 1 || h == 2) return legacy();  // null, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD
    if (live_streams().count(handle) == 0) {
        error = fail(CUDA_ERROR_INVALID_HANDLE, "stream %p is not a live stream of this driver", (void*)handle);
        return nullptr;
    }
    return reinterpret_cast<EmuStreamState*>(handle);
}

EmuEventState* event_of(CUevent e) {
    return live_events().count(e) ? reinterpret_cast<EmuEventState*>(e) : nullptr;
}

CUresult enqueue(Op& op) {
    EmuStreamState* s = op.stream;
    if (s->capture_status != CAPTURE_STATUS_NONE) return capture_op(s, op);
    op.seq = s->next_seq++;
    if (op.kind == OpKind::Kernel) {
        trace("queue kernel %s grid=(%u,%u,%u) block=(%u,%u,%u) stream=%llu #%llu%s", op.kernel->fn->name.c_str(),
              op.kernel->grid.x, op.kernel->grid.y, op.kernel->grid.z, op.kernel->block.x, op.kernel->block.y,
              op.kernel->block.z, (unsigned long long)s->id, (unsigned long long)op.seq, op.origin);
    }
    s->pending.push_back(op);
    return CUDA_SUCCESS;
}

void run_until(EmuStreamState* s, uint64_t seq) {
    while (s->done_seq < seq && !s->pending.empty()) {
        maybe_interleave(s);
        if (s->done_seq < seq && !s->pending.empty()) step(s);
    }
}

void drain(EmuStreamState* s) { run_until(s, s->next_seq - 1); }

void drain_all() {
    for (bool more = true; more;) {
        more = false;
        for (size_t i = 0; i < streams().size(); ++i) {
            EmuStreamState* s = streams()[i].get();
            if (!s->pending.empty()) {
                drain(s);
                more = true;
            }
        }
    }
}

std::vector<EmuStreamState*> all_streams() {
    std::vector<EmuStreamState*> v;
    for (auto& s : streams()) v.push_back(s.get());
    return v;
}

void release_context_resources() {
    drain_all();
    free_everything();
}

}  // namespace emu

using namespace emu;

EMU_EXPORT CUresult cuStreamCreate(CUstream* out, unsigned int flags) {
    EMU_LOCK;
    (void)flags;  // blocking or not: the legacy stream never synchronizes with others here
    if (CUresult e = need_context()) return e;
    if (out == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: null pointer");
    EmuStreamState* s = new_stream();
    live_streams().insert(s);
    *out = reinterpret_cast<CUstream>(s);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamCreateWithPriority(CUstream* out, unsigned int flags, int priority) {
    (void)priority;
    return cuStreamCreate(out, flags);
}

// The stream's queued work still runs (when something forces it, or at the context's release), as CUDA
// lets it complete after cuStreamDestroy returns.
EMU_EXPORT CUresult cuStreamDestroy_v2(CUstream handle) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (live_streams().erase(handle) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: not a live stream");
    reinterpret_cast<EmuStreamState*>(handle)->destroyed = true;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamSynchronize(CUstream handle) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (CUresult e = refuse_if_capturing(s, "cuStreamSynchronize")) return e;
    drain(s);
    return sticky();
}

// Runs one op per call rather than reporting NOT_READY forever: nothing else would make the queue move.
EMU_EXPORT CUresult cuStreamQuery(CUstream handle) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (CUresult e = refuse_if_capturing(s, "cuStreamQuery")) return e;
    if (!s->pending.empty()) step(s);
    if (CUresult e = sticky()) return e;
    return s->pending.empty() ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EMU_EXPORT CUresult cuStreamWaitEvent(CUstream handle, CUevent hevent, unsigned int flags) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    EmuEventState* ev = event_of(hevent);
    if (ev == nullptr) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: not a live event");
    if (flags != 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamWaitEvent flags %u", flags);
    if (ev->captured) {
        // Joining a capture from another stream (a fork) is how CUDA builds multi-stream graphs: not emulated.
        return fail(CUDA_ERROR_NOT_SUPPORTED, "waiting for an event recorded into a capture (multi-stream capture "
                                              "is not emulated)");
    }
    if (s->capture_status != CAPTURE_STATUS_NONE) {
        if (ev->stream != nullptr) {
            s->capture_status = CAPTURE_STATUS_INVALIDATED;
            return fail(CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                        "stream %llu, capturing, waits for an event recorded outside the capture",
                        (unsigned long long)s->id);
        }
        return CUDA_SUCCESS;
    }
    if (ev->stream == nullptr) return CUDA_SUCCESS;  // never recorded: nothing to wait for
    Op op;
    op.kind = OpKind::Wait;
    op.stream = s;
    op.wait_stream = ev->stream;
    op.wait_seq = ev->seq;
    if (CUresult e = enqueue(op)) return e;
    return sticky();
}

EMU_EXPORT CUresult cuEventCreate(CUevent* out, unsigned int flags) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (out == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: null pointer");
    events().push_back(std::make_unique<EmuEventState>());
    EmuEventState* ev = events().back().get();
    ev->flags = flags;
    live_events().insert(ev);
    *out = reinterpret_cast<CUevent>(ev);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    EMU_LOCK;
    if (live_events().erase(e) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: not a live event");
    reinterpret_cast<EmuEventState*>(e)->destroyed = true;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuEventRecord(CUevent hevent, CUstream handle) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    EmuEventState* ev = event_of(hevent);
    if (ev == nullptr) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: not a live event");
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (s->capture_status != CAPTURE_STATUS_NONE) {
        ev->captured = true;  // a point inside the capture: only other captured work may wait for it
        ev->stream = nullptr;
        return CUDA_SUCCESS;
    }
    Op op;
    op.kind = OpKind::Record;
    op.stream = s;
    op.event = ev;
    if (CUresult e = enqueue(op)) return e;
    ev->stream = s;
    ev->seq = op.seq;
    ev->captured = false;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuEventSynchronize(CUevent hevent) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    EmuEventState* ev = event_of(hevent);
    if (ev == nullptr) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventSynchronize: not a live event");
    if (ev->captured) return fail(CUDA_ERROR_CAPTURED_EVENT, "cuEventSynchronize on an event recorded into a capture");
    if (CUresult e = refuse_unsafe_call("cuEventSynchronize")) return e;
    if (ev->stream != nullptr) run_until(ev->stream, ev->seq);
    return sticky();
}

EMU_EXPORT CUresult cuEventQuery(CUevent hevent) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    EmuEventState* ev = event_of(hevent);
    if (ev == nullptr) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventQuery: not a live event");
    if (ev->captured) return fail(CUDA_ERROR_CAPTURED_EVENT, "cuEventQuery on an event recorded into a capture");
    if (ev->stream == nullptr || ev->stream->done_seq >= ev->seq) return sticky();
    step(ev->stream);
    if (CUresult e = sticky()) return e;
    return ev->stream->done_seq >= ev->seq ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

// The host time between the two records' running: meaningless for speed (the device is the CPU).
EMU_EXPORT CUresult cuEventElapsedTime(float* ms, CUevent hstart, CUevent hend) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    EmuEventState* a = event_of(hstart);
    EmuEventState* b = event_of(hend);
    if (ms == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventElapsedTime: null pointer");
    if (a == nullptr || b == nullptr || a->stream == nullptr || b->stream == nullptr ||
        (a->flags & EVENT_DISABLE_TIMING) || (b->flags & EVENT_DISABLE_TIMING)) {
        return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime needs two recorded events with timing");
    }
    if (a->stream->done_seq < a->seq || b->stream->done_seq < b->seq) return CUDA_ERROR_NOT_READY;
    *ms = float(b->time_ms - a->time_ms);
    return CUDA_SUCCESS;
}
