// col_sum of kernels/reduce.cu, compiled for the CPU through cuda_on_cpu.h and launched as
// src/backend/cuda/reduce.rs launches it: blocks of (COL_SUM_TX, COL_SUM_TY) threads, min(⌈cols/COL_SUM_TX⌉,
// MAX_BLOCKS) of them (smaller caps stand in for MAX_BLOCKS so that a block walks several column tiles);
// nothing is launched when cols == 0, and rows == 0 must write zeros. Checked against out[c] = Σ_r m[r, c]:
//   - small integers: every partial sum is exact in float whatever the order, so bit for bit;
//   - values in [-1, 1): float sums in the kernel's order (⌈rows/COL_SUM_TY⌉ adds per thread, then a tree of
//     log2(COL_SUM_TY) = 4) against f64: each add rounds by at most 2⁻²⁴ of the column's Σ|m|, so
//     |err| ≤ 6e-8·(⌈rows/16⌉ + 4)·Σ|m|; the check allows twice that.
// m and out have NaN guards on both sides. Built and run by tests/kernels_on_cpu.rs; exits non-zero after
// printing every failure.
#include "reduce.cu"
#include "check_util.h"

static_assert(COL_SUM_TX == 32 && COL_SUM_TY == 16, "COL_SUM_BLOCK of src/backend/cuda/launch.rs");

namespace {

// col_sum of src/backend/cuda/reduce.rs, with the grid cap as a parameter (MAX_BLOCKS there).
void host_col_sum(const float* m, size_t rows, size_t cols, float* out, size_t cap) {
    if (cols == 0) {
        return;
    }
    const size_t blocks = std::min((cols + COL_SUM_TX - 1) / COL_SUM_TX, cap);
    launch(col_sum, dim3((unsigned int)blocks), dim3(COL_SUM_TX, COL_SUM_TY), m, out, (unsigned long long)rows,
           (unsigned long long)cols);
}

void check(size_t rows, size_t cols, size_t cap, bool integers) {
    Padded m(rows * cols), out(cols);
    for (size_t i = 0; i < rows * cols; ++i) {
        m[i] = integers ? next_integer() : next_uniform();
    }
    host_col_sum(m.data(), rows, cols, out.data(), cap);
    for (size_t c = 0; c < cols; ++c) {
        double want = 0.0, mag = 0.0;
        for (size_t r = 0; r < rows; ++r) {
            want += m[r * cols + c];
            mag += std::fabs(m[r * cols + c]);
        }
        const double tol = integers ? 0.0 : 1.2e-7 * ((rows + COL_SUM_TY - 1) / COL_SUM_TY + 4) * mag;
        ++checked;
        // out starts as NaN, so an unwritten column fails; with rows == 0 it must be exactly +0.
        if (!(std::fabs((double)out[c] - want) <= tol) || (rows == 0 && bits_of(out[c]) != 0u)) {
            fail("col_sum rows=%zu cols=%zu cap=%zu integers=%d at column %zu: %.9g, want %.12g (tol %.3g)", rows,
                 cols, cap, integers, c, out[c], want, tol);
        }
    }
    check_guards("col_sum m", m);
    check_guards("col_sum out", out);
}

}  // namespace

int main() {
    seed_rng(99u);
    // (rows, cols, cap): no rows; one element; one row of two tiles; exactly one tile of 16 rows; one column
    // short of a tile and one row over; a single column of many rows; a partial last tile; tiles walked by
    // capped grids of 2 and 1 blocks; one row short of a multiple of COL_SUM_TY.
    const size_t shapes[][3] = {
        {0, 5, MAX_BLOCKS},    {0, 40, MAX_BLOCKS}, {1, 1, MAX_BLOCKS},  {1, 33, MAX_BLOCKS}, {16, 32, MAX_BLOCKS},
        {17, 31, MAX_BLOCKS},  {100, 1, MAX_BLOCKS}, {5, 70, MAX_BLOCKS}, {33, 200, 2},        {40, 97, 1},
        {300, 65, MAX_BLOCKS}, {1000, 3, MAX_BLOCKS}, {47, 130, 3},
    };
    for (const auto& s : shapes) {
        check(s[0], s[1], s[2], false);
        check(s[0], s[1], s[2], true);
    }
    return report("reduce_checks", "column sums");
}
