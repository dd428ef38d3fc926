// Both GEMM kernels of kernels/gemm.cu, compiled for the CPU through cuda_on_cpu.h and checked against an f64
// reference of the same contract (C = alpha·op(A)·op(B) + beta·C, then f(C + bias) when a bias is given),
// and against each other: the two tilings must give the same C (see gemm.cu). Built and run by
// tests/kernels_on_cpu.rs; exits non-zero after printing every failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "gemm.cu"

namespace {

unsigned int rng_state = 12345u;
float next_uniform() {  // in [-1, 1)
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / (float)(1u << 23) - 1.0f;
}

double activate(double z, unsigned int act) {
    switch (act) {
        case ACT_RELU: return z > 0 ? z : 0;
        case ACT_TANH: return std::tanh(z);
        case ACT_SIGMOID: return 1.0 / (1.0 + std::exp(-z));
        default: return z;
    }
}

struct Case {
    int m, n, k;
    bool ta, tb;
    float alpha, beta;
    bool with_bias;
    unsigned int act;
    int misalign;        // floats by which every operand's base is shifted (1 defeats float4 loads)
    unsigned int cap;    // grid cap per dimension (small caps exercise the tile-striding loops)
    int splits = 2;      // split-K: splits requested
};

int failures = 0;
int checked = 0;

void fail(const Case& c, const char* what, int i, int j, double got, double want) {
    if (++failures <= 30) {
        std::printf("FAIL %s: m=%d n=%d k=%d ta=%d tb=%d alpha=%g beta=%g bias=%d act=%u misalign=%d cap=%u "
                    "splits=%d at (%d,%d): %.9g vs %.9g\n",
                    what, c.m, c.n, c.k, c.ta, c.tb, c.alpha, c.beta, c.with_bias, c.act, c.misalign, c.cap,
                    c.splits, i, j, got, want);
    }
}

// The host's launches (src/backend/cuda/gemm.rs, `launch_gemm`): a grid of tiles, capped; K == 0 passes
// alpha = 0. `splits` > 0 runs the split-K pair (gemm with partials, then gemm_split_reduce) with that many
// requested splits, planned as the host plans them.
void run_small(unsigned int cap, const Case& c, const float* a, const float* b, float* out, const float* bias,
               int splits) {
    const unsigned int gx = std::min<unsigned int>((c.m + BM - 1) / BM, cap);
    const unsigned int gy = std::min<unsigned int>((c.n + BN - 1) / BN, cap);
    const float alpha = c.k == 0 ? 0.0f : c.alpha;
    if (splits == 0) {
        launch(gemm, dim3(gx, gy, 1), dim3(256, 1, 1), a, b, out, c.m, c.n, c.k, (int)c.ta, (int)c.tb, alpha,
               c.beta, bias, c.act, (float*)nullptr, 0);
        return;
    }
    // k_split: the requested share of K rounded up to whole BK slices; the splits that remain non-empty.
    const int share = (c.k + splits - 1) / splits;
    const int k_split = (share + BK - 1) / BK * BK;
    const int used = (c.k + k_split - 1) / k_split;
    std::vector<float> partials((size_t)used * c.m * c.n, NAN);
    launch(gemm, dim3(gx, gy, used), dim3(256, 1, 1), a, b, out, c.m, c.n, c.k, (int)c.ta, (int)c.tb, alpha,
           c.beta, bias, c.act, partials.data(), k_split);
    const unsigned long long total = (unsigned long long)c.m * c.n;
    const unsigned int blocks = std::min<unsigned long long>((total + 255) / 256, cap);
    launch(gemm_split_reduce, dim3(blocks, 1, 1), dim3(256, 1, 1), (const float*)partials.data(), used, out,
           c.m, c.n, alpha, c.beta, bias, c.act);
}

void run_large(unsigned int cap, const Case& c, const float* a, const float* b, float* out, const float* bias) {
    const unsigned int gx = std::min<unsigned int>((c.m + LBM - 1) / LBM, cap);
    const unsigned int gy = std::min<unsigned int>((c.n + LBN - 1) / LBN, cap);
    const float alpha = c.k == 0 ? 0.0f : c.alpha;
    launch(gemm_large, dim3(gx, gy, 1), dim3(256, 1, 1), a, b, out, c.m, c.n, c.k, (int)c.ta, (int)c.tb, alpha,
           c.beta, bias, c.act);
}

void check(const Case& c) {
    const int m = c.m, n = c.n, k = c.k, off = c.misalign;
    std::vector<float> a(off + (size_t)m * k), b(off + (size_t)k * n), bias(off + n), c0(off + (size_t)m * n);
    for (auto& x : a) x = next_uniform();
    for (auto& x : b) x = next_uniform();
    for (auto& x : bias) x = next_uniform();
    for (auto& x : c0) x = next_uniform();
    if (c.beta == 0.0f) {
        for (auto& x : c0) x = NAN;  // beta == 0 must never read C
    }
    auto op_a = [&](int i, int p) { return (double)(c.ta ? a[off + (size_t)p * m + i] : a[off + (size_t)i * k + p]); };
    auto op_b = [&](int p, int j) { return (double)(c.tb ? b[off + (size_t)j * k + p] : b[off + (size_t)p * n + j]); };

    std::vector<float> small = c0, large = c0, split = c0;
    const float* bias_ptr = c.with_bias ? bias.data() + off : nullptr;
    run_small(c.cap, c, a.data() + off, b.data() + off, small.data() + off, bias_ptr, 0);
    run_large(c.cap, c, a.data() + off, b.data() + off, large.data() + off, bias_ptr);
    const bool with_split = c.k > 0;
    if (with_split) {
        run_small(c.cap, c, a.data() + off, b.data() + off, split.data() + off, bias_ptr, c.splits);
    }

    for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
            double s = 0.0, mag = 0.0;
            for (int p = 0; p < k; ++p) {
                s += op_a(i, p) * op_b(p, j);
                mag += std::fabs(op_a(i, p) * op_b(p, j));
            }
            const size_t idx = off + (size_t)i * n + j;
            double want = (k == 0 ? 0.0 : c.alpha * s) + (c.beta == 0.0f ? 0.0 : c.beta * (double)c0[idx]);
            double scale = std::fabs(c.alpha) * mag + std::fabs(c.beta) * (c.beta == 0.0f ? 0.0 : std::fabs(c0[idx]));
            if (c.with_bias) {
                want = activate(want + bias[off + j], c.act);
                scale += std::fabs(bias[off + j]);
            }
            // f32 accumulation of k products: error grows like k·eps·Σ|terms| at worst.
            const double tol = 1e-6 + 4e-7 * (k + 2) * scale;
            const double got = large[idx];
            ++checked;
            if (!(std::fabs(got - want) <= tol)) fail(c, "gemm_large vs f64", i, j, got, want);
            if (with_split && !(std::fabs(split[idx] - want) <= tol)) fail(c, "split-K vs f64", i, j, split[idx], want);
            if (!(small[idx] == large[idx])) fail(c, "gemm vs gemm_large", i, j, small[idx], large[idx]);
        }
    }
    // Nothing outside C was written (the elements before the shifted base).
    for (int x = 0; x < off; ++x) {
        for (const auto* out : {&small, &large, &split}) {
            const float v = (*out)[x];
            if (!(std::isnan(c0[x]) ? std::isnan(v) : v == c0[x])) fail(c, "write before C", x, 0, v, c0[x]);
        }
    }
}

}  // namespace

