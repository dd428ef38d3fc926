// The element-wise kernels of kernels/elementwise.cu (bias_act, act_backward, fill), compiled for the CPU
// through cuda_on_cpu.h, launched as src/backend/cuda/elementwise.rs launches them (grid_1d: 256 threads a
// block, at most MAX_BLOCKS blocks; smaller caps stand in for MAX_BLOCKS so that a few blocks walk the
// grid-stride loop) and checked against their contract:
//   - bias_act: z = f(z + bias[i % cols]). The float sum is exact to transcribe; linear and relu are then
//     compared bit for bit, tanh and sigmoid against f64 with rtol 4e-7 (tanhf/expf are within 2 ulp, the
//     sigmoid's add and divide round twice more: at most ~3.5 ulp = 4.2e-7 of the result).
//   - act_backward: grad *= f'(y), the same float operations as the CPU twin (no contraction, see
//     common.cuh): bit for bit.
//   - fill: bit for bit, NaN payloads included.
// Every buffer has PAD guard floats on both sides holding a NaN with a payload (Padded, check_util.h): a
// read past the region gives NaN (and a mismatch), a write past it changes the guard's bits. Built and run by
// tests/kernels_on_cpu.rs; exits non-zero after printing every failure.
#include "elementwise.cu"
#include "check_util.h"

namespace {

// The host side of each op (src/backend/cuda/elementwise.rs), with the grid cap as a parameter.
void host_bias_act(float* z, size_t n, size_t cols, const float* bias, unsigned int act, size_t cap) {
    if (n == 0) {
        return;
    }
    launch(bias_act, grid_1d(n, cap), dim3(THREADS), z, bias, (unsigned long long)n, (unsigned long long)cols, act);
}
void host_act_backward(float* grad, const float* y, size_t n, unsigned int act, size_t cap) {
    if (act == ACT_LINEAR || n == 0) {
        return;
    }
    launch(act_backward, grid_1d(n, cap), dim3(THREADS), grad, y, (unsigned long long)n, act);
}
void host_fill(float* dst, size_t n, float value, size_t cap) {
    if (n == 0) {
        return;
    }
    launch(fill, grid_1d(n, cap), dim3(THREADS), dst, (unsigned long long)n, value);
}

double activate(double z, unsigned int act) {
    switch (act) {
        case ACT_RELU: return z > 0 ? z : 0;
        case ACT_TANH: return std::tanh(z);
        case ACT_SIGMOID: return 1.0 / (1.0 + std::exp(-z));
        default: return z;  // linear, and any unknown code
    }
}

// Values no random draw gives: NaN, infinities, signed zeros, saturating magnitudes.
const float SPECIALS[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 50.0f, -50.0f, 1e-30f};

void check_bias_act(size_t rows, size_t cols, unsigned int act, size_t cap) {
    const size_t n = rows * cols;
    Padded z(n), bias(cols);
    for (size_t i = 0; i < n; ++i) z[i] = 3.0f * next_uniform();
    for (size_t j = 0; j < cols; ++j) bias[j] = next_uniform();
    if (n >= 64) {
        for (size_t s = 0; s < sizeof SPECIALS / sizeof SPECIALS[0]; ++s) z[(s * 7919) % n] = SPECIALS[s];
    }
    const Padded z0 = z;
    host_bias_act(z.data(), n, cols, bias.data(), act, cap);
    const bool exact = act != ACT_TANH && act != ACT_SIGMOID;
    for (size_t i = 0; i < n; ++i) {
        const float sum = z0[i] + bias[i % cols];  // the kernel's float add
        const double want = activate(sum, act);
        const float got = z[i];
        ++checked;
        bool ok;
        if (exact || std::isnan(want) || std::isinf(want)) {
            ok = exact ? same(got, (float)want) : (std::isnan(want) ? std::isnan(got) : (double)got == want);
        } else {
            ok = std::fabs((double)got - want) <= 1e-37 + 4e-7 * std::fabs(want);
        }
        if (!ok) {
            fail("bias_act rows=%zu cols=%zu act=%u cap=%zu at %zu: f(%.9g + %.9g) = %.9g, want %.9g", rows, cols, act,
                 cap, i, z0[i], bias[i % cols], got, want);
        }
    }
    check_guards("bias_act z", z);
    check_guards("bias_act bias", bias);
}

// direct: launch even for linear, which the host skips (the kernel's own default branch).
void check_act_backward(size_t n, unsigned int act, size_t cap, bool direct) {
    Padded grad(n), y(n);
    for (size_t i = 0; i < n; ++i) {
        grad[i] = 2.0f * next_uniform();
        y[i] = next_uniform();
        if (act == ACT_SIGMOID) y[i] = 0.5f + 0.5f * y[i];
    }
    if (n >= 64) {
        y[3] = 0.0f;   // relu'(0) = 0
        y[10] = -0.0f;
        y[17] = NAN;
        grad[24] = INFINITY;
        y[24] = 0.5f;
    }
    const Padded grad0 = grad;
    if (direct) {
        launch(act_backward, grid_1d(n, cap), dim3(THREADS), grad.data(), (const float*)y.data(), (unsigned long long)n,
               act);
    } else {
        host_act_backward(grad.data(), y.data(), n, act, cap);
    }
    for (size_t i = 0; i < n; ++i) {
        const float want = grad0[i] * grad_from_output(y[i], act);
        ++checked;
        if (!same(grad[i], want)) {
            fail("act_backward n=%zu act=%u cap=%zu direct=%d at %zu: %.9g * f'(%.9g) = %.9g, want %.9g", n, act, cap,
                 direct, i, grad0[i], y[i], grad[i], want);
        }
    }
    check_guards("act_backward grad", grad);
    check_guards("act_backward y", y);
}

void check_fill(size_t n, float value, size_t cap) {
    Padded dst(n);
    for (size_t i = 0; i < n; ++i) dst[i] = next_uniform();
    host_fill(dst.data(), n, value, cap);
    for (size_t i = 0; i < n; ++i) {
        ++checked;
        if (bits_of(dst[i]) != bits_of(value)) {
            fail("fill n=%zu value=%.9g cap=%zu at %zu: %.9g", n, value, cap, i, dst[i]);
        }
    }
    check_guards("fill", dst);
}

}  // namespace

