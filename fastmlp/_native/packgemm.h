/* Float32 products of the split training loop, on operands kept packed.
 *
 * A BLAS packs its operands into panels on every call. Inside the split
 * training loop that is repeated work: W changes once per step, in the
 * optimizer, and each of the loop's threads would pack all of W again for
 * its own share of the batch rows. So while the loop runs, W, dW and W's
 * optimizer state live in packed form (the optimizer is elementwise: it
 * runs on them as they are); the loop keeps W^T packed as well, for the
 * products into each dA, and packs each dZ as it makes it, for the dW
 * product (see loop.pyx and split.pxd). The loop keeps a unit packed only
 * where that measured faster than BLAS, per tile set: _pk_unit,
 * _pk_max_rows and _pk_min_weights in loop.pyx; the figures are in
 * docs/benchmarks.md. benchmarks/packgemm_kernel.c times the kernel alone.
 *
 * Packed form of a k x n matrix B: ceil(n / 16) panels of 16 columns, each
 * panel k rows of 16 contiguous floats (zero past column n: the buffers start
 * zeroed, the packing never writes there and the products keep them zero),
 * panel after panel:
 *   Bp[(j / 16) * 16 * k + p * 16 + j % 16] = B[p, j].
 *
 *   fm_pk_gemm(m, n, k, A, rsa, csa, Bp, beta, C, ldc, cps)
 *     C (m x n) = A Bp + beta C, element (i, j) of C at
 *     C[i * ldc + (j / 16) * cps + j % 16]: cps = 16 for a row-major C (rows
 *     ldc apart); ldc = 16 and cps = 16 * (rows of the whole matrix) for C
 *     (or rows of it) in packed form. Element (i, p) of A is
 *     A[i * rsa + p * csa] (rsa = lda, csa = 1 for a row-major A; rsa = 1,
 *     csa = lda for the transpose of a row-major matrix). With beta == 0, C is
 *     not read. Each element of C is one sum over p = 0..k-1 in order, in one
 *     FMA chain: the result does not depend on how the caller splits rows.
 *
 * Blocks of C stay in registers over the whole k loop (no blocking of k: the
 * loop's k is at most a layer's width or the batch, and a 16-column panel of
 * 784 rows, 50 KB, streams from L2): with AVX-512, 8 or 12 rows x 16 columns,
 * a zmm per row; with AVX2 and FMA only, 6 rows x 16 columns in 12 ymm.
 * FM_PACKGEMM_ISA names the one compiled ("avx512", "avx2"). FM_HAVE_PACKGEMM
 * is 0 without AVX2 and FMA; the loop then calls BLAS. */
#ifndef FASTMLP_PACKGEMM_H
#define FASTMLP_PACKGEMM_H
#include <stddef.h>
#include <string.h>

#define FM_PK_NR 16
/* every module that cimports gemm.pxd includes this file; not all of them call everything */
#if defined(__GNUC__)
#define FM_UNUSED __attribute__((unused))
#else
#define FM_UNUSED
#endif
#define FM_PK_MR 6
#define FM_PK_A_BLOCK 65536  /* floats of A per block of rows: 256 KB, half an L2 */

/* floats in the packed form of a k x n matrix */
static inline ptrdiff_t fm_pk_size(ptrdiff_t k, ptrdiff_t n) {
    return (n + FM_PK_NR - 1) / FM_PK_NR * FM_PK_NR * k;
}

/* Rows k0..k1-1 of B (row-major, rows ldb apart, n columns) into Bp, the
 * packed form of a matrix of k rows. */
static FM_UNUSED void fm_pk_pack_rows(const float *B, ptrdiff_t ldb, ptrdiff_t n, ptrdiff_t k, ptrdiff_t k0,
                            ptrdiff_t k1, float *Bp) {
    ptrdiff_t p, j;
    for (j = 0; j < n; j += FM_PK_NR) {
        ptrdiff_t w = n - j < FM_PK_NR ? n - j : FM_PK_NR;
        float *dst = Bp + j * k;
        for (p = k0; p < k1; p++) memcpy(dst + p * FM_PK_NR, B + p * ldb + j, w * sizeof(float));
    }
}

