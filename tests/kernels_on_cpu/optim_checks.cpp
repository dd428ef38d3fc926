// The optimizer updates of kernels/optim.cu (sgd_step, adam_step), compiled for the CPU through cuda_on_cpu.h
// and launched as src/backend/cuda/optim.rs launches them (grid_1d: 256 threads a block, at most MAX_BLOCKS
// blocks; smaller caps stand in for MAX_BLOCKS so that a few blocks walk the grid-stride loop; nothing is
// launched for n == 0). Each case runs several steps on the same state. The kernels round every operation by
// itself (__fmul_rn/__fadd_rn, IEEE sqrtf and '/'), so after every step w, v (and Adam's m) must equal, bit
// for bit, a C++ transcription of the CPU twins (`sgd_step` in src/backend/cpu/optim.rs, `adam_generic` in
// src/backend/cpu/fast_math.rs) in their operation order. Every buffer has NaN guards on both sides. Built
// and run by tests/kernels_on_cpu.rs; exits non-zero after printing every failure.
#include "optim.cu"
#include "check_util.h"

static_assert(sizeof(AdamConfig) == 12, "KernelAdamConfig of src/backend/cuda/launch.rs: three f32");

namespace {

void compare(const char* what, size_t n, size_t cap, int step, const Padded& got, const std::vector<float>& want) {
    for (size_t i = 0; i < n; ++i) {
        ++checked;
        if (!same(got[i], want[i])) {
            fail("%s n=%zu cap=%zu step=%d at %zu: %.9g (0x%08x), want %.9g (0x%08x)", what, n, cap, step, i, got[i],
                 bits_of(got[i]), want[i], bits_of(want[i]));
        }
    }
}

// sgd_step and adam_step of src/backend/cuda/optim.rs, with the grid cap as a parameter (MAX_BLOCKS there).
void host_sgd_step(float* w, const float* g, float* v, size_t n, float lr, float momentum, size_t cap) {
    if (n == 0) {
        return;
    }
    launch(sgd_step, grid_1d(n, cap), dim3(THREADS), w, g, v, (unsigned long long)n, lr, momentum);
}
void host_adam_step(float* w, const float* g, float* m, float* v, size_t n, const float* alpha, AdamConfig cfg,
                    size_t cap) {
    if (n == 0) {
        return;
    }
    launch(adam_step, grid_1d(n, cap), dim3(THREADS), w, g, m, v, (unsigned long long)n, alpha, cfg);
}

// Gradients for one step: mostly [-s, s), and now and then 0, a huge value (whose square overflows to inf)
// or a tiny one.
void gradients(Padded& g, float s) {
    for (size_t i = 0; i < g.size(); ++i) g[i] = s * next_uniform();
    const float specials[] = {0.0f, -0.0f, 1e20f, -3e19f, 1e-30f};
    if (g.size() >= 64) {
        for (size_t k = 0; k < 5; ++k) g[(k * 37 + 11) % g.size()] = specials[k];
    }
}

void check_sgd(size_t n, float lr, float momentum, size_t cap) {
    Padded w(n), g(n), v(n);
    std::vector<float> want_w(n), want_v(n);
    for (size_t i = 0; i < n; ++i) {
        want_w[i] = w[i] = next_uniform();
        want_v[i] = v[i] = momentum == 0.0f ? 0.0f : 0.1f * next_uniform();
    }
    for (int step = 1; step <= 3; ++step) {
        gradients(g, 1.0f);
        host_sgd_step(w.data(), g.data(), v.data(), n, lr, momentum, cap);
        // CpuBackend::sgd_step: *v = -(g * lr) + *v * momentum; *w += *v.
        for (size_t i = 0; i < n; ++i) {
            want_v[i] = -(g[i] * lr) + want_v[i] * momentum;
            want_w[i] += want_v[i];
        }
        compare("sgd_step w", n, cap, step, w, want_w);
        compare("sgd_step v", n, cap, step, v, want_v);
    }
    check_guards("sgd_step w", w);
    check_guards("sgd_step g", g);
    check_guards("sgd_step v", v);
}

void check_adam(size_t n, float lr, float beta1, float beta2, float epsilon, bool fresh, size_t cap) {
    Padded w(n), g(n), m(n), v(n);
    std::vector<float> want_w(n), want_m(n), want_v(n);
    for (size_t i = 0; i < n; ++i) {
        want_w[i] = w[i] = next_uniform();
        want_m[i] = m[i] = fresh ? 0.0f : 0.1f * next_uniform();
        want_v[i] = v[i] = fresh ? 0.0f : 0.01f * (1.0f + next_uniform());
    }
    for (int step = 1; step <= 3; ++step) {
        gradients(g, 0.5f);
        // Optimizer::adam_step of src/optim.rs (in f32, as TensorFlow); the same value goes to both sides.
        const float t = (float)step;
        const float alpha = lr * std::sqrt(1.0f - std::pow(beta2, t)) / (1.0f - std::pow(beta1, t));
        // alpha lives in device memory (one float, as Network::optimizer_step's slot of step_alphas).
        Padded alpha_at(1);
        alpha_at[0] = alpha;
        host_adam_step(w.data(), g.data(), m.data(), v.data(), n, alpha_at.data(), AdamConfig{beta1, beta2, epsilon},
                       cap);
        check_guards("adam_step alpha", alpha_at);
        // adam_generic of src/backend/cpu/fast_math.rs.
        const float one_minus_b1 = 1.0f - beta1;
        const float one_minus_b2 = 1.0f - beta2;
        for (size_t i = 0; i < n; ++i) {
            const float gi = g[i];
            want_m[i] += (gi - want_m[i]) * one_minus_b1;
            want_v[i] += (gi * gi - want_v[i]) * one_minus_b2;
            want_w[i] -= (want_m[i] * alpha) / (std::sqrt(want_v[i]) + epsilon);
        }
        compare("adam_step w", n, cap, step, w, want_w);
        compare("adam_step m", n, cap, step, m, want_m);
        compare("adam_step v", n, cap, step, v, want_v);
    }
    check_guards("adam_step w", w);
    check_guards("adam_step g", g);
    check_guards("adam_step m", m);
    check_guards("adam_step v", v);
}

}  // namespace

int main() {
    seed_rng(31337u);
    // (n, cap): empty (nothing launched), one element, around one block, several blocks, capped grids of 1
    // and 3 blocks over many blocks' worth of elements.
    const size_t cases[][2] = {{0, MAX_BLOCKS},   {1, MAX_BLOCKS},    {255, MAX_BLOCKS}, {256, MAX_BLOCKS},
                               {257, MAX_BLOCKS}, {3000, MAX_BLOCKS}, {1000, 1},         {2049, 3}};
    for (const auto& c : cases) {
        check_sgd(c[0], 0.01f, 0.0f, c[1]);
        check_sgd(c[0], 0.01f, 0.9f, c[1]);
        check_sgd(c[0], 0.3f, 0.99f, c[1]);
        // Keras's defaults from zero state (the first steps of training), and other values from a warm state.
        check_adam(c[0], 0.001f, 0.9f, 0.999f, 1e-7f, true, c[1]);
        check_adam(c[0], 0.01f, 0.5f, 0.9f, 1e-3f, false, c[1]);
    }
    return report("optim_checks", "values");
}
