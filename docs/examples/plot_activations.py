"""
Activation functions and their derivatives
==========================================

Every activation of :data:`fastmlp.activations.ACTIVATIONS`, drawn by the kernels that train
with it: the forward value ``f(z)`` from ``act_forward`` and the derivative ``f'(z)`` from
``act_backward`` (given ``dA = 1``), in the ``reference`` backend, which the native backends
match to rounding.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastmlp as fm

kernels = fm.get_backend("reference")
z = np.linspace(-4, 4, 401).reshape(-1, 1)
names = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "softplus", "swish", "gelu"]

fig, axes = plt.subplots(3, 3, figsize=(9, 7), sharex=True)
for ax, name in zip(axes.ravel(), names):
    _, code, alpha = fm.activations.resolve(name)
    a = np.empty_like(z)
    kernels.act_forward(z, code, alpha, a)
    dz = np.empty_like(z)
    kernels.act_backward(z, a, np.ones_like(z), code, alpha, dz)
    ax.plot(z, a, label="f(z)")
    ax.plot(z, dz, "--", label="f'(z)")
    ax.axhline(0, color="0.8", lw=0.5)
    ax.set_title(name)
axes[0, 0].legend()
fig.tight_layout()

# %%
# Where a derivative does not exist, fastmlp takes PyTorch's choice: ReLU'(0) = 0,
# LeakyReLU'(0) = alpha (0.01), ELU'(0) = alpha (1.0). The sigmoid's derivative is at most
# 1/4 and tanh's at most 1: a product of many such factors is how gradients vanish in deep
# sigmoid nets (see :ref:`sphx_glr_auto_examples_plot_training_troubles.py`).
relu = fm.activations.resolve("relu")[1]
d0 = np.empty((1, 1))
kernels.act_backward(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), relu, 0.0, d0)
print("ReLU'(0) =", d0[0, 0])
