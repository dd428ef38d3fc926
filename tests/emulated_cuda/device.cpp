// The emulated device, described by environment variables, and its primary context.
//   TIEDAE_EMU_DEVICES       how many devices the driver reports (default 1; 0: cuInit says no device)
//   TIEDAE_EMU_SMS           multiprocessors (default 10, a GTX 1060's; 132 is an H100's)
//   TIEDAE_EMU_CC            compute capability (default 6.1)
//   TIEDAE_EMU_DRIVER        the CUDA version the driver supports (default 12.2)
//   TIEDAE_EMU_MEMORY_MIB    device memory (default 6144)
//   TIEDAE_EMU_MEMORY_POOLS  1 (default): stream-ordered allocation (cuMemAllocAsync); 0: cuMemAlloc
//   TIEDAE_EMU_SEED          the seed of the streams' interleaving (default: drawn from the clock)
//   TIEDAE_EMU_INTERLEAVE    0: a stream runs another's work only when it waits for it (default 1)
//   TIEDAE_EMU_TRACE         a file that gets one line per launch, copy and fault
// A value that does not parse makes cuInit fail with CUDA_ERROR_INVALID_VALUE naming the variable.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#include "emulator.h"

namespace emu {

const char* const DEVICE_NAME = "emulated CUDA device (CPU)";

namespace {

std::string config_error;

bool parse_int(const char* var, long lo, long hi, long& out) {
    const char* v = std::getenv(var);
    if (v == nullptr || *v == '\0') return true;
    char* end = nullptr;
    long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > hi) {
        config_error = std::string(var) + "=" + v + " is not an integer in " + std::to_string(lo) + ".." +
                       std::to_string(hi);
        return false;
    }
    out = x;
    return true;
}

// "major.minor" into the two numbers.
bool parse_version(const char* var, int& major, int& minor) {
    const char* v = std::getenv(var);
    if (v == nullptr || *v == '\0') return true;
    int a = 0, b = 0;
    char tail = 0;
    if (std::sscanf(v, "%d.%d%c", &a, &b, &tail) != 2 || a < 1 || b < 0 || b > 99) {
        config_error = std::string(var) + "=" + v + " is not a version such as 6.1";
        return false;
    }
    major = a;
    minor = b;
    return true;
}

Config load_config() {
    Config c;
    long devices = c.devices, sms = c.sms, mib = long(c.total_memory >> 20), pools = 1, interleave = 1;
    int driver_major = 12, driver_minor = 2;
    bool ok = parse_int("TIEDAE_EMU_DEVICES", 0, 16, devices) && parse_int("TIEDAE_EMU_SMS", 1, 1024, sms) &&
              parse_version("TIEDAE_EMU_CC", c.cc_major, c.cc_minor) &&
              parse_version("TIEDAE_EMU_DRIVER", driver_major, driver_minor) &&
              parse_int("TIEDAE_EMU_MEMORY_MIB", 1, 1 << 24, mib) &&
              parse_int("TIEDAE_EMU_MEMORY_POOLS", 0, 1, pools) && parse_int("TIEDAE_EMU_INTERLEAVE", 0, 1, interleave);
    (void)ok;
    c.devices = int(devices);
    c.sms = int(sms);
    c.driver_version = 1000 * driver_major + 10 * driver_minor;
    c.total_memory = size_t(mib) << 20;
    c.memory_pools = pools == 1;
    c.interleave = interleave == 1;
    if (const char* s = std::getenv("TIEDAE_EMU_SEED"); s != nullptr && *s != '\0') {
        char* end = nullptr;
        c.seed = std::strtoull(s, &end, 10);
        if (*end != '\0' && config_error.empty()) config_error = std::string("TIEDAE_EMU_SEED=") + s + " is not a number";
    } else {
        c.seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) ^ (uint64_t(getpid()) << 32);
        c.seed %= 1000000007ull;
    }
    if (const char* t = std::getenv("TIEDAE_EMU_TRACE")) c.trace = t;
    return c;
}

bool init_done = false;

struct EmuContextState {
    int device = 0;
    int refs = 0;
};
EmuContextState contexts[16];
thread_local EmuContextState* current = nullptr;

bool valid_device(CUdevice d) { return d >= 0 && d < config().devices; }

}  // namespace

const Config& config() {
    static const Config c = load_config();
    return c;
}

bool initialized() { return init_done; }

CUresult need_context() {
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (current == nullptr) return fail(CUDA_ERROR_INVALID_CONTEXT, "no context is current on this thread");
    if (current->refs <= 0) return fail(CUDA_ERROR_INVALID_CONTEXT, "the current context was released");
    return CUDA_SUCCESS;
}

}  // namespace emu

using namespace emu;

