// Device and page-locked host memory. A device address is the address of host memory (so AddressSanitizer
// sees every kernel access); fresh memory is filled with 0xFF bytes (a NaN as f32, f64, f16 and bf16, and
// an index past any row as u32), so that a read of memory nothing wrote shows up as compute-sanitizer's
// initcheck would show it; freed memory is filled again, poisoned for AddressSanitizer and kept in a
// quarantine, so that a stale pointer is an illegal address instead of someone else's data.
#include <cstdlib>
#include <cstring>

#include "emulator.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EMU_POISON(p, n) __asan_poison_memory_region((p), (n))
#define EMU_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define EMU_POISON(p, n) ((void)(p), (void)(n))
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace emu {
namespace {

constexpr unsigned char FRESH = 0xFF;
constexpr size_t QUARANTINE_BYTES = size_t(256) << 20;

std::map<uintptr_t, Allocation>& device_allocs() {
    static std::map<uintptr_t, Allocation> m;
    return m;
}
std::map<uintptr_t, Allocation>& host_allocs() {
    static std::map<uintptr_t, Allocation> m;
    return m;
}
std::deque<std::pair<bool, uintptr_t>>& quarantine() {  // (host?, base), oldest first
    static std::deque<std::pair<bool, uintptr_t>> q;
    return q;
}
size_t quarantined = 0;
size_t in_use = 0;

Allocation* containing(std::map<uintptr_t, Allocation>& m, uintptr_t addr) {
    auto it = m.upper_bound(addr);
    if (it == m.begin()) return nullptr;
    --it;
    Allocation& a = it->second;
    return addr < a.base + a.size ? &a : nullptr;
}

void* raw_alloc(size_t bytes, size_t align) {
    void* p = nullptr;
    if (posix_memalign(&p, align, bytes) != 0) return nullptr;
    std::memset(p, FRESH, bytes);
    return p;
}

void evict_quarantine() {
    while (quarantined > QUARANTINE_BYTES && !quarantine().empty()) {
        auto [host, base] = quarantine().front();
        quarantine().pop_front();
        auto& m = host ? host_allocs() : device_allocs();
        auto it = m.find(base);
        if (it == m.end()) continue;
        quarantined -= it->second.size;
        EMU_UNPOISON(reinterpret_cast<void*>(base), it->second.size);
        std::free(reinterpret_cast<void*>(base));
        m.erase(it);
    }
}

void retire(Allocation& a, bool host, const char* how) {
    std::memset(reinterpret_cast<void*>(a.base), FRESH, a.size);
    EMU_POISON(reinterpret_cast<void*>(a.base), a.size);
    a.state = Allocation::Freed;
    a.freed_by = how;
    quarantine().emplace_back(host, a.base);
    quarantined += a.size;
    evict_quarantine();
}

CUresult new_device_allocation(CUdeviceptr* dptr, size_t bytes, Allocation::State state, const char* api) {
    if (dptr == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "%s: null pointer", api);
    if (bytes == 0) return fail(CUDA_ERROR_INVALID_VALUE, "%s of 0 bytes", api);
    if (bytes > config().total_memory - std::min(in_use, config().total_memory)) {
        return fail(CUDA_ERROR_OUT_OF_MEMORY, "%s of %zu bytes: %zu of %zu bytes are in use", api, bytes, in_use,
                    config().total_memory);
    }
    void* p = raw_alloc(bytes, 256);
    if (p == nullptr) return fail(CUDA_ERROR_OUT_OF_MEMORY, "%s of %zu bytes: the host is out of memory", api, bytes);
    Allocation a;
    a.base = reinterpret_cast<uintptr_t>(p);
    a.size = bytes;
    a.state = state;
    device_allocs()[a.base] = a;
    in_use += bytes;
    *dptr = a.base;
    return CUDA_SUCCESS;
}

// The allocation that starts at `ptr` and is not freed yet, or an error for the caller to return.
CUresult allocation_at(uintptr_t ptr, const char* api, Allocation*& out) {
    Allocation* a = find_device(ptr);
    if (a == nullptr || a->base != ptr) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s(0x%llx): not the start of a device allocation", api,
                    (unsigned long long)ptr);
    }
    if (a->state == Allocation::Freed) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s(0x%llx): already freed by %s", api, (unsigned long long)ptr,
                    a->freed_by.c_str());
    }
    out = a;
    return CUDA_SUCCESS;
}

// The checks a queued copy or memset gets when it is queued: its device range inside one allocation.
CUresult check_device_range(uintptr_t addr, size_t n, const char* api) {
    Allocation* a = find_device(addr);
    if (a == nullptr || a->state == Allocation::Freed || addr + n > a->base + a->size) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: [0x%llx, +%zu) is not inside a device allocation%s", api,
                    (unsigned long long)addr, n,
                    a != nullptr && a->state == Allocation::Freed ? " (it was freed)" : "");
    }
    return CUDA_SUCCESS;
}

