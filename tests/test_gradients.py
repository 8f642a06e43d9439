"""Analytic gradients against float64 central finite differences.

For every differentiable activation, every loss kernel, and whole networks
(each loss, depth 1 to 4, mixed activations, L2 penalties), on every backend.
"""
import numpy as np
import pytest

import fastmlp
from fastmlp import activations as A
from fastmlp import Activation, Dense

from conftest import central_diff, fd_grads_via_fit, model_loss

RTOL, ATOL = 1e-6, 1e-8
DIFF_CODES = sorted(code for code, _, _ in A.ACTIVATIONS.values() if code != A.STEP)
KINKED = {A.RELU, A.LEAKY_RELU, A.ELU, A.SELU}
ALPHA = {A.LEAKY_RELU: 0.07, A.ELU: 1.3}


def check(analytic, numeric, err_msg=""):
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=err_msg)


# ------------------------------------------------------------- activations
@pytest.mark.parametrize("code", DIFF_CODES, ids=[A.CODE_TO_NAME[c] for c in DIFF_CODES])
def test_activation_gradient(backend_name, code):
    be = fastmlp.get_backend(backend_name)
    rng = np.random.default_rng(code)
    Z = rng.standard_normal((4, 5)) * 2.0
    if code in KINKED:  # keep FD steps away from the kink at 0
        Z = np.where(np.abs(Z) < 0.1, np.sign(Z + 1e-300) * 0.1 + Z, Z)
    Z[0, :3] = [25.0, -25.0, 19.0]  # softplus threshold region and saturations
    if code == A.EXP:  # exp(25) would swamp the finite differences of the other entries
        Z[0, :3] = [6.0, -25.0, 4.0]
    alpha = ALPHA.get(code, 0.0)
    dA = rng.standard_normal(Z.shape)
    out = np.empty_like(Z)

    def f():
        be.act_forward(Z, code, alpha, out)
        return float(np.sum(dA * out))

    numeric = central_diff(f, Z)
    Aout = np.empty_like(Z)
    be.act_forward(Z, code, alpha, Aout)
    dZ = np.empty_like(Z)
    be.act_backward(Z, Aout, dA, code, alpha, dZ)
    check(dZ, numeric, A.CODE_TO_NAME[code])


# ------------------------------------------------------------- loss kernels
LOSS_CASES = ["ce", "ce_onehot", "ce_soft", "nll", "bce", "bce_soft", "mse", "poisson", "poisson_rates"]


def _loss_setup(case, rng, n=6, k=4):
    Z = rng.standard_normal((n, k)) * 2.0
    y = rng.integers(0, k, n).astype(np.int64)
    if case == "ce":
        return "softmax_cross_entropy", Z, y, 2
    if case == "ce_onehot":
        return "softmax_cross_entropy_onehot", Z, np.eye(k)[y], 2
    if case == "ce_soft":
        return "softmax_cross_entropy_onehot", Z, rng.dirichlet(np.ones(k), n), 2
    if case == "nll":
        logP = Z - np.logaddexp.reduce(Z, axis=1, keepdims=True)
        return "nll_loss", logP, y, 1
    if case == "bce":
        return "sigmoid_binary_cross_entropy", Z, (rng.random((n, k)) < 0.5).astype(float), 2
    if case == "bce_soft":
        return "sigmoid_binary_cross_entropy", Z, rng.random((n, k)), 2
    if case == "poisson":  # log-rates and counts (with zeros)
        return "poisson_loss", Z, rng.poisson(2.0, (n, k)).astype(float), 2
    if case == "poisson_rates":
        return "poisson_loss", Z, rng.random((n, k)) * 5.0, 2
    return "mse_loss", Z, rng.standard_normal((n, k)), 1


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_kernel_gradient(backend_name, case, weighted):
    be = fastmlp.get_backend(backend_name)
    rng = np.random.default_rng(LOSS_CASES.index(case) + 10 * weighted)
    kernel, Z, T, n_out = _loss_setup(case, rng)
    sw = rng.uniform(0.2, 3.0, Z.shape[0]) if weighted else np.empty(0)
    outs = [np.empty_like(Z) for _ in range(n_out)]
    fn = getattr(be, kernel)

    def f():
        return fn(Z, T, sw, *outs)

    numeric = central_diff(f, Z)
    f()
    check(outs[-1], numeric, f"{kernel} ({case})")


