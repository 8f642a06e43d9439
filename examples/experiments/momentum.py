"""Experiment 5: plain SGD against momentum on an ill-conditioned problem.

    python examples/experiments/momentum.py [--quick] [--out momentum.png] [--condition 100]

A linear regression (one Dense(1) layer without bias, MSE) whose loss has a Hessian with condition
number 100: the features are built so that their covariance has eigenvalues from 1 to 100 (log-spaced)
in a random basis. Full-batch steps (``batch_size=len(X)``: one step per epoch), the same learning
rate ``1 / L`` (L the Hessian's largest eigenvalue) for every optimizer. Plain gradient descent
shrinks the error along the flattest direction by only ``1 - 1/100`` per step; momentum 0.9 (and
Nesterov's variant) by about ``sqrt(0.9)``, so it reaches a far lower loss in the same epochs.
"""
import argparse

import numpy as np

import fastmlp as fm

OPTIMIZERS = {
    "SGD": {},
    "SGD + momentum 0.9": {"momentum": 0.9},
    "Nesterov 0.9": {"momentum": 0.9, "nesterov": True},
}


def problem(n, d, condition, seed):
    """X (n, d) with (2/n) X^T X (the Hessian of the mean squared error) of eigenvalues log-spaced from
    2 to 2 * condition exactly; y = X w* without noise, so the optimal loss is 0."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, d)))  # orthonormal columns: Q^T Q = I
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))  # a random rotation
    eig = np.logspace(0.0, np.log10(condition), d)
    X = np.sqrt(n) * Q @ np.diag(np.sqrt(eig)) @ R  # (1/n) X^T X = R^T diag(eig) R
    w_star = rng.standard_normal(d)
    H = 2.0 / n * X.T @ X
    return X, X @ w_star, H


def run(quick=False, seed=0, condition=100.0):
    """Returns {"epochs", "condition", "lr", "loss": {optimizer: (epochs,) losses}}."""
    n, d, epochs = (256, 10, 150) if quick else (2000, 20, 300)
    X, y, H = problem(n, d, condition, seed)
    eigs = np.linalg.eigvalsh(H)
    lr = 1.0 / eigs[-1]
    losses = {}
    for name, kwargs in OPTIMIZERS.items():
        model = fm.Sequential([fm.Dense(1, use_bias=False, kernel_initializer="zeros")], input_dim=d,
                              dtype="float64", seed=seed)
        model.compile(loss="mse", optimizer=fm.optim.SGD(learning_rate=lr, **kwargs))
        history = model.fit(X, y, epochs=epochs, batch_size=n, shuffle=False, verbose=0)
        losses[name] = np.array(history.history["loss"])
    return {"epochs": epochs, "condition": float(eigs[-1] / eigs[0]), "lr": lr, "loss": losses}


def report(res):
    print(f"linear regression, Hessian condition number {res['condition']:.1f}, full-batch steps, "
          f"learning rate 1/L = {res['lr']:.4g}; training loss (the optimum is 0):")
    e = res["epochs"]
    marks = [m for m in (10, e // 2, e) if m <= e]
    print("  " + " " * 20 + "".join(f"{'epoch ' + str(m):>14}" for m in marks))
    for name, loss in res["loss"].items():
        print(f"  {name:>20}" + "".join(f"{loss[m - 1]:14.3e}" for m in marks))


def figure(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, loss in res["loss"].items():
        ax.plot(np.arange(1, res["epochs"] + 1), loss, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (one full-batch step)")
    ax.set_ylabel("training loss")
    ax.set_title(f"condition number {res['condition']:.0f}, lr = 1/L")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, for the tests")
    parser.add_argument("--out", default="momentum.png", help="where to save the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--condition", type=float, default=100.0)
    args = parser.parse_args(argv)
    res = run(args.quick, args.seed, args.condition)
    report(res)
    figure(res, args.out)
    return res


if __name__ == "__main__":
    main()