/* The inverse: rows k0..k1-1 of the packed Bp (k rows, n columns) into B. */
static FM_UNUSED void fm_pk_unpack_rows(const float *Bp, ptrdiff_t n, ptrdiff_t k, ptrdiff_t k0, ptrdiff_t k1,
                              float *B, ptrdiff_t ldb) {
    ptrdiff_t p, j;
    for (j = 0; j < n; j += FM_PK_NR) {
        ptrdiff_t w = n - j < FM_PK_NR ? n - j : FM_PK_NR;
        const float *src = Bp + j * k;
        for (p = k0; p < k1; p++) memcpy(B + p * ldb + j, src + p * FM_PK_NR, w * sizeof(float));
    }
}

/* Rows f0..f1-1 of W (fan_in x fan_out, row-major) into Wtp, the packed form
 * of W^T (fan_out rows, fan_in columns): W[f, o] is element (o, f) of W^T. */
static FM_UNUSED void fm_pk_pack_trans_rows(const float *W, ptrdiff_t fan_in, ptrdiff_t fan_out, ptrdiff_t f0,
                                  ptrdiff_t f1, float *Wtp) {
    ptrdiff_t f, o;
    (void)fan_in;
    for (f = f0; f < f1; f++) {
        const float *row = W + f * fan_out;
        float *dst = Wtp + (f / FM_PK_NR) * FM_PK_NR * fan_out + f % FM_PK_NR;
        for (o = 0; o < fan_out; o++) dst[o * FM_PK_NR] = row[o];
    }
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__AVX512F__)
#define FM_HAVE_PACKGEMM 1
#define FM_PACKGEMM_ISA "avx512"
#define FM_PK_ZMM 1
#include <immintrin.h>

/* Rows i..i+MR-1 of C (MR a constant at each call: the accumulators stay in
 * registers), one 16-float zmm each; columns past the mask (the last, partial
 * panel) are neither read nor written. Each element is the same FMA chain in
 * the same order as the AVX2 tile below: the two give equal results. */
static inline __attribute__((always_inline)) void
fm_pk_tile512(const int MR, ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
              const float *bp, float beta, float *c, ptrdiff_t ldc, __mmask16 mask) {
    __m512 acc[16];
    ptrdiff_t p;
    int r;
#pragma GCC unroll 16
    for (r = 0; r < MR; r++) acc[r] = _mm512_setzero_ps();
    for (p = 0; p < k; p++) {
        const __m512 b = _mm512_loadu_ps(bp);
#pragma GCC unroll 16
        for (r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * rsa]), b, acc[r]);
        a += csa;
        bp += FM_PK_NR;
    }
    if (beta != 0.0f) {
        const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
        for (r = 0; r < MR; r++)
            acc[r] = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask, c + r * ldc), acc[r]);
    }
#pragma GCC unroll 16
    for (r = 0; r < MR; r++) _mm512_mask_storeu_ps(c + r * ldc, mask, acc[r]);
}

/* The tile loop, compiled once per layout of A (the strides then are
 * constants), with MR rows per tile (remainders in tiles of 8, 4, 2, 1):
 * MR 8 ran a row-major A fastest on the loop's shapes, MR 12 the transposed
 * one (docs/benchmarks.md). */
