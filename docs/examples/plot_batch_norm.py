"""
Batch normalization
===================

:class:`fastmlp.BatchNorm` normalizes each feature over the batch in training (and keeps
running statistics for predict), as ``torch.nn.BatchNorm1d``. The usual place is between a
Dense layer without bias and its activation. Here a deep, narrow tanh net on the digits,
with and without it, trained with the same SGD.
"""
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

import fastmlp as fm

X, y = load_digits(return_X_y=True)
X = X / 16.0


def net(batch_norm, depth=6):
    layers = []
    for _ in range(depth):
        if batch_norm:
            layers += [fm.Dense(32, use_bias=False), fm.BatchNorm(), fm.Activation("tanh")]
        else:
            layers += [fm.Dense(32, activation="tanh")]
    return fm.Sequential(layers + [fm.Dense(10)], seed=0)


fig, ax = plt.subplots(figsize=(6, 3.5))
for batch_norm in (False, True):
    model = net(batch_norm)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=0.02))
    history = model.fit(X, y, epochs=15, batch_size=64, verbose=0, validation_split=0.2)
    label = "with BatchNorm" if batch_norm else "without"
    ax.plot(history.history["val_accuracy"], label=label)
    print(f"{label:>14}: validation accuracy {history.history['val_accuracy'][-1]:.3f}")
ax.set_xlabel("epoch")
ax.set_ylabel("validation accuracy")
ax.legend()
fig.tight_layout()

# %%
# ``get_weights`` gives each BatchNorm layer's ``gamma, beta, running_mean, running_var``
# (Keras' order) in its place among the Dense layers' ``W`` and ``b``.
print([w.shape for w in model.get_weights()[:6]])
