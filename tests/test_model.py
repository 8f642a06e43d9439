"""End-to-end behaviour of Sequential: training, batching, weights, dtypes,
seeds, history, predict / evaluate, initializers, pickling, clipping, input
layouts and sample weights."""
import math
import pickle
import time

import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, Dense
from fastmlp import initializers as init_mod
from fastmlp.optim import SGD, Adam

from conftest import fd_grads_via_fit


def small_data(n=10, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.arange(n) % k


def small_model(backend_name, dtype="float64", seed=0, k=3, loss="cross_entropy", optimizer=None, input_dim=4):
    m = fastmlp.Sequential([Dense(5, "tanh"), Dense(k)], dtype=dtype, seed=seed, backend=backend_name,
                           input_dim=input_dim)
    m.compile(loss=loss, optimizer=optimizer or SGD(lr=0.1))
    return m


# ------------------------------------------------------------- learning
def test_digits_accuracy(backend_name):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, random_state=0)
    model = fastmlp.Sequential([Dense(64, "relu"), Dense(10)], seed=0, backend=backend_name)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    hist = model.fit(Xtr, ytr, epochs=20, batch_size=32, verbose=0, validation_data=(Xte, yte))
    acc = float(np.mean(np.argmax(model.predict(Xte), axis=1) == yte))
    assert acc >= 0.95
    assert hist.history["loss"][-1] < hist.history["loss"][0] / 5
    np.testing.assert_allclose(hist.history["val_accuracy"][-1], acc, atol=1e-12)
    np.testing.assert_allclose(model.evaluate(Xte, yte)["accuracy"], acc, atol=1e-12)


# ------------------------------------------------------------- batching
@pytest.mark.parametrize("batch_size,steps", [(1, 10), (3, 4), (5, 2), (10, 1), (64, 1)])
def test_steps_per_epoch(backend_name, batch_size, steps):
    X, y = small_data()
    model = small_model(backend_name)
    model.fit(X, y, epochs=1, batch_size=batch_size, verbose=0)
    assert model.optimizer.t == steps
    model.fit(X, y, epochs=2, batch_size=batch_size, verbose=0)
    assert model.optimizer.t == 3 * steps


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10])
def test_minibatches_equal_sequential_full_batch_steps(backend_name, batch_size):
    """fit with batches of b (last one partial) = one full-batch step per consecutive chunk."""
    X, y = small_data()
    a = small_model(backend_name, seed=3)
    b = small_model(backend_name, seed=3)
    hist = a.fit(X, y, epochs=1, batch_size=batch_size, shuffle=False, verbose=0)
    losses, sizes = [], []
    for start in range(0, len(X), batch_size):
        sl = slice(start, start + batch_size)
        h = b.fit(X[sl], y[sl], epochs=1, batch_size=batch_size, shuffle=False, verbose=0)
        losses.append(h.history["loss"][0])
        sizes.append(len(X[sl]))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)
    # the epoch loss is the sample-weighted mean of the batch losses
    np.testing.assert_allclose(hist.history["loss"][0], np.dot(losses, sizes) / sum(sizes), rtol=1e-12)


