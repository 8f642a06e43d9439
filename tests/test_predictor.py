"""The per-request inference path (make_predictor, Sequential.predict on small
batches) and the Cython training loop's OpenMP path, against the reference
(the kernels' OpenMP paths: test_kernels.py, on conftest.KERNEL_THREADS)."""
import pickle

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations as A
from fastmlp.backends import reference as ref

from conftest import BACKENDS, DTYPES, Unit, assert_close, make_plan, records, unit

ALL_CODES = sorted(code for code, _, _ in A.ACTIVATIONS.values())


def _plan(d, hidden_act, out_act, extra_activation):
    """The records of Dense(d->6, hidden_act, no bias) [+ Activation(tanh)] -> Dense(6->3, out_act)."""
    units = [unit(Unit.DENSE, d, 6, hidden_act, 0, 0, 0, alpha=0.3)]
    if extra_activation:
        units.append(unit(Unit.ACTIVATION, 6, 6, A.TANH, alpha=0.3))
    w1 = d * 6
    units.append(unit(Unit.DENSE, 6, 3, out_act, 1, w1, w1 + 18, alpha=0.3))
    return records(units), w1 + 21


def _reference_forward(rec, params, X):
    plan = make_plan(rec, X.shape[0], X.dtype, params=params, training=False)
    plan.x[...] = X
    return ref.forward_units(ref, plan)


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("act", ALL_CODES)
@pytest.mark.parametrize("extra_activation", [False, True], ids=["dense", "with_activation_unit"])
def test_predictor_matches_reference(backend_name, dt, act, extra_activation):
    be = fm.get_backend(backend_name)
    rng = np.random.default_rng(act)
    d, cap = 5, 9
    rec, n_params = _plan(d, act, A.SOFTMAX if act % 2 else act, extra_activation)
    params = (rng.standard_normal(n_params) * 0.7).astype(dt)
    pred = be.make_predictor(make_plan(rec, cap, dt, params=params, training=False))
    for n in (1, 4, cap):
        X = (rng.standard_normal((n, d)) * 2).astype(dt)
        want = _reference_forward(rec, params, X)
        out = np.full((n, 3), -7.0, dt)
        assert pred.run(X, out) is True
        assert_close(out, want, dt, rtol=1e-5 if dt == np.float32 else 1e-12)
    # the parameters are held by reference: an in-place update is seen
    params *= 0.5
    X = rng.standard_normal((2, d)).astype(dt)
    want = _reference_forward(rec, params, X)
    out = np.empty((2, 3), dt)
    assert pred.run(X, out)
    assert_close(out, want, dt, rtol=1e-5 if dt == np.float32 else 1e-12)


def test_predictor_refuses_bad_input(backend_name):
    be, dt = fm.get_backend(backend_name), np.float32
    rec, n_params = _plan(4, A.RELU, A.IDENTITY, False)
    pred = be.make_predictor(make_plan(rec, 3, dt, params=np.ones(n_params, dt), training=False))
    out = np.full((1, 3), 5.0, dt)
    X = np.ones((1, 4), dt)
    X[0, 2] = np.nan
    assert pred.run(X, out) is False
    X[0, 2] = np.inf
    assert pred.run(X, out) is False
    for bad in (np.ones((1, 4), np.float64), np.ones((1, 5), dt), np.ones((4, 4), dt),
                np.ones((0, 4), dt), np.ones((1, 8), dt)[:, ::2], np.ones(4, dt)):
        with pytest.raises(ValueError, match="predictor"):
            pred.run(bad, out)
    with pytest.raises(ValueError, match="predictor"):
        pred.run(np.ones((1, 4), dt), np.empty((1, 2), dt))


