"""
Initialization by activation
============================

``kernel_initializer="auto"`` (the default) picks He for the ReLU family, LeCun normal for
SELU and Glorot for the rest: each keeps the variance of the activations about the same from
layer to layer for its activation. Here the standard deviation of the activations through 20
layers of 256 units, from the weights :func:`fastmlp.initializers.initialize` draws, for
three initializers under ReLU and tanh.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastmlp as fm

rng = np.random.default_rng(0)
kernels = fm.get_backend("reference")
X = rng.standard_normal((256, 256))
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
for ax, act in zip(axes, ["relu", "tanh"]):
    _, code, alpha = fm.activations.resolve(act)
    auto = fm.initializers.auto_initializer(code)
    for init in ["glorot_uniform", "he_normal", "lecun_normal"]:
        A, stds = X, []
        for _ in range(20):
            W = fm.initializers.initialize(init, code, 256, 256, rng, np.float64)
            Z = A @ W
            A = np.empty_like(Z)
            kernels.act_forward(Z, code, alpha, A)
            stds.append(A.std())
        ax.plot(range(1, 21), stds, label=init + (" (auto)" if init == auto else ""))
    ax.set_yscale("log")
    ax.set_title(act)
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)
axes[0].set_ylabel("std of the activations")
fig.tight_layout()
print("auto:", {a: fm.initializers.auto_initializer(fm.activations.resolve(a)[1])
                for a in ["relu", "tanh", "selu", "sigmoid"]})