def test_shuffle_changes_order_but_is_seeded(backend_name):
    X, y = small_data(n=12)
    runs = []
    for shuffle in (True, True, False):
        m = small_model(backend_name, seed=11)
        m.fit(X, y, epochs=2, batch_size=3, shuffle=shuffle, verbose=0)
        runs.append(np.concatenate([w.ravel() for w in m.get_weights()]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


# ------------------------------------------------------------- weights
def test_get_set_weights_shapes_and_round_trip(backend_name):
    model = fastmlp.Sequential([Dense(5, "relu"), Dense(4, use_bias=False), Activation("tanh"), Dense(3)],
                               input_dim=7, dtype="float64", seed=0, backend=backend_name)
    ws = model.get_weights()
    assert [w.shape for w in ws] == [(7, 5), (5,), (5, 4), (4, 3), (3,)]
    assert model.count_params() == 7 * 5 + 5 + 5 * 4 + 4 * 3 + 3
    rng = np.random.default_rng(0)
    new = [rng.standard_normal(w.shape) for w in ws]
    X = rng.standard_normal((6, 7))
    model.predict(X)  # fill the inference cache; set_weights must invalidate it
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want)
    # get_weights returns copies
    model.get_weights()[0][...] = 0.0
    np.testing.assert_array_equal(model.get_weights()[0], new[0])
    h = np.maximum(X @ new[0] + new[1], 0)
    h = np.tanh(h @ new[2])
    np.testing.assert_allclose(model.predict(X), h @ new[3] + new[4], rtol=1e-12)
    # a second model set from the first predicts the same
    other = fastmlp.Sequential([Dense(5, "relu"), Dense(4, use_bias=False), Activation("tanh"), Dense(3)],
                               dtype="float64", backend=backend_name)
    other.set_weights(model.get_weights())
    assert other.input_dim == 7
    np.testing.assert_array_equal(other.predict(X), model.predict(X))


def test_set_weights_rejects_wrong_shapes(backend_name):
    model = fastmlp.Sequential([Dense(3)], input_dim=2, backend=backend_name)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        model.set_weights([np.zeros((3, 2)), np.zeros(3)])
    with pytest.raises(ValueError, match="expected 2 arrays, got 1"):
        model.set_weights([np.zeros((2, 3))])
    with pytest.raises(ValueError, match="finite"):
        model.set_weights([np.full((2, 3), np.nan), np.zeros(3)])


def test_use_bias_false_omits_bias(backend_name):
    model = fastmlp.Sequential([Dense(4, use_bias=False), Dense(2, use_bias=False)], input_dim=3,
                               backend=backend_name)
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4, 2)]
    assert model.count_params() == 3 * 4 + 4 * 2
    # and the output is exactly linear: f(0) = 0, also after training
    model.compile(loss="mse", optimizer="sgd")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=2, verbose=0)
    np.testing.assert_array_equal(model.predict(np.zeros((2, 3))), 0.0)


def test_input_dim_inferred_at_fit(backend_name):
    model = fastmlp.Sequential([Dense(5, "relu"), Dense(3)], backend=backend_name)
    assert not model.built and model.input_dim is None
    model.compile(loss="cross_entropy", optimizer="adam")
    X, y = small_data(d=6)
    model.fit(X, y, epochs=1, verbose=0)
    assert model.input_dim == 6
    assert model.get_weights()[0].shape == (6, 5)


def test_image_input_is_flattened(backend_name):
    rng = np.random.default_rng(0)
    X3 = rng.standard_normal((8, 4, 5))
    y = np.arange(8) % 3
    a = small_model(backend_name, seed=1, input_dim=None)
    b = small_model(backend_name, seed=1, input_dim=None)
    a.fit(X3, y, epochs=2, batch_size=3, verbose=0)
    b.fit(X3.reshape(8, 20), y, epochs=2, batch_size=3, verbose=0)
    assert a.input_dim == 20
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.predict(X3), b.predict(X3.reshape(8, 20)))


# ------------------------------------------------------------- dtypes and seeds
def test_float32_is_default(backend_name):
    X, y = small_data()
    model = fastmlp.Sequential([Dense(5, "tanh"), Dense(3)], seed=0, backend=backend_name)
    assert model.dtype == np.float32
    model.compile(loss="cross_entropy", optimizer="adam")
    model.fit(X, y, epochs=2, verbose=0)
    assert model._params.dtype == np.float32
    assert all(w.dtype == np.float32 for w in model.get_weights())
    assert model.predict(X).dtype == np.float32
    assert isinstance(model.evaluate(X, y)["loss"], float)


def test_float64_throughout(backend_name):
    X, y = small_data()
    model = small_model(backend_name, dtype="float64")
    model.fit(X.astype(np.float32), y, epochs=2, verbose=0)
    assert model._params.dtype == np.float64 and model._grads.dtype == np.float64
    assert all(w.dtype == np.float64 for w in model.get_weights())
    assert model.predict(X).dtype == np.float64
    assert all(v.dtype == np.float64 for v in model.optimizer.state.values())


