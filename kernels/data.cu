// Batch assembly on the device. Twin of `gather_rows` in src/backend/cpu.rs.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/data.cu -o data.ptx
#include "common.cuh"
#include <cuda_fp16.h>

// data is (data_rows, cols), idx is (out_rows) u32, out is (out_rows, cols): out[r, :] = data[idx[r], :].
// Launch: blockDim.x threads walk the columns of a row (coalesced), blockIdx.x/gridDim.x split the columns
// when a row is wider than a block, blockIdx.y strides over the output rows (gridDim.y <= 65535).
// An index out of range (a bug in the caller; the CPU twin panics) never reads outside `data`: that row of
// `out` becomes NaN, which the loss then reports.
extern "C" __global__ void gather_rows(const float* __restrict__ data, const unsigned int* __restrict__ idx,
                                       float* __restrict__ out, unsigned long long out_rows,
                                       unsigned long long cols, unsigned long long data_rows) {
    for (unsigned long long r = blockIdx.y; r < out_rows; r += gridDim.y) {
        const unsigned long long src_row = idx[r];
        const bool ok = src_row < data_rows;
        const float* src = data + src_row * cols;
        float* dst = out + r * cols;
        for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (unsigned long long)blockDim.x * gridDim.x) {
            if (ok) {
                dst[c] = src[c];
            } else {
                dst[c] = __int_as_float(0x7fc00000);  // quiet NaN; src is never read
            }
        }
    }
}

// A 16-bit float of `format` (0: IEEE f16, 1: bf16) as the f32 it stands for (exact in both cases).
__device__ __forceinline__ float half_bits_to_float(unsigned short bits, unsigned int format) {
    return format == 1 ? __uint_as_float(((unsigned int)bits) << 16) : __half2float(__ushort_as_half(bits));
}

// gather_rows for a data set kept at half size: data is (data_rows, cols) 16-bit floats of `format`, out is
// (out_rows, cols) f32. Twin of `gather_rows_half` in src/backend/cpu.rs. Same launch shape as gather_rows.
extern "C" __global__ void gather_rows_half(const unsigned short* __restrict__ data,
                                            const unsigned int* __restrict__ idx, float* __restrict__ out,
                                            unsigned long long out_rows, unsigned long long cols,
                                            unsigned long long data_rows, unsigned int format) {
    for (unsigned long long r = blockIdx.y; r < out_rows; r += gridDim.y) {
        const unsigned long long src_row = idx[r];
        const bool ok = src_row < data_rows;
        const unsigned short* src = data + src_row * cols;
        float* dst = out + r * cols;
        for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (unsigned long long)blockDim.x * gridDim.x) {
            dst[c] = ok ? half_bits_to_float(src[c], format) : __int_as_float(0x7fc00000);
        }
    }
}
