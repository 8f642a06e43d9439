"""Agreement with PyTorch on the same weights (float64): forward passes,
three full-batch steps of every optimizer with every loss, gradient clipping,
and the loss values reported in the history."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import Activation, Dense  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

RTOL, ATOL = 1e-7, 1e-12


class Exp(nn.Module):
    """torch.exp as a module (fastmlp's "exp" activation)."""

    def forward(self, x):
        return torch.exp(x)


TORCH_ACT = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": lambda: nn.ELU(1.0),
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "swish": nn.SiLU,
    "gelu": lambda: nn.GELU(approximate="none"),
    "softmax": lambda: nn.Softmax(dim=1),
    "log_softmax": lambda: nn.LogSoftmax(dim=1),
    "exp": Exp,
}

ARCHS = {
    "relu_tanh": lambda: [Dense(6, "relu"), Dense(5, "tanh")],
    "leaky_elu_selu": lambda: [Dense(6, "leaky_relu"), Dense(5, "elu"), Dense(4, "selu")],
    "softplus_swish_gelu": lambda: [Dense(6, "softplus"), Dense(5, "swish"), Dense(4, "gelu")],
    "sigmoid_nobias_act": lambda: [Dense(5, "sigmoid"), Dense(4, use_bias=False), Activation("tanh"),
                                   Activation("relu")],
}
HEADS = {
    "linear": lambda k: [Dense(k)],
    "softmax": lambda k: [Dense(k, "softmax")],
    "log_softmax": lambda k: [Dense(k), Activation("log_softmax")],
    "sigmoid": lambda k: [Dense(k, "sigmoid")],
    "exp": lambda k: [Dense(k, "exp")],
}


def torch_twin(model):
    """A torch.nn.Sequential with the fastmlp model's layers and weights (W = weight.T)."""
    mods, fan_in = [], model.input_dim
    weights = iter(model.get_weights())
    for layer in model.layers:
        if isinstance(layer, Dense):
            lin = nn.Linear(fan_in, layer.units, bias=layer.use_bias).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(next(weights).T.copy()))
                if layer.use_bias:
                    lin.bias.copy_(torch.from_numpy(next(weights).copy()))
            mods.append(lin)
            fan_in = layer.units
        mods.append(TORCH_ACT[layer.activation]())
    return nn.Sequential(*mods)


def weights_from_torch(net):
    out = []
    for m in net:
        if isinstance(m, nn.Linear):
            out.append(m.weight.detach().numpy().T)
            if m.bias is not None:
                out.append(m.bias.detach().numpy())
    return out


def make(arch, head, k, backend_name, seed=0, d=4):
    model = fastmlp.Sequential(ARCHS[arch]() + HEADS[head](k), input_dim=d, dtype="float64", seed=seed,
                               backend=backend_name)
    # non-zero biases, so that a dropped or mis-broadcast bias is caught
    rng = np.random.default_rng(seed + 100)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


def data(n=11, d=4, seed=1):
    return np.random.default_rng(seed).standard_normal((n, d)) * 1.5


