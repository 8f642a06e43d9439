"""Dropout: the counter-based masks, the mask kernels, the dropout unit of
the native training loops against the reference, and the Dropout layer."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, Dense, Dropout
from fastmlp.backends import reference as ref

from conftest import (BACKENDS, DTYPES, Act, Loss, Opt, Unit, assert_close, central_diff,
                      loop_state, make_plan, records, targets_of, unit)
from test_backends import _rng, rand

U64 = (1 << 64) - 1


def _splitmix_u(seed, step, unit, e):
    """The generator's specification in plain Python integers (independent of the kernels)."""
    def mix(z):
        z &= U64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
        return z ^ (z >> 31)

    g = 0x9E3779B97F4A7C15
    k2 = mix(mix(seed + g * (step + 1)) + g * (unit + 1))
    return (mix(k2 + g * (e + 1)) >> 11) / 2.0**53


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return np.dtype(request.param)


# ------------------------------------------------------------- the masks
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 130)], ids=["1x1", "7x13", "64x130"])
@pytest.mark.parametrize("seed", [0, 12345, 2**64 - 1])
def test_dropout_mask_same_in_every_backend(backend_name, dt, shape, seed):
    be = fastmlp.get_backend(backend_name)
    rate = 0.3
    want = np.empty(shape, dt)
    ref.dropout_mask(seed, 7, 3, rate, want)
    got = np.full(shape, np.nan, dt)
    be.dropout_mask(seed, 7, 3, rate, got)
    np.testing.assert_array_equal(got, want)
    # the reference follows the specification, element by element
    flat = want.reshape(-1)
    scale = dt.type(1.0 / (1.0 - rate))
    for e in list(range(min(flat.size, 50))) + [flat.size - 1]:
        keep = _splitmix_u(seed, 7, 3, e) >= rate
        assert flat[e] == (scale if keep else 0), e


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_mask_statistics(backend_name, dt, rate):
    be = fastmlp.get_backend(backend_name)
    M = np.empty((200, 500), dt)
    be.dropout_mask(99, 0, 1, rate, M)
    n = M.size
    dropped = np.count_nonzero(M == 0) / n
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # ~ rate (5 sigma)
    kept = M[M != 0]
    np.testing.assert_array_equal(kept, dt.type(1.0 / (1.0 - rate)))  # survivors scaled by 1/(1-p)
    assert abs(M.astype(np.float64).mean() - 1.0) < 0.02  # inverted dropout keeps the mean
    # no visible structure: rows and columns drop alike
    assert np.abs((M == 0).mean(axis=1) - rate).max() < 0.2
    assert np.abs((M == 0).mean(axis=0) - rate).max() < 0.3
    # every counter matters: another step, unit or seed gives another mask
    for args in ((99, 1, 1), (99, 0, 2), (100, 0, 1)):
        other = np.empty_like(M)
        be.dropout_mask(*args, rate, other)
        assert 0.3 * rate * (1 - rate) < np.mean((other == 0) != (M == 0))


def test_dropout_mask_rate_zero_is_all_ones(backend_name, dt):
    be = fastmlp.get_backend(backend_name)
    M = np.empty((9, 11), dt)
    be.dropout_mask(5, 0, 0, 0.0, M)
    np.testing.assert_array_equal(M, 1.0)


def test_dropout_forward_backward_kernels(backend_name, dt):
    be = fastmlp.get_backend(backend_name)
    rng = _rng("dropout_kernels")
    Z = rand(rng, (33, 17), dt)
    M = np.empty((33, 17), dt)
    be.dropout_mask(1, 2, 3, 0.4, M)
    out = np.full_like(Z, np.nan)
    be.dropout_forward(Z, M, out)
    np.testing.assert_array_equal(out, Z * M)
    assert (out[M == 0] == 0).all()
    G = rand(rng, (33, 17), dt)
    dZ = np.full_like(G, np.nan)
    be.dropout_backward(G, M, dZ)
    np.testing.assert_array_equal(dZ, G * M)
    G2 = G.copy()
    be.dropout_backward(G2, M, G2)  # in place
    np.testing.assert_array_equal(G2, dZ)


def test_dropout_kernels_match_torch():
    """With a given mask, forward and backward are torch's ``x * mask / (1 - p)``."""
    torch = pytest.importorskip("torch")
    p = 0.35
    rng = _rng("dropout_torch")
    Z = rand(rng, (20, 30), np.float64)
    G = rand(rng, (20, 30), np.float64)
    for name in BACKENDS:
        be = fastmlp.get_backend(name)
        M = np.empty_like(Z)
        be.dropout_mask(3, 4, 5, p, M)
        keep = torch.from_numpy(M != 0)
        x = torch.from_numpy(Z.copy()).requires_grad_(True)
        y = x * keep / (1 - p)
        y.backward(torch.from_numpy(G))
        out, dZ = np.empty_like(Z), np.empty_like(Z)
        be.dropout_forward(Z, M, out)
        be.dropout_backward(G, M, dZ)
        np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-15, atol=0)
        np.testing.assert_allclose(dZ, x.grad.numpy(), rtol=1e-15, atol=0)


