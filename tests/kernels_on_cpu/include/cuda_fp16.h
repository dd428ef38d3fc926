// The part of CUDA's cuda_fp16.h that kernels/data.cu uses, for cuda_on_cpu.h: IEEE binary16 to float.
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
    unsigned short bits;
};
inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
// Exact: every binary16 value (normal, subnormal, ±0, ±inf, NaN) is a float.
inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    const uint32_t exp = (h.bits >> 10) & 0x1fu;
    const uint32_t frac = h.bits & 0x3ffu;
    float magnitude;
    if (exp == 0) {
        magnitude = std::ldexp((float)frac, -24);  // subnormal (or zero): frac · 2^-24
    } else if (exp == 31) {
        uint32_t b = 0x7f800000u | (frac << 13);
        std::memcpy(&magnitude, &b, 4);
    } else {
        uint32_t b = ((exp + 112u) << 23) | (frac << 13);
        std::memcpy(&magnitude, &b, 4);
    }
    uint32_t out;
    std::memcpy(&out, &magnitude, 4);
    out |= sign;
    float f;
    std::memcpy(&f, &out, 4);
    return f;
}
