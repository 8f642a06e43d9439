"""
Vanishing and exploding gradients, dead ReLUs, saturation
=========================================================

Gradients per layer, measured with the public API only: one step of plain SGD with
``learning_rate=1`` over the whole data set (``batch_size=len(X)``) moves each weight by
minus its gradient, so ``W_before - W_after`` is the gradient. In a deep sigmoid net the
first layers' gradients are orders of magnitude smaller than the last ones' (each layer
multiplies by ``sigmoid' <= 1/4``); ReLU with He initialization keeps them level.
"""
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import fastmlp as fm

X, y = load_digits(return_X_y=True)
X = X / 16.0


def layer_gradient_norms(model):
    before = model.get_weights()
    model.fit(X, y, epochs=1, batch_size=len(X), shuffle=False, verbose=0)
    after = model.get_weights()
    return [float(np.linalg.norm(b - a)) for b, a in zip(before[::2], after[::2])]  # the W's


fig, ax = plt.subplots(figsize=(6, 3.5))
for act in ("sigmoid", "tanh", "relu"):
    model = fm.Sequential([fm.Dense(64, activation=act) for _ in range(8)] + [fm.Dense(10)],
                          input_dim=64, dtype="float64", seed=0)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=1.0))
    norms = layer_gradient_norms(model)
    ax.plot(range(1, len(norms) + 1), norms, marker="o", label=act)
    print(f"{act:>8}: first layer {norms[0]:.2e}, last {norms[-1]:.2e}")
ax.set_yscale("log")
ax.set_xlabel("layer")
ax.set_ylabel("gradient norm of W")
ax.legend()
fig.tight_layout()

# %%
# Dead ReLUs
# ----------
# A ReLU unit whose pre-activation is negative for every input gets no gradient and never
# recovers. Too large a learning rate kills many at once. The hidden layer's outputs come
# from a one-layer model that shares the trained first layer's weights.


def dead_fraction(learning_rate):
    model = fm.Sequential([fm.Dense(128, activation="relu"), fm.Dense(10)], seed=0)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=learning_rate))
    model.fit(X * 4.0, y, epochs=3, batch_size=32, verbose=0)
    hidden = fm.Sequential([fm.Dense(128, activation="relu")], input_dim=64, seed=0)
    hidden.compile(loss="mse", optimizer="sgd")
    hidden.set_weights(model.get_weights()[:2])
    return float((hidden.predict(X * 4.0).max(axis=0) == 0).mean())


for lr in (0.01, 0.5):
    print(f"learning rate {lr}: {dead_fraction(lr):.0%} of the ReLU units are dead")

# %%
# Saturation: sigmoid and tanh units whose inputs are large sit on the flat parts of the
# curve, where the derivative is near 0 (see :ref:`sphx_glr_auto_examples_plot_activations.py`);
# scaling the inputs (here to [0, 1]) and the ``"auto"`` initializer keep them in the middle.
# ``fit(diagnostics=True)`` measures all of these inside the training loop and ``model.diagnose()``
# reports them; :func:`fastmlp.plot.gradient_flow` and :func:`fastmlp.plot.dead_units` draw them.
