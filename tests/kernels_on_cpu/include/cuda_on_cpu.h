// CUDA on the CPU, for testing kernel logic where there is no GPU: `g++ -include cuda_on_cpu.h -x c++
// kernels/gemm.cu` compiles our kernel files unchanged as C++, and `launch(kernel, grid, block, args...)`
// runs a grid the way the hardware would, as far as a kernel written to the CUDA rules can tell:
//   - every thread of a block is a real OS thread, so __syncthreads is a real barrier (std::barrier) and a
//     missing or divergent barrier deadlocks (the test's timeout reports it) instead of passing by luck;
//   - blocks run one after another, so `__shared__` can be a function-local `static` (one copy per kernel,
//     shared by the threads of the running block, as shared memory is);
//   - threadIdx / blockIdx are per-thread (thread_local), blockDim / gridDim per launch.
// What it cannot show: speed, warp-level behaviour (no __shfl_*: our kernels use none), memory-model races
// between blocks (compute-sanitizer's racecheck does that on a GPU), and nvcc's floating-point contraction
// (build with -ffp-contract=off: this side never fuses a*b+c unless the code says fmaf).
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;
inline std::barrier<>* cuda_on_cpu_block_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Sound only because blocks run one at a time (see above).
#define __shared__ static

inline void __syncthreads() { cuda_on_cpu_block_barrier->arrive_and_wait(); }

// The intrinsics our kernels use. With -ffp-contract=off the plain operators round each operation.
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
// The leading zero bits of x's 32 bits (32 for 0), as CUDA's __clz.
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __float_as_int(float f) {
    int x;
    std::memcpy(&x, &f, 4);
    return x;
}

// Runs kernel<<<grid, block>>>(args...) to completion: one OS thread per thread of a block, each walking
// the blocks in the same order with a barrier between blocks (so a block's shared memory is not reused
// before every thread has left it).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned int threads = block.x * block.y * block.z;
    std::barrier<> barrier(threads);
    cuda_on_cpu_block_barrier = &barrier;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned int t = 0; t < threads; ++t) {
        pool.emplace_back([=, &barrier] {
            threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned int bz = 0; bz < grid.z; ++bz) {
                for (unsigned int by = 0; by < grid.y; ++by) {
                    for (unsigned int bx = 0; bx < grid.x; ++bx) {
                        blockIdx = uint3{bx, by, bz};
                        kernel(static_cast<Params>(args)...);
                        barrier.arrive_and_wait();
                    }
                }
            }
        });
    }
    for (auto& th : pool) {
        th.join();
    }
}

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
// CUDA's integer min/max device functions.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
