// The kernels of kernels/constraints.cu, compiled for the CPU through cuda_on_cpu.h and launched as
// src/backend/cuda/constraints.rs launches them, with its grid caps as parameters (smaller caps make blocks
// walk their stride loops):
//   - diagonal_affine (grid_1d over n): m[i, i] = scale·m[i, i] + shift, or shift when scale == 0 (a NaN on
//     the diagonal must not leak through); the CPU twin's float operations, so bit for bit; the rest of m
//     untouched.
//   - sum_squares: sum_squares_partials over min(⌈n/256⌉, MSE_MAX_BLOCKS) blocks, then mse_finalize of
//     loss.cu (n == 0: mse_finalize alone, writing 0). Σ (double)(x·x) rounded once to float: bit for bit
//     with integer data (every sum exact) and with copies of 1 + 2⁻¹² (whose float square is not its double
//     one), else rtol 1.2e-7 (the rounding, half an ulp, plus the order of the double additions).
//   - div_by_sqrt (grid_1d): x / sqrtf(s) when s > 0, else x unchanged (s = 0, −0, −1, NaN): bit for bit.
//   - normalize_columns and center_columns (column_grid: (COLUMN_TX, COLUMN_TY) blocks, one per COLUMN_TX
//     columns, at most MAX_BLOCKS): the CPU twins' f64 sums in another order, rounded once to float. Bit for
//     bit with integer data; else the rounded norm or mean may differ by an ulp: normalize within rtol 2.4e-7,
//     center within 1.2e-7·(|mean| + |out|). Zero columns, and columns whose float squares underflow to 0,
//     stay as they are (−0 included); a column (4095, 4086) pins the norm's single rounding (see column_data).
// Every buffer has NaN guards on both sides. Built and run by tests/kernels_on_cpu.rs; exits non-zero after
// printing every failure.
#include "constraints.cu"
#include "loss.cu"  // mse_finalize, the second launch of sum_squares
#include "check_util.h"

static_assert(SUM_SQUARES_THREADS == MSE_THREADS && MSE_THREADS == 256 && MSE_MAX_BLOCKS == 1024,
              "MSE_THREADS / MSE_MAX_BLOCKS of src/backend/cuda/launch.rs");
static_assert(COLUMN_TX == 32 && COLUMN_TY == 16, "COLUMN_BLOCK of src/backend/cuda/launch.rs");

