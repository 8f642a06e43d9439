"""The benchmark networks, their data, and one runner per framework.

Shared by ``compare.py`` (the table of the issue's targets) and the
pytest-benchmark suites. Every runner trains the same architecture from the
same initial weights (fastmlp's, copied), in float32, under the same thread
bound, and exposes:

* ``warmup()``: one epoch outside timing (Numba JIT, allocator, caches);
* ``epoch()``: one timed epoch over all rows, shuffled, last partial batch
  included; returns the epoch's mean training loss where the framework
  reports one (None otherwise);
* ``predict1(x)``: one single-row prediction (workload C).

A framework that is not installed raises :class:`Unavailable` from its
builder; a fastmlp backend without a native step loop (``train_steps``) does
too, so callers print "n/a" / "not available" instead of crashing.

Workloads
---------
A : 784-256-128-10 ReLU on Fashion-MNIST train (60k rows), Adam(1e-3),
    batch 128 (also 32 and 512)
B : 20-64-64-2 ReLU on 100k synthetic rows labelled by a random teacher
    network, batch 32, SGD(0.05, momentum 0.9)
C : single-row predict on the B network
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import fastmlp as fm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
DTYPE = np.float32
SEED = 0


class Unavailable(Exception):
    """A framework or backend that cannot run this workload here (the message says why)."""


# ------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Workload:
    """One network + data + optimizer + batch size."""

    key: str            # "A", "B"
    sizes: tuple        # layer widths, input first: (784, 256, 128, 10)
    batch: int
    optimizer: str      # "adam" or "sgd"
    lr: float
    momentum: float = 0.0
    n_rows: int = 0     # rows of training data (0: all)
    hidden: str = "relu"  # the hidden layers: "relu" (Dense + ReLU), "prelu" (Dense + PReLU), "maxout" (2 pieces)
    label: str = ""     # the row's letter when it is not the data's key
    blocks: int = 0     # residual blocks Residual([Dense(k, relu), Dense(k)], relu) after the hidden layers (k: the last)

    @property
    def name(self):
        return f"{self.label or self.key} b{self.batch}"

    @property
    def n_params(self):
        k = self.sizes[-2]
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:])) + self.blocks * 2 * (k * k + k)

    def group(self, n_threads, kind="epoch"):
        """pytest-benchmark group name: operation, network, batch, dtype, threads."""
        return f"{kind}-{self.key}-b{self.batch}-{np.dtype(DTYPE).name}-{n_threads}threads"


A_ROWS, B_ROWS = 60_000, 100_000
A128 = Workload("A", (784, 256, 128, 10), 128, "adam", 1e-3, n_rows=A_ROWS)
A32 = replace(A128, batch=32)
A512 = replace(A128, batch=512)
B32 = Workload("B", (20, 64, 64, 2), 32, "sgd", 0.05, momentum=0.9, n_rows=B_ROWS)
P128 = replace(A128, hidden="prelu", label="P")   # A's widths with PReLU (an alpha per unit)
M128 = replace(A128, hidden="maxout", label="M")  # A's widths with Maxout(k, pieces=2)
# 784 -> Dense(256, relu) -> 4 residual blocks of two Dense(256) -> 10 (identity shortcuts)
R128 = replace(A128, sizes=(784, 256, 10), blocks=4, label="R")
WORKLOADS = {"A b128": A128, "A b32": A32, "A b512": A512, "B b32": B32, "P b128": P128, "M b128": M128,
             "R b128": R128}


# ----------------------------------------------------------------------- data
_cache = {}


def fashion_mnist_dir():
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def load_a(n_rows=None):
    """Fashion-MNIST train as (X float32 (n, 784), y int64 (n,), source).

    Falls back to seeded synthetic data of the same shape (and says so in
    ``source``) when the files are not found, so the suite still runs.
    """
    if "A" not in _cache:
        try:
            (X, y), _ = fm.datasets.load_fashion_mnist(fashion_mnist_dir())
            source = "Fashion-MNIST train"
        except FileNotFoundError:
            rng = np.random.default_rng(SEED)
            X = rng.random((A_ROWS, 784), dtype=np.float32)
            y = rng.integers(0, 10, A_ROWS).astype(np.int64)
            source = "synthetic (Fashion-MNIST not found)"
        _cache["A"] = (np.ascontiguousarray(X, dtype=DTYPE), y.astype(np.int64), source)
    X, y, source = _cache["A"]
    if n_rows:
        X, y = X[:n_rows], y[:n_rows]
    return X, y, source


def load_b(n_rows=None):
    """100k seeded rows of 20 standard-normal features, labelled by the argmax
    of a random 20-32-2 tanh teacher network: (X, y, source)."""
    n = n_rows or B_ROWS
    key = ("B", n)
    if key not in _cache:
        rng = np.random.default_rng(SEED)
        X = rng.standard_normal((n, 20)).astype(DTYPE)
        W1 = rng.standard_normal((20, 32)) / math.sqrt(20)
        W2 = rng.standard_normal((32, 2)) / math.sqrt(32)
        y = np.argmax(np.tanh(X @ W1) @ W2, axis=1).astype(np.int64)
        _cache[key] = (X, y, "synthetic teacher, seed 0")
    return _cache[key]


def load(workload, n_rows=None):
    """(X, y, source) of a workload, cut to ``n_rows`` (default: the workload's)."""
    n = n_rows or workload.n_rows
    return load_a(n) if workload.key == "A" else load_b(n)


def steps_per_epoch(n_rows, batch):
    return -(-n_rows // batch)


# ---------------------------------------------------------------- thread bound
@contextlib.contextmanager
def blas_threads(n_threads):
    """Bound NumPy's / SciPy's BLAS (and OpenMP) threads with threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency of fastmlp
        yield
        return
    with threadpool_limits(limits=n_threads):
        yield


# ------------------------------------------------------------------- fastmlp
def fastmlp_model(workload, backend="reference", n_threads=2, seed=SEED):
    """The workload's network as a compiled ``fastmlp.Sequential`` (float32)."""
    layers = []
    for k in workload.sizes[1:-1]:
        if workload.hidden == "prelu":
            layers += [fm.Dense(k), fm.PReLU()]
        elif workload.hidden == "maxout":
            layers.append(fm.Maxout(k, pieces=2))
        else:
            layers.append(fm.Dense(k, activation="relu"))
    k = workload.sizes[-2]
    layers += [fm.Residual([fm.Dense(k, activation="relu"), fm.Dense(k)], activation="relu")
               for _ in range(workload.blocks)]
    layers.append(fm.Dense(workload.sizes[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.backends.BackendUnavailableWarning)
        model = fm.Sequential(layers, input_dim=workload.sizes[0], dtype="float32", seed=seed,
                              backend=backend, n_threads=n_threads)
    if workload.optimizer == "adam":
        opt = fm.optim.Adam(lr=workload.lr)
    else:
        opt = fm.optim.SGD(lr=workload.lr, momentum=workload.momentum)
    model.compile(loss="cross_entropy", optimizer=opt)
    return model


def initial_weights(workload, seed=SEED):
    """fastmlp's initial [W0, b0, W1, b1, ...] (W of shape (fan_in, fan_out)) for every framework."""
    return fastmlp_model(workload, "reference", None, seed).get_weights()


def backend_status(name, train=True):
    """None if fastmlp backend ``name`` can run here (a whole fit when ``train``), else why not."""
    if name not in fm.available_backends():
        return f"not built ({fm.backends.backend_error(name)})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.backends.BackendUnavailableWarning)
        mod = fm.get_backend(name)
    if getattr(mod, "NAME", name) != name:
        return "not built"
    if train and not callable(getattr(mod, "train_steps", None)):
        return "no train_steps (native step loop not landed)"
    return None


def trainable_backends():
    """fastmlp backends that can run a whole fit here, fastest first."""
    return [name for name in fm.available_backends() if backend_status(name) is None]


class FastmlpRunner:
    def __init__(self, workload, X, y, backend, n_threads, train=True):
        why = backend_status(backend, train)
        if why:
            raise Unavailable(f"fastmlp[{backend}]: {why}")
        self.label = f"fastmlp-{backend}"
        self.w, self.X, self.y, self.n_threads = workload, X, y, n_threads
        self.model = fastmlp_model(workload, backend, n_threads)

    def epoch(self):
        try:
            h = self.model.fit(self.X, self.y, epochs=1, batch_size=self.w.batch, shuffle=True, verbose=0)
        except AttributeError as exc:  # a backend whose step loop has not landed
            raise Unavailable(f"{self.label}: {exc}") from exc
        return h.history["loss"][0]

    warmup = epoch

    def predict1(self, x):
        return self.model.predict(x)


# ------------------------------------------------------------------- PyTorch
def _torch():
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("PyTorch is not installed") from exc
    return torch


def _TorchResidual(k):
    torch = _torch()

    class Residual(torch.nn.Module):  # relu(Linear(relu(Linear(x))) + x), as fm.Residual
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(k, k), torch.nn.ReLU(), torch.nn.Linear(k, k))

        def forward(self, x):
            return torch.relu(self.body(x) + x)

    return Residual()


def _TorchMaxout(units, pieces):
    torch = _torch()

    class Maxout(torch.nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], units, pieces).max(-1).values

    return Maxout()


class TorchRunner:
    """nn.Sequential of Linear/ReLU (PReLU, or Linear of 2k outputs then the max of each pair, for
    the P and M rows; residual blocks before the output layer for the R row); a plain loop over
    ``torch.randperm`` batches."""

    label = "torch"

    def __init__(self, workload, X, y, n_threads, weights=None):
        torch = _torch()
        self.torch, self.w, self.n_threads = torch, workload, n_threads
        torch.set_num_threads(n_threads)
        torch.manual_seed(SEED)
        mods = []
        for i, (fan_in, fan_out) in enumerate(zip(workload.sizes[:-1], workload.sizes[1:])):
            hidden = i < len(workload.sizes) - 2
            pieces = 2 if hidden and workload.hidden == "maxout" else 1
            mods.append(torch.nn.Linear(fan_in, fan_out * pieces))
            if hidden and workload.hidden == "prelu":
                mods.append(torch.nn.PReLU(fan_out))
            elif hidden and workload.hidden == "maxout":
                mods.append(_TorchMaxout(fan_out, pieces))
            elif hidden:
                mods.append(torch.nn.ReLU())
            if i == len(workload.sizes) - 3:
                mods += [_TorchResidual(fan_out) for _ in range(workload.blocks)]
        self.net = torch.nn.Sequential(*mods)
        weights = iter(initial_weights(workload) if weights is None else weights)  # get_weights' order
        with torch.no_grad():
            for m in self.net.modules():  # in the order of get_weights (a block's Linear layers in it)
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(torch.from_numpy(np.ascontiguousarray(next(weights).T)))
                    m.bias.copy_(torch.from_numpy(next(weights)))
                elif isinstance(m, torch.nn.PReLU):
                    m.weight.copy_(torch.from_numpy(next(weights)))
        if workload.optimizer == "adam":
            self.opt = torch.optim.Adam(self.net.parameters(), lr=workload.lr)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=workload.lr, momentum=workload.momentum)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        if X is not None:
            self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)

    def epoch(self):
        torch, bs = self.torch, self.w.batch
        torch.set_num_threads(self.n_threads)
        n = self.X.shape[0]
        perm = torch.randperm(n)
        total = torch.zeros(())
        self.net.train()
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            xb, yb = self.X[idx], self.y[idx]
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(xb), yb)
            loss.backward()
            self.opt.step()
            total += loss.detach() * xb.shape[0]
        return float(total) / n

    warmup = epoch

    def predict1(self, x):
        torch = self.torch
        with torch.inference_mode():
            return torch.softmax(self.net(torch.from_numpy(x)), dim=1).numpy()


