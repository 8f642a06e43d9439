/* Products of small matrices, for which a BLAS call costs as much in its
 * interface, buffer set-up and packing as in arithmetic: every product of the
 * 20-64-64-2 net at batch 32 has under 64^3 multiply-adds, and OpenBLAS runs
 * those on one thread anyway (its threshold is m*n*k < 262144).
 *
 *   fm_small_gemm_f / _d(m, n, k, A, trans_a, B, trans_b, beta, C)
 *
 * has the contract of _gemm_p in _kernels.pyx: row-major C (m, n) =
 * op(A) (m, k) @ op(B) (k, n) + beta * C, where op(A) is A (m, k) or, with
 * trans_a, the transpose of A stored (k, m); likewise op(B). With beta == 0,
 * C is not read (as in BLAS). It returns 0 without touching C when it does
 * not handle the shapes (the caller then calls BLAS), else 1.
 *
 * One kernel keeps blocks of 4 rows x 2 vectors of C in registers over the
 * whole k loop, reading rows of op(B) and broadcasting elements of op(A) (any
 * layout). An op(B) = B^T is first copied to a stack buffer (at most
 * FM_SMALL_TBUF elements; 0.8 us for 64 x 64): dot products along k would
 * cost a reduction across vector lanes per element of C, which measured
 * twice as slow as BLAS at 32x64x64. Products narrower than one vector
 * (n < W) with more than 4 rows are left to BLAS: this kernel would run them
 * scalar (32x2x64: 1.4 us against 0.64 us). Each element of C is summed over
 * k in order. Vectors are GCC / Clang vector extensions; FM_HAVE_SMALLGEMM is 0
 * without them or without AVX2 and FMA, and the functions then return 0. */
#ifndef FASTMLP_SMALLGEMM_H
#define FASTMLP_SMALLGEMM_H
#include <stddef.h>

#define FM_SMALL_TBUF 4096

#define FM_VBYTES 32  /* one AVX register */

/* Only where measured faster than OpenBLAS: x86-64 with AVX2 and FMA (the
 * default -march=native build on such a CPU). A portable SSE2 build ran the
 * 20-64-64-2 epoch at 0.17 s with these kernels against 0.10 s with OpenBLAS,
 * which picks AVX2 kernels at run time. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__AVX2__) && defined(__FMA__)
#define FM_HAVE_SMALLGEMM 1

/* Keep a loaded vector in a register: without this GCC folds the load of a B
 * row into each of the four FMAs that use it, and the loop becomes
 * load-bound (measured: 32x64x64 in 5.5 us instead of 3.8 us). */
#define FM_REG(v) __asm__("" : "+x"(v))

