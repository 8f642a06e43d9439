"""Every backend's kernels against the reference (the specification), and the registry."""
import importlib
import inspect
import os
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import xlogy

import fastmlp
from fastmlp import activations as A
from fastmlp import backends
from fastmlp.backends import BackendUnavailableWarning
from fastmlp.backends import reference as ref

from conftest import BACKENDS, DTYPES, Act, Loss, Opt, Unit, assert_close, loop_state, make_plan, targets_of, unit

# The kernels every backend implements, with reference's signatures.
KERNELS = [
    "set_num_threads", "gemm", "gather_rows", "act_forward", "bias_act_forward", "dense_forward",
    "act_backward", "bias_grad", "dense_backward", "softmax_cross_entropy",
    "softmax_cross_entropy_onehot", "nll_loss", "sigmoid_binary_cross_entropy", "mse_loss",
    "poisson_loss", "sgd_update", "rmsprop_update", "adam_update", "sum_squares", "scale_inplace",
    "dropout_mask", "dropout_forward", "dropout_backward", "batchnorm_forward", "batchnorm_backward",
    "train_steps", "make_predictor",
]
# Public functions of reference that are backend-generic Python (they take a
# kernels module, or post-process a step's output) rather than kernels.
HELPERS = ["forward_units", "loss_and_grads", "optimizer_step", "count_correct", "flush_denormals"]

SHAPES = [(1, 1), (1, 7), (7, 1), (33, 17), (64, 130)]
SHAPE_IDS = [f"{n}x{k}" for n, k in SHAPES]
ALL_CODES = sorted(code for code, _, _ in A.ACTIVATIONS.values())
DIFF_CODES = [c for c in ALL_CODES if c != A.STEP]
# Non-default parameters so that a kernel ignoring alpha is caught.
ALPHA = {A.LEAKY_RELU: 0.07, A.ELU: 1.3}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand(rng, shape, dtype, scale=3.0):
    return np.ascontiguousarray(rng.standard_normal(shape) * scale, dtype=dtype)


def backend(name):
    return fastmlp.get_backend(name)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return np.dtype(request.param)


