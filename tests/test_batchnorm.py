"""Batch normalization: the batchnorm kernels of every backend against an
independent NumPy formula and the reference, the batch-norm unit of the
native training loops against the reference, finite differences through a
unit in training mode, PyTorch's BatchNorm1d, the BatchNorm layer of
Sequential and MLPClassifier / MLPRegressor(batch_norm=True)."""
import pickle

import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, BatchNorm, Dense, Dropout
from fastmlp.backends import reference as ref

from conftest import (BACKENDS, DTYPES, NATIVE_BACKENDS, Loss, Opt, Unit, assert_close, central_diff, loop_state,
                      make_plan)
from test_backends import _rng, rand


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return np.dtype(request.param)


def _block(rng, k, dt):
    """A (4, k) parameter block [gamma, beta, running_mean, running_var] away from 1/0/0/1."""
    G = np.empty((4, k))
    G[0] = 1.0 + 0.5 * rng.standard_normal(k)
    G[1] = 0.5 * rng.standard_normal(k)
    G[2] = 0.3 * rng.standard_normal(k)
    G[3] = 0.5 + rng.random(k)
    return np.ascontiguousarray(G, dtype=dt)


def _bn_numpy(X, G, eps, momentum, training):
    """The specification in float64, written independently of the kernels."""
    X = X.astype(np.float64)
    G = G.astype(np.float64)
    if training:
        mean, var = X.mean(axis=0), X.var(axis=0)
        xhat = (X - mean) / np.sqrt(var + eps)
        rm = (1 - momentum) * G[2] + momentum * mean
        rv = (1 - momentum) * G[3] + momentum * X.var(axis=0, ddof=1)
        inv = 1 / np.sqrt(var + eps)
    else:
        xhat = (X - G[2]) / np.sqrt(G[3] + eps)
        rm, rv, inv = G[2], G[3], 1 / np.sqrt(G[3] + eps)
    return xhat, G[0] * xhat + G[1], rm, rv, mean if training else None, inv


SHAPES = [(2, 1), (7, 13), (64, 130)]
SHAPE_IDS = ["2x1", "7x13", "64x130"]


# ------------------------------------------------------------- kernels
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_batchnorm_forward(backend_name, dt, shape, training):
    be = fastmlp.get_backend(backend_name)
    rng = _rng("bn_fwd", shape, training, dt.name)
    n, k = shape
    X = rand(rng, shape, dt, 2.0) + dt.type(1.5)
    G = _block(rng, k, dt)
    G0 = G.copy()
    S = np.full((2, k), np.nan, dt) if training else np.empty((0, 0), dt)
    Z, A = np.full(shape, np.nan, dt), np.full(shape, np.nan, dt)
    be.batchnorm_forward(X, G, 1e-3, 0.2, S, Z, A)
    xhat, y, rm, rv, mean, inv = _bn_numpy(X, G0, 1e-3, 0.2, training)
    tol = 2e-5 if dt == np.float32 else 1e-12
    assert_close(Z, xhat, dt, rtol=tol)
    assert_close(A, y, dt, rtol=tol)
    assert_close(G[2], rm, dt, rtol=tol)
    assert_close(G[3], rv, dt, rtol=tol)
    np.testing.assert_array_equal(G[:2], G0[:2])  # gamma and beta are not written
    if training:
        assert_close(S[0], mean, dt, rtol=tol)
        assert_close(S[1], inv, dt, rtol=tol)
        assert not np.allclose(G[2:], G0[2:])
    else:
        np.testing.assert_array_equal(G, G0)
    # and the reference, to the backend tolerance
    Gr, Sr = G0.copy(), np.empty_like(S)
    Zr, Ar = np.empty_like(Z), np.empty_like(A)
    ref.batchnorm_forward(X, Gr, 1e-3, 0.2, Sr, Zr, Ar)
    assert_close(A, Ar, dt, rtol=tol)
    assert_close(G, Gr, dt, rtol=tol)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("with_dx", [True, False], ids=["dx", "no_dx"])
