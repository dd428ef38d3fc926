// What the kernel checks tests/kernels_on_cpu/*_checks.cpp share (gemm_checks.cpp keeps its own): the
// backend's launch constants and grid_1d, a seeded random generator, bit-level float comparison, the failure
// and check counters and the summary line, guarded buffers, and two references that several programs check
// against (the CPU twin's f'(y), and the sum of float squares that mse_finalize ends with). Each program
// includes it after its kernel file(s), seeds the generator first thing in main and ends with report(). A
// program is one translation unit, so everything here is `inline`.
//   - Padded: PAD guard floats on both sides of every buffer, holding a NaN with a payload (GUARD_BITS): a
//     read past the region gives NaN (and a mismatch), a write past it changes a guard's bits (check_guards).
//   - fail() prints the first 30 failures and counts them all; report() prints the summary line and gives
//     the exit code (non-zero after any failure).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.cuh"  // the activation codes (ACT_*), for grad_from_output

// src/backend/cuda/launch.rs: THREADS (a block of grid_1d and of gather_config) and MAX_BLOCKS (the cap of
// grid_1d, column_grid and col_sum's grid).
constexpr unsigned int THREADS = 256;
constexpr size_t MAX_BLOCKS = 4096;

// grid_1d of src/backend/cuda/launch.rs: n.div_ceil(THREADS).clamp(1, MAX_BLOCKS) blocks of THREADS threads;
// `cap` stands in for MAX_BLOCKS (smaller caps make a few blocks walk the grid-stride loop).
inline dim3 grid_1d(size_t n, size_t cap) {
    return dim3((unsigned int)std::clamp<size_t>((n + THREADS - 1) / THREADS, 1, cap));
}

// A linear congruential generator; each program seeds it with its own seed first thing in main, so its
// inputs are the same on every run.
inline unsigned int rng_state = 1u;
inline void seed_rng(unsigned int seed) { rng_state = seed; }
inline unsigned int next_u32() {
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state;
}
inline float next_uniform() {  // in [-1, 1)
    return (float)(next_u32() >> 8) / (float)(1u << 23) - 1.0f;
}
// Small integers in [-8, 8]: sums of them (and of their squares) are exact in float and double.
inline float next_integer() { return std::floor(9.0f * next_uniform()); }

inline unsigned int bits_of(float f) {
    unsigned int b;
    std::memcpy(&b, &f, 4);
    return b;
}
inline float from_bits(unsigned int b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
// Bit for bit, except that any NaN matches any NaN (the hardware may change a payload).
inline bool same(float got, float want) {
    return (std::isnan(got) && std::isnan(want)) || bits_of(got) == bits_of(want);
}

inline int failures = 0;
inline long checked = 0;

__attribute__((format(printf, 1, 2))) inline void fail(const char* fmt, ...) {
    if (++failures <= 30) {
        std::va_list args;
        va_start(args, fmt);
        std::printf("FAIL ");
        std::vprintf(fmt, args);
        std::printf("\n");
        va_end(args);
    }
}

// The last line of every program, "<program>: <checked> <what> checked, <failures> failures"; main returns
// what it returns.
inline int report(const char* program, const char* what) {
    std::printf("%s: %ld %s checked, %d failures\n", program, checked, what, failures);
    return failures == 0 ? 0 : 1;
}

constexpr size_t PAD = 32;  // guard floats on each side: a 32-column tile, what a missing bound check overruns
constexpr unsigned int GUARD_BITS = 0x7fe5a5a5u;  // a quiet NaN no kernel produces

// n floats at offset PAD of a buffer with PAD guards on both sides.
struct Padded {
    std::vector<float> buf;
    explicit Padded(size_t n) : buf(n + 2 * PAD, from_bits(GUARD_BITS)) {}
    float* data() { return buf.data() + PAD; }
    float& operator[](size_t i) { return buf[PAD + i]; }
    float operator[](size_t i) const { return buf[PAD + i]; }
    size_t size() const { return buf.size() - 2 * PAD; }
};

inline void check_guards(const char* what, const Padded& p) {
    for (size_t i = 0; i < p.buf.size(); ++i) {
        if ((i < PAD || i >= PAD + p.size()) && bits_of(p.buf[i]) != GUARD_BITS) {
            fail("%s: guard %zu of %zu (n=%zu) overwritten with %.9g", what, i, p.buf.size(), p.size(), p.buf[i]);
        }
    }
}

// The CPU twin's f'(y) (Activation::grad_from_output in src/activation.rs), in float: the reference of
// act_backward and mse_backward (written out here, not taken from common.cuh, so the kernels' own
// activation_grad_from_output is checked rather than trusted).
inline float grad_from_output(float y, unsigned int act) {
    switch (act) {
        case ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
        case ACT_TANH: return 1.0f - y * y;
        case ACT_SIGMOID: return y * (1.0f - y);
        default: return 1.0f;
    }
}

// Σ (double)(x·x), the float squares widened and summed in double (the loss of mse_backward and sum_squares,
// both summed by mse_finalize), over n copies of TIE = 1 + 2⁻¹²: TIE² = 1 + 2⁻¹¹ + 2⁻²⁴ rounds (a tie, to
// even) to 1 + 2⁻¹¹ in float, and every partial sum k·(1 + 2⁻¹¹) is exact in double whatever the order, so
// the result is known to the bit, and differs from the one of double squares. Checks a kernel's result `got`.
constexpr float TIE = 1.0f + 1.0f / 4096.0f;
inline void check_sum_of_tie_squares(const char* what, size_t n, float got) {
    const float want = (float)((double)n * (double)(TIE * TIE));
    const float double_squares = (float)((double)n * ((double)TIE * (double)TIE));
    ++checked;
    if (want == double_squares) {
        fail("%s n=%zu: the case cannot tell float squares from double ones", what, n);
    }
    if (bits_of(got) != bits_of(want)) {
        fail("%s n=%zu: %.9g, want %.9g (double squares would give %.9g)", what, n, got, want, double_squares);
    }
}
