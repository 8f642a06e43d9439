"""Scratch: every numba kernel against the reference, float32 and float64."""
import inspect

import numpy as np
import pytest

from fastmlp.activations import ACTIVATIONS
from fastmlp.backends import numba_backend as nb
from fastmlp.backends import reference as ref

PUBLIC = [
    "set_num_threads", "gemm", "gather_rows", "act_forward", "bias_act_forward",
    "dense_forward", "act_backward", "bias_grad", "dense_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_onehot", "nll_loss",
    "sigmoid_binary_cross_entropy", "mse_loss", "sgd_update", "rmsprop_update",
    "adam_update", "sum_squares", "scale_inplace",
]
SHAPES = [(1, 1), (1, 7), (7, 1), (33, 17), (128, 256)]
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ALPHA = {4: 0.01, 5: 1.3}


def close(got, want, dtype):
    got = np.asarray(got)
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def data(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    flat = x.reshape(-1)
    flat[::11] = 0.0  # the non-differentiable points
    if flat.size > 5:
        flat[3] = 25.0  # softplus threshold
        flat[5] = -25.0
    return x


def test_names_and_signatures():
    assert nb.NAME == "numba"
    for name in PUBLIC:
        assert inspect.signature(getattr(nb, name)) == inspect.signature(getattr(ref, name)), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemm(dtype, shape, trans_a, trans_b, beta):
    n, k = shape
    d = 13
    A = data((d, n) if trans_a else (n, d), dtype, 1)
    B = data((k, d) if trans_b else (d, k), dtype, 2)
    C0 = data((n, k), dtype, 3)
    if beta == 0.0:
        C0[0, 0] = np.nan
    C1, C2 = C0.copy(), C0.copy()
    ref.gemm(A, B, C1, trans_a, trans_b, beta)
    nb.gemm(A, B, C2, trans_a, trans_b, beta)
    close(C2, C1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_rows(dtype, shape):
    X = data(shape, dtype)
    idx = np.random.default_rng(0).permutation(shape[0]).astype(np.int64)
    o1 = np.empty_like(X)
    o2 = np.empty_like(X)
    ref.gather_rows(X, idx, o1)
    nb.gather_rows(X, idx, o2)
    assert np.array_equal(o1, o2)
    with pytest.raises(IndexError):
        nb.gather_rows(X, np.array([shape[0]], np.int64), o2[:1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", range(13))
@pytest.mark.parametrize("inplace", [False, True])
def test_act_forward(dtype, shape, act, inplace):
    Z = data(shape, dtype)
    alpha = ALPHA.get(act, 0.0)
    A1 = np.empty_like(Z)
    ref.act_forward(Z, act, alpha, A1)
    Z2 = Z.copy()
    A2 = Z2 if inplace else np.empty_like(Z)
    nb.act_forward(Z2, act, alpha, A2)
    assert A2.dtype == dtype
    close(A2, A1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", range(13))
@pytest.mark.parametrize("bias", [False, True])
def test_bias_act_and_dense_forward(dtype, shape, act, bias):
    n, k = shape
    alpha = ALPHA.get(act, 0.0)
    b = data((k,), dtype, 4) if bias else np.empty(0, dtype)
    Z = data(shape, dtype)
    Z1, Z2 = Z.copy(), Z.copy()
    A1, A2 = np.empty_like(Z), np.empty_like(Z)
    ref.bias_act_forward(Z1, b, act, alpha, A1)
    nb.bias_act_forward(Z2, b, act, alpha, A2)
    close(Z2, Z1, dtype)
    close(A2, A1, dtype)
    X = data((n, 19), dtype, 5, scale=0.5)
    W = data((19, k), dtype, 6, scale=0.5)
    ref.dense_forward(X, W, b, act, alpha, Z1, A1)
    nb.dense_forward(X, W, b, act, alpha, Z2, A2)
    close(Z2, Z1, dtype)
    close(A2, A1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", [a for a in range(13) if a != 10])
@pytest.mark.parametrize("inplace", [False, True])
def test_act_backward(dtype, shape, act, inplace):
    alpha = ALPHA.get(act, 0.0)
    Z = data(shape, dtype)
    A = np.empty_like(Z)
    ref.act_forward(Z, act, alpha, A)
    dA = data(shape, dtype, 7, scale=1.0)
    dZ1 = np.empty_like(Z)
    ref.act_backward(Z, A, dA, act, alpha, dZ1)
    dA2 = dA.copy()
    dZ2 = dA2 if inplace else np.empty_like(Z)
    nb.act_backward(Z, A, dA2, act, alpha, dZ2)
    close(dZ2, dZ1, dtype)


def test_errors():
    Z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="step"):
        nb.act_backward(Z, Z, Z, 10, 0.0, Z.copy())
    with pytest.raises(ValueError, match="unknown activation"):
        nb.act_forward(Z, len(ACTIVATIONS), 0.0, Z.copy())  # one past the last code
    with pytest.raises(ValueError, match="unknown activation"):
        nb.act_backward(Z, Z, Z, -1, 0.0, Z.copy())
    with pytest.raises(ValueError, match="label"):
        nb.softmax_cross_entropy(Z, np.array([0, 3]), np.empty(0), Z.copy(), Z.copy())


def test_relu_leaky_elu_derivative_at_zero():
    Z = np.zeros((1, 1))
    dA = np.ones((1, 1))
    out = np.empty((1, 1))
    for act, alpha, want in [(3, 0.0, 0.0), (4, 0.1, 0.1), (5, 0.7, 0.7)]:
        nb.act_backward(Z, Z, dA, act, alpha, out)
        assert out[0, 0] == pytest.approx(want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_grad_dense_backward(dtype, shape):
    n, k = shape
    d = 19
    X = data((n, d), dtype, 1)
    W = data((d, k), dtype, 2)
    dZ = data(shape, dtype, 3)
    db1, db2 = np.empty(k, dtype), np.empty(k, dtype)
    ref.bias_grad(dZ, db1)
    nb.bias_grad(dZ, db2)
    close(db2, db1, dtype)
    for l2 in (0.0, 0.01):
        for with_db in (False, True):
            for with_dx in (False, True):
                outs = []
                for mod in (ref, nb):
                    dW = np.full((d, k), np.nan, dtype)
                    db = np.empty(k if with_db else 0, dtype)
                    dX = np.empty((n, d) if with_dx else (0, 0), dtype)
                    mod.dense_backward(X, W, dZ, l2, dW, db, dX)
                    outs.append((dW, db, dX))
                for a, b in zip(*outs):
                    close(b, a, dtype)


def weights(n, dtype, kind):
    if kind == "none":
        return np.empty(0, dtype)
    return np.random.default_rng(9).uniform(0.1, 2.0, n).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wkind", ["none", "random"])
def test_losses(dtype, shape, wkind):
    n, k = shape
    rng = np.random.default_rng(11)
    Z = data(shape, dtype)
    y = rng.integers(0, k, n).astype(np.int64)
    sw = weights(n, dtype, wkind)
    onehot = np.eye(k, dtype=dtype)[y]
    soft = rng.uniform(0, 1, shape).astype(dtype)
    soft /= soft.sum(axis=1, keepdims=True)
    Yb = (rng.uniform(0, 1, shape) > 0.5).astype(dtype)
    Yr = data(shape, dtype, 12)
    logP = np.empty_like(Z)
    ref.act_forward(Z, 12, 0.0, logP)

    def run(name, *args):
        res = []
        for mod in (ref, nb):
            outs = [np.full_like(Z, np.nan) for _ in range(2 if name != "nll_loss" and name != "mse_loss" else 1)]
            loss = getattr(mod, name)(*args, sw, *outs)
            assert isinstance(loss, float)
            res.append((loss, outs))
        (l1, o1), (l2, o2) = res
        close(l2, l1, dtype)
        for a, b in zip(o1, o2):
            close(b, a, dtype)

    run("softmax_cross_entropy", Z, y)
    run("softmax_cross_entropy_onehot", Z, onehot)
    run("softmax_cross_entropy_onehot", Z, soft)
    run("nll_loss", logP, y)
    run("sigmoid_binary_cross_entropy", Z, Yb)
    run("sigmoid_binary_cross_entropy", Z, soft)
    run("mse_loss", Z, Yr)


def test_softmax_rows_sum_to_one():
    Z = data((33, 17), np.float64)
    P = np.empty_like(Z)
    nb.act_forward(Z, 11, 0.0, P)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_optimizers(dtype, shape):
    n = shape[0] * shape[1]
    p0 = data((n,), dtype, 1)
    g = data((n,), dtype, 2)
    s0 = np.abs(data((n,), dtype, 3))

    def both(name, n_state, *hyper, steps=3, make_hyper=None):
        states = []
        for mod in (ref, nb):
            p = p0.copy()
            st = [s0.copy() for _ in range(n_state)]
            for t in range(1, steps + 1):
                h = make_hyper(t) if make_hyper else hyper
                getattr(mod, name)(p, g, *st, *h)
            states.append([p, *st])
        for a, b in zip(*states):
            close(b, a, dtype)

    both("sgd_update", 1, 0.1, 0.0, False)
    both("sgd_update", 1, 0.1, 0.9, False)
    both("sgd_update", 1, 0.1, 0.9, True)
    both("rmsprop_update", 1, 0.01, 0.99, 1e-8)
    both("adam_update", 2, make_hyper=lambda t: (1e-3, 0.9, 0.999, 1e-8, t))
    x1, x2 = p0.copy(), p0.copy()
    ref.scale_inplace(x1, 0.37)
    nb.scale_inplace(x2, 0.37)
    close(x2, x1, dtype)
    s = nb.sum_squares(p0)
    assert isinstance(s, float)
    np.testing.assert_allclose(s, np.sum(p0.astype(np.float64) ** 2), rtol=1e-12)
    close(s, ref.sum_squares(p0), dtype)


def test_set_num_threads():
    import numba
    nb.set_num_threads(1000)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    nb.set_num_threads(1)
    assert numba.get_num_threads() == 1
    nb.set_num_threads(numba.config.NUMBA_NUM_THREADS)