def test_batchnorm_backward(backend_name, dt, shape, training, with_dx):
    be = fastmlp.get_backend(backend_name)
    rng = _rng("bn_bwd", shape, training, dt.name)
    n, k = shape
    X = rand(rng, shape, dt, 2.0)
    G = _block(rng, k, dt)
    S = np.empty((2, k), dt) if training else np.empty((0, 0), dt)
    Z, A = np.empty(shape, dt), np.empty(shape, dt)
    ref.batchnorm_forward(X, G.copy(), 1e-3, 0.1, S, Z, A)
    dA = rand(rng, shape, dt, 1.0)
    dG = np.full((4, k), 7.0, dt)  # rows 2, 3 must stay untouched
    dX = np.full(shape, np.nan, dt) if with_dx else np.empty((0, 0), dt)
    be.batchnorm_backward(dA, Z, G, 1e-3, S, dG, dX)
    # independent formulas, float64
    dy, z, g = dA.astype(np.float64), Z.astype(np.float64), G.astype(np.float64)
    dbeta, dgamma = dy.sum(0), (dy * z).sum(0)
    tol = 2e-5 if dt == np.float32 else 1e-12
    assert_close(dG[0], dgamma, dt, rtol=tol)
    assert_close(dG[1], dbeta, dt, rtol=tol)
    np.testing.assert_array_equal(dG[2:], 7.0)
    if with_dx:
        if training:
            want = g[0] * S.astype(np.float64)[1] / n * (n * dy - dbeta - z * dgamma)
        else:
            want = dy * g[0] / np.sqrt(g[3] + 1e-3)
        assert_close(dX, want, dt, rtol=tol * 10)


def test_batchnorm_training_needs_two_rows(backend_name, dt):
    be = fastmlp.get_backend(backend_name)
    X = np.ones((1, 3), dt)
    G = np.ones((4, 3), dt)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        be.batchnorm_forward(X, G, 1e-5, 0.1, np.empty((2, 3), dt), np.empty((1, 3), dt), np.empty((1, 3), dt))
    # inference takes one row
    A = np.empty((1, 3), dt)
    be.batchnorm_forward(X, G, 1e-5, 0.1, np.empty((0, 0), dt), np.empty((1, 3), dt), A)
    assert_close(A, np.full((1, 3), 1.0), dt)


def test_batchnorm_kernel_gradients_by_finite_differences(backend_name):
    """d/dX, d/dgamma, d/dbeta of sum(C * y**2) through a training-mode unit."""
    be = fastmlp.get_backend(backend_name)
    rng = np.random.default_rng(3)
    n, k = 6, 4
    X = rng.standard_normal((n, k)) * 2 + 1
    G = _block(rng, k, np.float64)
    C = rng.standard_normal((n, k))

    def loss():
        Gc = G.copy()
        Z, A = np.empty((n, k)), np.empty((n, k))
        be.batchnorm_forward(X, Gc, 1e-5, 0.1, np.empty((2, k)), Z, A)
        return float((C * A * A).sum())

    S, Z, A = np.empty((2, k)), np.empty((n, k)), np.empty((n, k))
    be.batchnorm_forward(X, G.copy(), 1e-5, 0.1, S, Z, A)
    dG, dX = np.zeros((4, k)), np.empty((n, k))
    be.batchnorm_backward(2 * C * A, Z, G, 1e-5, S, dG, dX)
    np.testing.assert_allclose(dX, central_diff(loss, X), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dG[:2], central_diff(loss, G)[:2], rtol=1e-6, atol=1e-7)
    assert np.abs(dX).max() > 1e-2


# ------------------------------------------------------------- models
def _bn_model(backend_name, dt="float64", d=5, seed=0, extra=False):
    layers = [Dense(7, use_bias=False), BatchNorm(), Activation("relu"), Dense(6, "tanh"),
              BatchNorm(momentum=0.3, eps=1e-3)]
    if extra:
        layers += [Dropout(0.3), Activation("sigmoid")]
    layers += [Dense(3)]
    model = fastmlp.Sequential(layers, input_dim=d, dtype=dt, seed=seed, backend=backend_name)
    rng = np.random.default_rng(seed + 7)
    ws = []
    for w in model.get_weights():  # gamma, beta and running stats away from 1, 0, 0, 1
        ws.append(w + 0.2 * rng.standard_normal(w.shape) if w.ndim == 2 else
                  np.abs(w + 0.3 * rng.standard_normal(w.shape)) + 0.1)
    model.set_weights(ws)
    return model


