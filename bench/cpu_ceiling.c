// What this CPU can do at best, to tell our GEMM's losses from the machine's limits (x86-64, AVX-512):
//
//   gcc -O3 -mavx512f -mfma -pthread bench/cpu_ceiling.c -o /tmp/cpu_ceiling
//   /tmp/cpu_ceiling peak THREADS            FMA peak: 24 independent zmm FMA chains per thread, no memory
//   /tmp/cpu_ceiling ukernel KC NA NB [a]    the 12×32 micro-kernel of src/backend/cpu/sgemm.rs, but with
//                                            BOTH operands packed ([p][12] and [p][32]): NA A panels × NB B
//                                            panels of depth KC, B panel outer (one B panel stays in L1 while
//                                            the A panels stream), or A panel outer with `a`
//
// Prints GFLOP/s (2 FLOPs per multiply-add). Single-threaded except `peak`. Not part of the build or tests.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MR 12
#define NR 32

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define PEAK_ITERS (200000000L / 12)

static void *peak_thread(void *out) {
  __m512 acc[24];
  __m512 b = _mm512_set1_ps(1.0001f), c = _mm512_set1_ps(0.9999f);
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < PEAK_ITERS; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
  }
  float s = 0;  // used, so the chains are not optimized away
  for (int i = 0; i < 24; i++) s += _mm512_reduce_add_ps(acc[i]);
  *(float *)out = s;
  return NULL;
}

static int peak(int threads) {
  pthread_t th[64];
  float sink[64];
  if (threads < 1 || threads > 64) return fprintf(stderr, "peak: THREADS in 1..64\n"), 2;
  double t0 = now();
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, peak_thread, &sink[i]);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  double flops = 2.0 * 16 * 24 * PEAK_ITERS * threads;
  printf("FMA peak, %d thread(s): %.1f GFLOP/s\n", threads, flops / (now() - t0) / 1e9);
  return 0;
}

// c (12×32, leading dimension ldc) += a (packed [p][MR]) · b (packed [p][NR]) over kc.
__attribute__((noinline)) static void ukernel(int kc, const float *a, const float *b, float *c, int ldc) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int p = 0; p < kc; p++) {
    __m512 b0 = _mm512_loadu_ps(b + p * NR), b1 = _mm512_loadu_ps(b + p * NR + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      __m512 ai = _mm512_set1_ps(a[p * MR + i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; i++) {
    _mm512_storeu_ps(c + i * ldc, _mm512_add_ps(_mm512_loadu_ps(c + i * ldc), acc[i][0]));
    _mm512_storeu_ps(c + i * ldc + 16, _mm512_add_ps(_mm512_loadu_ps(c + i * ldc + 16), acc[i][1]));
  }
}

static int kernel_bench(int kc, int na, int nb, int a_outer) {
  if (kc < 1 || na < 1 || nb < 1) return fprintf(stderr, "ukernel: KC, NA, NB ≥ 1\n"), 2;
  float *a = aligned_alloc(64, sizeof(float) * MR * kc * na);
  float *b = aligned_alloc(64, sizeof(float) * NR * kc * nb);
  float *c = aligned_alloc(64, sizeof(float) * MR * na * NR * nb);
  for (long i = 0; i < (long)MR * kc * na; i++) a[i] = 1e-3f * (i % 7);
  for (long i = 0; i < (long)NR * kc * nb; i++) b[i] = 1e-3f * (i % 5);
  memset(c, 0, sizeof(float) * MR * na * NR * nb);
  int ldc = NR * nb;
  long reps = 2000000000L / ((long)MR * NR * kc * na * nb) + 1;
  double t0 = now();
  for (long r = 0; r < reps; r++) {
    for (int outer = 0; outer < (a_outer ? na : nb); outer++) {
      for (int inner = 0; inner < (a_outer ? nb : na); inner++) {
        int ia = a_outer ? outer : inner, jb = a_outer ? inner : outer;
        ukernel(kc, a + ia * MR * kc, b + jb * NR * kc, c + ia * MR * ldc + jb * NR, ldc);
      }
    }
  }
  double dt = now() - t0;
  printf("12x32 kernel, packed A and B, kc=%d, %d A x %d B panels, %s panel outer: %.1f GFLOP/s (c[0]=%g)\n", kc,
         na, nb, a_outer ? "A" : "B", 2.0 * MR * NR * kc * na * nb * reps / dt / 1e9, c[0]);
  free(a), free(b), free(c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "peak")) return peak(atoi(argv[2]));
  if ((argc == 5 || argc == 6) && !strcmp(argv[1], "ukernel"))
    return kernel_bench(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), argc == 6);
  fprintf(stderr, "usage: %s peak THREADS | %s ukernel KC NA NB [a]\n", argv[0], argv[0]);
  return 2;
}
