"""Matrix products: the BLAS choice, the small-product kernels and the packed-operand kernels.

``gemm_ld`` (inline here) is every product's entry: row-major
``C (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * C`` on pointers whose rows
lie lda, ldb, ldc apart, sent to the register-blocked kernels of
``smallgemm.h`` when the product is small and contiguous, else to BLAS (the
OpenBLAS NumPy bundles when the Cython backend found it, scipy's otherwise).
The packed-operand kernels of ``packgemm.h`` (float32) serve the split
training loop, which keeps W, dW and W's optimizer state packed while it runs.
"""
from cython cimport floating
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport dgemm, sgemm

cdef extern from "smallgemm.h" nogil:
    int FM_HAVE_SMALLGEMM
    int fm_small_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* A, int trans_a,
                        const float* B, int trans_b, float beta, float* C)
    int fm_small_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* A, int trans_a,
                        const double* B, int trans_b, double beta, double* C)

cdef extern from "packgemm.h" nogil:
    int FM_HAVE_PACKGEMM
    const char* FM_PACKGEMM_ISA
    int FM_PK_ZMM
    Py_ssize_t fm_pk_size(Py_ssize_t k, Py_ssize_t n)
    void fm_pk_pack_rows(const float* B, Py_ssize_t ldb, Py_ssize_t n, Py_ssize_t k, Py_ssize_t k0,
                         Py_ssize_t k1, float* Bp)
    void fm_pk_unpack_rows(const float* Bp, Py_ssize_t n, Py_ssize_t k, Py_ssize_t k0, Py_ssize_t k1,
                           float* B, Py_ssize_t ldb)
    void fm_pk_pack_trans_rows(const float* W, Py_ssize_t fan_in, Py_ssize_t fan_out, Py_ssize_t f0,
                               Py_ssize_t f1, float* Wtp)
    void fm_pk_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* A, Py_ssize_t rsa,
                    Py_ssize_t csa, const float* Bp, float beta, float* C, Py_ssize_t ldc,
                    Py_ssize_t cps)


ctypedef void (*set_threads_t)(int) noexcept nogil
ctypedef int (*get_threads_t)() noexcept nogil
ctypedef void (*sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*,
                           const float*, const float*, const int64_t*, const float*, const int64_t*,
                           const float*, float*, const int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*,
                           const double*, const double*, const int64_t*, const double*,
                           const int64_t*, const double*, double*, const int64_t*) noexcept nogil


cdef inline bint small_gemm(const floating* A, const floating* B, floating* C, Py_ssize_t m,
                            Py_ssize_t n, Py_ssize_t kk, bint trans_a, bint trans_b,
                            double beta) noexcept nogil:
    if floating is float:
        return fm_small_gemm_f(m, n, kk, A, trans_a, B, trans_b, <float>beta, C) != 0
    else:
        return fm_small_gemm_d(m, n, kk, A, trans_a, B, trans_b, beta, C) != 0


cdef struct Blas:
    # the ILP64 ?gemm_ of the OpenBLAS NumPy bundles (NULL: scipy's BLAS), its
    # thread-count setter and getter (NULL: unknown, and the training loop then
    # runs on one thread of its own), and the largest product (multiply-adds)
    # the small-product kernels take instead
    sgemm64_t sgemm64
    dgemm64_t dgemm64
    set_threads_t set_threads
    get_threads_t get_threads
    Py_ssize_t small_gemm_max


cdef Blas* blas() noexcept nogil


