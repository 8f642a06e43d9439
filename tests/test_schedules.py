"""Learning-rate schedules: Keras' formulas (computed here independently, one
step at a time), the rate each native step uses, PyTorch's weights after a few
hundred steps of SGD and Adam with the schedule applied per step, saving, and
the errors."""
import math

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import schedules as S

STEPS = 240  # 12 epochs of 20 steps


# ------------------------------------------------- the formulas, step by step
def keras_exponential(step, initial, decay_steps, rate, staircase):
    p = step / decay_steps
    return initial * rate ** (math.floor(p) if staircase else p)


def keras_inverse_time(step, initial, decay_steps, rate, staircase):
    p = step / decay_steps
    return initial / (1 + rate * (math.floor(p) if staircase else p))


def keras_piecewise(step, boundaries, values):
    if step <= boundaries[0]:
        return values[0]
    for i in range(1, len(boundaries)):
        if boundaries[i - 1] < step <= boundaries[i]:
            return values[i]
    return values[-1]


def keras_cosine(step, initial, decay_steps, alpha, warmup_steps, warmup_target):
    def decay(s, top):
        return top * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha)
    if warmup_target is None:
        return decay(min(step, decay_steps), initial)
    step = min(step, decay_steps + warmup_steps)
    if step < warmup_steps:
        return (warmup_target - initial) * step / warmup_steps + initial
    return decay(step - warmup_steps, warmup_target)


def torch_one_cycle(step, max_lr, total, pct_start, div=25.0, final_div=1e4):
    # torch.optim.lr_scheduler.OneCycleLR._get_lr (two phases, cos), clamped at the end
    initial, low = max_lr / div, max_lr / div / final_div
    phases = [(float(pct_start * total) - 1, initial, max_lr), (total - 1, max_lr, low)]
    step, start = min(step, total - 1), 0.0
    for i, (end, a, b) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        start = end