#define FM_DEFINE_SMALLGEMM(NAME, T, W)                                                    \
typedef T NAME##_vec __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));       \
static inline NAME##_vec NAME##_ld(const T *p) { return *(const NAME##_vec *)p; }            \
static inline void NAME##_st(T *p, NAME##_vec v) { *(NAME##_vec *)p = v; }                   \
/* C = op(A) @ B + beta * C; op(A)(i, p) = A[i * ars + p * acs], B (k, n) row-major */       \
static void NAME##_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, ptrdiff_t ars,      \
                      ptrdiff_t acs, const T *B, T beta, T *C) {                             \
    ptrdiff_t i = 0, j, p;                                                                   \
    for (; i + 4 <= m; i += 4) {                                                             \
        const T *a0 = A + i * ars, *a1 = a0 + ars, *a2 = a1 + ars, *a3 = a2 + ars;           \
        T *c0 = C + i * n, *c1 = c0 + n, *c2 = c1 + n, *c3 = c2 + n;                         \
        for (j = 0; j + 2 * W <= n; j += 2 * W) {                                            \
            NAME##_vec s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0};                           \
            NAME##_vec s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};                           \
            if (beta != 0) {                                                                 \
                s00 = beta * NAME##_ld(c0 + j); s01 = beta * NAME##_ld(c0 + j + W);          \
                s10 = beta * NAME##_ld(c1 + j); s11 = beta * NAME##_ld(c1 + j + W);          \
                s20 = beta * NAME##_ld(c2 + j); s21 = beta * NAME##_ld(c2 + j + W);          \
                s30 = beta * NAME##_ld(c3 + j); s31 = beta * NAME##_ld(c3 + j + W);          \
            }                                                                                \
            for (p = 0; p < k; p++) {                                                        \
                const T *b = B + p * n + j;                                                  \
                NAME##_vec b0 = NAME##_ld(b), b1 = NAME##_ld(b + W);                         \
                FM_REG(b0); FM_REG(b1);                                                      \
                T x0 = a0[p * acs], x1 = a1[p * acs], x2 = a2[p * acs], x3 = a3[p * acs];    \
                s00 += x0 * b0; s01 += x0 * b1;                                              \
                s10 += x1 * b0; s11 += x1 * b1;                                              \
                s20 += x2 * b0; s21 += x2 * b1;                                              \
                s30 += x3 * b0; s31 += x3 * b1;                                              \
            }                                                                                \
            NAME##_st(c0 + j, s00); NAME##_st(c0 + j + W, s01);                              \
            NAME##_st(c1 + j, s10); NAME##_st(c1 + j + W, s11);                              \
            NAME##_st(c2 + j, s20); NAME##_st(c2 + j + W, s21);                              \
            NAME##_st(c3 + j, s30); NAME##_st(c3 + j + W, s31);                              \
        }                                                                                    \
        for (; j + W <= n; j += W) {                                                         \
            NAME##_vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                               \
            if (beta != 0) {                                                                 \
                s0 = beta * NAME##_ld(c0 + j); s1 = beta * NAME##_ld(c1 + j);                \
                s2 = beta * NAME##_ld(c2 + j); s3 = beta * NAME##_ld(c3 + j);                \
            }                                                                                \
            for (p = 0; p < k; p++) {                                                        \
                NAME##_vec b0 = NAME##_ld(B + p * n + j);                                    \
                FM_REG(b0);                                                                  \
                s0 += a0[p * acs] * b0; s1 += a1[p * acs] * b0;                              \
                s2 += a2[p * acs] * b0; s3 += a3[p * acs] * b0;                              \
            }                                                                                \
            NAME##_st(c0 + j, s0); NAME##_st(c1 + j, s1);                                    \
            NAME##_st(c2 + j, s2); NAME##_st(c3 + j, s3);                                    \
        }                                                                                    \
        for (; j < n; j++) {                                                                 \
            T t0 = 0, t1 = 0, t2 = 0, t3 = 0;                                                \
            if (beta != 0) {                                                                 \
                t0 = beta * c0[j]; t1 = beta * c1[j]; t2 = beta * c2[j]; t3 = beta * c3[j];  \
            }                                                                                \
            for (p = 0; p < k; p++) {                                                        \
                T bv = B[p * n + j];                                                         \
                t0 += a0[p * acs] * bv; t1 += a1[p * acs] * bv;                              \
                t2 += a2[p * acs] * bv; t3 += a3[p * acs] * bv;                              \
            }                                                                                \
            c0[j] = t0; c1[j] = t1; c2[j] = t2; c3[j] = t3;                                  \
        }                                                                                    \
    }                                                                                        \
    for (; i < m; i++) {                                                                     \
        const T *a0 = A + i * ars;                                                           \
        T *c0 = C + i * n;                                                                   \
        for (j = 0; j + W <= n; j += W) {                                                    \
            NAME##_vec s0 = {0};                                                             \
            if (beta != 0) s0 = beta * NAME##_ld(c0 + j);                                    \
            for (p = 0; p < k; p++) s0 += a0[p * acs] * NAME##_ld(B + p * n + j);           \
            NAME##_st(c0 + j, s0);                                                           \
        }                                                                                    \
        for (; j < n; j++) {                                                                 \
            T t0 = beta != 0 ? beta * c0[j] : 0;                                             \
            for (p = 0; p < k; p++) t0 += a0[p * acs] * B[p * n + j];                       \
            c0[j] = t0;                                                                      \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
static int NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, int trans_a,             \
                const T *B, int trans_b, T beta, T *C) {                                     \
    ptrdiff_t ars = trans_a ? 1 : k, acs = trans_a ? m : 1, p, j;                            \
    T buf[FM_SMALL_TBUF];                                                                    \
    if (n < W && m > 4) return 0; /* a column tail only: scalar here, BLAS is faster */   \
    if (!trans_b) {                                                                          \
        NAME##_nn(m, n, k, A, ars, acs, B, beta, C);                                         \
        return 1;                                                                            \
    }                                                                                        \
    if (k * n > FM_SMALL_TBUF) return 0;                                                     \
    for (p = 0; p < k; p++)                                                                  \
        for (j = 0; j < n; j++) buf[p * n + j] = B[j * k + p];                               \
    NAME##_nn(m, n, k, A, ars, acs, buf, beta, C);                                           \
    return 1;                                                                                \
}

FM_DEFINE_SMALLGEMM(fm_small_gemm_f, float, (FM_VBYTES / 4))
FM_DEFINE_SMALLGEMM(fm_small_gemm_d, double, (FM_VBYTES / 8))

#else
#define FM_HAVE_SMALLGEMM 0
static int fm_small_gemm_f(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, int trans_a,
                           const float *B, int trans_b, float beta, float *C) { return 0; }
static int fm_small_gemm_d(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const double *A, int trans_a,
                           const double *B, int trans_b, double beta, double *C) { return 0; }
#endif
#endif