# ------------------------------------------------------------- the step loop
def _drop_plan(k, rate, first=True):
    """The records of [Dropout(4) on the inputs], Dense(4->5, tanh), Dropout(5), Dense(5->k)."""
    units = [unit(Unit.DROPOUT, 4, 4, rate=rate)] if first else []
    units += [unit(Unit.DENSE, 4, 5, Act.TANH, 1, 0, 20, l2=0.01), unit(Unit.DROPOUT, 5, 5, rate=rate),
              unit(Unit.DENSE, 5, k, Act.IDENTITY, 1, 25, 25 + 5 * k)]
    return records(units), 25 + 6 * k


def _problem(dt, loss_kind, n=23, d=4, k=3, key="drop"):
    rng = _rng(key, int(loss_kind))
    X = rand(rng, (n, d), dt, 1.0)
    if loss_kind == Loss.CE:
        y, Y = rng.integers(0, k, n).astype(np.int64), np.empty((0, 0), dt)
    else:
        y, Y = np.empty(0, np.int64), rand(rng, (n, k), dt, 1.0)
    return rng, X, y, Y


def _run_train_steps(mod, dt, rec, n_params, params0, X, y, Y, order, bs, n_steps, opt_kind, seed, t0=0):
    loss_kind = Loss.CE if y.shape[0] > 0 else Loss.MSE
    plan = make_plan(rec, bs, dt, loss_kind, params=params0.copy())
    hyper = {Opt.NONE: {}, Opt.SGD: dict(lr=0.1, momentum=0.9, nesterov=0.0), Opt.ADAM: {}}[opt_kind]
    loop = loop_state(opt_kind, n_params, dt, t=t0, seed=seed, **hyper)
    losses, correct = np.full(n_steps, np.nan), np.full(n_steps, np.nan)
    done = mod.train_steps(plan, loop, X, targets_of(loss_kind, y, Y), np.empty(0, dt), order, 0, n_steps,
                           losses, correct)
    assert done == n_steps
    return plan.params, plan.grads, losses, correct, plan.M


@pytest.mark.parametrize("loss_kind", [Loss.CE, Loss.MSE], ids=["ce", "mse"])
@pytest.mark.parametrize("opt_kind", [Opt.SGD, Opt.ADAM], ids=["sgd", "adam"])
def test_train_steps_dropout_matches_reference(native_name, dt, loss_kind, opt_kind):
    """An epoch of shuffled steps with two dropout units: same masks, same weights as the reference."""
    be = fastmlp.get_backend(native_name)
    rng, X, y, Y = _problem(dt, loss_kind)
    rec, n_params = _drop_plan(3, 0.4)
    params0 = rand(rng, n_params, dt, 0.5)
    order = rng.permutation(X.shape[0]).astype(np.int64)
    bs, steps = 5, 4
    pw, _, lw, cw, Mw = _run_train_steps(ref, dt, rec, n_params, params0, X, y, Y, order, bs,
                                         steps, opt_kind, 2**63 + 11, t0=3)
    pg, _, lg, cg, Mg = _run_train_steps(be, dt, rec, n_params, params0, X, y, Y, order, bs,
                                         steps, opt_kind, 2**63 + 11, t0=3)
    for i in (0, 2):  # the last step's masks, bit for bit
        np.testing.assert_array_equal(Mg[i], Mw[i])
        assert (Mw[i] == 0).any() and (Mw[i] != 0).any()
    np.testing.assert_array_equal(cg, cw)
    tol = 1e-4 if dt == np.float32 else 1e-10
    assert_close(lg, lw, dt, rtol=tol)
    assert_close(pg, pw, dt, rtol=tol)
    # and dropout did something: the run without it ends elsewhere
    no_drop = rec.copy()
    no_drop["rate"][[0, 2]] = 0.0
    p0, *_ = _run_train_steps(ref, dt, no_drop, n_params, params0, X, y, Y, order, bs, steps,
                              opt_kind, 2**63 + 11, t0=3)
    assert np.abs(p0 - pw).max() > 1e-3


