// Every driver function the emulator does not implement: CUDA_ERROR_NOT_SUPPORTED, with the function's name
// in cuGetErrorString's text, never a crash. cudarc resolves each symbol on its first call and panics on a
// missing one, so each must exist. Weak: the implemented ones (strong, in the other files) win.
#include "emulator.h"

namespace emu {
namespace {
CUresult not_emulated(const char* name) {
    EMU_LOCK;
    trace("not emulated: %s", name);
    return fail(CUDA_ERROR_NOT_SUPPORTED, "%s is not emulated (tests/emulated_cuda implements the calls tiedae makes)",
                name);
}
}  // namespace
}  // namespace emu

// The arguments, whatever they are, are left where the caller put them: the C calling convention lets a
// function that takes none ignore them.
#define X(name) \
    EMU_EXPORT __attribute__((weak)) CUresult name() { return emu::not_emulated(#name); }
#include "not_emulated.inc"
