# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The loop's path policy (see policy.pxd) and its setters, for tests and benchmarks.

The bounds are constants chosen per instruction set from measurements
(docs/benchmarks.md): the loop runs on threads of its own from a step of
262144 multiply-adds (the model's bound for using threads at all:
OpenBLAS's threading threshold, model._BLAS_SERIAL_WORK) with at most one
thread per 16 rows; units stay packed for batches of at most pk_max_rows
rows per thread (the dW products' k is the whole batch and the kernel does
not block k, so huge batches lose; AVX2 tiles win only at small batches
and large layers).
"""
from fastmlp._native.common cimport UNIT_BATCHNORM, UNIT_DENSE, UNIT_PRELU, UNIT_RES_ADD, VAR_RULE, VAR_SERIAL
from fastmlp._native.gemm cimport FM_HAVE_PACKGEMM, FM_PK_ZMM, Blas, blas
from fastmlp._native.runtime cimport Runtime, runtime

cdef extern from "barrier.h" nogil:
    int FM_HAVE_BARRIER
    int FM_HAVE_OPENMP

cdef Runtime* RT = runtime()
cdef Blas* BLAS = blas()
cdef LoopPolicy _pol
_pol.mt_min_work = 262144
_pol.mt_min_rows = 16
_pol.packed_gemm = True
_pol.pk_max_rows = 8192 if FM_PK_ZMM else 32
_pol.pk_min_weights = 1024 if FM_PK_ZMM else 32768
_pol.fold_l2 = True

# Whether this build can split the loop (an OpenMP build with GCC's or clang's atomics)
_HAVE_LOOP_THREADS = bool(FM_HAVE_BARRIER and FM_HAVE_OPENMP)
_PACKED_MAX_ROWS_PER_THREAD = _pol.pk_max_rows
_PACKED_MIN_WEIGHTS = _pol.pk_min_weights


cdef LoopPolicy* loop_policy() noexcept nogil:
    return &_pol


cdef int threads_for(const UnitRec* recs, Py_ssize_t n_units, Py_ssize_t n_params,
                     Py_ssize_t rows, int variant) noexcept nogil:
    # variant SERIAL: 1; SPLIT and PACKED: the split wherever it is valid, whatever the step's work
    cdef Py_ssize_t i, owned = 0, work = 0
    cdef int nt = <int>min(<Py_ssize_t>min(RT.n_threads, <int>MAX_LOOP_THREADS), rows // _pol.mt_min_rows)
    if (variant == VAR_SERIAL or nt < 2 or not FM_HAVE_BARRIER or not FM_HAVE_OPENMP or RT.loop_parallel
            or BLAS.set_threads == NULL or RT.omp_forked):
        return 1
    for i in range(n_units):
        if recs[i].kind == UNIT_BATCHNORM:  # its statistics need the whole batch
            return 1
        if recs[i].kind == UNIT_PRELU:  # its alphas (the threads add their sums for dalpha)
            owned += 1 if recs[i].shared else recs[i].fan_out
        if recs[i].kind == UNIT_DENSE:
            owned += recs[i].fan_in * recs[i].fan_out + (recs[i].fan_out if recs[i].use_bias else 0)
            work += recs[i].fan_in * recs[i].fan_out
        if recs[i].kind == UNIT_RES_ADD and recs[i].fan_in != recs[i].fan_out:  # a projection's Wp
            owned += recs[i].fan_in * recs[i].fan_out
            work += recs[i].fan_in * recs[i].fan_out
    if owned != n_params or (variant == VAR_RULE and work * rows < _pol.mt_min_work):
        return 1
    return nt


def _loop_threads(units, Py_ssize_t n_params, Py_ssize_t rows, int variant=VAR_RULE):
    """How many threads of its own the training loop takes for these unit records
    (plan.UNIT_DTYPE) and batch: the thread bound, capped at one thread per
    mt_min_rows rows, when the loop can split the step (no batch norm, the
    dense and PReLU units and the residual projections own every parameter, the BLAS's thread count can be set to 1
    meanwhile) and the step is big enough; else 1."""
    cdef const UnitRec[::1] recs = units
    return threads_for(&recs[0], recs.shape[0], n_params, rows, variant)


def _set_loop_split_limits(Py_ssize_t min_work, Py_ssize_t min_rows):
    """The smallest step (multiply-adds of its forward products) that the training
    loop splits between threads of its own, and the fewest batch rows per thread;
    returns the old pair. For tests and benchmarks."""
    if min_rows < 1:
        raise ValueError("min_rows must be >= 1")
    old = (_pol.mt_min_work, _pol.mt_min_rows)
    _pol.mt_min_work, _pol.mt_min_rows = min_work, min_rows
    return old


def _set_packed_gemm(bint on):
    """Whether the split float32 loop keeps W, dW and the optimizer's state
    packed and runs its products on packgemm.h's kernels (else in place, with
    BLAS); returns the old setting. For tests and benchmarks."""
    old = _pol.packed_gemm
    _pol.packed_gemm = on
    return old


def _set_packed_max_rows(Py_ssize_t n):
    """The most batch rows per thread for which the split float32 loop runs on
    packed operands; returns the old bound. For tests and benchmarks."""
    if n < 0:
        raise ValueError(f"the bound must be at least 0, got {n}")
    old = _pol.pk_max_rows
    _pol.pk_max_rows = n
    return old


def _set_fold_l2(bint on):
    """Whether Adam on the split loop adds the L2 term in its own pass (else W is
    copied into dW first); returns the old setting. For tests."""
    old = _pol.fold_l2
    _pol.fold_l2 = on
    return old


def _loop_path(units, Py_ssize_t n_params, Py_ssize_t rows, int n_threads, bint single, int variant=VAR_RULE):
    """What a train_steps call would run on, without running it: ``(threads of its
    own, indices of the units on packed operands)`` for these unit records
    (plan.UNIT_DTYPE), a batch of ``rows`` rows, the thread bound ``n_threads``
    (runtime.set_num_threads' value in that call), float32 parameters
    (``single``) and the call's variant (codes.Variant). The same rule as
    loop.pyx's entry point (threads_for, pk_allowed, then pk_unit); tests compare
    the two. For Sequential.loop_path, summary() and the planner."""
    cdef const UnitRec[::1] recs = units
    cdef UnitPtrs u
    cdef Py_ssize_t i
    cdef int saved = RT.n_threads, nt
    RT.n_threads = n_threads if n_threads > 1 else 1  # read by threads_for (the GIL is held)
    try:
        nt = threads_for(&recs[0], recs.shape[0], n_params, rows, variant)
    finally:
        RT.n_threads = saved
    packed = []
    if single and FM_HAVE_PACKGEMM and pk_allowed(&_pol, variant, rows, nt):
        for i in range(recs.shape[0]):
            u.r = recs[i]
            if pk_unit(&_pol, &u, i):
                packed.append(i)
    return nt, tuple(packed)