def test_float32_and_float64_agree(backend_name):
    X, y = small_data()
    m32 = small_model(backend_name, dtype="float32", seed=4)
    m64 = small_model(backend_name, dtype="float64", seed=4)
    for w32, w64 in zip(m32.get_weights(), m64.get_weights()):
        np.testing.assert_allclose(w32, w64, rtol=1e-6)  # same draw, cast
    m32.fit(X, y, epochs=3, batch_size=4, verbose=0)
    m64.fit(X, y, epochs=3, batch_size=4, verbose=0)
    np.testing.assert_allclose(m32.predict(X), m64.predict(X), rtol=1e-4, atol=1e-5)


def test_seeds(backend_name):
    X, y = small_data()

    def trained(seed):
        m = small_model(backend_name, seed=seed, optimizer=Adam(lr=0.01))
        w0 = [w.copy() for w in m.get_weights()]
        m.fit(X, y, epochs=3, batch_size=3, verbose=0)
        return w0, m.get_weights()

    (a0, a1), (b0, b1), (c0, c1) = trained(7), trained(7), trained(8)
    for x, z in zip(a0 + a1, b0 + b1):
        np.testing.assert_array_equal(x, z)
    assert not np.allclose(a0[0], c0[0])
    assert not np.allclose(a1[0], c1[0])


# ------------------------------------------------------------- history
def test_history_keys_and_lengths(backend_name):
    X, y = small_data(n=12)
    model = small_model(backend_name)
    hist = model.fit(X, y, epochs=4, batch_size=5, verbose=0, validation_data=(X[:6], y[:6]))
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "time"}
    assert all(len(v) == 4 for v in hist.history.values())
    assert hist.epoch == [0, 1, 2, 3]
    assert all(t >= 0 for t in hist.history["time"])
    assert all(0.0 <= a <= 1.0 for a in hist.history["accuracy"] + hist.history["val_accuracy"])
    # val metrics are evaluate() on the weights at the end of the epoch
    ev = model.evaluate(X[:6], y[:6])
    np.testing.assert_allclose(hist.history["val_loss"][-1], ev["loss"], rtol=1e-12)
    np.testing.assert_allclose(hist.history["val_accuracy"][-1], ev["accuracy"], rtol=1e-12)
    assert model.history is hist

    reg = small_model(backend_name, loss="mse", k=2)
    h2 = reg.fit(X, np.ones((12, 2)), epochs=2, verbose=0)
    assert set(h2.history) == {"loss", "time"}


def test_history_accuracy_full_batch(backend_name):
    """The epoch accuracy is measured on the batch before the update."""
    X, y = small_data(n=12)
    model = small_model(backend_name)
    before = np.mean(np.argmax(model.predict(X), 1) == y)
    loss_before = model.evaluate(X, y)["loss"]
    hist = model.fit(X, y, epochs=1, batch_size=12, shuffle=False, verbose=0)
    np.testing.assert_allclose(hist.history["accuracy"][0], before)
    np.testing.assert_allclose(hist.history["loss"][0], loss_before, rtol=1e-12)


# ------------------------------------------------------------- predict / evaluate
def test_predict_probabilities_cross_entropy(backend_name):
    X, y = small_data()
    model = small_model(backend_name)
    model.fit(X, y, epochs=2, verbose=0)
    P = model.predict(X)
    assert P.shape == (10, 3)
    assert (P > 0).all() and (P < 1).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    W0, b0, W1, b1 = model.get_weights()
    Z = np.tanh(X @ W0 + b0) @ W1 + b1
    np.testing.assert_allclose(P, np.exp(Z - np.logaddexp.reduce(Z, axis=1, keepdims=True)), rtol=1e-10)


def test_predict_sigmoid_for_bce_and_raw_for_mse(backend_name):
    X, _ = small_data()
    Yb = (X[:, :2] > 0).astype(float)
    for loss, post in [("binary_cross_entropy", lambda z: 1 / (1 + np.exp(-z))), ("mse", lambda z: z)]:
        model = small_model(backend_name, loss=loss, k=2)
        model.fit(X, Yb, epochs=2, verbose=0)
        W0, b0, W1, b1 = model.get_weights()
        Z = np.tanh(X @ W0 + b0) @ W1 + b1
        np.testing.assert_allclose(model.predict(X), post(Z), rtol=1e-10, err_msg=loss)


