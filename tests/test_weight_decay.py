"""Weight decay (PyTorch's coupled ``weight_decay`` of SGD, RMSprop and Adam) and
AdamW (decoupled), in the native loops: PyTorch's weights after three steps on
the same weights (float64, 1e-7), batch norm's running statistics spared, the
backends against the reference after shuffled epochs with a partial batch, and
the checks."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Dense, Dropout
from fastmlp._native import plan as _plan
from fastmlp._native.codes import Opt

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from test_batchnorm import _data as bn_data  # noqa: E402
from test_batchnorm import _torch_weights, _twins  # noqa: E402
from test_torch_reference import data, make, torch_twin, weights_from_torch  # noqa: E402

RTOL, ATOL = 1e-7, 1e-12
torch.set_num_threads(1)

DECAYED = {
    "sgd": (lambda: fastmlp.optim.SGD(lr=0.1, weight_decay=0.05),
            lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "sgd_nesterov": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    "rmsprop": (lambda: fastmlp.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-6, weight_decay=0.2),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.2)),
    "adam": (lambda: fastmlp.optim.Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.3),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3)),
    "adamw": (lambda: fastmlp.optim.AdamW(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.5),
              lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.5)),
    "adamw_default": (lambda: fastmlp.optim.AdamW(lr=0.05),
                      lambda p: torch.optim.AdamW(p, lr=0.05)),
}


def _torch_steps(net, make_opt, X, y, steps=3, clip_norm=None):
    opt = make_opt(net.parameters())
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.CrossEntropyLoss()(net(Xt), yt).backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
        opt.step()


@pytest.mark.parametrize("clip_norm", [None, 0.05], ids=["no_clip", "clip"])
@pytest.mark.parametrize("arch", ["relu_tanh", "sigmoid_nobias_act"])
@pytest.mark.parametrize("opt_name", list(DECAYED))
def test_three_full_batch_steps_match_torch(backend_name, opt_name, arch, clip_norm):
    make_fm, make_torch = DECAYED[opt_name]
    model = make(arch, "linear", 3, backend_name)
    net = torch_twin(model)
    X, y = data(n=13, seed=2), np.arange(13) % 3
    _torch_steps(net, make_torch, X, y, clip_norm=clip_norm)
    model.compile(loss="cross_entropy", optimizer=make_fm(), clip_norm=clip_norm)
    model.fit(X, y, epochs=3, batch_size=13, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), weights_from_torch(net)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opt_name", ["sgd_nesterov", "adam", "adamw"])
def test_batch_norm_running_statistics_are_not_decayed(backend_name, opt_name):
    # PyTorch's running statistics are buffers, not parameters: no optimizer touches them
    make_fm, make_torch = DECAYED[opt_name]
    model, net = _twins(backend_name)
    X, y = bn_data()
    net.train()
    _torch_steps(net, make_torch, X, y)
    model.compile("cross_entropy", make_fm())
    model.fit(X, y, epochs=3, batch_size=13, shuffle=False, verbose=0)
    names = ["W0", "gamma", "beta", "running_mean", "running_var", "W1", "b1"]
    for name, got, want in zip(names, model.get_weights(), _torch_weights(net)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", [lambda: fastmlp.optim.SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
                                 lambda: fastmlp.optim.AdamW(lr=0.01, weight_decay=0.1)], ids=["sgd", "adamw"])
def test_backends_match_reference_after_shuffled_epochs(backend_name, opt, dtype):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((103, 8))
    y = np.argmax(X[:, :3], axis=1)

    def run(be):
        m = fastmlp.Sequential([Dense(16, "relu"), Dropout(0.2), Dense(12, "tanh"), fastmlp.BatchNorm(), Dense(3)],
                               input_dim=8, dtype=dtype, seed=5, backend=be)
        m.compile(optimizer=opt())
        m.fit(X, y, epochs=2, batch_size=10, verbose=0)  # 10 full batches and one of 3 rows per epoch
        return m.get_weights()

    rtol = 2e-4 if dtype == "float32" else 1e-10
    for got, want in zip(run(backend_name), run("reference")):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)


def test_decay_changes_the_weights_as_expected():
    # SGD without momentum on a zero gradient (lr 0.1, wd 0.5): every trainable parameter shrinks
    # by 1 - 0.05 per step; AdamW's decoupled decay likewise by 1 - lr * wd before its (zero) step
    for opt in (fastmlp.optim.SGD(lr=0.1, weight_decay=0.5), fastmlp.optim.AdamW(lr=0.1, weight_decay=0.5)):
        m = fastmlp.Sequential([Dense(4)], input_dim=3, dtype="float64", seed=0, backend="reference")
        m.compile(loss="mse", optimizer=opt)
        W, b = m.get_weights()
        b = np.full(4, 0.5)
        m.set_weights([W, b])
        X = np.zeros((5, 3))
        m.fit(X, np.full((5, 4), 0.5), epochs=2, batch_size=5, verbose=0)  # the prediction b is the target
        np.testing.assert_allclose(m.get_weights()[0], W * 0.95 ** 2, rtol=1e-6)


def test_weight_decay_is_checked():
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            fastmlp.optim.Adam(weight_decay=bad)
    opt = fastmlp.optim.SGD(weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.weight_decay = -1.0
    assert opt.weight_decay == 0.1


def test_the_loop_refuses_bad_decay_records():
    m = fastmlp.Sequential([Dense(3)], input_dim=2, dtype="float64", seed=0, backend="reference")
    m.compile(optimizer="sgd")
    m.build(2)
    plan = m._make_plan(m._train_acts, 4, training=True, dropout=True)
    n = m._params.size
    for hyper, match in ((dict(lr=0.1, weight_decay=-1.0), "weight_decay must be >= 0"),
                         (dict(lr=0.1, weight_decay=0.1, decoupled=1.0), "Adam only")):
        loop = _plan.LoopState(Opt.SGD, _plan.hyper(**hyper), np.empty(0), np.empty(0))
        with pytest.raises(ValueError, match=match):
            _plan.check_loop(plan, loop)
    assert n == m._params.size


def test_adamw_saves_and_loads_as_adamw(tmp_path):
    m = fastmlp.Sequential([Dense(3)], input_dim=2, dtype="float64", seed=0)
    m.compile(optimizer=fastmlp.optim.AdamW(lr=0.02, weight_decay=0.2))
    m.fit(np.ones((4, 2)), np.arange(4) % 3, epochs=1, verbose=0)
    m.save(tmp_path / "m.safetensors")
    back = fastmlp.load_model(tmp_path / "m.safetensors").optimizer
    assert type(back) is fastmlp.optim.AdamW and back.weight_decay == 0.2 and back.lr == 0.02
    assert fastmlp.optim.get("adamw").decoupled and not fastmlp.optim.get("adam").decoupled
