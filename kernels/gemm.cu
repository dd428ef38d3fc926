// C = alpha·op(A)·op(B) + beta·C in f32, row-major, op ∈ {N, T} per operand by runtime flag, optionally
// followed by C = f(C + bias) (the forward pass's bias and activation, fused into the epilogue). Twin of
// `gemm` and `gemm_bias_act` in src/backend/cpu/gemm.rs. The tied autoencoder reads its one kernel W in both
// orientations through these flags (encoder x·W, decoder h·Wᵀ, and the two halves of dW): nothing is ever
// transposed in memory.
//
// Two tilings of the same product, picked by the host per call (src/backend/cuda/gemm.rs, `GemmKernel`):
//   - `gemm` (64×64 tiles, below): many small blocks, for the narrow shapes of a training step that would
//     leave most SMs idle with bigger tiles;
//   - `gemm_large` (128×128 tiles, 8×8 per thread, float4 global loads, double-buffered shared memory; see
//     its own comment further down): for products with enough tiles to fill the GPU.
// Both accumulate every element of C as one fmaf chain over k = 0, 1, …, K−1 in order (padding adds exact
// zeros) and share the epilogue, so they produce the same C, whichever runs, up to the sign of a zero (a
// padding fmaf(0, 0, −0) gives +0, and the two pad K differently).
//
// Tiling of `gemm` (one kernel for the four N/T combinations; the flags are uniform per launch, so no
// divergence):
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
// The host (src/backend/cuda/gemm.rs) checks the sizes of A, B, C against M, N, K, and that M, N, K fit in an
// int with room for one more tile (<= INT_MAX - 256), so no index below overflows; offsets into the matrices
// are computed in size_t.
//
// Build by hand: nvcc --ptx -arch=compute_61 -O3 -I kernels kernels/gemm.cu -o gemm.ptx
//                ptxas -arch=sm_61 -v gemm.ptx     (registers and spills)
// Without a GPU, tests/kernels_on_cpu.rs compiles this file for the CPU and checks both kernels.
#include "common.cuh"

// The epilogue of both kernels for one element: v = alpha·acc (+ beta·C), then f(v + bias[j]) when a bias is
// given. Every product is rounded before its sum (__fmul_rn/__fadd_rn: nvcc would otherwise fuse them), the
// way the separate `bias_act` kernel rounds, so the fused forward pass equals gemm + bias_act bit for bit.
__device__ __forceinline__ float gemm_epilogue(float acc, float alpha, float beta, float c_old,
                                               const float* __restrict__ bias, int gj, unsigned int act) {
    float v = __fmul_rn(alpha, acc);
    if (beta != 0.0f) {
        v = __fadd_rn(v, __fmul_rn(beta, c_old));
    }
    if (bias != nullptr) {
        v = apply_activation(__fadd_rn(v, bias[gj]), act);
    }
    return v;
}

#define BM 64
#define BN 64
#define BK 16
#define TM 4
#define TN 4
#define GEMM_THREADS ((BM / TM) * (BN / TN))  // 256: must match GEMM_THREADS in src/backend/cuda/launch.rs
#define SMEM_PAD 4

