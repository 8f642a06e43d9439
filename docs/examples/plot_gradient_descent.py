"""
Gradient descent: batch, stochastic, mini-batch
===============================================

``batch_size`` picks the variant: ``len(X)`` is batch gradient descent (one exact gradient
per epoch), ``1`` stochastic gradient descent (one noisy gradient per sample), anything
between is mini-batch. A last partial batch is trained, not dropped. Here plain SGD (no
momentum) on scikit-learn's digits, the same learning rate for all three.
"""
import os

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

import fastmlp as fm

small = os.environ.get("FASTMLP_DOCS_SMALL") == "1"
X, y = load_digits(return_X_y=True)
X = X / 16.0
epochs = 10 if small else 40

fig, ax = plt.subplots(figsize=(6, 3.5))
for label, batch_size in [("batch (1797 rows)", len(X)), ("mini-batch (32)", 32), ("stochastic (1)", 1)]:
    model = fm.Sequential([fm.Dense(32, activation="relu"), fm.Dense(10)], seed=0)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=0.05))
    history = model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0)
    ax.plot(range(1, epochs + 1), history.history["loss"], marker="o", ms=3, label=label)
    print(f"{label:>18}: loss {history.history['loss'][-1]:.3f} after {epochs} epochs")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("training loss")
ax.legend()
fig.tight_layout()

# %%
# Per epoch, smaller batches make more updates and go further; per update, the batch
# gradient is the most accurate. Mini-batches are the usual compromise: their products are
# large enough for BLAS and the native kernels to run near the machine's speed.