def _poisson_data(n=60, d=4, k=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, k)) * 0.4
    return X, rng.poisson(np.exp(X @ W + 0.5)).astype(float)


@pytest.mark.parametrize("out", ["linear", "exp"])
def test_poisson_fit_predict_evaluate(backend_name, out):
    """Sequential(...).compile(loss="poisson"): the output layer gives log-rates z,
    predict returns exp(z), evaluate the weighted mean of exp(z) - y*z."""
    X, Y = _poisson_data()
    model = fastmlp.Sequential([Dense(6, "tanh"), Dense(2, "exp" if out == "exp" else None)], input_dim=4,
                               dtype="float64", seed=1, backend=backend_name)
    model.compile(loss="poisson", optimizer=Adam(lr=0.02))
    assert model._infer_acts[-1] == fastmlp.activations.EXP
    assert model._train_acts[-1] == fastmlp.activations.IDENTITY
    hist = model.fit(X, Y, epochs=15, batch_size=16, verbose=0)
    assert set(hist.history) == {"loss", "time"}  # no accuracy for a regression loss
    assert hist.history["loss"][-1] < hist.history["loss"][0] - 0.1
    W0, b0, W1, b1 = model.get_weights()
    Z = np.tanh(X @ W0 + b0) @ W1 + b1
    rates = model.predict(X)  # 60 rows: the general path
    np.testing.assert_allclose(rates, np.exp(Z), rtol=1e-10)
    np.testing.assert_allclose(model.predict(X[:7]), np.exp(Z[:7]), rtol=1e-10)  # the small path
    np.testing.assert_allclose(model.predict(X, batch_size=7), rates, rtol=1e-12)
    sw = np.linspace(0.5, 2.0, len(X))
    for w in (None, sw):
        res = model.evaluate(X, Y, sample_weight=w, batch_size=25)
        assert set(res) == {"loss"}
        ww = np.ones(len(X)) if w is None else w
        want = np.dot(ww, (np.exp(Z) - Y * Z).mean(1)) / ww.sum()
        np.testing.assert_allclose(res["loss"], want, rtol=1e-10)
    # the fitted rates are close to the data's (the model learned something)
    assert np.mean(np.abs(rates - Y)) < np.mean(np.abs(Y.mean(0) - Y))


def test_poisson_exp_output_layer_trains_like_linear(backend_name):
    """Dense(k, "exp") + poisson is the same model as Dense(k) + poisson (the exp is fused)."""
    X, Y = _poisson_data(n=30)
    models = []
    for act in (None, "exp"):
        m = fastmlp.Sequential([Dense(5, "relu"), Dense(2, act)], input_dim=4, dtype="float64", seed=4,
                               backend=backend_name)
        m.compile(loss="poisson", optimizer=SGD(lr=0.05, momentum=0.9))
        m.fit(X, Y, epochs=3, batch_size=8, verbose=0)
        models.append(m)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(models[0].predict(X), models[1].predict(X), rtol=1e-12)


def test_exp_activation_without_poisson_is_plain_exp(backend_name):
    """exp as a hidden / mse output activation: predict applies it as is."""
    X, _ = small_data()
    X = X * 0.3
    model = fastmlp.Sequential([Dense(5, "exp"), Dense(2), Activation("exp")], input_dim=4, dtype="float64",
                               seed=0, backend=backend_name)
    model.compile(loss="mse", optimizer=SGD(lr=1e-3))
    model.fit(X, np.ones((10, 2)), epochs=2, verbose=0)
    W0, b0, W1, b1 = model.get_weights()
    np.testing.assert_allclose(model.predict(X), np.exp(np.exp(X @ W0 + b0) @ W1 + b1), rtol=1e-10)


def test_predict_in_chunks_equals_whole(backend_name):
    X, y = small_data(n=25)
    model = small_model(backend_name)
    np.testing.assert_allclose(model.predict(X, batch_size=4), model.predict(X), rtol=1e-12)
    assert model.predict(X[:1]).shape == (1, 3)


