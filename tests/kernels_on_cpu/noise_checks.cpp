// The noise of kernels/noise.cu (corrupt_rows, and corrupt_rows_half for f16 and bf16 donors), compiled for the
// CPU through cuda_on_cpu.h and launched as src/backend/cuda/noise.rs launches it (noise_config: blocks of 256
// threads over the columns, gridDim.x = min(⌈cols/256⌉, MAX_GRID_Y), gridDim.y = min(rows, MAX_GRID_Y); smaller
// caps stand in for MAX_GRID_Y so that blocks walk both stride loops; nothing is launched for an empty batch).
// For each case it prints the inputs and the output, as hexadecimal bit patterns, for tests/kernels_on_cpu.rs
// to run the Rust twin (CpuBackend::corrupt_rows) on the same inputs and compare bit for bit:
//   case <rows> <cols> <donor_rows> <format: f32|f16|bf16> <swap_below> <mask_below> <sigma bits> <key0> <key1> <key2>
//   clean: …   donors: …   idx: …   fill: …   out: …
// It checks itself that nothing is written past `out` (guards), that the donors are read only inside (they sit
// between rows of NaN: a read past them would put a NaN in `out`), and that with every noise off out == clean.
// Exits non-zero after printing every failure.
#include <cstdio>
#include <string>
#include <vector>

#include "noise.cu"
#include "check_util.h"

namespace {

constexpr size_t MAX_GRID_Y = 65535;  // src/backend/cuda/launch.rs

dim3 noise_config(size_t cols, size_t rows, size_t cap_x, size_t cap_y) {
    return dim3((unsigned int)std::min((cols + THREADS - 1) / THREADS, cap_x), (unsigned int)std::min(rows, cap_y));
}

template <typename T>
void print_line(const char* name, const T* v, size_t n) {
    std::printf("%s:", name);
    for (size_t i = 0; i < n; ++i) {
        unsigned int bits;
        if constexpr (sizeof(T) == 4) {
            std::memcpy(&bits, &v[i], 4);
        } else {
            bits = (unsigned int)v[i];
        }
        std::printf(" %x", bits);
    }
    std::printf("\n");
}

// format: 0 = f32 donors, 1 = f16, 2 = bf16 (HALF_FORMAT_* + 1).
void run_case(size_t rows, size_t cols, unsigned int donor_rows, int format, float swap, float mask, float sigma,
              unsigned int k0, unsigned int k1, unsigned int epoch, size_t cap_x, size_t cap_y, bool bad_rows) {
    NoiseConfig cfg{(unsigned int)(swap * 16777216.0f), (unsigned int)(mask * 16777216.0f), sigma};
    const unsigned int key[3] = {k0, k1, epoch};
    std::vector<float> clean(rows * cols);
    for (auto& x : clean) x = next_uniform();
    std::vector<float> fill(cols);
    for (auto& x : fill) x = 10.0f + next_integer();
    std::vector<unsigned int> idx(rows);
    for (auto& r : idx) r = donor_rows == 0 ? 0u : next_u32() % donor_rows;
    if (bad_rows && rows > 1) {
        idx[0] = donor_rows;        // one past the training set
        idx[rows - 1] = 0xFFFFFFFFu;  // the largest row a u32 holds
    }
    // Donors between two rows of NaN on each side.
    const size_t n_donors = (size_t)donor_rows * cols;
    std::vector<float> donors_f((n_donors + 4 * cols), NAN);
    std::vector<unsigned short> donors_h((n_donors + 4 * cols), 0x7e00u);  // NaN in f16 and a NaN-ish bf16
    if (format == 2) std::fill(donors_h.begin(), donors_h.end(), (unsigned short)0x7fc0u);  // bf16 NaN
    for (size_t i = 0; i < n_donors; ++i) {
        const float v = 100.0f + next_uniform();
        donors_f[2 * cols + i] = v;
        donors_h[2 * cols + i] = (unsigned short)(next_u32() & 0x3bffu);  // finite, |v| < 1 in both formats
    }
    Padded out(rows * cols);
    if (rows * cols > 0) {
        const dim3 grid = noise_config(cols, rows, cap_x, cap_y);
        if (format == 0) {
            launch(corrupt_rows, grid, dim3(THREADS), clean.data(), donors_f.data() + 2 * cols, idx.data(),
                   fill.data(), key, out.data(), (unsigned long long)rows, (unsigned long long)cols, donor_rows, cfg);
        } else {
            launch(corrupt_rows_half, grid, dim3(THREADS), clean.data(), donors_h.data() + 2 * cols, idx.data(),
                   fill.data(), key, out.data(), (unsigned long long)rows, (unsigned long long)cols, donor_rows, cfg,
                   (unsigned int)(format - 1));
        }
    }
    check_guards("corrupt_rows", out);
    for (size_t i = 0; i < rows * cols; ++i) {
        ++checked;
        if (std::isnan(out[i])) fail("case %zux%zu format %d: NaN at %zu (a donor read out of range?)", rows, cols, format, i);
        if (cfg.swap_below == 0 && cfg.mask_below == 0 && sigma == 0.0f && !same(out[i], clean[i])) {
            fail("case %zux%zu: noise off changed element %zu", rows, cols, i);
        }
    }
    const char* names[] = {"f32", "f16", "bf16"};
    std::printf("case %zu %zu %u %s %u %u %x %x %x %x\n", rows, cols, donor_rows, names[format], cfg.swap_below,
                cfg.mask_below, bits_of(sigma), k0, k1, epoch);
    print_line("clean", clean.data(), clean.size());
    if (format == 0) {
        print_line("donors", donors_f.data() + 2 * cols, n_donors);
    } else {
        print_line("donors", donors_h.data() + 2 * cols, n_donors);
    }
    print_line("idx", idx.data(), idx.size());
    print_line("fill", fill.data(), fill.size());
    print_line("out", out.data(), rows * cols);
}

}  // namespace

