// Element-wise kernels of the forward and backward pass, and `fill`. Twins of `bias_act`, `act_backward` and
// `fill` in src/backend/cpu/elementwise.rs. Launched from src/backend/cuda/elementwise.rs with 256 threads
// per block and a capped grid; every kernel is a grid-stride loop, so any grid size is correct.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/elementwise.cu -o elementwise.ptx
#include "common.cuh"

// z is (rows, cols) with n = rows·cols, bias is (cols): z[r, c] = f(z[r, c] + bias[c]) in place.
extern "C" __global__ void bias_act(float* __restrict__ z, const float* __restrict__ bias,
                                    unsigned long long n, unsigned long long cols, unsigned int act) {
    GRID_STRIDE_LOOP(i, n) {
        z[i] = apply_activation(z[i] + bias[i % cols], act);
    }
}

// grad and y are (n): grad[i] *= f'(y[i]), with y = f(z) the layer's output.
extern "C" __global__ void act_backward(float* __restrict__ grad, const float* __restrict__ y,
                                        unsigned long long n, unsigned int act) {
    GRID_STRIDE_LOOP(i, n) {
        grad[i] = grad[i] * activation_grad_from_output(y[i], act);
    }
}

// dst is (n): dst[i] = value.
extern "C" __global__ void fill(float* __restrict__ dst, unsigned long long n, float value) {
    GRID_STRIDE_LOOP(i, n) {
        dst[i] = value;
    }
}