# ------------------------------------------------------------- signatures
def test_kernel_list_covers_reference():
    public = {name for name, f in inspect.getmembers(ref, inspect.isfunction)
              if not name.startswith("_") and f.__module__ == ref.__name__}
    assert public == set(KERNELS) | set(HELPERS), (
        "a public function was added to or removed from reference.py; classify it in KERNELS or HELPERS"
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_signatures_match_reference(backend_name, kernel):
    mod = backend(backend_name)
    assert hasattr(mod, kernel), f"backend {backend_name!r} lacks kernel {kernel!r}"
    assert callable(getattr(mod, kernel))
    assert inspect.signature(getattr(mod, kernel)) == inspect.signature(getattr(ref, kernel))


def test_backend_names(backend_name):
    assert backend(backend_name).NAME == backend_name


# ------------------------------------------------------------- activations
@pytest.mark.parametrize("code", ALL_CODES, ids=[A.CODE_TO_NAME[c] for c in ALL_CODES])
def test_act_forward(native_name, dt, code):
    be = backend(native_name)
    alpha = ALPHA.get(code, 0.0)
    for shape in SHAPES:
        Z = rand(_rng("af", shape, code), shape, dt)
        want = np.empty_like(Z)
        ref.act_forward(Z.copy(), code, alpha, want)
        got = np.full_like(Z, np.nan)
        Zc = Z.copy()
        be.act_forward(Zc, code, alpha, got)
        np.testing.assert_array_equal(Zc, Z)  # Z is input only
        assert_close(got, want, dt, err_msg=str(shape))
        # in place (A is Z), as the model does for activation-only units
        inplace = Z.copy()
        be.act_forward(inplace, code, alpha, inplace)
        assert_close(inplace, want, dt, err_msg=f"{shape} in place")


def test_act_forward_extremes(backend_name, dt):
    """Large |z| must give finite, correct values (no overflow in exp)."""
    be = backend(backend_name)
    Z = np.array([[-800.0, -60.0, -20.5, -1e-3, 0.0, 1e-3, 20.5, 60.0, 800.0]], dtype=dt)
    Z = np.clip(Z, np.finfo(dt).min / 2, np.finfo(dt).max / 2).astype(dt)
    z64 = Z.astype(np.float64)
    expected = {
        A.SIGMOID: 0.5 * (1 + np.tanh(z64 / 2)),
        A.SOFTPLUS: np.where(z64 > 20, z64, np.logaddexp(0, z64)),  # PyTorch's threshold=20
        A.TANH: np.tanh(z64),
    }
    for code, want in expected.items():
        out = np.empty_like(Z)
        be.act_forward(Z, code, 0.0, out)
        assert np.isfinite(out).all()
        assert_close(out, want, dt, rtol=1e-5 if dt == np.float32 else 1e-12)
    for code in (A.SOFTMAX, A.LOG_SOFTMAX):
        out = np.empty_like(Z)
        be.act_forward(Z, code, 0.0, out)
        assert np.isfinite(out[:, -1]).all()
        want = z64 - np.logaddexp.reduce(z64, axis=1, keepdims=True)
        assert_close(out, want if code == A.LOG_SOFTMAX else np.exp(want), dt)


@pytest.mark.parametrize("code", DIFF_CODES, ids=[A.CODE_TO_NAME[c] for c in DIFF_CODES])
def test_act_backward(native_name, dt, code):
    be = backend(native_name)
    alpha = ALPHA.get(code, 0.0)
    for shape in SHAPES:
        rng = _rng("ab", shape, code)
        Z = rand(rng, shape, dt)
        Aout = np.empty_like(Z)
        ref.act_forward(Z, code, alpha, Aout)
        dA = rand(rng, shape, dt, 1.0)
        want = np.empty_like(Z)
        ref.act_backward(Z, Aout, dA, code, alpha, want)
        got = np.full_like(Z, np.nan)
        be.act_backward(Z, Aout, dA.copy(), code, alpha, got)
        assert_close(got, want, dt, err_msg=str(shape))
        inplace = dA.copy()  # dZ is dA, as in the model's backward pass
        be.act_backward(Z, Aout, inplace, code, alpha, inplace)
        assert_close(inplace, want, dt, err_msg=f"{shape} in place")


def test_act_backward_step_raises(backend_name):
    be = backend(backend_name)
    Z = np.ones((2, 2))
    with pytest.raises(ValueError, match="step"):
        be.act_backward(Z, Z, Z, A.STEP, 0.0, np.empty_like(Z))


def test_unknown_activation_code_raises(backend_name):
    be = backend(backend_name)
    Z = np.ones((2, 2))
    with pytest.raises(ValueError):
        be.act_forward(Z, 99, 0.0, np.empty_like(Z))


def test_relu_family_derivative_at_zero_follows_torch(backend_name):
    """ReLU'(0) = 0, LeakyReLU'(0) = alpha, ELU'(0) = alpha, SELU'(0) = scale*alpha (PyTorch)."""
    be = backend(backend_name)
    Z = np.zeros((1, 3))
    dA = np.ones((1, 3))
    for code, alpha, want in [(A.RELU, 0.0, 0.0), (A.LEAKY_RELU, 0.07, 0.07), (A.ELU, 1.3, 1.3),
                              (A.SELU, 0.0, A.SELU_SCALE * A.SELU_ALPHA)]:
        Aout = np.empty_like(Z)
        be.act_forward(Z, code, alpha, Aout)
        dZ = np.empty_like(Z)
        be.act_backward(Z, Aout, dA, code, alpha, dZ)
        np.testing.assert_allclose(dZ, want, rtol=1e-12, err_msg=A.CODE_TO_NAME[code])


# ------------------------------------------------------------- dense layers
@pytest.mark.parametrize("code", ALL_CODES, ids=[A.CODE_TO_NAME[c] for c in ALL_CODES])
def test_dense_forward(native_name, dt, code):
    be = backend(native_name)
    alpha = ALPHA.get(code, 0.0)
    for shape in SHAPES:
        for use_bias in (True, False):
            rng = _rng("df", shape, use_bias, code)
            n, k = shape
            d = 5
            X, W = rand(rng, (n, d), dt, 1.0), rand(rng, (d, k), dt, 0.7)
            b = rand(rng, (k,), dt) if use_bias else np.empty(0, dt)
            Zw, Aw = np.empty((n, k), dt), np.empty((n, k), dt)
            ref.dense_forward(X, W, b, code, alpha, Zw, Aw)
            Zg, Ag = np.full((n, k), np.nan, dt), np.full((n, k), np.nan, dt)
            be.dense_forward(X, W, b, code, alpha, Zg, Ag)
            msg = f"{shape} bias={use_bias}"
            assert_close(Zg, Zw, dt, err_msg=msg)
            assert_close(Ag, Aw, dt, err_msg=msg)
            if code == A.IDENTITY:  # A may be Z
                Zs = np.full((n, k), np.nan, dt)
                be.dense_forward(X, W, b, code, alpha, Zs, Zs)
                assert_close(Zs, Zw, dt, err_msg=msg)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("code", [A.IDENTITY, A.TANH, A.SOFTMAX], ids=["identity", "tanh", "softmax"])
def test_bias_act_forward(native_name, dt, shape, code):
    be, rng = backend(native_name), _rng("baf", shape, code)
    Z, b = rand(rng, shape, dt), rand(rng, (shape[1],), dt)
    for bias in (b, np.empty(0, dt)):
        Zw, Aw = Z.copy(), np.empty_like(Z)
        ref.bias_act_forward(Zw, bias, code, 0.0, Aw)
        Zg, Ag = Z.copy(), np.full_like(Z, np.nan)
        be.bias_act_forward(Zg, bias, code, 0.0, Ag)
        assert_close(Zg, Zw, dt)
        assert_close(Ag, Aw, dt)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_dx", [True, False], ids=["dX", "nodX"])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_dense_backward(native_name, dt, shape, use_bias, with_dx, l2):
    be, rng = backend(native_name), _rng("db", shape, use_bias, with_dx, l2)
    n, k = shape
    d = 6
    X, W, dZ = rand(rng, (n, d), dt, 1.0), rand(rng, (d, k), dt, 0.7), rand(rng, (n, k), dt, 1.0)

    def run(mod):
        dW = np.full((d, k), np.nan, dt)
        db = np.full(k, np.nan, dt) if use_bias else np.empty(0, dt)
        dX = np.full((n, d), np.nan, dt) if with_dx else np.empty((0, 0), dt)
        mod.dense_backward(X, W, dZ, l2, dW, db, dX)
        return dW, db, dX

    (dWw, dbw, dXw), (dWg, dbg, dXg) = run(ref), run(be)
    assert_close(dWg, dWw, dt)
    assert_close(dbg, dbw, dt)
    assert_close(dXg, dXw, dt)
    # and the reference itself is the formula
    x64, w64, dz64 = (a.astype(np.float64) for a in (X, W, dZ))
    assert_close(dWw, x64.T @ dz64 + l2 * w64, dt, rtol=1e-5 if dt == np.float32 else 1e-12)
    if use_bias:
        assert_close(dbw, dz64.sum(0), dt, rtol=1e-5 if dt == np.float32 else 1e-12)
    if with_dx:
        assert_close(dXw, dz64 @ w64.T, dt, rtol=1e-5 if dt == np.float32 else 1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_bias_grad(native_name, dt, shape):
    be, rng = backend(native_name), _rng("bg", shape)
    dZ = rand(rng, shape, dt)
    want, got = np.empty(shape[1], dt), np.full(shape[1], np.nan, dt)
    ref.bias_grad(dZ, want)
    be.bias_grad(dZ, got)
    assert_close(got, want, dt)


# ------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["N", "T"])
def test_gemm(backend_name, dt, trans_a, trans_b):
    be = backend(backend_name)
    for shape in SHAPES:
        for beta in (0.0, 1.0, 0.5):
            rng = _rng("gemm", shape, trans_a, trans_b, beta)
            m, n = shape
            kk = 9
            Aa = rand(rng, (kk, m) if trans_a else (m, kk), dt, 1.0)
            B = rand(rng, (n, kk) if trans_b else (kk, n), dt, 1.0)
            C0 = rand(rng, (m, n), dt, 1.0)
            want = (Aa.T if trans_a else Aa).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
            want = want + beta * C0.astype(np.float64)
            C = C0.copy()
            if beta == 0.0:
                C[...] = np.nan  # beta == 0 ignores C entirely, even NaN
            be.gemm(Aa, B, C, trans_a, trans_b, beta)
            assert_close(C, want, dt, rtol=1e-5 if dt == np.float32 else 1e-12, err_msg=f"{shape} beta={beta}")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gather_rows(backend_name, dt, shape):
    be, rng = backend(backend_name), _rng("gather", shape)
    X = rand(rng, (shape[0] + 3, shape[1]), dt)
    idx = rng.integers(0, X.shape[0], size=shape[0]).astype(np.int64)
    out = np.full(shape, np.nan, dt)
    be.gather_rows(X, idx, out)
    np.testing.assert_array_equal(out, X[idx])


# ------------------------------------------------------------- losses
def _weights(rng, n, dt, weighted):
    return (rng.uniform(0.1, 3.0, n).astype(dt)) if weighted else np.empty(0, dt)


def _run_loss(mod, kernel, args, out_shapes, dt):
    outs = [np.full(s, np.nan, dt) for s in out_shapes]
    loss = getattr(mod, kernel)(*args, *outs)
    assert isinstance(loss, float)
    return loss, outs


def _loss_cases(rng, shape, dt, weighted):
    """(kernel, inputs, output shapes) of every loss kernel on one shape."""
    n, k = shape
    Z = rand(rng, shape, dt)
    sw = _weights(rng, n, dt, weighted)
    y = rng.integers(0, k, size=n).astype(np.int64)
    probs = rng.dirichlet(np.ones(k), size=n).astype(dt)  # soft targets, rows sum to 1
    onehot = np.eye(k, dtype=dt)[y]
    logP = np.empty_like(Z)
    ref.act_forward(Z, A.LOG_SOFTMAX, 0.0, logP)
    Ybin = (rng.random(shape) < 0.5).astype(dt)
    Ysoft = rng.random(shape).astype(dt)
    Yreal = rand(rng, shape, dt)
    # Poisson: moderate log-rates, targets that are counts (with zeros) or real rates >= 0
    lograte = rand(rng, shape, dt, 1.5)
    counts = rng.poisson(np.exp(lograte.astype(np.float64))).astype(dt)
    rates = (rng.random(shape) * 4.0).astype(dt)
    return [
        ("softmax_cross_entropy", (Z, y, sw), [shape, shape]),
        ("softmax_cross_entropy_onehot", (Z, onehot, sw), [shape, shape]),
        ("softmax_cross_entropy_onehot", (Z, probs, sw), [shape, shape]),
        ("nll_loss", (logP, y, sw), [shape]),
        ("sigmoid_binary_cross_entropy", (Z, Ybin, sw), [shape, shape]),
        ("sigmoid_binary_cross_entropy", (Z, Ysoft, sw), [shape, shape]),
        ("mse_loss", (Z, Yreal, sw), [shape]),
        ("poisson_loss", (lograte, counts, sw), [shape, shape]),
        ("poisson_loss", (lograte, rates, sw), [shape, shape]),
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_losses_match_reference(native_name, dt, shape, weighted):
    be = backend(native_name)
    for i, (kernel, args, out_shapes) in enumerate(_loss_cases(_rng("loss", shape, weighted), shape, dt, weighted)):
        inputs = [a.copy() for a in args]
        lw, ow = _run_loss(ref, kernel, args, out_shapes, dt)
        lg, og = _run_loss(be, kernel, args, out_shapes, dt)
        for a, b in zip(inputs, args):
            np.testing.assert_array_equal(a, b, err_msg=f"{kernel} modified an input")
        assert_close(lg, lw, dt, err_msg=f"{kernel} case {i} loss")
        for g, w in zip(og, ow):
            assert_close(g, w, dt, err_msg=f"{kernel} case {i} outputs")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_losses_formulas(backend_name, weighted):
    """The loss values are the documented formulas (float64, computed independently)."""
    be, rng = backend(backend_name), _rng("formula", weighted)
    n, k = 9, 4
    shape = (n, k)
    dt = np.dtype(np.float64)
    cases = _loss_cases(rng, shape, dt, weighted)
    for kernel, args, out_shapes in cases:
        loss, outs = _run_loss(be, kernel, args, out_shapes, dt)
        sw = args[2] if weighted else np.ones(n)
        T = args[1]
        if kernel == "softmax_cross_entropy":
            Z = args[0]
            logp = Z - np.logaddexp.reduce(Z, axis=1, keepdims=True)
            per_row = -logp[np.arange(n), T]
            np.testing.assert_allclose(outs[0], np.exp(logp), rtol=1e-12)
        elif kernel == "softmax_cross_entropy_onehot":
            Z = args[0]
            logp = Z - np.logaddexp.reduce(Z, axis=1, keepdims=True)
            per_row = -(T * logp).sum(1)
            np.testing.assert_allclose(outs[0], np.exp(logp), rtol=1e-12)
            np.testing.assert_allclose(outs[1], (np.exp(logp) - T) * (sw / sw.sum())[:, None], atol=1e-14)
        elif kernel == "nll_loss":
            per_row = -args[0][np.arange(n), T]
        elif kernel == "sigmoid_binary_cross_entropy":
            Z = args[0]
            per_row = (np.logaddexp(0, Z) - Z * T).mean(1)
            np.testing.assert_allclose(outs[0], 1 / (1 + np.exp(-Z)), rtol=1e-12)
            np.testing.assert_allclose(outs[1], (outs[0] - T) * (sw / (sw.sum() * k))[:, None], atol=1e-14)
        elif kernel == "poisson_loss":  # PyTorch's PoissonNLLLoss(log_input=True): exp(z) - y*z
            Z = args[0]
            per_row = (np.exp(Z) - T * Z).mean(1)
            np.testing.assert_allclose(outs[0], np.exp(Z), rtol=1e-12)
            np.testing.assert_allclose(outs[1], (np.exp(Z) - T) * (sw / (sw.sum() * k))[:, None], atol=1e-14)
        else:
            per_row = ((args[0] - T) ** 2).mean(1)
            np.testing.assert_allclose(outs[0], 2 * (args[0] - T) * (sw / (sw.sum() * k))[:, None], atol=1e-14)
        np.testing.assert_allclose(loss, np.dot(sw, per_row) / sw.sum(), rtol=1e-12, err_msg=kernel)


def test_losses_extreme_logits(backend_name, dt):
    """Fused losses subtract the row max: logits of +-1000 give finite losses and gradients."""
    be = backend(backend_name)
    Z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]], dtype=dt)
    y = np.array([1, 2], dtype=np.int64)
    empty = np.empty(0, dt)
    P, dZ = np.empty_like(Z), np.empty_like(Z)
    loss = be.softmax_cross_entropy(Z, y, empty, P, dZ)
    np.testing.assert_allclose(loss, (2000.0 + 1.0 + np.log1p(np.exp(-1.0))) / 2, rtol=1e-5)
    assert np.isfinite(P).all() and np.isfinite(dZ).all()
    Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=dt)
    loss = be.sigmoid_binary_cross_entropy(Z, Y, empty, P, dZ)
    want = (np.logaddexp(0, Z.astype(np.float64)) - Z * Y).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert np.isfinite(P).all() and np.isfinite(dZ).all()