#define FM_PK_TILES(MR, RSA, CSA)                                                                  \
    for (i0 = 0; i0 < m; i0 += mc) {                                                               \
        ptrdiff_t i1 = m - i0 < mc ? m : i0 + mc;                                                  \
        for (j = 0; j < n; j += FM_PK_NR) {                                                        \
            const float *bp = Bp + j * k;                                                          \
            float *cj = C + j / FM_PK_NR * cps;                                                    \
            const __mmask16 mask = n - j < FM_PK_NR ? (__mmask16)((1u << (n - j)) - 1u)           \
                                                    : (__mmask16)0xFFFFu;                          \
            for (i = i0; i + (MR) <= i1; i += (MR))                                                \
                fm_pk_tile512(MR, k, A + i * (RSA), RSA, CSA, bp, beta, cj + i * ldc, ldc, mask);  \
            if ((MR) > 8 && i + 8 <= i1) {                                                         \
                fm_pk_tile512(8, k, A + i * (RSA), RSA, CSA, bp, beta, cj + i * ldc, ldc, mask);   \
                i += 8;                                                                            \
            }                                                                                      \
            if (i + 4 <= i1) {                                                                     \
                fm_pk_tile512(4, k, A + i * (RSA), RSA, CSA, bp, beta, cj + i * ldc, ldc, mask);   \
                i += 4;                                                                            \
            }                                                                                      \
            if (i + 2 <= i1) {                                                                     \
                fm_pk_tile512(2, k, A + i * (RSA), RSA, CSA, bp, beta, cj + i * ldc, ldc, mask);   \
                i += 2;                                                                            \
            }                                                                                      \
            if (i < i1)                                                                            \
                fm_pk_tile512(1, k, A + i * (RSA), RSA, CSA, bp, beta, cj + i * ldc, ldc, mask);   \
        }                                                                                          \
    }

static FM_UNUSED void fm_pk_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                       ptrdiff_t csa, const float *Bp, float beta, float *C, ptrdiff_t ldc,
                       ptrdiff_t cps) {
    /* rows of C per block: the block's rows of A (mc x k) stay in L2 while
     * every panel of B passes; a multiple of 24, whole tiles of 8 and of 12 */
    ptrdiff_t i, j, i0, mc = FM_PK_A_BLOCK / (k > 0 ? k : 1) / 24 * 24;
    if (mc < 24) mc = 24;
    if (rsa == 1) {
        FM_PK_TILES(12, 1, csa)
    } else if (csa == 1) {
        FM_PK_TILES(8, rsa, 1)
    } else {
        FM_PK_TILES(8, rsa, csa)
    }
}

#elif (defined(__GNUC__) || defined(__clang__)) && defined(__AVX2__) && defined(__FMA__)
#define FM_HAVE_PACKGEMM 1
#define FM_PACKGEMM_ISA "avx2"
#define FM_PK_ZMM 0
#include <immintrin.h>

/* Rows i..i+mr-1 (mr <= 6) of C, nc <= 16 columns: rows past mr repeat row
 * mr-1 of A (valid memory) and are not stored. */
static inline __attribute__((always_inline)) void
fm_pk_tile(ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, ptrdiff_t mr, const float *bp,
           float beta, float *c, ptrdiff_t ldc, ptrdiff_t nc) {
    const ptrdiff_t o1 = (mr > 1 ? 1 : mr - 1) * rsa, o2 = (mr > 2 ? 2 : mr - 1) * rsa;
    const ptrdiff_t o3 = (mr > 3 ? 3 : mr - 1) * rsa, o4 = (mr > 4 ? 4 : mr - 1) * rsa;
    const ptrdiff_t o5 = (mr > 5 ? 5 : mr - 1) * rsa;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    ptrdiff_t p;
    for (p = 0; p < k; p++) {
        __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        __m256 x = _mm256_broadcast_ss(a), y = _mm256_broadcast_ss(a + o1);
        c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        c10 = _mm256_fmadd_ps(y, b0, c10); c11 = _mm256_fmadd_ps(y, b1, c11);
        x = _mm256_broadcast_ss(a + o2); y = _mm256_broadcast_ss(a + o3);
        c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        c30 = _mm256_fmadd_ps(y, b0, c30); c31 = _mm256_fmadd_ps(y, b1, c31);
        x = _mm256_broadcast_ss(a + o4); y = _mm256_broadcast_ss(a + o5);
        c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        c50 = _mm256_fmadd_ps(y, b0, c50); c51 = _mm256_fmadd_ps(y, b1, c51);
        a += csa;
        bp += FM_PK_NR;
    }
    if (nc == FM_PK_NR) {  /* whole panels: straight stores (the row tests fold away in full tiles) */
        const __m256 vb = _mm256_set1_ps(beta);
#define FM_PK_ROW(r, x0, x1)                                                       \
        if ((r) < mr) {                                                            \
            float *cr = c + (r) * ldc;                                             \
            if (beta != 0.0f) {                                                    \
                x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), x0);                 \
                x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), x1);             \
            }                                                                      \
            _mm256_storeu_ps(cr, x0);                                              \
            _mm256_storeu_ps(cr + 8, x1);                                          \
        }
        FM_PK_ROW(0, c00, c01) FM_PK_ROW(1, c10, c11) FM_PK_ROW(2, c20, c21)
        FM_PK_ROW(3, c30, c31) FM_PK_ROW(4, c40, c41) FM_PK_ROW(5, c50, c51)