def test_train_steps_dropout_rate_zero_is_no_dropout(backend_name, dt):
    """Dropout units of rate 0 give exactly the training of the plan without them."""
    be = fastmlp.get_backend(backend_name)
    rng, X, y, Y = _problem(dt, Loss.CE, key="rate0")
    rec, n_params = _drop_plan(3, 0.0)
    keep = rec["kind"] != Unit.DROPOUT
    params0 = rand(rng, n_params, dt, 0.5)
    order = rng.permutation(X.shape[0]).astype(np.int64)
    with_d = _run_train_steps(be, dt, rec, n_params, params0, X, y, Y, order, 5, 4, Opt.ADAM, 77)
    without = _run_train_steps(be, dt, rec[keep], n_params, params0, X, y, Y, order, 5, 4, Opt.ADAM, 77)
    np.testing.assert_array_equal(with_d[0], without[0])
    np.testing.assert_array_equal(with_d[2], without[2])


def test_train_steps_dropout_gradient_finite_differences(backend_name):
    """The gradient through fixed masks (same seed and step) is the loss's derivative."""
    be = fastmlp.get_backend(backend_name)
    dt = np.dtype(np.float64)
    rng, X, y, Y = _problem(dt, Loss.MSE, n=6, key="fd")
    rec, n_params = _drop_plan(3, 0.5, first=False)
    rec["l2"] = 0.0
    params0 = rand(rng, n_params, dt, 0.5)
    order = np.arange(6, dtype=np.int64)

    def loss_grad(p):
        _, g, losses, _, M = _run_train_steps(be, dt, rec, n_params, p, X, y, Y, order, 6, 1, Opt.NONE, 4242, t0=9)
        return losses[0], g, M

    _, grad, M = loss_grad(params0)
    assert (M[1] == 0).any() and (M[1] != 0).any()
    p = params0.copy()
    fd = central_diff(lambda: loss_grad(p)[0], p, eps=1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # the mask matters: without it the gradient is another one
    no_drop = rec.copy()
    no_drop["rate"][1] = 0.0
    _, g0, *_ = _run_train_steps(be, dt, no_drop, n_params, params0, X, y, Y, order, 6, 1, Opt.NONE, 4242, t0=9)
    assert np.abs(g0 - grad).max() > 1e-3


def test_loss_and_grads_with_mask_matches_torch(backend_name):
    """Dense-tanh-Dropout(fixed mask)-Dense + cross-entropy: loss and gradients equal torch's."""
    torch = pytest.importorskip("torch")
    be = fastmlp.get_backend(backend_name)
    dt = np.dtype(np.float64)
    rng, X, y, _ = _problem(dt, Loss.CE, n=8, key="torch_net")
    rec, n_params = _drop_plan(3, 0.3, first=False)
    rec["l2"] = 0.0
    params = rand(rng, n_params, dt, 0.5)
    plan = make_plan(rec, 8, dt, Loss.CE, params=params)
    plan.x[...] = X
    M = plan.M
    be.dropout_mask(5, 0, 1, 0.3, M[1])
    ref.forward_units(be, plan, training=True)
    loss = ref.loss_and_grads(be, plan, y, plan.Y, np.empty(0), training=True)
    grads = plan.grads
    W0 = torch.tensor(params[:20].reshape(4, 5), requires_grad=True)
    b0 = torch.tensor(params[20:25], requires_grad=True)
    W1 = torch.tensor(params[25:40].reshape(5, 3), requires_grad=True)
    b1 = torch.tensor(params[40:43], requires_grad=True)
    keep = torch.from_numpy(M[1] != 0)
    h = torch.tanh(torch.from_numpy(X) @ W0 + b0) * keep / (1 - 0.3)
    tl = torch.nn.functional.cross_entropy(h @ W1 + b1, torch.from_numpy(y))
    tl.backward()
    want = np.concatenate([t.grad.numpy().ravel() for t in (W0, b0, W1, b1)])
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(grads, want, rtol=1e-10, atol=1e-14)


def test_train_steps_rejects_bad_dropout_plans(backend_name):
    be = fastmlp.get_backend(backend_name)
    dt = np.dtype(np.float64)
    rng, X, y, Y = _problem(dt, Loss.CE, key="bad")
    rec, n_params = _drop_plan(3, 1.0)
    params0 = rand(rng, n_params, dt, 0.5)
    order = np.arange(X.shape[0], dtype=np.int64)
    with pytest.raises(ValueError, match=r"dropout rate of unit 0 must be in \[0, 1\)"):
        _run_train_steps(be, dt, rec, n_params, params0, X, y, Y, order, 5, 1, Opt.SGD, 1)
    rec["rate"] = np.where(rec["kind"] == Unit.DROPOUT, 0.5, 0.0)
    plan = make_plan(rec, 5, dt, Loss.CE, params=params0.copy())
    plan.M = [np.empty((0, 0))] * len(rec)
    with pytest.raises(ValueError, match=r"M\[0\] \(the dropout mask\) must be"):
        be.train_steps(plan, loop_state(Opt.SGD, n_params, dt, momentum=0.0), X, y, np.empty(0), order, 0, 1,
                       np.empty(1), np.empty(1))


# ------------------------------------------------------------- the layer
def test_dropout_layer_validation():
    assert fastmlp.Dropout is Dropout
    assert Dropout(0.25).rate == 0.25 and Dropout(0).rate == 0.0
    assert repr(Dropout(0.5)) == "Dropout(rate=0.5)"
    for bad in (1.0, 1.5, -0.1, float("nan"), "0.5", None, True):
        with pytest.raises(ValueError, match=r"Dropout rate must be in \[0.0, 1.0\)"):
            Dropout(bad)
    with pytest.raises(ValueError, match="Dropout cannot be the last layer"):
        fastmlp.Sequential([Dense(3), Dropout(0.5)])


def _data(n=64, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.argmax(X @ rng.standard_normal((d, k)), axis=1)
    return X, y


def _layers(rate, dropout=True):
    out = [Dropout(rate)] if dropout else []
    out += [Dense(16, "relu")]
    out += [Dropout(rate)] if dropout else []
    out += [Dense(8, use_bias=False), Activation("tanh")]
    out += [Dropout(rate)] if dropout else []
    out += [Dense(3)]
    return out


def _fit(layers, backend, dtype="float64", seed=3, epochs=2, batch_size=10, X=None, y=None):
    X, y = _data() if X is None else (X, y)
    model = fastmlp.Sequential(layers, input_dim=X.shape[1], dtype=dtype, seed=seed, backend=backend)
    model.compile(loss="cross_entropy", optimizer=fastmlp.optim.Adam(lr=0.01))
    hist = model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model, hist


def test_model_fit_matches_reference_and_is_reproducible(native_name):
    """Sequential with Dropout layers: a native backend trains the reference's weights, bit-equal masks
    included (64 rows in batches of 10: a full-batch call and a partial-batch call per epoch)."""
    m_ref, h_ref = _fit(_layers(0.3), "reference")
    m_nat, h_nat = _fit(_layers(0.3), native_name)
    for a, b in zip(m_nat.get_weights(), m_ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_nat.history["loss"], h_ref.history["loss"], rtol=1e-9)
    again, _ = _fit(_layers(0.3), native_name)
    for a, b in zip(again.get_weights(), m_nat.get_weights()):
        np.testing.assert_array_equal(a, b)
    other_seed, _ = _fit(_layers(0.3), native_name, seed=4)
    plain, _ = _fit(_layers(0.3, dropout=False), native_name)
    assert not np.allclose(plain.get_weights()[0], m_nat.get_weights()[0])
    assert not np.allclose(other_seed.get_weights()[0], m_nat.get_weights()[0])


def test_model_dropout_rate_zero_is_exactly_no_dropout(backend_name):
    with_d, h1 = _fit(_layers(0.0), backend_name, dtype="float32", epochs=3)
    without, h2 = _fit(_layers(0.0, dropout=False), backend_name, dtype="float32", epochs=3)
    for a, b in zip(with_d.get_weights(), without.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h1.history["loss"] == h2.history["loss"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_and_evaluate_are_without_dropout(backend_name, dtype):
    """At inference Dropout is the identity: predict / evaluate are deterministic and equal the same
    network without the Dropout layers, on the per-request path and the general one."""
    X, y = _data(n=300)
    model, _ = _fit(_layers(0.5), backend_name, dtype=dtype, X=X, y=y)
    twin = fastmlp.Sequential(_layers(0.5, dropout=False), input_dim=X.shape[1], dtype=dtype,
                              backend=backend_name)
    twin.compile(loss="cross_entropy")
    twin.set_weights(model.get_weights())
    Xd = X.astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for rows in (Xd[:1], Xd[:40], Xd):  # the small-batch predictor and the batched path
        p1 = model.predict(rows)
        np.testing.assert_array_equal(model.predict(rows), p1)
        np.testing.assert_allclose(p1, twin.predict(rows), rtol=tol, atol=tol)
    np.testing.assert_allclose(model.predict(Xd, batch_size=7), twin.predict(Xd), rtol=tol, atol=tol)
    e1, e2 = model.evaluate(X, y), twin.evaluate(X, y)
    assert model.evaluate(X, y) == e1
    assert e1["accuracy"] == e2["accuracy"]
    np.testing.assert_allclose(e1["loss"], e2["loss"], rtol=tol)


def test_dropout_regularises_training_loss():
    """With a high rate the training loss (under dropout) stays above the loss without dropout."""
    X, y = _data(n=200)
    _, h_drop = _fit(_layers(0.6), "reference", epochs=15, X=X, y=y)
    _, h_plain = _fit(_layers(0.6, dropout=False), "reference", epochs=15, X=X, y=y)
    assert h_drop.history["loss"][-1] > h_plain.history["loss"][-1] + 0.05
