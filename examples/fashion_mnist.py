"""Train a 784-256-128-10 ReLU net on the real Fashion-MNIST and print test accuracy.

    python examples/fashion_mnist.py [--data DIR] [--epochs 15] [--backend auto] [--threads 2]

The data is looked up in --data, $FASTMLP_DATA, ../shared/data/fashion-mnist
beside this repository, and /usr/share/datasets/fashion-mnist (Debian's
package dataset-fashion-mnist).
"""
import argparse
import time
from pathlib import Path

import fastmlp as fm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def load(path=None):
    if path is None and SHARED.is_dir():
        path = SHARED
    return fm.datasets.load_fashion_mnist(path)


def build(backend="auto", n_threads=None, seed=0, dtype="float32"):
    model = fm.Sequential(
        [fm.Dense(256, activation="relu"), fm.Dense(128, activation="relu"), fm.Dense(10)],
        input_dim=784, dtype=dtype, seed=seed, backend=backend, n_threads=n_threads,
    )
    model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(lr=1e-3))
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)

    (X_train, y_train), (X_test, y_test) = load(args.data)
    model = build(args.backend, args.threads)
    t0 = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(X_test, y_test), verbose=args.verbose)
    elapsed = time.perf_counter() - t0
    acc = model.evaluate(X_test, y_test)["accuracy"]
    print(f"backend: {model.backend.NAME}; {args.epochs} epochs in {elapsed:.1f} s "
          f"({min(history.history['time']):.2f} s per epoch at best)")
    print(f"Fashion-MNIST test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