# ------------------------------------------------------------- forward
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_predict_matches_torch_forward(backend_name, arch, head):
    model = make(arch, head, 3, backend_name)
    net = torch_twin(model)
    X = data()
    want = net(torch.from_numpy(X)).detach().numpy()
    got = model.predict(X)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss,head,post", [
    ("cross_entropy", "linear", lambda z: torch.softmax(z, dim=1)),
    ("cross_entropy", "softmax", None),
    ("binary_cross_entropy", "linear", torch.sigmoid),
    ("binary_cross_entropy", "sigmoid", None),
    ("nll", "log_softmax", None),
    ("mse", "linear", None),
    ("poisson", "linear", torch.exp),
    ("poisson", "exp", None),
])
def test_predict_after_compile_matches_torch(backend_name, loss, head, post):
    model = make("leaky_elu_selu", head, 3, backend_name)
    model.compile(loss=loss, optimizer="sgd")
    net = torch_twin(model)
    X = data()
    out = net(torch.from_numpy(X))
    want = (post(out) if post else out).detach().numpy()
    np.testing.assert_allclose(model.predict(X), want, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------- training
OPTIMIZERS = {
    "sgd": (lambda: fastmlp.optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd_nesterov": (lambda: fastmlp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    "rmsprop": (lambda: fastmlp.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-6),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6)),
    "adam": (lambda: fastmlp.optim.Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
}
K = 3
LOSSES = {
    # fastmlp loss, output head, torch criterion, target maker (numpy), torch target
    "cross_entropy": ("cross_entropy", "linear", nn.CrossEntropyLoss, lambda rng, n: np.arange(n) % K),
    "nll": ("nll", "log_softmax", nn.NLLLoss, lambda rng, n: (np.arange(n) * 2) % K),
    "binary_cross_entropy": ("binary_cross_entropy", "linear", nn.BCEWithLogitsLoss,
                             lambda rng, n: (rng.random((n, K)) < 0.5).astype(np.float64)),
    "mse": ("mse", "linear", nn.MSELoss, lambda rng, n: rng.standard_normal((n, K))),
    # the linear head gives the log-rate z: exp(z) - y*z, mean over all elements
    "poisson": ("poisson", "linear", lambda: nn.PoissonNLLLoss(log_input=True, full=False, reduction="mean"),
                lambda rng, n: rng.poisson(2.0, (n, K)).astype(np.float64)),
}


def torch_steps(net, make_opt, criterion, X, y, steps=3, clip_norm=None):
    opt = make_opt(net.parameters())
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(np.asarray(y))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = criterion(net(Xt), yt)
        losses.append(loss.item())
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
        opt.step()
    return losses


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("arch", ["relu_tanh", "softplus_swish_gelu", "sigmoid_nobias_act"])
def test_three_full_batch_steps_match_torch(backend_name, arch, loss_name, opt_name):
    loss, head, criterion, make_y = LOSSES[loss_name]
    make_fm_opt, make_torch_opt = OPTIMIZERS[opt_name]
    model = make(arch, head, K, backend_name)
    net = torch_twin(model)
    rng = np.random.default_rng(5)
    X = data(n=13, seed=2)
    if loss == "poisson":
        # smaller inputs keep the log-rates moderate: at lr 0.1 the softplus net's
        # rates exp(z) ~ 1e5 diverge in PyTorch as well
        X = X * 0.3
    y = make_y(rng, len(X))
    torch_losses = torch_steps(net, make_torch_opt, criterion(), X, y)
    model.compile(loss=loss, optimizer=make_fm_opt())
    hist = model.fit(X, y, epochs=3, batch_size=len(X), shuffle=False, verbose=0)
    assert model.optimizer.t == 3
    np.testing.assert_allclose(hist.history["loss"], torch_losses, rtol=RTOL, atol=ATOL)
    for got, want in zip(model.get_weights(), weights_from_torch(net)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opt_name", ["sgd", "sgd_momentum", "adam"])
@pytest.mark.parametrize("clip_norm", [0.05, 1e3])
def test_clip_norm_matches_torch(backend_name, opt_name, clip_norm):
    make_fm_opt, make_torch_opt = OPTIMIZERS[opt_name]
    model = make("leaky_elu_selu", "linear", K, backend_name)
    net = torch_twin(model)
    X = data(n=9, seed=4)
    y = np.random.default_rng(0).standard_normal((9, K)) * 5.0
    torch_losses = torch_steps(net, make_torch_opt, nn.MSELoss(), X, y, clip_norm=clip_norm)
    model.compile(loss="mse", optimizer=make_fm_opt(), clip_norm=clip_norm)
    hist = model.fit(X, y, epochs=3, batch_size=len(X), shuffle=False, verbose=0)
    np.testing.assert_allclose(hist.history["loss"], torch_losses, rtol=RTOL, atol=ATOL)
    for got, want in zip(model.get_weights(), weights_from_torch(net)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
