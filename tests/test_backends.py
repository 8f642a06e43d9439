"""The registry of backends, and every backend's training loop (train_steps) against
the reference. Every kernel against the reference: test_kernels.py."""
import importlib
import os
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest

import fastmlp
from fastmlp import activations as A
from fastmlp import backends
from fastmlp.backends import BackendUnavailableWarning
from fastmlp.backends import reference as ref

from conftest import BACKENDS, DTYPES, assert_close


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand(rng, shape, dtype, scale=3.0):
    return np.ascontiguousarray(rng.standard_normal(shape) * scale, dtype=dtype)


def backend(name):
    return fastmlp.get_backend(name)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return np.dtype(request.param)


def test_backend_names(backend_name):
    assert backend(backend_name).NAME == backend_name


# ------------------------------------------------------------- the step loop
def _model_plan(dt, loss_kind, k):
    """A 2-unit plan: Dense(4->5, tanh), Dense(5->k, identity) or + log-softmax unit."""
    rows = [(ref.KIND_DENSE, 4, 5, A.TANH, 1, 0, 20), (ref.KIND_DENSE, 5, k, A.IDENTITY, 1, 25, 25 + 5 * k)]
    n_params = 25 + 6 * k
    if loss_kind == ref.LOSS_NLL:
        rows.append((ref.KIND_ACTIVATION, k, k, A.LOG_SOFTMAX, 0, 0, 0))
    plan_i = np.array(rows, dtype=np.int64)
    plan_f = np.zeros((len(rows), 2))
    plan_f[0, ref.P_L2] = 0.01
    return plan_i, plan_f, n_params


def _buffers(plan_i, bs, dt, d):
    Z, Aa, dA = [], [], []
    prev = np.empty((bs, d), dt)
    for kind, fan_in, fan_out, act, *_ in plan_i:
        z = np.empty((bs, fan_out), dt) if kind == ref.KIND_DENSE else prev
        # a dropout unit keeps its input and writes the masked copy apart
        a = z if act == A.IDENTITY and kind != ref.KIND_DROPOUT else np.empty((bs, fan_out), dt)
        Z.append(z)
        Aa.append(a)
        prev = a
    L = len(plan_i)
    dA = [None] * L
    dA[L - 1] = np.empty((bs, plan_i[-1][2]), dt)
    for i in range(L - 1, 0, -1):
        dA[i - 1] = np.empty((bs, plan_i[i][1]), dt) if plan_i[i][0] == ref.KIND_DENSE else dA[i]
    return Z, Aa, dA


def _masks(plan_i, bs, dt):
    """Dropout mask buffers: (bs, fan_out) for dropout units, (0, 0) for the others."""
    return [np.full((bs, row[2]), np.nan, dt) if row[0] == ref.KIND_DROPOUT else np.empty((0, 0), dt)
            for row in plan_i]


@pytest.mark.parametrize("loss_kind", [ref.LOSS_CE, ref.LOSS_CE_ONEHOT, ref.LOSS_NLL, ref.LOSS_BCE, ref.LOSS_MSE,
                                       ref.LOSS_POISSON],
                         ids=["ce", "ce_onehot", "nll", "bce", "mse", "poisson"])