#undef FM_PK_ROW
    } else {
        __m256 acc[FM_PK_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
        ptrdiff_t r, q;
        for (r = 0; r < mr; r++) {  /* the last, partial panel */
            float *cr = c + r * ldc, t[FM_PK_NR];
            _mm256_storeu_ps(t, acc[r][0]);
            _mm256_storeu_ps(t + 8, acc[r][1]);
            for (q = 0; q < nc; q++) cr[q] = beta != 0.0f ? __builtin_fmaf(beta, cr[q], t[q]) : t[q];
        }
    }
}

/* The tile loop, compiled once per layout of A (the strides then are
 * constants, which the transposed case needs to run near the FMA peak). */
#define FM_PK_TILES(RSA, CSA)                                                                       \
    for (i0 = 0; i0 < m; i0 += mc) {                                                                \
        ptrdiff_t i1 = m - i0 < mc ? m : i0 + mc;                                                   \
        for (j = 0; j < n; j += FM_PK_NR) {                                                         \
            const float *bp = Bp + j * k;                                                           \
            float *cj = C + j / FM_PK_NR * cps;                                                     \
            ptrdiff_t nc = n - j < FM_PK_NR ? n - j : FM_PK_NR;                                     \
            for (i = i0; i + FM_PK_MR <= i1; i += FM_PK_MR)                                         \
                fm_pk_tile(k, A + i * (RSA), RSA, CSA, FM_PK_MR, bp, beta, cj + i * ldc, ldc, nc);  \
            if (i < i1)                                                                             \
                fm_pk_tile(k, A + i * (RSA), RSA, CSA, i1 - i, bp, beta, cj + i * ldc, ldc, nc);    \
        }                                                                                           \
    }

static FM_UNUSED void fm_pk_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                       ptrdiff_t csa, const float *Bp, float beta, float *C, ptrdiff_t ldc,
                       ptrdiff_t cps) {
    /* rows of C per block: the block's rows of A (mc x k) stay in L2 while
     * every panel of B passes */
    ptrdiff_t i, j, i0, mc = FM_PK_A_BLOCK / (k > 0 ? k : 1) / FM_PK_MR * FM_PK_MR;
    if (mc < FM_PK_MR) mc = FM_PK_MR;
    if (rsa == 1) {
        FM_PK_TILES(1, csa)
    } else if (csa == 1) {
        FM_PK_TILES(rsa, 1)
    } else {
        FM_PK_TILES(rsa, csa)
    }
}

#else
#define FM_HAVE_PACKGEMM 0
#define FM_PACKGEMM_ISA ""
#define FM_PK_ZMM 0
static FM_UNUSED void fm_pk_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                       ptrdiff_t csa, const float *Bp, float beta, float *C, ptrdiff_t ldc,
                       ptrdiff_t cps) {
    (void)m; (void)n; (void)k; (void)A; (void)rsa; (void)csa; (void)Bp; (void)beta; (void)C; (void)ldc;
    (void)cps;
}
#endif
#endif
