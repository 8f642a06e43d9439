"""
Gradient clipping
=================

``compile(clip_norm=c)`` rescales the whole gradient (all layers together) to norm ``c``
whenever its norm is larger, before the optimizer's step, as
``torch.nn.utils.clip_grad_norm_``. With a learning rate too large for SGD with momentum 0.9, the
unclipped run's loss jumps up and down in the first epochs; the clipped one's steps stay bounded
and its loss falls.
"""
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

import fastmlp as fm

X, y = load_digits(return_X_y=True)
fig, ax = plt.subplots(figsize=(6, 3.5))
for clip in (None, 1.0):
    model = fm.Sequential([fm.Dense(64, activation="relu"), fm.Dense(64, activation="relu"), fm.Dense(10)],
                          seed=0)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=0.1, momentum=0.9),
                  clip_norm=clip)
    history = model.fit(X / 4.0, y, epochs=15, batch_size=32, verbose=0)  # inputs in [0, 4]
    label = f"clip_norm={clip}"
    ax.plot(history.history["loss"], label=label)
    print(f"{label:>14}: loss per epoch {[round(v, 2) for v in history.history['loss'][:6]]} ...")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("training loss")
ax.legend()
fig.tight_layout()
