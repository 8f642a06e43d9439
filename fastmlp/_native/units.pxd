"""The units of a plan as the compiled loops hold them, and the kernels of the
units that are not row kernels: dropout masks, batch normalization, PReLU and maxout."""
from cython cimport floating
from libc.stdint cimport int64_t, uint64_t

from fastmlp._native.common cimport UNIT_DENSE, UNIT_RES_ADD, UnitRec


cdef struct UnitPtrs:
    # a unit's record and its buffers, as raw pointers (a nogil loop cannot
    # hold the plan's Python lists): built once per call by fill_units
    UnitRec r
    void* Z
    void* A
    void* dA            # training only (else NULL)
    void* M             # dropout: the (rows, fan_out) mask; batch norm: (2, fan_out) statistics; a residual
                        # block end with a projection: the (rows, fan_in) stash dZ @ Wp^T; else NULL
    # dense units of a loop on packed operands (else NULL), in the packed form
    # of packgemm.h: W, dW and W's optimizer state (mp, vp: NULL when the
    # optimizer has none), where the products and the optimizer use them; the
    # batch's dZ, for the dW product; for units after the first W^T, for the
    # product into the previous unit's dA
    float* Wp
    float* dWp
    float* mp
    float* vp
    float* dZp
    float* Wtp


cdef UnitPtrs* fill_units(object plan, bint training) except NULL


# ------------------------------------------------------------ dropout
# The counter-based generator of reference.dropout_mask: nested splitmix64
# streams, in uint64_t arithmetic (modulo 2**64 as C defines it).
cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline void _dropout_mask_p(uint64_t seed, uint64_t step, uint64_t unit, double rate, floating* M,
                                 Py_ssize_t size, Py_ssize_t e0) noexcept nogil:
    """M[e] for the elements e0 .. e0 + size - 1 of the unit's (rows, fan_out) mask."""
    cdef uint64_t golden = 0x9E3779B97F4A7C15ULL
    cdef uint64_t k2 = _mix64(_mix64(seed + golden * (step + 1)) + golden * (unit + 1))
    cdef floating scale = <floating>(1.0 / (1.0 - rate))
    cdef double u
    cdef Py_ssize_t e
    for e in range(size):
        u = <double>(_mix64(k2 + golden * <uint64_t>(e0 + e + 1)) >> 11) * (1.0 / 9007199254740992.0)
        M[e] = scale if u >= rate else 0


cdef inline void _mul_mask_p(const floating* X, const floating* M, floating* out, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t e
    for e in range(size):
        out[e] = X[e] * M[e]


# ------------------------------------------------------------ batch normalization
cdef int bn_forward_p(const floating* X, floating* G, double eps, double momentum, floating* S,
                      floating* Z, floating* A, Py_ssize_t n, Py_ssize_t k) noexcept nogil
cdef int bn_backward_p(const floating* dA, const floating* Z, const floating* G, double eps,
                       const floating* S, floating* dG, floating* dX, Py_ssize_t n,
                       Py_ssize_t k) noexcept nogil


# ------------------------------------------------------------ PReLU and maxout
# (reference._prelu_forward and the others.) alpha points at the unit's block
# of params: one value when shared, else one per feature.
cdef inline void prelu_forward_p(const floating* Z, const floating* alpha, bint shared, floating* A,
                                 Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating z
    for r in range(n):
        for j in range(k):
            z = Z[r * k + j]
            A[r * k + j] = z if z > 0 else (alpha[0] if shared else alpha[j]) * z


cdef inline void prelu_backward_p(const floating* Z, const floating* alpha, bint shared, floating* dA,
                                  double* acc, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # rows 0..n of Z and dA: acc[j] = the sum of min(0, Z) * dA over them (in double; the loop
    # adds the threads' sums into dalpha), then dA *= 1 where Z > 0, alpha elsewhere, in place
    # (PyTorch's derivative at 0: alpha)
    cdef Py_ssize_t r, j
    cdef floating z
    for j in range(k):
        acc[j] = 0.0
    for r in range(n):
        for j in range(k):
            z = Z[r * k + j]
            if not z > 0:
                if z < 0:
                    acc[j] += <double>z * <double>dA[r * k + j]
                dA[r * k + j] = dA[r * k + j] * (alpha[0] if shared else alpha[j])


cdef inline void maxout_forward_p(const floating* Z, Py_ssize_t pieces, floating* A, Py_ssize_t n,
                                  Py_ssize_t k) noexcept nogil:
    # Z: (n, k * pieces), A: (n, k)
    cdef Py_ssize_t r, j, p
    cdef const floating* z
    cdef floating m
    for r in range(n):
        for j in range(k):
            z = Z + (r * k + j) * pieces
            m = z[0]
            for p in range(1, pieces):
                if z[p] > m:
                    m = z[p]
            A[r * k + j] = m


cdef inline void maxout_backward_p(const floating* Z, Py_ssize_t pieces, const floating* dA, floating* dX,
                                   Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # dX: (n, k * pieces), dA at the first arg-max piece of each output (torch.max), 0 elsewhere
    cdef Py_ssize_t r, j, p, best
    cdef const floating* z
    cdef floating* dx
    for r in range(n):
        for j in range(k):
            z = Z + (r * k + j) * pieces
            dx = dX + (r * k + j) * pieces
            best = 0
            for p in range(1, pieces):
                if z[p] > z[best]:
                    best = p
            for p in range(pieces):
                dx[p] = 0
            dx[best] = dA[r * k + j]


# ------------------------------------------------------------ residual blocks
cdef inline bint has_w(const UnitRec* r) noexcept nogil:
    # a unit with a W at w_off, (fan_in, fan_out): dense, or a residual block end with a projection
    return r.kind == UNIT_DENSE or (r.kind == UNIT_RES_ADD and r.fan_in != r.fan_out)


cdef inline void add_rows_p(const floating* X, floating* Y, Py_ssize_t size) noexcept nogil:
    # Y += X
    cdef Py_ssize_t e
    for e in range(size):
        Y[e] = Y[e] + X[e]


cdef inline void sum_rows_p(const floating* X1, const floating* X2, floating* Y, Py_ssize_t size) noexcept nogil:
    # Y = X1 + X2
    cdef Py_ssize_t e
    for e in range(size):
        Y[e] = X1[e] + X2[e]
