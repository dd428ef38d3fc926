// Column sums: the bias gradients (a bias is added to every row, so its gradient is the column sum of the
// layer's output gradient). Twin of `col_sum` in src/backend/cpu/reduce.rs.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/reduce.cu -o reduce.ptx
#include "common.cuh"

#define COL_SUM_TX 32  // threads along the columns: one warp reads 32 consecutive floats of a row (coalesced)
#define COL_SUM_TY 16  // threads along the rows: each sums every 16th row, then a shared-memory tree over them

// m is (rows, cols), out is (cols): out[c] = Σ_r m[r, c] (overwritten; 0 when rows == 0).
// Launch: blockDim = (COL_SUM_TX, COL_SUM_TY); each block owns COL_SUM_TX columns at a time and strides over
// column tiles by gridDim.x, so any grid size is correct. Deterministic: a fixed order for a given launch.
extern "C" __global__ void __launch_bounds__(COL_SUM_TX * COL_SUM_TY)
col_sum(const float* __restrict__ m, float* __restrict__ out, unsigned long long rows, unsigned long long cols) {
    __shared__ float shared[COL_SUM_TY][COL_SUM_TX + 1];
    const unsigned int tx = threadIdx.x;
    const unsigned int ty = threadIdx.y;
    // The loop bounds depend only on blockIdx/gridDim, so every thread of a block reaches every __syncthreads.
    for (unsigned long long c0 = (unsigned long long)blockIdx.x * COL_SUM_TX; c0 < cols;
         c0 += (unsigned long long)gridDim.x * COL_SUM_TX) {
        const unsigned long long c = c0 + tx;
        float sum = 0.0f;
        if (c < cols) {
            for (unsigned long long r = ty; r < rows; r += COL_SUM_TY) {
                sum += m[r * cols + c];
            }
        }
        shared[ty][tx] = sum;
        __syncthreads();
        for (unsigned int s = COL_SUM_TY / 2; s > 0; s >>= 1) {
            if (ty < s) {
                shared[ty][tx] += shared[ty + s][tx];
            }
            __syncthreads();
        }
        if (ty == 0 && c < cols) {
            out[c] = shared[0][tx];
        }
        // Not needed as written (only thread (0, tx) reads shared[0][tx] above, and it is the one that
        // writes it first in the next tile); kept so that an epilogue reading other slots stays race-free.
        __syncthreads();
    }
}
