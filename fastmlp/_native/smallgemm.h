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
 * Blocks of 4 rows x 2 vectors of C stay in registers over the whole k
 * loop, reading rows of op(B) and broadcasting elements of op(A) (any
 * layout); a lone vector of columns takes even and odd k in two sets of
 * registers, so that it does not wait on FMA latency. The last n % W columns
 * of op(B) are first copied, zero-padded to a vector, to a stack buffer
 * (k * W <= FM_SMALL_TAIL elements): as scalars they were slower than BLAS.
 * An op(B) = B^T is first copied to a stack buffer too (k * n <=
 * FM_SMALL_TBUF elements): dot products along k would cost a reduction
 * across vector lanes per element of C. Shapes that need larger buffers are
 * left to BLAS. (The figures behind these choices: docs/benchmarks.md.) Vectors are GCC / Clang vector extensions;
 * FM_HAVE_SMALLGEMM is 0 without them or without AVX2 and FMA, and the
 * functions then return 0. */
#ifndef FASTMLP_SMALLGEMM_H
#define FASTMLP_SMALLGEMM_H
#include <stddef.h>

#define FM_SMALL_TBUF 4096  /* elements of a copy of B^T */
/* elements of the zero-padded last columns of op(B): 64 vectors' worth, so
 * that a tail is handled up to the same k (256 floats, 512 doubles) whatever
 * the vector width (FM_VBYTES below) */
#define FM_SMALL_TAIL (FM_VBYTES * 64)

/* One vector register: with AVX-512, a zmm (16 floats, 8 doubles): on a core
 * whose zmm FMAs run at twice the rate of its ymm ones, twice the work per
 * instruction. */
#if defined(__AVX512F__)
#define FM_VBYTES 64
#else
#define FM_VBYTES 32
#endif

/* Only where measured faster than OpenBLAS: x86-64 with AVX2 and FMA (the
 * default -march=native build on such a CPU). A portable SSE2 build is
 * slower than OpenBLAS, which picks AVX2 kernels at run time. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__AVX2__) && defined(__FMA__)
#define FM_HAVE_SMALLGEMM 1

/* Keep a loaded vector in a register: without this GCC folds the load of a B
 * row into each of the four FMAs that use it, and the loop becomes
 * load-bound. */
#define FM_REG(v) __asm__("" : "+x"(v))

#define FM_DEFINE_SMALLGEMM(NAME, T, W)                                                             \
typedef T NAME##_vec __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));               \
static inline NAME##_vec NAME##_ld(const T *p) { return *(const NAME##_vec *)p; }                   \
static inline void NAME##_st(T *p, NAME##_vec v) { *(NAME##_vec *)p = v; }                          \
/* nc <= W leading lanes of a vector from / to memory */                                            \
static inline NAME##_vec NAME##_ldn(const T *p, ptrdiff_t nc) {                                     \
    NAME##_vec v = {0};                                                                             \
    for (ptrdiff_t q = 0; q < nc; q++) v[q] = p[q];                                                 \
    return v;                                                                                       \
}                                                                                                   \
static inline void NAME##_stn(T *p, NAME##_vec v, ptrdiff_t nc) {                                   \
    for (ptrdiff_t q = 0; q < nc; q++) p[q] = v[q];                                                 \
}                                                                                                   \
/* Rows i..i+3 of C, columns j..j+2W-1: the first vector from b0 (rows ldb0                         \
 * apart), the second from b1 (rows ldb1 apart) with nc1 <= W columns of C. */                      \
