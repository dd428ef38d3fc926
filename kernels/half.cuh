// 16-bit floats as the f32 they stand for: shared by kernels/data.cu (a data set kept at half size, gathered
// into f32 batches) and kernels/noise.cu (swap noise reading its donors from such a set).
#pragma once
#include <cuda_fp16.h>

// The codes of `HalfFormat` in src/backend/mod.rs: `gather_rows_half`'s and `corrupt_rows_half`'s `format`.
#define HALF_FORMAT_F16 0u
#define HALF_FORMAT_BF16 1u

// A 16-bit float of `format` as the f32 it stands for (exact in both cases).
__device__ __forceinline__ float half_bits_to_float(unsigned short bits, unsigned int format) {
    return format == HALF_FORMAT_BF16 ? __uint_as_float(((unsigned int)bits) << 16)
                                      : __half2float(__ushort_as_half(bits));
}
