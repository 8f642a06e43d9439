"""Runtime state of the native modules that is not a kernel's result: the thread
counts that set_num_threads leaves, and the thread paths conftest.kernel_threads
puts the Cython kernels on (every kernel's result on both paths is test_kernels.py's)."""
import pytest

from conftest import BACKENDS, kernel_threads

needs_numba = pytest.mark.skipif("numba" not in BACKENDS, reason="the numba backend is not available")
needs_cython = pytest.mark.skipif("cython" not in BACKENDS, reason="the cython backend is not built")


@needs_numba
def test_numba_set_num_threads():
    import numba

    from fastmlp.backends import numba_backend as nb

    old = numba.get_num_threads()
    try:
        nb.set_num_threads(1000)  # bounded by the threads Numba started with
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        nb.set_num_threads(1)
        assert numba.get_num_threads() == 1
        nb.set_num_threads(0)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(old)


@needs_cython
def test_cython_set_num_threads():
    import fastmlp
    from fastmlp import _config
    from fastmlp._native import runtime as K

    cy = fastmlp.get_backend("cython")
    old = K.get_num_threads()
    try:
        cy.set_num_threads(3)
        assert K.get_num_threads() == 3
        cy.set_num_threads(0)  # at least one
        assert K.get_num_threads() == 1
        cy.set_num_threads(None)  # the default bound
        assert K.get_num_threads() == _config.default_threads()
    finally:
        K.set_num_threads(old)


@needs_cython
@pytest.mark.parametrize("n_threads, floor", [(1, 65536), (2, 1)])
def test_kernel_threads_sets_and_restores_the_cython_path(n_threads, floor):
    from fastmlp._native import runtime as K

    before = K.get_num_threads(), K._set_parallel_min_work(4321)
    try:
        with kernel_threads("cython", n_threads):
            assert K.get_num_threads() == n_threads
            assert K._set_parallel_min_work(floor) == floor  # the parallel floor it set
        assert (K.get_num_threads(), K._set_parallel_min_work(4321)) == (before[0], 4321)
    finally:
        K.set_num_threads(before[0])
        K._set_parallel_min_work(before[1])