@pytest.mark.parametrize("weighted", [False, True])
def test_evaluate_matches_manual(backend_name, weighted):
    X, y = small_data(n=11)
    model = small_model(backend_name)
    model.fit(X, y, epochs=2, verbose=0)
    sw = np.linspace(0.5, 2.0, 11) if weighted else None
    res = model.evaluate(X, y, sample_weight=sw)
    assert set(res) == {"loss", "accuracy"}
    P = model.predict(X)
    w = np.ones(11) if sw is None else sw
    want = np.dot(w, -np.log(P[np.arange(11), y])) / w.sum()
    np.testing.assert_allclose(res["loss"], want, rtol=1e-10)
    np.testing.assert_allclose(res["accuracy"], np.mean(np.argmax(P, 1) == y))
    # chunked evaluation is the same
    np.testing.assert_allclose(model.evaluate(X, y, sample_weight=sw, batch_size=3)["loss"], want, rtol=1e-10)


def test_evaluate_mse_and_bce(backend_name):
    X, _ = small_data(n=9)
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((9, 2))
    m = small_model(backend_name, loss="mse", k=2)
    res = m.evaluate(X, Y)
    assert set(res) == {"loss"}
    np.testing.assert_allclose(res["loss"], np.mean((m.predict(X) - Y) ** 2), rtol=1e-12)
    Yb = (Y > 0).astype(float)
    b = small_model(backend_name, loss="binary_cross_entropy", k=2)
    res = b.evaluate(X, Yb)
    P = b.predict(X)
    np.testing.assert_allclose(res["loss"], -np.mean(Yb * np.log(P) + (1 - Yb) * np.log(1 - P)), rtol=1e-10)
    np.testing.assert_allclose(res["accuracy"], np.mean((P > 0.5) == (Yb > 0.5)))


def test_evaluate_includes_l2_penalty(backend_name):
    X, _ = small_data(n=9)
    Y = np.zeros((9, 2))
    m = fastmlp.Sequential([Dense(2, l2=0.5)], input_dim=4, dtype="float64", seed=0, backend=backend_name)
    m.compile(loss="mse", optimizer="sgd")
    W, b = m.get_weights()
    want = np.mean((X @ W + b) ** 2) + 0.5 * np.sum(W**2)
    np.testing.assert_allclose(m.evaluate(X, Y)["loss"], want, rtol=1e-12)


# ------------------------------------------------------------- initializers
FORMULAS = {
    "glorot_uniform": ("uniform", lambda i, o: math.sqrt(6 / (i + o))),
    "glorot_normal": ("normal", lambda i, o: math.sqrt(2 / (i + o))),
    "he_uniform": ("uniform", lambda i, o: math.sqrt(6 / i)),
    "he_normal": ("normal", lambda i, o: math.sqrt(2 / i)),
    "lecun_uniform": ("uniform", lambda i, o: math.sqrt(3 / i)),
    "lecun_normal": ("normal", lambda i, o: math.sqrt(1 / i)),
}
FAN_IN, FAN_OUT = 300, 500


def _check_init(W, name):
    kind, p = FORMULAS[name]
    value = p(FAN_IN, FAN_OUT)
    assert abs(W.mean()) < 0.02 * value
    if kind == "uniform":  # limit = value
        assert W.max() <= value and W.min() >= -value
        assert W.max() > 0.999 * value and W.min() < -0.999 * value
        np.testing.assert_allclose(W.std(), value / math.sqrt(3), rtol=0.01)
    else:  # std = value, plain (not truncated) normal
        np.testing.assert_allclose(W.std(), value, rtol=0.01)
        assert np.abs(W).max() > 3.5 * value


@pytest.mark.parametrize("name", list(FORMULAS))
def test_initializer_statistics(name):
    model = fastmlp.Sequential([Dense(FAN_OUT, "tanh", kernel_initializer=name)], input_dim=FAN_IN,
                               dtype="float64", seed=0, backend="reference")
    W, b = model.get_weights()
    _check_init(W, name)
    np.testing.assert_array_equal(b, 0.0)


def test_initializer_aliases_and_zeros():
    m = fastmlp.Sequential([Dense(FAN_OUT, kernel_initializer="kaiming_normal")], input_dim=FAN_IN,
                           dtype="float64", seed=0, backend="reference")
    _check_init(m.get_weights()[0], "he_normal")
    m = fastmlp.Sequential([Dense(FAN_OUT, kernel_initializer="xavier_uniform")], input_dim=FAN_IN,
                           dtype="float64", seed=0, backend="reference")
    _check_init(m.get_weights()[0], "glorot_uniform")
    m = fastmlp.Sequential([Dense(3, kernel_initializer="zeros")], input_dim=4, backend="reference")
    np.testing.assert_array_equal(m.get_weights()[0], 0.0)