@pytest.mark.parametrize("opt_kind", [ref.OPT_SGD, ref.OPT_RMSPROP, ref.OPT_ADAM], ids=["sgd", "rmsprop", "adam"])
def test_train_steps(native_name, dt, loss_kind, opt_kind):
    be = backend(native_name)
    if not hasattr(be, "train_steps"):
        pytest.fail(f"backend {native_name!r} has no train_steps")
    rng = _rng("train_steps", loss_kind, opt_kind)
    n, d, k, bs = 23, 4, 3, 5
    X = rand(rng, (n, d), dt, 1.0)
    labels = loss_kind in (ref.LOSS_CE, ref.LOSS_NLL)
    y = rng.integers(0, k, n).astype(np.int64) if labels else np.empty(0, np.int64)
    if loss_kind == ref.LOSS_CE_ONEHOT:
        Y = np.eye(k, dtype=dt)[rng.integers(0, k, n)]
    elif loss_kind == ref.LOSS_BCE:
        Y = (rng.random((n, k)) < 0.5).astype(dt)
    elif loss_kind == ref.LOSS_MSE:
        Y = rand(rng, (n, k), dt, 1.0)
    elif loss_kind == ref.LOSS_POISSON:
        Y = rng.poisson(2.0, (n, k)).astype(dt)
    else:
        Y = np.empty((0, 0), dt)
    sw = rng.uniform(0.5, 2.0, n).astype(dt)
    order = rng.permutation(n).astype(np.int64)
    plan_i, plan_f, n_params = _model_plan(dt, loss_kind, k)
    params0 = rand(rng, n_params, dt, 0.5)
    opt_f = {ref.OPT_SGD: (0.1, 0.9, 1.0, 0.0), ref.OPT_RMSPROP: (0.01, 0.9, 1e-8, 0.0),
             ref.OPT_ADAM: (0.01, 0.9, 0.999, 1e-8)}[opt_kind]
    opt_f = np.array(opt_f, dtype=np.float64)
    n_steps = n // bs

    def run(mod):
        params, grads = params0.copy(), np.zeros(n_params, dt)
        s1, s2 = np.zeros(n_params, dt), np.zeros(n_params if opt_kind == ref.OPT_ADAM else 0, dt)
        Z, Aa, dA = _buffers(plan_i, bs, dt, d)
        x_buf = np.empty((bs, d), dt)
        y_buf = np.empty(bs if labels else 0, np.int64)
        Y_buf = np.empty((bs, k) if not labels else (0, 0), dt)
        sw_buf = np.empty(bs, dt)
        P = np.empty((bs, k), dt)
        losses, correct = np.full(n_steps, np.nan), np.full(n_steps, np.nan)
        done = mod.train_steps(X, y, Y, sw, order, 1, n_steps, plan_i, plan_f, params, grads,
                               x_buf, y_buf, Y_buf, sw_buf, Z, Aa, dA, _masks(plan_i, bs, dt), P, loss_kind,
                               opt_kind, opt_f, s1, s2, 2, 0.5, 12345, losses, correct)
        return done, params, losses, correct, s1

    dw, pw, lw, cw, sw1 = run(ref)
    dg, pg, lg, cg, sg1 = run(be)
    assert dw == dg == n_steps
    assert_close(lg, lw, dt, rtol=1e-4 if dt == np.float32 else 1e-10)
    np.testing.assert_array_equal(cg, cw)
    assert_close(pg, pw, dt, rtol=1e-4 if dt == np.float32 else 1e-10)
    assert_close(sg1, sw1, dt, rtol=1e-4 if dt == np.float32 else 1e-10)
    assert not np.array_equal(pw, params0)  # the steps did train
    if loss_kind == ref.LOSS_POISSON:
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
    plan_i, plan_f, n_params = _model_plan(dt, ref.LOSS_POISSON, k)
    Z, Aa, dA = _buffers(plan_i, bs, dt, d)
    Y = np.ones((n, k))
    Y[4, 0] = -2.0
    params = np.full(n_params, 0.1)
    with pytest.raises(ValueError, match=r"targets must be >= 0"):
        be.train_steps(np.zeros((n, d)), np.empty(0, np.int64), Y, np.empty(0), np.arange(n), 0, 2,
                       plan_i, plan_f, params, np.zeros(n_params), np.empty((bs, d)), np.empty(0, np.int64),
                       np.empty((bs, k)), np.empty(0), Z, Aa, dA, _masks(plan_i, bs, dt), np.empty((bs, k)),
                       ref.LOSS_POISSON, ref.OPT_SGD, np.array([0.1, 0.0, 0.0, 0.0]), np.zeros(n_params),
                       np.empty(0), 0, 0.0, 0, np.zeros(2), np.zeros(2))


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
    plan_i, plan_f, n_params = _model_plan(dt, ref.LOSS_MSE, k)
    params0 = rand(rng, n_params, dt, 0.5)
    order = np.arange(n, dtype=np.int64)

    def run(mod, steps):
        params, grads = params0.copy(), np.zeros(n_params, dt)
        s1, s2 = np.zeros(n_params, dt), np.empty(0, dt)
        Z, Aa, dA = _buffers(plan_i, bs, dt, d)
        losses, correct = np.full(steps, np.nan), np.full(steps, np.nan)
        done = mod.train_steps(X, np.empty(0, np.int64), Y, np.empty(0, dt), order, 0, steps, plan_i, plan_f,
                               params, grads, np.empty((bs, d), dt), np.empty(0, np.int64),
                               np.empty((bs, k), dt), np.empty(0, dt), Z, Aa, dA, _masks(plan_i, bs, dt),
                               np.empty((bs, k), dt), ref.LOSS_MSE, ref.OPT_SGD,
                               np.array([0.1, 0.0, 0.0, 0.0]), s1, s2, 0, 0.0, 0, losses, correct)
        return done, params, losses

    with np.errstate(over="ignore", invalid="ignore"):
        done, params, losses = run(be, 3)
        _, one_step, first = run(ref, 1)
    assert done == 1
    assert not np.isfinite(losses[1])
    np.testing.assert_allclose(losses[0], first[0], rtol=1e-12)
    np.testing.assert_allclose(params, one_step, rtol=1e-12)  # the failing step applied no update