def _net(backend, dtype="float32", **kw):
    model = fm.Sequential([fm.Dense(16, activation="relu"), fm.Dense(8, activation="tanh"), fm.Dense(3)],
                          input_dim=6, seed=3, backend=backend, dtype=dtype, **kw)
    model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(lr=1e-2))
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_predict_matches_batch_predict(backend_name, dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)).astype(dtype)
    y = rng.integers(0, 3, 300)
    model = _net(backend_name, dtype)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    big = model.predict(X[:200], batch_size=4096)  # general path (200 > 64 rows)
    assert model._predictor is None
    for i in (0, 17, 199):
        assert_close(model.predict(X[i:i + 1]), big[i:i + 1], dtype, rtol=1e-5 if dtype == "float32" else 1e-12)
    assert model._predictor not in (None, False)  # the small path ran
    assert_close(model.predict(X[:64]), big[:64], dtype, rtol=1e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(model.predict(X[:5]).sum(axis=1), 1.0, rtol=1e-5)
    # further training and set_weights are seen by the cached predictor
    before = model.predict(X[:1]).copy()
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    after = model.predict(X[:1])
    assert not np.allclose(before, after)
    ws = [np.zeros_like(w) for w in model.get_weights()]
    model.set_weights(ws)
    np.testing.assert_allclose(model.predict(X[:1]), np.full((1, 3), 1 / 3), rtol=1e-6)
    # a pickled model predicts the same through the same path
    model.set_weights([rng.standard_normal(w.shape) for w in ws])
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict(X[:1]), model.predict(X[:1]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_predict_poisson_returns_rates(backend_name, dtype):
    """The per-request path applies the model's inference activations, which end in exp for poisson."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 6)).astype(dtype)
    Y = rng.poisson(2.0, (100, 3)).astype(dtype)
    model = fm.Sequential([fm.Dense(8, activation="tanh"), fm.Dense(3)], input_dim=6, seed=3,
                          backend=backend_name, dtype=dtype)
    model.compile(loss="poisson", optimizer=fm.optim.Adam(lr=1e-2))
    model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    big = model.predict(X, batch_size=4096)  # general path
    assert model._predictor is None
    small = model.predict(X[:5])
    assert model._predictor not in (None, False)  # the small path ran
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert_close(small, big[:5], dtype, rtol=tol)
    W0, b0, W1, b1 = (w.astype(np.float64) for w in model.get_weights())
    rates = np.exp(np.tanh(X[:5].astype(np.float64) @ W0 + b0) @ W1 + b1)
    assert_close(small, rates, dtype, rtol=tol)


def test_small_predict_errors_like_the_general_path(backend_name):
    model = _net(backend_name)
    x = np.ones((1, 6), np.float32)
    x[0, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict(x)
    with pytest.raises(ValueError, match="features"):
        model.predict(np.ones((1, 5), np.float32))
    # other dtypes and layouts are converted, as on the general path
    z = np.ones((6, 1), np.float64).T
    np.testing.assert_allclose(model.predict(z), model.predict(np.ones((1, 6), np.float32)), rtol=1e-6)


def test_large_layers_skip_the_small_path(backend_name):
    # a product above OpenBLAS's one-thread threshold even for one row
    model = fm.Sequential([fm.Dense(600, activation="relu"), fm.Dense(2)], input_dim=500, seed=0,
                          backend=backend_name)
    model.compile(loss="mse", optimizer=fm.optim.SGD(0.1))
    x = np.random.default_rng(1).standard_normal((1, 500)).astype(np.float32)
    out = model.predict(x)
    assert model._predictor is False
    W0, b0, W1, b1 = model.get_weights()
    want = np.maximum(x.astype(np.float64) @ W0 + b0, 0) @ W1 + b1
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------- the Cython backend's OpenMP paths
@pytest.fixture
def omp():
    if "cython" not in BACKENDS:
        pytest.skip("the cython backend is not built")
    from fastmlp._native import runtime as K

    old_work = K._set_parallel_min_work(1)
    old_loop = K._set_loop_parallel(True)
    old_threads = K.get_num_threads()
    K.set_num_threads(2)
    yield K
    K.set_num_threads(old_threads)
    K._set_parallel_min_work(old_work)
    K._set_loop_parallel(old_loop)


def test_cython_parallel_training_loop_matches_serial(omp):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 12))
    y = rng.integers(0, 4, 200)

    def weights():
        model = fm.Sequential([fm.Dense(32, activation="gelu"), fm.Dense(4)], input_dim=12, seed=1,
                              dtype="float64", backend="cython")
        model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(lr=1e-2))
        model.fit(X, y, epochs=2, batch_size=16, verbose=0)
        return model.get_weights()

    parallel = weights()
    omp.set_num_threads(1)
    omp._set_loop_parallel(False)
    serial = weights()
    for a, b in zip(parallel, serial):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


# ------------------------------------------------------------ thread policy
def _blas_threads():
    from threadpoolctl import threadpool_info

    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.mark.parametrize("batch_size, hidden, expect_one", [(32, 64, True), (128, 256, False)])
def test_fit_thread_policy(backend_name, batch_size, hidden, expect_one):
    pytest.importorskip("threadpoolctl")
    seen = []
    rng = np.random.default_rng(0)
    d = 20 if expect_one else 784
    X = rng.standard_normal((2 * batch_size, d)).astype(np.float32)
    y = rng.integers(0, 2, 2 * batch_size)
    model = fm.Sequential([fm.Dense(hidden, activation="relu"), fm.Dense(2)], input_dim=d, seed=0,
                          backend=backend_name, n_threads=2)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(0.01))
    model.fit(X, y, epochs=1, batch_size=batch_size, verbose=0,
              callbacks=[lambda m, e, logs: seen.append(_blas_threads())])
    assert seen and seen[0], "no BLAS library seen"
    want = 1 if expect_one else 2
    assert set(seen[0].values()) == {want}, seen[0]