@pytest.mark.parametrize("act,expected", [
    ("relu", "he_uniform"), ("leaky_relu", "he_uniform"), ("elu", "he_uniform"),
    ("selu", "lecun_normal"),
    ("tanh", "glorot_uniform"), ("sigmoid", "glorot_uniform"), (None, "glorot_uniform"),
    ("softmax", "glorot_uniform"), ("exp", "glorot_uniform"),
])
def test_auto_initializer(act, expected):
    assert init_mod.resolve("auto", fastmlp.activations.resolve(act)[1]) == expected
    model = fastmlp.Sequential([Dense(FAN_OUT, act)], input_dim=FAN_IN, dtype="float64", seed=1,
                               backend="reference")
    _check_init(model.get_weights()[0], expected)


def test_auto_initializer_uses_fused_activation_layer():
    """Dense(units) + Activation('relu') is one unit: "auto" sees relu."""
    model = fastmlp.Sequential([Dense(FAN_OUT), Activation("selu")], input_dim=FAN_IN, dtype="float64",
                               seed=1, backend="reference")
    _check_init(model.get_weights()[0], "lecun_normal")


# ------------------------------------------------------------- pickling
def test_pickle_round_trip(backend_name):
    X, y = small_data()
    model = small_model(backend_name, optimizer=Adam(lr=0.01))
    model.fit(X, y, epochs=2, batch_size=3, verbose=0)
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict(X), model.predict(X))
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert clone.backend.NAME == model.backend.NAME
    # the clone's W views point into its own flat vector, and it keeps training identically
    model.fit(X, y, epochs=1, batch_size=3, shuffle=False, verbose=0)
    clone.fit(X, y, epochs=1, batch_size=3, shuffle=False, verbose=0)
    np.testing.assert_array_equal(clone.predict(X), model.predict(X))


# ------------------------------------------------------------- clipping
def test_clip_norm_bounds_the_update(backend_name):
    X, _ = small_data()
    Y = np.random.default_rng(0).standard_normal((10, 3)) * 100.0
    free = small_model(backend_name, seed=2, loss="mse", optimizer=SGD(lr=1.0))
    clipped = small_model(backend_name, seed=2, loss="mse", optimizer=SGD(lr=1.0))
    clipped.compile(loss="mse", optimizer=SGD(lr=1.0), clip_norm=0.25)
    p0 = free._params.copy()
    free.fit(X, Y, epochs=1, batch_size=10, verbose=0)
    clipped.fit(X, Y, epochs=1, batch_size=10, verbose=0)
    step_free = np.linalg.norm(free._params - p0)
    step_clipped = np.linalg.norm(clipped._params - p0)
    assert step_free > 1.0
    assert step_clipped <= 0.25 + 1e-9
    np.testing.assert_allclose(step_clipped, 0.25, rtol=1e-5)
    # same direction
    np.testing.assert_allclose((clipped._params - p0) / step_clipped, (free._params - p0) / step_free,
                               rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------- input layouts
def test_non_contiguous_and_integer_inputs(backend_name):
    rng = np.random.default_rng(0)
    base = rng.integers(-3, 4, size=(20, 8))
    y = np.arange(10) % 3
    Xc = np.ascontiguousarray(base[::2, ::2], dtype=np.float64)  # reference layout
    variants = {
        "fortran": np.asfortranarray(Xc),
        "strided": base.astype(np.float64)[::2, ::2],
        "int64": base[::2, ::2],
        "int32": base[::2, ::2].astype(np.int32),
        "float32": Xc.astype(np.float32),
        "list": Xc.tolist(),
    }
    ref_model = small_model(backend_name, seed=5)
    ref_model.fit(Xc, y, epochs=2, batch_size=3, verbose=0)
    want_w, want_p = ref_model.get_weights(), ref_model.predict(Xc)
    for name, Xv in variants.items():
        m = small_model(backend_name, seed=5)
        m.fit(Xv, y, epochs=2, batch_size=3, verbose=0)
        for a, b in zip(m.get_weights(), want_w):
            np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(m.predict(Xv), want_p, err_msg=name)
    np.testing.assert_array_equal(variants["int64"], base[::2, ::2])  # inputs are not modified


def test_labels_as_floats_column_and_list(backend_name):
    X, y = small_data()
    want = small_model(backend_name, seed=5)
    want.fit(X, y, epochs=1, batch_size=4, verbose=0)
    for yv in (y.astype(float), y.reshape(-1, 1), list(y), y.astype(np.int32)):
        m = small_model(backend_name, seed=5)
        m.fit(X, yv, epochs=1, batch_size=4, verbose=0)
        np.testing.assert_array_equal(m.get_weights()[0], want.get_weights()[0])


def test_onehot_targets_equal_integer_labels(backend_name):
    X, y = small_data()
    a = small_model(backend_name, seed=5)
    b = small_model(backend_name, seed=5)
    ha = a.fit(X, y, epochs=2, batch_size=4, verbose=0)
    hb = b.fit(X, np.eye(3)[y], epochs=2, batch_size=4, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(ha.history["accuracy"], hb.history["accuracy"])


# ------------------------------------------------------------- sample weights
@pytest.mark.parametrize("batch_size", [3, 10])
def test_sample_weight_of_twos_is_no_weight(backend_name, batch_size):
    X, y = small_data()
    a = small_model(backend_name, seed=6, optimizer=Adam(lr=0.01))
    b = small_model(backend_name, seed=6, optimizer=Adam(lr=0.01))
    ha = a.fit(X, y, epochs=3, batch_size=batch_size, verbose=0)
    hb = b.fit(X, y, epochs=3, batch_size=batch_size, verbose=0, sample_weight=np.full(10, 2.0))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "binary_cross_entropy"])
