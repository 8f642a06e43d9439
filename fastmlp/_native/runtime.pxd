"""Runtime state of the compiled modules: the thread bound, OpenMP and fork
bookkeeping, and the training loop's phase timer.

One struct for the process, owned by ``runtime.pyx``: every module reaches it
through ``runtime()`` (a C pointer, read without the GIL). It is global
because OpenMP's thread pool and libgomp's fork hazard are per process.
"""
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastmlp._native.common cimport N_PHASES


cdef struct Runtime:
    int n_threads           # the bound of the modules' own OpenMP loops
    Py_ssize_t par_min_work  # elements from which a kernel's loop runs in parallel
    bint loop_parallel      # let the training loop's element-wise work use OpenMP (off)
    int serial_loops        # training loops running now whose kernels stay serial
    bint omp_started        # this process ran an OpenMP region
    bint omp_forked         # ... and this is a fork of it: stay serial (libgomp would hang)
    bint timing             # the loop's phase timer is on
    double phase_s[N_PHASES]    # seconds per phase (its products included)
    double product_s[N_PHASES]  # ... of which in matrix products


cdef Runtime* runtime() noexcept nogil


cdef inline bint parallel_ok(Runtime* rt, Py_ssize_t work) noexcept nogil:
    """Whether a kernel's loop over ``work`` elements takes its parallel twin."""
    if rt.n_threads > 1 and work >= rt.par_min_work and rt.serial_loops == 0 and not rt.omp_forked:
        rt.omp_started = True
        return True
    return False


cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef inline double lap(Runtime* rt, bint timing, int phase, double since) noexcept nogil:
    """Charge the time since ``since`` to ``phase``; returns now (0 when not timing).
    The loop passes timing on its first thread only."""
    cdef double t
    if not timing:
        return 0.0
    t = now()
    rt.phase_s[phase] += t - since
    return t