def test_poisson_loss_large_log_rates(backend_name, dt):
    """No clipping (as PyTorch and scikit-learn): exp(z) within range is exact,
    beyond it the loss is +inf (which the training loop reports), never NaN."""
    be = backend(backend_name)
    big = 80.0 if dt == np.float32 else 700.0  # exp(big) is finite in dt
    Z = np.array([[big, -big, 0.0]], dtype=dt)
    Y = np.array([[3.0, 0.0, 2.0]], dtype=dt)
    empty = np.empty(0, dt)
    P, dZ = np.empty_like(Z), np.empty_like(Z)
    loss = be.poisson_loss(Z, Y, empty, P, dZ)
    z64, y64 = Z.astype(np.float64), Y.astype(np.float64)
    np.testing.assert_allclose(loss, (np.exp(z64) - y64 * z64).mean(), rtol=1e-5)
    np.testing.assert_allclose(P, np.exp(z64), rtol=1e-5)
    np.testing.assert_allclose(dZ, (np.exp(z64) - y64) / 3, rtol=1e-5)
    Z[0, 0] = 100.0 if dt == np.float32 else 800.0  # exp overflows
    loss = be.poisson_loss(Z, Y, empty, P, dZ)
    assert loss == np.inf


def test_poisson_loss_negative_targets_raise(backend_name, dt):
    be = backend(backend_name)
    Z = np.zeros((3, 2), dt)
    P, dZ = np.full_like(Z, 7.0), np.full_like(Z, 7.0)
    for bad in (-1.0, np.nan):
        Y = np.ones((3, 2), dt)
        Y[2, 1] = bad
        with pytest.raises(ValueError, match=r"poisson_loss: targets must be >= 0.*Y\[2, 1\]"):
            be.poisson_loss(Z, Y, np.empty(0, dt), P, dZ)
        assert (P == 7.0).all() and (dZ == 7.0).all()  # refused before any work


