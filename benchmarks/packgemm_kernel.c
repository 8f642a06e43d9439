/* The packed-operand kernel of fastmlp/_native/packgemm.h alone, on the split loop's
 * per-thread shapes of the A net (784-256-128-10, 2 threads), one core.
 *
 *   gcc -O3 -march=native -Ifastmlp/_native benchmarks/packgemm_kernel.c -o /tmp/pk && /tmp/pk
 *   gcc -O3 -march=native -mno-avx512f -Ifastmlp/_native benchmarks/packgemm_kernel.c -o /tmp/pk2 && /tmp/pk2
 *
 * (the second build times the AVX2 tiles on a CPU that has AVX-512). Prints,
 * for each shape, the fastest of 5 runs of a loop of calls in microseconds and
 * GFLOP/s, the largest error against a double-precision product, and the
 * FMA peak of one core in ymm and (where compiled) zmm registers, from a loop
 * of 12 independent FMA chains. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "packgemm.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float *filled(size_t n) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < n; i++) p[i] = (float)(rand() % 1000 - 500) / 500.0f;
    return p;
}

/* C (m x n) = A B with A m x k (trans: stored k x m), C row-major or packed */
static void run(const char *name, int m, int n, int k, int trans, int packed_c) {
    float *A = filled((size_t)m * k), *B = filled((size_t)k * n), *Bp = filled(fm_pk_size(k, n));
    float *C = filled(fm_pk_size(m, n) + (size_t)m * n);
    ptrdiff_t rsa = trans ? 1 : k, csa = trans ? m : 1;
    ptrdiff_t ldc = packed_c ? 16 : n, cps = packed_c ? 16 * (ptrdiff_t)m : 16;
    double best = 1e30, err = 0.0, flops = 2.0 * m * n * k;
    int reps = (int)(2e9 / flops) + 10, r, i, j, p;
    memset(Bp, 0, fm_pk_size(k, n) * sizeof(float));
    fm_pk_pack_rows(B, n, n, k, 0, k, Bp);
    for (r = 0; r < 5; r++) {
        double t = now();
        for (i = 0; i < reps; i++) fm_pk_gemm(m, n, k, A, rsa, csa, Bp, 0.0f, C, ldc, cps);
        t = (now() - t) / reps;
        if (t < best) best = t;
    }
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) {
            double s = 0.0;
            for (p = 0; p < k; p++) s += (double)A[i * rsa + p * csa] * B[(size_t)p * n + j];
            err = fmax(err, fabs(C[i * ldc + (j / 16) * cps + j % 16] - s));
        }
    printf("%-24s %4d x %4d x %4d  %8.1f us  %6.1f GFLOP/s  max error %.1e\n", name, m, n, k, best * 1e6,
           flops / best / 1e9, err);
    free(A); free(B); free(Bp); free(C);
}

#if FM_HAVE_PACKGEMM
static void peak(void) {
    long N = 100000000, n;
    int i;
    double t;
    float s = 0.0f, q[16];
    __m256 a[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
    for (i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    t = now();
    for (n = 0; n < N; n++)
        for (i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    t = now() - t;
    for (i = 0; i < 12; i++) { _mm256_storeu_ps(q, a[i]); s += q[0]; }
    printf("FMA peak, one core: ymm %.1f GFLOP/s", N * 12 * 16.0 / t / 1e9);
#if FM_PK_ZMM
    {
        __m512 b[12], X = _mm512_set1_ps(1.0000001f), Y = _mm512_set1_ps(0.9999999f);
        for (i = 0; i < 12; i++) b[i] = _mm512_set1_ps((float)i);
        t = now();
        for (n = 0; n < N / 2; n++)
            for (i = 0; i < 12; i++) b[i] = _mm512_fmadd_ps(b[i], X, Y);
        t = now() - t;
        for (i = 0; i < 12; i++) { _mm512_storeu_ps(q, b[i]); s += q[0]; }
        printf(", zmm %.1f GFLOP/s", N / 2 * 12 * 32.0 / t / 1e9);
    }
#endif
    printf(" (%g)\n", s);
}
#endif

int main(void) {
#if FM_HAVE_PACKGEMM
    printf("fastmlp/_native/packgemm.h tiles: %s\n", FM_PACKGEMM_ISA);
    peak();
    run("forward, layer 1", 64, 256, 784, 0, 0);
    run("forward, layer 2", 64, 128, 256, 0, 0);
    run("into dA1 (W2^T)", 64, 256, 128, 0, 0);
    run("dW1 share (X^T dZ1)", 392, 256, 128, 1, 1);
    run("dW2 share (A1^T dZ2)", 128, 128, 128, 1, 1);
    run("forward, layer 1, b32", 16, 256, 784, 0, 0);
    run("dW1 share, b32", 392, 256, 32, 1, 1);
    return 0;
#else
    printf("this build has no packed-operand kernels (no AVX2 and FMA)\n");
    return 1;
#endif
}
