"""Experiment 4: batch gradient descent against stochastic and mini-batch: loss against epochs and
against wall time.

    python examples/experiments/batch_size.py [--quick] [--out batch_size.png] [--seconds 4]

The same net (64-64-10 ReLU, plain SGD, one learning rate) on scikit-learn's digits, trained with
``batch_size=len(X)`` (batch: one exact gradient per epoch), ``1`` (stochastic: one step per row) and
32 (mini-batch), each for the same wall-time budget. After every epoch the loss on the whole training
set is evaluated (outside the timed part). Per epoch, the smaller the batch the more steps and the
lower the loss. Per second, batch descent loses by far: it makes one step per epoch. Whether
stochastic or mini-batch steps go further per second depends on the net: on this small one a
one-row step costs only a few microseconds, so stochastic descent keeps up; on wider nets the
mini-batch's products run near the machine's speed and a row costs far less inside a batch
(the printed ms per epoch show it). One thread by default (``--threads``): a shared machine's
other load then moves the times less.
"""
import argparse

import numpy as np

import fastmlp as fm

VARIANTS = {"batch": None, "mini-batch (32)": 32, "stochastic (1)": 1}  # None: len(X)


def load_digits_scaled():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def train(X, y, batch_size, seconds, max_epochs, lr, seed, threads=1):
    """Train until the fit's own epoch times add up to ``seconds`` (or ``max_epochs``); returns the
    cumulative training seconds and the full training loss after each epoch."""
    model = fm.Sequential([fm.Dense(64, activation="relu"), fm.Dense(10)], input_dim=X.shape[1], seed=seed,
                          n_threads=threads)
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=lr))
    model.fit(X[:64], y[:64], epochs=1, batch_size=min(batch_size, 64), verbose=0)  # compile the loop outside the clock
    model.set_weights(fm.Sequential([fm.Dense(64, activation="relu"), fm.Dense(10)], input_dim=X.shape[1],
                                    seed=seed).get_weights())
    model.compile(loss="cross_entropy", optimizer=fm.optim.SGD(learning_rate=lr))  # fresh optimizer state
    clock, losses = [], []

    def record(model, epoch, logs):
        clock.append((clock[-1] if clock else 0.0) + logs["time"])
        losses.append(model.evaluate(X, y)["loss"])  # after logs["time"] was taken: not counted
        return clock[-1] >= seconds

    model.fit(X, y, epochs=max_epochs, batch_size=batch_size, verbose=0, callbacks=[record])
    return np.array(clock), np.array(losses)


def loss_at(clock, losses, t):
    """The loss after the last epoch finished by time t (inf if none had)."""
    done = np.nonzero(clock <= t)[0]
    return float(losses[done[-1]]) if done.size else float("inf")


def run(quick=False, seed=0, seconds=None, lr=0.05, threads=1):
    """Returns {"seconds", "clock": {variant: (E,)}, "loss": {variant: (E,)}, "at_budget": {variant: loss}}."""
    X, y = load_digits_scaled()
    if quick:
        X, y = X[:600], y[:600]
    seconds = (0.6 if quick else 4.0) if seconds is None else seconds
    clock, loss = {}, {}
    for name, bs in VARIANTS.items():
        clock[name], loss[name] = train(X, y, bs or len(X), seconds, 100000, lr, seed, threads)
    budget = min(c[-1] for c in clock.values())  # every variant has run at least this long
    at_budget = {name: loss_at(clock[name], loss[name], budget) for name in VARIANTS}
    return {"seconds": budget, "clock": clock, "loss": loss, "at_budget": at_budget, "rows": len(X), "lr": lr}


def report(res):
    print(f"digits ({res['rows']} rows), 64-64-10 ReLU, plain SGD lr={res['lr']}; full training loss")
    k = min(len(v) for v in res["loss"].values())
    k = min(k, 5)
    for name in VARIANTS:
        c, l = res["clock"][name], res["loss"][name]
        print(f"  {name:>16}: after epoch {k}: {l[k - 1]:.4f}; after {res['seconds']:.2f} s: "
              f"{res['at_budget'][name]:.4f} ({np.sum(c <= res['seconds'])} epochs, "
              f"{c[-1] / len(c) * 1e3:.2f} ms per epoch)")


def figure(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for name in VARIANTS:
        c, l = res["clock"][name], res["loss"][name]
        by_epoch.plot(np.arange(1, len(l) + 1), l, label=name)
        by_time.plot(c, l, label=name)
    by_epoch.set_xscale("log")
    by_time.set_xscale("log")
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training time (s)")
    by_epoch.set_ylabel("training loss")
    by_epoch.set_yscale("log")
    by_time.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"figure: {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, for the tests")
    parser.add_argument("--out", default="batch_size.png", help="where to save the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="training time per variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    res = run(args.quick, args.seed, args.seconds, threads=args.threads)
    report(res)
    figure(res, args.out)
    return res


if __name__ == "__main__":
    main()