CASES = {
    "exponential": (lambda: S.ExponentialDecay(0.1, 30, 0.5),
                    lambda s: keras_exponential(s, 0.1, 30, 0.5, False)),
    "exponential_staircase": (lambda: S.ExponentialDecay(0.1, 30, 0.5, staircase=True),
                              lambda s: keras_exponential(s, 0.1, 30, 0.5, True)),
    "inverse_time": (lambda: S.InverseTimeDecay(0.1, 20, 0.7),
                     lambda s: keras_inverse_time(s, 0.1, 20, 0.7, False)),
    "inverse_time_staircase": (lambda: S.InverseTimeDecay(0.1, 20, 0.7, staircase=True),
                               lambda s: keras_inverse_time(s, 0.1, 20, 0.7, True)),
    "piecewise": (lambda: S.PiecewiseConstant([40, 100, 170], [0.1, 0.05, 0.02, 0.004]),
                  lambda s: keras_piecewise(s, [40, 100, 170], [0.1, 0.05, 0.02, 0.004])),
    "cosine": (lambda: S.CosineDecay(0.1, 150, alpha=0.1),
               lambda s: keras_cosine(s, 0.1, 150, 0.1, 0, None)),
    "cosine_warmup": (lambda: S.CosineDecay(0.01, 150, warmup_steps=30, warmup_target=0.1),
                      lambda s: keras_cosine(s, 0.01, 150, 0.0, 30, 0.1)),
    "one_cycle": (lambda: S.OneCycle(0.1, 200, pct_start=0.3),
                  lambda s: torch_one_cycle(s, 0.1, 200, 0.3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rates_follow_the_formula(case):
    make, formula = CASES[case]
    sched = make()
    want = np.array([formula(s) for s in range(400)])
    np.testing.assert_allclose(sched.rates(0, 400), want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(sched.rates(137, 50), want[137:187], rtol=1e-13, atol=0)
    assert sched(0) == pytest.approx(want[0], rel=1e-13)
    assert sched(399) == pytest.approx(want[399], rel=1e-13)


def test_the_formulas_at_their_corners():
    # values picked by hand, so that the independent formulas above are checked too
    assert S.PiecewiseConstant([10], [1.0, 0.5])(10) == 1.0
    assert S.PiecewiseConstant([10], [1.0, 0.5])(11) == 0.5
    assert S.ExponentialDecay(1.0, 10, 0.5, staircase=True)(19) == 0.5
    assert S.ExponentialDecay(1.0, 10, 0.5)(20) == pytest.approx(0.25, rel=1e-15)
    assert S.InverseTimeDecay(1.0, 10, 1.0)(10) == pytest.approx(0.5, rel=1e-15)
    assert S.CosineDecay(1.0, 100)(50) == pytest.approx(0.5, rel=1e-15)
    assert S.CosineDecay(1.0, 100)(1000) == 0.0
    assert S.CosineDecay(0.0, 100, warmup_steps=10, warmup_target=1.0)(5) == pytest.approx(0.5, rel=1e-15)
    one = S.OneCycle(1.0, 100, pct_start=0.3)
    assert one(0) == pytest.approx(1 / 25, rel=1e-15)
    assert one(29) == pytest.approx(1.0, rel=1e-15)  # the peak: step pct_start * total - 1
    assert one(99) == pytest.approx(1 / 25 / 1e4, rel=1e-12)
    assert one(500) == one(99)


# ---------------------------------------- the rate each step of the loop uses
def _data(n=200, d=5, k=3, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.argmax(X[:, :k] + 0.3 * rng.standard_normal((n, k)), axis=1)
    return X, y


def _model(backend_name, opt, seed=0):
    m = fm.Sequential([fm.Dense(7, "tanh"), fm.Dense(3)], input_dim=5, dtype="float64", seed=seed,
                      backend=backend_name)
    m.compile(loss="cross_entropy", optimizer=opt)
    return m


def test_each_step_uses_its_own_rate(backend_name):
    """Plain SGD: the change of the weights at step t is -rate(t) * gradient, so
    running with rates r(t) equals stepping one batch at a time with the constant
    rate r(t) (the loop's step counter, not the epoch, picks the rate)."""
    X, y = _data(n=60)
    sched = S.PiecewiseConstant([2, 4], [0.3, 0.1, 0.02])
    m = _model(backend_name, fm.optim.SGD(lr=sched))
    m.fit(X, y, epochs=2, batch_size=20, shuffle=False, verbose=0)  # steps 0..5
    ref = _model(backend_name, fm.optim.SGD(lr=1.0))
    for t in range(6):
        ref.optimizer.lr = sched(t)
        ref.fit(X[(t % 3) * 20:(t % 3 + 1) * 20], y[(t % 3) * 20:(t % 3 + 1) * 20], epochs=1, batch_size=20,
                shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert m.optimizer.t == 6 and m.optimizer.current_lr() == 0.02


def test_backends_agree_with_a_schedule_and_dropout(backend_name):
    X, y = _data(n=130)
    def run(be):
        m = fm.Sequential([fm.Dense(8, "relu"), fm.Dropout(0.2), fm.Dense(3)], input_dim=5, dtype="float64",
                          seed=4, backend=be)
        m.compile(optimizer=fm.optim.Adam(lr=S.OneCycle(0.02, 30)))
        m.fit(X, y, epochs=3, batch_size=16, verbose=0)  # a partial last batch every epoch
        return m.get_weights()
    for a, b in zip(run("reference"), run(backend_name)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------ against PyTorch
torch_opts = {"sgd": lambda lr: fm.optim.SGD(lr=lr, momentum=0.9, nesterov=True),
              "adam": lambda lr: fm.optim.Adam(lr=lr)}


@pytest.mark.torch
@pytest.mark.parametrize("opt_name", list(torch_opts))
@pytest.mark.parametrize("case", ["exponential_staircase", "inverse_time", "piecewise", "cosine_warmup",
                                  "one_cycle"])
def test_weights_match_torch_with_the_schedule_per_step(backend_name, case, opt_name):
    torch = pytest.importorskip("torch")
    from test_torch_reference import torch_twin, weights_from_torch
    make, formula = CASES[case]
    X, y = _data()
    m = _model(backend_name, torch_opts[opt_name](make()), seed=2)
    net = torch_twin(m)
    params = list(net.parameters())
    opt = (torch.optim.SGD(params, lr=1.0, momentum=0.9, nesterov=True) if opt_name == "sgd"
           else torch.optim.Adam(params, lr=1.0))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for t in range(STEPS):
        i = (t % 10) * 20
        for group in opt.param_groups:
            group["lr"] = formula(t)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt[i:i + 20]), yt[i:i + 20]).backward()
        opt.step()
    m.fit(X, y, epochs=STEPS // 10, batch_size=20, shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), weights_from_torch(net)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.torch
def test_one_cycle_matches_torch_scheduler():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=90, pct_start=0.25,
                                                cycle_momentum=False)
    seen = []
    for _ in range(90):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step() if len(seen) < 90 else None
    np.testing.assert_allclose(S.OneCycle(0.1, 90, pct_start=0.25).rates(0, 90), seen, rtol=1e-12)


# ------------------------------------------------------- use with the model
def test_schedule_survives_save_and_load(tmp_path):
    X, y = _data(n=60)
    sched = S.CosineDecay(0.05, 40, alpha=0.2, warmup_steps=5, warmup_target=0.1)
    m = _model("reference", fm.optim.SGD(learning_rate=sched, momentum=0.5))
    m.fit(X, y, epochs=2, batch_size=20, verbose=0)
    m.save(tmp_path / "m.safetensors")
    back = fm.load_model(tmp_path / "m.safetensors")
    assert back.optimizer.lr == sched and back.optimizer.t == 6
    for a, b in zip(back.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
    m.fit(X, y, epochs=1, batch_size=20, shuffle=False, verbose=0)
    back.fit(X, y, epochs=1, batch_size=20, shuffle=False, verbose=0)
    for a, b in zip(back.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_epoch_callbacks_that_set_the_rate_refuse_a_schedule():
    X, y = _data(n=40)
    m = _model("reference", fm.optim.SGD(lr=S.ExponentialDecay(0.1, 10, 0.9)))
    before = [w.copy() for w in m.get_weights()]
    for cb in (fm.callbacks.ReduceLROnPlateau(monitor="loss"), fm.callbacks.LearningRateScheduler(lambda e: 0.1)):
        with pytest.raises(TypeError, match="schedule"):
            m.fit(X, y, epochs=2, batch_size=20, verbose=0, callbacks=[cb])
        for a, b in zip(m.get_weights(), before):
            np.testing.assert_array_equal(a, b)
        assert m.optimizer.t == 0


@pytest.mark.parametrize("make,match", [
    (lambda: S.ExponentialDecay(0.0, 10, 0.5), "initial"),
    (lambda: S.ExponentialDecay(0.1, 0, 0.5), "decay_steps"),
    (lambda: S.ExponentialDecay(0.1, 10, -0.5), "decay_rate"),
    (lambda: S.InverseTimeDecay(0.1, 10, float("nan")), "decay_rate"),
    (lambda: S.PiecewiseConstant([], [0.1]), "boundaries"),
    (lambda: S.PiecewiseConstant([5, 3], [0.1, 0.2, 0.3]), "increasing"),
    (lambda: S.PiecewiseConstant([5], [0.1]), "one more"),
    (lambda: S.PiecewiseConstant([5], [0.1, -1.0]), r"values\[1\]"),
    (lambda: S.CosineDecay(0.1, 10, alpha=1.5), "alpha"),
    (lambda: S.CosineDecay(0.1, 10, warmup_target=0.2), "warmup_steps > 0"),
    (lambda: S.OneCycle(0.1, 1), "total_steps"),
    (lambda: S.OneCycle(0.1, 10, pct_start=0.05), "rising"),
    (lambda: S.OneCycle(-0.1, 10), "max_lr"),
])
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_learning_rate_names_the_schedules():
    with pytest.raises(ValueError, match="must be a finite number > 0.*schedule of fastmlp.schedules"):
        fm.optim.Adam(lr="cosine")


def test_a_rate_that_is_not_finite_stops_before_any_step(backend_name):
    class Broken(S.LearningRateSchedule):
        def _rates(self, step):
            return np.where(step >= 3, np.nan, 0.1)
    X, y = _data(n=40)
    m = _model(backend_name, fm.optim.SGD(lr=Broken()))
    before = [w.copy() for w in m.get_weights()]
    with pytest.raises(ValueError, match="gives step 3 the rate nan"):
        m.fit(X, y, epochs=1, batch_size=5, verbose=0)
    assert m.optimizer.t == 0
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lrs,match", [
    (np.full(3, 0.1), "3 rates for 4 steps"),
    (np.full(5, 0.1), "5 rates for 4 steps"),
    (np.full(4, 0.1, dtype=np.float32), "float64"),
    (np.array([0.1, -0.1, 0.1, 0.1]), "finite and >= 0"),
    (np.full((4, 1), 0.1), "float64 vector"),
])
def test_train_steps_refuses_rates_of_the_wrong_size_or_value(backend_name, lrs, match):
    # the native loop reads lrs[s] for every step s: a short vector must never reach it
    X, y = _data(n=40)
    m = _model(backend_name, fm.optim.SGD(lr=0.1))
    m.fit(X, y, epochs=1, batch_size=10, verbose=0)
    plan = m._make_plan(m._train_acts, 10, training=True, dropout=True)
    loop = m.optimizer.loop_state(0.0, 0, 4)
    loop.lrs = lrs
    before = m._params.copy()
    losses, correct = np.empty(4), np.empty(4)
    with pytest.raises(ValueError, match=match):
        m.backend.train_steps(plan, loop, X, y.astype(np.int64), np.empty(0), np.arange(40, dtype=np.int64), 0, 4,
                              losses, correct)
    np.testing.assert_array_equal(m._params, before)
