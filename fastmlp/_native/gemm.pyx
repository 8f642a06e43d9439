# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Matrix products (see gemm.pxd): the BLAS choice, the small-product
threshold, and the test hooks of the small and packed kernels."""
from libc.stdlib cimport calloc, free

# Whether this build has the small-matrix kernels (x86-64 with AVX2 and FMA).
_HAVE_SMALL_GEMM = bool(FM_HAVE_SMALLGEMM)
# Whether this build has the packed-operand kernels of packgemm.h (x86-64 with
# AVX2 and FMA), on which the split float32 loop runs its products, and its
# instruction set: "avx512" (one 16-float zmm per row of a tile), "avx2" (two
# ymm), or "" without
_HAVE_PACKED_GEMM = bool(FM_HAVE_PACKGEMM)
_PACKED_GEMM_ISA = FM_PACKGEMM_ISA.decode()
_PACKED_GEMM_ZMM = bool(FM_PK_ZMM)


def _set_small_gemm_max(Py_ssize_t n):
    """Largest m*n*k product run by the small-matrix kernels (0: always BLAS); returns the old value.
    For tests and benchmarks."""
    old = _blas.small_gemm_max
    _blas.small_gemm_max = n
    return old


def _small_gemm_kernel(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
                       bint trans_a, bint trans_b, double beta):
    """The small-matrix kernel alone, as gemm (whatever the size): False when
    it does not handle the shapes and left C untouched. For tests."""
    cdef Py_ssize_t m = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t kk = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t n = B.shape[0] if trans_b else B.shape[1]
    cdef bint done
    if (B.shape[1] if trans_b else B.shape[0]) != kk or C.shape[0] != m or C.shape[1] != n:
        raise ValueError("_small_gemm_kernel: shapes do not match")
    if m == 0 or n == 0 or kk == 0:
        raise ValueError("_small_gemm_kernel: empty product")
    with nogil:
        done = small_gemm(&A[0, 0], &B[0, 0], &C[0, 0], m, n, kk, trans_a, trans_b, beta)
    return done


def _packed_product(const float[:, ::1] A, const float[:, ::1] B, bint trans_a, float beta,
                    float[:, ::1] C, bint packed_c=False):
    """C = op(A) @ B + beta * C through packgemm.h, B packed first (op(A) = A.T
    with trans_a). C is row-major (m, n), or with packed_c the packed form of
    an (m, n) matrix as a (ceil(n / 16) * m, 16) array. For tests."""
    cdef Py_ssize_t m = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t k = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t n = B.shape[1], panels = (n + 15) // 16
    cdef float* Bp
    if not FM_HAVE_PACKGEMM:
        raise RuntimeError("this build has no packed-operand kernels (it needs AVX2 and FMA)")
    if B.shape[0] != k:
        raise ValueError(f"op(A) is ({m}, {k}) but B has {B.shape[0]} rows")
    if (packed_c and (C.shape[0] != panels * m or C.shape[1] != 16)) or (
            not packed_c and (C.shape[0] != m or C.shape[1] != n)):
        raise ValueError(f"C has shape ({C.shape[0]}, {C.shape[1]}), wrong for an ({m}, {n}) product")
    if m == 0 or n == 0:
        return
    Bp = <float*>calloc(pk_floats(k, n) + 16, sizeof(float))
    if Bp == NULL:
        raise MemoryError()
    try:
        with nogil:
            if k:
                fm_pk_pack_rows(&B[0, 0], n, n, k, 0, k, Bp)
            fm_pk_gemm(m, n, k, &A[0, 0] if k else Bp, 1 if trans_a else k, m if trans_a else 1, Bp, beta,
                       &C[0, 0], 16 if packed_c else n, 16 * m if packed_c else 16)
    finally:
        free(Bp)


# Which BLAS the products go to. By default scipy's (scipy.linalg.cython_blas);
# fastmlp.backends.cython_backend switches to the OpenBLAS that NumPy's wheel
# bundles when it finds it (a newer build, and the library the GEMM bound is
# measured with). Its interface takes 64-bit integers.
cdef Blas _blas
_blas.sgemm64 = NULL
_blas.dgemm64 = NULL
_blas.set_threads = NULL
_blas.get_threads = NULL
# Products of at most this many multiply-adds go to the register-blocked
# kernels of smallgemm.h instead of BLAS: OpenBLAS runs them on one thread
# too (above, it uses all of n_threads), and at these sizes its interface
# and packing cost as much as the arithmetic.
_blas.small_gemm_max = 262144
_blas_name = "scipy"


cdef Blas* blas() noexcept nogil:
    return &_blas


def _use_blas64(size_t sgemm_address, size_t dgemm_address, str name,
                size_t set_threads_address=0, size_t get_threads_address=0):
    """Send the products to the ILP64 ?gemm_ at these addresses (from ctypes), or back
    to scipy's BLAS with (0, 0, "scipy"); with the library's thread-count setter and
    getter the training loop may run its own threads. Returns the previous name."""
    global _blas_name
    if (sgemm_address == 0) != (dgemm_address == 0):
        raise ValueError("give both ?gemm addresses, or neither")
    if (set_threads_address == 0) != (get_threads_address == 0) or (
            set_threads_address and not sgemm_address):
        raise ValueError("give both thread-count functions, with the ?gemm addresses, or neither")
    old = _blas_name
    _blas.sgemm64 = <sgemm64_t>sgemm_address
    _blas.dgemm64 = <dgemm64_t>dgemm_address
    _blas.set_threads = <set_threads_t>set_threads_address
    _blas.get_threads = <get_threads_t>get_threads_address
    _blas_name = name if sgemm_address else "scipy"
    return old


def blas_name():
    """Which BLAS the compiled kernels call: "scipy" or the library set by _use_blas64."""
    return _blas_name
