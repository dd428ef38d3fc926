// Shared by every kernel file: activation codes and the two activation functions.
//
// The codes are `Activation::code()` in src/activation.rs; the functions are the twins of
// `Activation::forward` and `Activation::grad_from_output` there and must compute the same thing.
//
// Rounding: the build never passes --use_fast_math, so expf/tanhf are the accurate (<= 2 ulp) versions and
// division is IEEE. Where a product feeds a sum, `__fmul_rn` keeps nvcc from contracting the two into one
// fused multiply-add, so the result is rounded exactly like the CPU's (Rust never contracts).
#pragma once

#define ACT_LINEAR 0u
#define ACT_RELU 1u
#define ACT_TANH 2u
#define ACT_SIGMOID 3u

// y = f(z). An unknown code behaves as linear (the host only ever passes 0..=3).
__device__ __forceinline__ float apply_activation(float z, unsigned int act) {
    switch (act) {
        case ACT_RELU:
            return z > 0.0f ? z : 0.0f;  // NaN > 0 is false: relu(NaN) = 0, as on the CPU
        case ACT_TANH:
            return tanhf(z);
        case ACT_SIGMOID:
            return 1.0f / (1.0f + expf(-z));
        default:
            return z;
    }
}

// f'(z) written in terms of the output y = f(z): relu'(0) = 0 (as TensorFlow), tanh' = 1 - y², sigmoid' =
// y(1 - y).
__device__ __forceinline__ float activation_grad_from_output(float y, unsigned int act) {
    switch (act) {
        case ACT_RELU:
            return y > 0.0f ? 1.0f : 0.0f;
        case ACT_TANH:
            return 1.0f - __fmul_rn(y, y);  // not fmaf(-y, y, 1): round y² first, like the CPU
        case ACT_SIGMOID:
            return y * (1.0f - y);
        default:
            return 1.0f;
    }
}

// Grid-stride loop over [0, n) with a 64-bit index (buffers may exceed 2^31 elements).
#define GRID_STRIDE_LOOP(i, n)                                                                   \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (unsigned long long)blockDim.x * gridDim.x)