// A is (M,K) row-major, or (K,M) when trans_a; B is (K,N) row-major, or (N,K) when trans_b; C is (M,N).
// op(A)(i, k) = trans_a ? A[k·M + i] : A[i·K + k];  op(B)(k, j) = trans_b ? B[j·K + k] : B[k·N + j].
// beta == 0 never reads C (it may hold garbage or NaN). bias is (N) or null (no bias, no activation); act is
// an activation code of common.cuh, used only with a bias.
//
// Split-K (partials != null): for the narrow products of a training step (a 256×256 C is 16 tiles, on a GPU
// with 132 SMs) the host also splits K. Block z of gridDim.z sums k in [z·k_split, min(K, (z+1)·k_split))
// (k_split a multiple of BK) and writes its raw sums to partials[z][M][N]; `gemm_split_reduce` then adds
// the gridDim.z partials in z order and applies the epilogue. Deterministic, but summed in another order
// than the unsplit kernels (the tests compare it with the CPU, not bit for bit with them). With partials
// null, k_split is ignored and gridDim.z must be 1.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
     int trans_a, int trans_b, float alpha, float beta, const float* __restrict__ bias, unsigned int act,
     float* __restrict__ partials, int k_split) {
    __shared__ __align__(16) float As[BK][BM + SMEM_PAD];  // As[k][i] = op(A)(m0 + i, k0 + k)
    __shared__ __align__(16) float Bs[BK][BN + SMEM_PAD];  // Bs[k][j] = op(B)(k0 + k, n0 + j)

    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN);  // this thread's columns: n0 + tx·TN .. +TN
    const int ty = tid / (BN / TN);  // this thread's rows:    m0 + ty·TM .. +TM
    const int tiles_m = M / BM + (M % BM != 0);
    const int tiles_n = N / BN + (N % BN != 0);
    // This block's range of k: all of it, or its split.
    const int k_lo = partials != nullptr ? (int)blockIdx.z * k_split : 0;
    // (K − k_lo > k_split rather than min(K, k_lo + k_split): no int overflow for K near INT_MAX.)
    const int k_hi = partials != nullptr && K - k_lo > k_split ? k_lo + k_split : K;

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

            for (int k0 = k_lo; k0 < k_hi; k0 += BK) {
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
                    if (gi < M && gk < k_hi) {
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
                    if (gk < k_hi && gj < N) {
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

            // C[gi, gj] = epilogue(acc); beta == 0 does not read C.
#pragma unroll
            for (int r = 0; r < TM; ++r) {
                const int gi = m0 + ty * TM + r;
                if (gi < M) {
#pragma unroll
                    for (int c = 0; c < TN; ++c) {
                        const int gj = n0 + tx * TN + c;
                        if (gj < N) {
                            const size_t idx = (size_t)gi * N + gj;
                            if (partials != nullptr) {
                                partials[(size_t)blockIdx.z * M * N + idx] = acc[r][c];
                            } else {
                                const float c_old = beta != 0.0f ? C[idx] : 0.0f;
                                C[idx] = gemm_epilogue(acc[r][c], alpha, beta, c_old, bias, gj, act);
                            }
                        }
                    }
                }
            }
        }
    }
}

// The second launch of a split-K product: partials is (splits, M, N) from `gemm`, C is (M, N), bias (N) or
// null. C = epilogue(Σ_z partials[z]) with the sum taken in z order. Grid-stride over the M·N elements.
extern "C" __global__ void gemm_split_reduce(const float* __restrict__ partials, int splits,
                                             float* __restrict__ C, int M, int N, float alpha, float beta,
                                             const float* __restrict__ bias, unsigned int act) {
    const unsigned long long total = (unsigned long long)M * N;
    GRID_STRIDE_LOOP(i, total) {
        float acc = partials[i];
        for (int z = 1; z < splits; ++z) {
            acc = __fadd_rn(acc, partials[(unsigned long long)z * total + i]);
        }
        const float c_old = beta != 0.0f ? C[i] : 0.0f;
        C[i] = gemm_epilogue(acc, alpha, beta, c_old, bias, (int)(i % (unsigned long long)N), act);
    }
}

// ---------------------------------------------------------------------------------------------------------
// gemm_large: the same product (same arguments, same result) with 128×128 tiles, for the big shapes.
//   - 256 threads; thread (ty, tx) = (tid / 16, tid % 16) owns an 8×8 micro-tile of C: rows ty·4 + {0..3}
//     and 64 + ty·4 + {0..3}, columns tx·4 + {0..3} and 64 + tx·4 + {0..3}. Split in two halves 64 apart,
//     each thread's reads of a shared row are float4s that a warp serves in two wavefronts (Bs) or as a
//     broadcast (As); 64 FMAs per 4 shared float4 loads per k.
//   - K is walked in LBK = 8 slices. Each slice of op(A) (128×8) and op(B) (8×128) is one float4 per thread
//     per operand, loaded from global memory as a float4 when the stored rows allow it (base 16-byte aligned,
//     row length a multiple of 4, the 4 elements in range) and element by element otherwise, so any shape,
//     offset or orientation is correct.
//   - double buffering: two shared buffers per operand. While the block computes slice s from one buffer,
//     each thread already holds slice s+1 in registers (its global loads in flight during the FMAs) and then
//     stores it into the other buffer; one __syncthreads per slice.
// Synchronization: iteration s reads buffer s%2 and writes buffer (s+1)%2, then a barrier. The buffer written
// in iteration s was last read in iteration s−1, which every thread finished before the barrier that ended
// it; the buffer read in iteration s was written before the barrier that ended iteration s−1 (or the
// prologue's). A new tile's prologue writes buffer 0 after the barrier that ended the previous tile's last
// slice. Loop bounds depend only on blockIdx/gridDim and the arguments: every thread reaches every barrier.
// Host limits as for `gemm` (M, N, K <= INT_MAX − 256, sizes checked).
#define LBM 128
#define LBN 128
#define LBK 8
#define GEMM_LARGE_THREADS 256  // (LBM / 8) · (LBN / 8): must match GEMM_LARGE_THREADS in src/backend/cuda/launch.rs
#define LPAD 4                  // rows of 132 floats: 528 bytes, a multiple of 16 (float4) and no bank clash

