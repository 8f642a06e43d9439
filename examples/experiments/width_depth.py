"""Experiment 6: width and depth against test accuracy and training time on Fashion-MNIST.

    python examples/experiments/width_depth.py [--quick] [--out width_depth.png] [--data DIR]

ReLU nets of every width x depth of a small grid (He initialization, Adam 1e-3, batch 128) trained
for the same epochs on a subset of Fashion-MNIST's training set and scored on a subset of its test
set. Wider and deeper nets have more parameters and take longer per epoch; on a small subset and a
few epochs the accuracy gains flatten quickly, which is what the printed table and the figure show.
One thread by default (``--threads``): the times then measure the nets' sizes, not the thread
policy, and a shared machine's other load moves them less (two threads that wait for each other
at every step slow down badly when a third process takes one of the cores).

The data is looked up in --data, $FASTMLP_DATA, ../shared/data/fashion-mnist beside this repository,
and /usr/share/datasets/fashion-mnist (see fastmlp.datasets.load_fashion_mnist).
"""
import argparse
import time
from pathlib import Path

import numpy as np

import fastmlp as fm

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-mnist"


def load(path=None, n_train=10000, n_test=2000, seed=0):
    if path is None and SHARED.is_dir():
        path = SHARED
    (X, y), (X_test, y_test) = fm.datasets.load_fashion_mnist(path)
    rng = np.random.default_rng(seed)
    train = rng.permutation(len(X))[:n_train]
    test = rng.permutation(len(X_test))[:n_test]
    return (X[train], y[train]), (X_test[test], y_test[test])


def n_params(model):
    return int(sum(w.size for w in model.get_weights()))


def run(quick=False, seed=0, data=None, widths=None, depths=None, epochs=None, threads=1):
    """Returns {"widths", "depths", "accuracy": (D, W), "seconds": (D, W), "params": (D, W), ...}."""
    if quick:
        n_train, n_test, epochs_default, widths_default, depths_default = 3000, 1000, 3, (16, 128), (1, 2)
    else:
        n_train, n_test, epochs_default, widths_default, depths_default = 12000, 5000, 5, (32, 128, 512), (1, 2, 4)
    widths, depths = tuple(widths or widths_default), tuple(depths or depths_default)
    epochs = epochs or epochs_default
    (X, y), (X_test, y_test) = load(data, n_train, n_test, seed)
    acc = np.zeros((len(depths), len(widths)))
    secs, params = np.zeros_like(acc), np.zeros_like(acc, dtype=np.int64)
    for i, depth in enumerate(depths):
        for j, width in enumerate(widths):
            model = fm.Sequential([fm.Dense(width, activation="relu") for _ in range(depth)] + [fm.Dense(10)],
                                  input_dim=X.shape[1], seed=seed, n_threads=threads)
            model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(learning_rate=1e-3))
            model.fit(X[:256], y[:256], epochs=1, batch_size=128, verbose=0)  # compile the loop outside the clock
            model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(learning_rate=1e-3))
            model.set_weights(fm.Sequential([fm.Dense(width, activation="relu") for _ in range(depth)]
                                            + [fm.Dense(10)], input_dim=X.shape[1], seed=seed).get_weights())
            t0 = time.perf_counter()
            model.fit(X, y, epochs=epochs, batch_size=128, verbose=0)
            secs[i, j] = time.perf_counter() - t0
            acc[i, j] = model.evaluate(X_test, y_test)["accuracy"]
            params[i, j] = n_params(model)
    return {"widths": widths, "depths": depths, "accuracy": acc, "seconds": secs, "params": params,
            "epochs": epochs, "n_train": len(X), "n_test": len(X_test), "backend": model.backend.NAME,
            "threads": threads}


def report(res):
    print(f"Fashion-MNIST, {res['n_train']} training rows, {res['epochs']} epochs, Adam 1e-3, batch 128, "
          f"{res['backend']} backend, {res['threads'] or 'default'} thread(s); test accuracy on {res['n_test']} rows")
    print(f"  {'depth':>5} {'width':>6} {'parameters':>11} {'accuracy':>9} {'train s':>8}")
    for i, depth in enumerate(res["depths"]):
        for j, width in enumerate(res["widths"]):
            print(f"  {depth:>5} {width:>6} {res['params'][i, j]:>11} {res['accuracy'][i, j]:>9.4f} "
                  f"{res['seconds'][i, j]:>8.2f}")


def figure(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, depth in enumerate(res["depths"]):
        label = f"{depth} hidden layer" + ("s" if depth > 1 else "")
        left.plot(res["widths"], res["accuracy"][i], marker="o", label=label)
        right.plot(res["params"][i], res["seconds"][i], marker="o", label=label)
    left.set_xscale("log", base=2)
    left.set_xlabel("width (units per hidden layer)")
    left.set_ylabel("test accuracy")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("parameters")
    right.set_ylabel(f"training time, {res['epochs']} epochs (s)")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, for the tests")
    parser.add_argument("--out", default="width_depth.png", help="where to save the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="directory of the four Fashion-MNIST files")
    parser.add_argument("--threads", type=int, default=1, help="0: the library's own choice")
    args = parser.parse_args(argv)
    res = run(args.quick, args.seed, args.data, threads=args.threads or None)
    report(res)
    figure(res, args.out)
    return res


if __name__ == "__main__":
    main()
