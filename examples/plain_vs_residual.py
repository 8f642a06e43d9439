"""A deep plain stack against the same depth with residual blocks, on Fashion-MNIST.

    python examples/plain_vs_residual.py [--depth 20] [--width 64] [--activation sigmoid]
                                         [--epochs 5] [--quick] [--data DIR] [--backend auto]

Both nets have ``depth`` hidden Dense(width) layers and the same parameters: the plain one
stacks them, the residual one puts each after the first in a block ``x + Dense(x)`` (an
identity shortcut: fm.Residual([fm.Dense(width, activation)])). The script prints, for each,
the norm of the gradient of the loss with respect to the first layer's W at initialization
(on one batch of 1024 training rows, read from one plain SGD step of rate 1: W - W' = the
gradient) and the test accuracy after training. Through 20 sigmoid layers the plain net's
first-layer gradient all but vanishes (each layer multiplies it by at most 1/4 times its
weights) and the net barely learns; the shortcuts carry the gradient past every block.

``--quick`` trains on 6000 rows for 2 epochs and tests on 2000 (the test suite runs it).
"""
import argparse
import time
from pathlib import Path

import numpy as np

import fastmlp as fm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def load(path=None):
    if path is None and SHARED.is_dir():
        path = SHARED
    return fm.datasets.load_fashion_mnist(path)


def build(residual, depth=20, width=64, activation="sigmoid", backend="auto", seed=0, dtype="float32"):
    hidden = [fm.Dense(width, activation=activation)]
    for _ in range(depth - 1):
        dense = fm.Dense(width, activation=activation)
        hidden.append(fm.Residual([dense]) if residual else dense)
    model = fm.Sequential(hidden + [fm.Dense(10)], input_dim=784, dtype=dtype, seed=seed, backend=backend)
    model.compile(loss="cross_entropy", optimizer=fm.optim.Adam(lr=1e-3))
    return model


def first_layer_gradient_norm(model, X, y, **net):
    """The norm of dLoss/dW of the first layer at the model's weights, on (X, y): one plain SGD
    step of rate 1 moves that W by minus the gradient. The step runs on a float64 twin of the
    model, on its weights: a float32 W would round away a gradient that has all but vanished."""
    probe = build(dtype="float64", backend=model.backend.NAME, **net)
    probe.set_weights(model.get_weights())
    probe.compile(loss="cross_entropy", optimizer=fm.optim.SGD(lr=1.0))
    w0 = probe.get_weights()[0]
    probe.fit(X.astype(np.float64), y, epochs=1, batch_size=X.shape[0], shuffle=False, verbose=0)
    return float(np.linalg.norm(w0 - probe.get_weights()[0]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--activation", default="sigmoid")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--quick", action="store_true", help="6000 training rows, 2 epochs, 2000 test rows")
    args = parser.parse_args(argv)

    (X_train, y_train), (X_test, y_test) = load(args.data)
    epochs = args.epochs
    if args.quick:
        X_train, y_train, X_test, y_test, epochs = X_train[:6000], y_train[:6000], X_test[:2000], y_test[:2000], 2
    results = {}
    for name, residual in (("plain", False), ("residual", True)):
        net = {"residual": residual, "depth": args.depth, "width": args.width, "activation": args.activation}
        model = build(backend=args.backend, **net)
        grad = first_layer_gradient_norm(model, X_train[:1024], y_train[:1024], **net)
        t0 = time.perf_counter()
        model.fit(X_train, y_train, epochs=epochs, batch_size=args.batch_size, verbose=0)
        acc = model.evaluate(X_test, y_test)["accuracy"]
        results[name] = grad, acc
        print(f"{name}: {args.depth} x Dense({args.width}, {args.activation}), {model.count_params():,} parameters, "
              f"{epochs} epochs in {time.perf_counter() - t0:.1f} s ({model.backend.NAME})")
        print(f"{name}: first-layer gradient norm at initialization: {grad:.3e}")
        print(f"{name} test accuracy: {acc:.4f}")
    ratio = results["residual"][0] / max(results["plain"][0], 1e-300)
    print(f"the shortcuts give the first layer a {ratio:.3g}x larger gradient")
    return results


if __name__ == "__main__":
    main()