// Four consecutive elements of a stored row-major matrix with `cols` columns, starting at (row, col):
// one float4 load when allowed (`vec`: base aligned and cols % 4 == 0, so col % 4 == 0 keeps it aligned),
// else element by element; elements outside rows × cols are 0.
__device__ __forceinline__ float4 load_row4(const float* __restrict__ p, int rows, int cols, int row, int col,
                                            bool vec) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row < rows) {
        const float* src = p + (size_t)row * cols + col;
        if (vec && col + 3 < cols) {
            v = *reinterpret_cast<const float4*>(src);
        } else {
            if (col < cols) v.x = src[0];
            if (col + 1 < cols) v.y = src[1];
            if (col + 2 < cols) v.z = src[2];
            if (col + 3 < cols) v.w = src[3];
        }
    }
    return v;
}

// A is (M,K) row-major, or (K,M) when trans_a; B is (K,N), or (N,K) when trans_b; C is (M,N); bias is (N) or
// null. Same contract as `gemm`.
extern "C" __global__ void __launch_bounds__(GEMM_LARGE_THREADS, 1)
gemm_large(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
           int trans_a, int trans_b, float alpha, float beta, const float* __restrict__ bias,
           unsigned int act) {
    __shared__ __align__(16) float As[2][LBK][LBM + LPAD];  // As[buf][k][i] = op(A)(m0 + i, k0 + k)
    __shared__ __align__(16) float Bs[2][LBK][LBN + LPAD];  // Bs[buf][k][j] = op(B)(k0 + k, n0 + j)

    const int tid = threadIdx.x;
    const int tx = tid % 16;
    const int ty = tid / 16;
    // Which float4 of a slice this thread moves. Along the stored rows: a (rows × 8) slice stored with k
    // contiguous is 2 float4 per row (row tid/2, k (tid%2)·4); an (8 × cols) slice is 32 per row (row tid/32,
    // column (tid%32)·4).
    const int across_row = tid / 2, across_k = (tid % 2) * 4;
    const int along_k = tid / 32, along_col = (tid % 32) * 4;
    // float4 loads need 16-byte aligned rows: an aligned base and a row length that is a multiple of 4.
    const bool vec_a = ((reinterpret_cast<size_t>(A) & 15) == 0) && ((trans_a ? M : K) % 4 == 0);
    const bool vec_b = ((reinterpret_cast<size_t>(B) & 15) == 0) && ((trans_b ? K : N) % 4 == 0);
    const bool vec_c = ((reinterpret_cast<size_t>(C) & 15) == 0) && (N % 4 == 0);
    const int tiles_m = M / LBM + (M % LBM != 0);
    const int tiles_n = N / LBN + (N % LBN != 0);

    for (int tile_m = blockIdx.x; tile_m < tiles_m; tile_m += gridDim.x) {
        for (int tile_n = blockIdx.y; tile_n < tiles_n; tile_n += gridDim.y) {
            const int m0 = tile_m * LBM;
            const int n0 = tile_n * LBN;

            // This thread's float4 of the op(A) and op(B) slices starting at k0.
            auto load_a = [&](int k0) {
                return trans_a ? load_row4(A, K, M, k0 + along_k, m0 + along_col, vec_a)
                               : load_row4(A, M, K, m0 + across_row, k0 + across_k, vec_a);
            };
            auto load_b = [&](int k0) {
                return trans_b ? load_row4(B, N, K, n0 + across_row, k0 + across_k, vec_b)
                               : load_row4(B, K, N, k0 + along_k, n0 + along_col, vec_b);
            };
            // ... and where it goes in the k-major shared slices.
            auto store_a = [&](int buf, float4 v) {
                if (trans_a) {
                    *reinterpret_cast<float4*>(&As[buf][along_k][along_col]) = v;
                } else {
                    As[buf][across_k + 0][across_row] = v.x;
                    As[buf][across_k + 1][across_row] = v.y;
                    As[buf][across_k + 2][across_row] = v.z;
                    As[buf][across_k + 3][across_row] = v.w;
                }
            };
            auto store_b = [&](int buf, float4 v) {
                if (trans_b) {
                    Bs[buf][across_k + 0][across_row] = v.x;
                    Bs[buf][across_k + 1][across_row] = v.y;
                    Bs[buf][across_k + 2][across_row] = v.z;
                    Bs[buf][across_k + 3][across_row] = v.w;
                } else {
                    *reinterpret_cast<float4*>(&Bs[buf][along_k][along_col]) = v;
                }
            };

            float acc[8][8];
#pragma unroll
            for (int r = 0; r < 8; ++r) {
#pragma unroll
                for (int c = 0; c < 8; ++c) {
                    acc[r][c] = 0.0f;
                }
            }

            store_a(0, load_a(0));
            store_b(0, load_b(0));
            __syncthreads();  // slice 0 is complete before anyone reads it

            int buf = 0;
            for (int k0 = 0; k0 < K; k0 += LBK) {
                const bool more = k0 + LBK < K;
                float4 next_a, next_b;
                if (more) {  // in flight while the FMAs below run
                    next_a = load_a(k0 + LBK);
                    next_b = load_b(k0 + LBK);
                }
#pragma unroll
                for (int kk = 0; kk < LBK; ++kk) {
                    const float4 a_lo = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
                    const float4 a_hi = *reinterpret_cast<const float4*>(&As[buf][kk][64 + ty * 4]);
                    const float4 b_lo = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
                    const float4 b_hi = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + tx * 4]);
                    const float a[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
                    const float b[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
#pragma unroll
                    for (int r = 0; r < 8; ++r) {
#pragma unroll
                        for (int c = 0; c < 8; ++c) {
                            acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
                        }
                    }
                }
                if (more) {
                    store_a(buf ^ 1, next_a);
                    store_b(buf ^ 1, next_b);
                }
                __syncthreads();  // the next slice is stored, and this one is no longer read
                buf ^= 1;
            }

            // Epilogue: rows r < 4 are ty·4 + r, rows r >= 4 are 64 + ty·4 + (r − 4); the same for columns.
#pragma unroll
            for (int r = 0; r < 8; ++r) {
                const int gi = m0 + (r < 4 ? ty * 4 + r : 64 + ty * 4 + (r - 4));
                if (gi >= M) {
                    continue;
                }
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int gj = n0 + half * 64 + tx * 4;
                    float* dst = C + (size_t)gi * N + gj;
                    const float* v = &acc[r][half * 4];
                    if (vec_c && gj + 3 < N) {
                        float4 old = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                        if (beta != 0.0f) {
                            old = *reinterpret_cast<const float4*>(dst);
                        }
                        float4 out;
                        out.x = gemm_epilogue(v[0], alpha, beta, old.x, bias, gj, act);
                        out.y = gemm_epilogue(v[1], alpha, beta, old.y, bias, gj + 1, act);
                        out.z = gemm_epilogue(v[2], alpha, beta, old.z, bias, gj + 2, act);
                        out.w = gemm_epilogue(v[3], alpha, beta, old.w, bias, gj + 3, act);
                        *reinterpret_cast<float4*>(dst) = out;
                    } else {
#pragma unroll
                        for (int c = 0; c < 4; ++c) {
                            if (gj + c < N) {
                                const float c_old = beta != 0.0f ? dst[c] : 0.0f;
                                dst[c] = gemm_epilogue(v[c], alpha, beta, c_old, bias, gj + c, act);
                            }
                        }
                    }
                }
            }
        }
    }
}
