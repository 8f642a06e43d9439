"""Train a small MLP on scikit-learn's bundled digits and print accuracy and time.

    python examples/quickstart.py
"""
import time

import numpy as np

import fastmlp as fm


def load_digits_split(seed=0):
    """Digits (1797 8x8 images, bundled with scikit-learn) scaled to [0, 1], 75/25 split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order] / 16.0, y[order]
    n_train = int(0.75 * len(X))
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def main():
    (X_train, y_train), (X_test, y_test) = load_digits_split()
    model = fm.Sequential([fm.Dense(64, activation="relu"), fm.Dense(10)], seed=0)
    model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(lr=1e-3))
    t0 = time.perf_counter()
    model.fit(X_train, y_train, epochs=30, batch_size=32, verbose=0)
    elapsed = time.perf_counter() - t0
    scores = model.evaluate(X_test, y_test)
    print(f"backend: {model.backend.NAME}")
    print(f"digits test accuracy: {scores['accuracy']:.4f}")
    print(f"fit time: {elapsed:.3f} s for 30 epochs ({elapsed / 30 * 1e3:.1f} ms per epoch)")
    return scores["accuracy"]


if __name__ == "__main__":
    main()