def test_plan_layout_and_weights_order():
    model = _bn_model("reference")
    rec = model._records(model._train_acts, 4, dropout=True)
    kinds = list(rec["kind"])
    assert kinds == [Unit.DENSE, Unit.BATCHNORM, Unit.ACTIVATION, Unit.DENSE, Unit.BATCHNORM, Unit.DENSE]
    bn = rec[4]
    assert bn["fan_in"] == bn["fan_out"] == 6 and bn["b_off"] == bn["w_off"] + 6
    assert (bn["eps"], bn["momentum"], bn["l2"], bn["alpha"], bn["rate"]) == (1e-3, 0.3, 0.0, 0.0, 0.0)
    assert model.count_params() == 5 * 7 + 4 * 7 + 7 * 6 + 6 + 4 * 6 + 6 * 3 + 3
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(5, 7), (7,), (7,), (7,), (7,), (7, 6), (6,), (6,), (6,), (6,), (6,), (6, 3), (3,)]
    fresh = fastmlp.Sequential([Dense(4), BatchNorm(), Dense(2)], input_dim=3, seed=0)
    _, _, gamma, beta, rm, rv, _, _ = fresh.get_weights()
    for got, want in ((gamma, 1), (beta, 0), (rm, 0), (rv, 1)):
        np.testing.assert_array_equal(got, np.full(4, want, np.float32))


def _train_steps_run(be, model, X, y, order, bs, n_steps, opt_kind, hyper, params0):
    plan = make_plan(model._records(model._train_acts, bs, dropout=True), bs, params0.dtype, Loss.CE,
                     params=params0.copy())
    loop = loop_state(opt_kind, params0.size, params0.dtype, t=2, seed=2**63 + 5, **hyper)
    losses, correct = np.full(n_steps, np.nan), np.full(n_steps, np.nan)
    done = be.train_steps(plan, loop, X, y, np.empty(0, X.dtype), order, 0, n_steps, losses, correct)
    assert done == n_steps
    return plan.params, plan.grads, losses, correct


