# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: the Cython implementation of :mod:`fastmlp.backends.reference`.

Every kernel exists twice:

* ``c_<name>``: a ``cdef ... noexcept nogil`` function on typed memoryviews,
  callable from a ``nogil`` loop in this module (the whole-epoch training
  loop). It checks nothing: shapes, label ranges and activation codes must
  already be valid. Losses return the loss as a double.
* ``<name>``: the Python ``def`` wrapper with the reference signature. It
  checks shapes, labels and indices (a wrong shape would otherwise write out
  of bounds), releases the GIL and calls ``c_<name>``.

Arrays are C-contiguous float32 or float64 (the fused type ``floating``);
labels and row indices are int64. Element-wise maths runs in the array's
dtype, sums are accumulated in double. Matrix products call BLAS through
``scipy.linalg.cython_blas``. Loops over independent rows (or chunks of a
1-D array) run under ``prange`` when ``set_num_threads(n > 1)`` was called
and the work is large enough to repay a parallel region.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport (
    erf, erff, exp, expf, expm1, expm1f, fabs, fabsf, log, log1p, log1pf, logf,
    isfinite, pow, sqrt, sqrtf, tanh, tanhf,
)
from libc.float cimport DBL_MIN, FLT_MIN
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cimport numpy as cnp

cnp.import_array()
from scipy.linalg.cython_blas cimport dgemm, sgemm

# Mirrors fastmlp.activations (checked at import by backends/cython_backend.py).
cdef enum:
    IDENTITY = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4
    ELU = 5
    SELU = 6
    SOFTPLUS = 7
    SWISH = 8
    GELU = 9
    STEP = 10
    SOFTMAX = 11
    LOG_SOFTMAX = 12
    EXP = 13
    N_ACTIVATIONS = 14

ACTIVATION_CODES = {
    "IDENTITY": IDENTITY, "SIGMOID": SIGMOID, "TANH": TANH, "RELU": RELU,
    "LEAKY_RELU": LEAKY_RELU, "ELU": ELU, "SELU": SELU, "SOFTPLUS": SOFTPLUS,
    "SWISH": SWISH, "GELU": GELU, "STEP": STEP, "SOFTMAX": SOFTMAX,
    "LOG_SOFTMAX": LOG_SOFTMAX, "EXP": EXP,
}

cdef double SELU_ALPHA = 1.6732632423543772848170429916717
cdef double SELU_SCALE = 1.0507009873554804934193349852946
cdef double SQRT_HALF = 0.70710678118654752440084436210485
cdef double INV_SQRT_2PI = 0.39894228040143267793994605993438

cdef int _n_threads = 1
# Below this many elements a parallel region costs more than it saves (and on
# a busy machine a region whose threads wait for a core costs milliseconds).
cdef Py_ssize_t _par_min_work = 65536


def set_num_threads(int n_threads):
    """Bound the OpenMP threads of this module's loops (BLAS is bounded by
    the caller through threadpoolctl)."""
    global _n_threads
    _n_threads = n_threads if n_threads > 1 else 1


def get_num_threads():
    return _n_threads


def _set_parallel_min_work(Py_ssize_t n):
    """Testing hook: the work (elements) from which loops go parallel; returns the old value."""
    global _par_min_work
    old, _par_min_work = _par_min_work, n
    return old


# Inside the training loop the elementwise work between BLAS calls stays on
# one thread by default: an OpenMP team woken right after a threaded GEMM finds
# the BLAS workers still spinning on the other cores, and on a 2-core machine
# each region then waits for a time slice (measured: 10x slower epochs on the
# 784-256-128-10 net). BLAS keeps its threads; see _set_loop_parallel.
cdef bint _loop_parallel = False


def _set_loop_parallel(bint on):
    """Let the training loop's elementwise kernels use OpenMP (off by default);
    returns the old setting. For measurements and tests."""
    global _loop_parallel
    old = _loop_parallel
    _loop_parallel = on
    return old


# Training loops running now whose kernels stay serial (see above); counted
# rather than set, so that loops running at once in several Python threads
# leave nothing changed when the last one ends. Changed with the GIL held.
cdef int _serial_loops = 0


# GNU libgomp cannot run a parallel region in a child forked (os.fork,
# multiprocessing's "fork") after the parent ran one: the child waits forever
# for the parent's team. A child forked after this module ran one stays serial.
cdef bint _omp_started = False
cdef bint _omp_forked = False


def _after_fork_in_child():
    global _omp_forked
    if _omp_started:
        _omp_forked = True


def _forked_serial():
    """Whether this process is a fork of one that ran an OpenMP region, so runs serially."""
    return bool(_omp_forked)


import os as _os
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


cdef inline bint _parallel(Py_ssize_t work) noexcept nogil:
    global _omp_started
    if _n_threads > 1 and work >= _par_min_work and _serial_loops == 0 and not _omp_forked:
        _omp_started = True
        return True
    return False


# Where the training loop's time goes, phase by phase (opt-in: off, a phase
# boundary costs one untaken branch). See loop_phase_times.
PHASES = ("gather", "forward GEMM", "forward elementwise", "loss", "backward GEMM",
          "backward elementwise", "optimizer", "bookkeeping", "thread sync")
cdef enum:
    PH_GATHER = 0
    PH_FWD_GEMM = 1
    PH_FWD_ELEM = 2
    PH_LOSS = 3
    PH_BWD_GEMM = 4
    PH_BWD_ELEM = 5
    PH_OPTIM = 6
    PH_BOOK = 7
    PH_SYNC = 8
    N_PHASES = 9
cdef bint _timing = False
cdef double _phase_s[N_PHASES]


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef inline double _lap(bint timing, int phase, double since) noexcept nogil:
    # charge the time since `since` to phase; returns now (0 when not timing).
    # The loop passes timing = _timing on its first thread only.
    cdef double t
    if not timing:
        return 0.0
    t = _now()
    _phase_s[phase] += t - since
    return t


def loop_phase_times(enable=None, reset=True):
    """Seconds the Cython training loop spent in each of PHASES since the last reset.

    ``enable`` (True / False) switches the timing on or off first (it is off
    by default and costs nothing then); ``reset`` zeroes the totals after
    reading them. Returns a dict {phase: seconds}. Timing a phase boundary
    costs about 20 ns (clock_gettime).
    """
    global _timing
    if enable is not None:
        _timing = bool(enable)
    out = {name: _phase_s[i] for i, name in enumerate(PHASES)}
    if reset:
        for i in range(N_PHASES):
            _phase_s[i] = 0.0
    return out


# ------------------------------------------------------- scalar maths by dtype
cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _erf(floating x) noexcept nogil:
    if floating is float:
        return erff(x)
    else:
        return erf(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _fabs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _flush_denormal(floating x) noexcept nogil:
    # 0 for x below the dtype's smallest normal number in magnitude, else x
    # (optimizer state: see reference.flush_denormals)
    if floating is float:
        return 0 if _fabs(x) < FLT_MIN else x
    else:
        return 0 if _fabs(x) < DBL_MIN else x


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # exp of a non-positive number only: no overflow for either sign.
    cdef floating e = _exp(-_fabs(x))
    if x >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


cdef inline floating _softplus(floating x) noexcept nogil:
    # PyTorch's threshold 20, written without overflow below it.
    if x > 20:
        return x
    return (x if x > 0 else 0) + _log1p(_exp(-_fabs(x)))


cdef inline floating _row_max(const floating* z, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating m = z[0]
    for j in range(1, k):
        if z[j] > m:
            m = z[j]
    return m


# ------------------------------------------------------------ linear algebra
cdef extern from "_barrier.h" nogil:
    int FM_HAVE_BARRIER
    int FM_HAVE_OPENMP
    int fm_team_size()
    ctypedef struct fm_barrier:
        int n
    void fm_barrier_init(fm_barrier* b, int n)
    void fm_barrier_wait(fm_barrier* b, int* local)


cdef extern from "_smallgemm.h" nogil:
    int FM_HAVE_SMALLGEMM
    int fm_small_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* A, int trans_a,
                        const float* B, int trans_b, float beta, float* C)
    int fm_small_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* A, int trans_a,
                        const double* B, int trans_b, double beta, double* C)

# Products of at most this many multiply-adds go to the register-blocked
# kernels of _smallgemm.h instead of BLAS: OpenBLAS runs them on one thread
# too (above, it uses all of n_threads). Per product of the 20-64-64-2 net at
# batch 32 they take 0.2-3.5 us against 0.5-5.5 us in OpenBLAS; at 64^3,
# 5.3-6.2 against 8.5-9.5 us.
cdef Py_ssize_t _small_gemm_max = 262144


# Whether this build has the small-matrix kernels (x86-64 with AVX2 and FMA).
_HAVE_SMALL_GEMM = bool(FM_HAVE_SMALLGEMM)


def _set_small_gemm_max(Py_ssize_t n):
    """Largest m*n*k product run by the small-matrix kernels (0: always BLAS); returns the old value.
    For tests and benchmarks."""
    global _small_gemm_max
    old = _small_gemm_max
    _small_gemm_max = n
    return old


cdef extern from "_packgemm.h" nogil:
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

# Whether this build has the packed-operand kernels of _packgemm.h (x86-64 with
# AVX2 and FMA), on which the split float32 loop runs its products.
_HAVE_PACKED_GEMM = bool(FM_HAVE_PACKGEMM)
# ... and its instruction set: "avx512" (one 16-float zmm per row of a tile),
# "avx2" (two ymm), or "" without
_PACKED_GEMM_ISA = FM_PACKGEMM_ISA.decode()
cdef bint _packed_gemm = True
# ... for batches of at most this many rows per thread, on dense units of at
# least this many weights (see _pk_unit). 2 threads, epochs in turn against
# the same split loop with its products in BLAS (benchmarks/loop_threads_ab.py
# and thread_policy.py; the bounds lifted with _set_packed_max_rows and in
# _pk_unit):
# - avx2 (an AMD EPYC whose zmm FMAs ran at the rate of its ymm ones, ~100
#   GFLOP/s a core): 784-256-128-10 at batch 32 (16 rows per thread) 7-12%
#   faster; at batches 64, 128 and 256 the same within the VM's noise (at 128
#   the forward products took 10% less time, and packing dZ and W^T took it
#   back); at 512 3-6% slower. On 16-512-2, 64-64-10 and 64-128-128-10 5-20%
#   slower, on 128-256-128-10 and up at batch 32 4-9% faster.
# - avx512 (an AMD EPYC with ~270 GFLOP/s a core in zmm, ~135 in ymm, where
#   NumPy's OpenBLAS 0.3.31 runs its Haswell, AVX2 kernels): 784-256-128-10 at
#   batch 32 0.250 against 0.408 s per epoch, at 128 0.196 against 0.310, at
#   512 0.184 against 0.290; every net of thread_policy.py with a layer of
#   1024 weights or more as fast or faster, for example 64-128-128-10 at
#   batch 128 14.7 against 18.2 ms, 100-100-10 at 64 8.2 against 9.8 ms,
#   512-16-2 at 32 9.9 against 11.2 ms. Up to batch 16384 (8192 rows per
#   thread: 0.297 against 0.375 s); at 30000 the same (0.298 against 0.309 s),
#   at 60000 slower (0.370 against 0.310 s): the dW products' k is the whole
#   batch, and the kernel does not block k.
cdef Py_ssize_t _pk_max_rows = 8192 if FM_PK_ZMM else 32
cdef Py_ssize_t _pk_min_weights = 1024 if FM_PK_ZMM else 32768
_PACKED_MAX_ROWS_PER_THREAD = _pk_max_rows
_PACKED_MIN_WEIGHTS = _pk_min_weights


def _set_packed_gemm(bint on):
    """Whether the split float32 loop keeps W, dW and the optimizer's state
    packed and runs its products on _packgemm.h's kernels (else in place, with
    BLAS); returns the old setting. For tests and benchmarks."""
    global _packed_gemm
    old = _packed_gemm
    _packed_gemm = on
    return old


def _set_packed_max_rows(Py_ssize_t n):
    """The most batch rows per thread for which the split float32 loop runs on
    packed operands; returns the old bound. For tests and benchmarks."""
    global _pk_max_rows
    if n < 0:
        raise ValueError(f"the bound must be at least 0, got {n}")
    old = _pk_max_rows
    _pk_max_rows = n
    return old


