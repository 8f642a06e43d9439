"""fm.PReLU: its layer checks, weights layout, agreement with torch.nn.PReLU (predict, three
full-batch steps of SGD, Adam and AdamW), central differences of every parameter through each
backend's own loop, and the native loops against the reference. The helpers at the top build the
same network in PyTorch and are shared with test_maxout.py and test_residual.py."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU, Residual
from fastmlp.backends import reference as ref

from conftest import BACKENDS, NATIVE_BACKENDS, Loss, Opt, central_diff, loop_state, make_plan

torch = pytest.importorskip("torch")

_TORCH_ACTS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "ELU"}


class TorchMaxout(torch.nn.Module):
    """PyTorch's maxout as the issue defines it: ``.view(n, units, pieces).max(-1)``."""

    def __init__(self, units, pieces):
        super().__init__()
        self.units, self.pieces = units, pieces

    def forward(self, x):
        return x.view(x.shape[0], self.units, self.pieces).max(-1).values


class TorchResidual(torch.nn.Module):
    """A residual block as fm.Residual defines it: ``act(F(x) + x)``, or ``act(F(x) + proj(x))``."""

    def __init__(self, body, proj, act):
        super().__init__()
        self.body, self.proj, self.act = body, proj, act

    def forward(self, x):
        return self.act(self.body(x) + (x if self.proj is None else self.proj(x)))


def torch_net(model):
    """(torch.nn.Sequential, its tensors in get_weights' order) of a built float64 model, on its weights
    (residual blocks as TorchResidual modules, their projections after their layers' tensors)."""
    weights, order = iter(model.get_weights()), []

    def linear(fan_in, fan_out, use_bias):
        lin = torch.nn.Linear(fan_in, fan_out, bias=use_bias, dtype=torch.float64)
        lin.weight.data.copy_(torch.from_numpy(next(weights).T.copy()))
        order.append((lin.weight, True))
        if use_bias:
            lin.bias.data.copy_(torch.from_numpy(next(weights)))
            order.append((lin.bias, False))
        return lin

    def activation(act):
        return getattr(torch.nn, _TORCH_ACTS[act])() if act not in (None, "identity") else torch.nn.Identity()

    def build(layers, fan_in):
        mods = []
        for layer in layers:
            act = getattr(layer, "activation", None)
            if isinstance(layer, Residual):
                body, width = build(layer.layers, fan_in)
                proj = None if width == fan_in else linear(fan_in, width, False)
                mods.append(TorchResidual(torch.nn.Sequential(*body), proj, activation(act)))
                fan_in = width
                continue
            if isinstance(layer, Dense):
                mods.append(linear(fan_in, layer.units, layer.use_bias))
                fan_in = layer.units
            elif isinstance(layer, Maxout):
                mods.append(linear(fan_in, layer.units * layer.pieces, layer.use_bias))
                mods.append(TorchMaxout(layer.units, layer.pieces))
                fan_in = layer.units
            elif isinstance(layer, PReLU):
                p = torch.nn.PReLU(1 if layer.shared else fan_in, init=layer.init, dtype=torch.float64)
                p.weight.data.copy_(torch.from_numpy(next(weights)))
                mods.append(p)
                order.append((p.weight, False))
            elif isinstance(layer, BatchNorm):
                bn = torch.nn.BatchNorm1d(fan_in, eps=layer.eps, momentum=layer.momentum, dtype=torch.float64)
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t.data.copy_(torch.from_numpy(next(weights)))
                    order.append((t, False))
                mods.append(bn)
            elif isinstance(layer, Dropout):
                mods.append(torch.nn.Dropout(layer.rate))
            if act not in (None, "identity"):
                mods.append(activation(act))
        return mods, fan_in

    mods, _ = build(model.layers, model.input_dim)
    return torch.nn.Sequential(*mods), order


def torch_weights(order):
    return [(t.detach().T if transposed else t.detach()).numpy().copy() for t, transposed in order]


def assert_weights_close(got, want, rtol):
    assert [w.shape for w in got] == [w.shape for w in want]
    for i, (g, w) in enumerate(zip(got, want)):
        scale = max(float(np.abs(w).max()), 1e-300)
        assert float(np.abs(g - w).max()) <= rtol * scale, f"weight {i}: {np.abs(g - w).max()} vs scale {scale}"


