// The batch gathers of kernels/data.cu (gather_rows, and gather_rows_half for IEEE f16 and bf16), compiled
// for the CPU through cuda_on_cpu.h and launched as src/backend/cuda/data.rs launches them (gather_config:
// blocks of 256 threads, gridDim.x = min(⌈cols/256⌉, MAX_GRID_Y) over the columns, gridDim.y = min(out_rows,
// MAX_GRID_Y) over the rows; smaller caps stand in for MAX_GRID_Y so that blocks walk both stride loops;
// nothing is launched when out_rows·cols == 0). Checked against out[r, :] = data[idx[r], :], bit for bit (a
// gather is a copy, and both 16-bit formats are subsets of f32): f16 against an independent decoding
// (sign·frac·2^(exp−25), subnormals, ±inf, NaN), bf16 as the top half of an f32; all 65536 bit patterns of
// each format are gathered. An index ≥ data_rows must give a NaN row and read nothing: the data are followed
// (and preceded) by rows of a finite sentinel, so a read just past the end shows as a number, not NaN. out
// has NaN guards on both sides. Built and run by tests/kernels_on_cpu.rs; exits non-zero after printing every
// failure.
#include <functional>

#include "data.cu"
#include "check_util.h"

namespace {

// src/backend/cuda/launch.rs: MAX_GRID_Y of gather_config (its THREADS is check_util.h's).
constexpr size_t MAX_GRID_Y = 65535;

constexpr float SENTINEL = 777.0f;                // around the data: what a read out of range would see
constexpr unsigned short HALF_SENTINEL = 0x3c00;  // 1.0 in f16, 2^-7·(1 + 60/128) in bf16: finite either way

// gather_config of src/backend/cuda/data.rs, with the two caps as parameters (MAX_GRID_Y there).
dim3 gather_config(size_t cols, size_t out_rows, size_t cap_x, size_t cap_y) {
    return dim3((unsigned int)std::min((cols + THREADS - 1) / THREADS, cap_x), (unsigned int)std::min(out_rows, cap_y));
}

// gather_rows and gather_rows_half of src/backend/cuda/data.rs: data_rows = the data's length / cols.
void host_gather_rows(const float* data, size_t data_len, size_t cols, const unsigned int* idx, size_t out_rows,
                      float* out, size_t cap_x, size_t cap_y) {
    if (out_rows * cols == 0) {
        return;
    }
    launch(gather_rows, gather_config(cols, out_rows, cap_x, cap_y), dim3(THREADS), data, idx, out,
           (unsigned long long)out_rows, (unsigned long long)cols, (unsigned long long)(data_len / cols));
}
void host_gather_rows_half(const unsigned short* data, size_t data_len, unsigned int format, size_t cols,
                           const unsigned int* idx, size_t out_rows, float* out, size_t cap_x, size_t cap_y) {
    if (out_rows * cols == 0) {
        return;
    }
    launch(gather_rows_half, gather_config(cols, out_rows, cap_x, cap_y), dim3(THREADS), data, idx, out,
           (unsigned long long)out_rows, (unsigned long long)cols, (unsigned long long)(data_len / cols), format);
}

// Indices for out_rows rows: in range (with repeats) except at a few places, which get data_rows (one past
// the end), data_rows + 1, and the largest indices a u32 can hold.
std::vector<unsigned int> indices(size_t out_rows, size_t data_rows, bool out_of_range) {
    std::vector<unsigned int> idx(out_rows);
    for (auto& i : idx) i = data_rows == 0 ? 0u : next_u32() % (unsigned int)data_rows;
    const unsigned int bad[] = {(unsigned int)data_rows, (unsigned int)data_rows + 1u, 0xffffffffu, 0x80000000u};
    if (data_rows == 0) {
        for (size_t r = 0; r < out_rows; ++r) idx[r] = bad[r % 4];  // every row out of range
    } else if (out_of_range) {
        for (size_t k = 0; k < 4 && k < out_rows; ++k) idx[(k * 5 + 1) % out_rows] = bad[k];
    }
    return idx;
}

// The f32 an IEEE binary16 stands for, computed independently of cuda_fp16.h.
float f16_value(unsigned short h) {
    const int sign = h >> 15, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    double v;
    if (exp == 0) {
        v = std::ldexp((double)frac, -24);
    } else if (exp == 31) {
        v = frac == 0 ? INFINITY : NAN;
    } else {
        v = std::ldexp((double)(1024 + frac), exp - 25);
    }
    return (float)(sign ? -v : v);
}
float bf16_value(unsigned short h) { return from_bits((unsigned int)h << 16); }

void check_out(const char* what, size_t data_rows, size_t cols, size_t cap_x, size_t cap_y,
               const std::vector<unsigned int>& idx, const Padded& out,
               const std::function<float(size_t, size_t)>& want) {
    for (size_t r = 0; r < idx.size(); ++r) {
        const bool ok = idx[r] < data_rows;
        for (size_t c = 0; c < cols; ++c) {
            const float got = out[r * cols + c];
            ++checked;
            if (ok ? !same(got, want(idx[r], c)) : !std::isnan(got)) {
                fail("%s data_rows=%zu cols=%zu out_rows=%zu caps=(%zu,%zu) at (%zu,%zu), idx %u: %.9g, want %.9g",
                     what, data_rows, cols, idx.size(), cap_x, cap_y, r, c, idx[r], got,
                     ok ? want(idx[r], c) : NAN);
            }
        }
    }
    check_guards(what, out);
}

void check_gather(size_t data_rows, size_t cols, size_t out_rows, size_t cap_x, size_t cap_y, bool out_of_range) {
    // Two sentinel rows before and after the data.
    std::vector<float> buf((data_rows + 4) * cols, SENTINEL);
    float* data = buf.data() + 2 * cols;
    for (size_t i = 0; i < data_rows * cols; ++i) data[i] = next_uniform();
    const std::vector<unsigned int> idx = indices(out_rows, data_rows, out_of_range);
    Padded out(out_rows * cols);
    host_gather_rows(data, data_rows * cols, cols, idx.data(), out_rows, out.data(), cap_x, cap_y);
    check_out("gather_rows", data_rows, cols, cap_x, cap_y, idx, out,
              [&](size_t r, size_t c) { return data[r * cols + c]; });
}

// data_rows × cols 16-bit values of `format`: random bit patterns, or with `exhaustive` element i holds
// pattern i (every pattern once when data_rows·cols == 65536) and row r is gathered into row r.
void check_gather_half(unsigned int format, size_t data_rows, size_t cols, size_t out_rows, size_t cap_x,
                       size_t cap_y, bool out_of_range, bool exhaustive) {
    std::vector<unsigned short> buf((data_rows + 4) * cols, HALF_SENTINEL);
    unsigned short* data = buf.data() + 2 * cols;
    for (size_t i = 0; i < data_rows * cols; ++i) data[i] = exhaustive ? (unsigned short)i : (unsigned short)next_u32();
    std::vector<unsigned int> idx = indices(out_rows, data_rows, out_of_range);
    if (exhaustive) {
        for (size_t r = 0; r < out_rows; ++r) idx[r] = (unsigned int)(r < data_rows ? r : data_rows + r);
    }
    Padded out(out_rows * cols);
    host_gather_rows_half(data, data_rows * cols, format, cols, idx.data(), out_rows, out.data(), cap_x, cap_y);
    check_out(format == 1 ? "gather_rows_half bf16" : "gather_rows_half f16", data_rows, cols, cap_x, cap_y, idx, out,
              [&](size_t r, size_t c) {
                  const unsigned short h = data[r * cols + c];
                  return format == 1 ? bf16_value(h) : f16_value(h);
              });
}

}  // namespace

