"""Training diagnostics (fastmlp.diagnostics): the loop's statistics against a NumPy
recomputation on the same step for every backend and loop path, the per-epoch arrays,
the findings on deliberately broken nets and their absence on healthy ones, the warnings,
the thresholds and the Monitor callback."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import fastmlp as fm
from fastmlp import diagnostics as dg
from fastmlp._native import plan as P
from fastmlp.model import TrainingDivergedError

from conftest import BACKENDS, DTYPES

D = fm.Dense
FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
KEYS = ("grad_norm", "update_ratio", "act_mean", "act_std", "dead_share", "saturated_share")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def _paths():
    out = [("reference", False)]
    if "numba" in BACKENDS:
        out.append(("numba", False))
    if "cython" in BACKENDS:
        out += [("cython", False), ("cython", True)]
    return out


@pytest.fixture
def split_limits():
    """Let the Cython loop split any step between its threads (restored after)."""
    LP = pytest.importorskip("fastmlp._native.loop")
    old = LP._set_loop_split_limits(0, 2)
    yield LP
    LP._set_loop_split_limits(*old)
    fm.get_backend("cython").set_num_threads(1)


def _one_step_model(backend, dt, d):
    # relu (dead shares), tanh and sigmoid (saturated shares) and an L2 term; widths of 16-column
    # panels so that the split float32 loop keeps them packed
    m = fm.Sequential([D(64, "relu", l2=0.01), D(48, "tanh"), D(32, "sigmoid"), D(3)], dtype=dt, seed=1,
                      backend=backend)
    m.compile("cross_entropy", fm.optim.SGD(0.1, momentum=0.9))
    m.build(d)
    W = m.get_weights()
    W[0] *= 4.0  # big enough that some tanh and sigmoid units saturate on some rows
    W[1][:] -= 0.5  # and some relu units are 0 on most rows
    m.set_weights(W)
    m.optimizer.init_state(m._params.size, m.dtype)
    return m


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend,split", _paths(), ids=lambda v: str(v))
def test_statistics_match_a_numpy_recomputation_of_the_step(request, backend, split, dt):
    LP = request.getfixturevalue("split_limits") if split else None
    rng = np.random.default_rng(3)
    n, d, rows = 96, 40, 32
    X = rng.standard_normal((n, d)).astype(dt)
    y = rng.integers(0, 3, n).astype(np.int64)
    m = _one_step_model(backend, dt, d)
    if split:
        m.backend.set_num_threads(2)
    plan = m._make_plan(m._train_acts, rows, training=True, dropout=True)
    loop = m.optimizer.loop_state(0.0, 0, 1)
    assert list(loop.diagnose_steps(plan, 1, 1, 0)) == [0]
    before = m._params.astype(np.float64)
    losses, correct = np.zeros(1), np.zeros(1)
    order = rng.permutation(n).astype(np.int64)
    assert m.backend.train_steps(plan, loop, X, y, np.empty(0, dt), order, 5, 1, losses, correct) == 1
    if split:
        assert LP._last_loop_threads() == 2
        if dt == np.float32 and LP._PACKED_MIN_WEIGHTS <= 1536:
            assert LP._last_loop_packed()
    tol = 2e-5 if dt == np.float32 else 1e-12
    units = loop.diag_units[0].sum(axis=0)  # the threads' shares added
    off = 0
    for i, u in enumerate(m._units):
        a = plan.A[i].astype(np.float64)
        f = loop.diag_feats[0, off:off + u.fan_out]
        np.testing.assert_allclose(f[:, 0], a.sum(axis=0), rtol=tol, atol=tol * rows)
        np.testing.assert_allclose(f[:, 1], (a * a).sum(axis=0), rtol=tol)
        np.testing.assert_array_equal(f[:, 2], (a != 0).sum(axis=0))
        deriv = {fm.activations.TANH: 1 - a * a, fm.activations.SIGMOID: a * (1 - a)}.get(m._train_acts[i])
        want = np.zeros(u.fan_out) if deriv is None else (deriv < P.DIAG_SATURATED).sum(axis=0)
        np.testing.assert_array_equal(f[:, 3], want)
        off += u.fan_out
        w0, n_w = u.w_off, u.fan_in * u.fan_out
        g = m._grads[w0:w0 + n_w].astype(np.float64)
        w_before, w_after = before[w0:w0 + n_w], m._params[w0:w0 + n_w].astype(np.float64)
        np.testing.assert_allclose(units[i], [g @ g, (w_after - w_before) @ (w_after - w_before),
                                              w_before @ w_before], rtol=tol * 10)
    # the counts are not trivially 0 or full: some saturated rows, some relu outputs at 0
    assert (loop.diag_feats[0, :, 3] > 0).any() and (loop.diag_feats[0, :64, 2] < rows).any()


def test_sampled_steps_and_their_slots():
    assert list(P.diag_steps(7, 3, 2)) == [1, 4]
    assert list(P.diag_steps(7, 3, 0)) == [0, 3, 6]
    assert list(P.diag_steps(2, 16, 5)) == []


@pytest.mark.parametrize("backend,split", [p for p in _paths() if p[0] != "reference"], ids=lambda v: str(v))
def test_native_diagnostics_equal_the_reference_over_a_fit(request, digits, backend, split):
    # the sampled steps' slots, several calls per epoch and the last partial batch: float64
    if split:
        request.getfixturevalue("split_limits")
    X, y = digits
    out = {}
    for name in ("reference", backend):
        m = fm.Sequential([D(64, "relu", l2=1e-3), D(16, "tanh"), D(10)], dtype="float64", seed=0, backend=name,
                          n_threads=2 if split and name == backend else 1)
        m.compile("cross_entropy", fm.optim.Adam(3e-3))
        m.fit(X[:700], y[:700], epochs=3, batch_size=128, verbose=0, diagnostics=True, diagnostics_every=3)
        out[name] = m.diagnostics_
        if split and name == backend:
            assert request.getfixturevalue("split_limits")._last_loop_threads() == 2
    for key in KEYS + ("first_last_ratio", "loss"):
        np.testing.assert_allclose(out[backend][key], out["reference"][key], rtol=1e-8, err_msg=key)


def _fit(layers, X, y, opt, epochs=5, batch_size=32, setup=None, loss="cross_entropy", backend=None, **fit):
    m = fm.Sequential(layers, seed=0, backend=backend)
    m.compile(loss, opt)
    m.build(X.shape[1])
    if setup is not None:
        setup(m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            m.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0, diagnostics=fit.pop("diagnostics", True),
                  **fit)
        except TrainingDivergedError as exc:
            m.diverged, m.diverged_message = True, str(exc)
    m.warned = [w for w in caught if issubclass(w.category, dg.TrainingDynamicsWarning)]
    return m


def test_layer_names_of_every_kind():
    m = fm.Sequential([D(16, "relu"), D(10), fm.Activation("tanh"), fm.BatchNorm(), D(8), fm.PReLU(),
                       fm.Maxout(4, pieces=2), fm.Activation("linear"), D(3)], seed=0)
    m.compile("cross_entropy", "adam")
    rng = np.random.default_rng(0)
    m.fit(rng.random((64, 5)).astype(np.float32), rng.integers(0, 3, 64), epochs=1, verbose=0, diagnostics=True)
    d = m.diagnostics_
    assert d["layers"] == ["dense_0 (Dense 16, relu)", "dense_1 (Dense 10, tanh)", "batch_norm_0 (BatchNorm 10)",
                           "dense_2 (Dense 8, identity)", "prelu_0 (PReLU 8)", "maxout_0 (Maxout 4, pieces 2)",
                           "dense_3 (Dense 3, identity)"]
    np.testing.assert_array_equal(d["layer_index"], [0, 1, 3, 4, 5, 6, 8])
    has_w = np.isfinite(d["grad_norm"][0])
    np.testing.assert_array_equal(has_w, [True, True, False, True, False, True, True])
    np.testing.assert_array_equal(np.isfinite(d["dead_share"][0]), [True, False, False, False, True, False, False])
    np.testing.assert_array_equal(np.isfinite(d["saturated_share"][0]), [False, True] + [False] * 5)


def test_diagnostics_keys_and_shapes(digits):
    X, y = digits
    m = _fit([D(32, "relu"), D(16, "sigmoid"), fm.Dropout(0.2), D(10)], X, y, fm.optim.Adam(1e-3), epochs=2)
    d = m.diagnostics_
    assert d["layers"] == ["dense_0 (Dense 32, relu)", "dense_1 (Dense 16, sigmoid)", "dense_2 (Dense 10, identity)"]
    np.testing.assert_array_equal(d["layer_index"], [0, 1, 3])
    np.testing.assert_array_equal(d["epoch"], [1, 2])
    for key in KEYS:
        assert d[key].shape == (2, 3) and d[key].dtype == np.float64
    assert np.isnan(d["dead_share"][:, 1:]).all() and np.isfinite(d["dead_share"][:, 0]).all()
    assert np.isnan(d["saturated_share"][:, [0, 2]]).all() and np.isfinite(d["saturated_share"][:, 1]).all()
    np.testing.assert_allclose(d["first_last_ratio"], d["grad_norm"][:, 0] / d["grad_norm"][:, 2])
    np.testing.assert_allclose(d["loss"], m.history.history["loss"])
    assert m.history.diagnostics is d


def test_diagnostics_do_not_change_training_and_accumulate(digits):
    X, y = digits
    for backend in BACKENDS:
        runs = []
        for on in (False, True):
            m = fm.Sequential([D(32, "relu"), fm.Dropout(0.1), D(10)], seed=3, backend=backend)
            m.compile("cross_entropy", fm.optim.SGD(0.05, momentum=0.9), clip_norm=1.0)
            h = m.fit(X[:500], y[:500], epochs=2, batch_size=50, verbose=0, diagnostics=on, diagnostics_every=2)
            runs.append(m.get_weights())
            if not on:
                assert not hasattr(m, "diagnostics_") and h.diagnostics is None
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b, err_msg=backend)
    d = m.diagnostics_
    m.fit(X[:500], y[:500], epochs=1, verbose=0, diagnostics=True)  # a new fit appends its epochs
    assert m.diagnostics_ is d and list(d["epoch"]) == [1, 2, 3] and d["grad_norm"].shape == (3, 2)
    m.fit(X[:500], y[:500], epochs=1, verbose=0)  # off: no change
    assert m.diagnostics_ is d and list(d["epoch"]) == [1, 2, 3]
    m.compile("cross_entropy", "adam")
    assert not hasattr(m, "diagnostics_")
    with pytest.raises(ValueError, match="no diagnostics"):
        m.diagnose()


# ------------------------------------------------------------------ broken nets are caught
def _kinds(m):
    return {(f.kind, f.layer) for f in m.diagnose()}


def _scaled_weights(std, seed=1):
    def setup(m):
        rng = np.random.default_rng(seed)
        m.set_weights([rng.normal(0, std, w.shape).astype(w.dtype) if w.ndim == 2 else w for w in m.get_weights()])
    return setup


def test_deep_sigmoid_with_large_weights_saturates(digits):
    X, y = digits
    m = _fit([D(32, "sigmoid") for _ in range(6)] + [D(10)], X, y, fm.optim.SGD(0.1), epochs=3,
             setup=_scaled_weights(4.0))
    kinds = _kinds(m)
    assert ("saturation", 0) in kinds and ("poor_initialization", 0) in kinds
    f = next(f for f in m.diagnose() if f.kind == "saturation" and f.layer == 0)
    assert f.value > dg.Thresholds().saturated_share and "sigmoid" in f.advice and "SGD lr=0.1" in f.advice


def test_deep_sigmoid_gradient_vanishes(digits):
    X, y = digits
    m = _fit([D(32, "sigmoid") for _ in range(10)] + [D(10)], X, y, fm.optim.SGD(0.1), epochs=2)
    f = [f for f in m.diagnose() if f.kind == "vanishing_gradient"]
    assert len(f) == 1 and f[0].layer == 0 and f[0].value < 1e-3 and f[0].epoch == 1
    assert m.diagnostics_["first_last_ratio"][-1] < 1e-3 and "relu" in f[0].advice


def test_relu_with_very_negative_biases_is_dead(digits):
    X, y = digits

    def negative_biases(m):
        W = m.get_weights()
        m.set_weights([w - 10 if w.ndim == 1 and i < len(W) - 1 else w for i, w in enumerate(W)])
    m = _fit([D(64, "relu"), D(32, "relu"), D(10)], X, y, fm.optim.Adam(1e-3), epochs=2, setup=negative_biases)
    dead = [f for f in m.diagnose() if f.kind == "dead_units"]
    assert [f.layer for f in dead] == [0, 1] and all(f.value == 1.0 for f in dead)
    assert "100% of units dead since epoch 1 with Adam lr=0.001" in dead[0].advice
    assert "leaky_relu / elu / prelu" in dead[0].advice


def test_huge_learning_rate_is_non_finite_and_names_the_layer_and_step(digits):
    X, y = digits
    m = _fit([D(64, "relu") for _ in range(4)] + [D(10)], X, y, fm.optim.SGD(1.0, momentum=0.9), epochs=3)
    assert getattr(m, "diverged", False)
    where = m.diverged_message.split("The loss became ")[1].split(" at ")[1].split(".")[0]  # "epoch 1, step 13"
    assert f"at {where} with SGD lr=1" in next(f.advice for f in m.diagnose() if f.kind == "non_finite")
    f = [f for f in m.diagnose() if f.kind in ("non_finite", "exploding_gradient")]
    assert f and f[0].kind == "non_finite" and f[0].layer is not None
    assert "step" in f[0].advice and "clip_norm" in f[0].advice
    assert any("NaN or infinity" in str(w.message) for w in m.warned)
    # recomputed with the reference backend: the layer where the values first stop being finite
    rec = m._diag.non_finite
    assert rec[3] in ("output", "gradient", "loss", "weights")


def test_exploding_gradient_from_huge_initial_weights(digits):
    X, y = digits
    m = _fit([D(64, "relu") for _ in range(5)] + [D(10)], X, y, fm.optim.Adam(1e-3), epochs=2,
             setup=_scaled_weights(1.0))
    kinds = {k for k, _ in _kinds(m)}
    assert "exploding_gradient" in kinds and "poor_initialization" in kinds
    f = next(f for f in m.diagnose() if f.kind == "poor_initialization")
    assert "grows" in f.advice and f.value > dg.Thresholds().init_std_ratio


def test_glorot_on_a_deep_relu_net_is_poor_initialization(digits):
    X, y = digits
    m = _fit([D(64, "relu", kernel_initializer="glorot_uniform") for _ in range(8)] + [D(10)], X, y,
             fm.optim.Adam(1e-3), epochs=1)
    f = [f for f in m.diagnose() if f.kind == "poor_initialization"]
    assert {x.layer for x in f} == set(range(8)) and all(x.epoch == 0 for x in f)
    assert "glorot_uniform initialization for relu; use He" in f[0].advice
    # the forward pass at initialization shows the collapse the mismatch causes
    std = m.diagnostics_["init_act_std"]
    assert std[7] < std[0] / dg.Thresholds().init_std_ratio


def test_tiny_learning_rate_loss_not_decreasing(digits):
    X, y = digits
    m = _fit([D(32, "relu"), D(10)], X, y, fm.optim.SGD(1e-9), epochs=5)
    f = [f for f in m.diagnose() if f.kind == "loss_not_decreasing"]
    assert len(f) == 1 and f[0].layer is None and f[0].epoch == 4 and "raise the learning rate" in f[0].advice


# ------------------------------------------------------------------ healthy nets are not
def test_healthy_relu_he_adam_on_digits_has_no_findings(digits):
    X, y = digits
    m = _fit([D(64, "relu"), D(64, "relu"), D(10)], X, y, fm.optim.Adam(1e-3), epochs=12)
    assert m.diagnose() == [] and m.warned == []
    assert m.diagnostics_["loss"][-1] < 0.2


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not found")
def test_healthy_relu_he_adam_on_fashion_mnist_has_no_findings():
    (X, y), _ = fm.datasets.load_fashion_mnist(FASHION)
    X, y = X[:5000].astype(np.float32), y[:5000]
    m = _fit([D(128, "relu"), D(64, "relu"), D(10)], X, y, fm.optim.Adam(1e-3), epochs=6, batch_size=64)
    assert m.diagnose() == [] and m.warned == []
    assert m.diagnostics_["loss"][-1] < 0.5


# ------------------------------------------------------------------ warnings, thresholds, Monitor
def test_warnings_once_per_kind_and_layer(digits):
    X, y = digits

    def negative_biases(m):
        W = m.get_weights()
        m.set_weights([w - 10 if w.ndim == 1 and i < len(W) - 1 else w for i, w in enumerate(W)])
    m = _fit([D(64, "relu"), D(32, "relu"), D(10)], X, y, fm.optim.Adam(1e-3), epochs=5, setup=negative_biases)
    kinds = [(f.kind, f.layer) for f in m.diagnose()]
    assert len(m.warned) == len(set(kinds)) == len(kinds) >= 3  # dead 0, dead 1, loss not decreasing
    # each finding warned once, when it first held (its figures may have moved since)
    assert sorted(str(w.message)[:40] for w in m.warned) == sorted(f.advice[:40] for f in m.diagnose())
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        m.fit(X, y, epochs=2, verbose=0, diagnostics=True)
    assert not [w for w in again if issubclass(w.category, dg.TrainingDynamicsWarning)]


def test_thresholds_are_user_settable(digits):
    X, y = digits
    m = _fit([D(64, "relu"), D(64, "relu"), D(10)], X, y, fm.optim.Adam(1e-3), epochs=2)
    assert m.diagnose() == []
    strict = dg.Thresholds(dead_share=1e-3)
    assert {f.kind for f in m.diagnose(strict)} == {"dead_units"}
    assert {f.kind for f in dg.diagnose(m, strict)} == {"dead_units"}
    m2 = _fit([D(64, "relu"), D(64, "relu"), D(10)], X, y, fm.optim.Adam(1e-3), epochs=2, diagnostics=strict)
    assert m2.warned and all("dead" in str(w.message) for w in m2.warned)
    assert {f.kind for f in m2.diagnose()} == {"dead_units"}  # the fit's thresholds stay the default
    for bad in (dict(dead_share=1.5), dict(vanishing_ratio=-1.0), dict(loss_patience=0), dict(exploding_norm=np.nan)):
        with pytest.raises(ValueError):
            dg.Thresholds(**bad)


def test_monitor_callback_turns_diagnostics_on(digits):
    X, y = digits
    mon = dg.Monitor(thresholds=dg.Thresholds(dead_share=1e-3), every=4)
    m = fm.Sequential([D(64, "relu"), D(64, "relu"), D(10)], seed=0)
    m.compile("cross_entropy", "adam")
    with pytest.warns(dg.TrainingDynamicsWarning, match="units dead"):
        m.fit(X, y, epochs=2, verbose=0, callbacks=[mon])
    assert list(m.diagnostics_["epoch"]) == [1, 2] and m._diag.every == 4
    assert mon.findings and mon.findings[0].kind == "dead_units" and isinstance(mon.findings[0], dg.Finding)


def test_bad_diagnostics_arguments_fail_before_any_work(digits):
    X, y = digits
    m = fm.Sequential([D(8, "relu"), D(10)], seed=0)
    m.compile("cross_entropy", "adam")
    m.build(X.shape[1])
    w = m.get_weights()
    with pytest.raises(TypeError, match="diagnostics must be"):
        m.fit(X, y, diagnostics="yes", verbose=0)
    with pytest.raises(ValueError, match="diagnostics_every"):
        m.fit(X, y, diagnostics=True, diagnostics_every=0, verbose=0)
    assert not hasattr(m, "diagnostics_")
    for a, b in zip(w, m.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_rejects_diagnostics_buffers_of_the_wrong_size(backend):
    m = fm.Sequential([D(8, "relu"), D(3)], seed=0, backend=backend)
    m.compile("cross_entropy", "sgd")
    m.build(5)
    m.optimizer.init_state(m._params.size, m.dtype)
    plan = m._make_plan(m._train_acts, 4, training=True, dropout=True)
    X, y = np.zeros((8, 5), m.dtype), np.zeros(8, np.int64)
    order, out = np.arange(8, dtype=np.int64), np.zeros(2)
    before = m._params.copy()
    for change in ("units", "feats", "every"):
        loop = m.optimizer.loop_state(0.0, 0, 2)
        loop.diagnose_steps(plan, 2, 1)
        if change == "units":
            loop.diag_units = loop.diag_units[:1].copy()
        elif change == "feats":
            loop.diag_feats = np.zeros((2, 10, 4))
        else:
            loop.diag_every = -1
        with pytest.raises(ValueError, match="diag"):
            m.backend.train_steps(plan, loop, X, y, np.empty(0, m.dtype), order, 0, 2, out, out.copy())
    np.testing.assert_array_equal(m._params, before)


def test_estimators_diagnostics(digits):
    pytest.importorskip("sklearn")
    X, y = digits
    clf = fm.MLPClassifier(hidden_layer_sizes=(32,), max_iter=3, diagnostics=True, random_state=0, verbose=0)
    clf.fit(X, y)
    assert list(clf.diagnostics_["epoch"]) == [1, 2, 3] and clf.diagnose() == []
    plain = fm.MLPClassifier(hidden_layer_sizes=(32,), max_iter=3, random_state=0).fit(X, y)
    assert not hasattr(plain, "diagnostics_")
    for a, b in zip(clf.coefs_, plain.coefs_):
        np.testing.assert_array_equal(a, b)
    reg = fm.MLPRegressor(hidden_layer_sizes=(16,), max_iter=2, diagnostics=True, random_state=0)
    reg.fit(X, y.astype(np.float32))
    assert reg.diagnostics_["grad_norm"].shape == (2, 2)
    with pytest.raises(ValueError, match="lbfgs"):
        fm.MLPClassifier(solver="lbfgs", diagnostics=True).fit(X, y)


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_split_and_packed_loops_train_the_same_with_diagnostics(split_limits, dt):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((256, 48)).astype(dt), rng.integers(0, 4, 256)
    weights = []
    for on in (False, True):
        m = fm.Sequential([D(64, "relu", l2=1e-3), D(32, "tanh"), D(4)], dtype=dt, seed=2, backend="cython",
                          n_threads=2)
        m.compile("cross_entropy", fm.optim.Adam(1e-3))
        m.fit(X, y, epochs=2, batch_size=128, verbose=0, diagnostics=on, diagnostics_every=2)
        assert split_limits._last_loop_threads() == 2
        if dt == np.float32 and split_limits._PACKED_MIN_WEIGHTS <= 2048:
            assert split_limits._last_loop_packed()
        weights.append(m._params.copy())
    np.testing.assert_array_equal(weights[0], weights[1])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_residual_blocks_are_diagnosed_like_the_reference(digits, backend):
    """A block's own layers are diagnosed where they are; the block's output (and its projection's
    gradient) is an entry of its own; the native loops' statistics equal the reference's."""
    X, y = digits
    out = {}
    for name in ("reference", backend):
        m = fm.Sequential([D(32, "relu"), fm.Residual([D(32, "relu"), D(32)], activation="relu"),
                           fm.Residual([D(16, "relu"), D(16)], activation="relu"), D(10)],
                          dtype="float64", seed=0, backend=name, n_threads=1)
        m.compile("cross_entropy", fm.optim.Adam(3e-3))
        with warnings.catch_warnings():
            warnings.simplefilter("error", dg.TrainingDynamicsWarning)  # a healthy net
            m.fit(X[:700], y[:700], epochs=3, batch_size=128, verbose=0, diagnostics=True, diagnostics_every=2)
        out[name] = m.diagnostics_
    d = out[backend]
    assert d["layers"] == ["dense_0 (Dense 32, relu)", "residual_0 (Residual 32, relu)", "dense_1 (Dense 32, relu)",
                           "dense_2 (Dense 32, identity)", "residual_1 (Residual 16, relu)",
                           "dense_3 (Dense 16, relu)", "dense_4 (Dense 16, identity)", "dense_5 (Dense 10, identity)"]
    np.testing.assert_array_equal(d["layer_index"], [0, 1, 2, 3, 4, 5, 6, 7])
    # a block's entry has its output's statistics, not its projection's gradient (the loop gathers none)
    np.testing.assert_array_equal(np.isfinite(d["grad_norm"][0]), [True, False, True, True, False, True, True, True])
    np.testing.assert_array_equal(np.isfinite(d["dead_share"][0]), [True, True, True, False, True, True, False, False])
    for key in KEYS + ("first_last_ratio", "loss"):
        np.testing.assert_allclose(d[key], out["reference"][key], rtol=1e-8, err_msg=key)
    assert m.diagnose() == []


def test_the_rules_on_measured_statistics_moved_past_each_threshold(digits):
    # each rule against its threshold, on a healthy run's arrays moved just past it and just short of it
    X, y = digits
    m = _fit([D(32, "relu"), D(16, "tanh"), D(10)], X[:400], y[:400], fm.optim.Adam(1e-3), epochs=4)
    assert m.diagnose() == []
    d, th = m.diagnostics_, dg.Thresholds()
    g = d["grad_norm"].copy()
    for factor, found in ((0.9, False), (1.1, True)):
        d["grad_norm"][-1, 1] = g[0, 1] * th.exploding_growth * factor
        hit = [f for f in m.diagnose() if f.kind == "exploding_gradient"]
        assert bool(hit) == found and (not found or (hit[0].layer == 1 and hit[0].epoch == 4
                                                     and abs(hit[0].value - th.exploding_growth * 1.1) < 1e-6))
    d["grad_norm"][...] = g
    for factor, found in ((1.1, False), (0.9, True)):
        d["grad_norm"][:, 0] = g[:, 2] * th.vanishing_ratio * factor
        assert any(f.kind == "vanishing_gradient" and f.layer == 0 for f in m.diagnose()) == found
    d["grad_norm"][...] = g
    sat = d["saturated_share"]
    for value, found in ((th.saturated_share, False), (th.saturated_share + 0.01, True)):
        sat[2:, 1] = value
        hit = [f for f in m.diagnose() if f.kind == "saturation"]
        assert bool(hit) == found and (not found or (hit[0].epoch == 3 and "tanh" in hit[0].advice))
    sat[:, 1] = 0.0
    d["grad_norm"][1, 0] = np.inf
    assert [f.kind for f in m.diagnose()] == ["non_finite"] and m.diagnose()[0].epoch == 2
