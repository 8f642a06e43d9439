/* The FMA peak of the cores a benchmark uses: n threads (OpenMP), each running 12 independent
 * chains of fused multiply-adds in the widest vector registers the build has (zmm, ymm, or
 * scalar), in float32 and float64. Prints one JSON line: GFLOP/s per thread count.
 *
 *   gcc -O3 -march=native -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak 2
 *
 * benchmarks/suite.py compiles and runs it for the physical limit of each workload (the
 * epoch's floating-point operations at this peak). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#if defined(__AVX512F__)
#define VS _mm512_set1_ps
#define VD _mm512_set1_pd
#define FS _mm512_fmadd_ps
#define FD _mm512_fmadd_pd
typedef __m512 vs;
typedef __m512d vd;
#define LANES_S 16
#define REGS "zmm"
static float sum_s(vs v) { return _mm512_reduce_add_ps(v); }
static double sum_d(vd v) { return _mm512_reduce_add_pd(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#define VS _mm256_set1_ps
#define VD _mm256_set1_pd
#define FS _mm256_fmadd_ps
#define FD _mm256_fmadd_pd
typedef __m256 vs;
typedef __m256d vd;
#define LANES_S 8
#define REGS "ymm"
static float sum_s(vs v) { float a[8]; _mm256_storeu_ps(a, v); return a[0] + a[7]; }
static double sum_d(vd v) { double a[4]; _mm256_storeu_pd(a, v); return a[0] + a[3]; }
#else
#error "fma_peak.c needs AVX2 with FMA, or AVX-512"
#endif

/* GFLOP/s of n threads (2 flops per lane per FMA), the best of 3 runs */
static double peak(int n, int dbl) {
    long N = 20000000;
    double best = 0.0;
    for (int r = 0; r < 3; r++) {
        double t0 = now(), sink = 0.0;
#pragma omp parallel num_threads(n) reduction(+ : sink)
        {
            if (dbl) {
                vd a[12], x = VD(0.999999), y = VD(1e-7);
                for (int i = 0; i < 12; i++) a[i] = VD(i);
                for (long k = 0; k < N; k++)
                    for (int i = 0; i < 12; i++) a[i] = FD(a[i], x, y);
                for (int i = 0; i < 12; i++) sink += sum_d(a[i]);
            } else {
                vs a[12], x = VS(0.999999f), y = VS(1e-7f);
                for (int i = 0; i < 12; i++) a[i] = VS((float)i);
                for (long k = 0; k < N; k++)
                    for (int i = 0; i < 12; i++) a[i] = FS(a[i], x, y);
                for (int i = 0; i < 12; i++) sink += sum_s(a[i]);
            }
        }
        double t = now() - t0;
        double flops = 2.0 * 12 * N * (dbl ? LANES_S / 2 : LANES_S) * n;
        if (sink == 12345.678) printf("#");  /* keeps the chains alive */
        if (flops / t / 1e9 > best) best = flops / t / 1e9;
    }
    return best;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    printf("{\"registers\": \"%s\", \"threads\": %d, \"float32_1\": %.2f, \"float64_1\": %.2f, "
           "\"float32_n\": %.2f, \"float64_n\": %.2f}\n",
           REGS, n, peak(1, 0), peak(1, 1), peak(n, 0), peak(n, 1));
    return 0;
}
