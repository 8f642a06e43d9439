"""The Cython training loop on threads of its own (``fastmlp._native.loop._loop_threads``).

With ``n_threads`` > 1 and a big enough step, each thread takes a share of
the batch's rows through the forward and backward chain, then a share of
every dW, db and of the optimizer update, with one-thread BLAS calls. The
tests force that path on small problems (``_set_loop_split_limits(0, 2)``)
and compare with the reference backend, and check when the loop declines
to split and that BLAS gets its thread count back.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastmlp
from fastmlp import activations as A
from fastmlp.backends import reference as ref
from fastmlp.layers import Dense, Dropout

from conftest import DTYPES, Loss, Opt, Unit, assert_close, loop_state, make_plan, records, targets_of, unit

LP = pytest.importorskip("fastmlp._native.loop")
cy = fastmlp.get_backend("cython")
if cy.NAME != "cython":  # pragma: no cover - extension not built
    pytest.skip("the Cython backend is not built", allow_module_level=True)
from fastmlp._native import gemm as G  # noqa: E402
from fastmlp._native import runtime as R  # noqa: E402
from fastmlp.backends import cython_backend  # noqa: E402

if not LP._HAVE_LOOP_THREADS:  # pragma: no cover
    pytest.skip("the extension was built without OpenMP: its loop runs on one thread",
                allow_module_level=True)
_found = cython_backend._numpy_openblas()
if _found is None or not _found[3] or G.blas_name() == "scipy":  # pragma: no cover
    # the loop splits only when it can set the BLAS it calls to one thread
    pytest.skip("the kernels do not call NumPy's bundled OpenBLAS here", allow_module_level=True)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dt(request):
    return np.dtype(request.param)


@pytest.fixture
def split_loop():
    """Let the loop split any step (no minimum work, two rows per thread); restore after."""
    old_limits = LP._set_loop_split_limits(0, 2)
    old_threads = R.get_num_threads()
    yield
    LP._set_loop_split_limits(*old_limits)
    R.set_num_threads(old_threads)


def _numpy_blas_threads():
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and any(s in lib["filepath"] for s in ("numpy.libs", "numpy/.dylibs"))]


# Dense(d->7, tanh), Dropout(0.3), Dense(7->6, relu, L2), Dense(6->k) [+ log-softmax for nll]
def _plan(d, k, loss_kind, dropout=True):
    units, off = [], 0
    sizes = [(d, 7, A.TANH, 0.0), (7, 6, A.RELU, 0.02), (6, k, A.IDENTITY, 0.0)]
    for i, (fi, fo, act, l2) in enumerate(sizes):
        units.append(unit(Unit.DENSE, fi, fo, act, 1, off, off + fi * fo, l2=l2))
        off += fi * fo + fo
        if i == 0 and dropout:
            units.append(unit(Unit.DROPOUT, fo, fo, rate=0.3))
    if loss_kind == Loss.NLL:
        units.append(unit(Unit.ACTIVATION, k, k, A.LOG_SOFTMAX))
    return records(units), off


def _problem(dt, loss_kind, n=61, d=5, k=3, seed=0):
    rng = np.random.default_rng([seed, int(loss_kind)])
    X = rng.standard_normal((n, d)).astype(dt)
    labels = loss_kind in (Loss.CE, Loss.NLL)
    y = rng.integers(0, k, n).astype(np.int64) if labels else np.empty(0, np.int64)
    Y = {Loss.CE_ONEHOT: lambda: np.eye(k, dtype=dt)[rng.integers(0, k, n)],
         Loss.BCE: lambda: (rng.random((n, k)) < 0.5).astype(dt),
         Loss.MSE: lambda: rng.standard_normal((n, k)).astype(dt),
         Loss.POISSON: lambda: rng.poisson(2.0, (n, k)).astype(dt)}.get(
        loss_kind, lambda: np.empty((0, 0), dt))()
    sw = rng.uniform(0.5, 2.0, n).astype(dt)
    order = rng.permutation(n).astype(np.int64)
    return X, y, Y, sw, order


def _run(mod, dt, loss_kind, opt_kind, bs, n_steps, clip, X, y, Y, sw, order, params0, rec, lrs=None,
         decay=None, clip_value=0.0):
    n_params = params0.shape[0]
    plan = make_plan(rec, bs, dt, loss_kind, params=params0.copy(), weighted=sw.shape[0] != 0)
    loop = loop_state(opt_kind, n_params, dt, t=4, clip_norm=clip, seed=987)
    if lrs is not None:
        loop.lrs = lrs
    loop.clip_value = clip_value
    if decay is not None:
        loop.hyper["weight_decay"], loop.hyper["decoupled"] = decay
    losses, correct = np.full(n_steps, np.nan), np.full(n_steps, np.nan)
    done = mod.train_steps(plan, loop, X, targets_of(loss_kind, y, Y), sw, order, 3, n_steps, losses, correct)
    return done, plan.params, plan.grads, losses, correct, loop.state1, loop.state2


LOSSES = [Loss.CE, Loss.CE_ONEHOT, Loss.NLL, Loss.BCE, Loss.MSE, Loss.POISSON]
LOSS_IDS = ["ce", "ce_onehot", "nll", "bce", "mse", "poisson"]


@pytest.mark.parametrize("loss_kind", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("opt_kind", [Opt.SGD, Opt.RMSPROP, Opt.ADAM], ids=["sgd", "rmsprop", "adam"])
@pytest.mark.parametrize("nt", [2, 3, 4])  # 4: more threads than this 2-core CI machine has
def test_split_loop_matches_reference(split_loop, dt, loss_kind, opt_kind, nt):
    # rows 11 over 2 or 3 threads, fan-ins 5, 7, 6 and outputs 7, 6, 3: uneven shares everywhere;
    # dropout, an L2 penalty, sample weights and the optimizer's state all split with them
    X, y, Y, sw, order = _problem(dt, loss_kind)
    rec, n_params = _plan(X.shape[1], 3, loss_kind)
    params0 = np.random.default_rng(1).uniform(-0.5, 0.5, n_params).astype(dt)
    bs, n_steps = 11, 5
    R.set_num_threads(nt)
    got = _run(cy, dt, loss_kind, opt_kind, bs, n_steps, 0.0, X, y, Y, sw, order, params0, rec)
    assert LP._last_loop_threads() == nt  # the split path ran
    want = _run(ref, dt, loss_kind, opt_kind, bs, n_steps, 0.0, X, y, Y, sw, order, params0, rec)
    rtol = 1e-4 if dt == np.float32 else 1e-10
    assert got[0] == want[0] == n_steps
    assert_close(got[3], want[3], dt, rtol=rtol, err_msg="losses")
    np.testing.assert_array_equal(got[4], want[4])  # correct counts
    for name, g, w in zip(("params", "grads", "state1", "state2"), got[1:3] + got[5:], want[1:3] + want[5:]):
        assert_close(g, w, dt, rtol=rtol, err_msg=name)
    assert not np.allclose(want[1], params0)


@pytest.mark.parametrize("opt_kind", [Opt.SGD, Opt.RMSPROP, Opt.ADAM], ids=["sgd", "rmsprop", "adam"])
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_split_loop_takes_each_steps_rate(split_loop, dt, opt_kind, nt):
    # a schedule's rates (loop.lrs): every thread updates its share with the rate of the step
    X, y, Y, sw, order = _problem(dt, Loss.CE, seed=5)
    rec, n_params = _plan(X.shape[1], 3, Loss.CE)
    params0 = np.random.default_rng(2).uniform(-0.5, 0.5, n_params).astype(dt)
    lrs = np.array([0.3, 0.01, 0.2, 0.0, 0.05])
    R.set_num_threads(nt)
    got = _run(cy, dt, Loss.CE, opt_kind, 11, 5, 0.0, X, y, Y, sw, order, params0, rec, lrs)
    assert LP._last_loop_threads() == nt
    want = _run(ref, dt, Loss.CE, opt_kind, 11, 5, 0.0, X, y, Y, sw, order, params0, rec, lrs)
    const = _run(ref, dt, Loss.CE, opt_kind, 11, 5, 0.0, X, y, Y, sw, order, params0, rec)
    rtol = 1e-4 if dt == np.float32 else 1e-10
    assert_close(got[1], want[1], dt, rtol=rtol, err_msg="params")
    assert not np.allclose(want[1], const[1])  # the rates made a difference


@pytest.mark.parametrize("opt_kind,decay", [(Opt.SGD, (0.1, 0.0)), (Opt.RMSPROP, (0.3, 0.0)),
                                            (Opt.ADAM, (0.2, 0.0)), (Opt.ADAM, (0.5, 1.0))],
                         ids=["sgd", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_split_loop_decays_every_share(split_loop, dt, opt_kind, decay, nt):
    X, y, Y, sw, order = _problem(dt, Loss.CE, seed=6)
    rec, n_params = _plan(X.shape[1], 3, Loss.CE)
    params0 = np.random.default_rng(3).uniform(-0.5, 0.5, n_params).astype(dt)
    R.set_num_threads(nt)
    got = _run(cy, dt, Loss.CE, opt_kind, 11, 5, 0.0, X, y, Y, sw, order, params0, rec, decay=decay)
    assert LP._last_loop_threads() == nt
    want = _run(ref, dt, Loss.CE, opt_kind, 11, 5, 0.0, X, y, Y, sw, order, params0, rec, decay=decay)
    plain = _run(ref, dt, Loss.CE, opt_kind, 11, 5, 0.0, X, y, Y, sw, order, params0, rec)
    rtol = 1e-4 if dt == np.float32 else 1e-10
    assert_close(got[1], want[1], dt, rtol=rtol, err_msg="params")
    assert not np.allclose(want[1], plain[1])  # the decay made a difference


@pytest.mark.parametrize("fold", [True, False], ids=["l2-in-adam", "l2-in-dW"])
def test_split_adam_adds_the_l2_term_either_way(split_loop, fold):
    # Adam on the split loop adds the L2 term in its own pass (dW holds the data term until
    # then, and gets the sum written back); the other way copies W into dW first
    dt = np.dtype(np.float64)
    X, y, Y, sw, order = _problem(dt, Loss.CE, seed=9)
    rec, n_params = _plan(X.shape[1], 3, Loss.CE, dropout=False)
    rec["l2"] = 0.05  # on every dense unit
    params0 = np.random.default_rng(6).uniform(-0.5, 0.5, n_params)
    R.set_num_threads(2)
    old = LP._set_fold_l2(fold)
    try:
        got = _run(cy, dt, Loss.CE, Opt.ADAM, 12, 4, 0.0, X, y, Y, sw, order, params0, rec)
    finally:
        LP._set_fold_l2(old)
    assert LP._last_loop_threads() == 2
    want = _run(ref, dt, Loss.CE, Opt.ADAM, 12, 4, 0.0, X, y, Y, sw, order, params0, rec)
    for name, g, w in zip(("params", "grads", "losses"), got[1:4], want[1:4]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("nt", [2, 3])
def test_split_loop_clips_the_global_norm(split_loop, nt):
    dt = np.dtype(np.float64)
    X, y, Y, sw, order = _problem(dt, Loss.CE, seed=5)
    X *= 30.0  # large gradients: the clip binds at every step
    rec, n_params = _plan(X.shape[1], 3, Loss.CE, dropout=False)
    params0 = np.random.default_rng(2).uniform(-0.5, 0.5, n_params)
    R.set_num_threads(nt)
    got = _run(cy, dt, Loss.CE, Opt.SGD, 12, 4, 0.25, X, y, Y, np.empty(0), order, params0, rec)
    assert LP._last_loop_threads() == nt
    want = _run(ref, dt, Loss.CE, Opt.SGD, 12, 4, 0.25, X, y, Y, np.empty(0), order, params0, rec)
    np.testing.assert_allclose(np.linalg.norm(want[2]), 0.25, rtol=1e-5)  # the last step's clipped gradient
    for g, w in zip(got[1:4], want[1:4]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_split_loop_stops_at_nonfinite_loss(split_loop):
    dt = np.dtype(np.float64)
    X, y, Y, sw, order = _problem(dt, Loss.MSE, n=40)
    order = np.arange(40, dtype=np.int64)
    Y[3 + 10 + 4, 1] = 1e200  # a row of the second batch (start 3, batches of 10): its square overflows
    rec, n_params = _plan(X.shape[1], 3, Loss.MSE, dropout=False)
    params0 = np.random.default_rng(3).uniform(-0.5, 0.5, n_params)
    R.set_num_threads(2)
    with np.errstate(over="ignore", invalid="ignore"):
        done, params, _, losses, *_ = _run(cy, dt, Loss.MSE, Opt.ADAM, 10, 3, 0.0, X, y, Y, sw, order,
                                           params0, rec)
        _, one_step, _, first, *_ = _run(ref, dt, Loss.MSE, Opt.ADAM, 10, 1, 0.0, X, y, Y, sw, order,
                                         params0, rec)
    assert LP._last_loop_threads() == 2
    assert done == 1
    assert not np.isfinite(losses[1])
    np.testing.assert_allclose(losses[0], first[0], rtol=1e-12)
    np.testing.assert_allclose(params, one_step, rtol=1e-12)  # the failing step applied no update


def test_when_the_loop_does_not_split(split_loop):
    rec, n_params = _plan(5, 3, Loss.CE)
    R.set_num_threads(2)
    assert LP._loop_threads(rec, n_params, 11) == 2
    assert LP._loop_threads(rec, n_params, 3) == 1           # fewer than two rows per thread
    assert LP._loop_threads(rec, n_params + 4, 11) == 1      # parameters no dense unit owns
    bn = rec.copy()
    bn[1] = records([unit(Unit.BATCHNORM, 7, 7, A.IDENTITY, 1, n_params, n_params + 7, eps=1e-5, momentum=0.1)])[0]
    assert LP._loop_threads(bn, n_params + 28, 11) == 1      # batch norm needs the whole batch
    R.set_num_threads(1)
    assert LP._loop_threads(rec, n_params, 11) == 1
    R.set_num_threads(4)
    assert LP._loop_threads(rec, n_params, 11) == 4
    assert LP._loop_threads(rec, n_params, 7) == 3           # at most a thread per two rows
    LP._set_loop_split_limits(0, 4)
    assert LP._loop_threads(rec, n_params, 11) == 2
    R.set_num_threads(2)
    LP._set_loop_split_limits(11 * (5 * 7 + 7 * 6 + 6 * 3) + 1, 2)  # one multiply-add short
    assert LP._loop_threads(rec, n_params, 11) == 1
    LP._set_loop_split_limits(11 * (5 * 7 + 7 * 6 + 6 * 3), 2)
    assert LP._loop_threads(rec, n_params, 11) == 2
    # the defaults: a step of 262144 multiply-adds, 16 rows per thread
    LP._set_loop_split_limits(262144, 16)
    big = records([unit(Unit.DENSE, 784, 256, A.RELU, 1, 0, 784 * 256),
                   unit(Unit.DENSE, 256, 10, A.IDENTITY, 1, 784 * 256 + 256, 784 * 256 + 256 + 2560)])
    n_big = 784 * 256 + 256 + 2570
    assert LP._loop_threads(big, n_big, 128) == 2
    assert LP._loop_threads(big, n_big, 31) == 1
    assert LP._loop_threads(big, n_big, 5) == 1


def test_default_limits_split_every_threaded_fit():
    # the loop splits from the work at which the model's policy gives a fit threads at all
    limits = LP._set_loop_split_limits(0, 1)
    LP._set_loop_split_limits(*limits)
    assert limits == (fastmlp.model._BLAS_SERIAL_WORK, 16)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((640, 64)).astype(np.float32)
    y = rng.integers(0, 10, 640)
    old = R.get_num_threads()
    try:
        m = fastmlp.Sequential([Dense(64, activation="relu"), Dense(64, activation="relu"), Dense(10)],
                               input_dim=64, seed=0, backend="cython", n_threads=2)
        m.compile(loss="cross_entropy", optimizer="adam")
        m.fit(X, y, epochs=1, batch_size=64, verbose=0)  # 64 * 64 * 64 = 262144: threads, and split
        assert LP._last_loop_threads() == 2
        m.fit(X, y, epochs=1, batch_size=32, verbose=0)  # below the policy's bound: one thread
        assert LP._last_loop_threads() == 1
    finally:
        R.set_num_threads(old)


def test_split_loop_gives_blas_its_threads_back(split_loop):
    dt = np.dtype(np.float64)
    X, y, Y, sw, order = _problem(dt, Loss.CE)
    rec, n_params = _plan(X.shape[1], 3, Loss.CE)
    params0 = np.zeros(n_params)
    R.set_num_threads(2)
    with threadpool_limits(2, user_api="blas"):
        _run(cy, dt, Loss.CE, Opt.ADAM, 11, 5, 0.0, X, y, Y, sw, order, params0, rec)
        assert LP._last_loop_threads() == 2
        assert _numpy_blas_threads() == [2]


def test_loops_in_several_python_threads_restore_the_settings(split_loop):
    # Two split loops at once (the GIL is released while they run): each pins BLAS to one
    # thread; the setting comes back only when the last one ends, and the compiled
    # kernels' own thread bound is never changed.
    import threading

    dt = np.dtype(np.float64)
    X, y, Y, sw, order = _problem(dt, Loss.CE, n=4001)
    rec, n_params = _plan(X.shape[1], 3, Loss.CE)
    params0 = np.random.default_rng(4).uniform(-0.5, 0.5, n_params)
    R.set_num_threads(2)
    want = _run(ref, dt, Loss.CE, Opt.ADAM, 16, 200, 0.0, X, y, Y, sw, order, params0, rec)
    results = [None] * 4

    def work(j):
        results[j] = _run(cy, dt, Loss.CE, Opt.ADAM, 16, 200, 0.0, X, y, Y, sw, order, params0, rec)

    with threadpool_limits(2, user_api="blas"):
        threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _numpy_blas_threads() == [2]
    assert R.get_num_threads() == 2
    for got in results:
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)


def _fork_child_fit(_):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((512, 64))
    y = rng.integers(0, 4, 512)
    m = fastmlp.Sequential([Dense(64, activation="relu"), Dense(4)], input_dim=64, dtype="float64", seed=3,
                           backend="cython", n_threads=2)
    m.compile(loss="cross_entropy", optimizer=fastmlp.optim.Adam(1e-2))
    m.fit(X, y, epochs=1, batch_size=64, verbose=0)
    return R._forked_serial(), LP._last_loop_threads(), m.get_weights()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_fork_after_a_split_loop_does_not_hang(split_loop, monkeypatch):
    # GNU libgomp hangs a forked child's first parallel region when the parent ran one:
    # a child forked after a split loop runs its loops on one thread instead
    import multiprocessing

    monkeypatch.setattr(fastmlp.model, "_BLAS_SERIAL_WORK", 0)
    forked_serial, nt, w_parent = _fork_child_fit(None)
    assert (forked_serial, nt) == (False, 2)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        children = pool.map_async(_fork_child_fit, range(2)).get(timeout=120)
    for forked_serial, nt, w_child in children:
        assert (forked_serial, nt) == (True, 1)
        for a, b in zip(w_child, w_parent):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_model_trains_the_same_split_or_not(split_loop, monkeypatch, n_threads):
    # Sequential.fit end to end (shuffled epochs, a last partial batch, dropout, L2), float64;
    # the model's own policy would keep a net this small on one thread
    monkeypatch.setattr(fastmlp.model, "_BLAS_SERIAL_WORK", 0)
    rng = np.random.default_rng(11)
    X = rng.standard_normal((203, 9))
    y = rng.integers(0, 4, 203)

    def train(backend, nt):
        m = fastmlp.Sequential([Dense(16, activation="gelu"), Dropout(0.2), Dense(12, activation="tanh", l2=1e-3),
                                Dense(4)], input_dim=9, dtype="float64", seed=11, backend=backend, n_threads=nt)
        m.compile(loss="cross_entropy", optimizer=fastmlp.optim.Adam(1e-2))
        hist = m.fit(X, y, epochs=2, batch_size=16, shuffle=True, verbose=0)
        return m.get_weights(), hist.history["loss"]

    w_ref, l_ref = train("reference", 1)
    w_cy, l_cy = train("cython", n_threads)
    assert LP._last_loop_threads() == n_threads
    np.testing.assert_allclose(l_cy, l_ref, rtol=1e-11)
    for a, b in zip(w_cy, w_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