int main() {
    seed_rng(4242u);
    // (data_rows, cols, out_rows, cap_x, cap_y): one element; a few columns, rows repeated; a row of two
    // column blocks; a row four times wider than the one column block it gets; rows walked by a grid of 3
    // (and 1) rows; no data at all (every row out of range); one column.
    const size_t M = MAX_GRID_Y;
    const size_t shapes[][5] = {
        {1, 1, 1, M, M},  {10, 3, 25, M, M}, {7, 257, 9, M, M}, {5, 1000, 4, 1, M},
        {20, 5, 70, M, 3}, {6, 300, 11, 1, 1}, {0, 4, 3, M, M},  {50, 1, 64, M, M},
    };
    for (const auto& s : shapes) {
        for (bool out_of_range : {false, true}) {
            check_gather(s[0], s[1], s[2], s[3], s[4], out_of_range);
            check_gather_half(0, s[0], s[1], s[2], s[3], s[4], out_of_range, false);
            check_gather_half(1, s[0], s[1], s[2], s[3], s[4], out_of_range, false);
        }
    }
    // Empty batches: nothing is launched and nothing written.
    check_gather(10, 3, 0, M, M, false);
    check_gather_half(0, 10, 0, 4, M, M, false, false);
    // Every bit pattern of each format: 256 rows of 256, gathered in order, then 3 rows out of range.
    check_gather_half(0, 256, 256, 259, M, M, false, true);
    check_gather_half(1, 256, 256, 259, M, 64, false, true);
    return report("data_checks", "elements");
}
