// C = alpha·op(A)·op(B) + beta·C in f32, row-major, op ∈ {N, T} per operand by runtime flag. Twin of `gemm` in
// src/backend/cpu.rs. The tied autoencoder reads its one kernel W in both orientations through these flags
// (encoder x·W, decoder h·Wᵀ, and the two halves of dW): nothing is ever transposed in memory.
//
// Tiling (one kernel for the four N/T combinations; the flags are uniform per launch, so no divergence):
//   - a block of GEMM_THREADS = 256 threads computes a BM×BN = 64×64 tile of C;
//   - K is walked in BK = 16 slices: the block stages op(A)[64×16] and op(B)[16×64] in shared memory, both
//     stored k-major (As[k][i], Bs[k][j]) so the inner loop reads a thread's 4 rows / 4 columns as one
//     float4 each;
//   - each thread keeps a TM×TN = 4×4 micro-tile of C in registers (16 FMAs per 2 shared loads per k);
//   - global loads are coalesced for either orientation: consecutive threads read consecutive addresses of
//     the stored matrix (along k for an (M,K) A, along m for a (K,M) A, and likewise for B). The +4 padding
//     of a shared row keeps the transposing stores at most 2-way bank-conflicted and the float4 reads
//     16-byte aligned (68·4 = 272 = 17·16 bytes per row).
//   - every load and store is bounds-checked: out-of-range elements of a tile are loaded as 0 (they add
//     nothing), so any M, N, K >= 1 is correct (1, 7, 51, 129, ...). K == 0 gives C = beta·C (alpha·0).
//   - blocks stride over tiles (tile row by gridDim.x, tile column by gridDim.y), so the host may cap the
//     grid (gridDim.y <= 65535) and any M, N still works.
// Synchronization: per K slice, loads → __syncthreads → FMAs from shared memory → __syncthreads, so no
// thread overwrites As/Bs (next slice or next tile) while another still reads them. The loop bounds depend
// only on blockIdx/gridDim and the kernel arguments: every thread of a block reaches every barrier.
//
// The host (src/backend/cuda.rs) checks the sizes of A, B, C against M, N, K, and that M, N, K fit in an int
// with room for one more tile (<= INT_MAX - 128), so no index below overflows; offsets into the matrices are
// computed in size_t.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/gemm.cu -o gemm.ptx
//                ptxas -arch=sm_61 -v gemm.ptx     (registers and spills)
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16
#define TM 4
#define TN 4
#define GEMM_THREADS ((BM / TM) * (BN / TN))  // 256: must match GEMM_THREADS in src/backend/cuda.rs
#define SMEM_PAD 4

// A is (M,K) row-major, or (K,M) when trans_a; B is (K,N) row-major, or (N,K) when trans_b; C is (M,N).
// op(A)(i, k) = trans_a ? A[k·M + i] : A[i·K + k];  op(B)(k, j) = trans_b ? B[j·K + k] : B[k·N + j].
// beta == 0 never reads C (it may hold garbage or NaN).
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
     int trans_a, int trans_b, float alpha, float beta) {
    __shared__ __align__(16) float As[BK][BM + SMEM_PAD];  // As[k][i] = op(A)(m0 + i, k0 + k)
    __shared__ __align__(16) float Bs[BK][BN + SMEM_PAD];  // Bs[k][j] = op(B)(k0 + k, n0 + j)

    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN);  // this thread's columns: n0 + tx·TN .. +TN
    const int ty = tid / (BN / TN);  // this thread's rows:    m0 + ty·TM .. +TM
    const int tiles_m = M / BM + (M % BM != 0);
    const int tiles_n = N / BN + (N % BN != 0);

    for (int tile_m = blockIdx.x; tile_m < tiles_m; tile_m += gridDim.x) {
        for (int tile_n = blockIdx.y; tile_n < tiles_n; tile_n += gridDim.y) {
            const int m0 = tile_m * BM;
            const int n0 = tile_n * BN;
            float acc[TM][TN];
#pragma unroll
            for (int r = 0; r < TM; ++r) {
#pragma unroll
                for (int c = 0; c < TN; ++c) {
                    acc[r][c] = 0.0f;
                }
            }

            for (int k0 = 0; k0 < K; k0 += BK) {
                // Stage op(A)[m0.., k0..] (BM×BK): BM·BK / GEMM_THREADS = 4 elements per thread.
#pragma unroll
                for (int l = 0; l < (BM * BK) / GEMM_THREADS; ++l) {
                    const int e = tid + l * GEMM_THREADS;
                    int i, k;
                    if (trans_a) {  // A stored (K,M): consecutive threads take consecutive i
                        k = e / BM;
                        i = e % BM;
                    } else {  // A stored (M,K): consecutive threads take consecutive k
                        i = e / BK;
                        k = e % BK;
                    }
                    const int gi = m0 + i;
                    const int gk = k0 + k;
                    float a = 0.0f;
                    if (gi < M && gk < K) {
                        a = trans_a ? A[(size_t)gk * M + gi] : A[(size_t)gi * K + gk];
                    }
                    As[k][i] = a;
                }
                // Stage op(B)[k0.., n0..] (BK×BN): 4 elements per thread.
#pragma unroll
                for (int l = 0; l < (BK * BN) / GEMM_THREADS; ++l) {
                    const int e = tid + l * GEMM_THREADS;
                    int k, j;
                    if (trans_b) {  // B stored (N,K): consecutive threads take consecutive k
                        j = e / BK;
                        k = e % BK;
                    } else {  // B stored (K,N): consecutive threads take consecutive j
                        k = e / BN;
                        j = e % BN;
                    }
                    const int gk = k0 + k;
                    const int gj = n0 + j;
                    float b = 0.0f;
                    if (gk < K && gj < N) {
                        b = trans_b ? B[(size_t)gj * K + gk] : B[(size_t)gk * N + gj];
                    }
                    Bs[k][j] = b;
                }
                __syncthreads();  // the tiles are complete before anyone reads them

#pragma unroll
                for (int kk = 0; kk < BK; ++kk) {
                    const float4 a4 = *reinterpret_cast<const float4*>(&As[kk][ty * TM]);
                    const float4 b4 = *reinterpret_cast<const float4*>(&Bs[kk][tx * TN]);
                    const float a[TM] = {a4.x, a4.y, a4.z, a4.w};
                    const float b[TN] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
                    for (int r = 0; r < TM; ++r) {
#pragma unroll
                        for (int c = 0; c < TN; ++c) {
                            acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
                        }
                    }
                }
                __syncthreads();  // everyone is done reading before the next slice (or tile) is staged
            }

            // C[gi, gj] = alpha·acc + beta·C[gi, gj]; beta == 0 does not read C.
#pragma unroll
            for (int r = 0; r < TM; ++r) {
                const int gi = m0 + ty * TM + r;
                if (gi < M) {
#pragma unroll
                    for (int c = 0; c < TN; ++c) {
                        const int gj = n0 + tx * TN + c;
                        if (gj < N) {
                            const size_t idx = (size_t)gi * N + gj;
                            float v = alpha * acc[r][c];
                            if (beta != 0.0f) {
                                v += beta * C[idx];
                            }
                            C[idx] = v;
                        }
                    }
                }
            }
        }
    }
}