int main() {
    seed_rng(2121u);
    const size_t M = MAX_GRID_Y;
    // Every noise at once on a row of two column blocks; the same walked by grids of 1 and 3 blocks.
    run_case(13, 300, 40, 0, 0.3f, 0.2f, 0.5f, 42, 0, 1, M, M, false);
    run_case(13, 300, 40, 0, 0.3f, 0.2f, 0.5f, 42, 0, 2, 1, 3, false);
    // 16-bit donors.
    run_case(9, 70, 25, 1, 0.5f, 0.1f, 0.25f, 7, 1, 3, M, M, false);
    run_case(9, 70, 25, 2, 0.5f, 0.1f, 0.25f, 7, 1, 3, M, 2, false);
    // Every cell swapped: a set of two rows (the donor is always the other row), and of one (no donor).
    run_case(6, 5, 2, 0, 1.0f, 0.0f, 0.0f, 1, 2, 3, M, M, false);
    run_case(4, 5, 1, 0, 1.0f, 0.0f, 0.0f, 1, 2, 3, M, M, false);
    // Rows out of the training set's range still read donors inside it.
    run_case(8, 33, 17, 0, 0.9f, 0.0f, 0.0f, 5, 5, 5, M, M, true);
    // Gaussian only, over many cells: the whole transform (ln, cos, sin) against the Rust one; a large seed.
    run_case(4, 20000, 4, 0, 0.0f, 0.0f, 1.0f, 0xdeadbeefu, 0x12345678u, 17, M, M, false);
    // Noise off: out == clean. An empty batch: nothing launched.
    run_case(5, 40, 10, 0, 0.0f, 0.0f, 0.0f, 3, 0, 1, M, M, false);
    run_case(0, 40, 10, 0, 0.5f, 0.5f, 1.0f, 3, 0, 1, M, M, false);
    return report("noise_checks", "elements");
}
