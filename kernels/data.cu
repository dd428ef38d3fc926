// Batch assembly on the device. Twin of `gather_rows` in src/backend/cpu.rs.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/data.cu -o data.ptx
#include "common.cuh"

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