# ------------------------------------------------------------- optimizers
OPT_CASES = [
    ("sgd", dict(lr=0.1, momentum=0.0, nesterov=False)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=False)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("rmsprop", dict(lr=0.01, rho=0.9, eps=1e-8)),
    ("adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adam", dict(lr=0.003, beta1=0.5, beta2=0.9, eps=1e-3)),
]


def _opt_steps(mod, kind, hp, p, grads, n_state):
    p = p.copy()
    state = [np.zeros_like(p) for _ in range(n_state)]
    for t, g in enumerate(grads, start=1):
        gc = g.copy()
        if kind == "sgd":
            mod.sgd_update(p, gc, state[0], hp["lr"], hp["momentum"], hp["nesterov"])
        elif kind == "rmsprop":
            mod.rmsprop_update(p, gc, state[0], hp["lr"], hp["rho"], hp["eps"])
        else:
            mod.adam_update(p, gc, state[0], state[1], hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], t)
        np.testing.assert_array_equal(gc, g)  # the gradient is input only
    return p, state


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("case", range(len(OPT_CASES)), ids=[f"{k}-{i}" for i, (k, _) in enumerate(OPT_CASES)])
def test_optimizer_updates(native_name, dt, shape, case):
    kind, hp = OPT_CASES[case]
    be, rng = backend(native_name), _rng("opt", shape, case)
    size = shape[0] * shape[1]
    p = rand(rng, size, dt, 1.0)
    grads = [rand(rng, size, dt, 1.0) for _ in range(4)]
    n_state = 2 if kind == "adam" else 1
    pw, sw_ = _opt_steps(ref, kind, hp, p, grads, n_state)
    pg, sg = _opt_steps(be, kind, hp, p, grads, n_state)
    assert_close(pg, pw, dt, rtol=1e-4 if dt == np.float32 else None)
    for a, b in zip(sg, sw_):
        assert_close(a, b, dt, rtol=1e-4 if dt == np.float32 else None)