cdef inline void gemm_ld(const Blas* bl, const floating* A, int lda, const floating* B, int ldb, floating* C,
                         int ldc, int m, int n, int kk, bint trans_a, bint trans_b, double beta) noexcept nogil:
    """C (m, n) = op(A) (m, kk) @ op(B) (kk, n) + beta * C, on row-major pointers whose
    rows lie lda, ldb, ldc elements apart (the training loop's threads take column
    blocks of a matrix this way). Inline: each call site's shapes can specialize
    the dispatch, as they did before the native layer became several modules."""
    # Row-major C is column-major C^T = op(B)^T op(A)^T: swap the operands.
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef floating one = 1
    cdef floating fbeta = <floating>beta
    cdef Py_ssize_t i, j
    cdef int64_t m8, n8, k8, lda8, ldb8, ldc8
    if m == 0 or n == 0:
        return
    if kk == 0:  # empty product: BLAS would reject the leading dimensions
        for i in range(m):
            for j in range(n):
                C[i * ldc + j] = 0 if beta == 0.0 else fbeta * C[i * ldc + j]
        return
    if (<Py_ssize_t>m * n * kk <= bl.small_gemm_max and ldc == n
            and lda == (m if trans_a else kk) and ldb == (kk if trans_b else n)
            and small_gemm(A, B, C, m, n, kk, trans_a, trans_b, beta)):
        return
    m8, n8, k8, lda8, ldb8, ldc8 = m, n, kk, ldb, lda, ldc
    if floating is float:
        if bl.sgemm64 != NULL:
            bl.sgemm64(&ta, &tb, &n8, &m8, &k8, &one, B, &lda8, A, &ldb8, &fbeta, C, &ldc8)
        else:
            sgemm(&ta, &tb, &n, &m, &kk, &one, <float*>B, &ldb, <float*>A, &lda, &fbeta, C, &ldc)
    else:
        if bl.dgemm64 != NULL:
            bl.dgemm64(&ta, &tb, &n8, &m8, &k8, &one, B, &lda8, A, &ldb8, &fbeta, C, &ldc8)
        else:
            dgemm(&ta, &tb, &n, &m, &kk, &one, <double*>B, &ldb, <double*>A, &lda, &fbeta, C, &ldc)


cdef inline void gemm_p(const Blas* bl, const floating* A, const floating* B, floating* C, int m, int n, int kk,
                        bint trans_a, bint trans_b, double beta) noexcept nogil:
    """gemm_ld on contiguous matrices."""
    gemm_ld(bl, A, m if trans_a else kk, B, kk if trans_b else n, C, n, m, n, kk, trans_a, trans_b, beta)


# ------------------------------------------------------- packed operands (float32)
cdef inline void pk_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* A, Py_ssize_t rsa,
                         const float* Bp, floating* C, Py_ssize_t ldc) noexcept nogil:
    # row-major C (m x n) = A (m x k, rows rsa apart) times the packed Bp;
    # float32 only (the loop never packs in float64)
    if floating is float:
        fm_pk_gemm(m, n, k, A, rsa, 1, Bp, 0.0, C, ldc, 16)


cdef inline void pk_gemm_dw(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* A, Py_ssize_t lda,
                            const float* Bp, double beta, float* Cp, Py_ssize_t cps) noexcept nogil:
    # C = A^T Bp + beta C for the transpose of a row-major A (k x m, rows lda
    # apart) and C in packed form (panels cps apart); float32 only
    if floating is float:
        fm_pk_gemm(m, n, k, A, 1, lda, Bp, <float>beta, Cp, 16, cps)


cdef inline void pk_pack(const floating* B, Py_ssize_t n, Py_ssize_t k, Py_ssize_t k0, Py_ssize_t k1,
                         float* Bp) noexcept nogil:
    # rows k0..k1 of the C-contiguous k x n matrix B into its packed form; float32 only
    if floating is float:
        fm_pk_pack_rows(B, n, n, k, k0, k1, Bp)


cdef inline Py_ssize_t pk_floats(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # the packed form's floats, rounded up to 64 bytes
    return (fm_pk_size(k, n) + 15) // 16 * 16


cdef inline float* pk_take(float** at, Py_ssize_t k, Py_ssize_t n, bint want) noexcept nogil:
    # the next packed k x n matrix of a block (NULL, taking nothing, if not want)
    cdef float* p = at[0]
    if not want:
        return NULL
    at[0] += pk_floats(k, n)
    return p


cdef inline bint pk_slack_ok(Py_ssize_t n) noexcept nogil:
    # at most 1/8 of a product's work lost to the zero columns of the last 16-column panel
    return (n + 15) // 16 * 16 * 8 <= 9 * n
