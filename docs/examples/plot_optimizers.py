"""
Momentum, Nesterov, RMSprop, Adam; local minima and saddle points
=================================================================

The optimizers of :mod:`fastmlp.optim` follow PyTorch's update rules. First they train the
same network on the digits; then the same update kernels (``sgd_update``, ``rmsprop_update``,
``adam_update`` of the ``reference`` backend, the specification of the native ones) move a
point over two small surfaces: one with a saddle point and one with two minima.
"""
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import fastmlp as fm

X, y = load_digits(return_X_y=True)
X = X / 16.0
optimizers = {
    "SGD": lambda: fm.optim.SGD(learning_rate=0.01),
    "SGD + momentum 0.9": lambda: fm.optim.SGD(learning_rate=0.01, momentum=0.9),
    "Nesterov 0.9": lambda: fm.optim.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
    "RMSprop": lambda: fm.optim.RMSprop(learning_rate=1e-3),
    "Adam": lambda: fm.optim.Adam(learning_rate=1e-3),
}
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, make in optimizers.items():
    model = fm.Sequential([fm.Dense(32, activation="relu"), fm.Dense(10)], seed=0)
    model.compile(loss="cross_entropy", optimizer=make())
    history = model.fit(X, y, epochs=10, batch_size=64, verbose=0)
    ax.plot(range(1, 11), history.history["loss"], label=name)
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("training loss")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# A saddle point and two minima
# -----------------------------
# ``f(x, y) = x**2 - y**2 + y**4 / 4`` has a saddle at the origin and minima at
# ``y = +-sqrt(2)``; every run starts just off the saddle, where the gradient is tiny. Plain
# gradient descent crawls away from it; momentum and Adam leave it quickly (Adam scales each
# coordinate by its own gradient history). Every run here starts at ``y > 0`` and ends in the
# minimum at ``(0, +sqrt(2))``; from ``y < 0`` each would end in the other one. Which minimum
# a run ends in depends on where it starts: local minima are one reason the seed matters.
kernels = fm.get_backend("reference")


def grad(p):
    return np.array([2 * p[0], -2 * p[1] + p[1] ** 3])


def run(update, steps=150):
    p = np.array([1.5, 1e-3])
    path = [p.copy()]
    state = [np.zeros(2), np.zeros(2)]
    for t in range(1, steps + 1):
        update(p, grad(p), state, t)
        path.append(p.copy())
    return np.array(path)


runs = {
    "SGD": lambda p, g, s, t: kernels.sgd_update(p, g, s[0], 0.05, 0.0, False),
    "momentum 0.9": lambda p, g, s, t: kernels.sgd_update(p, g, s[0], 0.05, 0.9, False),
    "RMSprop": lambda p, g, s, t: kernels.rmsprop_update(p, g, s[0], 0.05, 0.99, 1e-8),
    "Adam": lambda p, g, s, t: kernels.adam_update(p, g, s[0], s[1], 0.05, 0.9, 0.999, 1e-8, t),
}
xs, ys = np.meshgrid(np.linspace(-2, 2, 200), np.linspace(-2.2, 2.2, 200))
fig, ax = plt.subplots(figsize=(6, 4.5))
ax.contour(xs, ys, xs ** 2 - ys ** 2 + ys ** 4 / 4, levels=30, colors="0.8", linewidths=0.6)
for name, update in runs.items():
    path = run(update)
    ax.plot(path[:, 0], path[:, 1], label=name)
    print(f"{name:>13}: ends at ({path[-1, 0]:+.3f}, {path[-1, 1]:+.3f})")
ax.plot([0], [0], "kx")
ax.legend(fontsize=8)
ax.set_title("f(x, y) = x^2 - y^2 + y^4/4, 150 steps from (1.5, 0.001)")
fig.tight_layout()
