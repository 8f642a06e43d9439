"""fastmlp.MLPClassifier against scikit-learn's MLPClassifier: same hyperparameters, side by side.

    python examples/sklearn_compare.py [--data DIR] [--epochs 15] [--threads 2] [--backend auto] [--repeats 1]
    python examples/sklearn_compare.py --digits        # a few seconds, no download

Fashion-MNIST: a 784-256-128-10 ReLU network, Adam (lr 1e-3), batches of 128,
15 epochs, no early stopping, float32 for both (scikit-learn keeps float32
input in float32), both bounded to the same number of threads. Prints each
one's test accuracy and fit time, and the speedup. With --repeats N the two
fits alternate N times (fresh estimators, same seed) and the speedup is the
ratio of the median fit times: on a shared machine one pair of fits can land
on a busy or a quiet moment for either side.
"""
import statistics
import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SklearnMLP
from threadpoolctl import threadpool_limits

import fastmlp

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def load(args):
    if args.digits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split((X / 16.0).astype(np.float32), y, test_size=0.3,
                                                            random_state=0, stratify=y)
        return "digits", (X_train, y_train), (X_test, y_test)
    path = args.data if args.data is not None else (SHARED if SHARED.is_dir() else None)
    return "Fashion-MNIST", *fastmlp.datasets.load_fashion_mnist(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", action="store_true", help="scikit-learn's digits instead of Fashion-MNIST")
    parser.add_argument("--data", default=None, help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternating pairs of fits (default 1)")
    args = parser.parse_args(argv)

    name, (X_train, y_train), (X_test, y_test) = load(args)
    params = dict(hidden_layer_sizes=(256, 128), activation="relu", solver="adam", learning_rate_init=1e-3,
                  batch_size=128, max_iter=args.epochs, early_stopping=False, random_state=args.seed)
    print(f"{name}: {X_train.shape[0]} train / {X_test.shape[0]} test rows, {X_train.shape[1]} features, "
          f"{X_train.dtype}; {params}; {args.threads} threads")

    def make(label):
        if label == "fastmlp":
            return fastmlp.MLPClassifier(**params, dtype="float32", backend=args.backend, n_threads=args.threads)
        return SklearnMLP(**params)

    times = {"fastmlp": [], "scikit-learn": []}
    results = {}
    for rep in range(max(1, args.repeats)):
        for label in times:
            est = make(label)
            time.sleep(0.25)  # let the other side's idle BLAS / OpenMP threads go to sleep first
            with warnings.catch_warnings(), threadpool_limits(limits=args.threads):
                warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter epochs is the plan, not a failure
                t0 = time.perf_counter()
                est.fit(X_train, y_train)
                seconds = time.perf_counter() - t0
                acc = est.score(X_test, y_test)
            times[label].append(seconds)
            results[label] = (acc, statistics.median(times[label]))
            extra = f" (backend {est._model.backend.NAME})" if label == "fastmlp" else ""
            print(f"{label:>12}: test accuracy {acc:.4f}, fit {seconds:7.2f} s, {est.n_iter_} epochs, "
                  f"final loss {est.loss_:.4f}{extra}", flush=True)
    (acc_f, t_f), (acc_s, t_s) = results["fastmlp"], results["scikit-learn"]
    print(f"accuracy difference (fastmlp - scikit-learn): {100 * (acc_f - acc_s):+.2f} percentage points")
    if args.repeats > 1:
        print(f"median fit over {args.repeats} pairs: fastmlp {t_f:.2f} s, scikit-learn {t_s:.2f} s")
    print(f"speedup of fit: {t_s / t_f:.1f}x")
    return results


if __name__ == "__main__":
    main()