def jitter(model, seed, scale=0.3):
    """Move every weight off its initial value (alphas, gamma, beta; variances kept > 0)."""
    rng = np.random.default_rng(seed)
    ws = []
    for w in model.get_weights():
        noise = scale * rng.standard_normal(w.shape)
        ws.append(w + noise if w.ndim == 2 else np.abs(w + noise) + 0.05)
    model.set_weights(ws)
    return model


def check_predict_matches_torch(model, seed):
    rng = np.random.default_rng(seed)
    model.compile("cross_entropy", "sgd")
    net, _ = torch_net(model)
    net.eval()
    for n in (7, 100):  # the per-request predictor, and the general path
        X = rng.standard_normal((n, model.input_dim))
        want = torch.softmax(net(torch.from_numpy(X)), dim=1).detach().numpy()
        np.testing.assert_allclose(model.predict(X), want, rtol=1e-12, atol=1e-14)


OPTIMIZERS = {
    "sgd_momentum": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), None),
    "adam": (lambda: fastmlp.optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01), None),
    "adamw": (lambda: fastmlp.optim.AdamW(lr=0.01, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1), None),
    "sgd_decay_clip": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.05),
                       lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05), 0.02),
}


def check_three_steps_match_torch(model, opt_name, seed):
    """Three full-batch steps: the weights (running statistics included) as PyTorch's, 1e-7 relative."""
    make_fm, make_torch, clip_value = OPTIMIZERS[opt_name]
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((12, model.input_dim)), rng.integers(0, 3, 12)
    net, order = torch_net(model)
    net.train()
    params = [t for t, _ in order if t.requires_grad]
    opt = make_torch(params)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, clip_value)
        opt.step()
    model.compile("cross_entropy", make_fm(), clip_value=clip_value)
    model.fit(X, y, epochs=3, batch_size=12, shuffle=False, verbose=0)
    assert_weights_close(model.get_weights(), torch_weights(order), 1e-7)


def loop_loss_and_grads(model, X, y, backend):
    """The training loss and gradient of one full-batch step of ``backend``'s own train_steps
    (Opt.NONE: no update) at the model's parameters, which are left as they were."""
    be = fastmlp.get_backend(backend)
    n = X.shape[0]
    plan = make_plan(model._records(model._train_acts, n, dropout=True), n, model.dtype, Loss.CE,
                     params=model._params.copy())
    loop = loop_state(Opt.NONE, model._params.size, model.dtype, seed=3)
    losses, correct = np.empty(1), np.empty(1)
    assert be.train_steps(plan, loop, X, y, np.empty(0, X.dtype), np.arange(n, dtype=np.int64), 0, 1,
                          losses, correct) == 1
    return losses[0], plan.grads.copy()


