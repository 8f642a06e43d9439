"""Development tests: every compiled Cython kernel against the NumPy reference."""
import inspect

import numpy as np
import pytest

from fastmlp import activations as acts
from fastmlp.backends import reference as ref

cy = pytest.importorskip("fastmlp.backends.cython_backend")

KERNELS = [
    "set_num_threads", "gemm", "gather_rows", "act_forward", "bias_act_forward",
    "dense_forward", "act_backward", "bias_grad", "dense_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_onehot", "nll_loss",
    "sigmoid_binary_cross_entropy", "mse_loss", "sgd_update", "rmsprop_update",
    "adam_update", "sum_squares", "scale_inplace",
]
SHAPES = [(1, 1), (1, 7), (7, 1), (33, 17), (128, 256)]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
ALPHA = {acts.LEAKY_RELU: 0.01, acts.ELU: 1.3}


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"], autouse=True)
def threads(request):
    # With 2 threads every loop takes its parallel path, whatever the size.
    from fastmlp import _kernels

    old = _kernels._set_parallel_min_work(1 if request.param > 1 else 1 << 16)
    cy.set_num_threads(request.param)
    yield request.param
    cy.set_num_threads(1)
    _kernels._set_parallel_min_work(old)


def close(a, b, dtype, **kw):
    tol = dict(TOL[dtype], **kw)
    np.testing.assert_allclose(a, b, **tol)