def _packed_product(const float[:, ::1] A, const float[:, ::1] B, bint trans_a, float beta,
                    float[:, ::1] C, bint packed_c=False):
    """C = op(A) @ B + beta * C through _packgemm.h, B packed first (op(A) = A.T
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
    Bp = <float*>calloc(_pk_floats(k, n) + 16, sizeof(float))
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


cdef inline void _pk_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* A, Py_ssize_t rsa,
                          const float* Bp, floating* C, Py_ssize_t ldc) noexcept nogil:
    # row-major C (m x n) = A (m x k, rows rsa apart) times the packed Bp;
    # float32 only (the loop never packs in float64)
    if floating is float:
        fm_pk_gemm(m, n, k, A, rsa, 1, Bp, 0.0, C, ldc, 16)


cdef inline void _pk_gemm_dw(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* A, Py_ssize_t lda,
                             const float* Bp, double beta, float* Cp, Py_ssize_t cps) noexcept nogil:
    # C = A^T Bp + beta C for the transpose of a row-major A (k x m, rows lda
    # apart) and C in packed form (panels cps apart); float32 only
    if floating is float:
        fm_pk_gemm(m, n, k, A, 1, lda, Bp, <float>beta, Cp, 16, cps)


cdef inline void _pk_pack(const floating* B, Py_ssize_t n, Py_ssize_t k, Py_ssize_t k0, Py_ssize_t k1,
                          float* Bp) noexcept nogil:
    # rows k0..k1 of the C-contiguous k x n matrix B into its packed form; float32 only
    if floating is float:
        fm_pk_pack_rows(B, n, n, k, k0, k1, Bp)


cdef inline bint _pk_unit(const UnitPtrs* u, Py_ssize_t i) noexcept nogil:
    # Whether the split float32 loop keeps unit i packed: a dense unit with a
    # W of at least _pk_min_weights weights, whose products lose at most 1/8
    # of their work to the zero columns of the last 16-column panel (of W, and
    # of W^T where the unit has a product into the previous dA). Smaller and
    # narrower layers stay in place, on BLAS or _smallgemm.h (the measurements
    # behind the bound are at _pk_max_rows).
    return (u.kind == 1 and u.fan_in * u.fan_out >= _pk_min_weights and _pk_slack_ok(u.fan_out)
            and (i == 0 or _pk_slack_ok(u.fan_in)))


cdef inline bint _pk_slack_ok(Py_ssize_t n) noexcept nogil:
    return (n + 15) // 16 * 16 * 8 <= 9 * n


cdef inline float* _pk_take(float** at, Py_ssize_t k, Py_ssize_t n, bint want) noexcept nogil:
    # the next packed k x n matrix of a block (NULL, taking nothing, if not want)
    cdef float* p = at[0]
    if not want:
        return NULL
    at[0] += _pk_floats(k, n)
    return p


cdef inline Py_ssize_t _pk_floats(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # the packed form's floats, rounded up to 64 bytes
    return (fm_pk_size(k, n) + 15) // 16 * 16


cdef inline bint _small_gemm(const floating* A, const floating* B, floating* C, Py_ssize_t m,
                             Py_ssize_t n, Py_ssize_t kk, bint trans_a, bint trans_b,
                             double beta) noexcept nogil:
    if floating is float:
        return fm_small_gemm_f(m, n, kk, A, trans_a, B, trans_b, <float>beta, C) != 0
    else:
        return fm_small_gemm_d(m, n, kk, A, trans_a, B, trans_b, beta, C) != 0


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
        done = _small_gemm(&A[0, 0], &B[0, 0], &C[0, 0], m, n, kk, trans_a, trans_b, beta)
    return done


# Which BLAS the products go to. By default scipy's (scipy.linalg.cython_blas);
# fastmlp.backends.cython_backend switches to the OpenBLAS that NumPy's wheel
# bundles when it finds it (a newer build: 6-20% faster at the benchmark
# nets' shapes, and the library the GEMM bound is measured with). Its
# interface takes 64-bit integers.
ctypedef void (*sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*,
                           const float*, const float*, const int64_t*, const float*, const int64_t*,
                           const float*, float*, const int64_t*) noexcept nogil
ctypedef void (*dgemm64_t)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*,
                           const double*, const double*, const int64_t*, const double*,
                           const int64_t*, const double*, double*, const int64_t*) noexcept nogil
ctypedef void (*set_threads_t)(int) noexcept nogil
ctypedef int (*get_threads_t)() noexcept nogil
cdef sgemm64_t _sgemm64 = NULL
cdef dgemm64_t _dgemm64 = NULL
# That library's openblas_set_num_threads / openblas_get_num_threads (NULL:
# unknown, and the training loop then runs on one thread of its own).
cdef set_threads_t _blas_set_threads = NULL
cdef get_threads_t _blas_get_threads = NULL
_blas_name = "scipy"


def _use_blas64(size_t sgemm_address, size_t dgemm_address, str name,
                size_t set_threads_address=0, size_t get_threads_address=0):
    """Send the products to the ILP64 ?gemm_ at these addresses (from ctypes), or back
    to scipy's BLAS with (0, 0, "scipy"); with the library's thread-count setter and
    getter the training loop may run its own threads. Returns the previous name."""
    global _sgemm64, _dgemm64, _blas_name, _blas_set_threads, _blas_get_threads
    if (sgemm_address == 0) != (dgemm_address == 0):
        raise ValueError("give both ?gemm addresses, or neither")
    if (set_threads_address == 0) != (get_threads_address == 0) or (
            set_threads_address and not sgemm_address):
        raise ValueError("give both thread-count functions, with the ?gemm addresses, or neither")
    old = _blas_name
    _sgemm64 = <sgemm64_t>sgemm_address
    _dgemm64 = <dgemm64_t>dgemm_address
    _blas_set_threads = <set_threads_t>set_threads_address
    _blas_get_threads = <get_threads_t>get_threads_address
    _blas_name = name if sgemm_address else "scipy"
    return old


def blas_name():
    """Which BLAS the compiled kernels call: "scipy" or the library set by _use_blas64."""
    return _blas_name


cdef void _gemm_ld(const floating* A, int lda, const floating* B, int ldb, floating* C, int ldc,
                   int m, int n, int kk, bint trans_a, bint trans_b, double beta) noexcept nogil:
    """C (m, n) = op(A) (m, kk) @ op(B) (kk, n) + beta * C, on row-major pointers whose
    rows lie lda, ldb, ldc elements apart (the training loop's threads take column
    blocks of a matrix this way)."""
    # Row-major C is column-major C^T = op(B)^T op(A)^T: swap the operands.
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef floating one = 1
    cdef floating fbeta = <floating>beta
    cdef Py_ssize_t i, j
    if m == 0 or n == 0:
        return
    if kk == 0:  # empty product: BLAS would reject the leading dimensions
        for i in range(m):
            for j in range(n):
                C[i * ldc + j] = 0 if beta == 0.0 else fbeta * C[i * ldc + j]
        return
    if (<Py_ssize_t>m * n * kk <= _small_gemm_max and ldc == n
            and lda == (m if trans_a else kk) and ldb == (kk if trans_b else n)
            and _small_gemm(A, B, C, m, n, kk, trans_a, trans_b, beta)):
        return
    cdef int64_t m8 = m, n8 = n, k8 = kk, lda8 = ldb, ldb8 = lda, ldc8 = ldc
    if floating is float:
        if _sgemm64 != NULL:
            _sgemm64(&ta, &tb, &n8, &m8, &k8, &one, B, &lda8, A, &ldb8, &fbeta, C, &ldc8)
        else:
            sgemm(&ta, &tb, &n, &m, &kk, &one, <float*>B, &ldb, <float*>A, &lda, &fbeta, C, &ldc)
    else:
        if _dgemm64 != NULL:
            _dgemm64(&ta, &tb, &n8, &m8, &k8, &one, B, &lda8, A, &ldb8, &fbeta, C, &ldc8)
        else:
            dgemm(&ta, &tb, &n, &m, &kk, &one, <double*>B, &ldb, <double*>A, &lda, &fbeta, C, &ldc)


cdef inline void _gemm_p(const floating* A, const floating* B, floating* C, int m, int n, int kk,
                         bint trans_a, bint trans_b, double beta) noexcept nogil:
    """_gemm_ld on contiguous matrices."""
    _gemm_ld(A, m if trans_a else kk, B, kk if trans_b else n, C, n, m, n, kk, trans_a, trans_b,
             beta)


cdef void c_gemm(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
                 bint trans_a, bint trans_b, double beta) noexcept nogil:
    """C = op(A) @ op(B) + beta * C; C is (m, n), op(A) is (m, kk)."""
    cdef int kk = <int>(A.shape[0] if trans_a else A.shape[1])
    if C.shape[0] == 0 or C.shape[1] == 0:
        return
    _gemm_p(&A[0, 0] if A.shape[0] * A.shape[1] else NULL,
            &B[0, 0] if B.shape[0] * B.shape[1] else NULL,
            &C[0, 0], <int>C.shape[0], <int>C.shape[1], kk, trans_a, trans_b, beta)


cdef inline void _gather_span(const floating[:, ::1] X, const int64_t[::1] idx,
                              floating[:, ::1] out, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    # out[i] = X[idx[i]] for i in [r0, r1)
    cdef Py_ssize_t i
    cdef size_t nbytes = X.shape[1] * sizeof(floating)
    if nbytes == 0:
        return
    for i in range(r0, r1):
        memcpy(&out[i, 0], &X[idx[i], 0], nbytes)


cdef void c_gather_rows(const floating[:, ::1] X, const int64_t[::1] idx,
                        floating[:, ::1] out) noexcept nogil:
    """out[i] = X[idx[i]]; idx must lie in [0, X.shape[0])."""
    cdef Py_ssize_t i, n = idx.shape[0], d = X.shape[1]
    if d == 0:
        return
    if _parallel(n * d):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            memcpy(&out[i, 0], &X[idx[i], 0], d * sizeof(floating))
    else:
        _gather_span(X, idx, out, 0, n)


# ------------------------------------------------------------ activations
cdef void _act_row(const floating* z, floating* a, Py_ssize_t k, int act,
                   floating alpha) noexcept nogil:
    """a = f(z) over one row of k values; a may be z. One loop per code so
    that each can vectorize."""
    cdef Py_ssize_t j
    cdef floating x, m, lse
    cdef double acc
    if k == 0:
        return
    if act == IDENTITY:
        if <const floating*>a != z:
            memcpy(a, z, k * sizeof(floating))
    elif act == SIGMOID:
        for j in range(k):
            a[j] = _sigmoid(z[j])
    elif act == TANH:
        for j in range(k):
            a[j] = _tanh(z[j])
    elif act == RELU:
        for j in range(k):
            x = z[j]
            a[j] = 0 if x < 0 else x  # NaN propagates, as np.maximum
    elif act == LEAKY_RELU:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 0 else alpha * x
    elif act == ELU:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 0 else alpha * _expm1(x if x < 0 else <floating>0)
    elif act == SELU:
        for j in range(k):
            x = z[j]
            a[j] = <floating>SELU_SCALE * (
                x if x > 0 else <floating>SELU_ALPHA * _expm1(x if x < 0 else <floating>0))
    elif act == SOFTPLUS:
        for j in range(k):
            a[j] = _softplus(z[j])
    elif act == SWISH:
        for j in range(k):
            x = z[j]
            a[j] = x * _sigmoid(x)
    elif act == GELU:
        for j in range(k):
            x = z[j]
            a[j] = <floating>0.5 * x * (1 + _erf(x * <floating>SQRT_HALF))
    elif act == STEP:
        for j in range(k):
            a[j] = 1 if z[j] > 0 else 0
    elif act == EXP:
        for j in range(k):
            a[j] = _exp(z[j])
    elif act == SOFTMAX:
        m = _row_max(z, k)
        acc = 0.0
        for j in range(k):
            x = _exp(z[j] - m)
            a[j] = x
            acc += x
        x = <floating>acc
        for j in range(k):
            a[j] = a[j] / x
    elif act == LOG_SOFTMAX:
        m = _row_max(z, k)
        acc = 0.0
        for j in range(k):
            acc += _exp(z[j] - m)
        lse = <floating>log(acc)
        for j in range(k):
            a[j] = (z[j] - m) - lse


cdef void c_act_forward(const floating[:, ::1] Z, int act, double alpha,
                        floating[:, ::1] A) noexcept nogil:
    """A = f(Z), (n, k); A may be Z."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef floating falpha = <floating>alpha
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            _act_row(&Z[i, 0], &A[i, 0], k, act, falpha)
    else:
        for i in range(n):
            _act_row(&Z[i, 0], &A[i, 0], k, act, falpha)


cdef inline void _bias_act_row(floating* z, const floating* b, floating* a, Py_ssize_t k,
                               bint has_bias, int act, floating alpha) noexcept nogil:
    cdef Py_ssize_t j
    if has_bias:
        for j in range(k):
            z[j] = z[j] + b[j]
    _act_row(z, a, k, act, alpha)


cdef void c_bias_act_forward(floating[:, ::1] Z, const floating[::1] b, int act, double alpha,
                             floating[:, ::1] A) noexcept nogil:
    """Z += b (skipped when b is empty), then A = f(Z); A may be Z."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef bint has_bias = b.shape[0] != 0
    cdef floating falpha = <floating>alpha
    if n == 0 or k == 0:
        return
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            _bias_act_row(&Z[i, 0], &b[0], &A[i, 0], k, has_bias, act, falpha)
    else:
        for i in range(n):
            _bias_act_row(&Z[i, 0], &b[0], &A[i, 0], k, has_bias, act, falpha)


cdef void c_dense_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                          const floating[::1] b, int act, double alpha,
                          floating[:, ::1] Z, floating[:, ::1] A) noexcept nogil:
    """Z = X @ W + b, A = f(Z)."""
    c_gemm(X, W, Z, False, False, 0.0)
    c_bias_act_forward(Z, b, act, alpha, A)


cdef void _act_grad_row(const floating* z, const floating* a, const floating* da,
                        floating* dz, Py_ssize_t k, int act, floating alpha) noexcept nogil:
    """dz = da * f'(z) over one row (a vector-Jacobian product for the
    row-wise codes); dz may be da."""
    cdef Py_ssize_t j
    cdef floating x, s, e
    cdef double acc
    if k == 0:
        return
    if act == IDENTITY:
        if <const floating*>dz != da:
            memcpy(dz, da, k * sizeof(floating))
    elif act == SIGMOID:
        for j in range(k):
            dz[j] = da[j] * (a[j] * (1 - a[j]))
    elif act == TANH:
        for j in range(k):
            dz[j] = da[j] * (1 - a[j] * a[j])
    elif act == RELU:
        for j in range(k):
            dz[j] = da[j] * (1 if z[j] > 0 else 0)
    elif act == LEAKY_RELU:
        for j in range(k):
            dz[j] = da[j] * (1 if z[j] > 0 else alpha)
    elif act == ELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (1 if x > 0 else alpha * _exp(x))
    elif act == SELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (<floating>SELU_SCALE * (1 if x > 0 else <floating>SELU_ALPHA * _exp(x)))
    elif act == SOFTPLUS:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (1 if x > 20 else _sigmoid(x))
    elif act == SWISH:
        for j in range(k):
            x = z[j]
            s = _sigmoid(x)
            dz[j] = da[j] * (s * (1 + x * (1 - s)))
    elif act == GELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (<floating>0.5 * (1 + _erf(x * <floating>SQRT_HALF))
                             + x * <floating>INV_SQRT_2PI * _exp(<floating>-0.5 * x * x))
    elif act == STEP:  # zero derivative; the def wrapper refuses it
        memset(dz, 0, k * sizeof(floating))
    elif act == EXP:  # exp' = exp
        for j in range(k):
            dz[j] = da[j] * a[j]
    elif act == SOFTMAX:
        acc = 0.0
        for j in range(k):
            acc += da[j] * a[j]
        s = <floating>acc
        for j in range(k):
            dz[j] = a[j] * (da[j] - s)
    elif act == LOG_SOFTMAX:
        acc = 0.0
        for j in range(k):
            acc += da[j]
        s = <floating>acc
        for j in range(k):
            dz[j] = da[j] - _exp(a[j]) * s


cdef void c_act_backward(const floating[:, ::1] Z, const floating[:, ::1] A,
                         const floating[:, ::1] dA, int act, double alpha,
                         floating[:, ::1] dZ) noexcept nogil:
    """dZ = dA * f'(Z), (n, k); dZ may be dA."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef floating falpha = <floating>alpha
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            _act_grad_row(&Z[i, 0], &A[i, 0], &dA[i, 0], &dZ[i, 0], k, act, falpha)
    else:
        for i in range(n):
            _act_grad_row(&Z[i, 0], &A[i, 0], &dA[i, 0], &dZ[i, 0], k, act, falpha)