def test_optimizer_formulas_match_torch_rules(backend_name):
    """Spot-check the update rules against hand-written float64 formulas (two steps)."""
    be = backend(backend_name)
    p0 = np.array([1.0, -2.0, 0.5])
    g1, g2 = np.array([0.3, -0.1, 2.0]), np.array([-0.2, 0.4, 1.0])
    lr, mu = 0.1, 0.9
    # SGD nesterov
    p, buf = p0.copy(), np.zeros(3)
    be.sgd_update(p, g1, buf, lr, mu, True)
    be.sgd_update(p, g2, buf, lr, mu, True)
    b1 = g1
    b2 = mu * b1 + g2
    want = p0 - lr * (g1 + mu * b1) - lr * (g2 + mu * b2)
    np.testing.assert_allclose(p, want, rtol=1e-13)
    # RMSprop
    p, sq = p0.copy(), np.zeros(3)
    rho, eps = 0.9, 1e-8
    be.rmsprop_update(p, g1, sq, lr, rho, eps)
    s1 = (1 - rho) * g1**2
    np.testing.assert_allclose(p, p0 - lr * g1 / (np.sqrt(s1) + eps), rtol=1e-13)
    # Adam, step 1: p -= lr * g / (|g| + eps) approximately
    p, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    be.adam_update(p, g1, m, v, lr, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_allclose(p, p0 - lr * g1 / (np.abs(g1) + 1e-8), rtol=1e-12)


@pytest.mark.parametrize("size", [1, 7, 33 * 17, 64 * 130])
def test_sum_squares_and_scale(backend_name, dt, size):
    be, rng = backend(backend_name), _rng("ss", size)
    x = rand(rng, size, dt)
    got = be.sum_squares(x)
    assert isinstance(got, float)
    assert_close(got, np.dot(x.astype(np.float64), x.astype(np.float64)), dt,
                 rtol=1e-5 if dt == np.float32 else 1e-12)
    y = x.copy()
    be.scale_inplace(y, 0.37)
    assert_close(y, x.astype(np.float64) * 0.37, dt, rtol=1e-6 if dt == np.float32 else 1e-15)


# ------------------------------------------------------------- the step loop
def _model_units(loss_kind, k):
    """A 2-unit plan: Dense(4->5, tanh, L2), Dense(5->k, identity) or + log-softmax unit."""
    units = [unit(Unit.DENSE, 4, 5, Act.TANH, 1, 0, 20, l2=0.01),
             unit(Unit.DENSE, 5, k, Act.IDENTITY, 1, 25, 25 + 5 * k)]
    if loss_kind == Loss.NLL:
        units.append(unit(Unit.ACTIVATION, k, k, Act.LOG_SOFTMAX))
    return units, 25 + 6 * k


@pytest.mark.parametrize("loss_kind", [Loss.CE, Loss.CE_ONEHOT, Loss.NLL, Loss.BCE, Loss.MSE, Loss.POISSON],
                         ids=["ce", "ce_onehot", "nll", "bce", "mse", "poisson"])
@pytest.mark.parametrize("opt_kind", [Opt.SGD, Opt.RMSPROP, Opt.ADAM], ids=["sgd", "rmsprop", "adam"])
def test_train_steps(native_name, dt, loss_kind, opt_kind):
    be = backend(native_name)
    if not hasattr(be, "train_steps"):
        pytest.fail(f"backend {native_name!r} has no train_steps")
    rng = _rng("train_steps", int(loss_kind), int(opt_kind))
    n, d, k, bs = 23, 4, 3, 5
    X = rand(rng, (n, d), dt, 1.0)
    labels = loss_kind in (Loss.CE, Loss.NLL)
    y = rng.integers(0, k, n).astype(np.int64) if labels else np.empty(0, np.int64)
    if loss_kind == Loss.CE_ONEHOT:
        Y = np.eye(k, dtype=dt)[rng.integers(0, k, n)]
    elif loss_kind == Loss.BCE:
        Y = (rng.random((n, k)) < 0.5).astype(dt)
    elif loss_kind == Loss.MSE:
        Y = rand(rng, (n, k), dt, 1.0)
    elif loss_kind == Loss.POISSON:
        Y = rng.poisson(2.0, (n, k)).astype(dt)
    else:
        Y = np.empty((0, 0), dt)
    sw = rng.uniform(0.5, 2.0, n).astype(dt)
    order = rng.permutation(n).astype(np.int64)
    units, n_params = _model_units(loss_kind, k)
    params0 = rand(rng, n_params, dt, 0.5)
    n_steps = n // bs

    def run(mod):
        plan = make_plan(units, bs, dt, loss_kind, params=params0.copy(), weighted=True)
        loop = loop_state(opt_kind, n_params, dt, t=2, clip_norm=0.5, seed=12345)
        losses, correct = np.full(n_steps, np.nan), np.full(n_steps, np.nan)
        done = mod.train_steps(plan, loop, X, targets_of(loss_kind, y, Y), sw, order, 1, n_steps, losses, correct)
        return done, plan.params, losses, correct, loop.state1

    dw, pw, lw, cw, sw1 = run(ref)
    dg, pg, lg, cg, sg1 = run(be)
    assert dw == dg == n_steps
    assert_close(lg, lw, dt, rtol=1e-4 if dt == np.float32 else 1e-10)
    np.testing.assert_array_equal(cg, cw)
    assert_close(pg, pw, dt, rtol=1e-4 if dt == np.float32 else 1e-10)
    assert_close(sg1, sw1, dt, rtol=1e-4 if dt == np.float32 else 1e-10)
    assert not np.array_equal(pw, params0)  # the steps did train
    if loss_kind == Loss.POISSON:
        assert (cw == 0).all()  # no accuracy for a regression loss
        # the first step's loss is the Poisson loss at the initial weights
        rows = order[1:1 + bs]
        x0 = X[rows]
        W0, b0 = params0[:20].reshape(4, 5), params0[20:25]
        W1, b1 = params0[25:25 + 5 * k].reshape(5, k), params0[25 + 5 * k:]
        z = (np.tanh(x0.astype(np.float64) @ W0 + b0) @ W1 + b1)
        w = sw[rows].astype(np.float64)
        want = np.dot(w, (np.exp(z) - Y[rows] * z).mean(1)) / w.sum() + 0.5 * 0.01 * float(np.sum(W0 * W0))
        assert_close(lw[0], want, dt, rtol=1e-4 if dt == np.float32 else 1e-10)


def test_train_steps_poisson_negative_targets_raise(backend_name):
    be = backend(backend_name)
    dt = np.dtype(np.float64)
    n, d, k, bs = 6, 4, 2, 3
    units, n_params = _model_units(Loss.POISSON, k)
    Y = np.ones((n, k))
    Y[4, 0] = -2.0
    plan = make_plan(units, bs, dt, Loss.POISSON, params=np.full(n_params, 0.1))
    loop = loop_state(Opt.SGD, n_params, dt, momentum=0.0, nesterov=0.0)
    with pytest.raises(ValueError, match=r"targets must be >= 0"):
        be.train_steps(plan, loop, np.zeros((n, d)), Y, np.empty(0), np.arange(n), 0, 2, np.zeros(2), np.zeros(2))


# ------------------------------------------------------------- properties
_rows = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
                   elements=st.floats(-50, 50, allow_nan=False, width=64))
