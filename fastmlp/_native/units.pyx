# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The plan's units as raw pointers (fill_units), and the batch-normalization kernels."""
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

cimport numpy as cnp

from fastmlp._native.common cimport *

cnp.import_array()


cdef UnitPtrs* fill_units(object plan, bint training) except NULL:
    """A malloc'd array of the plan's units (the caller frees it): each record,
    and its buffers' data (dA and M only in training). The plan must have
    passed plan.check_train or plan.check_predict."""
    cdef const UnitRec[::1] recs = plan.units
    cdef Py_ssize_t i, n_units = recs.shape[0]
    cdef UnitPtrs* units = <UnitPtrs*>malloc(n_units * sizeof(UnitPtrs))
    if units == NULL:
        raise MemoryError()
    Z, A = plan.Z, plan.A
    dA, M = (plan.dA, plan.M) if training else (None, None)
    for i in range(n_units):
        units[i].r = recs[i]
        units[i].Z = cnp.PyArray_DATA(<cnp.ndarray>Z[i])
        units[i].A = cnp.PyArray_DATA(<cnp.ndarray>A[i])
        units[i].dA = cnp.PyArray_DATA(<cnp.ndarray>dA[i]) if training else NULL
        units[i].M = (cnp.PyArray_DATA(<cnp.ndarray>M[i])
                      if training and (recs[i].kind == UNIT_DROPOUT or recs[i].kind == UNIT_BATCHNORM
                                       or (recs[i].kind == UNIT_RES_ADD and recs[i].fan_in != recs[i].fan_out))
                      else NULL)
        units[i].Wp = units[i].dWp = units[i].mp = units[i].vp = units[i].dZp = units[i].Wtp = NULL
    return units


# ------------------------------------------------------------ batch normalization
# G points at the unit's (4, k) block [gamma, beta, running_mean, running_var],
# S at its (2, k) statistics [batch mean, 1/sqrt(var + eps)] (NULL: inference,
# running statistics). Column sums run row after row into a double scratch
# array of 2k or 3k (malloc'd per call: a few kilobytes beside the step's work).
cdef int bn_forward_p(const floating* X, floating* G, double eps, double momentum, floating* S,
                      floating* Z, floating* A, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Returns -1 when the scratch space cannot be allocated, else 0."""
    cdef Py_ssize_t r, j
    cdef double d, mean, var
    cdef double* acc
    cdef const floating* x
    cdef floating* z
    cdef floating* a
    cdef floating zz
    if S != NULL:
        acc = <double*>malloc(2 * k * sizeof(double))
        if acc == NULL:
            return -1
        for j in range(2 * k):
            acc[j] = 0.0
        for r in range(n):
            x = X + r * k
            for j in range(k):
                acc[j] += x[j]
        for j in range(k):
            acc[j] = acc[j] / n
        for r in range(n):
            x = X + r * k
            for j in range(k):
                d = x[j] - acc[j]
                acc[k + j] += d * d
        for j in range(k):
            mean = acc[j]
            var = acc[k + j] / n
            S[j] = <floating>mean
            S[k + j] = <floating>(1.0 / sqrt(var + eps))
            G[2 * k + j] = <floating>((1.0 - momentum) * G[2 * k + j] + momentum * mean)
            G[3 * k + j] = <floating>((1.0 - momentum) * G[3 * k + j] + momentum * (var * (n / (n - 1.0))))
        free(acc)
        for r in range(n):
            x = X + r * k
            z = Z + r * k
            a = A + r * k
            for j in range(k):
                zz = (x[j] - S[j]) * S[k + j]
                z[j] = zz
                a[j] = zz * G[j] + G[k + j]
    else:
        for r in range(n):
            x = X + r * k
            z = Z + r * k
            a = A + r * k
            for j in range(k):
                zz = (x[j] - G[2 * k + j]) * <floating>(1.0 / sqrt(<double>G[3 * k + j] + eps))
                z[j] = zz
                a[j] = zz * G[j] + G[k + j]
    return 0


cdef int bn_backward_p(const floating* dA, const floating* Z, const floating* G, double eps,
                       const floating* S, floating* dG, floating* dX, Py_ssize_t n,
                       Py_ssize_t k) noexcept nogil:
    """dX == NULL: no input gradient (the first unit). Returns -1 when the scratch
    space cannot be allocated, else 0."""
    cdef Py_ssize_t r, j
    cdef double dy
    cdef double* acc = <double*>malloc(3 * k * sizeof(double))
    cdef const floating* da
    cdef const floating* z
    cdef floating* dx
    if acc == NULL:
        return -1
    for j in range(2 * k):
        acc[j] = 0.0
    for r in range(n):
        da = dA + r * k
        z = Z + r * k
        for j in range(k):
            dy = da[j]
            acc[j] += dy
            acc[k + j] += dy * z[j]
    for j in range(k):
        dG[j] = <floating>acc[k + j]
        dG[k + j] = <floating>acc[j]
        if S != NULL:
            acc[2 * k + j] = <double>G[j] * <double>S[k + j] / n
        else:
            acc[2 * k + j] = <double>G[j] / sqrt(<double>G[3 * k + j] + eps)
    if dX != NULL:
        for r in range(n):
            da = dA + r * k
            z = Z + r * k
            dx = dX + r * k
            if S != NULL:
                for j in range(k):
                    dx[j] = <floating>(acc[2 * k + j] * (n * <double>da[j] - acc[j] - z[j] * acc[k + j]))
            else:
                for j in range(k):
                    dx[j] = <floating>(da[j] * acc[2 * k + j])
    free(acc)
    return 0