cdef inline void _col_sums(const floating[:, ::1] dZ, floating* db, Py_ssize_t j0,
                           Py_ssize_t j1) noexcept nogil:
    # Row after row, as NumPy's axis-0 sum of a C array: same rounding.
    cdef Py_ssize_t i, j, n = dZ.shape[0]
    cdef const floating* row
    for j in range(j0, j1):
        db[j] = 0
    for i in range(n):
        row = &dZ[i, 0]
        for j in range(j0, j1):
            db[j] = db[j] + row[j]


cdef void c_bias_grad(const floating[:, ::1] dZ, floating[::1] db) noexcept nogil:
    """db = dZ.sum(axis=0), (k,)."""
    cdef Py_ssize_t t, n = dZ.shape[0], k = dZ.shape[1]
    cdef Py_ssize_t block = 64, nblocks = (k + block - 1) // block
    if k == 0:
        return
    if _parallel(n * k) and nblocks > 1:
        for t in prange(nblocks, schedule='static', nogil=True, num_threads=_n_threads):
            _col_sums(dZ, &db[0], t * block, min(k, (t + 1) * block))
    else:
        _col_sums(dZ, &db[0], 0, k)


cdef void c_dense_backward(const floating[:, ::1] X, const floating[:, ::1] W,
                           const floating[:, ::1] dZ, double l2, floating[:, ::1] dW,
                           floating[::1] db, floating[:, ::1] dX) noexcept nogil:
    """dW = X.T @ dZ + l2 * W; db = dZ.sum(0) unless db is empty;
    dX = dZ @ W.T unless dX is empty."""
    if l2 != 0.0:
        if W.shape[0] * W.shape[1]:
            memcpy(&dW[0, 0], &W[0, 0], W.shape[0] * W.shape[1] * sizeof(floating))
        c_gemm(X, dZ, dW, True, False, l2)
    else:
        c_gemm(X, dZ, dW, True, False, 0.0)
    if db.shape[0] != 0:
        c_bias_grad(dZ, db)
    if dX.shape[0] * dX.shape[1] != 0:
        c_gemm(dZ, W, dX, False, True, 0.0)