_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", BACKENDS)
@_settings
@given(Z=_rows)
def test_softmax_rows_sum_to_one(name, Z):
    be = backend(name)
    P = np.empty_like(Z)
    be.act_forward(Z, A.SOFTMAX, 0.0, P)
    assert (P >= 0).all() and (P <= 1).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    # monotone: a larger logit never gets a smaller probability
    order = np.argsort(Z, axis=1, kind="stable")
    assert (np.diff(np.take_along_axis(P, order, 1), axis=1) >= -1e-15).all()


@pytest.mark.parametrize("name", BACKENDS)
@_settings
@given(Z=_rows)
def test_log_softmax_logsumexp_is_zero(name, Z):
    be = backend(name)
    L = np.empty_like(Z)
    be.act_forward(Z, A.LOG_SOFTMAX, 0.0, L)
    assert (L <= 1e-12).all()
    np.testing.assert_allclose(np.logaddexp.reduce(L, axis=1), 0.0, atol=1e-12)
    # shift invariance
    L2 = np.empty_like(Z)
    be.act_forward(Z + 7.0, A.LOG_SOFTMAX, 0.0, L2)
    np.testing.assert_allclose(L2, L, atol=1e-12)


@pytest.mark.parametrize("name", BACKENDS)
@_settings
@given(Z=_rows, seed=st.integers(0, 2**31), weighted=st.booleans())
def test_losses_nonnegative(name, Z, seed, weighted):
    be = backend(name)
    rng = np.random.default_rng(seed)
    n, k = Z.shape
    dt = np.dtype(np.float64)
    for kernel, args, out_shapes in _loss_cases(rng, (n, k), dt, weighted):
        args = (Z if kernel != "nll_loss" else args[0],) + tuple(args[1:])
        loss, outs = _run_loss(be, kernel, args, out_shapes, dt)
        if kernel == "poisson_loss":
            # exp(z) - y*z >= y - y*log(y) (the deviance is >= 0), not >= 0
            Y, w = args[1], (args[2] if weighted else np.ones(n))
            bound = np.dot(w, (Y - xlogy(Y, Y)).mean(1)) / w.sum()
            assert loss >= bound - 1e-9 * max(1.0, abs(bound)), kernel
        else:
            assert loss >= -1e-12, kernel
        assert np.isfinite(loss) and all(np.isfinite(o).all() for o in outs), kernel