int main() {
    const int shapes[][3] = {
        {1, 1, 1},     {1, 1, 0},     {7, 5, 3},      {4, 4, 4},      {16, 51, 1},    {51, 16, 9},
        {64, 64, 16},  {65, 63, 17},  {128, 128, 8},  {127, 129, 12}, {130, 260, 33}, {256, 64, 20},
        {64, 256, 20}, {200, 132, 24}, {257, 131, 5}, {3, 300, 7},   {300, 3, 7},    {70, 40, 100},
        {33, 65, 200},
    };
    const unsigned int acts[] = {ACT_LINEAR, ACT_RELU, ACT_TANH, ACT_SIGMOID};
    int variant = 0;
    for (const auto& s : shapes) {
        for (int t = 0; t < 4; ++t) {
            Case c{s[0], s[1], s[2], (t & 1) != 0, (t & 2) != 0, 1.0f, 0.0f, false, ACT_LINEAR, 0, 65535u};
            // Rotate through the other parameters so every shape and orientation sees several of them.
            switch (variant++ % 5) {
                case 0: break;
                case 1: c.alpha = 0.5f; c.beta = 1.0f; break;
                case 2: c.alpha = -2.0f; c.beta = 0.25f; c.misalign = 1; break;
                case 3: c.with_bias = true; c.act = acts[variant % 4]; c.misalign = 1; break;
                case 4: c.with_bias = true; c.act = acts[variant % 4]; c.cap = 1; break;
            }
            c.splits = 2 + variant % 5;  // 2..6, more than K has slices for the small K
            check(c);
            // Every shape once more with a small grid and, separately, shifted operands.
            if (t == 0) {
                Case capped = c;
                capped.cap = 2;
                check(capped);
                Case shifted = c;
                shifted.misalign = 3;
                check(shifted);
            }
        }
    }
    std::printf("gemm_checks: %d elements checked, %d failures\n", checked, failures);
    return failures == 0 ? 0 : 1;
}
