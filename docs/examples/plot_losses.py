"""
Losses and their output gradients
=================================

Each loss is a fused kernel that returns the loss and its gradient at the output layer's
pre-activations ``z`` together. For softmax + cross-entropy and sigmoid + binary
cross-entropy (in the stable softplus form) that gradient is ``prediction - target``; for
identity + MSE ``2 (prediction - target)``; for the Poisson loss on log-rates ``exp(z) - y``.

Here, for one sample with target 1, the loss and the gradient of each as a function of the
output ``z`` (for cross-entropy: the logit of the true class, the other class at 0).
"""
import matplotlib.pyplot as plt
import numpy as np

import fastmlp as fm

kernels = fm.get_backend("reference")
z = np.linspace(-6, 6, 241)
no_weights = np.empty(0)
curves = {}

# softmax + cross-entropy over two classes (logits [z, 0]), true class 0
Z = np.column_stack([z, np.zeros_like(z)])
P, dZ = np.empty_like(Z), np.empty_like(Z)
loss = [kernels.softmax_cross_entropy(Z[i:i + 1], np.array([0]), no_weights, P[i:i + 1], dZ[i:i + 1])
        for i in range(len(z))]
curves["softmax + cross-entropy"] = (loss, dZ[:, 0])

# sigmoid + binary cross-entropy, target 1
for name, fn in [("sigmoid + BCE", kernels.sigmoid_binary_cross_entropy),
                 ("Poisson (log-rate), y = 1", kernels.poisson_loss)]:
    loss, grad = [], []
    for zi in z:
        Zi, P1, d1 = np.array([[zi]]), np.empty((1, 1)), np.empty((1, 1))
        loss.append(fn(Zi, np.array([[1.0]]), no_weights, P1, d1))
        grad.append(d1[0, 0])
    curves[name] = (loss, grad)

# identity + MSE, target 1
loss, grad = [], []
for zi in z:
    d1 = np.empty((1, 1))
    loss.append(kernels.mse_loss(np.array([[zi]]), np.array([[1.0]]), no_weights, d1))
    grad.append(d1[0, 0])
curves["MSE, y = 1"] = (loss, grad)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for name, (loss, grad) in curves.items():
    axes[0].plot(z, loss, label=name)
    axes[1].plot(z, grad, label=name)
axes[0].set_ylim(0, 8)
axes[0].set_title("loss")
axes[1].set_title("gradient at z")
axes[1].set_ylim(-2, 2)
axes[0].legend(fontsize=8)
for ax in axes:
    ax.set_xlabel("z")
fig.tight_layout()

# %%
# The log-softmax + NLL pair gives the same numbers as softmax + cross-entropy, in two
# layers: ``Activation("log_softmax")`` then ``compile(loss="nll")``.
from sklearn.datasets import load_digits  # noqa: E402

X, y = load_digits(return_X_y=True)
X = X[:300] / 16.0
for layers, loss in [([fm.Dense(10)], "cross_entropy"),
                     ([fm.Dense(10), fm.Activation("log_softmax")], "nll")]:
    model = fm.Sequential(layers, input_dim=64, dtype="float64", seed=0)
    model.compile(loss=loss, optimizer=fm.optim.SGD(learning_rate=0.1))
    print(f"{loss:>13}: {model.evaluate(X, y[:300])['loss']:.12f}")
