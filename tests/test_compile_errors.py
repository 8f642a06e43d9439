"""A compile that raises leaves the previous compile in place: the loss, the optimizer
(its state and step count), the clipping, and so the next fit's weights."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Dense
from fastmlp.optim import SGD, Adam


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((48, 6)), rng.integers(0, 3, 48)


def model(backend, units=3):
    return fastmlp.Sequential([Dense(8, activation="relu"), Dense(units)], input_dim=6, seed=1, backend=backend,
                              dtype="float64")


def fit(m):
    X, y = data()
    m.fit(X, y, epochs=2, batch_size=8, verbose=0)


def failed_compiles(m, other):
    """Every way a compile of m can fail after a good one: (kwargs, match)."""
    return [
        (dict(optimizer="adagrad"), "Unknown optimizer 'adagrad'"),
        (dict(optimizer=m.optimizer, clip_norm=-1.0), r"clip_norm must be a finite number > 0, got -1\.0"),
        (dict(loss="mse", optimizer=SGD(lr=0.5), clip_norm=float("inf")), "clip_norm must be a finite number > 0"),
        (dict(loss="hinge", optimizer=m.optimizer), r"Unknown loss 'hinge'"),
        (dict(loss="nll", optimizer=SGD(lr=0.5)), r"Loss 'nll' needs an output activation of 'log_softmax'"),
        (dict(loss="mse", optimizer=other.optimizer), "already the optimizer of another model"),
    ]


@pytest.mark.parametrize("fitted", [False, True])
def test_failed_compile_keeps_the_previous_one(backend_name, fitted):
    m, clean = model(backend_name), model(backend_name)
    for each in (m, clean):
        each.compile("cross_entropy", Adam(lr=0.01), clip_norm=0.5)
        if fitted:
            fit(each)  # the optimizer has state and a step count a failed compile must not reset
    other = model(backend_name)
    other.compile("cross_entropy", Adam())
    loss, opt, t = m._loss, m.optimizer, m.optimizer.t
    state = None if opt.state is None else {k: v.copy() for k, v in opt.state.items()}
    for kwargs, match in failed_compiles(m, other):
        with pytest.raises(ValueError, match=match):
            m.compile(**{"loss": "cross_entropy", **kwargs})
        assert m._loss is loss and m._loss_kind == loss.kind and m.optimizer is opt and m.clip_norm == 0.5
        assert opt.t == t and opt._owner() is m
        if state is not None:
            for name, vec in state.items():
                np.testing.assert_array_equal(opt.state[name], vec)
    fit(m)
    fit(clean)
    for a, b in zip(m.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(a, b)  # as if the failed compiles had never happened
    np.testing.assert_array_equal(m.predict(data()[0]), clean.predict(data()[0]))


def test_failed_compile_of_a_one_unit_model(backend_name):
    m = model(backend_name, units=1)
    m.compile("mse", SGD(lr=0.1))
    with pytest.raises(ValueError, match="Loss 'cross_entropy' needs an output layer of at least 2 units"):
        m.compile("cross_entropy", "adam")
    assert m._loss.name == "mse" and isinstance(m.optimizer, SGD)
    X, _ = data()
    y = X[:, 0]
    m.fit(X, y, epochs=1, verbose=0)  # still trains as the mse model it was compiled as
    ref = model(backend_name, units=1)
    ref.compile("mse", SGD(lr=0.1))
    ref.fit(X, y, epochs=1, verbose=0)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