@pytest.mark.parametrize("opt_kind", [Opt.SGD, Opt.ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("extra", [False, True], ids=["bn", "bn_dropout"])
def test_train_steps_batchnorm_matches_reference(native_name, dt, opt_kind, extra):
    """Several shuffled steps with two batch-norm units (and dropout): same weights,
    running statistics and losses as the reference."""
    be = fastmlp.get_backend(native_name)
    model = _bn_model(native_name, dt=dt.name, extra=extra)
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(11)
    X = rand(rng, (23, 5), dt, 1.5)
    y = rng.integers(0, 3, 23).astype(np.int64)
    order = rng.permutation(23).astype(np.int64)
    opt_f = dict(lr=0.1, momentum=0.9, nesterov=0.0) if opt_kind == Opt.SGD else {}
    p0 = model._params.copy()
    pw, gw, lw, cw = _train_steps_run(ref, model, X, y, order, 5, 4, opt_kind, opt_f, p0)
    pg, gg, lg, cg = _train_steps_run(be, model, X, y, order, 5, 4, opt_kind, opt_f, p0)
    tol = 1e-4 if dt == np.float32 else 1e-10
    assert_close(lg, lw, dt, rtol=tol)
    assert_close(pg, pw, dt, rtol=tol)
    assert_close(gg, gw, dt, rtol=tol)
    np.testing.assert_array_equal(cg, cw)
    # the running statistics moved, by the batch statistics only: their gradient slots are zero
    for u in model._units:
        if u.bn:
            blk = slice(u.w_off, u.w_off + 4 * u.fan_out)
            rs = slice(u.w_off + 2 * u.fan_out, u.w_off + 4 * u.fan_out)
            assert np.abs(pg[rs] - p0[rs]).min() > 0
            np.testing.assert_array_equal(gg[rs], 0.0)
            assert np.abs(gg[blk][:2 * u.fan_out]).max() > 0


def test_optimizer_does_not_move_running_stats(backend_name):
    """momentum=0 freezes the running statistics: Adam and SGD with momentum leave them bit for bit."""
    model = fastmlp.Sequential([Dense(6, use_bias=False), BatchNorm(momentum=0.0), Activation("relu"),
                                Dense(3)], input_dim=4, dtype="float64", seed=0, backend=backend_name)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    rm0, rv0 = model.get_weights()[3].copy(), model.get_weights()[4].copy()
    for opt in ("adam", fastmlp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True), "rmsprop"):
        model.compile("cross_entropy", opt)
        model.fit(X, y, epochs=2, batch_size=6, verbose=0)
    w = model.get_weights()
    np.testing.assert_array_equal(w[3], rm0)
    np.testing.assert_array_equal(w[4], rv0)
    assert np.abs(w[1] - 1).max() > 1e-3  # gamma trained


def _train_loss_and_grads(model, X, y):
    """Training-mode (batch statistics) loss and gradients at the model's current parameters."""
    n = X.shape[0]
    model._loss_kind = Loss.CE
    buf = model._make_plan(model._train_acts, n, training=True, dropout=True)
    buf.x[...] = X
    G = model._params.copy()  # the forward pass moves the running statistics: restore them
    ref.forward_units(model.backend, buf, training=True)
    loss = ref.loss_and_grads(model.backend, buf, y, buf.Y, np.empty(0), training=True)
    model._params[...] = G
    return loss, model._grads.copy(), buf


def test_model_gradients_by_finite_differences(backend_name):
    """Central differences of the training loss w.r.t. every parameter (W before the
    batch norm, gamma, beta, later layers) through two units in training mode."""
    model = _bn_model(backend_name)
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((9, 5)), rng.integers(0, 3, 9).astype(np.int64)
    _, grads, _ = _train_loss_and_grads(model, X, y)
    fd = central_diff(lambda: _train_loss_and_grads(model, X, y)[0], model._params)
    np.testing.assert_allclose(grads, fd, rtol=1e-6, atol=1e-8)
    # the running statistics get no gradient; the rest do
    for u in model._units:
        if u.bn:
            np.testing.assert_array_equal(grads[u.w_off + 2 * u.fan_out:u.w_off + 4 * u.fan_out], 0.0)
    assert np.abs(grads[model._units[0].w_off:model._units[0].w_off + 35]).max() > 1e-4


def test_input_gradient_through_batchnorm_by_finite_differences(backend_name):
    """d loss / d (the batch-norm unit's input), from dA of the unit below."""
    model = _bn_model(backend_name)
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8).astype(np.int64)
    _, _, buf = _train_loss_and_grads(model, X, y)
    dH = buf.dA[0].copy()  # gradient at the first Dense's output = the batch norm's input
    assert dH.shape == (8, 7)
    np.testing.assert_allclose(X.T @ dH, model._grads[:35].reshape(5, 7), rtol=1e-12, atol=1e-14)
    # finite differences w.r.t. the unit's input: a Dense of identity weights feeds X itself
    m2 = fastmlp.Sequential([Dense(5, use_bias=False, kernel_initializer="zeros"), BatchNorm(),
                             Activation("tanh"), Dense(3)], input_dim=5, dtype="float64", seed=1,
                            backend=backend_name)
    m2._units[0].W[...] = np.eye(5)  # the batch norm sees X itself
    m2.compile("cross_entropy", "sgd")
    _, _, buf2 = _train_loss_and_grads(m2, X, y)
    dX = buf2.dA[0].copy()

    def loss():
        return _train_loss_and_grads(m2, X, y)[0]

    np.testing.assert_allclose(dX, central_diff(loss, X), rtol=1e-6, atol=1e-8)
    assert np.abs(dX).max() > 1e-3


def test_fit_same_in_every_backend(dt):
    res = {}
    for name in BACKENDS:
        model = _bn_model(name, dt=dt.name, extra=True)
        model.compile("cross_entropy", "adam")
        rng = np.random.default_rng(1)
        X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
        hist = model.fit(X, y, epochs=3, batch_size=7, verbose=0)
        res[name] = (model.get_weights(), hist.history["loss"], model.predict(X))
    tol = 1e-4 if dt == np.float32 else 1e-10
    for name in NATIVE_BACKENDS:
        for got, want in zip(res[name][0], res["reference"][0]):
            assert_close(got, want, dt, rtol=tol)
        assert_close(res[name][1], res["reference"][1], dt, rtol=tol)
        assert_close(res[name][2], res["reference"][2], dt, rtol=tol)