int main() {
    seed_rng(2024u);
    const unsigned int acts[] = {ACT_LINEAR, ACT_RELU, ACT_TANH, ACT_SIGMOID, 7u /* unknown: linear */};
    // (rows, cols, cap): one element; one row; cols not dividing 256; exactly one block; a row wider than a
    // block; one column; capped grids of 1 and 3 blocks over many blocks' worth of elements.
    const size_t shapes[][3] = {
        {1, 1, MAX_BLOCKS}, {1, 7, MAX_BLOCKS},   {3, 5, MAX_BLOCKS},  {17, 33, MAX_BLOCKS}, {16, 16, MAX_BLOCKS},
        {1, 300, MAX_BLOCKS}, {257, 1, MAX_BLOCKS}, {40, 100, 3},      {29, 31, 1},          {0, 4, MAX_BLOCKS},
    };
    for (const auto& s : shapes) {
        for (unsigned int act : acts) {
            check_bias_act(s[0], s[1], act, s[2]);
        }
    }
    const size_t sizes[][2] = {{0, MAX_BLOCKS}, {1, MAX_BLOCKS}, {255, MAX_BLOCKS}, {256, MAX_BLOCKS},
                               {257, MAX_BLOCKS}, {1500, MAX_BLOCKS}, {1000, 1}, {2049, 3}};
    for (const auto& s : sizes) {
        for (unsigned int act : {ACT_LINEAR, ACT_RELU, ACT_TANH, ACT_SIGMOID}) {
            check_act_backward(s[0], act, s[1], false);
        }
        check_act_backward(s[0], ACT_LINEAR, s[1], true);
        check_fill(s[0], next_uniform(), s[1]);
    }
    check_fill(300, 0.0f, MAX_BLOCKS);
    check_fill(300, -0.0f, 2);
    check_fill(300, INFINITY, MAX_BLOCKS);
    check_fill(300, from_bits(0x7fc01234u), MAX_BLOCKS);  // a NaN with a payload is copied as it is
    return report("elementwise_checks", "elements");
}