# --------------------------------------------------------------- scikit-learn
class SklearnRunner:
    """MLPClassifier, one epoch per warm-started ``fit`` (max_iter=1), under threadpoolctl.

    For two classes scikit-learn uses one logistic output unit instead of
    two softmax units (B: 20-64-64-1); its initial output weights are the
    difference of fastmlp's two columns, which gives the same model.
    """

    label = "sklearn"

    def __init__(self, workload, X, y, n_threads, weights=None):
        try:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.neural_network import MLPClassifier
        except ImportError as exc:
            raise Unavailable("scikit-learn is not installed") from exc
        self.ConvergenceWarning = ConvergenceWarning
        self.w, self.X, self.y, self.n_threads = workload, X, y, n_threads
        self.weights = initial_weights(workload) if weights is None else weights
        self.clf = MLPClassifier(
            hidden_layer_sizes=workload.sizes[1:-1], activation="relu", solver=workload.optimizer,
            batch_size=workload.batch, learning_rate="constant", learning_rate_init=workload.lr,
            max_iter=1, shuffle=True, momentum=workload.momentum or 0.9, nesterovs_momentum=False,
            alpha=0.0, tol=0.0, n_iter_no_change=10**9, early_stopping=False, warm_start=True,
            random_state=SEED,
        )
        self._initialized = False

    def _set_initial_weights(self):
        coefs, ints = list(self.weights[0::2]), list(self.weights[1::2])
        if self.clf.coefs_[-1].shape[1] == 1 and coefs[-1].shape[1] == 2:
            coefs[-1] = coefs[-1][:, 1:] - coefs[-1][:, :1]
            ints[-1] = ints[-1][1:] - ints[-1][:1]
        for dst, src in zip(self.clf.coefs_ + self.clf.intercepts_, coefs + ints):
            dst[...] = src

    def epoch(self):
        with warnings.catch_warnings(), blas_threads(self.n_threads):
            warnings.simplefilter("ignore", self.ConvergenceWarning)
            self.clf.fit(self.X, self.y)
        if not self._initialized:  # the first (warm-up) fit built the layers
            self._set_initial_weights()
            self._initialized = True
        return float(self.clf.loss_curve_[-1])

    warmup = epoch