static inline void NAME##_block4x2(ptrdiff_t k, const T *a0, ptrdiff_t ars, ptrdiff_t acs,          \
                                   const T *b0p, ptrdiff_t ldb0, const T *b1p, ptrdiff_t ldb1,      \
                                   ptrdiff_t nc1, T beta, T *c0, ptrdiff_t ldc) {                   \
    const T *a1 = a0 + ars, *a2 = a1 + ars, *a3 = a2 + ars;                                         \
    T *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;                                               \
    NAME##_vec s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0};                                          \
    NAME##_vec s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};                                          \
    ptrdiff_t p;                                                                                    \
    if (beta != 0) {                                                                                \
        s00 = beta * NAME##_ld(c0); s01 = beta * NAME##_ldn(c0 + W, nc1);                           \
        s10 = beta * NAME##_ld(c1); s11 = beta * NAME##_ldn(c1 + W, nc1);                           \
        s20 = beta * NAME##_ld(c2); s21 = beta * NAME##_ldn(c2 + W, nc1);                           \
        s30 = beta * NAME##_ld(c3); s31 = beta * NAME##_ldn(c3 + W, nc1);                           \
    }                                                                                               \
    for (p = 0; p < k; p++) {                                                                       \
        NAME##_vec b0 = NAME##_ld(b0p + p * ldb0), b1 = NAME##_ld(b1p + p * ldb1);                  \
        FM_REG(b0); FM_REG(b1);                                                                     \
        T x0 = a0[p * acs], x1 = a1[p * acs], x2 = a2[p * acs], x3 = a3[p * acs];                   \
        s00 += x0 * b0; s01 += x0 * b1;                                                             \
        s10 += x1 * b0; s11 += x1 * b1;                                                             \
        s20 += x2 * b0; s21 += x2 * b1;                                                             \
        s30 += x3 * b0; s31 += x3 * b1;                                                             \
    }                                                                                               \
    NAME##_st(c0, s00); NAME##_st(c1, s10); NAME##_st(c2, s20); NAME##_st(c3, s30);                 \
    if (nc1 == W) {                                                                                 \
        NAME##_st(c0 + W, s01); NAME##_st(c1 + W, s11);                                             \
        NAME##_st(c2 + W, s21); NAME##_st(c3 + W, s31);                                             \
    } else {                                                                                        \
        NAME##_stn(c0 + W, s01, nc1); NAME##_stn(c1 + W, s11, nc1);                                 \
        NAME##_stn(c2 + W, s21, nc1); NAME##_stn(c3 + W, s31, nc1);                                 \
    }                                                                                               \
}                                                                                                   \
/* Rows i..i+3 of C, nc <= W columns from b (rows ldb apart); two sets of                           \
 * accumulators (even and odd p) keep the FMA pipes busy. */                                        \