def check_finite_differences(model, backend, seed, trained):
    """Central differences of the loop's loss agree with its gradient of every parameter
    (batch norm's running statistics, buffers, excepted: their gradient is 0)."""
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((9, model.input_dim)), rng.integers(0, 3, 9).astype(np.int64)
    _, grads = loop_loss_and_grads(model, X, y, backend)
    fd = central_diff(lambda: loop_loss_and_grads(model, X, y, backend)[0], model._params)
    mask = np.zeros(model._params.size, bool)
    for a, b in ref.trainable_spans(model._records(model._train_acts, 9)):
        mask[a:b] = True
    np.testing.assert_allclose(grads[mask], fd[mask], rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(grads[~mask], 0.0)
    for lo, hi in trained:  # the new layers' parameters get a gradient
        assert np.abs(grads[lo:hi]).min() > 0


def check_native_matches_reference(layers, native, dtype, seed, d=6):
    """Two shuffled epochs (batches of 5 of 23 rows: a partial last batch), native vs reference."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((23, d)).astype(dtype), rng.integers(0, 3, 23)
    out = {}
    for name in ("reference", native):
        model = fastmlp.Sequential(layers(), input_dim=d, dtype=dtype, seed=seed, backend=name)
        jitter(model, seed)
        model.compile("cross_entropy", fastmlp.optim.Adam(lr=0.01, weight_decay=0.01))
        hist = model.fit(X, y, epochs=2, batch_size=5, verbose=0)
        out[name] = model.get_weights(), hist.history["loss"]
    rtol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    assert_weights_close(out[native][0], out["reference"][0], rtol)
    np.testing.assert_allclose(out[native][1], out["reference"][1], rtol=rtol)
    w0 = fastmlp.Sequential(layers(), input_dim=d, dtype=dtype, seed=seed, backend="reference")
    assert not np.allclose(jitter(w0, seed).get_weights()[0], out[native][0][0])  # it trained


def split_vs_reference(model, X, y, rows, n_steps, clip_value=0.0, **loop):
    """``n_steps`` steps of ``rows`` rows (Adam) in the reference and in the Cython loop split
    between 2 threads of its own (asserted): {backend: (params, grads, losses)}."""
    from fastmlp._native import loop as LP
    from fastmlp._native import runtime as R
    dt = model.dtype
    order = np.random.default_rng(6).permutation(X.shape[0]).astype(np.int64)
    recs = model._records(model._train_acts, rows, dropout=True)
    old_limits, old_threads = LP._set_loop_split_limits(0, 2), R.get_num_threads()
    out = {}
    try:
        R.set_num_threads(2)
        for name in ("reference", "cython"):
            plan = make_plan(recs, rows, dt, Loss.CE, params=model._params.copy())
            state = loop_state(Opt.ADAM, model._params.size, dt, seed=1, **loop)
            state.clip_value = clip_value
            losses, correct = np.empty(n_steps), np.empty(n_steps)
            fastmlp.get_backend(name).train_steps(plan, state, X, y, np.empty(0, dt), order, 0, n_steps, losses,
                                                  correct)
            out[name] = plan.params.copy(), plan.grads.copy(), losses.copy()
            if name == "cython":
                assert LP._last_loop_threads() == 2
    finally:
        LP._set_loop_split_limits(*old_limits)
        R.set_num_threads(old_threads)
    rtol = 2e-4 if dt == np.float32 else 1e-10
    np.testing.assert_allclose(out["cython"][2], out["reference"][2], rtol=rtol)
    for k in (0, 1):
        scale = np.abs(out["reference"][k]).max()
        assert np.abs(out["cython"][k] - out["reference"][k]).max() <= rtol * scale
    assert not np.allclose(out["reference"][0], model._params)
    return out


# ------------------------------------------------------------------ the layer
def _nets(i):
    """Small nets mixing PReLU with the other layers."""
    return [
        lambda: [Dense(7), PReLU(), Dense(3)],
        lambda: [Dense(7), PReLU(init=0.1, shared=True), Dense(5, "tanh"), Dense(4), PReLU(), Dense(3)],
        lambda: [Dense(7, use_bias=False), BatchNorm(), PReLU(), Dropout(0.3), Dense(6), PReLU(shared=True),
                 Activation("sigmoid"), Dense(3)],
    ][i]


def test_bad_arguments_raise_clear_errors():
    for bad in (float("nan"), float("inf"), "0.25", None, True):
        with pytest.raises(ValueError, match="PReLU init must be a finite number"):
            PReLU(init=bad)
    with pytest.raises(ValueError, match="PReLU cannot be the first layer"):
        fastmlp.Sequential([PReLU(), Dense(3)], input_dim=4)
    with pytest.raises(ValueError, match="PReLU cannot be the last layer"):
        fastmlp.Sequential([Dense(3), PReLU()], input_dim=4)


def test_weights_layout_and_init():
    model = fastmlp.Sequential([Dense(4), PReLU(init=0.3), Dense(5, use_bias=False), PReLU(shared=True),
                                Dense(2)], input_dim=3, dtype="float64", seed=0)
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 4), (4,), (4,), (4, 5), (1,), (5, 2), (2,)]
    w = model.get_weights()
    np.testing.assert_array_equal(w[2], np.full(4, 0.3))
    np.testing.assert_array_equal(w[4], [0.25])
    assert model.count_params() == 12 + 4 + 4 + 20 + 1 + 10 + 2
    # the alphas are trained parameters: weight decay applies to them (PyTorch decays every parameter)
    spans = ref.trainable_spans(model._records(model._train_acts, 4))
    assert (16, 20) in spans and (40, 41) in spans


def test_derivative_at_zero_follows_torch():
    """At x == 0 the identity branch is not taken (x > 0 strictly): dx = alpha * dy, and dalpha = 0."""
    Z = np.array([[0.0, -2.0, 3.0]])
    dA, alpha, dalpha = np.array([[1.0, 1.0, 1.0]]), np.array([0.2, 0.3, 0.4]), np.zeros(3)
    ref._prelu_backward(Z, alpha, dA, dalpha, dA)
    x = torch.tensor(Z, requires_grad=True)
    p = torch.nn.PReLU(3, dtype=torch.float64)
    p.weight.data.copy_(torch.from_numpy(alpha))
    p(x).sum().backward()
    np.testing.assert_array_equal(dA, x.grad.numpy())
    np.testing.assert_array_equal(dalpha, p.weight.grad.numpy())
    np.testing.assert_array_equal(dA, [[0.2, 0.3, 1.0]])


@pytest.mark.parametrize("net", [0, 1, 2])
def test_predict_matches_torch(backend_name, net):
    model = fastmlp.Sequential(_nets(net)(), input_dim=5, dtype="float64", seed=net, backend=backend_name)
    check_predict_matches_torch(jitter(model, net), 10 + net)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_three_steps_match_torch(backend_name, opt_name):
    layers = [Dense(7), PReLU(), Dense(6, use_bias=False), BatchNorm(), PReLU(shared=True), Dense(3)]
    model = fastmlp.Sequential(layers, input_dim=5, dtype="float64", seed=3, backend=backend_name)
    check_three_steps_match_torch(jitter(model, 4), opt_name, 5)


def test_finite_differences_every_parameter(backend_name):
    model = fastmlp.Sequential(_nets(2)(), input_dim=4, dtype="float64", seed=1, backend=backend_name)
    jitter(model, 2)
    prelus = [(u.w_off, u.w_off + u.n_params) for u in model._units if u.prelu]
    check_finite_differences(model, backend_name, 6, prelus)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", [1, 2])
def test_native_loops_match_reference(native_name, dtype, net):
    check_native_matches_reference(_nets(net), native_name, dtype, 20 + net)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extra", [{}, {"clip_value": 2e-3}, {"clip_norm": 0.05, "weight_decay": 0.1}],
                         ids=["plain", "clip_value", "clip_norm_decay"])
def test_cython_split_loop_matches_reference(dtype, extra):
    """The Cython loop splits a PReLU net between its threads (each adds its rows' sums for
    dalpha; the alphas' update, clipping and decay go by shares): the reference's weights."""
    if "cython" not in BACKENDS:  # pragma: no cover
        pytest.skip("the Cython backend is not built")
    dt = np.dtype(dtype)
    layers = [Dense(40), PReLU(), Dense(33), PReLU(shared=True), Dense(3)]
    model = jitter(fastmlp.Sequential(layers, input_dim=24, dtype=dt, seed=5, backend="cython"), 5, 0.1)
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((64, 24)).astype(dt), rng.integers(0, 3, 64).astype(np.int64)
    out = split_vs_reference(model, X, y, 16, 4, extra.get("clip_value", 0.0),
                             clip_norm=extra.get("clip_norm", 0.0), weight_decay=extra.get("weight_decay", 0.0))
    alphas = [slice(u.w_off, u.w_off + u.n_params) for u in model._units if u.prelu]
    for a in alphas:  # the alphas trained, and their gradients reached every share
        assert np.abs(out["cython"][0][a] - model._params[a]).min() > 0
        assert np.abs(out["cython"][1][a]).min() > 0


def test_learns_and_every_backend_agrees():
    """A learnable problem: the loss falls and every backend ends on the same weights (float64)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6))
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    got = {}
    for name in BACKENDS:
        model = fastmlp.Sequential([Dense(16), PReLU(), Dense(2)], input_dim=6, dtype="float64", seed=0,
                                   backend=name)
        model.compile("cross_entropy", fastmlp.optim.Adam(lr=0.02))
        hist = model.fit(X, y, epochs=30, batch_size=16, verbose=0)
        assert hist.history["loss"][-1] < 0.6 * hist.history["loss"][0]
        got[name] = model.get_weights()
    for name in NATIVE_BACKENDS:
        assert_weights_close(got[name], got["reference"], 1e-9)
    assert not np.allclose(got["reference"][2], 0.25)  # alpha learned
