"""Defaults in one place: dtype, threads, backend, fastmath.

Environment variables
---------------------
FASTMLP_BACKEND : "auto" | "reference" | "numba" | "cython"
    Default kernel backend for models that do not name one.
FASTMLP_FASTMATH : "0" | "1"
    Let Numba reorder floating-point operations (off by default: results
    must agree with the reference backend to rounding).
FASTMLP_NUM_THREADS : int
    Default thread bound for BLAS, Numba and OpenMP.
"""
import os

DEFAULT_DTYPE = "float32"
SUPPORTED_DTYPES = ("float32", "float64")
BACKEND = os.environ.get("FASTMLP_BACKEND", "auto")
FASTMATH = os.environ.get("FASTMLP_FASTMATH", "0") == "1"


def default_threads():
    """Thread bound used when neither the model nor ``fit`` names one."""
    env = os.environ.get("FASTMLP_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