namespace {

// column_grid of src/backend/cuda/constraints.rs (its other launch shape, grid_1d, is check_util.h's), `cap`
// standing in for MAX_BLOCKS.
dim3 column_grid(size_t cols, size_t cap) {
    return dim3((unsigned int)std::clamp<size_t>((cols + COLUMN_TX - 1) / COLUMN_TX, 1, cap));
}

// The host side of each op (src/backend/cuda/constraints.rs).
void host_diagonal_affine(float* m, size_t n, float scale, float shift, size_t cap) {
    if (n == 0) {
        return;
    }
    launch(diagonal_affine, grid_1d(n, cap), dim3(THREADS), m, (unsigned long long)n, scale, shift);
}
void host_sum_squares(const float* x, size_t n, float* out, double* partials, size_t cap) {
    const size_t blocks = std::min((n + MSE_THREADS - 1) / MSE_THREADS, cap);
    if (blocks > 0) {
        launch(sum_squares_partials, dim3((unsigned int)blocks), dim3(MSE_THREADS), x, partials, (unsigned long long)n);
    }
    launch(mse_finalize, dim3(1), dim3(MSE_THREADS), (const double*)partials, (unsigned int)blocks, out);
}
void host_div_by_sqrt(float* x, size_t n, const float* sum_sq, size_t cap) {
    if (n == 0) {
        return;
    }
    launch(div_by_sqrt, grid_1d(n, cap), dim3(THREADS), x, sum_sq, (unsigned long long)n);
}
void host_normalize_columns(float* m, size_t rows, size_t cols, size_t cap) {
    if (cols == 0 || rows * cols == 0) {
        return;
    }
    launch(normalize_columns, column_grid(cols, cap), dim3(COLUMN_TX, COLUMN_TY), m, (unsigned long long)rows,
           (unsigned long long)cols);
}
void host_center_columns(const float* m, size_t rows, size_t cols, float* out, size_t cap) {
    if (cols == 0 || rows * cols == 0) {
        return;
    }
    launch(center_columns, column_grid(cols, cap), dim3(COLUMN_TX, COLUMN_TY), m, out, (unsigned long long)rows,
           (unsigned long long)cols);
}

void check_diagonal_affine(size_t n, float scale, float shift, size_t cap) {
    Padded m(n * n);
    for (size_t i = 0; i < n * n; ++i) m[i] = next_uniform();
    if (scale == 0.0f) {
        for (size_t i = 0; i < n; ++i) m[i * (n + 1)] = NAN;  // must not be read
    }
    const Padded m0 = m;
    host_diagonal_affine(m.data(), n, scale, shift, cap);
    for (size_t i = 0; i < n * n; ++i) {
        const bool diagonal = i % (n + 1) == 0;
        const float want = !diagonal ? m0[i] : scale == 0.0f ? shift : scale * m0[i] + shift;
        ++checked;
        if (!same(m[i], want)) {
            fail("diagonal_affine n=%zu scale=%g shift=%g cap=%zu at (%zu,%zu): %.9g, want %.9g", n, scale, shift, cap,
                 i / n, i % n, m[i], want);
        }
    }
    check_guards("diagonal_affine", m);
}

void check_sum_squares(size_t n, bool integers, size_t cap) {
    Padded x(n), out(1);
    for (size_t i = 0; i < n; ++i) x[i] = integers ? next_integer() : 3.0f * next_uniform();
    std::vector<double> partials(MSE_MAX_BLOCKS, NAN);  // the backend's scratch: NaN where nothing was written
    host_sum_squares(x.data(), n, out.data(), partials.data(), cap);
    long double sum = 0.0L;
    for (size_t i = 0; i < n; ++i) sum += (double)(x[i] * x[i]);  // the float square, as the CPU twin
    const double want = (double)sum;
    const bool ok =
        integers ? bits_of(out[0]) == bits_of((float)want) : std::fabs((double)out[0] - want) <= 1.2e-7 * want;
    ++checked;
    if (!ok || (n == 0 && bits_of(out[0]) != 0u)) {
        fail("sum_squares n=%zu integers=%d cap=%zu: %.9g, want %.12g", n, integers, cap, out[0], want);
    }
    check_guards("sum_squares x", x);
    check_guards("sum_squares out", out);
}

// Float squares, not double ones: n copies of TIE (see check_util.h).
void check_sum_squares_float_squares(size_t n) {
    Padded x(n), out(1);
    for (size_t i = 0; i < n; ++i) x[i] = TIE;
    std::vector<double> partials(MSE_MAX_BLOCKS, NAN);
    host_sum_squares(x.data(), n, out.data(), partials.data(), MSE_MAX_BLOCKS);
    check_sum_of_tie_squares("sum_squares of float squares", n, out[0]);
}

void check_div_by_sqrt(size_t n, float s, size_t cap) {
    Padded x(n), sum_sq(1);
    for (size_t i = 0; i < n; ++i) x[i] = next_uniform();
    if (n >= 4) {
        x[1] = 0.0f;
        x[2] = -0.0f;
        x[3] = INFINITY;
    }
    sum_sq[0] = s;
    const Padded x0 = x;
    host_div_by_sqrt(x.data(), n, sum_sq.data(), cap);
    for (size_t i = 0; i < n; ++i) {
        const float want = s > 0.0f ? x0[i] / std::sqrt(s) : x0[i];
        ++checked;
        if (!same(x[i], want)) {
            fail("div_by_sqrt n=%zu s=%g cap=%zu at %zu: %.9g, want %.9g", n, s, cap, i, x[i], want);
        }
    }
    check_guards("div_by_sqrt x", x);
    check_guards("div_by_sqrt sum_sq", sum_sq);
}

// A rows × cols matrix: random or integer values; with rows ≥ 2 and cols ≥ 3, column 0 is zeros (−0 among
// them), column 1 is (4095, 4086, 0, …), whose norm √33464421 rounds to another float when the sum of squares
// is rounded to float first (the norm must be rounded once, from double), and column 2 holds values whose
// float squares underflow to 0.
Padded column_data(size_t rows, size_t cols, bool integers) {
    Padded m(rows * cols);
    for (size_t i = 0; i < rows * cols; ++i) m[i] = integers ? next_integer() : next_uniform();
    if (rows >= 2 && cols >= 3) {
        for (size_t r = 0; r < rows; ++r) {
            m[r * cols] = r % 2 ? -0.0f : 0.0f;
            m[r * cols + 1] = r == 0 ? 4095.0f : r == 1 ? 4086.0f : 0.0f;
            m[r * cols + 2] = r % 3 ? 1e-30f : -3e-25f;
        }
    }
    return m;
}

void check_normalize_columns(size_t rows, size_t cols, bool integers, size_t cap) {
    Padded m = column_data(rows, cols, integers);
    const Padded m0 = m;
    host_normalize_columns(m.data(), rows, cols, cap);
    for (size_t c = 0; c < cols; ++c) {
        // CpuBackend::normalize_columns.
        double sum = 0.0;
        for (size_t r = 0; r < rows; ++r) sum += (double)(m0[r * cols + c] * m0[r * cols + c]);
        const float norm = (float)std::sqrt(sum);
        for (size_t r = 0; r < rows; ++r) {
            const size_t i = r * cols + c;
            const float want = sum > 0.0 ? m0[i] / norm : m0[i];
            ++checked;
            const bool ok = integers || sum == 0.0 ? same(m[i], want)
                                                   : std::fabs((double)m[i] - want) <= 2.4e-7 * std::fabs(want);
            if (!ok) {
                fail("normalize_columns rows=%zu cols=%zu integers=%d cap=%zu at (%zu,%zu): %.9g, want %.9g", rows,
                     cols, integers, cap, r, c, m[i], want);
            }
        }
    }
    check_guards("normalize_columns", m);
}

void check_center_columns(size_t rows, size_t cols, bool integers, size_t cap) {
    const Padded m = column_data(rows, cols, integers);
    Padded m_copy = m, out(rows * cols);
    host_center_columns(m_copy.data(), rows, cols, out.data(), cap);
    for (size_t c = 0; c < cols; ++c) {
        // CpuBackend::center_columns.
        double sum = 0.0;
        for (size_t r = 0; r < rows; ++r) sum += (double)m[r * cols + c];
        const float mean = (float)(sum / (double)rows);
        for (size_t r = 0; r < rows; ++r) {
            const size_t i = r * cols + c;
            const float want = m[i] - mean;
            ++checked;
            const bool ok = integers ? same(out[i], want)
                                     : std::fabs((double)out[i] - want) <= 1.2e-7 * (std::fabs(mean) + std::fabs(want));
            if (!ok) {
                fail("center_columns rows=%zu cols=%zu integers=%d cap=%zu at (%zu,%zu): %.9g, want %.9g (mean %.9g)",
                     rows, cols, integers, cap, r, c, out[i], want, mean);
            }
            if (!same(m_copy[i], m[i])) {
                fail("center_columns rows=%zu cols=%zu: the input changed at (%zu,%zu)", rows, cols, r, c);
            }
        }
    }
    check_guards("center_columns m", m_copy);
    check_guards("center_columns out", out);
}

}  // namespace