# ------------------------------------------------------------ fused losses
cdef inline double _weight_sum(const floating[::1] sw, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double s = 0.0
    if sw.shape[0] == 0:
        return <double>n
    for i in range(n):
        s += sw[i]
    return s


cdef inline double _weight(const floating[::1] sw, Py_ssize_t i) noexcept nogil:
    return 1.0 if sw.shape[0] == 0 else <double>sw[i]


cdef double _sce_row(const floating* z, int64_t y, floating c, floating* p, floating* dz,
                     Py_ssize_t k) noexcept nogil:
    """Row of softmax + cross-entropy: returns lse - s[y]; p, dz may be z."""
    cdef Py_ssize_t j
    cdef floating m, lse, x
    cdef double acc = 0.0, loss
    if k == 0:
        return 0.0
    m = _row_max(z, k)
    for j in range(k):
        acc += _exp(z[j] - m)
    lse = <floating>log(acc)
    loss = <double>(lse - (z[y] - m))
    for j in range(k):
        x = _exp((z[j] - m) - lse)
        p[j] = x
        dz[j] = (x - (1 if j == y else 0)) * c
    return loss


cdef double c_softmax_cross_entropy(const floating[:, ::1] Z, const int64_t[::1] y,
                                    const floating[::1] sample_weight, floating[:, ::1] P,
                                    floating[:, ::1] dZ) noexcept nogil:
    """Weighted mean cross-entropy of softmax(Z) against labels y; P, dZ (OUT)."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef double wsum = _weight_sum(sample_weight, n), w, total = 0.0
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            w = _weight(sample_weight, i)
            total += w * _sce_row(&Z[i, 0], y[i], <floating>(w / wsum), &P[i, 0], &dZ[i, 0], k)
    else:
        for i in range(n):
            w = _weight(sample_weight, i)
            total += w * _sce_row(&Z[i, 0], y[i], <floating>(w / wsum), &P[i, 0], &dZ[i, 0], k)
    return total / wsum


cdef double _sce_onehot_row(const floating* z, const floating* t, floating c, floating* p,
                            floating* dz, Py_ssize_t k) noexcept nogil:
    """Row of softmax + cross-entropy with target row t: returns -sum t*log p."""
    cdef Py_ssize_t j
    cdef floating m, lse, logp, x, tsum
    cdef double acc = 0.0, tacc = 0.0, loss = 0.0
    if k == 0:
        return 0.0
    m = _row_max(z, k)
    for j in range(k):
        acc += _exp(z[j] - m)
        tacc += t[j]
    lse = <floating>log(acc)
    tsum = <floating>tacc
    for j in range(k):
        logp = (z[j] - m) - lse
        loss -= t[j] * logp
        x = _exp(logp)
        p[j] = x
        dz[j] = (x * tsum - t[j]) * c
    return loss


cdef double c_softmax_cross_entropy_onehot(const floating[:, ::1] Z, const floating[:, ::1] Y,
                                           const floating[::1] sample_weight, floating[:, ::1] P,
                                           floating[:, ::1] dZ) noexcept nogil:
    """As c_softmax_cross_entropy with probability targets Y, (n, k)."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef double wsum = _weight_sum(sample_weight, n), w, total = 0.0
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            w = _weight(sample_weight, i)
            total += w * _sce_onehot_row(&Z[i, 0], &Y[i, 0], <floating>(w / wsum),
                                         &P[i, 0], &dZ[i, 0], k)
    else:
        for i in range(n):
            w = _weight(sample_weight, i)
            total += w * _sce_onehot_row(&Z[i, 0], &Y[i, 0], <floating>(w / wsum),
                                         &P[i, 0], &dZ[i, 0], k)
    return total / wsum


cdef double c_nll_loss(const floating[:, ::1] logP, const int64_t[::1] y,
                       const floating[::1] sample_weight, floating[:, ::1] dlogP) noexcept nogil:
    """Weighted mean of -logP[i, y[i]]; dlogP (OUT) is -w_i / sum(w) at y[i], else 0."""
    cdef Py_ssize_t i, n = logP.shape[0], k = logP.shape[1]
    cdef double wsum = _weight_sum(sample_weight, n), w, total = 0.0
    cdef double lp
    if k == 0:
        return total / wsum
    for i in range(n):
        w = _weight(sample_weight, i)
        lp = logP[i, y[i]]  # read before zeroing: dlogP may be logP
        total += w * lp
        memset(&dlogP[i, 0], 0, k * sizeof(floating))
        dlogP[i, y[i]] = -<floating>(w / wsum)
    return -total / wsum


cdef double _bce_row(const floating* z, const floating* t, floating c, floating* p,
                     floating* dz, Py_ssize_t k) noexcept nogil:
    """Row of sigmoid + binary cross-entropy (softplus form): returns the row's sum."""
    cdef Py_ssize_t j
    cdef floating x, s
    cdef double loss = 0.0
    for j in range(k):
        x = z[j]
        loss += (x if x > 0 else 0) - x * t[j] + _log1p(_exp(-_fabs(x)))
        s = _sigmoid(x)
        p[j] = s
        dz[j] = (s - t[j]) * c
    return loss


cdef double c_sigmoid_binary_cross_entropy(const floating[:, ::1] Z, const floating[:, ::1] Y,
                                           const floating[::1] sample_weight, floating[:, ::1] P,
                                           floating[:, ::1] dZ) noexcept nogil:
    """Weighted mean (over rows, then columns) of BCE-with-logits; P, dZ (OUT)."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef double denom = _weight_sum(sample_weight, n) * k, w, total = 0.0
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            w = _weight(sample_weight, i)
            total += w * _bce_row(&Z[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                  &dZ[i, 0], k)
    else:
        for i in range(n):
            w = _weight(sample_weight, i)
            total += w * _bce_row(&Z[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                  &dZ[i, 0], k)
    return total / denom


cdef double _mse_row(const floating* yhat, const floating* t, floating c, floating* dy,
                     Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating diff
    cdef double loss = 0.0
    for j in range(k):
        diff = yhat[j] - t[j]
        loss += diff * diff
        dy[j] = diff * c
    return loss


cdef double c_mse_loss(const floating[:, ::1] Yhat, const floating[:, ::1] Y,
                       const floating[::1] sample_weight, floating[:, ::1] dYhat) noexcept nogil:
    """Weighted mean squared error (mean over columns too); dYhat (OUT)."""
    cdef Py_ssize_t i, n = Yhat.shape[0], k = Yhat.shape[1]
    cdef double denom = _weight_sum(sample_weight, n) * k, w, total = 0.0
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            w = _weight(sample_weight, i)
            total += w * _mse_row(&Yhat[i, 0], &Y[i, 0], <floating>(2.0 * w / denom),
                                  &dYhat[i, 0], k)
    else:
        for i in range(n):
            w = _weight(sample_weight, i)
            total += w * _mse_row(&Yhat[i, 0], &Y[i, 0], <floating>(2.0 * w / denom),
                                  &dYhat[i, 0], k)
    return total / denom


cdef double _poisson_row(const floating* z, const floating* t, floating c, floating* p,
                         floating* dz, Py_ssize_t k) noexcept nogil:
    """Row of the Poisson loss from log-rates: returns sum exp(z) - t*z; p = exp(z)."""
    cdef Py_ssize_t j
    cdef floating x, e
    cdef double loss = 0.0
    for j in range(k):
        x = z[j]
        e = _exp(x)
        loss += e - t[j] * x
        p[j] = e
        dz[j] = (e - t[j]) * c
    return loss


cdef double c_poisson_loss(const floating[:, ::1] Z, const floating[:, ::1] Y,
                           const floating[::1] sample_weight, floating[:, ::1] P,
                           floating[:, ::1] dZ) noexcept nogil:
    """Weighted mean (over rows, then columns) of exp(z) - y*z; P = exp(Z), dZ (OUT).
    Targets must already be >= 0."""
    cdef Py_ssize_t i, n = Z.shape[0], k = Z.shape[1]
    cdef double denom = _weight_sum(sample_weight, n) * k, w, total = 0.0
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            w = _weight(sample_weight, i)
            total += w * _poisson_row(&Z[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                      &dZ[i, 0], k)
    else:
        for i in range(n):
            w = _weight(sample_weight, i)
            total += w * _poisson_row(&Z[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                      &dZ[i, 0], k)
    return total / denom


# ------------------------------------------------------------ optimizers
# Each update is a span kernel over [0, n) of raw pointers; the driver runs it
# once, or on one contiguous chunk per thread.
cdef inline Py_ssize_t _chunk(Py_ssize_t n, int nt) noexcept nogil:
    return (n + nt - 1) // nt


cdef inline void _sgd_span(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                           floating lr, floating mom, bint nesterov) noexcept nogil:
    # Loads into locals first: the compiler then vectorizes without re-reading
    # what it stored (measured on Adam: 291 -> 136 us for 235k floats).
    # State below the smallest normal number is flushed to 0 (see
    # reference.flush_denormals): denormal arithmetic doubled Adam's time.
    cdef Py_ssize_t i
    cdef floating gi, bi
    if mom == 0:
        for i in range(n):
            p[i] -= lr * g[i]
    elif nesterov:
        for i in range(n):
            gi = g[i]
            bi = buf[i] * mom + gi
            bi = _flush_denormal(bi)
            buf[i] = bi
            p[i] -= lr * (gi + mom * bi)
    else:
        for i in range(n):
            bi = buf[i] * mom + g[i]
            bi = _flush_denormal(bi)
            buf[i] = bi
            p[i] -= lr * bi


cdef void c_sgd_update(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr,
                       double momentum, bint nesterov) noexcept nogil:
    """SGD as torch.optim.SGD (dampening 0); buf untouched without momentum."""
    cdef Py_ssize_t t, s, n = p.shape[0], c
    cdef int nt = _n_threads
    cdef floating flr = <floating>lr, fmom = <floating>momentum
    cdef floating* pbuf = NULL
    if n == 0:
        return
    if momentum != 0.0:
        pbuf = &buf[0]
    if _parallel(n):
        c = _chunk(n, nt)
        for t in prange(nt, schedule='static', nogil=True, num_threads=nt):
            s = t * c
            if s < n:
                _sgd_span(&p[s], &g[s], pbuf + s if pbuf != NULL else NULL,
                          min(c, n - s), flr, fmom, nesterov)
    else:
        _sgd_span(&p[0], &g[0], pbuf, n, flr, fmom, nesterov)


cdef inline void _rmsprop_span(floating* p, const floating* g, floating* sq, Py_ssize_t n,
                               floating lr, floating rho, floating one_m_rho,
                               floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, si
    for i in range(n):
        gi = g[i]
        si = sq[i] * rho + one_m_rho * gi * gi
        si = _flush_denormal(si)
        sq[i] = si
        p[i] -= lr * gi / (_sqrt(si) + eps)


cdef void c_rmsprop_update(floating[::1] p, const floating[::1] g, floating[::1] sq, double lr,
                           double rho, double eps) noexcept nogil:
    """RMSprop as torch.optim.RMSprop (alpha=rho, centered=False)."""
    cdef Py_ssize_t t, s, n = p.shape[0], c
    cdef int nt = _n_threads
    cdef floating flr = <floating>lr, frho = <floating>rho, f1mr = <floating>(1.0 - rho)
    cdef floating feps = <floating>eps
    if n == 0:
        return
    if _parallel(n):
        c = _chunk(n, nt)
        for t in prange(nt, schedule='static', nogil=True, num_threads=nt):
            s = t * c
            if s < n:
                _rmsprop_span(&p[s], &g[s], &sq[s], min(c, n - s), flr, frho, f1mr, feps)
    else:
        _rmsprop_span(&p[0], &g[0], &sq[0], n, flr, frho, f1mr, feps)


cdef inline void _adam_span(floating* p, floating* g, floating* m, floating* v,
                            Py_ssize_t n, floating b1, floating one_m_b1, floating b2,
                            floating one_m_b2, floating step_size, floating bc2_sqrt,
                            floating eps, floating l2) noexcept nogil:
    # l2 != 0: g is the data term of the gradient; g + l2 * p is written back
    # to g and used (the training loop folds its L2 penalty in here, saving
    # a copy of W and a pass over dW). Two loops rather than a test inside
    # one: each stays plainly vectorizable whatever the compiler does with it.
    cdef Py_ssize_t i
    cdef floating gi, mi, vi
    if l2 != 0:
        for i in range(n):
            gi = g[i] + l2 * p[i]
            g[i] = gi
            mi = m[i] * b1 + one_m_b1 * gi
            vi = v[i] * b2 + one_m_b2 * gi * gi
            mi = _flush_denormal(mi)
            vi = _flush_denormal(vi)
            m[i] = mi
            v[i] = vi
            p[i] -= step_size * mi / (_sqrt(vi) / bc2_sqrt + eps)
        return
    for i in range(n):
        gi = g[i]
        mi = m[i] * b1 + one_m_b1 * gi
        vi = v[i] * b2 + one_m_b2 * gi * gi
        mi = _flush_denormal(mi)
        vi = _flush_denormal(vi)
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (_sqrt(vi) / bc2_sqrt + eps)


cdef void c_adam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                        double lr, double beta1, double beta2, double eps,
                        double step) noexcept nogil:
    """Adam as torch.optim.Adam (bias-corrected; step counts from 1)."""
    cdef Py_ssize_t t, s, n = p.shape[0], c
    cdef int nt = _n_threads
    cdef floating b1 = <floating>beta1, b2 = <floating>beta2
    cdef floating omb1 = <floating>(1.0 - beta1), omb2 = <floating>(1.0 - beta2)
    cdef floating step_size = <floating>(lr / (1.0 - pow(beta1, step)))
    cdef floating bc2_sqrt = <floating>sqrt(1.0 - pow(beta2, step))
    cdef floating feps = <floating>eps
    if n == 0:
        return
    if _parallel(n):
        c = _chunk(n, nt)
        for t in prange(nt, schedule='static', nogil=True, num_threads=nt):
            s = t * c
            if s < n:
                _adam_span(&p[s], <floating*>&g[s], &m[s], &v[s], min(c, n - s), b1, omb1, b2, omb2,
                           step_size, bc2_sqrt, feps, 0)
    else:
        _adam_span(&p[0], <floating*>&g[0], &m[0], &v[0], n, b1, omb1, b2, omb2, step_size, bc2_sqrt,
                   feps, 0)


cdef extern from "_fastmath.h" nogil:
    double fm_sumsq_f(const float* x, Py_ssize_t n)
    double fm_sumsq_d(const double* x, Py_ssize_t n)


cdef inline double _sumsq_span(const floating* x, Py_ssize_t n) noexcept nogil:
    # sum of squares in double, vectorized (reassociated: see _fastmath.h).
    # Per step of the 784-256-128-10 net with an L2 penalty it was 0.12 s/epoch
    # as a sequential loop.
    if floating is float:
        return fm_sumsq_f(x, n)
    else:
        return fm_sumsq_d(x, n)


cdef double c_sum_squares(const floating[::1] x) noexcept nogil:
    """sum(x**2), accumulated in double."""
    cdef Py_ssize_t t, s, n = x.shape[0], c
    cdef int nt = _n_threads
    cdef double total = 0.0
    if n == 0:
        return 0.0
    if _parallel(n):
        c = _chunk(n, nt)
        for t in prange(nt, schedule='static', nogil=True, num_threads=nt):
            s = t * c
            if s < n:
                total += _sumsq_span(&x[s], min(c, n - s))
        return total
    return _sumsq_span(&x[0], n)


cdef inline void _scale_p(floating* x, Py_ssize_t n, double factor) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating f = <floating>factor
    for i in range(n):
        x[i] = x[i] * f


cdef void c_scale_inplace(floating[::1] x, double factor) noexcept nogil:
    """x *= factor."""
    if x.shape[0]:
        _scale_p(&x[0], x.shape[0], factor)


# ------------------------------------------------------------ def wrappers
cdef _shape_error(str what, tuple got, tuple expected):
    raise ValueError(f"{what} has shape {got}, expected {expected}.")


cdef inline _check2(str what, Py_ssize_t r, Py_ssize_t c, Py_ssize_t er, Py_ssize_t ec):
    if r != er or c != ec:
        _shape_error(what, (r, c), (er, ec))


cdef inline _check_act(int act):
    if act < 0 or act >= N_ACTIVATIONS:
        raise ValueError(f"unknown activation code {act}")


cdef inline _check_weights(Py_ssize_t nw, Py_ssize_t n):
    if nw != 0 and nw != n:
        raise ValueError(f"sample_weight has length {nw}, expected {n} or 0.")


cdef Py_ssize_t _first_out_of_range(const int64_t[::1] v, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        if v[i] < 0 or v[i] >= hi:
            return i
    return -1


cdef _check_labels(str what, const int64_t[::1] v, Py_ssize_t n, Py_ssize_t hi):
    cdef Py_ssize_t bad
    if v.shape[0] != n:
        raise ValueError(f"{what} has length {v.shape[0]}, expected {n}.")
    with nogil:
        bad = _first_out_of_range(v, hi)
    if bad >= 0:
        raise IndexError(f"{what}[{bad}] = {v[bad]} is outside [0, {hi}).")


def gemm(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
         bint trans_a, bint trans_b, double beta):
    """C = op(A) @ op(B) + beta * C (see reference.gemm)."""
    cdef Py_ssize_t m = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t ka = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t kb = B.shape[1] if trans_b else B.shape[0]
    cdef Py_ssize_t n = B.shape[0] if trans_b else B.shape[1]
    if ka != kb:
        raise ValueError(f"gemm: op(A) has {ka} columns but op(B) has {kb} rows.")
    _check2("C", C.shape[0], C.shape[1], m, n)
    with nogil:
        c_gemm(A, B, C, trans_a, trans_b, beta)


def gather_rows(const floating[:, ::1] X, const int64_t[::1] idx, floating[:, ::1] out):
    """out[i] = X[idx[i]] (see reference.gather_rows)."""
    _check2("out", out.shape[0], out.shape[1], idx.shape[0], X.shape[1])
    _check_labels("idx", idx, idx.shape[0], X.shape[0])
    with nogil:
        c_gather_rows(X, idx, out)


def act_forward(const floating[:, ::1] Z, int act, double alpha, floating[:, ::1] A):
    """A = f(Z) (see reference.act_forward)."""
    _check_act(act)
    _check2("A", A.shape[0], A.shape[1], Z.shape[0], Z.shape[1])
    with nogil:
        c_act_forward(Z, act, alpha, A)


def bias_act_forward(floating[:, ::1] Z, const floating[::1] b, int act, double alpha,
                     floating[:, ::1] A):
    """Z += b, A = f(Z) (see reference.bias_act_forward)."""
    _check_act(act)
    if b.shape[0] != 0 and b.shape[0] != Z.shape[1]:
        raise ValueError(f"b has length {b.shape[0]}, expected {Z.shape[1]} or 0.")
    _check2("A", A.shape[0], A.shape[1], Z.shape[0], Z.shape[1])
    with nogil:
        c_bias_act_forward(Z, b, act, alpha, A)


def dense_forward(const floating[:, ::1] X, const floating[:, ::1] W, const floating[::1] b,
                  int act, double alpha, floating[:, ::1] Z, floating[:, ::1] A):
    """Z = X @ W + b, A = f(Z) (see reference.dense_forward)."""
    _check_act(act)
    if X.shape[1] != W.shape[0]:
        raise ValueError(f"X has {X.shape[1]} columns but W has {W.shape[0]} rows.")
    if b.shape[0] != 0 and b.shape[0] != W.shape[1]:
        raise ValueError(f"b has length {b.shape[0]}, expected {W.shape[1]} or 0.")
    _check2("Z", Z.shape[0], Z.shape[1], X.shape[0], W.shape[1])
    _check2("A", A.shape[0], A.shape[1], X.shape[0], W.shape[1])
    with nogil:
        c_dense_forward(X, W, b, act, alpha, Z, A)


def act_backward(const floating[:, ::1] Z, const floating[:, ::1] A, const floating[:, ::1] dA,
                 int act, double alpha, floating[:, ::1] dZ):
    """dZ = dA * f'(Z) (see reference.act_backward)."""
    if act == STEP:
        raise ValueError("step has a zero derivative everywhere; it cannot be trained through")
    _check_act(act)
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    _check2("A", A.shape[0], A.shape[1], n, k)
    _check2("dA", dA.shape[0], dA.shape[1], n, k)
    _check2("dZ", dZ.shape[0], dZ.shape[1], n, k)
    with nogil:
        c_act_backward(Z, A, dA, act, alpha, dZ)


def bias_grad(const floating[:, ::1] dZ, floating[::1] db):
    """db = dZ.sum(axis=0) (see reference.bias_grad)."""
    if db.shape[0] != dZ.shape[1]:
        raise ValueError(f"db has length {db.shape[0]}, expected {dZ.shape[1]}.")
    with nogil:
        c_bias_grad(dZ, db)


def dense_backward(const floating[:, ::1] X, const floating[:, ::1] W, const floating[:, ::1] dZ,
                   double l2, floating[:, ::1] dW, floating[::1] db, floating[:, ::1] dX):
    """Gradients of a dense layer (see reference.dense_backward)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = W.shape[1]
    _check2("W", W.shape[0], W.shape[1], d, k)
    _check2("dZ", dZ.shape[0], dZ.shape[1], n, k)
    _check2("dW", dW.shape[0], dW.shape[1], d, k)
    if db.shape[0] != 0 and db.shape[0] != k:
        raise ValueError(f"db has length {db.shape[0]}, expected {k} or 0.")
    if dX.shape[0] * dX.shape[1] != 0:
        _check2("dX", dX.shape[0], dX.shape[1], n, d)
    with nogil:
        c_dense_backward(X, W, dZ, l2, dW, db, dX)


def softmax_cross_entropy(const floating[:, ::1] Z, const int64_t[::1] y,
                          const floating[::1] sample_weight, floating[:, ::1] P,
                          floating[:, ::1] dZ):
    """Softmax + cross-entropy with integer labels (see reference)."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    cdef double loss
    _check_labels("y", y, n, k)
    _check_weights(sample_weight.shape[0], n)
    _check2("P", P.shape[0], P.shape[1], n, k)
    _check2("dZ", dZ.shape[0], dZ.shape[1], n, k)
    with nogil:
        loss = c_softmax_cross_entropy(Z, y, sample_weight, P, dZ)
    return loss


def softmax_cross_entropy_onehot(const floating[:, ::1] Z, const floating[:, ::1] Y,
                                 const floating[::1] sample_weight, floating[:, ::1] P,
                                 floating[:, ::1] dZ):
    """Softmax + cross-entropy with probability targets (see reference)."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    cdef double loss
    _check2("Y", Y.shape[0], Y.shape[1], n, k)
    _check_weights(sample_weight.shape[0], n)
    _check2("P", P.shape[0], P.shape[1], n, k)
    _check2("dZ", dZ.shape[0], dZ.shape[1], n, k)
    with nogil:
        loss = c_softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ)
    return loss


def nll_loss(const floating[:, ::1] logP, const int64_t[::1] y,
             const floating[::1] sample_weight, floating[:, ::1] dlogP):
    """Negative log-likelihood on log-probabilities (see reference)."""
    cdef Py_ssize_t n = logP.shape[0], k = logP.shape[1]
    cdef double loss
    _check_labels("y", y, n, k)
    _check_weights(sample_weight.shape[0], n)
    _check2("dlogP", dlogP.shape[0], dlogP.shape[1], n, k)
    with nogil:
        loss = c_nll_loss(logP, y, sample_weight, dlogP)
    return loss


def sigmoid_binary_cross_entropy(const floating[:, ::1] Z, const floating[:, ::1] Y,
                                 const floating[::1] sample_weight, floating[:, ::1] P,
                                 floating[:, ::1] dZ):
    """Sigmoid + binary cross-entropy from logits (see reference)."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    cdef double loss
    _check2("Y", Y.shape[0], Y.shape[1], n, k)
    _check_weights(sample_weight.shape[0], n)
    _check2("P", P.shape[0], P.shape[1], n, k)
    _check2("dZ", dZ.shape[0], dZ.shape[1], n, k)
    with nogil:
        loss = c_sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ)
    return loss


