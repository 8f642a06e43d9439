"""The split float32 loop on packed operands (``fastmlp/_native/packgemm.h``).

With float32 data and a split loop, W, dW and W's optimizer state live in the
packed form of packgemm.h while the loop runs, and its products run on that
file's kernels instead of BLAS. The tests check the loop (the kernel against
NumPy on every edge of its tiling is tests/native/test_gemm.py's) against the
reference backend and against the same split loop on BLAS (``_set_packed_gemm(False)``), on layers
of several 16-column panels with ragged ends beside a narrow layer that stays
in place, for every optimizer, with L2, clipping, and a stop at a non-finite
loss.
"""
import numpy as np
import pytest

from fastmlp import activations as A
from fastmlp.backends import reference as ref

from conftest import Loss, Opt, Unit, assert_close, records, unit
from test_loop_threads import G, LP, R, _plan, _problem, _run, cy, split_loop  # noqa: F401 (a fixture)

if not G._HAVE_PACKED_GEMM:  # pragma: no cover - a CPU without AVX2 and FMA, or FASTMLP_PORTABLE=1
    pytest.skip("this build has no packed-operand kernels", allow_module_level=True)

F32 = np.dtype(np.float32)


# Dense(d->120, tanh), Dense(120->288, tanh, L2), Dense(288->k): the first two packed (several
# panels; a ragged last panel in the first W and in the second's W^T; whole 16-row blocks of W^T
# and odd rows around them in each thread's share), the narrow last one in place (_pk_unit), its
# product into the second's dA on BLAS
def _dense_plan(layers):
    # the records of dense units with biases, from (fan_in, fan_out, activation, L2) each
    units, off = [], 0
    for fi, fo, act, pen in layers:
        units.append(unit(Unit.DENSE, fi, fo, act, 1, off, off + fi * fo, l2=pen))
        off += fi * fo + fo
    return records(units), off


def _wide_plan(d, k, l2=0.01):
    return _dense_plan([(d, 120, A.TANH, 0.0), (120, 288, A.TANH, l2), (288, k, A.IDENTITY, 0.0)])


def _wide_problem(loss_kind=Loss.CE, n=90, d=300, k=3, seed=0):
    X, y, Y, sw, order = _problem(F32, loss_kind, n=n, d=d, k=k, seed=seed)
    rec, n_params = _wide_plan(d, k)
    params0 = np.random.default_rng(seed + 1).uniform(-0.3, 0.3, n_params).astype(np.float32)
    return X, y, Y, sw, order, rec, params0


def _run_packed(packed, *args):
    old = LP._set_packed_gemm(packed)
    try:
        return _run(cy, *args)
    finally:
        LP._set_packed_gemm(old)


