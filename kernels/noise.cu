// The noise of a denoising autoencoder: each cell of a training batch corrupted by swap, mask and Gaussian
// noise drawn from a counter-based generator, Philox4x32-10 keyed by the seed and counted by (column, row of
// the training set, epoch, block). Twin of src/backend/noise.rs (the generator: it explains the
// construction and the order of the noises) and of `corrupt_rows` in src/backend/cpu/noise.rs; the two give
// the same bits, which tests/kernels_on_cpu.rs and tests/gpu_kernels.rs check.
//
// Rounding: every float operation is one IEEE operation rounded to nearest, as on the CPU: a product that
// feeds a sum is `__fmul_rn` (never fused into an FMA), '/' and sqrtf are IEEE without --use_fast_math, and
// no library function is called: the logarithm and the cosine are the polynomials below, the twins of
// `ln_unit`, `cos_eighth` and `sin_eighth` there. The constants are decimal literals that both compilers
// round to the same float (the shortest decimals of those floats).
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/noise.cu -o noise.ptx
#include "half.cuh"

// Philox4x32's multipliers and key increments (Random123).
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// The noise's thresholds and sigma, passed by value; the layout of `KernelNoiseConfig` in
// src/backend/cuda/launch.rs (#[repr(C)]), the values of `NoiseParams` in src/backend/noise.rs.
struct NoiseConfig {
    unsigned int swap_below;  // swap a cell when the top 24 bits of its word are below this
    unsigned int mask_below;  // mask it likewise
    float sigma;              // Gaussian noise's standard deviation (0: none)
};

// The high 32 bits of a·b (the host harnesses have no __umulhi; nvcc makes this one mul.hi).
__device__ __forceinline__ unsigned int noise_mulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}

// Philox4x32-10 of the counter c under the key (k0, k1), in place. Twin of `philox4x32_10`.
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const unsigned int hi0 = noise_mulhi(PHILOX_M0, c[0]), lo0 = PHILOX_M0 * c[0];
        const unsigned int hi1 = noise_mulhi(PHILOX_M1, c[2]), lo1 = PHILOX_M1 * c[2];
        const unsigned int c1 = c[1], c3 = c[3];
        c[0] = hi1 ^ c1 ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c3 ^ k1;
        c[3] = lo0;
    }
}

// ln x for a normal positive x <= 1: x = m·2^e, m in [√½, √2), ln m = 2s(1 + s²/3 + s⁴/5 + s⁶/7 + s⁸/9),
// s = (m − 1)/(m + 1). Twin of `ln_unit`.
__device__ __forceinline__ float noise_ln_unit(float x) {
    const unsigned int bits = (unsigned int)__float_as_int(x);
    int e = (int)((bits >> 23) & 0xFFu) - 127;
    float m = __int_as_float((int)((bits & 0x007FFFFFu) | 0x3F800000u));
    if ((bits & 0x007FFFFFu) > 0x003504F3u) {  // m > √2: halve it (exact)
        m = __fmul_rn(m, 0.5f);
        e += 1;
    }
    const float s = (m - 1.0f) / (m + 1.0f);
    const float s2 = __fmul_rn(s, s);
    float p = 0.11111111f;
    p = __fadd_rn(__fmul_rn(p, s2), 0.14285715f);
    p = __fadd_rn(__fmul_rn(p, s2), 0.2f);
    p = __fadd_rn(__fmul_rn(p, s2), 0.33333334f);
    p = __fadd_rn(__fmul_rn(p, s2), 1.0f);
    const float ln_m = __fmul_rn(__fmul_rn(2.0f, s), p);
    const float ef = (float)e;
    // ln 2 in two parts; the high one has 16 significant bits, so e·LN2_HI is exact.
    return __fadd_rn(__fmul_rn(ef, 0.69314575f), __fadd_rn(__fmul_rn(ef, 1.4286068e-6f), ln_m));
}

// cos x on [0, π/4], Taylor to x¹⁰. Twin of `cos_eighth`.
__device__ __forceinline__ float noise_cos_eighth(float x) {
    const float x2 = __fmul_rn(x, x);
    float p = -2.755732e-7f;
    p = __fadd_rn(__fmul_rn(p, x2), 2.4801588e-5f);
    p = __fadd_rn(__fmul_rn(p, x2), -1.3888889e-3f);
    p = __fadd_rn(__fmul_rn(p, x2), 4.1666668e-2f);
    p = __fadd_rn(__fmul_rn(p, x2), -0.5f);
    return __fadd_rn(__fmul_rn(p, x2), 1.0f);
}

// sin x on [0, π/4], Taylor to x⁹. Twin of `sin_eighth`.
__device__ __forceinline__ float noise_sin_eighth(float x) {
    const float x2 = __fmul_rn(x, x);
    float p = 2.7557319e-6f;
    p = __fadd_rn(__fmul_rn(p, x2), -1.984127e-4f);
    p = __fadd_rn(__fmul_rn(p, x2), 8.333334e-3f);
    p = __fadd_rn(__fmul_rn(p, x2), -1.6666667e-1f);
    p = __fadd_rn(__fmul_rn(p, x2), 1.0f);
    return __fmul_rn(x, p);
}