def _eval_forward(weights, X):
    """Inference with the running statistics, from get_weights (independent of the kernels)."""
    W0, g1, b1, m1, v1, W1, c1, g2, b2, m2, v2, W2, c2 = [w.astype(np.float64) for w in weights]
    h = np.maximum(g1 * (X @ W0 - m1) / np.sqrt(v1 + 1e-5) + b1, 0)
    h = np.tanh(h @ W1 + c1)
    h = g2 * (h - m2) / np.sqrt(v2 + 1e-3) + b2
    z = h @ W2 + c2
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_predict_and_evaluate_use_running_stats(backend_name, dt):
    model = _bn_model(backend_name, dt=dt.name)
    model.compile("cross_entropy", "adam")
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((30, 5)).astype(dt), rng.integers(0, 3, 30)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    want = _eval_forward(model.get_weights(), X.astype(np.float64))
    tol = 1e-5 if dt == np.float32 else 1e-12
    assert_close(model.predict(X), want, dt, rtol=tol)  # the batched path (30 rows)
    for rows in (1, 2, 5):  # the per-request predictor, one row at a time too
        assert_close(model.predict(X[:rows]), want[:rows], dt, rtol=tol)
    assert_close(model.predict(X, batch_size=4), want, dt, rtol=tol)
    # evaluate: the eval-mode loss, independent of the chunking
    loss = -np.log(want[np.arange(30), y]).mean()
    assert_close(model.evaluate(X, y)["loss"], loss, dt, rtol=tol * 10)
    assert_close(model.evaluate(X, y, batch_size=1)["loss"], loss, dt, rtol=tol * 10)
    # pickling keeps the parameters and the running statistics
    clone = pickle.loads(pickle.dumps(model))
    assert_close(clone.predict(X), want, dt, rtol=tol)


def test_set_weights_roundtrip_and_errors():
    model = _bn_model("reference")
    w = model.get_weights()
    other = fastmlp.Sequential(model.layers, input_dim=5, dtype="float64", seed=9)
    other.set_weights(w)
    for a, b in zip(other.get_weights(), w):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 13 arrays"):
        other.set_weights(w[:-1])
    # an unbuilt model whose first layer is a BatchNorm builds from gamma's length
    first = fastmlp.Sequential([BatchNorm(), Dense(2)], dtype="float64")
    ws = [np.full(3, 2.0), np.full(3, 0.5), np.zeros(3), np.full(3, 4.0), np.ones((3, 2)), np.zeros(2)]
    first.set_weights(ws)
    assert first.input_dim == 3
    np.testing.assert_allclose(first.predict(np.ones((1, 3))), [[6 / np.sqrt(4 + 1e-5) + 1.5] * 2])
    with pytest.raises(ValueError, match="BatchNorm cannot be the last layer"):
        fastmlp.Sequential([Dense(3), BatchNorm()])
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(eps=0.0)
    assert "BatchNorm" in fastmlp.__all__


def test_batch_of_one_row_is_refused_before_training(backend_name):
    model = fastmlp.Sequential([Dense(4, use_bias=False), BatchNorm(), Activation("relu"), Dense(2)],
                               input_dim=3, dtype="float64", seed=0, backend=backend_name)
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((11, 3)), rng.integers(0, 2, 11)
    p0 = model._params.copy()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training.*last"):
        model.fit(X, y, batch_size=5, verbose=0)  # 5 + 5 + 1
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model.fit(X, y, batch_size=1, verbose=0)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model.fit(X[:1], y[:1], verbose=0)
    np.testing.assert_array_equal(model._params, p0)
    model.fit(X, y, batch_size=4, verbose=0)  # 4 + 4 + 3 trains
    assert model.predict(X[:1]).shape == (1, 2)  # and inference takes one row


def test_train_steps_refuses_one_row(backend_name):
    be = fastmlp.get_backend(backend_name)
    model = _bn_model(backend_name)
    model.compile("cross_entropy", "sgd")
    X, y = np.ones((4, 5)), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        _train_steps_run(be, model, X, y, np.arange(4), 1, 1, Opt.SGD, dict(momentum=0.0, nesterov=0.0),
                         model._params)