CUresult queue_copy(OpKind kind, uintptr_t dst, uintptr_t src, size_t n, CUstream hstream, const char* api) {
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(hstream, err);
    if (s == nullptr) return err;
    if (n == 0) return CUDA_SUCCESS;
    Op op;
    op.kind = kind;
    op.stream = s;
    op.dst = dst;
    op.src = src;
    op.bytes = n;
    bool blocking = false;
    switch (kind) {
        case OpKind::CopyHtoD: {
            if (CUresult e = check_device_range(dst, n, api)) return e;
            if (src == 0) return fail(CUDA_ERROR_INVALID_VALUE, "%s: null host pointer", api);
            op.pinned = is_pinned(reinterpret_cast<const void*>(src), n);
            if (!op.pinned) {
                if (CUresult e = refuse_if_capturing(s, "a copy from pageable host memory")) return e;
            }
            const auto* p = reinterpret_cast<const unsigned char*>(src);
            op.data = std::make_shared<std::vector<unsigned char>>(p, p + n);
            break;
        }
        case OpKind::CopyDtoH:
            if (CUresult e = check_device_range(src, n, api)) return e;
            if (dst == 0) return fail(CUDA_ERROR_INVALID_VALUE, "%s: null host pointer", api);
            op.pinned = is_pinned(reinterpret_cast<const void*>(dst), n);
            if (!op.pinned) {
                if (CUresult e = refuse_if_capturing(s, "a copy to pageable host memory")) return e;
                blocking = true;  // returns once the copy is done (the driver's rule for pageable memory)
            }
            break;
        default:
            if (CUresult e = check_device_range(src, n, api)) return e;
            if (CUresult e = check_device_range(dst, n, api)) return e;
            break;
    }
    if (CUresult e = enqueue(op)) return e;
    if (blocking) run_until(s, op.seq);
    return sticky();
}

// The synchronous copies and memsets: queued on the legacy stream, then everything is waited for.
CUresult synchronous(CUresult queued) {
    if (queued != CUDA_SUCCESS) return queued;
    drain_all();
    return sticky();
}

}  // namespace

Allocation* find_device(uintptr_t addr) { return containing(device_allocs(), addr); }

bool is_pinned(const void* p, size_t n) {
    uintptr_t addr = reinterpret_cast<uintptr_t>(p);
    Allocation* a = containing(host_allocs(), addr);
    return a != nullptr && a->state != Allocation::Freed && addr + n <= a->base + a->size;
}

void free_device(Allocation* a, const char* how) {
    if (a->state != Allocation::Freed) in_use -= a->size;
    retire(*a, false, how);
}

size_t device_bytes_in_use() { return in_use; }

bool device_range_ok(uintptr_t addr, size_t n, std::string& why) {
    Allocation* a = find_device(addr);
    char buf[256];
    if (a == nullptr) {
        std::snprintf(buf, sizeof buf, "0x%llx is not inside any device allocation", (unsigned long long)addr);
    } else if (a->state == Allocation::Freed) {
        std::snprintf(buf, sizeof buf, "0x%llx points into memory freed by %s", (unsigned long long)addr,
                      a->freed_by.c_str());
    } else if (a->state == Allocation::Pending) {
        std::snprintf(buf, sizeof buf,
                      "0x%llx is used before its stream-ordered allocation (cuMemAllocAsync on stream %llu) was "
                      "reached: no event orders the two streams",
                      (unsigned long long)addr, (unsigned long long)a->alloc_stream->id);
    } else if (addr + n > a->base + a->size) {
        std::snprintf(buf, sizeof buf, "[0x%llx, +%zu) runs past its allocation of %zu bytes", (unsigned long long)addr,
                      n, a->size);
    } else {
        return true;
    }
    why = buf;
    return false;
}

void free_everything() {
    // Freeing may evict older allocations from the map: collect first.
    std::vector<uintptr_t> live;
    for (auto& [base, a] : device_allocs()) {
        if (a.state != Allocation::Freed) live.push_back(base);
    }
    for (uintptr_t base : live) {
        if (Allocation* a = find_device(base); a != nullptr && a->state != Allocation::Freed) {
            free_device(a, "the release of the primary context");
        }
    }
}

// Runs when an AllocAsync op is reached in its stream.
void allocation_reached(uintptr_t base) {
    Allocation* a = find_device(base);
    if (a != nullptr && a->state == Allocation::Pending) a->state = Allocation::Live;
}

}  // namespace emu

using namespace emu;

EMU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    if (CUresult e = refuse_unsafe_call("cuMemAlloc")) return e;
    return new_device_allocation(dptr, bytes, Allocation::Live, "cuMemAlloc");
}

