"""Experiment 2: dead ReLUs after a large learning rate, against leaky ReLU, ELU and PReLU.

    python examples/experiments/dead_relus.py [--quick] [--out dead_relus.png]

Two hidden layers of 128 units on scikit-learn's digits (inputs scaled to [0, 4]), plain SGD with a
large learning rate (2.0, gradients clipped to norm 1) for the first two epochs, then 0.05, trained
with ``fit(diagnostics=True)``: ``model.diagnostics_["dead_share"]`` is the share of a layer's units
whose output was exactly 0 on every sampled row of the epoch. A ReLU unit pushed to negative
pre-activations for every input gets no gradient and never recovers: after the large steps about a
third of the units are dead, and they stay dead once the learning rate is small again. Leaky ReLU
(slope 0.01 below 0), ELU and PReLU (a learned slope) still pass a gradient below 0, so none of
their units dies and they recover a better accuracy. A ReLU net trained at 0.05 throughout is the
control. (Without the clipping the large rate makes the other three diverge: only the dead ReLUs
keep that net's outputs bounded.)
"""
import argparse
import warnings

import numpy as np

import fastmlp as fm

WIDTH = 128


def hidden(kind):
    if kind == "prelu":
        return [fm.Dense(WIDTH), fm.PReLU(), fm.Dense(WIDTH), fm.PReLU()]
    return [fm.Dense(WIDTH, activation=kind), fm.Dense(WIDTH, activation=kind)]


SMALL_LR = 0.05


def variants(lr):
    return {f"relu, lr={lr:g}": ("relu", lr), f"leaky_relu, lr={lr:g}": ("leaky_relu", lr),
            f"elu, lr={lr:g}": ("elu", lr), f"prelu, lr={lr:g}": ("prelu", lr),
            f"relu, lr={SMALL_LR:g} (control)": ("relu", SMALL_LR)}


def load_digits_split(seed=0, scale=4.0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order] / 16.0 * scale, y[order]
    n_train = int(0.75 * len(X))
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def hidden_columns(diag):
    """The diagnostics columns of the hidden layers' outputs (ReLU Dense layers, or the PReLU layers)."""
    return [j for j, name in enumerate(diag["layers"]) if not np.all(np.isnan(diag["dead_share"][:, j]))]


def run(quick=False, seed=0, lr=2.0, large_epochs=2, clip_norm=1.0):
    """Returns {"epochs", "dead": {variant: (E,) mean dead share of the hidden layers}, "accuracy":
    {variant: test accuracy}, "models": {variant: model}}."""
    (X, y), (X_test, y_test) = load_digits_split(seed)
    epochs = 4 if quick else 12
    steps = -(-len(X) // 32)  # per epoch
    dead, accuracy, models, findings = {}, {}, {}, {}
    for name, (kind, rate) in variants(lr).items():
        model = fm.Sequential(hidden(kind) + [fm.Dense(10)], input_dim=X.shape[1], seed=seed)
        schedule = fm.schedules.PiecewiseConstant([large_epochs * steps], [rate, SMALL_LR])
        model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=schedule), clip_norm=clip_norm)
        with warnings.catch_warnings():  # the findings are printed from model.diagnose() instead
            warnings.simplefilter("ignore", fm.diagnostics.TrainingDynamicsWarning)
            model.fit(X, y, epochs=epochs, batch_size=32, verbose=0, diagnostics=True, diagnostics_every=2)
        cols = hidden_columns(model.diagnostics_)
        assert len(cols) == 2, model.diagnostics_["layers"]
        dead[name] = model.diagnostics_["dead_share"][:, cols].mean(axis=1)
        accuracy[name] = model.evaluate(X_test, y_test)["accuracy"]
        models[name] = model
        findings[name] = sorted({f.kind for f in model.diagnose()})
    return {"epochs": epochs, "lr": lr, "large_epochs": large_epochs, "clip_norm": clip_norm, "dead": dead,
            "accuracy": accuracy, "models": models, "findings": findings}


def report(res):
    print(f"digits x 4, 2 hidden layers of {WIDTH}, plain SGD, batch 32, clip_norm={res['clip_norm']:g}, "
          f"{res['epochs']} epochs, the learning rate given for the first {res['large_epochs']} then {SMALL_LR:g}; "
          "share of dead units (mean of the two hidden layers)")
    print(f"  {'':>24} {'epoch 1':>8} {'epoch ' + str(res['large_epochs']):>8} {'last':>8} {'test accuracy':>14}  model.diagnose()")
    for name, d in res["dead"].items():
        print(f"  {name:>24} {d[0]:8.1%} {d[res['large_epochs'] - 1]:8.1%} {d[-1]:8.1%} "
              f"{res['accuracy'][name]:14.4f}  {', '.join(res['findings'][name]) or 'no finding'}")


def figure(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.axvspan(0.5, res["large_epochs"] + 0.5, color="0.92")
    for name, d in res["dead"].items():
        left.plot(np.arange(1, len(d) + 1), d, marker="o", ms=3, label=name)
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("epoch")
    left.set_ylabel("share of dead units (hidden layers)")
    left.legend(fontsize=7)
    relu = next(iter(res["dead"]))
    fm.plot.dead_units(res["models"][relu], ax=right)
    right.set_title(f"{relu}: per layer")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, for the tests")
    parser.add_argument("--out", default="dead_relus.png", help="where to save the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2.0, help="the large learning rate")
    args = parser.parse_args(argv)
    res = run(args.quick, args.seed, args.lr)
    report(res)
    figure(res, args.out)
    return res


if __name__ == "__main__":
    main()