static inline void NAME##_block4x1(ptrdiff_t k, const T *a0, ptrdiff_t ars, ptrdiff_t acs,          \
                                   const T *bp, ptrdiff_t ldb, ptrdiff_t nc, T beta, T *c0,         \
                                   ptrdiff_t ldc) {                                                 \
    const T *a1 = a0 + ars, *a2 = a1 + ars, *a3 = a2 + ars;                                         \
    T *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;                                               \
    NAME##_vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};      \
    ptrdiff_t p;                                                                                    \
    if (beta != 0) {                                                                                \
        s0 = beta * NAME##_ldn(c0, nc); s1 = beta * NAME##_ldn(c1, nc);                             \
        s2 = beta * NAME##_ldn(c2, nc); s3 = beta * NAME##_ldn(c3, nc);                             \
    }                                                                                               \
    for (p = 0; p + 1 < k; p += 2) {                                                                \
        NAME##_vec b0 = NAME##_ld(bp + p * ldb), b1 = NAME##_ld(bp + (p + 1) * ldb);                \
        FM_REG(b0); FM_REG(b1);                                                                     \
        s0 += a0[p * acs] * b0; t0 += a0[(p + 1) * acs] * b1;                                       \
        s1 += a1[p * acs] * b0; t1 += a1[(p + 1) * acs] * b1;                                       \
        s2 += a2[p * acs] * b0; t2 += a2[(p + 1) * acs] * b1;                                       \
        s3 += a3[p * acs] * b0; t3 += a3[(p + 1) * acs] * b1;                                       \
    }                                                                                               \
    if (p < k) {                                                                                    \
        NAME##_vec b0 = NAME##_ld(bp + p * ldb);                                                    \
        s0 += a0[p * acs] * b0; s1 += a1[p * acs] * b0;                                             \
        s2 += a2[p * acs] * b0; s3 += a3[p * acs] * b0;                                             \
    }                                                                                               \
    NAME##_stn(c0, s0 + t0, nc); NAME##_stn(c1, s1 + t1, nc);                                       \
    NAME##_stn(c2, s2 + t2, nc); NAME##_stn(c3, s3 + t3, nc);                                       \
}                                                                                                   \
/* One row of C, nc <= W columns from b (rows ldb apart). */                                        \
static inline void NAME##_block1x1(ptrdiff_t k, const T *a0, ptrdiff_t acs, const T *bp,            \
                                   ptrdiff_t ldb, ptrdiff_t nc, T beta, T *c0) {                    \
    NAME##_vec s0 = {0}, t0 = {0};                                                                  \
    ptrdiff_t p;                                                                                    \
    if (beta != 0) s0 = beta * NAME##_ldn(c0, nc);                                                  \
    for (p = 0; p + 1 < k; p += 2) {                                                                \
        s0 += a0[p * acs] * NAME##_ld(bp + p * ldb);                                                \
        t0 += a0[(p + 1) * acs] * NAME##_ld(bp + (p + 1) * ldb);                                    \
    }                                                                                               \
    if (p < k) s0 += a0[p * acs] * NAME##_ld(bp + p * ldb);                                         \
    NAME##_stn(c0, s0 + t0, nc);                                                                    \
}                                                                                                   \
static inline __attribute__((always_inline)) int NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, int trans_a, \
                const T *B, int trans_b, T beta, T *C) {                                            \
    ptrdiff_t ars = trans_a ? 1 : k, acs = trans_a ? m : 1, i, j, p, q, nv = n - n % W;             \
    T bt[FM_SMALL_TBUF], tail[FM_SMALL_TAIL];                                                       \
    const T *b = B;                                                                                 \
    if ((nv < n && k * W > FM_SMALL_TAIL) || (trans_b && k * n > FM_SMALL_TBUF)) return 0;          \
    if (trans_b) {                                                                                  \
        for (p = 0; p < k; p++)                                                                     \
            for (q = 0; q < n; q++) bt[p * n + q] = B[q * k + p];                                   \
        b = bt;                                                                                     \
    }                                                                                               \
    if (nv < n)                                                                                     \
        for (p = 0; p < k; p++)                                                                     \
            for (q = 0; q < W; q++) tail[p * W + q] = nv + q < n ? b[p * n + nv + q] : 0;           \
    for (i = 0; i + 4 <= m; i += 4) {                                                               \
        const T *a = A + i * ars;                                                                   \
        T *c = C + i * n;                                                                           \
        for (j = 0; j + 2 * W <= nv; j += 2 * W)                                                    \
            NAME##_block4x2(k, a, ars, acs, b + j, n, b + j + W, n, W, beta, c + j, n);             \
        if (j + W == nv && nv < n)  /* a full vector and the tail */                                \
            NAME##_block4x2(k, a, ars, acs, b + j, n, tail, W, n - nv, beta, c + j, n);             \
        else if (j + W == nv)                                                                       \
            NAME##_block4x1(k, a, ars, acs, b + j, n, W, beta, c + j, n);                           \
        else if (nv < n)                                                                            \
            NAME##_block4x1(k, a, ars, acs, tail, W, n - nv, beta, c + j, n);                       \
    }                                                                                               \
    for (; i < m; i++) {                                                                            \
        const T *a = A + i * ars;                                                                   \
        T *c = C + i * n;                                                                           \
        for (j = 0; j < nv; j += W) NAME##_block1x1(k, a, acs, b + j, n, W, beta, c + j);           \
        if (nv < n) NAME##_block1x1(k, a, acs, tail, W, n - nv, beta, c + nv);                      \
    }                                                                                               \
    return 1;                                                                                       \
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