# ------------------------------------------------------------- PyTorch
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

RTOL, ATOL = 1e-7, 1e-12


def _twins(backend_name, seed=0):
    model = fastmlp.Sequential([Dense(6, use_bias=False), BatchNorm(), Activation("relu"), Dense(3)],
                               input_dim=4, dtype="float64", seed=seed, backend=backend_name)
    rng = np.random.default_rng(seed + 50)
    W0, g, b, rm, rv, W1, c = model.get_weights()
    g, b = 1 + 0.3 * rng.standard_normal(6), 0.2 * rng.standard_normal(6)
    rm, rv = 0.1 * rng.standard_normal(6), 1 + rng.random(6)
    c = 0.1 * rng.standard_normal(3)
    model.set_weights([W0, g, b, rm, rv, W1, c])
    lin0, bn, lin1 = nn.Linear(4, 6, bias=False).double(), nn.BatchNorm1d(6).double(), nn.Linear(6, 3).double()
    with torch.no_grad():
        lin0.weight.copy_(torch.from_numpy(W0.T.copy()))
        bn.weight.copy_(torch.from_numpy(g))
        bn.bias.copy_(torch.from_numpy(b))
        bn.running_mean.copy_(torch.from_numpy(rm))
        bn.running_var.copy_(torch.from_numpy(rv))
        lin1.weight.copy_(torch.from_numpy(W1.T.copy()))
        lin1.bias.copy_(torch.from_numpy(c))
    return model, nn.Sequential(lin0, bn, nn.ReLU(), lin1)


def _torch_weights(net):
    lin0, bn, _, lin1 = net
    return [t.detach().numpy() for t in (lin0.weight.T, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                         lin1.weight.T, lin1.bias)]


def _data(n=13, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)) * 1.5 + 0.5, (np.arange(n) % 3).astype(np.int64)