def _assert_params_close(got, want, dtype, rtol, err_msg):
    # RMSprop and Adam divide the gradient by its own running size: where a first step's
    # gradient is a few ulps from zero (5e-9 against a largest 0.2, say), float32 rounding
    # in any order of the sums moves that weight by up to a whole step. The BLAS loop
    # differs from the reference there as much as the packed one does. So: every weight but
    # at most 1 in 10^4 within the tolerance, and those few within three steps (lr 0.01)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    off = np.abs(got - want) > rtol * max(1.0, np.abs(want).max())
    assert off.sum() <= max(1, want.size // 10000), (err_msg, np.flatnonzero(off)[:10])
    np.testing.assert_allclose(got, want, atol=0.1, err_msg=err_msg)


OPTS = [Opt.SGD, Opt.RMSPROP, Opt.ADAM]
OPT_IDS = ["sgd", "rmsprop", "adam"]


@pytest.mark.parametrize("opt_kind", OPTS, ids=OPT_IDS)
@pytest.mark.parametrize("nt", [2, 3])
@pytest.mark.parametrize("clip", [0.0, 0.5], ids=["no clip", "clip"])
def test_packed_loop_matches_reference_and_blas(split_loop, opt_kind, nt, clip):  # noqa: F811
    # batches of 26 rows over 2 or 3 threads; clipping also moves the L2 term into dW (no fold)
    X, y, Y, sw, order, rec, params0 = _wide_problem()
    args = (F32, Loss.CE, opt_kind, 26, 3, clip, X, y, Y, sw, order, params0, rec)
    R.set_num_threads(nt)
    got = _run_packed(True, *args)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (nt, True)
    blas = _run_packed(False, *args)
    want = _run(ref, *args)
    assert got[0] == blas[0] == want[0] == 3
    names = ("params", "grads", "losses", "correct", "state1", "state2")
    for name, g, b, w in zip(names, got[1:], blas[1:], want[1:]):
        # float32 sums over 300 inputs in another order: the tolerance of test_loop_threads
        check = _assert_params_close if name == "params" else assert_close
        check(g, w, F32, rtol=2e-4, err_msg=f"{name} against the reference")
        check(g, b, F32, rtol=2e-4, err_msg=f"{name} against the BLAS loop")
    assert not np.allclose(got[1], params0, atol=1e-4)


@pytest.mark.parametrize("fold", [True, False], ids=["l2-in-adam", "l2-in-dW"])
def test_packed_loop_adds_the_l2_term_either_way(split_loop, fold):  # noqa: F811
    X, y, Y, sw, order, rec, params0 = _wide_problem(seed=4)
    rec["l2"][1] = 0.5  # a penalty strong enough to show
    args = (F32, Loss.CE, Opt.ADAM, 40, 2, 0.0, X, y, Y, sw, order, params0, rec)
    R.set_num_threads(2)
    old = LP._set_fold_l2(fold)
    try:
        got = _run_packed(True, *args)
    finally:
        LP._set_fold_l2(old)
    want = _run(ref, *args)
    no_l2 = rec.copy()
    no_l2["l2"] = 0.0
    without = _run(ref, *args[:-1], no_l2)
    for name, g, w in zip(("params", "grads", "losses"), got[1:4], want[1:4]):
        assert_close(g, w, F32, rtol=2e-4, err_msg=name)
    assert not np.allclose(want[1], without[1], atol=1e-3)  # the term mattered


@pytest.mark.parametrize("opt_kind,decay", [(Opt.SGD, (0.2, 0.0)), (Opt.ADAM, (0.3, 0.0)), (Opt.ADAM, (0.8, 1.0))],
                         ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("fold", [True, False], ids=["l2-in-adam", "l2-in-dW"])
def test_packed_loop_decays_the_packed_weights(split_loop, opt_kind, decay, fold):  # noqa: F811
    # weight decay on the packed W (and its padding, which stays 0), with an L2 term beside it
    X, y, Y, sw, order, rec, params0 = _wide_problem(seed=5)
    args = (F32, Loss.CE, opt_kind, 26, 3, 0.0, X, y, Y, sw, order, params0, rec)
    R.set_num_threads(2)
    old = LP._set_fold_l2(fold)
    try:
        got = _run_packed(True, *args, None, decay)
    finally:
        LP._set_fold_l2(old)
    assert LP._last_loop_packed()
    want = _run(ref, *args, None, decay)
    plain = _run(ref, *args)
    _assert_params_close(got[1], want[1], F32, rtol=2e-4, err_msg="params")
    assert not np.allclose(want[1], plain[1], atol=1e-4)  # the decay mattered


def test_packed_loop_stops_at_nonfinite_loss(split_loop):  # noqa: F811
    # the loop writes W back from its packed form when it stops early, too
    X, y, Y, sw, order, rec, params0 = _wide_problem(Loss.MSE, n=70)
    order = np.arange(70, dtype=np.int64)
    Y[3 + 20 + 5, 1] = 1e30  # a row of the second batch: its square overflows float32
    R.set_num_threads(2)
    with np.errstate(over="ignore", invalid="ignore"):
        done, params, grads, losses, _, s1, s2 = _run_packed(
            True, F32, Loss.MSE, Opt.ADAM, 20, 3, 0.0, X, y, Y, sw, order, params0, rec)
        _, one_step, one_grads, first, _, w1, w2 = _run(
            ref, F32, Loss.MSE, Opt.ADAM, 20, 1, 0.0, X, y, Y, sw, order, params0, rec)
    assert LP._last_loop_threads() == 2
    assert done == 1
    assert not np.isfinite(losses[1])
    np.testing.assert_allclose(losses[0], first[0], rtol=1e-5)
    for name, g, w in zip(("params", "grads", "state1", "state2"), (params, grads, s1, s2),
                          (one_step, one_grads, w1, w2)):
        assert_close(g, w, F32, rtol=2e-4, err_msg=name)


def test_which_loops_run_packed(split_loop):  # noqa: F811
    # float32 on a split loop: packed; float64, the switch off, or only narrow layers: the same
    # split loop on BLAS
    X, y, Y, sw, order, rec, params0 = _wide_problem(seed=9)
    R.set_num_threads(2)
    args = (F32, Loss.CE, Opt.ADAM, 26, 1, 0.0, X, y, Y, sw, order, params0, rec)
    _run_packed(True, *args)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, True)
    _run_packed(False, *args)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, False)
    _run(cy, np.dtype(np.float64), *args[1:6], X.astype(np.float64), y, Y, sw.astype(np.float64), order,
         params0.astype(np.float64), rec)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, False)
    narrow, n_narrow = _plan(X.shape[1], 3, Loss.CE)  # outputs 7, 6, 3
    _run_packed(True, *args[:11], np.zeros(n_narrow, np.float32), narrow)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, False)
    R.set_num_threads(1)
    _run_packed(True, *args)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (1, False)
    # batches of up to _set_packed_max_rows' bound of rows per thread
    R.set_num_threads(2)
    old = LP._set_packed_max_rows(8)
    try:
        X2, y2, Y2, sw2, order2 = _problem(F32, Loss.CE, n=50, d=X.shape[1])
        for rows, packed in ((16, True), (18, False)):
            _run_packed(True, F32, Loss.CE, Opt.ADAM, rows, 1, 0.0, X2, y2, Y2, sw2, order2, params0,
                        rec)
            assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, packed), rows
    finally:
        assert LP._set_packed_max_rows(old) == 8
    with pytest.raises(ValueError, match="at least 0"):
        LP._set_packed_max_rows(-1)


