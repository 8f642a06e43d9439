# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The per-request predictor: ``Predictor(plan)`` (see reference.make_predictor)."""
from cython cimport floating
from libc.math cimport isfinite
from libc.stdlib cimport free
from libc.string cimport memcpy

cimport numpy as cnp

from fastmlp._native.common cimport *
from fastmlp._native.gemm cimport Blas, blas, gemm_p
from fastmlp._native.rows cimport _bias_act_row
from fastmlp._native.units cimport UnitPtrs, bn_forward_p, fill_units, maxout_forward_p, prelu_forward_p, sum_rows_p

from fastmlp._native.plan import check_predict

cnp.import_array()

cdef Blas* BLAS = blas()


cdef bint _predict_rows(const floating* X, Py_ssize_t n, Py_ssize_t d, UnitPtrs* units,
                        Py_ssize_t n_units, const floating* params, floating* x_buf,
                        floating* out) noexcept nogil:
    # One forward pass over n <= capacity rows, serial (small batches: a
    # parallel region would cost more than the work). False on NaN/inf in X or in the outputs.
    cdef Py_ssize_t i, r, k
    cdef UnitPtrs* u
    cdef const floating* inp
    cdef floating v
    for i in range(n * d):
        v = X[i]
        if not isfinite(v):
            return False
        x_buf[i] = v
    inp = x_buf
    for i in range(n_units):
        u = &units[i]
        k = u.r.fan_out
        if u.r.kind == UNIT_DENSE:
            # small products: the register-blocked kernels of smallgemm.h, no BLAS call
            gemm_p(BLAS, inp, params + u.r.w_off, <floating*>u.Z, <int>n, <int>k, <int>u.r.fan_in, False, False, 0.0)
            for r in range(n):
                _bias_act_row(<floating*>u.Z + r * k, params + u.r.b_off, <floating*>u.A + r * k, k,
                              u.r.use_bias != 0, <int>u.r.act, <floating>u.r.alpha)
        elif u.r.kind == UNIT_BATCHNORM:
            if bn_forward_p(inp, <floating*>(params + u.r.w_off), u.r.eps, 0.0, <floating*>NULL,
                            <floating*>u.Z, <floating*>u.A, n, k):
                return False
        elif u.r.kind == UNIT_PRELU:
            prelu_forward_p(<const floating*>u.Z, params + u.r.w_off, u.r.shared != 0, <floating*>u.A, n, k)
        elif u.r.kind == UNIT_MAXOUT:
            maxout_forward_p(<const floating*>u.Z, u.r.pieces, <floating*>u.A, n, k)
        elif u.r.kind == UNIT_RES_BEGIN:
            pass  # the identity: its A is the buffer before it
        elif u.r.kind == UNIT_RES_ADD:  # F (inp) + the block's input, or its projection
            if u.r.fan_in == k:
                sum_rows_p(inp, <const floating*>units[u.r.link].A, <floating*>u.Z, n * k)
            else:
                memcpy(u.Z, inp, n * k * sizeof(floating))
                gemm_p(BLAS, <const floating*>units[u.r.link].A, params + u.r.w_off, <floating*>u.Z, <int>n, <int>k,
                       <int>u.r.fan_in, False, False, 1.0)
            if u.r.act != ACT_IDENTITY:
                for r in range(n):
                    _bias_act_row(<floating*>u.Z + r * k, params, <floating*>u.A + r * k, k, False, <int>u.r.act,
                                  <floating>u.r.alpha)
        elif u.r.act != ACT_IDENTITY:
            for r in range(n):
                _bias_act_row(<floating*>u.Z + r * k, params, <floating*>u.A + r * k, k, False, <int>u.r.act,
                              <floating>u.r.alpha)
        elif u.A != u.Z:  # identity (a dropout unit at inference) with a buffer of its own
            memcpy(u.A, u.Z, n * k * sizeof(floating))
        inp = <floating*>u.A
    memcpy(out, inp, n * units[n_units - 1].r.fan_out * sizeof(floating))
    for i in range(n * units[n_units - 1].r.fan_out):
        if not isfinite(out[i]):
            return False  # an output that overflowed: the caller raises, naming X
    return True


cdef class Predictor:
    """Compiled :func:`fastmlp.backends.reference.make_predictor`: the plan is
    checked and turned into raw pointers once; ``run`` checks its two arrays
    with the NumPy C API and makes one GIL-free pass, allocating nothing."""
    cdef UnitPtrs* units
    cdef Py_ssize_t n_units, capacity, d_in, d_out
    cdef int typenum
    cdef char* params
    cdef char* x_buf
    cdef object keep

    def __cinit__(self):
        self.units = NULL

    def __init__(self, plan):
        check_predict(plan, "make_predictor")
        if self.units != NULL:
            raise RuntimeError("a Predictor is made once")
        # the arrays themselves (not the plan, whose lists could change): the
        # raw pointers below stay valid while this object lives
        self.keep = (plan.params, plan.x, tuple(plan.Z), tuple(plan.A))
        self.units = fill_units(plan, False)
        self.n_units = plan.n_units
        self.capacity = plan.rows
        self.d_in = plan.x.shape[1]
        self.d_out = int(plan.units[self.n_units - 1]["fan_out"])
        self.typenum = cnp.PyArray_TYPE(<cnp.ndarray>plan.x)
        self.params = <char*>cnp.PyArray_DATA(<cnp.ndarray>plan.params)
        self.x_buf = <char*>cnp.PyArray_DATA(<cnp.ndarray>plan.x)

    def __dealloc__(self):
        free(self.units)

    def run(self, cnp.ndarray X not None, cnp.ndarray out not None):
        cdef Py_ssize_t n
        cdef bint ok
        if self.units == NULL:
            raise ValueError("predictor: not initialized")
        if (cnp.PyArray_TYPE(X) != self.typenum or cnp.PyArray_NDIM(X) != 2
                or not cnp.PyArray_IS_C_CONTIGUOUS(X) or X.shape[1] != self.d_in
                or X.shape[0] < 1 or X.shape[0] > self.capacity):
            raise ValueError(f"predictor: X must be a C-contiguous array of the model's dtype, "
                             f"(1..{self.capacity}, {self.d_in})")
        n = X.shape[0]
        if (cnp.PyArray_TYPE(out) != self.typenum or cnp.PyArray_NDIM(out) != 2
                or not cnp.PyArray_IS_C_CONTIGUOUS(out) or not cnp.PyArray_ISWRITEABLE(out)
                or out.shape[0] != n or out.shape[1] != self.d_out):
            raise ValueError(f"predictor: out must be a writeable C-contiguous ({n}, {self.d_out}) "
                             "array of the model's dtype")
        if self.typenum == cnp.NPY_FLOAT:
            with nogil:
                ok = _predict_rows(<const float*>cnp.PyArray_DATA(X), n, self.d_in, self.units,
                                   self.n_units, <const float*>self.params, <float*>self.x_buf,
                                   <float*>cnp.PyArray_DATA(out))
        else:
            with nogil:
                ok = _predict_rows(<const double*>cnp.PyArray_DATA(X), n, self.d_in, self.units,
                                   self.n_units, <const double*>self.params, <double*>self.x_buf,
                                   <double*>cnp.PyArray_DATA(out))
        return ok