def test_integer_weights_equal_duplicated_rows(backend_name, loss):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 4))
    y = {"cross_entropy": np.arange(8) % 3, "mse": rng.standard_normal((8, 3)),
         "binary_cross_entropy": (rng.random((8, 3)) < 0.5).astype(float)}[loss]
    w = np.array([1, 2, 3, 1, 1, 2, 1, 4])
    a = small_model(backend_name, seed=2, loss=loss)
    b = small_model(backend_name, seed=2, loss=loss)
    la, ga = fd_grads_via_fit(a, X, y, sample_weight=w)
    lb, gb = fd_grads_via_fit(b, np.repeat(X, w, axis=0), np.repeat(y, w, axis=0))
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a.evaluate(X, y, sample_weight=w)["loss"],
                               b.evaluate(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0))["loss"], rtol=1e-12)


def test_zero_weight_rows_are_ignored(backend_name):
    X, y = small_data()
    w = np.ones(10)
    w[[1, 4]] = 0.0
    keep = w > 0
    a = small_model(backend_name, seed=2)
    b = small_model(backend_name, seed=2)
    la, ga = fd_grads_via_fit(a, X, y, sample_weight=w)
    lb, gb = fd_grads_via_fit(b, X[keep], y[keep])
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("opt", ["sgd_nesterov", "rmsprop", "adam"])
def test_native_training_matches_reference_after_shuffled_epochs(native_name, opt):
    # the whole step loop in native code: gather by a seeded permutation, forward, fused loss,
    # backward, update; two epochs with a last partial batch, float64, to rounding
    rng = np.random.default_rng(7)
    X = rng.standard_normal((203, 9))
    y = rng.integers(0, 4, 203)

    def train(backend):
        m = fastmlp.Sequential([Dense(16, activation="gelu"), Dense(12, activation="tanh", l2=1e-3),
                                Dense(4)], input_dim=9, dtype="float64", seed=11, backend=backend)
        optimizer = {"sgd_nesterov": lambda: fastmlp.optim.SGD(0.05, momentum=0.9, nesterov=True),
                     "rmsprop": lambda: fastmlp.optim.RMSprop(1e-3),
                     "adam": lambda: fastmlp.optim.Adam(1e-2)}[opt]()
        m.compile(loss="cross_entropy", optimizer=optimizer)
        hist = m.fit(X, y, epochs=2, batch_size=16, shuffle=True, verbose=0)
        return m.get_weights(), hist.history["loss"]

    (w_ref, l_ref), (w_nat, l_nat) = train("reference"), train(native_name)
    np.testing.assert_allclose(l_nat, l_ref, rtol=1e-11)
    for a, b in zip(w_nat, w_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # and training moved the weights (the comparison is not between two untouched models)
    w0 = fastmlp.Sequential([Dense(16, activation="gelu"), Dense(12, activation="tanh"), Dense(4)],
                            input_dim=9, dtype="float64", seed=11).get_weights()
    assert not np.allclose(w0[0], w_ref[0])


def test_cython_loop_phase_times():
    kernels = pytest.importorskip("fastmlp._native.runtime")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 30)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    m = fastmlp.Sequential([Dense(64, activation="relu"), Dense(2)], input_dim=30, seed=0, backend="cython")
    m.compile(loss="cross_entropy", optimizer=Adam(1e-3))
    m.fit(X, y, epochs=1, batch_size=50, verbose=0)
    kernels.loop_phase_times(reset=True)
    m.fit(X, y, epochs=1, batch_size=50, verbose=0)
    assert set(kernels.loop_phase_times().values()) == {0.0}  # off by default: nothing timed
    try:
        kernels.loop_phase_times(enable=True)
        t = time.perf_counter()
        m.fit(X, y, epochs=2, batch_size=50, verbose=0)
        wall = time.perf_counter() - t
        times = kernels.loop_phase_times()
    finally:
        kernels.loop_phase_times(enable=False)
    assert [p for p in times if not p.endswith(" products")] == list(kernels.PHASES)
    for phase in ("gather", "forward products", "forward", "loss", "backward products", "backward",
                  "param grads products", "param grads", "update"):
        assert times[phase] > 0.0, (phase, times)
    assert sum(times.values()) <= wall  # the loop is part of fit
    assert set(kernels.loop_phase_times().values()) == {0.0}  # read with reset


