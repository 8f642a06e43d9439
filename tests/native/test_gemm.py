"""The Cython matrix products: the paths of gemm (the small-product kernels of
``_smallgemm.h``, BLAS only, scipy's BLAS), the small-product kernel alone, the
choice of BLAS, and the packed-operand kernel of ``_packgemm.h`` against NumPy.

gemm on its default path is compared with the reference in test_kernels.py; here
its rows run again with the small kernels off and on scipy's BLAS. The packed
kernel's training loop is tested in test_packed_gemm.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DTYPES, kernel_paths, rand
from test_kernels import C, NT, TRANS, Case, assert_matches, case_params, gemm_build, reference_run, run_calls

K = pytest.importorskip("fastmlp._native.gemm")
cy = pytest.importorskip("fastmlp.backends.cython_backend")

DTS = [np.dtype(d) for d in DTYPES]
# Every test of the Cython products on both of its thread paths, as in the former
# test_cython_kernels.py (the products call no OpenMP themselves: the second path
# checks that the thread setting changes nothing).
CYTHON_PATHS = kernel_paths(["cython"])
NUMPY_BLAS = cy._numpy_openblas()  # what the backend's import chose (None: scipy's BLAS)
on_both_paths = pytest.mark.parametrize("kernel_path", CYTHON_PATHS, indirect=True)


# ------------------------------------------------------------- gemm's paths
@pytest.fixture
def gemm_path(request):
    """gemm with the small kernels on (products up to 262144 multiply-adds, the default)
    or off, on the default BLAS (NumPy's OpenBLAS when the wheel has one) or scipy's;
    the default pair is test_kernels.py's."""
    small_max, blas = request.param
    old = K._set_small_gemm_max(small_max)
    if blas == "scipy":
        K._use_blas64(0, 0, "scipy")
    try:
        yield request.param
    finally:
        K._set_small_gemm_max(old)
        if blas == "scipy" and NUMPY_BLAS:
            K._use_blas64(*NUMPY_BLAS)


# test_kernels.py's rows of the former test: its shapes, betas and inner sizes (it took
# 5 for products of fewer than 100 elements, else 77; here both everywhere).
PATH_CASES = [Case("gemm", f"{NT[ta]}{NT[tb]}-beta={beta}", gemm_build(ta, tb, beta, inner=((5, C), (77, C))), "gemm")
              for ta, tb in TRANS for beta in (0.0, 0.5)]


@on_both_paths  # innermost (the top decorator), then gemm's path: they share the reference's run
@pytest.mark.parametrize("gemm_path", [(262144, "scipy"), (0, "default"), (0, "scipy")],
                         ids=["small-kernels-scipy", "blas-only-default", "blas-only-scipy"], indirect=True)
@pytest.mark.parametrize("case, shape, dt", case_params(PATH_CASES))
def test_gemm_paths_match_reference(kernel_path, gemm_path, case, shape, dt):
    calls, want, want_rets = reference_run(case, shape, dt)
    got, got_rets = run_calls(kernel_path, case.kernel, calls)
    assert_matches(case, calls, want, want_rets, got, got_rets, dt, err=f"{gemm_path}: ")


@on_both_paths
@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
def test_gemm_empty_inner(kernel_path, dt):
    A = np.zeros((3, 0), dt)
    B = np.zeros((0, 4), dt)
    C = np.full((3, 4), np.nan, dt)
    kernel_path.gemm(A, B, C, False, False, 0.0)
    assert np.all(C == 0)
    C[...] = 2
    kernel_path.gemm(A, B, C, False, False, 0.5)
    assert np.all(C == 1)


# ------------------------------------------------------------- the small-product kernel
# The register-blocked kernels for small products (_smallgemm.h), called
# directly: every tail of their 4-row x 2-vector blocks (m % 4; a lone vector,
# a full vector beside the zero-padded last columns, only those; odd k), both
# transposes, beta 0 (C not read), 1 and another.
SMALL_M = [1, 3, 4, 5, 9, 32]
SMALL_N = [1, 3, 8, 16, 17, 33, 48, 64]  # 48: three whole vectors of 16 floats (AVX-512), six of doubles
SMALL_K = [1, 2, 7, 63, 64]


@on_both_paths
@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.37])
def test_small_gemm_kernel(kernel_path, dt, trans_a, trans_b, beta):
    rng = np.random.default_rng(1)
    for m in SMALL_M:
        for n in SMALL_N:
            for kk in SMALL_K:
                A = rand(rng, (kk, m) if trans_a else (m, kk), dt)
                B = rand(rng, (n, kk) if trans_b else (kk, n), dt)
                C0 = rand(rng, (m, n), dt)
                if beta == 0.0:
                    C0[:] = np.nan  # must not be read
                want = ((A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
                        + (beta * C0.astype(np.float64) if beta else 0.0))
                C = C0.copy()
                if K._small_gemm_kernel(A, B, C, trans_a, trans_b, beta):
                    np.testing.assert_allclose(C, want, rtol=1e-5 if dt == np.float32 else 1e-13,
                                               atol=1e-4 if dt == np.float32 else 1e-12, err_msg=f"m={m} n={n} k={kk}")
                else:  # a build without AVX2 and FMA leaves every product to BLAS
                    assert not K._HAVE_SMALL_GEMM, (m, n, kk)
                    np.testing.assert_array_equal(C, C0)


@on_both_paths
def test_small_gemm_kernel_leaves_large_buffers_to_blas(kernel_path):
    # op(B) = B^T goes through a copy of 4096 elements at most: larger ones are BLAS's
    A, B = np.ones((4, 100), np.float32), np.ones((50, 100), np.float32)
    C = np.full((4, 50), 7.0, np.float32)
    assert not K._small_gemm_kernel(A, B, C, False, True, 0.0)
    assert np.all(C == 7.0)
    B = np.ones((40, 100), np.float32)
    C = np.full((4, 40), 7.0, np.float32)
    assert K._small_gemm_kernel(A, B, C, False, True, 0.0) == K._HAVE_SMALL_GEMM
    assert np.all(C == (100.0 if K._HAVE_SMALL_GEMM else 7.0))
    # zero-padded last columns go through a (k, vector) buffer of 64 vectors, k <= 256 in float32
    # whatever the vector width
    A, B = np.ones((4, 600), np.float32), np.ones((600, 9), np.float32)
    C = np.full((4, 9), 7.0, np.float32)
    assert not K._small_gemm_kernel(A, B, C, False, False, 0.0)
    assert np.all(C == 7.0)
    for k, handled in ((256, K._HAVE_SMALL_GEMM), (257, False)):
        A, B = np.ones((4, k), np.float32), np.ones((k, 9), np.float32)
        C = np.full((4, 9), 7.0, np.float32)
        assert K._small_gemm_kernel(A, B, C, False, False, 0.0) == handled, k
        assert np.all(C == (float(k) if handled else 7.0)), k
    with pytest.raises(ValueError, match="shapes do not match"):
        K._small_gemm_kernel(A, B, C, False, True, 0.0)


# ------------------------------------------------------------- the choice of BLAS
@on_both_paths
def test_blas_choice(kernel_path):
    # The products go to NumPy's bundled OpenBLAS when the wheel has one (the
    # backend's import chose it), else to scipy's.
    found = cy._numpy_openblas()  # looked up again, not the cached NUMPY_BLAS
    if found:
        assert K.blas_name() == found[2] and found[2].startswith("numpy (")
        assert found[0] and found[1]
    else:
        assert K.blas_name() == "scipy"
    with pytest.raises(ValueError, match="both"):
        K._use_blas64(1, 0, "half")


def test_blas_choice_follows_the_environment():
    # FASTMLP_BLAS=scipy keeps scipy's; each run is a new process, whatever this one's threads
    found = cy._numpy_openblas()
    code = ("import fastmlp.backends.cython_backend; from fastmlp._native import gemm; "
            "print(gemm.blas_name())")
    for env, want in (({"FASTMLP_BLAS": "scipy"}, "scipy"), ({"FASTMLP_BLAS": ""}, found[2] if found else "scipy")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, **env), check=True).stdout.strip()
        assert out == want, (env, out)


