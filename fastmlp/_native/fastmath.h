/* Reductions that may be reassociated: the one place fastmlp's compiled
 * kernels let the compiler reorder floating-point sums, so that it can
 * vectorize them (Numba's _jit_reduce does the same with fastmath "reassoc").
 * The sum is accumulated in double; only the order of the additions differs
 * from a sequential loop (relative difference ~1e-16 * sqrt(n)). */
#ifndef FASTMLP_FASTMATH_H
#define FASTMLP_FASTMATH_H
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__)
#define FM_REASSOC __attribute__((optimize("associative-math", "no-signed-zeros", "no-trapping-math")))
#else
#define FM_REASSOC
#endif

static FM_REASSOC double fm_sumsq_f(const float *x, ptrdiff_t n) {
    double s = 0.0;
#if defined(__clang__)
#pragma clang fp reassociate(on)
#endif
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = (double)x[i];
        s += v * v;
    }
    return s;
}

static FM_REASSOC double fm_sumsq_d(const double *x, ptrdiff_t n) {
    double s = 0.0;
#if defined(__clang__)
#pragma clang fp reassociate(on)
#endif
    for (ptrdiff_t i = 0; i < n; i++) {
        s += x[i] * x[i];
    }
    return s;
}
#endif
