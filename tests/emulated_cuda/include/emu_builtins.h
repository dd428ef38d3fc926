// CUDA's built-in types and thread indices as the emulated driver runs a kernel: shared by the kernels'
// translation units (through cuda_emulated.h) and the driver's own grid runner (threads.cpp), which sets
// them before each GPU thread runs or resumes. One grid runs at a time (the driver holds its lock), so plain
// globals are enough; fibers of one block all run on the thread that holds the lock.
#pragma once

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

inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

// __syncthreads() of the kernel at file:line; defined in threads.cpp, never inlined into a kernel, so a
// kernel reloads threadIdx after it (another fiber ran in between).
void emu_syncthreads(const char* file, int line);
