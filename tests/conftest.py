"""Shared fixtures: backends, dtypes, tolerances and small helpers.

Every test that runs kernels or models takes ``backend_name``, which is
parametrized over :func:`fastmlp.available_backends`: a native backend that
is not built on this machine is simply absent, and picked up once it lands.
Kernel tests take ``native_path`` or ``backend_path`` instead: the backend's
module on each of its thread paths (see ``KERNEL_THREADS``).
"""
import contextlib
import os
import subprocess
import zlib

import numpy as np
import pytest

import fastmlp

BACKENDS = fastmlp.available_backends()
NATIVE_BACKENDS = [name for name in BACKENDS if name != "reference"]
DTYPES = [np.float32, np.float64]
# Relative tolerance of a backend against the reference, per dtype; the
# absolute floor is the same number times the scale of the expected values.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Every backend that loads on this machine."""
    return request.param


@pytest.fixture(params=NATIVE_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(reason="no native backend built"))])
def native_name(request):
    """Every native (non-reference) backend that loads on this machine."""
    return request.param


# The thread paths of each backend's kernels. Cython's loops run in an OpenMP
# team from ``runtime._set_parallel_min_work`` elements (65536 by default)
# when set_num_threads allows more than one thread; Numba's row loops take
# their parallel variants from ``_numba.jit.PAR_MIN_WORK`` elements: the
# parallel path is forced with a floor of 1 element and 2 threads. The
# reference is NumPy.
KERNEL_THREADS = {"cython": (1, 2), "numba": (1, 2)}


@contextlib.contextmanager
def kernel_threads(name, n_threads):
    """The backend's module, its kernels on n_threads (the parallel path when
    n_threads > 1); Cython's thread count and parallel floor are restored after."""
    mod = fastmlp.get_backend(name)
    if name not in KERNEL_THREADS:
        yield mod
        return
    if name == "numba":
        import numba

        from fastmlp.backends._numba import jit

        old_threads, old_floor = numba.get_num_threads(), jit.PAR_MIN_WORK
        jit.PAR_MIN_WORK = 1 if n_threads > 1 else 65536
        try:
            mod.set_num_threads(n_threads)
            assert numba.get_num_threads() == min(n_threads, numba.config.NUMBA_NUM_THREADS)
            yield mod
        finally:
            numba.set_num_threads(old_threads)
            jit.PAR_MIN_WORK = old_floor
        return
    from fastmlp._native import runtime as K

    old_threads = K.get_num_threads()
    old_floor = K._set_parallel_min_work(1 if n_threads > 1 else 65536)
    try:
        mod.set_num_threads(n_threads)
        assert K.get_num_threads() == n_threads
        yield mod
    finally:
        K.set_num_threads(old_threads)
        K._set_parallel_min_work(old_floor)


def kernel_paths(names):
    """pytest params (backend, threads) for every thread path of the named backends."""
    return [pytest.param((name, n), id=name if len(KERNEL_THREADS.get(name, (1,))) == 1
                         else f"{name}-{n}thread{'s' if n > 1 else ''}")
            for name in names for n in KERNEL_THREADS.get(name, (1,))]


_NO_NATIVE = [pytest.param(None, marks=pytest.mark.skip(reason="no native backend built"))]


@pytest.fixture(params=kernel_paths(NATIVE_BACKENDS) or _NO_NATIVE)
def native_path(request):
    """The module of every native backend, on each of its thread paths."""
    with kernel_threads(*request.param) as mod:
        yield mod


@pytest.fixture(params=kernel_paths(BACKENDS))
def backend_path(request):
    """The module of every backend (the reference too), on each of its thread paths."""
    with kernel_threads(*request.param) as mod:
        yield mod


@pytest.fixture
def kernel_path(request):
    """The module of one backend on one thread path: parametrize it indirectly with
    ``kernel_paths([...])`` for tests of some backends only."""
    with kernel_threads(*request.param) as mod:
        yield mod