EMU_EXPORT CUresult cuInit(unsigned int flags) {
    EMU_LOCK;
    (void)config();
    if (!config_error.empty()) return fail(CUDA_ERROR_INVALID_VALUE, "%s", config_error.c_str());
    if (flags != 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuInit flags must be 0, not %u", flags);
    if (config().devices == 0) return fail(CUDA_ERROR_NO_DEVICE, "TIEDAE_EMU_DEVICES=0");
    init_done = true;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDriverGetVersion(int* version) {
    EMU_LOCK;
    if (version == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDriverGetVersion: null pointer");
    *version = config().driver_version;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetCount(int* count) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (count == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetCount: null pointer");
    *count = config().devices;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGet: null pointer");
    if (!valid_device(ordinal)) {
        return fail(CUDA_ERROR_INVALID_DEVICE, "device %d of %d", ordinal, config().devices);
    }
    *device = ordinal;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!valid_device(dev)) return fail(CUDA_ERROR_INVALID_DEVICE, "device %d", dev);
    if (name == nullptr || len <= 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetName: no room");
    std::snprintf(name, size_t(len), "%s", DEVICE_NAME);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!valid_device(dev)) return fail(CUDA_ERROR_INVALID_DEVICE, "device %d", dev);
    if (bytes == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceTotalMem: null pointer");
    *bytes = config().total_memory;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice dev) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!valid_device(dev)) return fail(CUDA_ERROR_INVALID_DEVICE, "device %d", dev);
    if (value == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: null pointer");
    const Config& c = config();
    switch (attribute) {
        case ATTR_MAX_THREADS_PER_BLOCK: *value = 1024; break;
        case ATTR_MAX_BLOCK_DIM_X: *value = 1024; break;
        case ATTR_MAX_BLOCK_DIM_Y: *value = 1024; break;
        case ATTR_MAX_BLOCK_DIM_Z: *value = 64; break;
        case ATTR_MAX_GRID_DIM_X: *value = 2147483647; break;
        case ATTR_MAX_GRID_DIM_Y: *value = 65535; break;
        case ATTR_MAX_GRID_DIM_Z: *value = 65535; break;
        case ATTR_MAX_SHARED_MEMORY_PER_BLOCK: *value = int(SHARED_MEMORY_PER_BLOCK); break;
        case ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = int(SHARED_MEMORY_PER_BLOCK); break;
        case ATTR_TOTAL_CONSTANT_MEMORY: *value = 65536; break;
        case ATTR_WARP_SIZE: *value = 32; break;
        case ATTR_MAX_REGISTERS_PER_BLOCK: *value = 65536; break;
        case ATTR_CLOCK_RATE: *value = 1000000; break;
        case ATTR_MULTIPROCESSOR_COUNT: *value = c.sms; break;
        case ATTR_INTEGRATED: *value = 0; break;
        case ATTR_CAN_MAP_HOST_MEMORY: *value = 0; break;
        case ATTR_COMPUTE_MODE: *value = 0; break;
        case ATTR_CONCURRENT_KERNELS: *value = 1; break;
        case ATTR_ECC_ENABLED: *value = 0; break;
        case ATTR_MAX_THREADS_PER_MULTIPROCESSOR: *value = 2048; break;
        case ATTR_ASYNC_ENGINE_COUNT: *value = 2; break;
        case ATTR_UNIFIED_ADDRESSING: *value = 1; break;
        case ATTR_COMPUTE_CAPABILITY_MAJOR: *value = c.cc_major; break;
        case ATTR_COMPUTE_CAPABILITY_MINOR: *value = c.cc_minor; break;
        case ATTR_MEMORY_POOLS_SUPPORTED: *value = c.memory_pools ? 1 : 0; break;
        default:
            return fail(CUDA_ERROR_INVALID_VALUE, "device attribute %d is not emulated", attribute);
    }
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!valid_device(dev)) return fail(CUDA_ERROR_INVALID_DEVICE, "device %d", dev);
    if (ctx == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuDevicePrimaryCtxRetain: null pointer");
    contexts[dev].device = dev;
    contexts[dev].refs += 1;
    *ctx = reinterpret_cast<CUcontext>(&contexts[dev]);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!valid_device(dev)) return fail(CUDA_ERROR_INVALID_DEVICE, "device %d", dev);
    if (contexts[dev].refs <= 0) return fail(CUDA_ERROR_INVALID_CONTEXT, "the primary context was not retained");
    contexts[dev].refs -= 1;
    if (contexts[dev].refs == 0) {
        // As CUDA destroys a primary context: its queued work completes, its memory goes.
        release_context_resources();
    }
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (ctx == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuCtxGetCurrent: null pointer");
    *ctx = reinterpret_cast<CUcontext>(current);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    EMU_LOCK;
    if (!init_done) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    auto* c = reinterpret_cast<EmuContextState*>(ctx);
    if (c != nullptr && (c < contexts || c >= contexts + 16)) {
        return fail(CUDA_ERROR_INVALID_CONTEXT, "not a context of this driver");
    }
    current = c;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxGetDevice(CUdevice* dev) {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (dev == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "cuCtxGetDevice: null pointer");
    *dev = current->device;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuCtxSynchronize() {
    EMU_LOCK;
    if (CUresult e = need_context()) return e;
    if (CUresult e = refuse_unsafe_call("cuCtxSynchronize")) return e;
    drain_all();
    return sticky();
}
