"""Matrix products: the BLAS choice, the small-product kernels and the packed-operand kernels.

``gemm_ld`` (in gemm.pyx) is every product's entry: row-major
``C (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * C`` on pointers whose rows
lie lda, ldb, ldc apart, sent to the register-blocked kernels of
``smallgemm.h`` when the product is small and contiguous, else to BLAS (the
OpenBLAS NumPy bundles when the Cython backend found it, scipy's otherwise).
The packed-operand kernels of ``packgemm.h`` (float32) serve the split
training loop, which keeps W, dW and W's optimizer state packed while it runs.
"""
from cython cimport floating
from libc.stdint cimport int64_t

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


cdef struct BlasThreads:
    # the thread-count setter and getter of the BLAS the products call (NULL:
    # unknown, and the training loop then runs on one thread of its own)
    set_threads_t set_threads
    get_threads_t get_threads


cdef BlasThreads* blas_threads() noexcept nogil

cdef void gemm_ld(const floating* A, int lda, const floating* B, int ldb, floating* C, int ldc,
                  int m, int n, int kk, bint trans_a, bint trans_b, double beta) noexcept nogil


cdef inline void gemm_p(const floating* A, const floating* B, floating* C, int m, int n, int kk,
                        bint trans_a, bint trans_b, double beta) noexcept nogil:
    """gemm_ld on contiguous matrices."""
    gemm_ld(A, m if trans_a else kk, B, kk if trans_b else n, C, n, m, n, kk, trans_a, trans_b, beta)


cdef inline bint small_gemm(const floating* A, const floating* B, floating* C, Py_ssize_t m,
                            Py_ssize_t n, Py_ssize_t kk, bint trans_a, bint trans_b,
                            double beta) noexcept nogil:
    if floating is float:
        return fm_small_gemm_f(m, n, kk, A, trans_a, B, trans_b, <float>beta, C) != 0
    else:
        return fm_small_gemm_d(m, n, kk, A, trans_a, B, trans_b, beta, C) != 0


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