def test_torch_forward_loss_and_gradients(backend_name):
    model, net = _twins(backend_name)
    model.compile("cross_entropy", "sgd")
    X, y = _data()
    net.train()
    out = net(torch.from_numpy(X))
    loss = nn.CrossEntropyLoss()(out, torch.from_numpy(y))
    loss.backward()
    got_loss, grads, buf = _train_loss_and_grads(model, X, y)
    np.testing.assert_allclose(buf.Z[-1], out.detach().numpy(), rtol=RTOL, atol=ATOL)  # train-mode forward
    np.testing.assert_allclose(got_loss, loss.item(), rtol=RTOL, atol=ATOL)
    lin0, bn, _, lin1 = net
    u0, u1, _, u3 = model._units
    want = {"W0": (grads[:24].reshape(4, 6), lin0.weight.grad.numpy().T),
            "gamma": (grads[u1.w_off:u1.w_off + 6], bn.weight.grad.numpy()),
            "beta": (grads[u1.b_off:u1.b_off + 6], bn.bias.grad.numpy()),
            "W1": (grads[u3.w_off:u3.w_off + 18].reshape(6, 3), lin1.weight.grad.numpy().T),
            "b1": (grads[u3.b_off:u3.b_off + 3], lin1.bias.grad.numpy())}
    for name, (got, exp) in want.items():
        np.testing.assert_allclose(got, exp, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("opt_name", ["sgd", "sgd_momentum", "adam"])
@pytest.mark.parametrize("batch_size", [13, 5], ids=["full_batch", "mini_batch"])
def test_torch_three_steps_and_eval(backend_name, opt_name, batch_size):
    fm_opt, torch_opt = {
        "sgd": (lambda: fastmlp.optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        "sgd_momentum": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9),
                         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        "adam": (lambda: fastmlp.optim.Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7),
                 lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
    }[opt_name]
    model, net = _twins(backend_name)
    X, y = _data()
    opt = torch_opt(net.parameters())
    net.train()
    losses = []
    epochs = 3 if batch_size == 13 else 1  # 3 steps either way: 5 + 5 + 3 rows
    for _ in range(epochs):
        for s in range(0, 13, batch_size):
            opt.zero_grad()
            loss = nn.CrossEntropyLoss()(net(torch.from_numpy(X[s:s + batch_size])),
                                         torch.from_numpy(y[s:s + batch_size]))
            losses.append(loss.item())
            loss.backward()
            opt.step()
    model.compile("cross_entropy", fm_opt())
    hist = model.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
    assert model.optimizer.t == 3
    if batch_size == 13:
        np.testing.assert_allclose(hist.history["loss"], losses, rtol=RTOL, atol=ATOL)
    else:  # the epoch loss is the row-weighted mean of the step losses
        np.testing.assert_allclose(hist.history["loss"][0], np.dot(losses, [5, 5, 3]) / 13, rtol=RTOL, atol=ATOL)
    names = ["W0", "gamma", "beta", "running_mean", "running_var", "W1", "b1"]
    for name, got, want in zip(names, model.get_weights(), _torch_weights(net)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
    net.eval()
    Xt = np.random.default_rng(9).standard_normal((17, 4))
    want = torch.softmax(net(torch.from_numpy(Xt)), dim=1).detach().numpy()
    np.testing.assert_allclose(model.predict(Xt), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(model.predict(Xt[:3]), want[:3], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------- estimators
def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, random_state=0)


def test_estimator_batch_norm_digits():
    from fastmlp import MLPClassifier

    Xtr, Xte, ytr, yte = _digits()
    kw = dict(hidden_layer_sizes=(64, 32), batch_norm=True, max_iter=25, random_state=0)
    clf = MLPClassifier(**kw).fit(Xtr, ytr)
    assert clf.score(Xte, yte) > 0.93
    layers = clf._model.layers
    assert [type(layer).__name__ for layer in layers] == ["Dense", "BatchNorm", "Activation", "Dense",
                                                           "BatchNorm", "Activation", "Dense"]
    assert not layers[0].use_bias and layers[-1].use_bias
    assert [c.shape for c in clf.coefs_] == [(64, 64), (64, 32), (32, 10)]
    assert [b.shape for b in clf.intercepts_] == [(64,), (32,), (10,)]
    assert len(clf.batch_norm_params_) == 2
    bn = clf.batch_norm_params_[0]
    np.testing.assert_array_equal(clf.intercepts_[0], bn["beta"])
    assert (bn["running_var"] > 0).all() and np.abs(bn["running_mean"]).max() > 0
    # reproducible
    again = MLPClassifier(**kw).fit(Xtr, ytr)
    for a, b in zip(again.coefs_, clf.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.predict_proba(Xte), clf.predict_proba(Xte))
    # batch norm changes the fit
    plain = MLPClassifier(**{**kw, "batch_norm": False}).fit(Xtr, ytr)
    assert not np.allclose(plain.coefs_[0], clf.coefs_[0])


def test_estimator_batch_norm_with_dropout_and_partial_fit():
    from fastmlp import MLPClassifier, MLPRegressor

    Xtr, Xte, ytr, yte = _digits()
    clf = MLPClassifier((32,), batch_norm=True, dropout=0.1, max_iter=30, random_state=1).fit(Xtr, ytr)
    assert [type(layer).__name__ for layer in clf._model.layers] == ["Dense", "BatchNorm", "Activation",
                                                                      "Dropout", "Dense"]
    assert clf.score(Xte, yte) > 0.9
    with pytest.raises(ValueError, match="needs a stochastic solver"):
        MLPClassifier(batch_norm=True, solver="lbfgs").fit(Xtr, ytr)
    inc = MLPClassifier((16,), batch_norm=True, random_state=0)
    inc.partial_fit(Xtr, ytr, classes=np.arange(10))
    inc.partial_fit(Xtr, ytr)
    inc.set_params(batch_norm=False)
    with pytest.raises(ValueError, match="batch_norm"):
        inc.partial_fit(Xtr, ytr)
    warm = MLPClassifier((16,), batch_norm=False, warm_start=True, max_iter=3, random_state=0).fit(Xtr, ytr)
    warm.set_params(batch_norm=True)
    with pytest.raises(ValueError, match="batch_norm"):
        warm.fit(Xtr, ytr)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 5))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    reg = MLPRegressor(hidden_layer_sizes=(32,), batch_norm=True, max_iter=60, learning_rate_init=0.01,
                       random_state=0).fit(X[:400], y[:400])
    assert reg.score(X[400:], y[400:]) > 0.8