# ---------------------------------------------------------------- GEMM bound
class GemmBound:
    """The epoch's matrix products alone, with NumPy's BLAS at the same shapes and threads.

    Per step: the forward ``X @ W`` of every layer, the backward ``X.T @ dZ``
    of every layer and ``dZ @ W.T`` of every layer but the first; as many
    steps as the epoch (the last partial batch with its own shapes); all
    outputs preallocated.
    """

    label = "GEMM bound"

    def __init__(self, workload, n_rows, n_threads, sizes=None, dtype=DTYPE, forward_only=False):
        """``sizes`` (default ``workload.sizes``): the widths the products chain through;
        ``forward_only``: the forward products alone (a predict's)."""
        self.n_threads, self.forward_only = n_threads, forward_only
        sizes = workload.sizes if sizes is None else sizes
        rng = np.random.default_rng(SEED)
        self.Ws = [rng.standard_normal((i, o)).astype(dtype) * 0.05 for i, o in zip(sizes[:-1], sizes[1:])]
        full, rem = divmod(n_rows, workload.batch)
        self.plans = [(self._buffers(sizes, workload.batch, dtype, rng), full)]
        if rem:
            self.plans.append((self._buffers(sizes, rem, dtype, rng), 1))
        self.n_steps = full + (rem > 0)

    def _buffers(self, sizes, n, dtype, rng):
        acts = [rng.random((n, k), dtype=dtype) for k in sizes]   # X, A1, A2, ..., logits
        dZ = [rng.standard_normal((n, k)).astype(dtype) for k in sizes[1:]]
        dW = [np.empty_like(W) for W in self.Ws]
        dX = [np.empty((n, k), dtype=dtype) for k in sizes[:-1]]
        return acts, dZ, dW, dX

    def epoch(self):
        dot, Ws = np.dot, self.Ws
        L = len(Ws)
        with blas_threads(self.n_threads):
            for (acts, dZ, dW, dX), steps in self.plans:
                for _ in range(steps):
                    for i in range(L):
                        dot(acts[i], Ws[i], out=acts[i + 1])
                    if self.forward_only:
                        continue
                    for i in range(L - 1, -1, -1):
                        dot(acts[i].T, dZ[i], out=dW[i])
                        if i > 0:
                            dot(dZ[i], Ws[i].T, out=dX[i])
        return None

    warmup = epoch


