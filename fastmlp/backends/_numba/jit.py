"""The Numba backend's compilers: one place for the options, and the serial and
parallel variants of a kernel compiled from one function (umap's layouts.py).

``variants(fn)`` compiles ``fn`` twice: with ``parallel=False``, where
``numba.prange`` is ``range`` (the serial kernel, the one the training loop
calls), and with ``parallel=True``. Only loops over independent rows or
elements get a parallel variant, so both give the same numbers bit for bit.
``parallel_ok(work)`` picks the variant in the public kernels: the parallel
one when Numba may use more than one thread, the work repays a parallel
region, and this process is not a fork of one that ran a region (Numba's
OpenMP layer cannot run one there).
"""
import os

import numba
from numba import njit

from ... import _config

# error_model="numpy": x / 0 gives inf or nan as in NumPy instead of raising
# ZeroDivisionError, and the check it drops is what kept divisions and
# square roots from vectorising.
_OPTIONS = dict(cache=True, fastmath=_config.FASTMATH, error_model="numpy")
jit = njit(**_OPTIONS)
# A float64 sum of squares does not care about the order of its terms: let
# LLVM reassociate it so the reduction vectorises.
jit_reduce = njit(cache=True, fastmath=_config.FASTMATH or {"reassoc"}, error_model="numpy")
# Below this many elements a parallel region costs more than it saves (the
# Cython kernels' bound, runtime.pyx).
PAR_MIN_WORK = 65536
_state = {"ran": False, "forked": False}


def variants(fn):
    """(serial, parallel) compilations of one kernel whose loop is a ``numba.prange``."""
    return jit(fn), njit(parallel=True, **_OPTIONS)(fn)


def parallel_ok(work):
    """Whether a public kernel over ``work`` elements takes its parallel variant."""
    if _state["forked"] or work < PAR_MIN_WORK or numba.get_num_threads() < 2:
        return False
    _state["ran"] = True
    return True


def _after_fork_in_child():
    if _state["ran"]:
        _state["forked"] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
