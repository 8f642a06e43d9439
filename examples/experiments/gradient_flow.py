"""Experiment 1: vanishing gradients in a 10-layer sigmoid net, and three cures: ReLU with He
initialization, batch normalization, residual blocks. First-layer gradient norms over epochs.

    python examples/experiments/gradient_flow.py [--quick] [--out gradient_flow.png]

Ten hidden layers of 64 units on scikit-learn's digits, plain SGD with momentum, trained with
``fit(diagnostics=True)``: the loop measures every layer's weight-gradient norm on a sample of steps
(``model.diagnostics_["grad_norm"]``, column 0 the first layer). Through a sigmoid stack with Glorot
initialization each layer multiplies the gradient by at most 1/4 times the weights' scale, so the
first layer's gradient is orders of magnitude below the last one's and the net hardly learns.
ReLU with He initialization keeps the gradient level over depth; batch normalization in front of
each sigmoid rescales what flows back through it; residual blocks (``fm.Residual``) add an identity
path around each pair of layers. The figure draws the first layer's gradient norm per epoch of every
variant, and ``fm.plot.gradient_flow`` of the sigmoid stack (every layer).
"""
import argparse
import warnings

import numpy as np

import fastmlp as fm

WIDTH, DEPTH = 64, 10


def sigmoid_glorot():
    return [fm.Dense(WIDTH, activation="sigmoid", kernel_initializer="glorot_uniform") for _ in range(DEPTH)]


def relu_he():
    return [fm.Dense(WIDTH, activation="relu", kernel_initializer="he_uniform") for _ in range(DEPTH)]


def sigmoid_batchnorm():
    layers = []
    for _ in range(DEPTH):
        layers += [fm.Dense(WIDTH, use_bias=False, kernel_initializer="glorot_uniform"), fm.BatchNorm(),
                   fm.Activation("sigmoid")]
    return layers


def sigmoid_residual():
    # the first layer maps the 64 inputs to the width; then 4 blocks of two layers and one more: 10 Dense
    layers = [fm.Dense(WIDTH, activation="sigmoid", kernel_initializer="glorot_uniform")]
    for _ in range((DEPTH - 2) // 2):
        layers.append(fm.Residual([fm.Dense(WIDTH, activation="sigmoid", kernel_initializer="glorot_uniform"),
                                   fm.Dense(WIDTH, kernel_initializer="glorot_uniform")]))
    layers.append(fm.Dense(WIDTH, activation="sigmoid", kernel_initializer="glorot_uniform"))
    return layers


VARIANTS = {
    "sigmoid + Glorot": sigmoid_glorot,
    "ReLU + He": relu_he,
    "sigmoid + Glorot + BatchNorm": sigmoid_batchnorm,
    "sigmoid + Glorot, residual blocks": sigmoid_residual,
}


def available_variants():
    """The variants this fastmlp can build: residual blocks need ``fm.Residual``."""
    return [name for name in VARIANTS if name != "sigmoid + Glorot, residual blocks" or hasattr(fm, "Residual")]


def load_digits_split(seed=0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order] / 16.0, y[order]
    n_train = int(0.75 * len(X))
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def train(name, X, y, epochs, seed):
    model = fm.Sequential(VARIANTS[name]() + [fm.Dense(10)], input_dim=X.shape[1], seed=seed)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=0.02, momentum=0.9))
    with warnings.catch_warnings():  # the findings are printed from model.diagnose() instead
        warnings.simplefilter("ignore", fm.diagnostics.TrainingDynamicsWarning)
        model.fit(X, y, epochs=epochs, batch_size=32, verbose=0, diagnostics=True, diagnostics_every=4)
    return model


def run(quick=False, seed=0):
    """Returns {"epochs", "first": {variant: (E,) first-layer grad norms}, "ratio": {variant: (E,)
    first / last layer}, "accuracy": {variant: test accuracy}, "models": {variant: model},
    "findings": {variant: the kinds of model.diagnose()'s findings}}."""
    (X, y), (X_test, y_test) = load_digits_split(seed)
    epochs = 3 if quick else 15
    first, ratio, accuracy, models, findings = {}, {}, {}, {}, {}
    for name in available_variants():
        model = train(name, X, y, epochs, seed)
        diag = model.diagnostics_
        assert diag["layer_index"][0] == 0  # column 0: the first Dense layer
        first[name] = diag["grad_norm"][:, 0]
        ratio[name] = diag["first_last_ratio"]
        accuracy[name] = model.evaluate(X_test, y_test)["accuracy"]
        models[name] = model
        findings[name] = sorted({f.kind for f in model.diagnose()})
    return {"epochs": epochs, "first": first, "ratio": ratio, "accuracy": accuracy, "models": models,
            "findings": findings}


def report(res):
    print(f"digits, {DEPTH} hidden layers of {WIDTH}, SGD(0.02, momentum 0.9), batch 32, {res['epochs']} epochs")
    print(f"  {'':>34} {'first-layer |dW|':>17} {'first / last':>13} {'test accuracy':>14}  model.diagnose()")
    print(f"  {'':>34} {'epoch 1':>8} {'last':>8}")
    for name in res["first"]:
        g, r = res["first"][name], res["ratio"][name]
        print(f"  {name:>34} {g[0]:8.2e} {g[-1]:8.2e} {r[-1]:13.2e} {res['accuracy'][name]:14.4f}  "
              f"{', '.join(res['findings'][name]) or 'no finding'}")
    if "sigmoid + Glorot, residual blocks" not in res["first"]:
        print("  (residual blocks: this fastmlp has no fm.Residual yet; that variant is left out)")


def figure(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, g in res["first"].items():
        left.plot(np.arange(1, len(g) + 1), g, marker="o", ms=3, label=name)
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("first layer's gradient norm")
    left.legend(fontsize=7)
    fm.plot.gradient_flow(res["models"]["sigmoid + Glorot"], ax=right)
    right.set_title("sigmoid + Glorot: every layer")
    right.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, for the tests")
    parser.add_argument("--out", default="gradient_flow.png", help="where to save the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    res = run(args.quick, args.seed)
    report(res)
    figure(res, args.out)
    return res


if __name__ == "__main__":
    main()
