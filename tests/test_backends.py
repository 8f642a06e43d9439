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
from fastmlp import backends
from fastmlp.backends import BackendUnavailableWarning
from fastmlp.backends import reference as ref

from conftest import BACKENDS, DTYPES, Act, Loss, Opt, Unit, assert_close, loop_state, make_plan, targets_of, unit


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