# ------------------------------------------------------------- whole networks
HIDDEN = {
    "depth1": [],
    "depth2_tanh": [Dense(5, "tanh")],
    "depth3_sigmoid_elu": [Dense(4, "sigmoid"), Dense(5, "elu")],
    "depth4_gelu_swish_softplus": [Dense(5, "gelu"), Dense(4, "swish"), Dense(5, "softplus")],
    "depth4_selu_leaky_nobias": [Dense(4, "selu"), Dense(5, "leaky_relu"), Dense(4, use_bias=False),
                                 Activation("tanh")],
    "activation_units": [Dense(5), Activation("tanh"), Activation("sigmoid")],
    "l2": [Dense(5, "tanh", l2=0.05), Dense(4, "softplus", l2=0.2)],
}
# loss -> (output layers, target kind)
HEADS = {
    "ce_labels": ("cross_entropy", [Dense(3, l2=0.01)], "labels"),
    "ce_onehot": ("cross_entropy", [Dense(3)], "onehot"),
    "ce_softmax_layer": ("cross_entropy", [Dense(3, "softmax")], "labels"),
    "nll": ("nll", [Dense(3), Activation("log_softmax")], "labels"),
    "bce": ("binary_cross_entropy", [Dense(2)], "binary"),
    "mse": ("mse", [Dense(2)], "real"),
    "mse_tanh_out": ("mse", [Dense(2, "tanh")], "real"),
    "mse_softmax_out": ("mse", [Dense(3), Activation("softmax")], "probs"),
    "poisson": ("poisson", [Dense(2)], "counts"),
    "poisson_exp_layer": ("poisson", [Dense(2, "exp")], "counts"),
    "mse_exp_out": ("mse", [Dense(2), Activation("exp")], "real"),
}


def _targets(kind, rng, n):
    if kind == "labels":
        return np.arange(n) % 3
    if kind == "onehot":
        return np.eye(3)[np.arange(n) % 3]
    if kind == "binary":
        return (rng.random((n, 2)) < 0.5).astype(float)
    if kind == "probs":
        return rng.dirichlet(np.ones(3), n)
    if kind == "counts":
        return rng.poisson(1.5, (n, 2)).astype(float)
    return rng.standard_normal((n, 2))


def make_model(hidden, head, backend_name, seed=0):
    loss, out_layers, kind = HEADS[head]
    layers = [type(l)(**vars(l)) if isinstance(l, Dense) else Activation(l.activation)
              for l in HIDDEN[hidden] + out_layers]
    model = fastmlp.Sequential(layers, input_dim=3, dtype="float64", seed=seed, backend=backend_name)
    model.compile(loss=loss, optimizer=fastmlp.optim.SGD(lr=1e-3))
    return model, kind


# every architecture x every loss unweighted; sample weights on a few architectures
NET_CASES = [(h, l, False) for h in HIDDEN for l in HEADS] + [
    (h, l, True) for h in ("depth2_tanh", "depth4_selu_leaky_nobias", "l2") for l in HEADS]


@pytest.mark.parametrize("hidden,head,weighted", NET_CASES,
                         ids=[f"{h}-{l}-{'w' if w else 'u'}" for h, l, w in NET_CASES])
def test_network_gradient(backend_name, hidden, head, weighted):
    model, kind = make_model(hidden, head, backend_name)
    rng = np.random.default_rng(7)
    n = 7
    X = rng.standard_normal((n, 3))
    y = _targets(kind, rng, n)
    sw = rng.uniform(0.2, 3.0, n) if weighted else None
    # bias terms start at zero; move them so that their gradients are generic
    model._params[...] += 0.1 * rng.standard_normal(model._params.shape)
    loss, grads = fd_grads_via_fit(model, X, y, sw)
    np.testing.assert_allclose(loss, model_loss(model, X, y, sw), rtol=1e-10)
    numeric = central_diff(lambda: model_loss(model, X, y, sw), model._params)
    check(grads, numeric, f"{hidden} + {head}")


def test_l2_penalty_is_in_loss_and_gradient(backend_name):
    """Dense(l2=c) adds c * sum(W**2) to the loss and 2 c W to dW (Keras' kernel_regularizer)."""
    c = 0.3
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    plain = fastmlp.Sequential([Dense(2)], input_dim=3, dtype="float64", seed=3, backend=backend_name)
    reg = fastmlp.Sequential([Dense(2, l2=c)], input_dim=3, dtype="float64", seed=3, backend=backend_name)
    for m in (plain, reg):
        m.compile(loss="mse", optimizer=fastmlp.optim.SGD(lr=1e-3))
    W = reg.get_weights()[0]
    l0, g0 = fd_grads_via_fit(plain, X, y)
    l1, g1 = fd_grads_via_fit(reg, X, y)
    np.testing.assert_allclose(l1 - l0, c * np.sum(W**2), rtol=1e-12)
    np.testing.assert_allclose(g1[:W.size] - g0[:W.size], 2 * c * W.ravel(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g1[W.size:], g0[W.size:], rtol=1e-12)  # no penalty on the bias