# ------------------------------------------------------------------- helpers
def loop_script_parser(description):
    """The command line shared by the scripts that time the Cython loop of one workload."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", default="A b128", choices=sorted(WORKLOADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=None, help="rows of training data (default: all)")
    return p


def cython_loop_and_bound(workload, X, y, n_threads):
    """A warmed-up cython-backend runner of the workload and its GEMM bound."""
    runner = FastmlpRunner(workload, X, y, "cython", n_threads)
    bound = GemmBound(workload, X.shape[0], n_threads)
    runner.warmup()
    bound.warmup()
    return runner, bound


def make_runner(framework, workload, X, y, n_threads, train=True):
    """A runner for framework "fastmlp-<backend>", "torch", "sklearn" or "gemm".

    ``train=False`` asks for inference only (workload C): a fastmlp backend
    then needs no step loop.
    """
    if framework.startswith("fastmlp-"):
        return FastmlpRunner(workload, X, y, framework[len("fastmlp-"):], n_threads, train)
    if framework == "torch":
        return TorchRunner(workload, X, y, n_threads)
    if framework == "sklearn":
        return SklearnRunner(workload, X, y, n_threads)
    if framework == "gemm":
        return GemmBound(workload, X.shape[0], n_threads)
    raise ValueError(f"Unknown framework {framework!r}.")


def env_rows(default):
    """Rows of training data for the pytest-benchmark suites (env FASTMLP_BENCH_ROWS)."""
    value = os.environ.get("FASTMLP_BENCH_ROWS")
    return int(value) if value else default


def env_threads(default=2):
    """Thread bound of every framework in the pytest-benchmark suites (env FASTMLP_BENCH_THREADS)."""
    value = os.environ.get("FASTMLP_BENCH_THREADS")
    return int(value) if value else default


def env_reference_everywhere():
    """Run the (slow) reference backend on every training workload (env FASTMLP_BENCH_REFERENCE=all)."""
    return os.environ.get("FASTMLP_BENCH_REFERENCE", "auto") == "all"