def test_cython_loop_same_weights_with_either_blas():
    # NumPy's bundled OpenBLAS and scipy's give the same training to rounding (float64).
    from fastmlp._native import gemm as _kernels
    from fastmlp.backends import cython_backend

    found = cython_backend._numpy_openblas()
    if found is None:
        pytest.skip("NumPy here does not bundle its own OpenBLAS: the kernels use scipy's only")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 40))
    y = rng.integers(0, 3, 300)
    weights = []
    for choice in (found, (0, 0, "scipy")):
        _kernels._use_blas64(*choice)
        try:
            m = fastmlp.Sequential([Dense(200, activation="relu"), Dense(3)], input_dim=40, seed=0,
                                   backend="cython", dtype="float64")
            m.compile(loss="cross_entropy", optimizer=Adam(1e-3))
            m.fit(X, y, epochs=2, batch_size=100, verbose=0)
            weights.append(m.get_weights())
        finally:
            _kernels._use_blas64(*found)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [7, 300], ids=["per-request path", "general path"])
def test_predict_and_evaluate_from_several_threads_give_the_serial_results(backend_name, rows):
    # both paths fill the model's cached inference buffers: threads must take turns
    from concurrent.futures import ThreadPoolExecutor
    model = fastmlp.Sequential([fastmlp.Dense(16, activation="relu"), fastmlp.Dense(3)], input_dim=5, seed=0,
                               backend=backend_name)
    model.compile(loss="cross_entropy", optimizer="sgd")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((rows, 5)).astype(np.float32) for _ in range(16)]
    labels = [rng.integers(0, 3, rows) for _ in range(16)]
    want = [model.predict(x) for x in inputs]
    want_eval = [model.evaluate(x, y)["loss"] for x, y in zip(inputs, labels)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(20):
            got = list(pool.map(model.predict, inputs))
            got_eval = list(pool.map(lambda xy: model.evaluate(*xy)["loss"], zip(inputs, labels)))
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            assert got_eval == want_eval
    assert pickle.loads(pickle.dumps(model)).predict(inputs[0]).tolist() == want[0].tolist()
