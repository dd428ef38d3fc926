// Stream capture and graphs, with CUDA's rules for what a capture may contain:
//   - kernels, memsets, device-to-device copies and copies to or from page-locked memory are recorded as
//     nodes, a kernel with its arguments as they were at the launch;
//   - a copy with pageable host memory, a synchronize of the capturing stream, a stream-ordered allocation
//     or free on it, a wait for work recorded outside the capture, and (in the global and thread-local modes)
//     the calls CUDA calls unsafe during a capture (cuMemAlloc, cuMemFree, synchronous copies, a context or
//     event synchronize) fail and invalidate the capture, whose end then returns
//     CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph;
//   - a launch of the instantiated graph queues its nodes, in capture order, on the stream it is given.
// Multi-stream capture (an event recorded into a capture and waited for by another stream) is refused with
// CUDA_ERROR_NOT_SUPPORTED: tiedae records one stream.
#include <set>

#include "emulator.h"

namespace emu {
namespace {

struct EmuGraphExecState {
    std::vector<Op> nodes;
};

std::set<const void*>& live_graphs() {
    static std::set<const void*> s;
    return s;
}
std::set<const void*>& live_execs() {
    static std::set<const void*> s;
    return s;
}

void invalidate(EmuStreamState* s) {
    if (s->capture_status == CAPTURE_STATUS_ACTIVE) s->capture_status = CAPTURE_STATUS_INVALIDATED;
}

}  // namespace

CUresult refuse_if_capturing(EmuStreamState* s, const char* what) {
    if (s->capture_status == CAPTURE_STATUS_NONE) return CUDA_SUCCESS;
    invalidate(s);
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s on stream %llu while it captures a graph", what,
                (unsigned long long)s->id);
}

CUresult refuse_unsafe_call(const char* what) {
    for (EmuStreamState* s : all_streams()) {
        if (s->capture_status == CAPTURE_STATUS_NONE) continue;
        bool forbidden = s->capture_mode == CAPTURE_MODE_GLOBAL ||
                         (s->capture_mode == CAPTURE_MODE_THREAD_LOCAL && s->capture_thread == std::this_thread::get_id());
        if (forbidden) {
            invalidate(s);
            return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s while stream %llu captures a graph (mode %s)", what,
                        (unsigned long long)s->id, s->capture_mode == CAPTURE_MODE_GLOBAL ? "global" : "thread-local");
        }
    }
    return CUDA_SUCCESS;
}

CUresult capture_op(EmuStreamState* s, const Op& op) {
    if (s->capture_status == CAPTURE_STATUS_INVALIDATED) {
        return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "stream %llu's capture was invalidated by an earlier call",
                    (unsigned long long)s->id);
    }
    switch (op.kind) {
        case OpKind::Kernel:
        case OpKind::Memset:
        case OpKind::CopyDtoD:
            break;
        case OpKind::CopyHtoD:
        case OpKind::CopyDtoH:
            if (!op.pinned) return refuse_if_capturing(s, "a copy with pageable host memory");
            break;
        default:
            return refuse_if_capturing(s, op_name(op.kind));
    }
    Op node = op;
    node.stream = nullptr;
    s->capture_graph->nodes.push_back(node);
    return CUDA_SUCCESS;
}

}  // namespace emu

using namespace emu;

