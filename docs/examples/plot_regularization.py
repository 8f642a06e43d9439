"""
Dropout and L2 weight penalty
=============================

A wide net on a few hundred digits overfits: training accuracy reaches 1 while validation
accuracy stalls. :class:`fastmlp.Dropout` (inverted dropout: survivors scaled by
``1 / (1 - rate)``, the identity at predict) and an L2 penalty on the weights
(``Dense(l2=...)`` adds ``l2 * sum(W**2)`` to the loss, Keras' ``kernel_regularizer``) are
two regularizers; a third, decoupled weight decay, is ``fm.optim.AdamW(weight_decay=...)``.

How much they help depends on the problem, and the run below is an honest example: on 300
digits in 30 epochs none of them lowers the plain net's validation loss by much (the training loss with L2
includes the penalty). Regularization is a setting to tune against a validation set.
"""
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

import fastmlp as fm

X, y = load_digits(return_X_y=True)
X = X / 16.0
X_train, y_train, X_val, y_val = X[:300], y[:300], X[300:], y[300:]
variants = {
    "plain": [fm.Dense(512, activation="relu"), fm.Dense(10)],
    "dropout 0.5": [fm.Dense(512, activation="relu"), fm.Dropout(0.5), fm.Dense(10)],
    "L2 1e-3": [fm.Dense(512, activation="relu", l2=1e-3), fm.Dense(10, l2=1e-3)],
    "AdamW 0.1": [fm.Dense(512, activation="relu"), fm.Dense(10)],
}
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, layers in variants.items():
    model = fm.Sequential(layers, seed=0)
    optimizer = fm.optim.AdamW(weight_decay=0.1) if name.startswith("AdamW") else "adam"
    model.compile(loss="cross_entropy", optimizer=optimizer)
    history = model.fit(X_train, y_train, epochs=30, batch_size=32, verbose=0,
                        validation_data=(X_val, y_val))
    line, = ax.plot(history.history["val_loss"], label=f"{name}, validation")
    ax.plot(history.history["loss"], ":", color=line.get_color())
    print(f"{name:>12}: train loss {history.history['loss'][-1]:.3f}, validation loss "
          f"{history.history['val_loss'][-1]:.3f} (best {min(history.history['val_loss']):.3f}), "
          f"validation accuracy {history.history['val_accuracy'][-1]:.3f}")
ax.set_xlabel("epoch")
ax.set_ylabel("loss (dotted: training)")
ax.legend(fontsize=8)
fig.tight_layout()