def test_packed_policy_follows_the_kernel():
    # with zmm tiles batches of up to 8192 rows per thread, on every layer of 1024 weights or more,
    # run packed (they were faster there on every net measured); with ymm ones only batches of up
    # to 32 rows per thread, on layers of 32768 weights or more
    assert G._PACKED_GEMM_ISA in ("avx512", "avx2")
    if G._PACKED_GEMM_ISA == "avx512":
        assert (LP._PACKED_MAX_ROWS_PER_THREAD, LP._PACKED_MIN_WEIGHTS) == (8192, 1024)
    else:
        assert (LP._PACKED_MAX_ROWS_PER_THREAD, LP._PACKED_MIN_WEIGHTS) == (32, 32768)


@pytest.mark.parametrize("below", [True, False], ids=["floor-16", "floor"])
def test_packed_weight_floor(split_loop, below):  # noqa: F811
    # Dense(d->16, tanh), Dense(16->3): the second unit is far below the floor, the first packs
    # exactly when its d * 16 weights reach _PACKED_MIN_WEIGHTS; packed or not, the loop matches
    # the reference
    d = LP._PACKED_MIN_WEIGHTS // 16 - (1 if below else 0)
    rec, off = _dense_plan([(d, 16, A.TANH, 0.0), (16, 3, A.IDENTITY, 0.0)])
    X, y, Y, sw, order = _problem(F32, Loss.CE, n=60, d=d, k=3, seed=4)
    params0 = np.random.default_rng(5).uniform(-0.3, 0.3, off).astype(np.float32)
    R.set_num_threads(2)
    args = (F32, Loss.CE, Opt.ADAM, 26, 2, 0.0, X, y, Y, sw, order, params0, rec)
    got = _run_packed(True, *args)
    assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, not below)
    want = _run(ref, *args)
    _assert_params_close(got[1], want[1], F32, rtol=2e-4, err_msg="params")


def test_smaller_team_runs_in_place(tmp_path):
    # OMP_THREAD_LIMIT=1: the loop asks for 2 threads and gets a team of 1, whose one thread
    # runs the whole step with every W in place (the packed path splits the update by thread)
    import os
    import subprocess
    import sys

    script = tmp_path / "team.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import numpy as np\n"
        "from test_packed_gemm import LP, R, F32, _wide_problem, _run, _assert_params_close, cy, ref\n"
        "from conftest import Loss, Opt, assert_close\n"
        "LP._set_loop_split_limits(0, 2)\n"
        "R.set_num_threads(2)\n"
        "X, y, Y, sw, order, rec, params0 = _wide_problem(seed=3)\n"
        "args = (F32, Loss.CE, Opt.ADAM, 26, 3, 0.0, X, y, Y, sw, order, params0, rec)\n"
        "got, want = _run(cy, *args), _run(ref, *args)\n"
        "assert (LP._last_loop_threads(), LP._last_loop_packed()) == (2, True)\n"
        "_assert_params_close(got[1], want[1], F32, rtol=2e-4, err_msg='params')\n"
        "assert_close(got[2], want[2], F32, rtol=2e-4, err_msg='grads')\n"
        "assert not np.allclose(got[1], params0, atol=1e-4)\n"
        "print('ok')\n")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