# ------------------------------------------------------------- the packed-operand kernel
needs_packed = pytest.mark.skipif(not K._HAVE_PACKED_GEMM,  # a CPU without AVX2 and FMA, or FASTMLP_PORTABLE=1
                                  reason="this build has no packed-operand kernels")


def _product(A_, B, trans_a, beta, C0, packed_c):
    m = A_.shape[1] if trans_a else A_.shape[0]
    n = B.shape[1]
    panels = -(-n // 16)
    if packed_c:
        Cp = np.zeros((panels, m, 16), np.float32)
        for p in range(panels):  # panel p: columns 16p.. of every row, 16 to a row
            Cp[p, :, :min(16, n - 16 * p)] = C0[:, 16 * p:16 * p + 16]
        C = Cp.reshape(panels * m, 16)
        K._packed_product(A_, B, trans_a, beta, C, True)
        return C.reshape(panels, m, 16).transpose(1, 0, 2).reshape(m, panels * 16)[:, :n]
    C = C0.copy()
    K._packed_product(A_, B, trans_a, beta, C, False)
    return C


@needs_packed
@pytest.mark.parametrize("m", [1, 5, 6, 7, 12, 13, 23, 40])
@pytest.mark.parametrize("n", [1, 10, 16, 17, 40])
@pytest.mark.parametrize("k", [0, 1, 9, 300])
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A.T"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("packed_c", [False, True], ids=["C", "packed C"])
def test_kernel_matches_numpy(m, n, k, trans_a, beta, packed_c):
    # whole and partial row tiles (avx2: 6 rows; avx512: 8 rows of a row-major A, 12 of a
    # transposed one, with remainders of 8, 4, 2 and 1: 23 = 12 + 8 + 2 + 1 = 2 * 8 + 4 + 2 + 1),
    # whole and partial 16-column panels, k = 0
    rng = np.random.default_rng([m, n, k])
    A_ = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    C0 = rng.standard_normal((m, n)).astype(np.float32)
    want = (A_.T if trans_a else A_).astype(np.float64) @ B + beta * C0.astype(np.float64)
    got = _product(A_, B, trans_a, beta, C0, packed_c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.sqrt(k)))


@needs_packed
def test_kernel_blocks_of_rows():
    # k large enough that a block of A's rows holds fewer rows than the matrix (FM_PK_A_BLOCK)
    rng = np.random.default_rng(7)
    A_ = rng.standard_normal((37, 20000)).astype(np.float32)
    B = rng.standard_normal((20000, 21)).astype(np.float32)
    C = np.full((37, 21), np.nan, np.float32)  # beta == 0: C is not read
    K._packed_product(A_, B, False, 0.0, C)
    np.testing.assert_allclose(C, A_.astype(np.float64) @ B, rtol=1e-4, atol=1e-3)


@needs_packed
def test_kernel_checks_shapes():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="rows"):
        K._packed_product(a, np.zeros((5, 2), np.float32), False, 0.0, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="wrong for an"):
        K._packed_product(a, np.zeros((4, 2), np.float32), False, 0.0, np.zeros((3, 3), np.float32))
