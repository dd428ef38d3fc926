// Optimizer updates over the flat parameter buffer: one launch updates every parameter of the model. Twins of
// `sgd_step` and `adam_step` in src/backend/cpu/optim.rs, written in the same (Keras) operation order.
// `__fmul_rn` and `__fadd_rn` are never contracted into fused multiply-adds, so every step is rounded exactly
// like the CPU's: with the same inputs the two backends produce the same bits.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/optim.cu -o optim.ptx
#include "common.cuh"

// w, g, v are (n): v = -(g·lr) + v·momentum; w += v.
extern "C" __global__ void sgd_step(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ v,
                                    unsigned long long n, float lr, float momentum) {
    GRID_STRIDE_LOOP(i, n) {
        const float vi = __fadd_rn(-__fmul_rn(g[i], lr), __fmul_rn(v[i], momentum));
        v[i] = vi;
        w[i] = __fadd_rn(w[i], vi);
    }
}

// Adam's constants, passed by value; the layout of `KernelAdamConfig` in src/backend/cuda/launch.rs
// (#[repr(C)]).
struct AdamConfig {
    float beta1;
    float beta2;
    float epsilon;
};

// w, g, m, v are (n), alpha is (1): m += (g - m)(1 - beta1); v += (g² - v)(1 - beta2);
// w = w - (m·alpha)/(sqrt(v) + eps). alpha = lr·sqrt(1 - beta2^t)/(1 - beta1^t), the one value that changes
// from step to step, is computed on the host and read from device memory, so that the launch itself is the
// same at every step and a captured CUDA graph can replay it.
extern "C" __global__ void adam_step(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                                     float* __restrict__ v, unsigned long long n, const float* __restrict__ alpha_at,
                                     AdamConfig cfg) {
    const float alpha = *alpha_at;
    const float one_minus_b1 = 1.0f - cfg.beta1;
    const float one_minus_b2 = 1.0f - cfg.beta2;
    GRID_STRIDE_LOOP(i, n) {
        const float gi = g[i];
        const float mi = __fadd_rn(m[i], __fmul_rn(gi - m[i], one_minus_b1));
        const float vi = __fadd_rn(v[i], __fmul_rn(__fmul_rn(gi, gi) - v[i], one_minus_b2));
        m[i] = mi;
        v[i] = vi;
        // sqrtf and '/' are IEEE round-to-nearest without --use_fast_math (nvcc's -prec-sqrt/-prec-div default).
        w[i] = w[i] - __fmul_rn(mi, alpha) / (sqrtf(vi) + cfg.epsilon);
    }
}
