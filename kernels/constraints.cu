// The small ops of the PCA-principle constraints (src/train/constraints.rs). Twins of `diagonal_affine`,
// `sum_squares`, `div_by_sqrt`, `normalize_columns` and `center_columns` in src/backend/cpu/constraints.rs.
// The matrix products of the constraints (WᵀW, W·G, Hcᵀ·Hc, Hc·C) are the GEMM of gemm.cu; these kernels only
// do what a GEMM cannot: touch a diagonal, reduce to a norm that stays in device memory, and scale by it.
//
// Every reduction is deterministic (a fixed order for a given launch, no atomics) and sums the float values
// (or their float squares) in double, then rounds once, like the CPU twins.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/constraints.cu -o constraints.ptx
#include "common.cuh"

// sum_squares_partials writes one double per block; `mse_finalize` of loss.cu sums them, so the block size
// is MSE_THREADS of loss.cu and the grid at most MSE_MAX_BLOCKS (both in src/backend/cuda/launch.rs).
#define SUM_SQUARES_THREADS 256
// normalize_columns and center_columns: COLUMN_TX threads along the columns (one warp reads 32 consecutive
// floats of a row), COLUMN_TY along the rows; must match COLUMN_BLOCK in src/backend/cuda/launch.rs.
#define COLUMN_TX 32
#define COLUMN_TY 16

// m is (n, n): m[i, i] = scale·m[i, i] + shift; scale == 0 does not read m[i, i]. Grid-stride over i.
extern "C" __global__ void diagonal_affine(float* __restrict__ m, unsigned long long n, float scale,
                                           float shift) {
    GRID_STRIDE_LOOP(i, n) {
        float* d = m + i * (n + 1);
        *d = scale == 0.0f ? shift : __fadd_rn(__fmul_rn(scale, *d), shift);
    }
}

// x is (n), partials is (gridDim.x); blockDim.x == SUM_SQUARES_THREADS. partials[b] = Σ over the elements of
// block b of (double)(x[i]·x[i]); `mse_finalize` (loss.cu) then writes their sum as one float.
extern "C" __global__ void __launch_bounds__(SUM_SQUARES_THREADS)
sum_squares_partials(const float* __restrict__ x, double* __restrict__ partials, unsigned long long n) {
    __shared__ double shared[SUM_SQUARES_THREADS];
    double sum = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        sum += (double)__fmul_rn(v, v);  // the float square, as the CPU's (v·v).to_f64()
    }
    const unsigned int tid = threadIdx.x;
    shared[tid] = sum;
    __syncthreads();
    for (unsigned int stride = SUM_SQUARES_THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            shared[tid] += shared[tid + stride];
        }
        __syncthreads();
    }
    if (tid == 0) {
        partials[blockIdx.x] = shared[0];
    }
}

// x is (n), sum_sq is (1) and does not overlap x: x[i] /= sqrtf(sum_sq[0]) when sum_sq[0] > 0, else x is
// left as it is. sqrtf and '/' are IEEE (no --use_fast_math), as on the CPU.
extern "C" __global__ void div_by_sqrt(float* __restrict__ x, const float* __restrict__ sum_sq,
                                       unsigned long long n) {
    const float s = sum_sq[0];
    if (!(s > 0.0f)) {  // 0 (x is all zeros) or NaN: nothing to scale by; the same for every thread
        return;
    }
    const float norm = sqrtf(s);
    GRID_STRIDE_LOOP(i, n) {
        x[i] = x[i] / norm;
    }
}

// Sums `value` of the COLUMN_TY threads of a column (threadIdx.x) of a (COLUMN_TX, COLUMN_TY) block with a
// fixed tree and returns the total to every thread of that column. Every thread of the block must call it.
__device__ __forceinline__ double column_total(double value, double (*shared)[COLUMN_TX + 1]) {
    const unsigned int tx = threadIdx.x;
    const unsigned int ty = threadIdx.y;
    shared[ty][tx] = value;
    __syncthreads();
    for (unsigned int s = COLUMN_TY / 2; s > 0; s >>= 1) {
        if (ty < s) {
            shared[ty][tx] += shared[ty + s][tx];
        }
        __syncthreads();
    }
    const double total = shared[0][tx];
    __syncthreads();  // everyone has read shared[0][tx] before the next call overwrites it
    return total;
}

// m is (rows, cols), in place: m[:, c] /= ‖m[:, c]‖₂ (the float squares summed in double, the root rounded
// once to float); a zero column is left as it is.
// Launch: blockDim = (COLUMN_TX, COLUMN_TY); a block owns COLUMN_TX columns at a time and strides over
// column tiles by gridDim.x, so any grid size is correct. The loop bounds depend only on blockIdx/gridDim:
// every thread of a block reaches every barrier (threads past the last column add 0 and write nothing).
extern "C" __global__ void __launch_bounds__(COLUMN_TX * COLUMN_TY)
normalize_columns(float* __restrict__ m, unsigned long long rows, unsigned long long cols) {
    __shared__ double shared[COLUMN_TY][COLUMN_TX + 1];
    for (unsigned long long c0 = (unsigned long long)blockIdx.x * COLUMN_TX; c0 < cols;
         c0 += (unsigned long long)gridDim.x * COLUMN_TX) {
        const unsigned long long c = c0 + threadIdx.x;
        double sum = 0.0;
        if (c < cols) {
            for (unsigned long long r = threadIdx.y; r < rows; r += COLUMN_TY) {
                const float v = m[r * cols + c];
                sum += (double)__fmul_rn(v, v);
            }
        }
        const double total = column_total(sum, shared);
        if (c < cols && total > 0.0) {
            const float norm = (float)sqrt(total);
            for (unsigned long long r = threadIdx.y; r < rows; r += COLUMN_TY) {
                m[r * cols + c] = m[r * cols + c] / norm;
            }
        }
    }
}

// m and out are (rows, cols), rows >= 1, not overlapping: out[r, c] = m[r, c] − mean_c with
// mean_c = (float)(Σ_r m[r, c] / rows), summed in double. Launch as normalize_columns.
extern "C" __global__ void __launch_bounds__(COLUMN_TX * COLUMN_TY)
center_columns(const float* __restrict__ m, float* __restrict__ out, unsigned long long rows,
               unsigned long long cols) {
    __shared__ double shared[COLUMN_TY][COLUMN_TX + 1];
    for (unsigned long long c0 = (unsigned long long)blockIdx.x * COLUMN_TX; c0 < cols;
         c0 += (unsigned long long)gridDim.x * COLUMN_TX) {
        const unsigned long long c = c0 + threadIdx.x;
        double sum = 0.0;
        if (c < cols) {
            for (unsigned long long r = threadIdx.y; r < rows; r += COLUMN_TY) {
                sum += (double)m[r * cols + c];
            }
        }
        const double total = column_total(sum, shared);
        if (c < cols) {
            const float mean = (float)(total / (double)rows);
            for (unsigned long long r = threadIdx.y; r < rows; r += COLUMN_TY) {
                out[r * cols + c] = m[r * cols + c] - mean;
            }
        }
    }
}
