"""Experiment 3: initialization by activation. The standard deviation of each layer's activations at
initialization (no training), for every pairing of initializer and activation.

    python examples/experiments/init_by_activation.py [--quick] [--out init_by_activation.png]

A deep stack of Dense layers is built with each initializer (Glorot, He, LeCun, and two fixed-std
normals set with ``set_weights``) under each activation; a batch of standard-normal inputs goes
through it and the std of every layer's output is printed. The matching pairs of
``kernel_initializer="auto"`` (Glorot for tanh / sigmoid, He for ReLU, LeCun for SELU) keep the std
about level over depth; normal(0.05) makes it collapse layer after layer and normal(1) makes it
explode (or saturate tanh / sigmoid).
"""
import argparse

import numpy as np

import fastmlp as fm

ACTIVATIONS = ["relu", "tanh", "sigmoid", "selu"]
INITIALIZERS = ["glorot_uniform", "he_uniform", "lecun_normal", "normal(0.05)", "normal(1)"]


def build(activation, initializer, depth, width, seed):
    """A ``depth``-layer stack of Dense(width, activation) drawn by ``initializer`` (a name of
    fm.initializers, or "normal(std)": weights N(0, std^2) set with set_weights, biases 0)."""
    fixed = initializer.startswith("normal(")
    model = fm.Sequential([fm.Dense(width, activation=activation,
                                    kernel_initializer="glorot_uniform" if fixed else initializer)
                           for _ in range(depth)], input_dim=width, dtype="float64", seed=seed, backend="reference")
    model.compile(loss="mse", optimizer="sgd")
    if fixed:
        std = float(initializer[len("normal("):-1])
        rng = np.random.default_rng(seed)
        model.set_weights([rng.normal(0.0, std, w.shape) if w.ndim == 2 else np.zeros_like(w)
                           for w in model.get_weights()])
    return model


def layer_stds(model, X):
    """The std of each layer's activations on X, from the model's own weights and the reference kernels."""
    kernels = fm.get_backend("reference")
    weights = model.get_weights()
    A, stds = X, []
    for layer, W, b in zip(model.layers, weights[0::2], weights[1::2]):
        _, code, alpha = fm.activations.resolve(layer.activation)
        Z = np.empty((A.shape[0], W.shape[1]))
        out = np.empty_like(Z)
        kernels.dense_forward(A, W, b, code, alpha, Z, out)
        A = out
        stds.append(float(A.std()))
    return np.array(stds)


def run(quick=False, seed=0):
    """Returns {"depth", "width", "std": {(activation, initializer): (depth,) stds}, "auto": {activation: name}}."""
    depth, width, rows = (10, 128, 256) if quick else (30, 256, 1024)
    X = np.random.default_rng(seed).standard_normal((rows, width))
    std = {(act, init): layer_stds(build(act, init, depth, width, seed), X)
           for act in ACTIVATIONS for init in INITIALIZERS}
    auto = {act: fm.initializers.auto_initializer(fm.activations.resolve(act)[1]) for act in ACTIVATIONS}
    return {"depth": depth, "width": width, "std": std, "auto": auto}


def report(res):
    depth = res["depth"]
    print(f"std of the activations at initialization: {depth} layers of {res['width']} units, "
          f"standard-normal inputs (layers 1, {depth // 2}, {depth})")
    for act in ACTIVATIONS:
        for init in INITIALIZERS:
            s = res["std"][act, init]
            mark = "  <- auto" if init == res["auto"][act] else ""
            print(f"  {act:>8} {init:>15}: {s[0]:10.3g} {s[depth // 2 - 1]:10.3g} {s[-1]:10.3g}{mark}")


def figure(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ACTIVATIONS), figsize=(3.6 * len(ACTIVATIONS), 3.4))
    layers = np.arange(1, res["depth"] + 1)
    for ax, act in zip(axes, ACTIVATIONS):
        for init in INITIALIZERS:
            ax.plot(layers, res["std"][act, init], label=init + (" (auto)" if init == res["auto"][act] else ""),
                    lw=2.5 if init == res["auto"][act] else 1.2)
        ax.set_yscale("log")
        ax.set_title(act)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("std of the activations")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, for the tests")
    parser.add_argument("--out", default="init_by_activation.png", help="where to save the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    res = run(args.quick, args.seed)
    report(res)
    figure(res, args.out)
    return res


if __name__ == "__main__":
    main()
