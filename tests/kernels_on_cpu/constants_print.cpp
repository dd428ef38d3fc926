// Prints, one `NAME value` a line, every #define of kernels/*.cu that the host side
// (src/backend/cuda/launch.rs) must agree with: launch shapes, tile sizes, activation codes, 16-bit formats.
// The test `kernel_constants_match_the_host` (tests/kernels_on_cpu.rs) compares them with
// `cuda::kernel_constants()`. The values come from the kernels' own headers, so an expression such as
// GEMM_THREADS's is evaluated.
#include <cstdio>

#include "constraints.cu"
#include "data.cu"
#include "gemm.cu"
#include "loss.cu"
#include "reduce.cu"

#define SHOW(name) std::printf("%s %llu\n", #name, (unsigned long long)(name))

int main() {
    SHOW(GEMM_THREADS);
    SHOW(BM);
    SHOW(BN);
    SHOW(BK);
    SHOW(GEMM_LARGE_THREADS);
    SHOW(LBM);
    SHOW(LBN);
    SHOW(MSE_THREADS);
    SHOW(SUM_SQUARES_THREADS);
    SHOW(MSE_MAX_BLOCKS);
    SHOW(COL_SUM_TX);
    SHOW(COL_SUM_TY);
    SHOW(COLUMN_TX);
    SHOW(COLUMN_TY);
    SHOW(HALF_FORMAT_F16);
    SHOW(HALF_FORMAT_BF16);
    SHOW(ACT_LINEAR);
    SHOW(ACT_RELU);
    SHOW(ACT_TANH);
    SHOW(ACT_SIGMOID);
    return 0;
}