def seeded_rng(*key):
    """A generator seeded by the key, so that every backend sees the same data."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand(rng, shape, dtype, scale=3.0):
    return np.ascontiguousarray(rng.standard_normal(shape) * scale, dtype=dtype)


def assert_close(got, want, dtype, rtol=None, err_msg=""):
    """Compare with a per-dtype relative tolerance and a floor scaled by max|want|."""
    rtol = RTOL[np.dtype(dtype)] if rtol is None else rtol
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def fd_grads_via_fit(model, X, y, sample_weight=None):
    """Loss and analytic gradient of a compiled model at its current weights.

    Runs one full-batch, unshuffled epoch of plain SGD: the step leaves the
    gradient at the starting weights in ``model._grads`` (flat, the layout of
    ``model._params``) and reports the loss at the starting weights in the
    history; the weights are restored afterwards.
    """
    p0 = model._params.copy()
    model.optimizer = fastmlp.optim.SGD(lr=1e-3)
    model.optimizer.state = None
    hist = model.fit(X, y, epochs=1, batch_size=len(X), shuffle=False, verbose=0,
                     sample_weight=sample_weight)
    grads = model._grads.copy()
    model._params[...] = p0
    model._infer_cache = None
    return hist.history["loss"][0], grads


def model_loss(model, X, y, sample_weight=None):
    """The training loss (with L2 penalties) at the model's current flat weights."""
    model._infer_cache = None
    return model.evaluate(X, y, sample_weight=sample_weight)["loss"]


def central_diff(f, x, eps=1e-6):
    """Gradient of the scalar f() with respect to the array x, perturbed in place."""
    g = np.empty(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g.reshape(-1)[i] = (up - down) / (2 * eps)
    return g


# ------------------------------------------------------------- plans by hand
# The tests of train_steps / make_predictor build small plans unit by unit.
from fastmlp._native import plan as _plan  # noqa: E402
from fastmlp._native.codes import LABEL_LOSSES, Act, Loss, Opt, Unit  # noqa: E402, F401  (re-exported to the tests)

OPT_HYPER = {  # the hyperparameters the loop tests train with
    Opt.SGD: dict(lr=0.1, momentum=0.9, nesterov=1.0),
    Opt.RMSPROP: dict(lr=0.01, rho=0.9, eps=1e-8),
    Opt.ADAM: dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8),
}


def unit(kind, fan_in, fan_out, act=Act.IDENTITY, use_bias=0, w_off=0, b_off=0, **named):
    """One unit record's values, as a dict (alpha, l2, rate, eps, momentum by name)."""
    return dict(kind=kind, fan_in=fan_in, fan_out=fan_out, act=act, use_bias=use_bias, w_off=w_off,
                b_off=b_off, **named)


def records(units):
    rec = _plan.records(len(units))
    for i, u in enumerate(units):
        for name, value in u.items():
            rec[name][i] = value
    return rec


def make_plan(units, rows, dt, loss=Loss.MSE, params=None, n_params=None, weighted=False, training=True,
              fill=np.nan):
    """A Plan of the given unit dicts for batches of ``rows`` rows; its buffers start at ``fill``."""
    dt = np.dtype(dt)
    if params is None:
        params = np.zeros(n_params, dt)
    plan = _plan.Plan(records(units) if isinstance(units, list) else units, params, np.zeros_like(params),
                      rows, loss=loss, training=training, weighted=weighted)
    for buf in [plan.x, *plan.Z, *plan.A, *plan.dA, *plan.M, plan.P, plan.Y, plan.sw]:
        if buf.size:
            buf.fill(fill)
    return plan


def loop_state(opt, n_params, dt, t=0, clip_norm=0.0, seed=0, **hyper):
    """A LoopState with zeroed state vectors of the sizes the optimizer needs."""
    hyper = dict(OPT_HYPER.get(opt, {}), **hyper)
    n1 = n_params if (opt in (Opt.RMSPROP, Opt.ADAM) or (opt == Opt.SGD and hyper.get("momentum", 0.0))) else 0
    n2 = n_params if opt == Opt.ADAM else 0
    return _plan.LoopState(opt, _plan.hyper(**hyper), np.zeros(n1, dt), np.zeros(n2, dt), t, clip_norm, seed)


def targets_of(loss, y, Y):
    """The targets argument of train_steps: the labels, or the real targets."""
    return y if loss in LABEL_LOSSES else Y


def run_on_terminal(args, *, stdout_too=True, timeout=120, **popen):
    """Run ``args`` with its stderr (and its stdout and stdin when ``stdout_too``) on a
    100-column pseudo-terminal, reading what the terminal shows until the child closes it
    (killed after ``timeout`` seconds of silence). Returns (returncode, what the terminal
    showed, the piped stdout or "")."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    streams = dict(stdout=slave, stdin=slave) if stdout_too else dict(stdout=subprocess.PIPE)
    proc = subprocess.Popen(args, stderr=slave, close_fds=True, **streams, **popen)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=timeout)
    os.close(master)
    piped = "" if stdout_too else proc.stdout.read().decode()
    return proc.returncode, shown.decode(errors="replace"), piped
