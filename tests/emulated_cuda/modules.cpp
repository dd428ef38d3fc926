// Kernels by name. cuModuleLoadData reads the PTX it is given (as the driver's JIT would): its ISA version
// and target against the emulated driver and device, and every `.entry` with its parameter types, its
// `.maxntid`, its static shared memory and whether it has a barrier. Each entry must have a CPU-compiled twin
// registered under its name (the same kernels/*.cu compiled by g++, see include/emu_twin.h) whose C++
// parameters are the PTX's, else loading fails naming the kernel. cuLaunchKernel checks the launch shape as
// a GPU does and copies each argument by the kernel's own parameter type; when the launch runs, every
// pointer argument must lie inside a live allocation, else CUDA_ERROR_ILLEGAL_ADDRESS naming the kernel and
// the argument.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>

#include "emulator.h"

namespace emu {
namespace {

std::map<std::string, Twin>& twins() {
    static std::map<std::string, Twin> m;
    return m;
}

struct EmuModuleState {
    std::vector<std::unique_ptr<EmuFunctionState>> functions;
};
std::set<const void*>& live_modules() {
    static std::set<const void*> s;
    return s;
}
std::set<const void*>& live_functions() {
    static std::set<const void*> s;
    return s;
}

struct PtxEntry {
    std::string name;
    std::vector<std::string> params;  // ".u64", ".align 4 .b8[12]"
    bool barriers = false;
    unsigned max_threads = 1024;
    unsigned static_shared = 0;
};

struct Ptx {
    int version_major = 0, version_minor = 0;
    int target = 0;  // sm_XY as XY
    std::vector<PtxEntry> entries;
};

std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n");
    size_t b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

size_t type_bytes(const std::string& t) {
    if (t == ".b8" || t == ".u8" || t == ".s8") return 1;
    if (t == ".b16" || t == ".u16" || t == ".s16" || t == ".f16") return 2;
    if (t == ".b32" || t == ".u32" || t == ".s32" || t == ".f32") return 4;
    if (t == ".b64" || t == ".u64" || t == ".s64" || t == ".f64") return 8;
    return 0;
}

// Bytes of every `.shared` declaration in `text` ("name" → bytes); `.extern .shared` (dynamic) is left out.
std::map<std::string, unsigned> shared_declarations(const std::string& text) {
    std::map<std::string, unsigned> out;
    size_t at = 0;
    while ((at = text.find(".shared ", at)) != std::string::npos) {
        size_t line_start = text.rfind('\n', at);
        line_start = line_start == std::string::npos ? 0 : line_start + 1;
        size_t end = text.find(';', at);
        std::string before = trim(text.substr(line_start, at - line_start));
        std::string decl = text.substr(at + 8, end == std::string::npos ? std::string::npos : end - at - 8);
        at = end == std::string::npos ? text.size() : end;
        // Only declarations: `.shared .align 4 .b8 name[N]` on a line of its own (an instruction reads
        // `ld.shared` / `st.shared`, with no space after .shared).
        if (!before.empty() && before != ".visible" && before != ".extern") continue;
        if (before == ".extern") continue;
        std::vector<std::string> words;
        size_t p = 0;
        std::string d = trim(decl);
        while (p < d.size()) {
            size_t q = d.find_first_of(" \t", p);
            if (q == std::string::npos) q = d.size();
            if (q > p) words.push_back(d.substr(p, q - p));
            p = q + 1;
        }
        if (words.empty()) continue;
        std::string type, name = words.back();
        for (const std::string& w : words) {
            if (type_bytes(w) != 0) type = w;
        }
        unsigned count = 1;
        size_t bracket = name.find('[');
        if (bracket != std::string::npos) {
            count = unsigned(std::strtoul(name.c_str() + bracket + 1, nullptr, 10));
            name = name.substr(0, bracket);
        }
        out[name] += unsigned(type_bytes(type)) * count;
    }
    return out;
}

bool parse_ptx(const std::string& text, Ptx& ptx, std::string& error) {
    size_t v = text.find(".version ");
    if (v == std::string::npos || std::sscanf(text.c_str() + v, ".version %d.%d", &ptx.version_major, &ptx.version_minor) != 2) {
        error = "no .version directive";
        return false;
    }
    size_t t = text.find(".target ");
    if (t == std::string::npos || std::sscanf(text.c_str() + t, ".target sm_%d", &ptx.target) != 1) {
        error = "no .target sm_XY directive";
        return false;
    }
    // Module-scope .shared variables: outside every entry's braces.
    std::string outside;
    int depth = 0;
    for (char c : text) {
        if (c == '{') depth++;
        if (depth == 0) outside += c;
        if (c == '}') depth--;
    }
    std::map<std::string, unsigned> module_shared = shared_declarations(outside);

    size_t at = 0;
    while ((at = text.find(".entry ", at)) != std::string::npos) {
        PtxEntry e;
        size_t open = text.find('(', at);
        size_t close = text.find(')', open);
        size_t body = text.find('{', close);
        if (open == std::string::npos || close == std::string::npos || body == std::string::npos) {
            error = "an .entry without its parameter list or body";
            return false;
        }
        e.name = trim(text.substr(at + 7, open - at - 7));
        std::string params = text.substr(open + 1, close - open - 1);
        size_t p = 0;
        while (p <= params.size()) {
            size_t comma = params.find(',', p);
            if (comma == std::string::npos) comma = params.size();
            std::string decl = trim(params.substr(p, comma - p));
            p = comma + 1;
            if (decl.empty()) continue;
            if (decl.rfind(".param", 0) != 0) {
                error = "entry " + e.name + ": not a .param: " + decl;
                return false;
            }
            decl = trim(decl.substr(6));
            size_t space = decl.find_last_of(" \t");
            if (space == std::string::npos) {
                error = "entry " + e.name + ": a .param without a name";
                return false;
            }
            std::string type = trim(decl.substr(0, space));
            std::string name = decl.substr(space + 1);
            size_t bracket = name.find('[');
            std::string type_words;
            for (size_t i = 0; i < type.size(); ++i) {  // collapse runs of blanks
                if (std::isspace((unsigned char)type[i])) {
                    if (!type_words.empty() && type_words.back() != ' ') type_words += ' ';
                } else {
                    type_words += type[i];
                }
            }
            e.params.push_back(type_words + (bracket == std::string::npos ? "" : name.substr(bracket)));
        }
        std::string directives = text.substr(close + 1, body - close - 1);
        size_t m = directives.find(".maxntid");
        if (m != std::string::npos) {
            unsigned x = 1, y = 1, z = 1;
            std::sscanf(directives.c_str() + m, ".maxntid %u, %u, %u", &x, &y, &z);
            e.max_threads = x * y * z;
        }
        size_t end = body;
        int d = 0;
        do {
            if (text[end] == '{') d++;
            if (text[end] == '}') d--;
            end++;
        } while (d > 0 && end < text.size());
        std::string code = text.substr(body, end - body);
        e.barriers = code.find("bar.sync") != std::string::npos || code.find("barrier.sync") != std::string::npos ||
                     code.find("bar.red") != std::string::npos || code.find("barrier.red") != std::string::npos;
        for (const auto& [name, bytes] : shared_declarations(code)) e.static_shared += bytes;
        for (const auto& [name, bytes] : module_shared) {
            if (code.find(name) != std::string::npos) e.static_shared += bytes;
        }
        ptx.entries.push_back(e);
        at = end;
    }
    return true;
}

// The newest PTX ISA a driver for CUDA major.minor accepts (11.x: 7.x, 12.x: 8.x up to 8.8, 13.x: 9.x).
void max_ptx_isa(int driver_version, int& major, int& minor) {
    int cuda_major = driver_version / 1000, cuda_minor = (driver_version % 1000) / 10;
    major = cuda_major - 4;
    minor = cuda_major == 12 ? std::min(cuda_minor, 8) : cuda_minor;
}

std::string param_list(const std::vector<std::string>& v) {
    std::string s = "(";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
    return s + ")";
}

}  // namespace

bool register_twin(Twin twin) {
    std::string name = twin.name;
    twins()[name] = std::move(twin);
    return true;
}

const char* running_kernel = nullptr;

void execute_kernel(const Op& op) {
    const KernelLaunch& k = *op.kernel;
    const EmuFunctionState& f = *k.fn;
    for (size_t i = 0; i < f.twin->params.size(); ++i) {
        const ParamType& p = f.twin->params[i];
        if (!p.pointer) continue;
        uintptr_t v = 0;
        std::memcpy(&v, k.args.data() + f.offsets[i], sizeof v);
        if (v == 0) continue;  // our kernels take null as "none" (a bias, split-K's partials)
        std::string why;
        if (!device_range_ok(v, 1, why)) {
            fault(CUDA_ERROR_ILLEGAL_ADDRESS, "kernel %s (stream %llu, #%llu%s), argument %s (#%zu, %s): %s", f.name.c_str(),
                  (unsigned long long)op.stream->id, (unsigned long long)op.seq, op.origin,
                  i < f.twin->param_names.size() ? f.twin->param_names[i].c_str() : "?", i, p.cxx.c_str(), why.c_str());
            return;
        }
    }
    gridDim = k.grid;
    blockDim = k.block;
    running_kernel = f.name.c_str();
    f.twin->run(f.twin->fn, k.args.data(), f.offsets, f.barriers);
    running_kernel = nullptr;
}

}  // namespace emu