EMU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream hstream) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    if (!config().memory_pools) return fail(CUDA_ERROR_NOT_SUPPORTED, "TIEDAE_EMU_MEMORY_POOLS=0");
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(hstream, err);
    if (s == nullptr) return err;
    if (CUresult e = refuse_if_capturing(s, "cuMemAllocAsync (a graph's allocation node is not emulated)")) return e;
    if (CUresult e = new_device_allocation(dptr, bytes, Allocation::Pending, "cuMemAllocAsync")) return e;
    Op op;
    op.kind = OpKind::AllocAsync;
    op.stream = s;
    op.dst = *dptr;
    op.bytes = bytes;
    CUresult e = enqueue(op);
    Allocation* a = find_device(*dptr);
    a->alloc_stream = s;
    a->alloc_seq = op.seq;
    return e;
}

EMU_EXPORT CUresult cuMemFree_v2(CUdeviceptr ptr) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = refuse_unsafe_call("cuMemFree")) return e;
    Allocation* a = nullptr;
    if (CUresult e = allocation_at(ptr, "cuMemFree", a)) return e;
    // cuMemFree waits for the work queued before it.
    drain_all();
    free_device(a, "cuMemFree");
    return sticky();
}

EMU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr ptr, CUstream hstream) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(hstream, err);
    if (s == nullptr) return err;
    Allocation* a = nullptr;
    if (CUresult e = allocation_at(ptr, "cuMemFreeAsync", a)) return e;
    if (CUresult e = refuse_if_capturing(s, "cuMemFreeAsync (a graph's free node is not emulated)")) return e;
    Op op;
    op.kind = OpKind::FreeAsync;
    op.stream = s;
    op.dst = ptr;
    op.bytes = a->size;
    if (CUresult e = enqueue(op)) return e;
    return sticky();
}

EMU_EXPORT CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned int flags) {
    EMU_LOCK;
    (void)flags;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    if (pp == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostAlloc: null pointer");
    if (bytes == 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostAlloc of 0 bytes");
    void* p = raw_alloc(bytes, 4096);
    if (p == nullptr) return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostAlloc of %zu bytes", bytes);
    Allocation a;
    a.base = reinterpret_cast<uintptr_t>(p);
    a.size = bytes;
    host_allocs()[a.base] = a;
    *pp = p;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuMemAllocHost_v2(void** pp, size_t bytes) { return cuMemHostAlloc(pp, bytes, 0); }

EMU_EXPORT CUresult cuMemFreeHost(void* p) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    auto it = host_allocs().find(reinterpret_cast<uintptr_t>(p));
    if (it == host_allocs().end() || it->second.state == Allocation::Freed) {
        return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost(%p): not a live page-locked allocation", p);
    }
    // Like cuMemFree, it waits for queued work (a queued copy may still read the buffer).
    drain_all();
    retire(it->second, true, "cuMemFreeHost");
    return sticky();
}

EMU_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (free_bytes == nullptr || total == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemGetInfo: null pointer");
    *total = config().total_memory;
    *free_bytes = config().total_memory - std::min(in_use, config().total_memory);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream hstream) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(hstream, err);
    if (s == nullptr) return err;
    if (n == 0) return CUDA_SUCCESS;
    if (CUresult e = check_device_range(dst, n, "cuMemsetD8Async")) return e;
    Op op;
    op.kind = OpKind::Memset;
    op.stream = s;
    op.dst = dst;
    op.bytes = n;
    op.value = value;
    return enqueue(op);
}

EMU_EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = refuse_unsafe_call("cuMemsetD8")) return e;
    return synchronous(cuMemsetD8Async(dst, value, n, nullptr));
}

EMU_EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    EMU_LOCK;
    return queue_copy(OpKind::CopyHtoD, dst, reinterpret_cast<uintptr_t>(src), n, s, "cuMemcpyHtoDAsync");
}

EMU_EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    EMU_LOCK;
    return queue_copy(OpKind::CopyDtoH, reinterpret_cast<uintptr_t>(dst), src, n, s, "cuMemcpyDtoHAsync");
}

EMU_EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    EMU_LOCK;
    return queue_copy(OpKind::CopyDtoD, dst, src, n, s, "cuMemcpyDtoDAsync");
}

EMU_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = refuse_unsafe_call("cuMemcpyHtoD")) return e;
    return synchronous(cuMemcpyHtoDAsync_v2(dst, src, n, nullptr));
}

EMU_EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = refuse_unsafe_call("cuMemcpyDtoH")) return e;
    return synchronous(cuMemcpyDtoHAsync_v2(dst, src, n, nullptr));
}

EMU_EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = refuse_unsafe_call("cuMemcpyDtoD")) return e;
    return synchronous(cuMemcpyDtoDAsync_v2(dst, src, n, nullptr));
}
