"""Search an MLP's width and depth on Fashion-MNIST in a time budget, beside scikit-learn's RandomizedSearchCV.

    python examples/search_fashion_mnist.py [--budget 900] [--quick] [--data DIR] [--skip-sklearn]

fastmlp: successive halving on two loky worker processes of one thread each
(12 configurations at 3 epochs, the best third going on to 10, then the best
two to 30 epochs, each survivor continuing its own training, its learning rate
halved after 2 epochs without a better val_loss; brackets with new seeds while
the budget lasts) over 1-3 hidden ReLU layers of 256-1024 units
(log-uniform, per layer),
dropout 0-0.4, Adam with lr 3e-4..3e-3 (log-uniform), batch 64/128/256; the
last 10% of the training set validates. scikit-learn: RandomizedSearchCV with
its own MLPClassifier (Adam, the same widths, depths, learning rates and
batch sizes; it has no dropout) on the same split, one candidate per call
until the same budget is spent, then its best candidate refitted on the
training rows. Both report the test accuracy of their best model. The inputs
are Fashion-MNIST's pixels standardized with the training rows' mean and
standard deviation.

--quick: a small subset and a tiny space (a smoke run of a minute or so).
"""
import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np

import fastmlp as fm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def load(path=None):
    if path is None and SHARED.is_dir():
        path = SHARED
    return fm.datasets.load_fashion_mnist(path)


def spaces(quick):
    if quick:
        return dict(depth=[1, 2], width=(32, 128), lr=(1e-3, 3e-3), dropout=(0.0, 0.2), batch_size=[64, 128])
    return dict(depth=[1, 2, 3], width=(256, 1024), lr=(3e-4, 3e-3), dropout=(0.0, 0.4), batch_size=[64, 128, 256])


class _Widths:
    """scikit-learn's side of the conditional space: a depth, then one log-uniform width per layer."""

    def __init__(self, depths, low, high):
        self.depths, self.low, self.high = depths, low, high

    def rvs(self, random_state=None):
        rng = np.random.default_rng(random_state.randint(2**31) if hasattr(random_state, "randint")
                                    else random_state)
        depth = self.depths[int(rng.integers(len(self.depths)))]
        return tuple(int(round(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
                     for _ in range(depth))


def run_fastmlp(X, y, Xt, yt, args, space_kw):
    """Brackets of successive halving (seeds seed, seed+1, ...) until the budget is spent."""
    space = fm.search.Space(**space_kw, activation="relu", optimizer="adam")
    # every trial halves its learning rate when val_loss has not improved for 2 epochs (Keras' rule;
    # a survivor's optimizer keeps its rate from one rung to the next)
    schedule = fm.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5)
    t0 = time.perf_counter()
    best, n_trials, n_epochs, brackets = None, 0, 0, 0
    while time.perf_counter() - t0 < args.budget * 0.95:
        left = args.budget - (time.perf_counter() - t0)
        result = fm.search.run(space, X, y, strategy="halving", n_trials=args.n_trials, epochs=args.epochs, eta=3,
                               validation_split=0.1, metric="val_accuracy", seed=args.seed + brackets,
                               time_budget=left, verbose=args.verbose, executor=args.executor,
                               n_jobs=args.n_jobs, callbacks=[schedule])
        brackets += 1
        n_trials += len(result.trials)
        n_epochs += int(result.trials.epochs.sum())
        if result.best_metric is not None and (best is None or result.best_metric > best.best_metric):
            best = result
    elapsed = time.perf_counter() - t0
    acc = best.best_model.evaluate(Xt, yt)["accuracy"]
    print(f"fastmlp: {n_trials} trials in {brackets} halving bracket(s), {n_epochs} epochs in all, in "
          f"{elapsed:.0f} s of a {args.budget:.0f} s budget")
    print(f"fastmlp: best params {best.best_params} (val_accuracy {best.best_metric:.4f}, "
          f"{best.best_trial['epochs']} epochs)")
    print(f"fastmlp search test accuracy: {acc:.4f}")
    return best, acc


def run_sklearn(X, y, Xt, yt, args, space_kw):
    from scipy.stats import loguniform
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV
    from sklearn.neural_network import MLPClassifier

    lo, hi = space_kw["width"]
    dist = {"hidden_layer_sizes": _Widths(space_kw["depth"], lo, hi),
            "learning_rate_init": loguniform(*space_kw["lr"]), "batch_size": space_kw["batch_size"]}
    cut = int(X.shape[0] * 0.9)  # the same split as fastmlp's validation_split=0.1
    split = PredefinedSplit(np.r_[np.full(cut, -1), np.zeros(X.shape[0] - cut)])
    base = MLPClassifier(solver="adam", max_iter=args.sk_epochs, random_state=args.seed, n_iter_no_change=10**6,
                         tol=0.0)
    t0 = time.perf_counter()
    results, i = [], 0
    while time.perf_counter() - t0 < args.budget:  # one candidate per call: the budget is checked between them
        search = RandomizedSearchCV(base, dist, n_iter=1, cv=split, refit=False, random_state=args.seed + i,
                                    error_score=np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, y)
        results.append((float(search.cv_results_["mean_test_score"][0]), search.cv_results_["params"][0]))
        i += 1
    elapsed = time.perf_counter() - t0
    score, params = max(results, key=lambda r: -1 if np.isnan(r[0]) else r[0])
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best = MLPClassifier(**{**base.get_params(), **params}).fit(X[:cut], y[:cut])
    refit = time.perf_counter() - t1
    acc = float((best.predict(Xt) == yt).mean())
    print(f"scikit-learn: {len(results)} trials of {args.sk_epochs} epochs in {elapsed:.0f} s of a "
          f"{args.budget:.0f} s budget, then {refit:.0f} s to refit the best on the training rows")
    print(f"scikit-learn: best params {params} (val_accuracy {score:.4f})")
    print(f"scikit-learn search test accuracy: {acc:.4f}")
    return acc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--budget", type=float, default=900.0, help="seconds per side (default 900)")
    parser.add_argument("--quick", action="store_true", help="a small subset and space: a smoke run")
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the last halving rung")
    parser.add_argument("--sk-epochs", type=int, default=None, help="scikit-learn's max_iter per trial")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executor", default="processes", help="'processes' (default) or 'none'")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    args.executor = None if args.executor == "none" else args.executor
    args.n_trials = args.n_trials or (9 if args.quick else 12)
    args.epochs = args.epochs or (3 if args.quick else 30)
    args.sk_epochs = args.sk_epochs or (2 if args.quick else 10)

    (X, y), (Xt, yt) = load(args.data)
    if args.quick:
        X, y, Xt, yt = X[:3000], y[:3000], Xt[:1000], yt[:1000]
    # standardized with the training rows' statistics (StandardScaler's rule: a constant pixel is left at 0)
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std == 0] = 1.0
    X, Xt = (X - mean) / std, (Xt - mean) / std
    space_kw = spaces(args.quick)
    _, acc = run_fastmlp(X, y, Xt, yt, args, space_kw)
    if not args.skip_sklearn:
        run_sklearn(X, y, Xt, yt, args, {k: v for k, v in space_kw.items() if k != "dropout"})
    return acc


if __name__ == "__main__":
    main()
