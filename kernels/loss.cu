// The MSE loss and its gradient taken through the output activation. Twin of `mse_backward` in
// src/backend/cpu/loss.rs: grad = 2/count·(pred − target)·f'(pred) and loss[0] = Σ (pred − target)²
// (overwritten).
//
// The sum is deterministic (same bits on every run, no atomics, no prior memset) and done in two launches on
// one stream:
//   1. mse_backward: a grid of at most MSE_MAX_BLOCKS blocks of MSE_THREADS threads. Each thread writes its
//      gradients and sums its squared errors in double; each block reduces its threads' sums with a
//      shared-memory tree and writes partials[blockIdx.x].
//   2. mse_finalize: one block of MSE_THREADS threads sums the `num_partials` partials (again a fixed tree)
//      and writes loss[0] as float. With num_partials == 0 (an empty batch) it writes 0.
// `partials` is the backend's own scratch buffer of MSE_MAX_BLOCKS doubles; stream order makes reusing it
// safe; `sum_squares` (constraints.cu) writes its per-block partials there too and ends with mse_finalize.
// The two constants must match MSE_THREADS / MSE_MAX_BLOCKS in src/backend/cuda/launch.rs.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/loss.cu -o loss.ptx
#include "common.cuh"

#define MSE_THREADS 256
#define MSE_MAX_BLOCKS 1024

// Tree reduction of one double per thread over a block of exactly MSE_THREADS threads; the result is valid in
// thread 0. Every thread of the block must call it (it contains __syncthreads).
__device__ __forceinline__ double block_sum(double x, double* shared) {
    const unsigned int tid = threadIdx.x;
    shared[tid] = x;
    __syncthreads();
    for (unsigned int stride = MSE_THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            shared[tid] += shared[tid + stride];
        }
        __syncthreads();
    }
    return shared[0];
}

// pred, target, grad are (n); partials is (gridDim.x), gridDim.x <= MSE_MAX_BLOCKS; blockDim.x == MSE_THREADS.
// scale = 2/count, rounded to float on the host exactly as the CPU does.
extern "C" __global__ void __launch_bounds__(MSE_THREADS)
mse_backward(const float* __restrict__ pred, const float* __restrict__ target, float* __restrict__ grad,
             double* __restrict__ partials, unsigned long long n, float scale, unsigned int act) {
    __shared__ double shared[MSE_THREADS];
    double sum = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const float p = pred[i];
        const float diff = p - target[i];
        sum += (double)__fmul_rn(diff, diff);  // the float square, as the CPU's (diff·diff).to_f64()
        grad[i] = scale * diff * activation_grad_from_output(p, act);
    }
    const double block_total = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = block_total;
    }
}

// partials is (num_partials), loss is (1); launched as one block of MSE_THREADS threads.
extern "C" __global__ void __launch_bounds__(MSE_THREADS)
mse_finalize(const double* __restrict__ partials, unsigned int num_partials, float* __restrict__ loss) {
    __shared__ double shared[MSE_THREADS];
    double sum = 0.0;
    for (unsigned int i = threadIdx.x; i < num_partials; i += blockDim.x) {
        sum += partials[i];
    }
    const double total = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        loss[0] = (float)total;
    }
}
