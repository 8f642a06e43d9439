"""
Activation functions and their derivatives
==========================================

Every element-wise activation of :data:`fastmlp.activations.ACTIVATIONS`, and PReLU, drawn by
:func:`fastmlp.plot.activations` from the kernels that train with them: the forward value
``f(z)`` from ``act_forward`` and the derivative ``f'(z)`` from ``act_backward`` (given
``dA = 1``), in the ``reference`` backend, which the native backends match to rounding.
softmax and log_softmax are row-wise and Maxout takes a maximum over several inputs: none is a
function of one number, so none is drawn.
"""
import numpy as np

import fastmlp as fm

fig = fm.plot.activations(["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "softplus", "swish",
                           "gelu", "prelu", "step", "identity"])

# %%
# Where a derivative does not exist, fastmlp takes PyTorch's choice: ReLU'(0) = 0,
# LeakyReLU'(0) = alpha (0.01), ELU'(0) = alpha (1.0), PReLU'(0) = alpha (0.25 at
# initialization); ``step`` has no trainable derivative. The sigmoid's derivative is at most
# 1/4 and tanh's at most 1: a product of many such factors is how gradients vanish in deep
# sigmoid nets (see :ref:`sphx_glr_auto_examples_plot_training_troubles.py`).
kernels = fm.get_backend("reference")
relu = fm.activations.resolve("relu")[1]
d0 = np.empty((1, 1))
kernels.act_backward(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), relu, 0.0, d0)
print("ReLU'(0) =", d0[0, 0])