def rand(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def test_signatures_match_reference():
    for name in KERNELS:
        assert inspect.signature(getattr(cy, name)) == inspect.signature(getattr(ref, name)), name
    assert cy.NAME == "cython"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("small_max", [262144, 0], ids=["small-kernels", "blas-only"])
@pytest.mark.parametrize("blas", ["default", "scipy"])
def test_gemm(dtype, shape, trans_a, trans_b, beta, small_max, blas):
    from fastmlp import _kernels

    rng = np.random.default_rng(0)
    m, n = shape
    kk = 5 if m * n < 100 else 77
    A = rand(rng, (kk, m) if trans_a else (m, kk), dtype)
    B = rand(rng, (n, kk) if trans_b else (kk, n), dtype)
    C0 = rand(rng, (m, n), dtype)
    if beta == 0.0:
        C0[0, 0] = np.nan  # must be ignored
    C1, C2 = C0.copy(), C0.copy()
    ref.gemm(A, B, C1, trans_a, trans_b, beta)
    old = _kernels._set_small_gemm_max(small_max)
    found = cy._numpy_openblas()
    if blas == "scipy":
        _kernels._use_blas64(0, 0, "scipy")
    try:
        cy.gemm(A, B, C2, trans_a, trans_b, beta)
    finally:
        _kernels._set_small_gemm_max(old)
        if blas == "scipy" and found:
            _kernels._use_blas64(*found)
    close(C2, C1, dtype, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-12)


# The register-blocked kernels for small products (_smallgemm.h), called
# directly: every tail of their 4-row x 2-vector blocks (m % 4; a lone vector,
# a full vector beside the zero-padded last columns, only those; odd k), both
# transposes, beta 0 (C not read), 1 and another.
SMALL_M = [1, 3, 4, 5, 9, 32]
SMALL_N = [1, 3, 8, 16, 17, 33, 48, 64]  # 48: three whole vectors of 16 floats (AVX-512), six of doubles
SMALL_K = [1, 2, 7, 63, 64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.37])
def test_small_gemm_kernel(dtype, trans_a, trans_b, beta):
    from fastmlp import _kernels

    rng = np.random.default_rng(1)
    handled = 0
    for m in SMALL_M:
        for n in SMALL_N:
            for kk in SMALL_K:
                A = rand(rng, (kk, m) if trans_a else (m, kk), dtype)
                B = rand(rng, (n, kk) if trans_b else (kk, n), dtype)
                C0 = rand(rng, (m, n), dtype)
                if beta == 0.0:
                    C0[:] = np.nan  # must not be read
                want = ((A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
                        + (beta * C0.astype(np.float64) if beta else 0.0))
                C = C0.copy()
                if _kernels._small_gemm_kernel(A, B, C, trans_a, trans_b, beta):
                    handled += 1
                    close(C, want, dtype, rtol=1e-5 if dtype == np.float32 else 1e-13,
                          atol=1e-4 if dtype == np.float32 else 1e-12, err_msg=f"m={m} n={n} k={kk}")
                else:  # a build without AVX2 and FMA leaves every product to BLAS
                    assert not _kernels._HAVE_SMALL_GEMM, (m, n, kk)
                    np.testing.assert_array_equal(C, C0)


def test_small_gemm_kernel_leaves_large_buffers_to_blas():
    from fastmlp import _kernels

    # op(B) = B^T goes through a copy of 4096 elements at most: larger ones are BLAS's
    A, B = np.ones((4, 100), np.float32), np.ones((50, 100), np.float32)
    C = np.full((4, 50), 7.0, np.float32)
    assert not _kernels._small_gemm_kernel(A, B, C, False, True, 0.0)
    assert np.all(C == 7.0)
    B = np.ones((40, 100), np.float32)
    C = np.full((4, 40), 7.0, np.float32)
    assert _kernels._small_gemm_kernel(A, B, C, False, True, 0.0) == _kernels._HAVE_SMALL_GEMM
    assert np.all(C == (100.0 if _kernels._HAVE_SMALL_GEMM else 7.0))
    # zero-padded last columns go through a (k, vector) buffer of 64 vectors, k <= 256 in float32
    # whatever the vector width
    A, B = np.ones((4, 600), np.float32), np.ones((600, 9), np.float32)
    C = np.full((4, 9), 7.0, np.float32)
    assert not _kernels._small_gemm_kernel(A, B, C, False, False, 0.0)
    assert np.all(C == 7.0)
    for k, handled in ((256, _kernels._HAVE_SMALL_GEMM), (257, False)):
        A, B = np.ones((4, k), np.float32), np.ones((k, 9), np.float32)
        C = np.full((4, 9), 7.0, np.float32)
        assert _kernels._small_gemm_kernel(A, B, C, False, False, 0.0) == handled, k
        assert np.all(C == (float(k) if handled else 7.0)), k
    with pytest.raises(ValueError, match="shapes do not match"):
        _kernels._small_gemm_kernel(A, B, C, False, True, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_empty_inner(dtype):
    A = np.zeros((3, 0), dtype)
    B = np.zeros((0, 4), dtype)
    C = np.full((3, 4), np.nan, dtype)
    cy.gemm(A, B, C, False, False, 0.0)
    assert np.all(C == 0)
    C[...] = 2
    cy.gemm(A, B, C, False, False, 0.5)
    assert np.all(C == 1)


def test_gemm_shape_error():
    with pytest.raises(ValueError):
        cy.gemm(np.ones((2, 3)), np.ones((4, 2)), np.ones((2, 2)), False, False, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_rows(dtype, shape):
    rng = np.random.default_rng(1)
    X = rand(rng, (shape[0] + 5, shape[1]), dtype)
    idx = rng.integers(0, X.shape[0], size=shape[0] * 2).astype(np.int64)
    o1 = np.empty((idx.shape[0], X.shape[1]), dtype)
    o2 = np.empty_like(o1)
    ref.gather_rows(X, idx, o1)
    cy.gather_rows(X, idx, o2)
    np.testing.assert_array_equal(o1, o2)
    with pytest.raises(IndexError):
        cy.gather_rows(X, np.array([0, X.shape[0]], np.int64), o2[:2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", range(len(acts.ACTIVATIONS)))
@pytest.mark.parametrize("inplace", [False, True])
def test_act_forward(dtype, shape, act, inplace):
    rng = np.random.default_rng(2)
    Z = rand(rng, shape, dtype)
    Z.flat[0] = 0.0
    if Z.size > 3:
        Z.flat[1], Z.flat[2] = 25.0, -30.0  # softplus threshold, saturated sigmoid
    alpha = ALPHA.get(act, 0.0)
    A1 = np.empty_like(Z)
    ref.act_forward(Z, act, alpha, A1)
    if inplace:
        A2 = Z.copy()
        cy.act_forward(A2, act, alpha, A2)
    else:
        A2 = np.empty_like(Z)
        cy.act_forward(Z, act, alpha, A2)
    close(A2, A1, dtype)
    if act == acts.SOFTMAX:
        close(A2.sum(axis=1), np.ones(shape[0]), dtype, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", [acts.IDENTITY, acts.RELU, acts.GELU, acts.SOFTMAX, acts.LOG_SOFTMAX])
@pytest.mark.parametrize("bias", [True, False])
def test_bias_act_and_dense_forward(dtype, shape, act, bias):
    rng = np.random.default_rng(3)
    n, k = shape
    d = 9
    X = rand(rng, (n, d), dtype, 1.0)
    W = rand(rng, (d, k), dtype, 0.5)
    b = rand(rng, (k,), dtype) if bias else np.empty(0, np.float64)  # "none" of another dtype
    alpha = ALPHA.get(act, 0.0)
    Z1, A1 = np.empty((n, k), dtype), np.empty((n, k), dtype)
    Z2, A2 = np.empty((n, k), dtype), np.empty((n, k), dtype)
    ref.dense_forward(X, W, b.astype(dtype), act, alpha, Z1, A1)
    cy.dense_forward(X, W, b, act, alpha, Z2, A2)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else {}
    close(Z2, Z1, dtype, **tol)
    close(A2, A1, dtype, **tol)
    # bias_act_forward, in place (A is Z)
    Z0 = rand(rng, (n, k), dtype)
    Z1, Z2 = Z0.copy(), Z0.copy()
    A1 = np.empty_like(Z0)
    ref.bias_act_forward(Z1, b.astype(dtype), act, alpha, A1)
    cy.bias_act_forward(Z2, b, act, alpha, Z2)
    close(Z2, A1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", [a for a in range(len(acts.ACTIVATIONS)) if a != acts.STEP])
@pytest.mark.parametrize("inplace", [False, True])
def test_act_backward(dtype, shape, act, inplace):
    rng = np.random.default_rng(4)
    Z = rand(rng, shape, dtype)
    Z.flat[0] = 0.0  # non-differentiable points follow activations.py
    if Z.size > 3:
        Z.flat[1], Z.flat[2] = 25.0, -30.0
    alpha = ALPHA.get(act, 0.0)
    A = np.empty_like(Z)
    ref.act_forward(Z, act, alpha, A)
    dA = rand(rng, shape, dtype, 1.0)
    dZ1 = np.empty_like(Z)
    ref.act_backward(Z, A, dA, act, alpha, dZ1)
    if inplace:
        dZ2 = dA.copy()
        cy.act_backward(Z, A, dZ2, act, alpha, dZ2)
    else:
        dZ2 = np.empty_like(Z)
        cy.act_backward(Z, A, dA, act, alpha, dZ2)
    close(dZ2, dZ1, dtype)


def test_act_errors():
    Z = np.ones((2, 3))
    with pytest.raises(ValueError, match="step"):
        cy.act_backward(Z, Z, Z, acts.STEP, 0.0, Z.copy())
    with pytest.raises(ValueError, match="unknown activation"):
        cy.act_forward(Z, 99, 0.0, Z.copy())
    with pytest.raises(ValueError, match="unknown activation"):
        cy.act_backward(Z, Z, Z, -1, 0.0, Z.copy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_grad(dtype, shape):
    rng = np.random.default_rng(5)
    dZ = rand(rng, shape, dtype)
    db1, db2 = np.empty(shape[1], dtype), np.empty(shape[1], dtype)
    ref.bias_grad(dZ, db1)
    cy.bias_grad(dZ, db2)
    close(db2, db1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("with_db", [True, False])
@pytest.mark.parametrize("with_dx", [True, False])
def test_dense_backward(dtype, shape, l2, with_db, with_dx):
    rng = np.random.default_rng(6)
    n, k = shape
    d = 11
    X = rand(rng, (n, d), dtype, 1.0)
    W = rand(rng, (d, k), dtype, 0.5)
    dZ = rand(rng, (n, k), dtype, 1.0)
    outs = []
    for mod in (ref, cy):
        dW = np.full((d, k), np.nan, dtype)
        db = np.empty(k if with_db else 0, dtype)
        dX = np.full((n, d), np.nan, dtype) if with_dx else np.empty((0, 0), dtype)
        mod.dense_backward(X, W, dZ, l2, dW, db, dX)
        outs.append((dW, db, dX))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else {}
    for a, b in zip(outs[1], outs[0]):
        close(a, b, dtype, **tol)


def _weights(rng, n, dtype, kind):
    if kind == "none":
        return np.empty(0, np.float64)  # "none" of another dtype must be accepted
    return rng.uniform(0.1, 2.0, n).astype(dtype)


LOSS_TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", ["none", "some"])
def test_softmax_cross_entropy_and_nll(dtype, shape, weights):
    rng = np.random.default_rng(7)
    n, k = shape
    Z = rand(rng, shape, dtype)
    y = rng.integers(0, k, n).astype(np.int64)
    sw = _weights(rng, n, dtype, weights)
    res = []
    for mod in (ref, cy):
        P, dZ = np.empty(shape, dtype), np.empty(shape, dtype)
        loss = mod.softmax_cross_entropy(Z, y, sw.astype(dtype) if mod is ref else sw, P, dZ)
        res.append((loss, P, dZ))
    assert isinstance(res[1][0], float)
    np.testing.assert_allclose(res[1][0], res[0][0], **LOSS_TOL[dtype])
    close(res[1][1], res[0][1], dtype)
    close(res[1][2], res[0][2], dtype)
    # one-hot targets give the same thing as labels
    Y = np.eye(k, dtype=dtype)[y]
    res = []
    for mod in (ref, cy):
        P, dZ = np.empty(shape, dtype), np.empty(shape, dtype)
        loss = mod.softmax_cross_entropy_onehot(Z, Y, sw.astype(dtype) if mod is ref else sw, P, dZ)
        res.append((loss, P, dZ))
    np.testing.assert_allclose(res[1][0], res[0][0], **LOSS_TOL[dtype])
    close(res[1][1], res[0][1], dtype)
    close(res[1][2], res[0][2], dtype)
    # soft targets
    Ys = rng.uniform(size=shape).astype(dtype)
    Ys /= Ys.sum(axis=1, keepdims=True)
    res = []
    for mod in (ref, cy):
        P, dZ = np.empty(shape, dtype), np.empty(shape, dtype)
        loss = mod.softmax_cross_entropy_onehot(Z, Ys, sw.astype(dtype) if mod is ref else sw, P, dZ)
        res.append((loss, P, dZ))
    np.testing.assert_allclose(res[1][0], res[0][0], **LOSS_TOL[dtype])
    close(res[1][2], res[0][2], dtype)
    # nll on log-softmax
    logP = np.empty(shape, dtype)
    ref.act_forward(Z, acts.LOG_SOFTMAX, 0.0, logP)
    res = []
    for mod in (ref, cy):
        d = np.full(shape, np.nan, dtype)
        loss = mod.nll_loss(logP, y, sw.astype(dtype) if mod is ref else sw, d)
        res.append((loss, d))
    np.testing.assert_allclose(res[1][0], res[0][0], **LOSS_TOL[dtype])
    close(res[1][1], res[0][1], dtype)


def test_label_errors():
    Z = np.zeros((3, 4))
    P = np.empty_like(Z)
    with pytest.raises(IndexError):
        cy.softmax_cross_entropy(Z, np.array([0, 4, 1]), np.empty(0), P, P.copy())
    with pytest.raises(IndexError):
        cy.nll_loss(Z, np.array([0, -1, 1]), np.empty(0), P)
    with pytest.raises(ValueError):
        cy.softmax_cross_entropy(Z, np.array([0, 1]), np.empty(0), P, P.copy())
    # int32 labels are accepted, as by the reference
    cy.softmax_cross_entropy(Z, np.array([0, 3, 1], np.int32), np.empty(0), P, P.copy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", ["none", "some"])
def test_bce_and_mse(dtype, shape, weights):
    rng = np.random.default_rng(8)
    Z = rand(rng, shape, dtype)
    Z.flat[0] = 0.0
    Y = rng.uniform(size=shape).astype(dtype)
    sw = _weights(rng, shape[0], dtype, weights)
    res = []
    for mod in (ref, cy):
        P, dZ = np.empty(shape, dtype), np.empty(shape, dtype)
        loss = mod.sigmoid_binary_cross_entropy(Z, Y, sw.astype(dtype) if mod is ref else sw, P, dZ)
        res.append((loss, P, dZ))
    np.testing.assert_allclose(res[1][0], res[0][0], **LOSS_TOL[dtype])
    close(res[1][1], res[0][1], dtype)
    close(res[1][2], res[0][2], dtype)
    res = []
    for mod in (ref, cy):
        d = np.empty(shape, dtype)
        loss = mod.mse_loss(Z, Y, sw.astype(dtype) if mod is ref else sw, d)
        res.append((loss, d))
    np.testing.assert_allclose(res[1][0], res[0][0], **LOSS_TOL[dtype])
    close(res[1][1], res[0][1], dtype)


OPT_SIZES = [1, 7, 1000, 235146]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", OPT_SIZES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd(dtype, size, momentum, nesterov):
    rng = np.random.default_rng(9)
    st = [[rand(rng, size, dtype, 1.0) for _ in range(2)] for _ in range(2)]
    st[1] = [a.copy() for a in st[0]]
    for s in range(3):
        g = rand(rng, size, dtype, 1.0)
        ref.sgd_update(st[0][0], g, st[0][1], 0.1, momentum, nesterov)
        cy.sgd_update(st[1][0], g, st[1][1], 0.1, momentum, nesterov)
    close(st[1][0], st[0][0], dtype)
    close(st[1][1], st[0][1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", OPT_SIZES)
def test_rmsprop_adam(dtype, size):
    rng = np.random.default_rng(10)
    p0 = rand(rng, size, dtype, 1.0)
    p = [p0.copy(), p0.copy()]
    sq = [np.zeros(size, dtype), np.zeros(size, dtype)]
    pa = [p0.copy(), p0.copy()]
    m = [np.zeros(size, dtype), np.zeros(size, dtype)]
    v = [np.zeros(size, dtype), np.zeros(size, dtype)]
    for t in range(1, 5):
        g = rand(rng, size, dtype, 1.0)
        for i, mod in enumerate((ref, cy)):
            mod.rmsprop_update(p[i], g, sq[i], 0.01, 0.99, 1e-8)
            mod.adam_update(pa[i], g, m[i], v[i], 0.001, 0.9, 0.999, 1e-8, t)
    for a, b in ((p, 0), (sq, 0), (pa, 0), (m, 0), (v, 0)):
        close(a[1], a[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0] + OPT_SIZES)
def test_sum_squares_scale(dtype, size):
    rng = np.random.default_rng(11)
    x = rand(rng, size, dtype, 1.0)
    s = cy.sum_squares(x)
    assert isinstance(s, float)
    np.testing.assert_allclose(s, ref.sum_squares(x), rtol=1e-5 if dtype == np.float32 else 1e-12)
    x1, x2 = x.copy(), x.copy()
    ref.scale_inplace(x1, 0.37)
    cy.scale_inplace(x2, 0.37)
    np.testing.assert_array_equal(x1, x2)


def test_registry_loads_cython():
    from fastmlp.backends import get_backend

    assert get_backend("cython").NAME == "cython"


def test_large_values_and_nan_propagation():
    Z = np.array([[1000.0, -1000.0, 0.0, np.nan]])
    for act in (acts.SIGMOID, acts.SOFTPLUS, acts.SWISH, acts.RELU, acts.TANH):
        A1, A2 = np.empty_like(Z), np.empty_like(Z)
        ref.act_forward(Z, act, 0.0, A1)
        cy.act_forward(Z, act, 0.0, A2)
        np.testing.assert_array_equal(A1, A2)


def test_argument_kinds():
    """Read-only inputs, numpy scalars and int32 indices are accepted, as by the reference."""
    rng = np.random.default_rng(12)
    X = rand(rng, (5, 4), np.float32)
    W = rand(rng, (4, 3), np.float32)
    b = rand(rng, (3,), np.float32)
    for arr in (X, W, b):
        arr.setflags(write=False)
    Z1, A1, Z2, A2 = (np.empty((5, 3), np.float32) for _ in range(4))
    ref.dense_forward(X, W, b, acts.LEAKY_RELU, 0.01, Z1, A1)
    cy.dense_forward(X, W, b, np.int64(acts.LEAKY_RELU), np.float64(0.01), Z2, A2)
    close(A2, A1, np.float32)
    out = np.empty((2, 4), np.float32)
    cy.gather_rows(X, np.array([4, 0], np.int32), out)
    np.testing.assert_array_equal(out, X[[4, 0]])
    p = [rand(rng, 10, np.float64) for _ in range(2)]
    p[1] = p[0].copy()
    g = rand(rng, 10, np.float64)
    st = [[np.zeros(10), np.zeros(10)] for _ in range(2)]
    ref.adam_update(p[0], g, *st[0], 1e-3, 0.9, 0.999, 1e-8, np.int64(3))
    cy.adam_update(p[1], g, *st[1], 1e-3, 0.9, 0.999, 1e-8, 3.0)
    close(p[1], p[0], np.float64)
    # SGD without momentum: an empty buf of any dtype is fine
    q = np.ones(4, np.float32)
    cy.sgd_update(q, np.ones(4, np.float32), np.empty(0), 0.5, 0.0, np.bool_(False))
    np.testing.assert_array_equal(q, 0.5)


def test_wrong_dtype_or_layout_raises():
    Z = np.ones((4, 3))
    with pytest.raises(ValueError):
        cy.act_forward(Z, acts.RELU, 0.0, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError):
        cy.act_forward(np.asfortranarray(np.ones((4, 3))), acts.RELU, 0.0, Z)
    with pytest.raises(ValueError):
        cy.act_forward(Z, acts.RELU, 0.0, np.empty((3, 4)))


def test_blas_choice():
    # The products go to NumPy's bundled OpenBLAS when the wheel has one (the
    # backend's import chose it), else to scipy's; FASTMLP_BLAS=scipy keeps scipy's.
    import os
    import subprocess
    import sys

    from fastmlp import _kernels

    found = cy._numpy_openblas()
    if found:
        assert _kernels.blas_name() == found[2] and found[2].startswith("numpy (")
        assert found[0] and found[1]
    else:
        assert _kernels.blas_name() == "scipy"
    code = ("import fastmlp.backends.cython_backend; from fastmlp import _kernels; "
            "print(_kernels.blas_name())")
    for env, want in (({"FASTMLP_BLAS": "scipy"}, "scipy"), ({"FASTMLP_BLAS": ""}, found[2] if found else "scipy")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, **env), check=True).stdout.strip()
        assert out == want, (env, out)
    with pytest.raises(ValueError, match="both"):
        _kernels._use_blas64(1, 0, "half")