@pytest.mark.parametrize("name", BACKENDS)
@_settings
@given(Z=_rows)
def test_softmax_ce_gradient_rows_sum_to_zero(name, Z):
    """dZ = (P - onehot) * w: every row of the gradient sums to zero."""
    be = backend(name)
    n, k = Z.shape
    y = np.arange(n, dtype=np.int64) % k
    P, dZ = np.empty_like(Z), np.empty_like(Z)
    be.softmax_cross_entropy(Z, y, np.empty(0), P, dZ)
    np.testing.assert_allclose(dZ.sum(axis=1), 0.0, atol=1e-12)


# ------------------------------------------------------------- the registry
def test_get_backend_unknown_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown backend 'nope'\. Valid backends: auto, cython, numba, reference\."):
        fastmlp.get_backend("nope")
    with pytest.raises(ValueError, match="Valid backends"):
        fastmlp.Sequential([fastmlp.Dense(2)], backend="nope")


def test_available_backends_order_and_reference():
    names = fastmlp.available_backends()
    assert "reference" in names
    assert names == [n for n in ("cython", "numba", "reference") if n in names]


def test_get_backend_by_name(backend_name):
    assert fastmlp.get_backend(backend_name).NAME == backend_name
    model = fastmlp.Sequential([fastmlp.Dense(2)], backend=backend_name)
    assert model.backend.NAME == backend_name


def test_auto_is_fastest_available():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackendUnavailableWarning)
        assert fastmlp.get_backend("auto").NAME == BACKENDS[0]


def test_use_backend_context_manager(backend_name, monkeypatch):
    monkeypatch.setattr(fastmlp._config, "BACKEND", "reference")
    assert fastmlp.get_backend().NAME == "reference"
    with fastmlp.use_backend(backend_name):
        assert fastmlp.get_backend().NAME == backend_name
        assert fastmlp.Sequential([fastmlp.Dense(2)]).backend.NAME == backend_name
        with fastmlp.use_backend("reference"):
            assert fastmlp.get_backend().NAME == "reference"
        assert fastmlp.get_backend().NAME == backend_name
        # an explicit name wins over the context
        assert fastmlp.Sequential([fastmlp.Dense(2)], backend="reference").backend.NAME == "reference"
    assert fastmlp.get_backend().NAME == "reference"


def test_use_backend_restores_after_exception():
    before = backends._current
    with pytest.raises(KeyError):
        with fastmlp.use_backend("reference"):
            raise KeyError("boom")
    assert backends._current == before


def test_use_backend_validates_name_immediately():
    with pytest.raises(ValueError, match="Valid backends"):
        with fastmlp.use_backend("nope"):
            pass  # pragma: no cover


def test_config_backend_default_is_used(monkeypatch):
    monkeypatch.setattr(fastmlp._config, "BACKEND", "reference")
    assert fastmlp.get_backend(None).NAME == "reference"
    assert fastmlp.Sequential([fastmlp.Dense(2)]).backend.NAME == "reference"


def test_env_var_is_read_by_config_on_reload(monkeypatch):
    import fastmlp._config as config

    # backends reads config.BACKEND at call time, so reloading _config is enough
    # (reloading backends would replace BackendUnavailableWarning under other tests).
    outer = os.environ.get("FASTMLP_BACKEND", "auto")
    monkeypatch.setenv("FASTMLP_BACKEND", "reference")
    try:
        importlib.reload(config)
        assert config.BACKEND == "reference"
        assert backends.get_backend().NAME == "reference"
    finally:
        monkeypatch.undo()
        importlib.reload(config)
    assert config.BACKEND == outer


