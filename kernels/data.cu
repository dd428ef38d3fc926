// Batch assembly on the device. Twin of `gather_rows` in src/backend/cpu/data.rs.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/data.cu -o data.ptx
#include "common.cuh"
#include "half.cuh"

// data is (data_rows, cols), idx is (out_rows) u32, out is (out_rows, cols): out[r, :] = data[idx[r], :].
// Launch: blockDim.x threads walk the columns of a row (coalesced), blockIdx.x/gridDim.x split the columns
// when a row is wider than a block, blockIdx.y strides over the output rows (gridDim.y <= 65535).
// An index out of range (a bug in the caller; the CPU twin panics) never reads outside `data`: that row of
// `out` becomes NaN, which the loss then reports.
extern "C" __global__ void gather_rows(const float* __restrict__ data, const unsigned int* __restrict__ idx,
                                       float* __restrict__ out, unsigned long long out_rows,
                                       unsigned long long cols, unsigned long long data_rows) {
    for (unsigned long long r = blockIdx.y; r < out_rows; r += gridDim.y) {
        const unsigned long long src_row = idx[r];
        const bool ok = src_row < data_rows;
        const float* src = data + src_row * cols;
        float* dst = out + r * cols;
        for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (unsigned long long)blockDim.x * gridDim.x) {
            if (ok) {
                dst[c] = src[c];
            } else {
                dst[c] = __int_as_float(0x7fc00000);  // quiet NaN; src is never read
            }
        }
    }
}

// gather_rows for a data set kept at half size: data is (data_rows, cols) 16-bit floats of `format`, out is
// (out_rows, cols) f32. Twin of `gather_rows_half` in src/backend/cpu/data.rs. Same launch shape as
// gather_rows.
extern "C" __global__ void gather_rows_half(const unsigned short* __restrict__ data,
                                            const unsigned int* __restrict__ idx, float* __restrict__ out,
                                            unsigned long long out_rows, unsigned long long cols,
                                            unsigned long long data_rows, unsigned int format) {
    for (unsigned long long r = blockIdx.y; r < out_rows; r += gridDim.y) {
        const unsigned long long src_row = idx[r];
        const bool ok = src_row < data_rows;
        const unsigned short* src = data + src_row * cols;
        float* dst = out + r * cols;
        for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (unsigned long long)blockDim.x * gridDim.x) {
            dst[c] = ok ? half_bits_to_float(src[c], format) : __int_as_float(0x7fc00000);
        }
    }
}

// "lowbias32", a full-avalanche 32-bit hash. Twin of `mix32` in src/backend/shuffle.rs.
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

// ROUNDS and MIN_BITS of src/backend/shuffle.rs.
#define SHUFFLE_ROUNDS 8
#define SHUFFLE_MIN_BITS 8u

// The round keys of `key`. Twin of `round_keys` in src/backend/shuffle.rs.
__device__ __forceinline__ void shuffle_round_keys(unsigned long long key,
                                                   unsigned int round_key[SHUFFLE_ROUNDS]) {
    const unsigned int lo = (unsigned int)key, hi = (unsigned int)(key >> 32);
    for (unsigned int r = 0; r < SHUFFLE_ROUNDS; r++) round_key[r] = mix32((lo + r * 0x9E3779B9u) ^ hi);
}

// The row that position i (< rows) of a shuffled epoch reads: a keyed bijection of 0..rows, a Feistel
// network over the bits of rows - 1 (at least SHUFFLE_MIN_BITS; a left part of bits/2 bits and a right part
// of the rest, which swap widths every round), applied again while the value is >= rows. Twin of
// `shuffled_row` in src/backend/shuffle.rs, which explains the construction. tests/kernels_on_cpu.rs runs
// the kernel on the CPU and compares its order with the Rust twin's.
__device__ __forceinline__ unsigned int shuffled_row(unsigned int i, unsigned int rows,
                                                     const unsigned int round_key[SHUFFLE_ROUNDS]) {
    if (rows <= 1) return i;
    unsigned int bits = 32u - (unsigned int)__clz((int)(rows - 1));
    bits = bits < SHUFFLE_MIN_BITS ? SHUFFLE_MIN_BITS : bits;
    unsigned int x = i;
    do {
        unsigned int left_bits = bits / 2, right_bits = bits - bits / 2;
        unsigned int left = x >> right_bits, right = x & ((1u << right_bits) - 1u);
#pragma unroll
        for (unsigned int r = 0; r < SHUFFLE_ROUNDS; r++) {
            const unsigned int next = left ^ (mix32(right ^ round_key[r]) & ((1u << left_bits) - 1u));
            left = right;
            right = next;
            const unsigned int w = left_bits;
            left_bits = right_bits;
            right_bits = w;
        }
        x = (left << right_bits) | right;
    } while (x >= rows);
    return x;
}

// order is (rows) u32: order[i] = shuffled_row(i, rows, the round keys of key). Twin of `fill_order` in
// src/backend/shuffle.rs (`shuffle_order` in cpu/data.rs). One thread per position, grid-stride.
extern "C" __global__ void shuffle_order(unsigned int* __restrict__ order, unsigned int rows,
                                         unsigned long long key) {
    unsigned int round_key[SHUFFLE_ROUNDS];
    shuffle_round_keys(key, round_key);
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; p < rows;
         p += (unsigned long long)blockDim.x * gridDim.x) {
        order[p] = shuffled_row((unsigned int)p, rows, round_key);
    }
}