int main() {
    seed_rng(8675309u);
    // diagonal_affine: (n, cap) × (scale, shift), scale 0 included (the diagonal is then NaN, never read).
    const size_t diag_sizes[][2] = {{0, MAX_BLOCKS}, {1, MAX_BLOCKS}, {2, MAX_BLOCKS}, {17, MAX_BLOCKS},
                                    {256, MAX_BLOCKS}, {257, MAX_BLOCKS}, {300, 1}, {520, 2}};
    const float affine[][2] = {{0.0f, 1.0f}, {0.0f, -2.5f}, {1.0f, 0.0f}, {-0.5f, 1.0f}, {3.0f, -7.25f}};
    int variant = 0;
    for (const auto& s : diag_sizes) {
        for (int k = 0; k < 2; ++k) {
            const auto& a = affine[variant++ % 5];
            check_diagonal_affine(s[0], a[0], a[1], s[1]);
        }
    }
    // sum_squares: (n, cap), random and integer data; empty; about one block; several; capped grids.
    const size_t sq_sizes[][2] = {{0, MSE_MAX_BLOCKS},   {1, MSE_MAX_BLOCKS},    {255, MSE_MAX_BLOCKS},
                                  {256, MSE_MAX_BLOCKS}, {257, MSE_MAX_BLOCKS},  {5000, MSE_MAX_BLOCKS},
                                  {3000, 1},             {4099, 3}};
    for (const auto& s : sq_sizes) {
        check_sum_squares(s[0], false, s[1]);
        check_sum_squares(s[0], true, s[1]);
    }
    check_sum_squares_float_squares(3);
    check_sum_squares_float_squares(300);
    // div_by_sqrt: every kind of s, over a few sizes and caps.
    const size_t div_sizes[][2] = {{1, MAX_BLOCKS}, {257, MAX_BLOCKS}, {1000, 2}};
    for (const auto& s : div_sizes) {
        for (float sq : {4.0f, 2.0f, 1e-30f, 0.0f, -0.0f, -1.0f, (float)NAN, (float)INFINITY}) {
            check_div_by_sqrt(s[0], sq, s[1]);
        }
    }
    check_div_by_sqrt(0, 4.0f, MAX_BLOCKS);
    // The column kernels: (rows, cols, cap): no rows or no columns (nothing launched); one element; one row;
    // around one tile of columns and of COLUMN_TY rows; one column; a partial last tile; tiles walked by capped
    // grids of 1 and 2 blocks.
    const size_t col_shapes[][3] = {
        {0, 5, MAX_BLOCKS},   {3, 0, MAX_BLOCKS},   {1, 1, MAX_BLOCKS},   {1, 33, MAX_BLOCKS}, {15, 32, MAX_BLOCKS},
        {16, 31, MAX_BLOCKS}, {17, 33, MAX_BLOCKS}, {40, 1, MAX_BLOCKS},  {5, 70, MAX_BLOCKS}, {20, 100, 1},
        {33, 200, 2},         {100, 40, MAX_BLOCKS},
    };
    for (const auto& s : col_shapes) {
        for (bool integers : {false, true}) {
            check_normalize_columns(s[0], s[1], integers, s[2]);
            check_center_columns(s[0], s[1], integers, s[2]);
        }
    }
    return report("constraints_checks", "values");
}