@pytest.mark.parametrize("name", ["reference"] + [b for b in BACKENDS if b != "reference"][:1])
def test_env_var_in_subprocess(name):
    env = dict(os.environ, FASTMLP_BACKEND=name)
    code = ("import fastmlp; m = fastmlp.Sequential([fastmlp.Dense(2)]); "
            "print(fastmlp.get_backend().NAME, m.backend.NAME)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(fastmlp.__file__)))
    assert out.stdout.split() == [name, name]


@pytest.fixture
def no_cython(monkeypatch):
    """Simulate a cython module that cannot be imported."""
    monkeypatch.delitem(backends._loaded, "cython", raising=False)
    monkeypatch.setitem(backends._errors, "cython", "ImportError: simulated missing _kernels")
    return next(b for b in BACKENDS if b != "cython")


def test_cython_unavailable_warns_and_falls_back(no_cython):
    assert "cython" not in fastmlp.available_backends()
    assert backends.backend_error("cython") == "ImportError: simulated missing _kernels"
    with pytest.warns(BackendUnavailableWarning, match=r"Backend 'cython' is not available.*simulated"):
        mod = fastmlp.get_backend("cython")
    assert mod.NAME == no_cython
    with pytest.warns(BackendUnavailableWarning, match="cython"):
        model = fastmlp.Sequential([fastmlp.Dense(2)], backend="cython")
    assert model.backend.NAME == no_cython
    with pytest.warns(BackendUnavailableWarning, match="cython"):
        assert fastmlp.get_backend("auto").NAME == no_cython


def test_all_native_unavailable_falls_back_to_reference(no_cython, monkeypatch):
    monkeypatch.delitem(backends._loaded, "numba", raising=False)
    monkeypatch.setitem(backends._errors, "numba", "ImportError: simulated missing numba")
    assert fastmlp.available_backends() == ["reference"]
    with pytest.warns(BackendUnavailableWarning, match="numba"):
        assert fastmlp.get_backend("numba").NAME == "reference"
    with pytest.warns(BackendUnavailableWarning):
        assert fastmlp.get_backend("cython").NAME == "reference"


def test_reference_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastmlp.get_backend("reference").NAME == "reference"


def test_train_steps_stops_at_nonfinite_loss(backend_name):
    """A non-finite loss ends the call: that step's loss is reported and no update applied."""
    be = backend(backend_name)
    dt = np.dtype(np.float64)
    rng = _rng("train_steps_nan")
    n, d, k, bs = 12, 4, 3, 4
    X = rand(rng, (n, d), dt, 1.0)
    Y = rand(rng, (n, k), dt, 1.0)
    Y[6, 1] = 1e200  # second batch: its square overflows
    units, n_params = _model_units(Loss.MSE, k)
    params0 = rand(rng, n_params, dt, 0.5)
    order = np.arange(n, dtype=np.int64)

    def run(mod, steps):
        plan = make_plan(units, bs, dt, Loss.MSE, params=params0.copy())
        loop = loop_state(Opt.SGD, n_params, dt, momentum=0.0, nesterov=0.0)
        losses, correct = np.full(steps, np.nan), np.full(steps, np.nan)
        done = mod.train_steps(plan, loop, X, Y, np.empty(0, dt), order, 0, steps, losses, correct)
        return done, plan.params, losses

    with np.errstate(over="ignore", invalid="ignore"):
        done, params, losses = run(be, 3)
        _, one_step, first = run(ref, 1)
    assert done == 1
    assert not np.isfinite(losses[1])
    np.testing.assert_allclose(losses[0], first[0], rtol=1e-12)
    np.testing.assert_allclose(params, one_step, rtol=1e-12)  # the failing step applied no update


@pytest.mark.parametrize("opt", ["sgd-momentum", "sgd-nesterov", "rmsprop", "adam"])
def test_optimizer_state_flushes_denormals(backend_name, dt, opt):
    # A parameter whose gradient stays 0 decays its state geometrically; once
    # below the smallest normal number the state is 0, in every backend.
    be = backend(backend_name)
    tiny = np.finfo(dt).tiny
    n = 37  # a vector body and a tail in every native loop
    rng = _rng("flush", opt, dt.name)
    group = np.arange(n) % 3
    # 0: no gradient, state just above tiny (decays below it: every decay factor is < 0.9999);
    # 1: no gradient, state 3 * tiny (stays normal); 2: a gradient and an ordinary state.
    state = np.where(group == 0, 1.0001 * tiny, np.where(group == 1, 3.0 * tiny, rand(rng, n, dt, 1.0)))
    if opt.startswith("sgd"):
        state[1::6] *= -1  # signed states flush by magnitude
    state = state.astype(dt)
    g = np.where(group == 2, rand(rng, n, dt, 1.0), 0).astype(dt)
    p0 = rand(rng, n, dt, 1.0)

    def run(mod):
        p, s1, s2 = p0.copy(), state.copy(), np.abs(state)
        if opt == "sgd-momentum":
            mod.sgd_update(p, g, s1, 0.1, 0.9, False)
        elif opt == "sgd-nesterov":
            mod.sgd_update(p, g, s1, 0.1, 0.9, True)
        elif opt == "rmsprop":
            s1 = np.abs(s1)
            mod.rmsprop_update(p, g, s1, 0.01, 0.99, 1e-8)
        else:
            mod.adam_update(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 5)
        return p, s1, s2

    p, s1, s2 = run(be)
    rp, rs1, rs2 = run(ref)
    states = [rs1, rs2] if opt == "adam" else [rs1]
    for r in states:  # the reference flushes exactly the decayed ones
        assert np.all(r[group == 0] == 0), r[group == 0]
        assert np.all(np.abs(r[group != 0]) >= tiny), r
    tol = dict(rtol=1e-6 if dt == np.float32 else 1e-14, atol=0)
    for mine, want in ([(s1, rs1), (s2, rs2)] if opt == "adam" else [(s1, rs1)]):
        np.testing.assert_array_equal(mine[group != 2], want[group != 2])  # flushed and kept as-is
        np.testing.assert_allclose(mine[group == 2], want[group == 2], **tol)  # FMA may round differently
    np.testing.assert_allclose(p, rp, **tol)