using namespace emu;

EMU_EXPORT CUresult cuModuleLoadData(CUmodule* out, const void* image) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (out == nullptr || image == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuModuleLoadData: null pointer");
    std::string text(static_cast<const char*>(image));
    Ptx ptx;
    std::string error;
    if (!parse_ptx(text, ptx, error)) return fail(CUDA_ERROR_INVALID_PTX, "this PTX does not parse: %s", error.c_str());
    int isa_major = 0, isa_minor = 0;
    max_ptx_isa(config().driver_version, isa_major, isa_minor);
    if (ptx.version_major > isa_major || (ptx.version_major == isa_major && ptx.version_minor > isa_minor)) {
        return fail(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "PTX ISA %d.%d, but a driver for CUDA %d.%d reads up to %d.%d",
                    ptx.version_major, ptx.version_minor, config().driver_version / 1000,
                    (config().driver_version % 1000) / 10, isa_major, isa_minor);
    }
    if (ptx.target > config().cc_major * 10 + config().cc_minor) {
        return fail(CUDA_ERROR_NO_BINARY_FOR_GPU, "PTX for sm_%d on a device of compute capability %d.%d", ptx.target,
                    config().cc_major, config().cc_minor);
    }
    auto module = std::make_unique<EmuModuleState>();
    for (const PtxEntry& e : ptx.entries) {
        auto twin = twins().find(e.name);
        if (twin == twins().end()) {
            return fail(CUDA_ERROR_NOT_FOUND,
                        "kernel %s of this PTX has no CPU-compiled twin (the emulator compiles every extern \"C\" "
                        "__global__ function of kernels/*.cu; is the PTX from another source?)",
                        e.name.c_str());
        }
        std::vector<std::string> cxx;
        for (const ParamType& p : twin->second.params) cxx.push_back(p.ptx);
        if (cxx != e.params) {
            std::string theirs;
            for (const ParamType& p : twin->second.params) theirs += (theirs.empty() ? "" : ", ") + p.cxx;
            return fail(CUDA_ERROR_INVALID_IMAGE,
                        "kernel %s: the PTX declares %s but its CPU twin takes (%s), that is %s: the PTX and the "
                        "kernel source disagree (a stale build?)",
                        e.name.c_str(), param_list(e.params).c_str(), theirs.c_str(), param_list(cxx).c_str());
        }
        auto f = std::make_unique<EmuFunctionState>();
        f->name = e.name;
        f->twin = &twin->second;
        f->barriers = e.barriers;
        f->max_threads = e.max_threads;
        f->static_shared = e.static_shared;
        size_t offset = 0;
        for (const ParamType& p : twin->second.params) {
            offset = (offset + p.align - 1) / p.align * p.align;
            f->offsets.push_back(offset);
            offset += p.size;
        }
        f->args_bytes = offset;
        module->functions.push_back(std::move(f));
    }
    EmuModuleState* m = module.release();
    live_modules().insert(m);
    for (auto& f : m->functions) live_functions().insert(f.get());
    *out = reinterpret_cast<CUmodule>(m);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuModuleGetFunction(CUfunction* out, CUmodule hmod, const char* name) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (out == nullptr || name == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuModuleGetFunction: null pointer");
    if (live_modules().count(hmod) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a loaded module");
    for (auto& f : reinterpret_cast<EmuModuleState*>(hmod)->functions) {
        if (f->name == name) {
            *out = reinterpret_cast<CUfunction>(f.get());
            return CUDA_SUCCESS;
        }
    }
    return fail(CUDA_ERROR_NOT_FOUND, "the module has no kernel %s", name);
}

// The functions stay allocated (a queued launch may still name one); only the handles die.
EMU_EXPORT CUresult cuModuleUnload(CUmodule hmod) {
    EMU_LOCK;
    if (live_modules().erase(hmod) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: not a loaded module");
    for (auto& f : reinterpret_cast<EmuModuleState*>(hmod)->functions) live_functions().erase(f.get());
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuFuncGetAttribute(int* value, int attribute, CUfunction hfunc) {
    EMU_LOCK;
    if (live_functions().count(hfunc) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "not a loaded kernel");
    if (value == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncGetAttribute: null pointer");
    auto* f = reinterpret_cast<EmuFunctionState*>(hfunc);
    switch (attribute) {
        case FUNC_ATTR_MAX_THREADS_PER_BLOCK: *value = int(f->max_threads); return CUDA_SUCCESS;
        case FUNC_ATTR_SHARED_SIZE_BYTES: *value = int(f->static_shared); return CUDA_SUCCESS;
        default: return fail(CUDA_ERROR_NOT_SUPPORTED, "function attribute %d is not emulated", attribute);
    }
}

EMU_EXPORT CUresult cuLaunchKernel(CUfunction hfunc, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shared_bytes, CUstream hstream, void** params, void** extra) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = sticky()) return e;
    if (live_functions().count(hfunc) == 0) return fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: not a loaded kernel");
    auto* f = reinterpret_cast<EmuFunctionState*>(hfunc);
    CUresult err = CUDA_SUCCESS;
    EmuStreamState* s = stream_of(hstream, err);
    if (s == nullptr) return err;
    const char* n = f->name.c_str();
    if (gx == 0 || gy == 0 || gz == 0) return fail(CUDA_ERROR_INVALID_VALUE, "%s: grid (%u, %u, %u) has a zero dimension", n, gx, gy, gz);
    if (gx > 2147483647u || gy > 65535 || gz > 65535) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: grid (%u, %u, %u) exceeds (2^31 - 1, 65535, 65535)", n, gx, gy, gz);
    }
    if (bx == 0 || by == 0 || bz == 0) return fail(CUDA_ERROR_INVALID_VALUE, "%s: block (%u, %u, %u) has a zero dimension", n, bx, by, bz);
    unsigned long long threads = (unsigned long long)bx * by * bz;
    if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: block (%u, %u, %u) exceeds 1024 threads or (1024, 1024, 64)", n, bx, by, bz);
    }
    if (threads > f->max_threads) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: %llu threads a block, but its PTX says .maxntid %u (__launch_bounds__)", n,
                    threads, f->max_threads);
    }
    if (f->static_shared + shared_bytes > SHARED_MEMORY_PER_BLOCK) {
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: %u bytes of static and %u of dynamic shared memory exceed %u", n,
                    f->static_shared, shared_bytes, SHARED_MEMORY_PER_BLOCK);
    }
    if (extra != nullptr) return fail(CUDA_ERROR_NOT_SUPPORTED, "%s: arguments through `extra` are not emulated", n);
    size_t count = f->twin->params.size();
    if (count > 0 && params == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "%s: no kernelParams for %zu parameters", n, count);
    auto launch = std::make_shared<KernelLaunch>();
    launch->fn = f;
    launch->grid = dim3(gx, gy, gz);
    launch->block = dim3(bx, by, bz);
    launch->shared_bytes = shared_bytes;
    launch->args.assign(f->args_bytes, 0);
    for (size_t i = 0; i < count; ++i) {
        if (params[i] == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "%s: kernelParams[%zu] is null", n, i);
        // As the driver does: as many bytes as the kernel's parameter has, from where the pointer points.
        std::memcpy(launch->args.data() + f->offsets[i], params[i], f->twin->params[i].size);
    }
    Op op;
    op.kind = OpKind::Kernel;
    op.stream = s;
    op.kernel = launch;
    return enqueue(op);
}