EMU_EXPORT CUresult cuStreamBeginCapture_v2(CUstream handle, int mode) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (s->id == 0) return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "the legacy stream cannot be captured");
    if (mode != CAPTURE_MODE_GLOBAL && mode != CAPTURE_MODE_THREAD_LOCAL && mode != CAPTURE_MODE_RELAXED) {
        return fail(CUDA_ERROR_INVALID_VALUE, "capture mode %d", mode);
    }
    if (s->capture_status != CAPTURE_STATUS_NONE) {
        return fail(CUDA_ERROR_ILLEGAL_STATE, "stream %llu is already capturing", (unsigned long long)s->id);
    }
    auto* g = new EmuGraphState();
    live_graphs().insert(g);
    s->capture_status = CAPTURE_STATUS_ACTIVE;
    s->capture_mode = mode;
    s->capture_thread = std::this_thread::get_id();
    s->capture_graph = g;
    trace("capture begins on stream %llu", (unsigned long long)s->id);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamEndCapture(CUstream handle, CUgraph* out) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (out == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamEndCapture: null pointer");
    if (s->capture_status == CAPTURE_STATUS_NONE) {
        return fail(CUDA_ERROR_ILLEGAL_STATE, "stream %llu is not capturing", (unsigned long long)s->id);
    }
    if (s->capture_mode != CAPTURE_MODE_RELAXED && s->capture_thread != std::this_thread::get_id()) {
        return fail(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "the capture began on another thread");
    }
    EmuGraphState* g = s->capture_graph;
    bool invalidated = s->capture_status == CAPTURE_STATUS_INVALIDATED;
    s->capture_status = CAPTURE_STATUS_NONE;
    s->capture_graph = nullptr;
    trace("capture ends on stream %llu: %zu nodes%s", (unsigned long long)s->id, g->nodes.size(),
          invalidated ? ", invalidated" : "");
    if (invalidated) {
        live_graphs().erase(g);
        delete g;
        *out = nullptr;
        return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "a call during the capture on stream %llu was refused",
                    (unsigned long long)s->id);
    }
    *out = reinterpret_cast<CUgraph>(g);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamIsCapturing(CUstream handle, int* status) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (status == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamIsCapturing: null pointer");
    *status = s->capture_status;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph hgraph, unsigned long long flags) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (out == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuGraphInstantiateWithFlags: null pointer");
    if (live_graphs().count(hgraph) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a live graph");
    if (flags != 0) return fail(CUDA_ERROR_NOT_SUPPORTED, "graph instantiation flags 0x%llx are not emulated", flags);
    auto* exec = new EmuGraphExecState();
    exec->nodes = reinterpret_cast<EmuGraphState*>(hgraph)->nodes;
    live_execs().insert(exec);
    *out = reinterpret_cast<CUgraphExec>(exec);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphUpload(CUgraphExec hexec, CUstream handle) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (live_execs().count(hexec) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a live executable graph");
    CUresult err = CUDA_SUCCESS;
    if (stream_of(handle, err) == nullptr) return err;
    return sticky();
}

EMU_EXPORT CUresult cuGraphLaunch(CUgraphExec hexec, CUstream handle) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    if (live_execs().count(hexec) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a live executable graph");
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(handle, err);
    if (s == nullptr) return err;
    if (s->capture_status != CAPTURE_STATUS_NONE) {
        invalidate(s);
        return fail(CUDA_ERROR_NOT_SUPPORTED, "launching a graph into a capture (a child graph) is not emulated");
    }
    trace("graph launch on stream %llu", (unsigned long long)s->id);
    for (const Op& node : reinterpret_cast<EmuGraphExecState*>(hexec)->nodes) {
        Op op = node;
        op.stream = s;
        op.origin = " (graph replay)";
        if (op.kind == OpKind::CopyHtoD && op.pinned) {
            // The replay reads the page-locked buffer as it is when the copy runs: snapshot it now.
            const auto* p = reinterpret_cast<const unsigned char*>(op.src);
            op.data = std::make_shared<std::vector<unsigned char>>(p, p + op.bytes);
        }
        if (CUresult e = enqueue(op)) return e;
    }
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphExecDestroy(CUgraphExec hexec) {
    EMU_LOCK;
    if (live_execs().erase(hexec) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a live executable graph");
    delete reinterpret_cast<EmuGraphExecState*>(hexec);  // queued replays hold copies of their nodes
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphDestroy(CUgraph hgraph) {
    EMU_LOCK;
    if (live_graphs().erase(hgraph) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a live graph");
    delete reinterpret_cast<EmuGraphState*>(hgraph);
    return CUDA_SUCCESS;
}