// A standard normal variate from two words (Box–Muller: √(−2 ln u₁)·cos(v·π/2) with a random sign).
// Twin of `standard_normal`.
__device__ __forceinline__ float noise_standard_normal(unsigned int u, unsigned int angle) {
    const float u1 = __fmul_rn((float)((u >> 8) + 1u), 1.0f / 16777216.0f);  // (0, 1], exact
    const float radius = sqrtf(__fmul_rn(-2.0f, noise_ln_unit(u1)));
    const float v = __fmul_rn((float)(angle & 0x007FFFFFu), 1.0f / 8388608.0f);  // [0, 1), exact
    const float half_pi = 1.5707964f;
    const float c = v < 0.5f ? noise_cos_eighth(__fmul_rn(v, half_pi)) : noise_sin_eighth(__fmul_rn(1.0f - v, half_pi));
    const float z = __fmul_rn(radius, c);
    return (angle >> 31) ? -z : z;
}

// What the generator drew for one cell. Twin of `draw`.
struct NoiseDraw {
    bool swap;
    unsigned int donor;  // the training row whose value a swapped cell takes
    bool mask;
    float z;  // the standard normal of the Gaussian noise (0 without it)
};

// The draws of cell (row, col) of a training set of donor_rows rows under key = [seed_lo, seed_hi, epoch].
__device__ __forceinline__ NoiseDraw noise_draw(unsigned int row, unsigned int col, const unsigned int key[3],
                                                NoiseConfig cfg, unsigned int donor_rows) {
    NoiseDraw d;
    unsigned int b[4] = {col, row, key[2], 0u};
    philox4x32_10(b, key[0], key[1]);
    d.swap = (b[0] >> 8) < cfg.swap_below && donor_rows > 1u;
    // Uniform over the other rows: one of donor_rows − 1, skipping `row` itself.
    d.donor = d.swap ? noise_mulhi(b[1], donor_rows - 1u) : 0u;
    d.donor += (d.swap && d.donor >= row) ? 1u : 0u;
    d.mask = (b[2] >> 8) < cfg.mask_below;
    d.z = 0.0f;
    if (cfg.sigma != 0.0f) {
        unsigned int g[4] = {col, row, key[2], 1u};
        philox4x32_10(g, key[0], key[1]);
        d.z = noise_standard_normal(g[0], g[1]);
    }
    return d;
}

// The last two noises of a cell whose value after swap noise is v: mask, then Gaussian.
__device__ __forceinline__ float noise_mask_gauss(float v, NoiseDraw d, float fill, float sigma) {
    if (d.mask) v = fill;
    if (sigma != 0.0f) v = __fadd_rn(v, __fmul_rn(sigma, d.z));
    return v;
}

// clean and out are (rows, cols), idx is (rows) u32: the training row each batch row holds; donors is the
// training set (donor_rows, cols); fill is (cols); key is (3) u32 [seed_lo, seed_hi, epoch] in device
// memory, so that a recorded graph reads the key of the epoch it is replayed in. out = clean with swap, then
// mask, then Gaussian noise (see src/backend/noise.rs). A donor is always < donor_rows, whatever idx holds.
// Launch: as gather_rows (kernels/data.cu): blockDim.x threads walk the columns of a row, blockIdx.x/gridDim.x
// split a row wider than a block, blockIdx.y strides over the rows (gridDim.y <= 65535).
extern "C" __global__ void corrupt_rows(const float* __restrict__ clean, const float* __restrict__ donors,
                                        const unsigned int* __restrict__ idx, const float* __restrict__ fill,
                                        const unsigned int* __restrict__ key_at, float* __restrict__ out,
                                        unsigned long long rows, unsigned long long cols, unsigned int donor_rows,
                                        NoiseConfig cfg) {
    const unsigned int key[3] = {key_at[0], key_at[1], key_at[2]};
    for (unsigned long long r = blockIdx.y; r < rows; r += gridDim.y) {
        const unsigned int row = idx[r];
        for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (unsigned long long)blockDim.x * gridDim.x) {
            const NoiseDraw d = noise_draw(row, (unsigned int)c, key, cfg, donor_rows);
            const float v = d.swap ? donors[(unsigned long long)d.donor * cols + c] : clean[r * cols + c];
            out[r * cols + c] = noise_mask_gauss(v, d, fill[c], cfg.sigma);
        }
    }
}

// corrupt_rows for a training set kept as 16-bit floats of `format` (HALF_FORMAT_*): donors are converted
// exactly as they are read. Same launch shape.
extern "C" __global__ void corrupt_rows_half(const float* __restrict__ clean,
                                             const unsigned short* __restrict__ donors,
                                             const unsigned int* __restrict__ idx, const float* __restrict__ fill,
                                             const unsigned int* __restrict__ key_at, float* __restrict__ out,
                                             unsigned long long rows, unsigned long long cols,
                                             unsigned int donor_rows, NoiseConfig cfg, unsigned int format) {
    const unsigned int key[3] = {key_at[0], key_at[1], key_at[2]};
    for (unsigned long long r = blockIdx.y; r < rows; r += gridDim.y) {
        const unsigned int row = idx[r];
        for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (unsigned long long)blockDim.x * gridDim.x) {
            const NoiseDraw d = noise_draw(row, (unsigned int)c, key, cfg, donor_rows);
            const float v = d.swap ? half_bits_to_float(donors[(unsigned long long)d.donor * cols + c], format)
                                   : clean[r * cols + c];
            out[r * cols + c] = noise_mask_gauss(v, d, fill[c], cfg.sigma);
        }
    }
}
