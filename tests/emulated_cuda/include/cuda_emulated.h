// CUDA on the emulated driver: `g++ -include cuda_emulated.h -x c++ kernels/gemm.cu` compiles a kernel file
// unchanged into the library that tests/emulated_cuda builds, which then runs each launch of the PTX entry of
// the same name. Differences from tests/kernels_on_cpu/include/cuda_on_cpu.h (one OS thread per GPU thread,
// kept for the kernel checks): here a grid's threads run in the driver's thread, one after another for a
// kernel whose PTX has no barrier, as fibers switched at every __syncthreads for one that has (threads.cpp).
//   - `__shared__` is a function-local `static`: blocks run one at a time, and the fibers of a block share it;
//   - __syncthreads() records its source line, so that threads waiting at different barriers are reported
//     (what compute-sanitizer's synccheck reports on a GPU);
//   - build with -ffp-contract=off: the host compiler never fuses a*b+c unless the kernel says fmaf, as
//     nvcc's __fmul_rn/__fadd_rn promise.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu_builtins.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline float __uint_as_float(unsigned int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline int __float_as_int(float f) {
    int x;
    std::memcpy(&x, &f, 4);
    return x;
}
// The leading zero bits of x's 32 bits (32 for 0), as CUDA's __clz.
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
// CUDA's integer min/max device functions.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