def mse_loss(const floating[:, ::1] Yhat, const floating[:, ::1] Y,
             const floating[::1] sample_weight, floating[:, ::1] dYhat):
    """Mean squared error (see reference)."""
    cdef Py_ssize_t n = Yhat.shape[0], k = Yhat.shape[1]
    cdef double loss
    _check2("Y", Y.shape[0], Y.shape[1], n, k)
    _check_weights(sample_weight.shape[0], n)
    _check2("dYhat", dYhat.shape[0], dYhat.shape[1], n, k)
    with nogil:
        loss = c_mse_loss(Yhat, Y, sample_weight, dYhat)
    return loss


cdef Py_ssize_t _first_negative(const floating[:, ::1] Y) noexcept nogil:
    # Flat index of the first entry that is not >= 0 (negative or NaN), or -1.
    cdef Py_ssize_t i, j, n = Y.shape[0], k = Y.shape[1]
    for i in range(n):
        for j in range(k):
            if not Y[i, j] >= 0:
                return i * k + j
    return -1


def _check_nonnegative_targets(const floating[:, ::1] Y):
    """Raise ValueError when Y has an entry that is not >= 0 (Poisson targets)."""
    cdef Py_ssize_t bad
    with nogil:
        bad = _first_negative(Y)
    if bad >= 0:
        raise ValueError(f"poisson_loss: targets must be >= 0 (counts or rates), got "
                         f"Y[{bad // Y.shape[1]}, {bad % Y.shape[1]}] = {Y[bad // Y.shape[1], bad % Y.shape[1]]}.")


