"""compile(clip_value=v): every gradient element clamped to [-v, v] before the
update (``torch.nn.utils.clip_grad_value_``), before the norm clipping when
both are given, in all three loops and the split and packed paths."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Dense, Dropout

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from conftest import Loss, Opt  # noqa: E402
from test_torch_reference import data, make, torch_twin, weights_from_torch  # noqa: E402

RTOL, ATOL = 1e-7, 1e-12
torch.set_num_threads(1)

OPTS = {
    "sgd_momentum": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "adam": (lambda: fastmlp.optim.Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
    "adamw": (lambda: fastmlp.optim.AdamW(lr=0.02, weight_decay=0.3),
              lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.3)),
    "rmsprop_decay": (lambda: fastmlp.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-6, weight_decay=0.1),
                      lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
}


@pytest.mark.parametrize("clips", [(0.01, None), (0.05, 0.08), (1e3, None)], ids=["value", "value_then_norm", "loose"])
@pytest.mark.parametrize("opt_name", list(OPTS))
def test_three_full_batch_steps_match_torch(backend_name, opt_name, clips):
    clip_value, clip_norm = clips
    make_fm, make_torch = OPTS[opt_name]
    model = make("leaky_elu_selu", "linear", 3, backend_name)
    net = torch_twin(model)
    X, y = data(n=11, seed=6), np.random.default_rng(1).standard_normal((11, 3)) * 4.0
    opt = make_torch(net.parameters())
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(3):
        opt.zero_grad()
        nn.MSELoss()(net(Xt), yt).backward()
        nn.utils.clip_grad_value_(net.parameters(), clip_value)
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
        opt.step()
    model.compile(loss="mse", optimizer=make_fm(), clip_norm=clip_norm, clip_value=clip_value)
    model.fit(X, y, epochs=3, batch_size=11, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), weights_from_torch(net)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_clipping_by_value_changes_the_step():
    X, y = data(n=11, seed=6), np.random.default_rng(1).standard_normal((11, 3)) * 4.0
    runs = []
    for clip_value in (None, 0.01):
        model = make("leaky_elu_selu", "linear", 3, "reference")
        model.compile(loss="mse", optimizer=fastmlp.optim.SGD(lr=0.1), clip_value=clip_value)
        before = model.get_weights()
        model.fit(X, y, epochs=1, batch_size=11, shuffle=False, verbose=0)
        runs.append([a - b for a, b in zip(model.get_weights(), before)])
    # with SGD the step is -lr * the clamped gradient: no element moves by more than lr * v
    assert max(np.abs(d).max() for d in runs[1]) <= 0.1 * 0.01 * (1 + 1e-12)
    assert max(np.abs(d).max() for d in runs[0]) > 0.1 * 0.01 * 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends_match_reference_after_shuffled_epochs(backend_name, dtype):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((97, 8)) * 3
    y = np.argmax(X[:, :3], axis=1)

    def run(be):
        m = fastmlp.Sequential([Dense(16, "relu", l2=0.01), Dropout(0.2), Dense(3)],
                               input_dim=8, dtype=dtype, seed=5, backend=be)
        m.compile(optimizer=fastmlp.optim.Adam(lr=0.01), clip_value=0.02, clip_norm=0.5)
        m.fit(X, y, epochs=2, batch_size=10, verbose=0)
        return m.get_weights()

    rtol = 2e-4 if dtype == "float32" else 1e-10
    for got, want in zip(run(backend_name), run("reference")):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)


def test_clip_value_is_checked_and_a_bad_one_leaves_the_compile():
    m = fastmlp.Sequential([Dense(3)], input_dim=2, seed=0)
    m.compile(optimizer="sgd", clip_value=0.5)
    for bad in (0.0, -1.0, float("inf"), "1", True):
        with pytest.raises(ValueError, match="clip_value must be a finite number > 0"):
            m.compile(optimizer="adam", clip_value=bad)
    assert m.clip_value == 0.5


def test_clip_value_is_saved(tmp_path):
    m = fastmlp.Sequential([Dense(3)], input_dim=2, seed=0)
    m.compile(optimizer="sgd", clip_value=0.25, clip_norm=2.0)
    m.save(tmp_path / "m.safetensors")
    back = fastmlp.load_model(tmp_path / "m.safetensors")
    assert (back.clip_value, back.clip_norm) == (0.25, 2.0)


# ------------------------------------------------------- split and packed paths
LP = pytest.importorskip("fastmlp._native.loop")


@pytest.mark.parametrize("opt_kind", [Opt.SGD, Opt.ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_split_loop_clamps_every_share(opt_kind, nt):
    import test_loop_threads as T
    if T.cy.NAME != "cython":  # pragma: no cover
        pytest.skip("the Cython backend is not built")
    old_limits, old_threads = LP._set_loop_split_limits(0, 2), T.R.get_num_threads()
    try:
        dt = np.dtype(np.float64)
        X, y, Y, sw, order = T._problem(dt, Loss.CE, seed=7)
        rec, n_params = T._plan(X.shape[1], 3, Loss.CE)
        rec["l2"] = 0.05  # with Adam on threads the L2 term would be folded: not with clipping
        params0 = np.random.default_rng(4).uniform(-0.5, 0.5, n_params).astype(dt)
        T.R.set_num_threads(nt)

        def run(mod, value):
            plan = T.make_plan(rec, 11, dt, Loss.CE, params=params0.copy(), weighted=True)
            loop = T.loop_state(opt_kind, n_params, dt, t=1, seed=5)
            loop.clip_value = value
            losses, correct = np.empty(4), np.empty(4)
            mod.train_steps(plan, loop, X, y, sw, order, 0, 4, losses, correct)
            return plan.params, plan.grads

        got = run(T.cy, 0.003)
        assert LP._last_loop_threads() == nt
        want, plain = run(T.ref, 0.003), run(T.ref, 0.0)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-13)
        assert np.abs(want[1]).max() <= 0.003 and not np.allclose(want[0], plain[0])
    finally:
        LP._set_loop_split_limits(*old_limits)
        T.R.set_num_threads(old_threads)


def test_packed_loop_clamps_the_packed_gradient():
    import test_loop_threads as T
    import test_packed_gemm as P
    old_limits, old_threads = LP._set_loop_split_limits(0, 2), P.R.get_num_threads()
    try:
        X, y, Y, sw, order, rec, params0 = P._wide_problem(seed=6)
        P.R.set_num_threads(2)
        args = (P.F32, Loss.CE, Opt.ADAM, 26, 3, 0.0, X, y, Y, sw, order, params0, rec)
        got = P._run_packed(True, *args, None, None, 1e-3)
        assert LP._last_loop_packed()
        want = T._run(T.ref, *args, None, None, 1e-3)
        plain = T._run(T.ref, *args)
        P._assert_params_close(got[1], want[1], P.F32, rtol=2e-4, err_msg="params")
        assert np.abs(want[2]).max() <= 1e-3 * (1 + 1e-6) and not np.allclose(want[1], plain[1], atol=1e-4)
    finally:
        LP._set_loop_split_limits(*old_limits)
        P.R.set_num_threads(old_threads)
