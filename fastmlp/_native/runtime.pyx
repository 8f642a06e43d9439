# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The process's runtime state (see runtime.pxd), its setters, and the test hooks."""
import os as _os

from fastmlp._native.common cimport N_PHASES, compiled_codes

cdef extern from "barrier.h" nogil:
    int FM_HAVE_OPENMP

cdef Runtime _rt
_rt.n_threads = 1
# Below this many elements a parallel region costs more than it saves (and on
# a busy machine a region whose threads wait for a core costs milliseconds).
_rt.par_min_work = 65536
# Inside the training loop the element-wise work between BLAS calls stays on
# one thread by default: an OpenMP team woken right after a threaded GEMM
# finds the BLAS workers still spinning on the other cores, and on a 2-core
# machine each region then waits for a time slice.
_rt.loop_parallel = False
_rt.serial_loops = 0
_rt.omp_started = False
_rt.omp_forked = False
_rt.timing = False
for _i in range(N_PHASES):
    _rt.phase_s[_i] = 0.0
    _rt.product_s[_i] = 0.0

HAVE_OPENMP = bool(FM_HAVE_OPENMP)
# The phases of loop_phase_times, in the order of codes.Phase
PHASES = ("gather", "forward", "loss", "backward", "param grads", "clip", "update", "sync")


cdef Runtime* runtime() noexcept nogil:
    return &_rt


def codes():
    """The codes this build was compiled with: ``{enum: {member: value}}``
    (the Cython backend compares them with fastmlp._native.codes at import)."""
    return compiled_codes()


def set_num_threads(int n_threads):
    """Bound the OpenMP threads of the compiled loops (BLAS is bounded by the
    caller through threadpoolctl)."""
    _rt.n_threads = n_threads if n_threads > 1 else 1


def get_num_threads():
    return _rt.n_threads


def _set_parallel_min_work(Py_ssize_t n):
    """Testing hook: the work (elements) from which loops go parallel; returns the old value."""
    old, _rt.par_min_work = _rt.par_min_work, n
    return old


def _set_loop_parallel(bint on):
    """Let the training loop's element-wise kernels use OpenMP (off by default);
    returns the old setting. For measurements and tests."""
    old = _rt.loop_parallel
    _rt.loop_parallel = on
    return old


def _after_fork_in_child():
    # GNU libgomp cannot run a parallel region in a child forked (os.fork,
    # multiprocessing's "fork") after the parent ran one: the child would wait
    # forever for the parent's team. Such a child stays serial.
    if _rt.omp_started:
        _rt.omp_forked = True


def _forked_serial():
    """Whether this process is a fork of one that ran an OpenMP region, so runs serially."""
    return bool(_rt.omp_forked)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


def loop_phase_times(enable=None, reset=True):
    """Seconds the training loop spent in each phase since the last reset.

    ``enable`` (True / False) switches the timing on or off first (it is off
    by default and costs nothing then); ``reset`` zeroes the totals after
    reading them. Returns a dict: for each of PHASES its time without its
    matrix products, and under ``"<phase> products"`` (where it has any) the
    time of those. With the loop on threads of its own, the times are its
    first thread's. Timing a boundary costs about 20 ns (clock_gettime).
    """
    if enable is not None:
        _rt.timing = bool(enable)
    out = {}
    for i, name in enumerate(PHASES):
        out[name] = _rt.phase_s[i] - _rt.product_s[i]
        if name in ("forward", "backward", "param grads"):
            out[f"{name} products"] = _rt.product_s[i]
    if reset:
        for i in range(N_PHASES):
            _rt.phase_s[i] = 0.0
            _rt.product_s[i] = 0.0
    return out