def poisson_loss(const floating[:, ::1] Z, const floating[:, ::1] Y,
                 const floating[::1] sample_weight, floating[:, ::1] P, floating[:, ::1] dZ):
    """Poisson loss exp(z) - y*z from log-rates (see reference)."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1]
    cdef double loss
    _check2("Y", Y.shape[0], Y.shape[1], n, k)
    _check_weights(sample_weight.shape[0], n)
    _check2("P", P.shape[0], P.shape[1], n, k)
    _check2("dZ", dZ.shape[0], dZ.shape[1], n, k)
    _check_nonnegative_targets(Y)
    with nogil:
        loss = c_poisson_loss(Z, Y, sample_weight, P, dZ)
    return loss


cdef inline _check1(str what, Py_ssize_t got, Py_ssize_t n):
    if got != n:
        raise ValueError(f"{what} has length {got}, expected {n}.")


def sgd_update(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr,
               double momentum, bint nesterov):
    """In-place SGD (see reference.sgd_update)."""
    _check1("g", g.shape[0], p.shape[0])
    if momentum != 0.0:
        _check1("buf", buf.shape[0], p.shape[0])
    with nogil:
        c_sgd_update(p, g, buf, lr, momentum, nesterov)


def rmsprop_update(floating[::1] p, const floating[::1] g, floating[::1] sq, double lr,
                   double rho, double eps):
    """In-place RMSprop (see reference.rmsprop_update)."""
    _check1("g", g.shape[0], p.shape[0])
    _check1("sq", sq.shape[0], p.shape[0])
    with nogil:
        c_rmsprop_update(p, g, sq, lr, rho, eps)


def adam_update(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                double lr, double beta1, double beta2, double eps, double step):
    """In-place Adam (see reference.adam_update)."""
    _check1("g", g.shape[0], p.shape[0])
    _check1("m", m.shape[0], p.shape[0])
    _check1("v", v.shape[0], p.shape[0])
    with nogil:
        c_adam_update(p, g, m, v, lr, beta1, beta2, eps, step)


def sum_squares(const floating[::1] x):
    """Return sum(x**2) as a float."""
    cdef double s
    with nogil:
        s = c_sum_squares(x)
    return s


def scale_inplace(floating[::1] x, double factor):
    """x *= factor."""
    with nogil:
        c_scale_inplace(x, factor)


# ------------------------------------------------------------ dropout
# The counter-based generator of reference.dropout_mask: nested splitmix64
# streams, in uint64_t arithmetic (modulo 2**64 as C defines it).
cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void _dropout_mask_p(uint64_t seed, uint64_t step, uint64_t unit, double rate, floating* M,
                          Py_ssize_t size, Py_ssize_t e0) noexcept nogil:
    # M[e] for the elements e0 .. e0 + size - 1 of the unit's (rows, fan_out) mask
    cdef uint64_t k2 = _mix64(_mix64(seed + _GOLDEN * (step + 1)) + _GOLDEN * (unit + 1))
    cdef floating scale = <floating>(1.0 / (1.0 - rate))
    cdef double u
    cdef Py_ssize_t e
    for e in range(size):
        u = <double>(_mix64(k2 + _GOLDEN * <uint64_t>(e0 + e + 1)) >> 11) * (1.0 / 9007199254740992.0)
        M[e] = scale if u >= rate else 0


cdef void _mul_mask_p(const floating* X, const floating* M, floating* out, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t e
    for e in range(size):
        out[e] = X[e] * M[e]


def dropout_mask(uint64_t seed, Py_ssize_t step, Py_ssize_t unit, double rate, floating[:, ::1] M):
    """Fill M with an inverted-dropout mask (see reference.dropout_mask)."""
    if step < 0 or unit < 0:
        raise ValueError("dropout_mask: step and unit must be >= 0")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_mask: rate must be in [0, 1), got {rate}")
    if M.shape[0] == 0 or M.shape[1] == 0:
        return
    with nogil:
        _dropout_mask_p(seed, <uint64_t>step, <uint64_t>unit, rate, &M[0, 0], M.shape[0] * M.shape[1], 0)


def dropout_forward(const floating[:, ::1] Z, const floating[:, ::1] M, floating[:, ::1] A):
    """A = Z * M element-wise; A may be Z (see reference.dropout_forward)."""
    _check2("M", M.shape[0], M.shape[1], Z.shape[0], Z.shape[1])
    _check2("A", A.shape[0], A.shape[1], Z.shape[0], Z.shape[1])
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        return
    with nogil:
        _mul_mask_p(&Z[0, 0], &M[0, 0], &A[0, 0], Z.shape[0] * Z.shape[1])


def dropout_backward(const floating[:, ::1] dA, const floating[:, ::1] M, floating[:, ::1] dZ):
    """dZ = dA * M element-wise; dZ may be dA (see reference.dropout_backward)."""
    _check2("M", M.shape[0], M.shape[1], dA.shape[0], dA.shape[1])
    _check2("dZ", dZ.shape[0], dZ.shape[1], dA.shape[0], dA.shape[1])
    if dA.shape[0] == 0 or dA.shape[1] == 0:
        return
    with nogil:
        _mul_mask_p(&dA[0, 0], &M[0, 0], &dZ[0, 0], dA.shape[0] * dA.shape[1])


# ------------------------------------------------------------ batch normalization
# G points at the unit's (4, k) block [gamma, beta, running_mean, running_var],
# S at its (2, k) statistics [batch mean, 1/sqrt(var + eps)] (NULL: inference,
# running statistics). Column sums run row after row into a double scratch
# array of 2k (malloc'd per call: a few kilobytes, negligible next to the step).
cdef int _bn_forward_p(const floating* X, floating* G, double eps, double momentum, floating* S,
                       floating* Z, floating* A, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
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


cdef int _bn_backward_p(const floating* dA, const floating* Z, const floating* G, double eps,
                        const floating* S, floating* dG, floating* dX, Py_ssize_t n,
                        Py_ssize_t k) noexcept nogil:
    # dX == NULL: no input gradient (the first unit)
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


def batchnorm_forward(const floating[:, ::1] X, floating[:, ::1] G, double eps, double momentum,
                      floating[:, ::1] S, floating[:, ::1] Z, floating[:, ::1] A):
    """Batch normalization forward (see reference.batchnorm_forward)."""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1]
    cdef int rc
    cdef floating* sp = NULL
    _check2("G", G.shape[0], G.shape[1], 4, k)
    _check2("Z", Z.shape[0], Z.shape[1], n, k)
    _check2("A", A.shape[0], A.shape[1], n, k)
    if S.shape[0] * S.shape[1] != 0:
        _check2("S", S.shape[0], S.shape[1], 2, k)
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size ({n}, {k})")
        sp = &S[0, 0]
    if n == 0 or k == 0:
        return
    with nogil:
        rc = _bn_forward_p(&X[0, 0], &G[0, 0], eps, momentum, sp, &Z[0, 0], &A[0, 0], n, k)
    if rc:
        raise MemoryError()


def batchnorm_backward(const floating[:, ::1] dA, const floating[:, ::1] Z, const floating[:, ::1] G,
                       double eps, const floating[:, ::1] S, floating[:, ::1] dG, floating[:, ::1] dX):
    """Batch normalization backward (see reference.batchnorm_backward)."""
    cdef Py_ssize_t n = dA.shape[0], k = dA.shape[1]
    cdef int rc
    cdef const floating* sp = NULL
    cdef floating* dxp = NULL
    _check2("Z", Z.shape[0], Z.shape[1], n, k)
    _check2("G", G.shape[0], G.shape[1], 4, k)
    _check2("dG", dG.shape[0], dG.shape[1], 4, k)
    if S.shape[0] * S.shape[1] != 0:
        _check2("S", S.shape[0], S.shape[1], 2, k)
        sp = &S[0, 0]
    if dX.shape[0] * dX.shape[1] != 0:
        _check2("dX", dX.shape[0], dX.shape[1], n, k)
        dxp = &dX[0, 0]
    if n == 0 or k == 0:
        return
    with nogil:
        rc = _bn_backward_p(&dA[0, 0], &Z[0, 0], &G[0, 0], eps, sp, &dG[0, 0], dxp, n, k)
    if rc:
        raise MemoryError()


# ------------------------------------------------------------ the step loop
# The plan's per-unit buffers are separate arrays, which a nogil loop can
# only hold as pointers: train_steps gathers them into an array of UnitPtrs
# once per call, then runs every step without the GIL.
cdef struct UnitPtrs:
    int kind            # 1 dense, 0 activation only, 2 dropout, 3 batch norm (reference.KIND_*)
    int act
    bint use_bias
    Py_ssize_t fan_in, fan_out, w_off, b_off
    double alpha, l2
    void* Z
    void* A
    void* dA
    void* M             # dropout units: the (rows, fan_out) mask; batch norm: (2, fan_out) stats; else NULL
    # dense units of a loop on packed operands (else NULL), in the packed form
    # of _packgemm.h: W, dW and W's optimizer state (mp, vp: NULL when the
    # optimizer has none), where the products and the optimizer use them; the
    # batch's dZ, for the dW product; for units after the first W^T, for the
    # product into the previous unit's dA
    float* Wp
    float* dWp
    float* mp
    float* vp
    float* dZp
    float* Wtp


cdef void _rows_bias_act(floating* Z, const floating* b, floating* A, Py_ssize_t n, Py_ssize_t k,
                         bint has_bias, int act, floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            _bias_act_row(Z + i * k, b, A + i * k, k, has_bias, act, alpha)
    else:
        for i in range(n):
            _bias_act_row(Z + i * k, b, A + i * k, k, has_bias, act, alpha)


cdef void _rows_act_grad(const floating* Z, const floating* A, floating* dA, Py_ssize_t n,
                         Py_ssize_t k, int act, floating alpha) noexcept nogil:
    # in place: dA = dA * f'(Z)
    cdef Py_ssize_t i
    if _parallel(n * k):
        for i in prange(n, schedule='static', nogil=True, num_threads=_n_threads):
            _act_grad_row(Z + i * k, A + i * k, dA + i * k, dA + i * k, k, act, alpha)
    else:
        for i in range(n):
            _act_grad_row(Z + i * k, A + i * k, dA + i * k, dA + i * k, k, act, alpha)


cdef void _col_sums_p(const floating* dZ, floating* db, Py_ssize_t n, Py_ssize_t k,
                      Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    # db[j] = sum of column j of dZ (n rows of k), for j in [j0, j1); db points at
    # column 0. Row after row, as NumPy's axis-0 sum of a C array: same rounding.
    cdef Py_ssize_t i, j
    cdef const floating* row
    for j in range(j0, j1):
        db[j] = 0
    for i in range(n):
        row = dZ + i * k
        for j in range(j0, j1):
            db[j] = db[j] + row[j]


cdef double _count_correct(const floating[:, ::1] out, const int64_t[::1] y,
                           const floating[:, ::1] Y, int loss_kind, Py_ssize_t r0,
                           Py_ssize_t r1) noexcept nogil:
    # Correct predictions among rows [r0, r1); for binary cross-entropy the
    # count of correct cells (the caller divides by the columns).
    cdef Py_ssize_t i, j, best, truth, k = out.shape[1]
    cdef Py_ssize_t c = 0
    if loss_kind == 4 or loss_kind == 5:  # mse, poisson: no accuracy
        return 0.0
    if loss_kind == 3:
        for i in range(r0, r1):
            for j in range(k):
                if (out[i, j] > 0) == (Y[i, j] > 0.5):
                    c += 1
        return <double>c
    for i in range(r0, r1):
        best = 0
        for j in range(1, k):
            if out[i, j] > out[i, best]:
                best = j
        if loss_kind == 1:
            truth = 0
            for j in range(1, k):
                if Y[i, j] > Y[i, truth]:
                    truth = j
        else:
            truth = y[i]
        if best == truth:
            c += 1
    return <double>c


cdef double _loss_rows(int loss_kind, const floating[:, ::1] ZL, const floating[:, ::1] AL,
                       const int64_t[::1] y, const floating[:, ::1] Y, const floating[::1] sw,
                       floating[:, ::1] P, floating[:, ::1] dAL, Py_ssize_t r0, Py_ssize_t r1,
                       double denom) noexcept nogil:
    """Rows [r0, r1) of the loss kernels above: their weighted loss sum (the
    batch loss is the sum over all rows / denom) and their rows of dAL (and P).
    denom is the kernels' own: the weight sum, times the columns for the
    per-column losses (binary cross-entropy, MSE, Poisson)."""
    cdef Py_ssize_t i, k = ZL.shape[1]
    cdef double w, total = 0.0
    for i in range(r0, r1):
        w = _weight(sw, i)
        if loss_kind == 0:
            total += w * _sce_row(&ZL[i, 0], y[i], <floating>(w / denom), &P[i, 0], &dAL[i, 0], k)
        elif loss_kind == 1:
            total += w * _sce_onehot_row(&ZL[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                         &dAL[i, 0], k)
        elif loss_kind == 3:
            total += w * _bce_row(&ZL[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                  &dAL[i, 0], k)
        elif loss_kind == 5:
            total += w * _poisson_row(&ZL[i, 0], &Y[i, 0], <floating>(w / denom), &P[i, 0],
                                      &dAL[i, 0], k)
        elif loss_kind == 2:
            total -= w * AL[i, y[i]]  # read before zeroing: dAL may be AL
            memset(&dAL[i, 0], 0, k * sizeof(floating))
            dAL[i, y[i]] = -<floating>(w / denom)
        else:
            total += w * _mse_row(&AL[i, 0], &Y[i, 0], <floating>(2.0 * w / denom), &dAL[i, 0], k)
    return total


cdef void _opt_span(int opt_kind, const double[::1] opt_f, double step, floating* p,
                    floating* g, floating* s1, floating* s2, Py_ssize_t n, double l2) noexcept nogil:
    """One optimizer update of n parameters (a span of c_sgd_update,
    c_rmsprop_update or c_adam_update, on one thread); s1, s2 point at the
    same span of the optimizer's state (s1 NULL for SGD without momentum).
    l2 != 0 (Adam only): g holds the data term, and g + l2 * p is the gradient."""
    cdef double c[7]
    _opt_consts(opt_kind, opt_f, step, c)
    _opt_apply(opt_kind, c, p, g, s1, s2, n, l2)


cdef inline void _opt_consts(int opt_kind, const double[::1] opt_f, double step, double* c) noexcept nogil:
    # the constants of one step of the optimizer, as _opt_apply takes them
    memset(c, 0, 7 * sizeof(double))
    if opt_kind == 0:
        c[0], c[1], c[2] = opt_f[0], opt_f[1], opt_f[2]
    elif opt_kind == 1:
        c[0], c[1], c[2], c[3] = opt_f[0], opt_f[1], 1.0 - opt_f[1], opt_f[2]
    elif opt_kind == 2:
        c[0], c[1], c[2], c[3] = opt_f[1], 1.0 - opt_f[1], opt_f[2], 1.0 - opt_f[2]
        c[4] = opt_f[0] / (1.0 - pow(opt_f[1], step))
        c[5] = sqrt(1.0 - pow(opt_f[2], step))
        c[6] = opt_f[3]


cdef inline void _opt_apply(int opt_kind, const double* c, floating* p, floating* g, floating* s1,
                            floating* s2, Py_ssize_t n, double l2) noexcept nogil:
    # _opt_span with its constants worked out (_opt_consts)
    if n == 0:
        return
    if opt_kind == 0:
        _sgd_span(p, g, s1, n, <floating>c[0], <floating>c[1], c[2] != 0.0)
    elif opt_kind == 1:
        _rmsprop_span(p, g, s1, n, <floating>c[0], <floating>c[1], <floating>c[2], <floating>c[3])
    elif opt_kind == 2:
        _adam_span(p, g, s1, s2, n, <floating>c[0], <floating>c[1], <floating>c[2], <floating>c[3],
                   <floating>c[4], <floating>c[5], <floating>c[6], <floating>l2)


cdef struct Share:
    # thread tid's share of a dense unit's parameters, as offsets into the flat
    # parameter (and gradient, and state) vector: W's rows f0..f1 and b's columns c0..c1
    Py_ssize_t w0, wn, b0, bn


cdef inline Share _share(const UnitPtrs* u, int tid, int nt) noexcept nogil:
    cdef Share sh
    cdef Py_ssize_t f0 = _part(u.fan_in, tid, nt), c0 = _part(u.fan_out, tid, nt)
    sh.w0 = u.w_off + f0 * u.fan_out
    sh.wn = (_part(u.fan_in, tid + 1, nt) - f0) * u.fan_out
    sh.b0 = u.b_off + c0
    sh.bn = _part(u.fan_out, tid + 1, nt) - c0 if u.use_bias else 0
    return sh


cdef inline void _update_share(UnitPtrs* u, int tid, int nt, int opt_kind, const double[::1] opt_f,
                               double step, floating[::1] params, floating[::1] grads,
                               floating[::1] state1, floating[::1] state2, bint fold_l2) noexcept nogil:
    # the optimizer on thread tid's share of a dense unit (see _share); fold_l2: dW
    # holds the data term only, the update adds the unit's L2 term
    cdef Share sh = _share(u, tid, nt)
    _opt_span(opt_kind, opt_f, step, &params[sh.w0], &grads[sh.w0],
              &state1[sh.w0] if state1.shape[0] else NULL, &state2[sh.w0] if state2.shape[0] else NULL,
              sh.wn, u.l2 if fold_l2 else 0.0)
    if sh.bn:
        _opt_span(opt_kind, opt_f, step, &params[sh.b0], &grads[sh.b0],
                  &state1[sh.b0] if state1.shape[0] else NULL,
                  &state2[sh.b0] if state2.shape[0] else NULL, sh.bn, 0.0)


cdef void _update_share_pk(UnitPtrs* u, int tid, int nt, int opt_kind, const double[::1] opt_f,
                           double step, floating[::1] params, floating[::1] grads,
                           floating[::1] state1, floating[::1] state2, bint fold_l2) noexcept nogil:
    # _update_share for a unit on packed operands: the same elementwise update
    # on this thread's rows of the packed W, dW and state (one span per panel),
    # then the same rows of W^T
    cdef Share sh = _share(u, tid, nt)
    cdef Py_ssize_t j, o, K = u.fan_in
    cdef Py_ssize_t f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    cdef double c[7]
    _opt_consts(opt_kind, opt_f, step, c)
    if floating is float:
        for j in range(0, u.fan_out, 16):
            o = j * K + f0 * 16
            _opt_apply(opt_kind, c, u.Wp + o, u.dWp + o, u.mp + o if u.mp != NULL else NULL,
                       u.vp + o if u.vp != NULL else NULL, (f1 - f0) * 16, u.l2 if fold_l2 else 0.0)
        if u.Wtp != NULL:
            _pk_transpose_rows(u.Wp, u.Wtp, K, u.fan_out, f0, f1)
    if sh.bn:
        _opt_apply(opt_kind, c, &params[sh.b0], &grads[sh.b0],
                   &state1[sh.b0] if state1.shape[0] else NULL,
                   &state2[sh.b0] if state2.shape[0] else NULL, sh.bn, 0.0)


cdef void _pk_transpose_rows(const float* Wp, float* Wtp, Py_ssize_t K, Py_ssize_t n, Py_ssize_t f0,
                             Py_ssize_t f1) noexcept nogil:
    # rows f0..f1 of W, from its packed form Wp (K rows, n columns) into the
    # packed form of W^T: 16 x 16 blocks, each a whole cache line per row of
    # the result, where [f0, f1) covers a whole panel of W^T (16 rows of W);
    # element by element at its ends (another thread writes the rest of them)
    cdef Py_ssize_t f, q, qb, c, fb
    cdef const float* src
    cdef float* dst
    f = f0
    while f < f1:
        if f % 16 == 0 and f + 16 <= f1:
            for qb in range(0, n, 16):
                src = Wp + qb * K + f * 16          # rows f..f+15, columns qb..qb+15
                dst = Wtp + f * n + qb * 16          # panel f / 16, rows qb..
                for q in range(min(16, n - qb)):
                    for c in range(16):
                        dst[q * 16 + c] = src[c * 16 + q]
            f += 16
        else:
            fb = (f // 16) * 16 * n + f % 16
            for q in range(n):
                Wtp[fb + q * 16] = Wp[(q // 16) * 16 * K + f * 16 + q % 16]
            f += 1


cdef void _pk_share(UnitPtrs* u, floating* params, floating* grads, floating* state1,
                    floating* state2, int tid, int nt, bint pack) noexcept nogil:
    # thread tid's rows of a dense unit's W, dW and W's optimizer state (the
    # flat vectors; state1, state2 NULL when absent) into their packed forms
    # (pack), or back
    cdef Py_ssize_t f0 = _part(u.fan_in, tid, nt), f1 = _part(u.fan_in, tid + 1, nt)
    cdef Py_ssize_t n = u.fan_out, K = u.fan_in, o = u.w_off
    if u.Wp == NULL:  # a unit the loop keeps in place
        return
    if floating is float:
        if pack:
            fm_pk_pack_rows(params + o, n, n, K, f0, f1, u.Wp)
            fm_pk_pack_rows(grads + o, n, n, K, f0, f1, u.dWp)
            if u.mp != NULL:
                fm_pk_pack_rows(state1 + o, n, n, K, f0, f1, u.mp)
            if u.vp != NULL:
                fm_pk_pack_rows(state2 + o, n, n, K, f0, f1, u.vp)
            if u.Wtp != NULL:
                fm_pk_pack_trans_rows(params + o, K, n, f0, f1, u.Wtp)
        else:
            fm_pk_unpack_rows(u.Wp, n, K, f0, f1, params + o, n)
            fm_pk_unpack_rows(u.dWp, n, K, f0, f1, grads + o, n)
            if u.mp != NULL:
                fm_pk_unpack_rows(u.mp, n, K, f0, f1, state1 + o, n)
            if u.vp != NULL:
                fm_pk_unpack_rows(u.vp, n, K, f0, f1, state2 + o, n)


cdef inline double _pk_own_sumsq(const float* P, const UnitPtrs* u, int tid, int nt) noexcept nogil:
    # the sum of squares of thread tid's rows of a unit's packed W (or dW)
    cdef Py_ssize_t j, K = u.fan_in, f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    cdef double total = 0.0
    for j in range(0, u.fan_out, 16):
        total += _sumsq_span(P + j * K + f0 * 16, (f1 - f0) * 16)
    return total


cdef inline void _pk_own_scale(float* P, const UnitPtrs* u, int tid, int nt, double factor) noexcept nogil:
    # thread tid's rows of a unit's packed dW, times factor
    cdef Py_ssize_t j, K = u.fan_in, f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    for j in range(0, u.fan_out, 16):
        _scale_p(P + j * K + f0 * 16, (f1 - f0) * 16, factor)


cdef bint _fold_l2 = True


def _set_fold_l2(bint on):
    global _fold_l2
    old = _fold_l2
    _fold_l2 = on
    return old


# The loop's threads share this: a barrier and per-thread partial sums.
cdef enum:
    MAX_LOOP_THREADS = 64

cdef struct LoopShared:
    fm_barrier bar
    double loss[MAX_LOOP_THREADS]
    double l2[MAX_LOOP_THREADS]
    double correct[MAX_LOOP_THREADS]
    double sumsq[MAX_LOOP_THREADS]
    Py_ssize_t done


cdef inline Py_ssize_t _part(Py_ssize_t n, int t, int nt) noexcept nogil:
    # start of thread t's share of [0, n) split in nt near-equal parts
    return n * t // nt


cdef Py_ssize_t _train_loop(
        int tid, int nt, LoopShared* sh,
        const floating[:, ::1] X, const int64_t[::1] y, const floating[:, ::1] Y,
        const floating[::1] sw, const int64_t[::1] order, Py_ssize_t start, Py_ssize_t n_steps,
        UnitPtrs* units, Py_ssize_t n_units, floating[::1] params, floating[::1] grads,
        floating[:, ::1] x_buf, int64_t[::1] y_buf, floating[:, ::1] Y_buf, floating[::1] sw_buf,
        floating[:, ::1] ZL, floating[:, ::1] AL, floating[:, ::1] dAL, floating[:, ::1] P,
        int loss_kind, int opt_kind, const double[::1] opt_f, floating[::1] state1,
        floating[::1] state2, Py_ssize_t t0, double clip_norm, uint64_t seed, double[::1] losses_out,
        double[::1] correct_out, bint pk) noexcept nogil:
    """Thread tid of nt runs n_steps steps; with nt == 1 the whole of each step.

    With nt > 1 (a plan without batch norm, whose dense units own every
    parameter) thread tid takes rows [r0, r1) of the batch through the
    gather, the forward pass, the loss and the backward chain of dZ; then,
    after a barrier, rows [f0, f1) of each dW (its inputs' columns f0..f1)
    and columns [c0, c1) of each db, and updates those parameters at once
    (a span of the optimizer is elementwise). A second barrier ends the
    step. Returns the steps done (fewer when the loss was not finite), or
    -1 when batch norm could not allocate its scratch space.

    pk (float32, nt > 1): the units with a packed W (UnitPtrs.Wp, see
    _pk_unit) keep W, dW and W's optimizer state in the packed form of
    _packgemm.h while the loop runs: each thread packs its rows of them at the
    start, the optimizer updates them there, every product of the unit runs on
    _packgemm.h's kernel (the forward product on W, the product into the
    previous dA on W^T, the dW product on the packed dZ), and each thread
    writes its rows back before it returns."""
    cdef Py_ssize_t s, i, r, t, rows = x_buf.shape[0], L = n_units - 1
    cdef Py_ssize_t r0 = _part(rows, tid, nt), r1 = _part(rows, tid + 1, nt), nr = r1 - r0
    cdef Py_ssize_t fan_in, fan_out, f0, f1, j
    cdef Share share
    cdef UnitPtrs* u
    cdef const floating* inp
    cdef floating* W
    cdef floating* dW
    cdef const int64_t[::1] idx
    cdef double loss, l2, correct, denom, norm, step
    cdef bint timing = _timing and tid == 0
    cdef double tm = _now() if timing else 0.0
    cdef bint fused = loss_kind == 0 or loss_kind == 1 or loss_kind == 3 or loss_kind == 5
    cdef bint fold_l2
    cdef int sense = 0
    cdef floating* s1p = &state1[0] if state1.shape[0] else NULL
    cdef floating* s2p = &state2[0] if state2.shape[0] else NULL
    if pk:
        for i in range(n_units):
            if units[i].kind == 1:
                _pk_share(&units[i], &params[0], &grads[0], s1p, s2p, tid, nt, True)
        fm_barrier_wait(&sh.bar, &sense)
    for s in range(n_steps):
        idx = order[start + s * rows:start + (s + 1) * rows]
        _gather_span(X, idx, x_buf, r0, r1)
        if y.shape[0] != 0:
            for r in range(r0, r1):
                y_buf[r] = y[idx[r]]
        if Y.shape[0] != 0:
            _gather_span(Y, idx, Y_buf, r0, r1)
        if sw.shape[0] != 0:
            denom = 0.0  # every thread sums the whole batch's weights, in _weight_sum's order
            for r in range(rows):
                denom += sw[idx[r]]
            for r in range(r0, r1):
                sw_buf[r] = sw[idx[r]]
        else:
            denom = <double>rows
        if loss_kind == 3 or loss_kind == 4 or loss_kind == 5:
            denom *= ZL.shape[1]
        tm = _lap(timing, PH_GATHER, tm)
        # forward, rows r0..r1
        inp = &x_buf[r0, 0]
        for i in range(n_units):
            u = &units[i]
            if u.kind == 1:
                tm = _lap(timing, PH_FWD_ELEM, tm)
                if u.Wp != NULL:
                    _pk_gemm(nr, u.fan_out, u.fan_in, inp, u.fan_in, u.Wp,
                             <floating*>u.Z + r0 * u.fan_out, u.fan_out)
                else:
                    _gemm_p(inp, &params[u.w_off], <floating*>u.Z + r0 * u.fan_out, <int>nr,
                            <int>u.fan_out, <int>u.fan_in, False, False, 0.0)
                tm = _lap(timing, PH_FWD_GEMM, tm)
                _rows_bias_act(<floating*>u.Z + r0 * u.fan_out, &params[u.b_off],
                               <floating*>u.A + r0 * u.fan_out, nr, u.fan_out, u.use_bias, u.act,
                               <floating>u.alpha)
            elif u.kind == 2:
                _dropout_mask_p(seed, <uint64_t>(t0 + s), <uint64_t>i, u.alpha,
                                <floating*>u.M + r0 * u.fan_out, nr * u.fan_out, r0 * u.fan_out)
                _mul_mask_p(<const floating*>u.Z + r0 * u.fan_out, <const floating*>u.M + r0 * u.fan_out,
                            <floating*>u.A + r0 * u.fan_out, nr * u.fan_out)
            elif u.kind == 3:  # nt == 1
                if _bn_forward_p(inp, &params[u.w_off], u.alpha, u.l2, <floating*>u.M, <floating*>u.Z,
                                 <floating*>u.A, rows, u.fan_out):
                    return -1
            elif u.act != IDENTITY:
                _rows_bias_act(<floating*>u.Z + r0 * u.fan_out, &params[0],
                               <floating*>u.A + r0 * u.fan_out, nr, u.fan_out, False, u.act,
                               <floating>u.alpha)
            inp = <floating*>u.A + r0 * u.fan_out
        tm = _lap(timing, PH_FWD_ELEM, tm)
        # the loss: the gradient at the output lands in dA[L]
        sh.loss[tid] = _loss_rows(loss_kind, ZL, AL, y_buf, Y_buf, sw_buf, P, dAL, r0, r1, denom)
        sh.correct[tid] = _count_correct(ZL if fused else AL, y_buf, Y_buf, loss_kind, r0, r1)
        tm = _lap(timing, PH_LOSS, tm)
        # backward, rows r0..r1: each unit's dZ, and the gradient at its input
        l2 = 0.0
        for i in range(L, -1, -1):
            u = &units[i]
            fan_in, fan_out = u.fan_in, u.fan_out
            if u.act != IDENTITY and (u.kind == 1 or i > 0):
                _rows_act_grad(<floating*>u.Z + r0 * fan_out, <floating*>u.A + r0 * fan_out,
                               <floating*>u.dA + r0 * fan_out, nr, fan_out, u.act, <floating>u.alpha)
            if u.kind == 2 and i > 0:
                _mul_mask_p(<const floating*>u.dA + r0 * fan_out, <const floating*>u.M + r0 * fan_out,
                            <floating*>u.dA + r0 * fan_out, nr * fan_out)
            if u.kind == 3:  # nt == 1
                if _bn_backward_p(<const floating*>u.dA, <const floating*>u.Z, &params[u.w_off], u.alpha,
                                  <const floating*>u.M, &grads[u.w_off],
                                  <floating*>units[i - 1].dA if i > 0 else <floating*>NULL, rows, fan_out):
                    return -1
            if u.kind != 1:
                continue
            W = &params[u.w_off]
            if u.l2 != 0.0 and u.Wp != NULL:
                l2 += 0.5 * u.l2 * _pk_own_sumsq(u.Wp, u, tid, nt)
            elif u.l2 != 0.0:
                share = _share(u, tid, nt)
                l2 += 0.5 * u.l2 * _sumsq_span(&params[share.w0], share.wn)
            if u.Wp != NULL:
                _pk_pack(<floating*>u.dA, fan_out, rows, r0, r1, u.dZp)
            if i > 0:
                tm = _lap(timing, PH_BWD_ELEM, tm)
                if u.Wp != NULL:
                    _pk_gemm(nr, fan_in, fan_out, <floating*>u.dA + r0 * fan_out, fan_out, u.Wtp,
                             <floating*>units[i - 1].dA + r0 * fan_in, fan_in)
                else:
                    _gemm_p(<floating*>u.dA + r0 * fan_out, W, <floating*>units[i - 1].dA + r0 * fan_in,
                            <int>nr, <int>fan_in, <int>fan_out, False, True, 0.0)
                tm = _lap(timing, PH_BWD_GEMM, tm)
        sh.l2[tid] = l2
        tm = _lap(timing, PH_BWD_ELEM, tm)
        fm_barrier_wait(&sh.bar, &sense)
        tm = _lap(timing, PH_SYNC, tm)
        loss, l2, correct = 0.0, 0.0, 0.0
        for t in range(nt):
            loss += sh.loss[t]
            l2 += sh.l2[t]
            correct += sh.correct[t]
        loss = loss / denom + l2
        if tid == 0:
            losses_out[s] = loss
            correct_out[s] = correct / ZL.shape[1] if loss_kind == 3 else correct
        if not isfinite(loss):
            if pk:  # W as the last update left it
                for i in range(n_units):
                    if units[i].kind == 1:
                        _pk_share(&units[i], &params[0], &grads[0], s1p, s2p, tid, nt, False)
            return s
        # dW rows f0..f1 (columns f0..f1 of the input), db columns c0..c1. (Updating
        # each share right after its dW, while in cache, measured no faster.) Adam
        # on a split loop without clipping adds the L2 term itself (fold_l2).
        fold_l2 = nt > 1 and opt_kind == 2 and clip_norm <= 0.0 and _fold_l2
        for i in range(L, -1, -1):
            u = &units[i]
            if u.kind != 1:
                continue
            fan_in, fan_out = u.fan_in, u.fan_out
            f0, f1 = _part(fan_in, tid, nt), _part(fan_in, tid + 1, nt)
            W = &params[u.w_off]
            dW = &grads[u.w_off]
            inp = &x_buf[0, 0] if i == 0 else <floating*>units[i - 1].A
            if u.l2 != 0.0 and not fold_l2 and u.Wp != NULL:  # this thread's rows of W, into dW
                for j in range(0, fan_out, 16):
                    memcpy(u.dWp + j * fan_in + f0 * 16, u.Wp + j * fan_in + f0 * 16,
                           (f1 - f0) * 16 * sizeof(float))
            elif u.l2 != 0.0 and not fold_l2:
                memcpy(dW + f0 * fan_out, W + f0 * fan_out, (f1 - f0) * fan_out * sizeof(floating))
            tm = _lap(timing, PH_BWD_ELEM, tm)
            if u.Wp != NULL:
                _pk_gemm_dw(f1 - f0, fan_out, rows, inp + f0, fan_in, u.dZp, 0.0 if fold_l2 else u.l2,
                            u.dWp + f0 * 16, 16 * fan_in)
            else:
                _gemm_ld(inp + f0, <int>fan_in, <floating*>u.dA, <int>fan_out, dW + f0 * fan_out,
                         <int>fan_out, <int>(f1 - f0), <int>fan_out, <int>rows, True, False,
                         0.0 if fold_l2 else u.l2)
            tm = _lap(timing, PH_BWD_GEMM, tm)
            if u.use_bias:
                _col_sums_p(<floating*>u.dA, &grads[u.b_off], rows, fan_out,
                            _part(fan_out, tid, nt), _part(fan_out, tid + 1, nt))
        tm = _lap(timing, PH_BWD_ELEM, tm)
        if clip_norm > 0.0:
            if nt == 1:
                norm = sqrt(_sumsq_span(&grads[0], grads.shape[0]))
            else:
                norm = 0.0
                for i in range(n_units):
                    if units[i].kind == 1:
                        share = _share(&units[i], tid, nt)
                        if units[i].Wp != NULL:
                            norm += _pk_own_sumsq(units[i].dWp, &units[i], tid, nt)
                        else:
                            norm += _sumsq_span(&grads[share.w0], share.wn)
                        if share.bn:
                            norm += _sumsq_span(&grads[share.b0], share.bn)
                sh.sumsq[tid] = norm
                fm_barrier_wait(&sh.bar, &sense)
                norm = 0.0
                for t in range(nt):
                    norm += sh.sumsq[t]
                norm = sqrt(norm)
                fm_barrier_wait(&sh.bar, &sense)  # sumsq is rewritten next step
            if norm > clip_norm:
                if nt == 1:
                    c_scale_inplace(grads, clip_norm / (norm + 1e-6))
                else:
                    for i in range(n_units):
                        if units[i].kind == 1:
                            share = _share(&units[i], tid, nt)
                            if units[i].Wp != NULL:
                                _pk_own_scale(units[i].dWp, &units[i], tid, nt, clip_norm / (norm + 1e-6))
                            else:
                                _scale_p(&grads[share.w0], share.wn, clip_norm / (norm + 1e-6))
                            if share.bn:
                                _scale_p(&grads[share.b0], share.bn, clip_norm / (norm + 1e-6))
        step = <double>(t0 + s + 1)
        if opt_kind >= 0:
            if nt == 1:
                _opt_span(opt_kind, opt_f, step, &params[0], &grads[0],
                          &state1[0] if state1.shape[0] else NULL,
                          &state2[0] if state2.shape[0] else NULL, params.shape[0], 0.0)
            else:
                for i in range(n_units):
                    if units[i].Wp != NULL:
                        _update_share_pk(&units[i], tid, nt, opt_kind, opt_f, step, params, grads,
                                         state1, state2, fold_l2)
                    elif units[i].kind == 1:
                        _update_share(&units[i], tid, nt, opt_kind, opt_f, step, params, grads,
                                      state1, state2, fold_l2)
        tm = _lap(timing, PH_OPTIM, tm)
        # the next step's forward pass reads every parameter, and its gather
        # overwrites rows of x_buf that this step's dW products read
        fm_barrier_wait(&sh.bar, &sense)
        tm = _lap(timing, PH_SYNC, tm)
    if pk:
        for i in range(n_units):
            if units[i].kind == 1:
                _pk_share(&units[i], &params[0], &grads[0], s1p, s2p, tid, nt, False)
    return n_steps


# The training loop runs on threads of its own (each on its own share of the
# batch and of the parameters, with one-thread BLAS calls) when a step has at
# least this many multiply-adds, with at most one thread per this many rows;
# else on one thread, with BLAS's own threads. The work bound is the model's
# own for using threads at all (OpenBLAS's: model._BLAS_SERIAL_WORK): from
# there up the split loop was faster than both the one-thread fit and the
# loop beside OpenBLAS's threads on every net measured (0.26M-17M
# multiply-adds per step; below 1M, OpenBLAS's threads made the fit slower
# than one thread).
cdef Py_ssize_t _loop_mt_min_work = 262144
cdef Py_ssize_t _loop_mt_min_rows = 16
# Whether this build can (an OpenMP build with GCC's or clang's atomics).
_HAVE_LOOP_THREADS = bool(FM_HAVE_BARRIER and FM_HAVE_OPENMP)


def _set_loop_split_limits(Py_ssize_t min_work, Py_ssize_t min_rows):
    """The smallest step (multiply-adds of its forward products) that the training
    loop splits between threads of its own, and the fewest batch rows per thread;
    returns the old pair. For tests and benchmarks."""
    global _loop_mt_min_work, _loop_mt_min_rows
    if min_rows < 1:
        raise ValueError("min_rows must be >= 1")
    old = (_loop_mt_min_work, _loop_mt_min_rows)
    _loop_mt_min_work, _loop_mt_min_rows = min_work, min_rows
    return old


cdef void _in_place(UnitPtrs* units, Py_ssize_t n_units) noexcept nogil:
    # no unit on packed operands
    cdef Py_ssize_t i
    for i in range(n_units):
        units[i].Wp = units[i].dWp = units[i].mp = units[i].vp = units[i].dZp = units[i].Wtp = NULL


cdef int _last_nt = 0
cdef bint _last_pk = False
# While any split loop runs, the BLAS runs on one thread; the count makes loops
# running at once in several Python threads restore the caller's setting only
# when the last one ends. Changed with the GIL held only.
cdef int _blas_pins = 0
cdef int _blas_saved = 0


cdef void _pin_blas():
    global _blas_pins, _blas_saved
    if _blas_pins == 0:
        _blas_saved = _blas_get_threads()
        _blas_set_threads(1)
    _blas_pins += 1


cdef void _unpin_blas():
    global _blas_pins
    _blas_pins -= 1
    if _blas_pins == 0 and _blas_saved > 0:
        _blas_set_threads(_blas_saved)


def _last_loop_threads():
    """Threads of its own the last train_steps call ran on (0 before any). For tests."""
    return _last_nt


def _last_loop_packed():
    """Whether the last train_steps call ran on packed operands. For tests."""
    return _last_pk


def _loop_threads(const int64_t[:, ::1] plan_i, Py_ssize_t n_params, Py_ssize_t rows):
    """How many threads of its own the training loop takes for this plan and batch:
    the thread bound, capped at one thread per _loop_mt_min_rows rows, when the
    loop can split the step (no batch norm, the dense units own every parameter,
    the BLAS's thread count can be set to 1 meanwhile) and the step is big
    enough; else 1."""
    cdef Py_ssize_t i, owned = 0, work = 0
    cdef int nt = <int>min(<Py_ssize_t>min(_n_threads, <int>MAX_LOOP_THREADS), rows // _loop_mt_min_rows)
    if (nt < 2 or not FM_HAVE_BARRIER or not FM_HAVE_OPENMP or _loop_parallel
            or _blas_set_threads == NULL or _omp_forked):
        return 1
    for i in range(plan_i.shape[0]):
        if plan_i[i, 0] == 3:  # batch norm: its statistics need the whole batch
            return 1
        if plan_i[i, 0] == 1:
            owned += plan_i[i, 1] * plan_i[i, 2] + (plan_i[i, 2] if plan_i[i, 4] else 0)
            work += plan_i[i, 1] * plan_i[i, 2]
    if owned != n_params or work * rows < _loop_mt_min_work:
        return 1
    return nt


def train_steps(const floating[:, ::1] X, const int64_t[::1] y, const floating[:, ::1] Y,
                const floating[::1] sw, const int64_t[::1] order, Py_ssize_t start,
                Py_ssize_t n_steps, const int64_t[:, ::1] plan_i, const double[:, ::1] plan_f,
                floating[::1] params, floating[::1] grads, floating[:, ::1] x_buf,
                int64_t[::1] y_buf, floating[:, ::1] Y_buf, floating[::1] sw_buf,
                list Z, list A, list dA, list M, floating[:, ::1] P, int loss_kind, int opt_kind,
                const double[::1] opt_f, floating[::1] state1, floating[::1] state2,
                Py_ssize_t t0, double clip_norm, uint64_t seed, double[::1] losses_out,
                double[::1] correct_out):
    """The whole-step training loop (see reference.train_steps); the per-unit
    buffers Z, A, dA (and M of the dropout units) must be C-contiguous arrays
    of the data's dtype, shaped (batch, fan_out) as the plan says (checked by
    the Python shim)."""
    global _last_nt, _last_pk, _serial_loops, _omp_started
    cdef Py_ssize_t i, n_units = plan_i.shape[0], done = 0, got = 0
    cdef int nt = 1, tid = 0
    cdef bint pinned = False, serial = False, pk = False
    cdef float* pk_mem = NULL
    cdef float* pk_at
    cdef Py_ssize_t pk_total
    cdef LoopShared sh
    cdef LoopShared solo
    cdef LoopShared* shp = &sh
    cdef LoopShared* solop = &solo
    cdef UnitPtrs* units = <UnitPtrs*>malloc(n_units * sizeof(UnitPtrs))
    cdef floating[:, ::1] ZL = Z[n_units - 1]
    cdef floating[:, ::1] AL = A[n_units - 1]
    cdef floating[:, ::1] dAL = dA[n_units - 1]
    if units == NULL:
        raise MemoryError()
    try:
        for i in range(n_units):
            units[i].kind = <int>plan_i[i, 0]
            units[i].fan_in = plan_i[i, 1]
            units[i].fan_out = plan_i[i, 2]
            units[i].act = <int>plan_i[i, 3]
            units[i].use_bias = plan_i[i, 4] != 0
            units[i].w_off = plan_i[i, 5]
            units[i].b_off = plan_i[i, 6]
            units[i].alpha = plan_f[i, 0]
            units[i].l2 = plan_f[i, 1]
            units[i].Z = cnp.PyArray_DATA(<cnp.ndarray>Z[i])
            units[i].A = cnp.PyArray_DATA(<cnp.ndarray>A[i])
            units[i].dA = cnp.PyArray_DATA(<cnp.ndarray>dA[i])
            units[i].M = cnp.PyArray_DATA(<cnp.ndarray>M[i]) if units[i].kind == 2 or units[i].kind == 3 else NULL
        _in_place(units, n_units)
        nt = _loop_threads(plan_i, params.shape[0], x_buf.shape[0])
        if (floating is float and nt > 1 and FM_HAVE_PACKGEMM and _packed_gemm
                and x_buf.shape[0] <= _pk_max_rows * nt):
            for i in range(n_units):
                pk = pk or _pk_unit(&units[i], i)
        _last_pk = pk
        if pk:
            # one zeroed block for every packed operand, each 64-byte aligned
            pk_total = 16
            for i in range(n_units):
                if _pk_unit(&units[i], i):
                    pk_total += ((2 + (state1.shape[0] != 0) + (state2.shape[0] != 0))
                                 * _pk_floats(units[i].fan_in, units[i].fan_out)
                                 + _pk_floats(x_buf.shape[0], units[i].fan_out)
                                 + (_pk_floats(units[i].fan_out, units[i].fan_in) if i > 0 else 0))
            pk_mem = <float*>calloc(pk_total, sizeof(float))
            if pk_mem == NULL:
                raise MemoryError()
            pk_at = <float*>((<size_t>pk_mem + 63) & ~(<size_t>63))
            for i in range(n_units):
                if _pk_unit(&units[i], i):
                    units[i].Wp = _pk_take(&pk_at, units[i].fan_in, units[i].fan_out, True)
                    units[i].dWp = _pk_take(&pk_at, units[i].fan_in, units[i].fan_out, True)
                    units[i].mp = _pk_take(&pk_at, units[i].fan_in, units[i].fan_out, state1.shape[0] != 0)
                    units[i].vp = _pk_take(&pk_at, units[i].fan_in, units[i].fan_out, state2.shape[0] != 0)
                    units[i].dZp = _pk_take(&pk_at, x_buf.shape[0], units[i].fan_out, True)
                    units[i].Wtp = _pk_take(&pk_at, units[i].fan_out, units[i].fan_in, i > 0)
        _last_nt = nt
        if not _loop_parallel:
            _serial_loops += 1
            serial = True
        fm_barrier_init(&sh.bar, nt)
        fm_barrier_init(&solo.bar, 1)
        if nt > 1:
            # each thread's products run on one BLAS thread, side by side
            _omp_started = True
            _pin_blas()
            pinned = True
            with nogil, parallel(num_threads=nt):
                tid = threadid()
                if fm_team_size() == nt:
                    got = _train_loop(tid, nt, shp, X, y, Y, sw, order, start, n_steps, units,
                                      n_units, params, grads, x_buf, y_buf, Y_buf, sw_buf, ZL, AL,
                                      dAL, P, loss_kind, opt_kind, opt_f, state1, state2, t0,
                                      clip_norm, seed, losses_out, correct_out, pk)
                    if tid == 0:
                        shp.done = got
                elif tid == 0:  # a smaller team than asked for (OMP_THREAD_LIMIT): one thread,
                    _in_place(units, n_units)  # its products on BLAS (the packed path splits the update)
                    shp.done = _train_loop(0, 1, solop, X, y, Y, sw, order, start, n_steps, units,
                                           n_units, params, grads, x_buf, y_buf, Y_buf, sw_buf, ZL,
                                           AL, dAL, P, loss_kind, opt_kind, opt_f, state1, state2,
                                           t0, clip_norm, seed, losses_out, correct_out, False)
            done = sh.done
        else:
            with nogil:
                done = _train_loop(0, 1, solop, X, y, Y, sw, order, start, n_steps, units, n_units,
                                   params, grads, x_buf, y_buf, Y_buf, sw_buf, ZL, AL, dAL, P,
                                   loss_kind, opt_kind, opt_f, state1, state2, t0, clip_norm, seed,
                                   losses_out, correct_out, False)
    finally:
        free(units)
        free(pk_mem)
        if serial:
            _serial_loops -= 1
        if pinned:
            _unpin_blas()
    if done < 0:
        raise MemoryError()
    return done


# ---------------------------------------------------------------- inference
cdef bint _predict_rows(const floating* X, Py_ssize_t n, Py_ssize_t d, UnitPtrs* units,
                        Py_ssize_t n_units, const floating* params, floating* x_buf,
                        floating* out) noexcept nogil:
    # One forward pass over n <= capacity rows, serial (small batches: a
    # parallel region would cost more than the work). False on NaN/inf in X.
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
        k = u.fan_out
        if u.kind == 1:
            # small products: the register-blocked kernels of _smallgemm.h, no BLAS call
            _gemm_p(inp, &params[u.w_off], <floating*>u.Z, <int>n, <int>k, <int>u.fan_in,
                    False, False, 0.0)
            for r in range(n):
                _bias_act_row(<floating*>u.Z + r * k, &params[u.b_off], <floating*>u.A + r * k, k,
                              u.use_bias, u.act, <floating>u.alpha)
        elif u.kind == 3:
            if _bn_forward_p(inp, <floating*>(params + u.w_off), u.alpha, 0.0, <floating*>NULL,
                             <floating*>u.Z, <floating*>u.A, n, k):
                return False
        elif u.act != IDENTITY:
            for r in range(n):
                _bias_act_row(<floating*>u.Z + r * k, params, <floating*>u.A + r * k, k,
                              False, u.act, <floating>u.alpha)
        elif u.A != u.Z:  # identity (a dropout unit at inference) with a buffer of its own
            memcpy(u.A, u.Z, n * k * sizeof(floating))
        inp = <floating*>u.A
    memcpy(out, inp, n * units[n_units - 1].fan_out * sizeof(floating))
    return True


cdef class Predictor:
    """Compiled :func:`fastmlp.backends.reference.make_predictor`: the plan is
    turned into raw pointers once; ``run`` checks its two arrays with the
    NumPy C API and makes one GIL-free pass, allocating nothing."""
    cdef UnitPtrs* units
    cdef Py_ssize_t n_units, capacity, d_in, d_out
    cdef int typenum
    cdef char* params
    cdef char* x_buf
    cdef list keep

    def __cinit__(self):
        self.units = NULL

    def __init__(self, const int64_t[:, ::1] plan_i, const double[:, ::1] plan_f,
                 cnp.ndarray params, cnp.ndarray x_buf, list Z, list A):
        cdef Py_ssize_t i, n_units = plan_i.shape[0]
        if n_units < 1:
            raise ValueError("make_predictor: the plan has no units")
        self.units = <UnitPtrs*>malloc(n_units * sizeof(UnitPtrs))
        if self.units == NULL:
            raise MemoryError()
        for i in range(n_units):
            self.units[i].kind = <int>plan_i[i, 0]
            self.units[i].fan_in = plan_i[i, 1]
            self.units[i].fan_out = plan_i[i, 2]
            self.units[i].act = <int>plan_i[i, 3]
            self.units[i].use_bias = plan_i[i, 4] != 0
            self.units[i].w_off = plan_i[i, 5]
            self.units[i].b_off = plan_i[i, 6]
            self.units[i].alpha = plan_f[i, 0]
            self.units[i].l2 = 0.0
            self.units[i].Z = cnp.PyArray_DATA(<cnp.ndarray>Z[i])
            self.units[i].A = cnp.PyArray_DATA(<cnp.ndarray>A[i])
            self.units[i].dA = NULL
            self.units[i].M = NULL
        self.n_units = n_units
        self.capacity = x_buf.shape[0]
        self.d_in = x_buf.shape[1]
        self.d_out = plan_i[n_units - 1, 2]
        self.typenum = cnp.PyArray_TYPE(x_buf)
        self.params = <char*>cnp.PyArray_DATA(params)
        self.x_buf = <char*>cnp.PyArray_DATA(x_buf)
        self.keep = [params, x_buf, list(Z), list(A)]

    def __dealloc__(self):
        free(self.units)

    def run(self, cnp.ndarray X not None, cnp.ndarray out not None):
        cdef Py_ssize_t n
        cdef bint ok
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
