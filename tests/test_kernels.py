"""Every kernel of the backend contract, in every backend, against the reference.

The core is a table. ``CASES`` holds one row per kernel and variant: how to build
its calls (inputs and output buffers) for a shape and a dtype. ``test_matches_reference``
runs every row on every native backend and each of its thread paths
(``conftest.KERNEL_THREADS``), for float32 and float64 and the shapes of the row,
and compares with the reference everything the reference writes or returns; what
the reference leaves unchanged (inputs, skipped outputs) must stay bit-identical.
Each call names the former test files it comes from (``ORIGINS``): it runs on the
shapes they used, and on the parallel paths where they ran it there. A new kernel is
a new row, whose calls run everywhere. ``test_matches_formula`` checks the rows that
have an independent float64 formula in every backend, the reference included.

Around the table, in every backend: the signatures, formulas of the losses and
optimizers written apart from the reference (NumPy, SciPy, PyTorch's rules),
error checks, extreme values, hypothesis properties, denormal flushing.

This file is longer than the ~600 lines of the house style on purpose: it is one
idea (the kernel contract), and the table only pays off when it is all in one place.
"""
import copy
import functools
import inspect
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import xlogy

import fastmlp
from fastmlp import activations as A
from fastmlp.backends import reference as ref

from conftest import BACKENDS, DTYPES, NATIVE_BACKENDS, kernel_paths, rand, seeded_rng

# The kernels every backend implements, with reference's signatures.
KERNELS = [
    "set_num_threads", "gemm", "gather_rows", "act_forward", "bias_act_forward", "dense_forward",
    "act_backward", "bias_grad", "dense_backward", "softmax_cross_entropy",
    "softmax_cross_entropy_onehot", "nll_loss", "sigmoid_binary_cross_entropy", "mse_loss",
    "poisson_loss", "sgd_update", "rmsprop_update", "adam_update", "sum_squares", "scale_inplace",
    "dropout_mask", "dropout_forward", "dropout_backward", "batchnorm_forward", "batchnorm_backward",
    "train_steps", "make_predictor",
]
# Public functions of reference that are backend-generic Python (they take a
# kernels module, or post-process a step's output) rather than kernels.
HELPERS = ["forward_units", "loss_and_grads", "optimizer_step", "count_correct", "flush_denormals",
           "trainable_spans", "weight_decay"]
# Kernels whose tests live elsewhere: the training loop (test_backends.py, test_loop_threads.py,
# ...) and the predictor (test_predictor.py).
LOOPS = ["train_steps", "make_predictor"]

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTS = [np.dtype(d) for d in DTYPES]
# Every shape any of the former kernel tests used (37x11: test_predictor.py's test of
# the OpenMP paths), and every size of their 1-D kernels (optimizers, sum_squares).
SHAPES = [(1, 1), (1, 7), (7, 1), (33, 17), (37, 11), (64, 130), (128, 256)]
SIZES = [0, 1, 7, 561, 1000, 8320, 32768, 235146]
ALL_CODES = sorted(code for code, _, _ in A.ACTIVATIONS.values())
DIFF_CODES = [c for c in ALL_CODES if c != A.STEP]
# An alpha for every code, so that a kernel that should ignore it and does not is
# caught (test_predictor.py's test of the OpenMP paths used it for every code).
IGNORED_ALPHA = 0.2


# ------------------------------------------------------------- tolerances
class Tol(NamedTuple):
    """assert_allclose's rtol, and an absolute floor that is the smaller of
    ``atol`` and ``scaled * max(1, max|want|)`` (None: that bound is absent)."""
    rtol: float
    atol: float | None = None
    scaled: float | None = None


# Per dtype, the strictest tolerance any former test file applied to those
# kernels (a scaled floor was conftest.assert_close's, an absolute one
# test_cython_kernels.py's; where both applied, both bounds hold here).
TOL = {
    "exact": {F32: Tol(0.0, 0.0), F64: Tol(0.0, 0.0)},
    # activations, bias kernels, the outputs of the losses, SGD and RMSprop
    "elementwise": {F32: Tol(1e-5, 1e-6), F64: Tol(1e-12, 1e-13)},
    # dense_forward, dense_backward
    "product": {F32: Tol(1e-5, 1e-5), F64: Tol(1e-12, 1e-13)},
    "gemm": {F32: Tol(1e-5, 1e-4, 1e-5), F64: Tol(1e-12, 1e-12)},
    # the loss values the loss kernels return
    "loss": {F32: Tol(1e-5, 1e-6), F64: Tol(1e-12, 1e-14)},
    "adam": {F32: Tol(1e-6, 1e-6), F64: Tol(1e-13, 1e-13)},
    "sum_squares": {F32: Tol(1e-5, 0.0), F64: Tol(1e-12, 0.0)},
    "batchnorm": {F32: Tol(2e-5, scaled=2e-5), F64: Tol(1e-12, scaled=1e-12)},
    # against formulas in float64
    "formula": {F32: Tol(1e-5, scaled=1e-5), F64: Tol(1e-12, scaled=1e-12)},
    "scale_formula": {F32: Tol(1e-6, scaled=1e-6), F64: Tol(1e-15, scaled=1e-15)},
}


def close(got, want, tol, err_msg=""):
    """np.testing.assert_allclose with the floor of ``tol`` (which it runs, for its
    message, only when the quick check of the same condition fails)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (err_msg, got.shape, want.shape)
    floors = [b for b in (tol.atol, None if tol.scaled is None else
                          tol.scaled * (max(1.0, float(np.nanmax(np.abs(want)))) if want.size else 1.0))
              if b is not None]
    atol = min(floors, default=0.0)
    with np.errstate(invalid="ignore"):
        if np.all(np.abs(got - want) <= atol + tol.rtol * np.abs(want)):  # False at any NaN or inf
            return
    np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=atol, err_msg=err_msg)


def same(a, b):
    """a and b hold the same values (NaN where the other has NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() or \
        np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------- inputs
def nans(shape, dt):
    return np.full(shape, np.nan, dt)


def logits(rng, shape, dt, scale=3.0):
    """Random values with the points where kernels branch: zeros (the non-differentiable
    points), 25 and -25 (either side of softplus' threshold of 20), -30 (a saturated sigmoid)."""
    z = rand(rng, shape, dt, scale)
    flat = z.reshape(-1)
    flat[::11] = 0.0
    for i, v in ((1, 25.0), (2, -30.0), (5, -25.0)):
        if i < flat.size:
            flat[i] = v
    return z


def bn_block(rng, k, dt):
    """A (4, k) batch-norm block [gamma, beta, running_mean, running_var] away from 1/0/0/1."""
    G = np.stack([1.0 + 0.5 * rng.standard_normal(k), 0.5 * rng.standard_normal(k),
                  0.3 * rng.standard_normal(k), 0.5 + rng.random(k)])
    return np.ascontiguousarray(G, dtype=dt)


def loss_inputs(rng, shape, dt):
    """(kernel, label, inputs before sample_weight, output shapes, origins: the former
    files that used these targets) of every loss kernel."""
    n, k = shape
    Z = logits(rng, shape, dt)
    y = rng.integers(0, k, size=n).astype(np.int64)
    onehot = np.eye(k, dtype=dt)[y]
    dirichlet = rng.dirichlet(np.ones(k), size=n).astype(dt)  # soft targets, rows sum to 1
    uniform = rng.uniform(size=shape)
    normalized = (uniform / uniform.sum(axis=1, keepdims=True)).astype(dt)
    logP = np.empty_like(Z)
    ref.act_forward(Z, A.LOG_SOFTMAX, 0.0, logP)
    Ybin = (rng.random(shape) < 0.5).astype(dt)
    Ysoft = rng.random(shape).astype(dt)
    Yreal = rand(rng, shape, dt)
    # Poisson: moderate log-rates, targets that are counts (with zeros) or real rates >= 0
    lograte = rand(rng, shape, dt, 1.5)
    counts = rng.poisson(np.exp(lograte.astype(np.float64))).astype(dt)
    rates = (rng.random(shape) * 4.0).astype(dt)
    two = [shape, shape]
    return [
        ("softmax_cross_entropy", "labels", (Z, y), two, {B, C, N, P}),
        ("softmax_cross_entropy_onehot", "one-hot", (Z, onehot), two, {B, C, N}),
        ("softmax_cross_entropy_onehot", "dirichlet", (Z, dirichlet), two, {B}),
        ("softmax_cross_entropy_onehot", "normalized", (Z, normalized), two, {C, N}),
        ("nll_loss", "labels", (logP, y), [shape], {B, C, N}),
        ("sigmoid_binary_cross_entropy", "binary", (Z, Ybin), two, {B, N}),
        ("sigmoid_binary_cross_entropy", "soft", (Z, Ysoft), two, {B, C, N}),
        ("mse_loss", "real", (Z, Yreal), [shape], {B, N}),
        ("mse_loss", "in [0, 1)", (Z, Ysoft), [shape], {C}),
        ("poisson_loss", "counts", (lograte, counts), two, {B, NEW}),  # NEW: on a parallel path
        ("poisson_loss", "rates", (lograte, rates), two, {B}),
    ]


def sample_weights(rng, n, dt, weighted):
    return rng.uniform(0.1, 3.0, n).astype(dt) if weighted else np.empty(0, dt)


def loss_cases(rng, shape, dt, weighted):
    """(kernel, inputs, output shapes) of every loss kernel on one shape, one weighting."""
    sw = sample_weights(rng, shape[0], dt, weighted)
    return [(kernel, (*inputs, sw), outs) for kernel, _, inputs, outs, _ in loss_inputs(rng, shape, dt)]


# ------------------------------------------------------------- the table
# Where each call of the table comes from: the former test files, and "new" for
# kernels that none of them tested. A call runs on the shapes its files used, on the
# one-thread paths, and on the parallel paths if one of its files ran it there (the
# Cython file, with both of its thread paths, and test_predictor.py's test of the
# OpenMP paths). The parallel paths run only those because on a busy 2-core machine
# every OpenMP region waits for a time slice of the other core (milliseconds); the
# one-thread paths of every native backend run every call.
B, C, N, P, NEW = ("test_backends.py", "test_cython_kernels.py", "test_numba_kernels.py", "test_predictor.py",
                   "new")
CYTHON_SHAPES = ((1, 1), (1, 7), (7, 1), (33, 17), (128, 256))


class Origin(NamedTuple):
    shapes: tuple  # matrix shapes and vector sizes
    parallel: tuple  # those it ran on parallel paths


ORIGINS = {
    B: Origin(((1, 1), (1, 7), (7, 1), (33, 17), (64, 130), 1, 7, 561, 8320), ()),
    C: Origin(CYTHON_SHAPES + (0, 1, 7, 1000, 235146), CYTHON_SHAPES + (0, 1, 7, 1000, 235146)),
    N: Origin(CYTHON_SHAPES + (1, 7, 561, 32768), ()),
    P: Origin(((37, 11), 1000), ((37, 11), 1000)),
    NEW: Origin(tuple(SHAPES) + tuple(SIZES), ((33, 17), 561)),
}
assert set(SHAPES) | set(SIZES) == {s for o in ORIGINS.values() for s in o.shapes}


def runs_on(origins, shape, parallel):
    return any(shape in (ORIGINS[o].parallel if parallel else ORIGINS[o].shapes) for o in origins)


class Call(NamedTuple):
    label: str
    args: tuple  # an array that appears in several calls (or twice in one) is one buffer
    origins: frozenset = frozenset({NEW})


def call(label, args, *origins):
    return Call(label, args, frozenset(origins or {NEW}))


@dataclass(frozen=True)
class Case:
    """One row: ``build(rng, shape, dtype)`` gives the calls of ``kernel``, run in order."""
    kernel: str
    variant: str
    build: Callable
    tol: str  # row of TOL for the arrays the kernel writes
    ret_tol: str | None = None  # row of TOL for the value it returns (None: it returns None)
    shapes: tuple = tuple(SHAPES)
    # (args before the call) -> {argument position or "ret": the float64 value expected},
    # checked in the backends named (None: every backend)
    formula: Callable | None = None
    formula_tol: str | None = None
    formula_backends: tuple | None = None
    # (args after the call, dtype) -> further assertions on a backend's results
    check: Callable | None = None

    @property
    def id(self):
        return f"{self.kernel}-{self.variant}" if self.variant else self.kernel

    @functools.cached_property
    def origins(self):
        """The files of its calls (which do not depend on the shape): from a build on the smallest."""
        return frozenset().union(*(c.origins for c in self.build(seeded_rng(), self.shapes[0], F64)))

    def shapes_on(self, parallel):
        return [s for s in self.shapes if runs_on(self.origins, s, parallel)]


CYTHON_ALPHA = {A.LEAKY_RELU: 0.01, A.ELU: 1.3}  # test_cython_kernels.py's and test_numba_kernels.py's
BACKENDS_ALPHA = {A.LEAKY_RELU: 0.07, A.ELU: 1.3}  # test_backends.py's
# the codes of bias_act_forward and dense_forward in test_cython_kernels.py, test_backends.py
CYTHON_BIAS_CODES = (A.IDENTITY, A.RELU, A.GELU, A.SOFTMAX, A.LOG_SOFTMAX)
BACKENDS_BIAS_CODES = (A.IDENTITY, A.TANH, A.SOFTMAX)
# the inner sizes of gemm: test_backends.py's, test_cython_kernels.py's (small-product
# tails, and a product BLAS takes), test_numba_kernels.py's
GEMM_INNER = ((9, B), (5, C), (77, C), (13, N))


def gemm_build(ta, tb, beta, inner=GEMM_INNER):
    def build(rng, shape, dt):
        m, n = shape
        calls = []
        for kk, origin in inner:
            Aa = rand(rng, (kk, m) if ta else (m, kk), dt)
            B_ = rand(rng, (n, kk) if tb else (kk, n), dt)
            C_ = nans((m, n), dt) if beta == 0.0 else rand(rng, (m, n), dt)  # beta == 0 never reads C
            # beta = 1: test_backends.py's only
            calls.append(call(f"k={kk}", (Aa, B_, C_, ta, tb, beta), origin if beta != 1.0 else B))
        return calls
    return build


def _gemm_formula(Aa, Bb, Cc, ta, tb, beta):
    a, b = (Aa.T if ta else Aa).astype(np.float64), (Bb.T if tb else Bb).astype(np.float64)
    return {2: a @ b + (beta * Cc.astype(np.float64) if beta else 0.0)}


def _gather_build(rng, shape, dt):
    n, k = shape
    calls = []
    for label, rows, size, origin in (("n from n+3", n + 3, n, B), ("2n from n+5", n + 5, 2 * n, C),
                                      ("permutation", n, None, N)):
        X = rand(rng, (rows, k), dt)
        idx = rng.permutation(n) if size is None else rng.integers(0, rows, size=size)
        calls.append(call(label, (X, idx.astype(np.int64), nans((idx.size, k), dt)), origin))
    return calls


def _alphas(code):
    """(alpha, the files that used it, in place too) of a code."""
    a_b, a_c = BACKENDS_ALPHA.get(code, 0.0), CYTHON_ALPHA.get(code, 0.0)
    return [(a_b, (B, C, N), True)] if a_b == a_c else [(a_b, (B,), True), (a_c, (C, N), True)]


def _act_forward_build(code):
    def build(rng, shape, dt):
        Z, calls = logits(rng, shape, dt), []
        for alpha, origins, _ in _alphas(code):
            calls.append(call(f"alpha={alpha}", (Z, code, alpha, nans(shape, dt)), *origins))
            Zi = Z.copy()  # in place (A is Z), as the model does for activation-only units
            calls.append(call(f"alpha={alpha}, in place", (Zi, code, alpha, Zi), *origins))
        return calls
    return build


def _softmax_rows_sum_to_one(args, dt):
    np.testing.assert_allclose(args[3].sum(axis=1, dtype=np.float64), 1.0, rtol=1e-5 if dt == F32 else 1e-12)


def _no_bias(dt, f64=False):
    """An empty bias of the data's dtype, or of float64 ("none" of another dtype)."""
    return np.empty(0, np.float64 if f64 else dt)


def _bias_act_build(code):
    # a bias or none (of the data's dtype, or of float64), A apart or A is Z, at the codes
    # and alphas each former file used them; at the ignored alpha, test_predictor.py's
    def build(rng, shape, dt):
        Z, b, calls = logits(rng, shape, dt), rand(rng, (shape[1],), dt), []
        alpha = CYTHON_ALPHA.get(code, 0.0)
        apart = (N, B) if code in BACKENDS_BIAS_CODES else (N,)
        variants = [("bias", b, False, alpha, apart), ("no bias", _no_bias(dt), False, alpha, apart),
                    ("bias", b, False, IGNORED_ALPHA, (P,))]
        if code in CYTHON_BIAS_CODES:
            variants += [("bias", b, True, alpha, (C,)), ("no bias, float64", _no_bias(dt, True), True, alpha, (C,))]
        for what, bias, inplace, a, origins in variants:
            Zc = Z.copy()
            calls.append(call(f"{what}, alpha={a}" + (", A is Z" if inplace else ""),
                              (Zc, bias, code, a, Zc if inplace else nans(shape, dt)), *origins))
        return calls
    return build


def _dense_forward_build(code):
    # the former files' inner sizes, alphas and biases: 5 (test_backends.py: a bias or none,
    # and A is Z for the identity), 9 (test_cython_kernels.py, its codes: a bias or none of
    # float64), 19 (test_numba_kernels.py: a bias or none)
    def build(rng, shape, dt):
        n, k = shape
        calls = []
        sizes = [(5, BACKENDS_ALPHA.get(code, 0.0), False, B), (19, CYTHON_ALPHA.get(code, 0.0), False, N)]
        if code in CYTHON_BIAS_CODES:
            sizes.insert(1, (9, CYTHON_ALPHA.get(code, 0.0), True, C))
        for d, alpha, f64, origin in sizes:
            X, W, b = rand(rng, (n, d), dt, 1.0), rand(rng, (d, k), dt, 0.7), rand(rng, (k,), dt)
            for what, bias in (("bias", b), ("no bias" + (", float64" if f64 else ""), _no_bias(dt, f64))):
                label = f"d={d}, {what}, alpha={alpha}"
                calls.append(call(label, (X, W, bias, code, alpha, nans((n, k), dt), nans((n, k), dt)), origin))
                if code == A.IDENTITY and d == 5:  # A may be Z
                    Zs = nans((n, k), dt)
                    calls.append(call(label + ", A is Z", (X, W, bias, code, alpha, Zs, Zs), B))
        return calls
    return build


def _act_backward_build(code):
    def build(rng, shape, dt):
        Z, calls = logits(rng, shape, dt), []
        for alpha, origins, inplace in _alphas(code) + [(IGNORED_ALPHA, (P,), False)]:
            Aout = np.empty_like(Z)
            ref.act_forward(Z, code, alpha, Aout)
            dA = rand(rng, shape, dt, 1.0)
            calls.append(call(f"alpha={alpha}", (Z, Aout, dA, code, alpha, nans(shape, dt)), *origins))
            if inplace:
                dAi = dA.copy()  # dZ is dA, as in the model's backward pass
                calls.append(call(f"alpha={alpha}, in place", (Z, Aout, dAi, code, alpha, dAi), *origins))
        return calls
    return build


def _bias_grad_build(rng, shape, dt):
    return [call("", (rand(rng, shape, dt), nans(shape[1], dt)), B, C, N)]


# dense_backward: the inner size of each former file, with its values of l2
DENSE_BACKWARD_D = {0.0: ((6, B), (11, C), (19, N)), 0.01: ((11, C), (19, N)), 0.3: ((6, B),)}


def _dense_backward_build(l2):
    def build(rng, shape, dt):
        n, k = shape
        calls = []
        for d, origin in DENSE_BACKWARD_D[l2]:
            X, W, dZ = rand(rng, (n, d), dt, 1.0), rand(rng, (d, k), dt, 0.7), rand(rng, (n, k), dt, 1.0)
            for use_bias in (True, False):
                for with_dx in (True, False):
                    db = nans(k, dt) if use_bias else np.empty(0, dt)
                    dX = nans((n, d), dt) if with_dx else np.empty((0, 0), dt)
                    calls.append(call(f"d={d}, bias={use_bias}, dX={with_dx}",
                                      (X, W, dZ, l2, nans((d, k), dt), db, dX), origin))
        return calls
    return build


def _dense_backward_formula(X, W, dZ, l2, dW, db, dX):
    x, w, dz = (a.astype(np.float64) for a in (X, W, dZ))
    want = {4: x.T @ dz + l2 * w}
    if db.size:
        want[5] = dz.sum(0)
    if dX.size:
        want[6] = dz @ w.T
    return want


def _loss_build(kernel):
    def build(rng, shape, dt):
        n = shape[0]
        # unweighted: an empty placeholder of the data's dtype, or of float64 (test_cython_kernels.py's)
        weights = [("weighted", sample_weights(rng, n, dt, True), {B, C, N, NEW}),
                   ("unweighted", np.empty(0, dt), {B, N, P} | ({C} if dt == F64 else set())),
                   *([("unweighted, float64 placeholder", np.empty(0), {C})] if dt != F64 else [])]
        return [Call(f"{label}, {what}", (*inputs, sw, *(nans(s, dt) for s in outs)), frozenset(used & wused))
                for name, label, inputs, outs, used in loss_inputs(rng, shape, dt) if name == kernel
                for what, sw, wused in weights if used & wused]
    return build


# Runs of an optimizer: a sequence of steps on one parameter vector and its state,
# as each former file ran them: test_backends.py from a zero state with a new
# gradient per step, test_cython_kernels.py SGD from a random (signed) state and the
# others from a zero one, test_numba_kernels.py from a positive state with one gradient
# three times, test_predictor.py (the OpenMP paths) from a zero state with one gradient.
RUNS = {
    "zero4": ("zero state, 4 gradients", "zero", 4, False),
    "signed3": ("signed state, 3 gradients", "signed", 3, False),
    "positive3": ("positive state, one gradient 3 times", "positive", 3, True),
    "zero1": ("zero state, 1 gradient", "zero", 1, False),
    "zero2": ("zero state, one gradient twice", "zero", 2, True),
}
# (kernel, variant, number of state vectors, hyperparameters at step t, runs and their files)
OPTIMIZERS = [
    ("sgd_update", "lr=0.1", 1, lambda t: (0.1, 0.0, False), (("zero4", B), ("signed3", C), ("positive3", N))),
    ("sgd_update", "momentum", 1, lambda t: (0.1, 0.9, False), (("zero4", B), ("signed3", C), ("positive3", N))),
    ("sgd_update", "nesterov", 1, lambda t: (0.1, 0.9, True),
     (("zero4", B), ("signed3", C), ("positive3", N), ("zero1", P))),
    ("rmsprop_update", "rho=0.9", 1, lambda t: (0.01, 0.9, 1e-8), (("zero4", B),)),
    ("rmsprop_update", "rho=0.99", 1, lambda t: (0.01, 0.99, 1e-8), (("zero4", C), ("positive3", N))),
    ("rmsprop_update", "lr=0.1", 1, lambda t: (0.1, 0.9, 1e-8), (("zero1", P),)),
    ("adam_update", "lr=0.01", 2, lambda t: (0.01, 0.9, 0.999, 1e-8, t), (("zero4", B), ("zero2", P))),
    ("adam_update", "beta1=0.5", 2, lambda t: (0.003, 0.5, 0.9, 1e-3, t), (("zero4", B),)),
    ("adam_update", "lr=0.001", 2, lambda t: (1e-3, 0.9, 0.999, 1e-8, t), (("zero4", C), ("positive3", N))),
]


def _optimizer_build(kernel, n_state, hyper, runs):
    def build(rng, size, dt):
        p0 = rand(rng, size, dt, 1.0)
        grads = [rand(rng, size, dt, 1.0) for _ in range(4)]
        states = {"zero": np.zeros(size, dt), "signed": rand(rng, size, dt, 1.0),
                  "positive": np.abs(rand(rng, size, dt, 1.0))}
        calls = []
        for run, origin in runs:
            label, state, steps, same_gradient = RUNS[run]
            p, st = p0.copy(), [states[state].copy() for _ in range(n_state)]
            gs = grads[:1] * steps if same_gradient else grads[:steps]
            calls += [call(f"{label}, step {t}", (p, g, *st, *hyper(t)), origin) for t, g in enumerate(gs, start=1)]
        return calls
    return build


def _sum_squares_build(rng, size, dt):
    return [call("scale 1", (rand(rng, size, dt, 1.0),), C, P), call("scale 3", (rand(rng, size, dt, 3.0),), B, N)]


def _scale_build(rng, size, dt):
    return [call("", (rand(rng, size, dt), 0.37), B, C, N)]


def _dropout_mask_build(rng, shape, dt):
    return [call(f"seed={seed}, step={step}, unit={unit}, rate={rate}", (seed, step, unit, rate, nans(shape, dt)))
            for seed in (0, 12345, 2**64 - 1) for step, unit, rate in ((7, 3, 0.3), (0, 1, 0.5), (5, 0, 0.0))]


def _dropout_apply_build(rng, shape, dt):
    M = np.empty(shape, dt)
    ref.dropout_mask(1, 2, 3, 0.4, M)
    X = rand(rng, shape, dt)
    Xi = X.copy()
    return [call("", (X, M, nans(shape, dt))), call("in place", (Xi, M, Xi))]


def _batchnorm_forward_build(training):
    def build(rng, shape, dt):
        n, k = shape
        calls = []
        for eps, momentum in ((1e-3, 0.2), (1e-5, 0.1)):
            X = rand(rng, shape, dt, 2.0) + dt.type(1.5)
            S = nans((2, k), dt) if training else np.empty((0, 0), dt)
            calls.append(call(f"eps={eps}, momentum={momentum}",
                              (X, bn_block(rng, k, dt), eps, momentum, S, nans(shape, dt), nans(shape, dt))))
        return calls
    return build


def _batchnorm_backward_build(training):
    def build(rng, shape, dt):
        n, k = shape
        X, G = rand(rng, shape, dt, 2.0), bn_block(rng, k, dt)
        S = np.empty((2, k), dt) if training else np.empty((0, 0), dt)
        Z, Aout = np.empty(shape, dt), np.empty(shape, dt)
        ref.batchnorm_forward(X, G.copy(), 1e-3, 0.1, S, Z, Aout)
        dA = rand(rng, shape, dt, 1.0)
        return [call(f"dX={with_dx}", (dA, Z, G, 1e-3, S, np.full((4, k), 7.0, dt),  # rows 2, 3 stay 7
                                       nans(shape, dt) if with_dx else np.empty((0, 0), dt)))
                for with_dx in (True, False)]
    return build


TRAINING_SHAPES = tuple(s for s in SHAPES if s[0] >= 2)  # batch statistics need two rows
TRANS = [(False, False), (False, True), (True, False), (True, True)]
NT = {False: "N", True: "T"}

GEMM_CASES = [Case("gemm", f"{NT[ta]}{NT[tb]}-beta={beta}", gemm_build(ta, tb, beta), "gemm", formula=_gemm_formula, formula_tol="formula")
              for ta, tb in TRANS for beta in (0.0, 0.5, 1.0)]

CASES = GEMM_CASES + [
    Case("gather_rows", "", _gather_build, "exact"),
    *[Case("act_forward", A.CODE_TO_NAME[c], _act_forward_build(c), "elementwise",
           check=_softmax_rows_sum_to_one if c == A.SOFTMAX else None) for c in ALL_CODES],
    *[Case("bias_act_forward", A.CODE_TO_NAME[c], _bias_act_build(c), "elementwise") for c in ALL_CODES],
    *[Case("dense_forward", A.CODE_TO_NAME[c], _dense_forward_build(c), "product") for c in ALL_CODES],
    *[Case("act_backward", A.CODE_TO_NAME[c], _act_backward_build(c), "elementwise")
      for c in DIFF_CODES],
    Case("bias_grad", "", _bias_grad_build, "elementwise"),
    # the reference is the formula (the others are compared with it)
    *[Case("dense_backward", f"l2={l2}", _dense_backward_build(l2), "product", formula=_dense_backward_formula,
           formula_tol="formula", formula_backends=("reference",)) for l2 in (0.0, 0.01, 0.3)],
    *[Case(kernel, "", _loss_build(kernel), "elementwise", ret_tol="loss")
      for kernel in ("softmax_cross_entropy", "softmax_cross_entropy_onehot", "nll_loss",
                     "sigmoid_binary_cross_entropy", "mse_loss", "poisson_loss")],
    *[Case(kernel, variant, _optimizer_build(kernel, n_state, hyper, runs),
           "adam" if kernel == "adam_update" else "elementwise", shapes=tuple(SIZES))
      for kernel, variant, n_state, hyper, runs in OPTIMIZERS],
    Case("sum_squares", "", _sum_squares_build, "exact", ret_tol="sum_squares", shapes=tuple(SIZES),
         formula=lambda x: {"ret": np.dot(x.astype(np.float64), x.astype(np.float64))}, formula_tol="formula"),
    Case("scale_inplace", "", _scale_build, "exact", shapes=tuple(SIZES),
         formula=lambda x, f: {0: x.astype(np.float64) * f}, formula_tol="scale_formula"),
    Case("dropout_mask", "", _dropout_mask_build, "exact"),
    Case("dropout_forward", "", _dropout_apply_build, "exact"),
    Case("dropout_backward", "", _dropout_apply_build, "exact"),
    Case("batchnorm_forward", "train", _batchnorm_forward_build(True), "batchnorm", shapes=TRAINING_SHAPES),
    Case("batchnorm_forward", "infer", _batchnorm_forward_build(False), "batchnorm"),
    Case("batchnorm_backward", "train", _batchnorm_backward_build(True), "batchnorm", shapes=TRAINING_SHAPES),
    Case("batchnorm_backward", "infer", _batchnorm_backward_build(False), "batchnorm"),
]


def shape_id(shape):
    return "x".join(map(str, shape)) if isinstance(shape, tuple) else f"n={shape}"


def case_params(cases):
    """(case, shape, dtype) of every shape some call of the case runs on, on one thread."""
    return [pytest.param(case, shape, dt, id=f"{case.id}-{shape_id(shape)}-{dt.name}")
            for case in cases for shape in case.shapes_on(False) for dt in DTS]


def build_calls(case, shape, dt, parallel=False):
    """The calls of the case that run on this shape and path (see ORIGINS)."""
    calls = [c for c in case.build(seeded_rng(case.id, shape, dt.name), shape, dt)
             if runs_on(c.origins, shape, parallel)]
    assert calls, f"{case.id} has no call at {shape}" + (" on parallel paths" if parallel else "")
    return calls


def run_calls(mod, kernel, calls):
    """Run the calls on a copy of their arrays (shared buffers stay shared); the copies and the returns."""
    calls = copy.deepcopy(calls)
    return calls, [getattr(mod, kernel)(*call.args) for call in calls]


def assert_matches(case, calls, want, want_rets, got, got_rets, dt, err=""):
    """Every array the reference wrote, within the case's tolerance; every other one untouched."""
    tol = TOL[case.tol][dt]
    seen = set()
    for c0, cw, cg, rw, rg in zip(calls, want, got, want_rets, got_rets):
        msg = f"{err}{case.id}: call {c0.label!r}"
        assert type(rg) is type(rw), f"{msg} returned {type(rg).__name__}, the reference {type(rw).__name__}"
        if rw is not None:
            close(rg, rw, TOL[case.ret_tol][dt], err_msg=f"{msg}, the returned value")
        for pos, (a0, aw, ag) in enumerate(zip(c0.args, cw.args, cg.args)):
            if not isinstance(a0, np.ndarray) or id(a0) in seen:
                continue
            seen.add(id(a0))
            if same(aw, a0):
                if not same(ag, a0):
                    np.testing.assert_array_equal(ag, a0, err_msg=f"{msg}, argument {pos}: the reference leaves it as is")
            else:
                close(ag, aw, tol, err_msg=f"{msg}, argument {pos}")


# ------------------------------------------------------------- every kernel against the reference
def test_every_kernel_has_a_case():
    covered = {case.kernel for case in CASES} | {"set_num_threads"}  # test_set_num_threads
    assert covered == set(KERNELS) - set(LOOPS)
    assert len({case.id for case in CASES}) == len(CASES)


_last_reference = {}


def reference_run(case, shape, dt, parallel=False):
    """The calls of a row that run on this shape and path, and the reference's results.
    The one-thread run is kept for the next paths' tests; a parallel path's calls are
    some of its calls, whose buffers no other call writes."""
    key = (case, shape, dt.name)
    if key not in _last_reference:
        _last_reference.clear()
        calls = build_calls(case, shape, dt)
        _last_reference[key] = (calls, *run_calls(ref, case.kernel, calls))
    calls, want, rets = _last_reference[key]
    if not parallel:
        return calls, want, rets
    keep = [i for i, c in enumerate(calls) if runs_on(c.origins, shape, True)]
    assert keep, f"{case.id} has no call at {shape} on parallel paths"
    written = {id(a0) for i in keep for a0, aw in zip(calls[i].args, want[i].args)
               if isinstance(a0, np.ndarray) and not same(a0, aw)}
    assert not any(id(a) in written for i, c in enumerate(calls) if i not in keep for a in c.args), case.id
    return [calls[i] for i in keep], [want[i] for i in keep], [rets[i] for i in keep]


def path_params(cases, names):
    """(case, shape, dtype, thread path): the thread paths innermost, so that
    consecutive tests share the reference's run."""
    return [pytest.param(case, shape, dt, path.values[0], id=f"{case.id}-{shape_id(shape)}-{dt.name}-{path.id}")
            for case in cases for shape in case.shapes for dt in DTS for path in kernel_paths(names)
            if shape in case.shapes_on(path.values[0][1] > 1)]


@pytest.mark.parametrize("case, shape, dt, kernel_path", path_params(CASES, NATIVE_BACKENDS),
                         indirect=["kernel_path"])
def test_matches_reference(kernel_path, case, shape, dt, request):
    parallel = request.node.callspec.params["kernel_path"][1] > 1
    calls, want, want_rets = reference_run(case, shape, dt, parallel)
    got, got_rets = run_calls(kernel_path, case.kernel, calls)
    assert_matches(case, calls, want, want_rets, got, got_rets, dt)
    if case.check:
        for call in got:
            case.check(call.args, dt)


def formula_params():
    """test_backends.py's calls (where the formula checks were) and new ones, on their shapes."""
    return [pytest.param(name, case, shape, dt, id=f"{name}-{case.id}-{shape_id(shape)}-{dt.name}")
            for case in CASES if case.formula for shape in case.shapes
            if runs_on(case.origins & {B, NEW}, shape, False) for dt in DTS
            for name in (case.formula_backends or BACKENDS) if name in BACKENDS]


@pytest.mark.parametrize("name, case, shape, dt", formula_params())
def test_matches_formula(name, case, shape, dt):
    """The kernels (the reference too) are the documented formulas, computed in float64
    (on each backend's default path; the thread paths are test_matches_reference's)."""
    calls = [c for c in build_calls(case, shape, dt) if c.origins & {B, NEW}]
    assert calls
    got, rets = run_calls(fastmlp.get_backend(name), case.kernel, calls)
    for c0, cg, ret in zip(calls, got, rets):
        for pos, want in case.formula(*c0.args).items():
            close(ret if pos == "ret" else cg.args[pos], want, TOL[case.formula_tol][dt],
                  err_msg=f"{case.id}: call {c0.label!r}, {pos}")


def test_set_num_threads(backend_path):
    """Every thread bound is accepted, returns None as in the reference, and changes no result
    (conftest.kernel_threads restores Cython's count afterwards, this test Numba's)."""
    case = next(c for c in CASES if c.id == "act_forward-softmax")
    calls = build_calls(case, (33, 17), F64)
    before, _ = run_calls(backend_path, case.kernel, calls)
    numba = pytest.importorskip("numba") if backend_path.NAME == "numba" else None
    old_numba = numba.get_num_threads() if numba else None
    try:
        for n in (1, 2, 1000):
            assert backend_path.set_num_threads(n) is None
            after, _ = run_calls(backend_path, case.kernel, calls)
            for cb, ca in zip(before, after):
                np.testing.assert_array_equal(ca.args[3], cb.args[3], err_msg=f"{n} threads")
    finally:
        if numba:
            numba.set_num_threads(old_numba)


def test_native_sum_squares_accumulates_in_float64(native_path):
    """The native sums of squares accumulate in float64, even of float32 data."""
    for dt in DTS:
        for size in SIZES:
            x = rand(seeded_rng("ss64", size), size, dt, 1.0)
            got = native_path.sum_squares(x)
            np.testing.assert_allclose(got, np.sum(x.astype(np.float64) ** 2), rtol=1e-12, err_msg=str(size))


# ------------------------------------------------------------- signatures
def test_kernel_list_covers_reference():
    public = {name for name, f in inspect.getmembers(ref, inspect.isfunction)
              if not name.startswith("_") and f.__module__ == ref.__name__}
    assert public == set(KERNELS) | set(HELPERS), (
        "a public function was added to or removed from reference.py; classify it in KERNELS or HELPERS"
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_signatures_match_reference(backend_path, kernel):
    mod = backend_path
    assert hasattr(mod, kernel), f"backend {mod.NAME!r} lacks kernel {kernel!r}"
    assert callable(getattr(mod, kernel))
    assert inspect.signature(getattr(mod, kernel)) == inspect.signature(getattr(ref, kernel))


# ------------------------------------------------------------- formulas, apart from the reference
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_losses_formulas(backend_path, weighted):
    """The loss values are the documented formulas (float64, computed independently)."""
    be, rng = backend_path, seeded_rng("formula", weighted)
    n, k = 9, 4
    for kernel, args, out_shapes in loss_cases(rng, (n, k), F64, weighted):
        outs = [nans(s, F64) for s in out_shapes]
        loss = getattr(be, kernel)(*args, *outs)
        sw = args[2] if weighted else np.ones(n)
        Z, T = args[0], args[1]
        if kernel in ("softmax_cross_entropy", "softmax_cross_entropy_onehot"):
            logp = Z - np.logaddexp.reduce(Z, axis=1, keepdims=True)
            np.testing.assert_allclose(outs[0], np.exp(logp), rtol=1e-12)
            if kernel == "softmax_cross_entropy":
                per_row = -logp[np.arange(n), T]
            else:
                per_row = -(T * logp).sum(1)
                np.testing.assert_allclose(outs[1], (np.exp(logp) - T) * (sw / sw.sum())[:, None], atol=1e-14)
        elif kernel == "nll_loss":
            per_row = -Z[np.arange(n), T]
        elif kernel == "sigmoid_binary_cross_entropy":
            per_row = (np.logaddexp(0, Z) - Z * T).mean(1)
            np.testing.assert_allclose(outs[0], 1 / (1 + np.exp(-Z)), rtol=1e-12)
            np.testing.assert_allclose(outs[1], (outs[0] - T) * (sw / (sw.sum() * k))[:, None], atol=1e-14)
        elif kernel == "poisson_loss":  # PyTorch's PoissonNLLLoss(log_input=True): exp(z) - y*z
            per_row = (np.exp(Z) - T * Z).mean(1)
            np.testing.assert_allclose(outs[0], np.exp(Z), rtol=1e-12)
            np.testing.assert_allclose(outs[1], (np.exp(Z) - T) * (sw / (sw.sum() * k))[:, None], atol=1e-14)
        else:
            per_row = ((Z - T) ** 2).mean(1)
            np.testing.assert_allclose(outs[0], 2 * (Z - T) * (sw / (sw.sum() * k))[:, None], atol=1e-14)
        np.testing.assert_allclose(loss, np.dot(sw, per_row) / sw.sum(), rtol=1e-12, err_msg=kernel)


def test_optimizer_formulas_match_torch_rules(backend_path):
    """Spot-check the update rules against hand-written float64 formulas (two steps)."""
    be = backend_path
    p0 = np.array([1.0, -2.0, 0.5])
    g1, g2 = np.array([0.3, -0.1, 2.0]), np.array([-0.2, 0.4, 1.0])
    lr, mu = 0.1, 0.9
    # SGD nesterov
    p, buf = p0.copy(), np.zeros(3)
    be.sgd_update(p, g1, buf, lr, mu, True)
    be.sgd_update(p, g2, buf, lr, mu, True)
    b1 = g1
    b2 = mu * b1 + g2
    want = p0 - lr * (g1 + mu * b1) - lr * (g2 + mu * b2)
    np.testing.assert_allclose(p, want, rtol=1e-13)
    # RMSprop
    p, sq = p0.copy(), np.zeros(3)
    rho, eps = 0.9, 1e-8
    be.rmsprop_update(p, g1, sq, lr, rho, eps)
    s1 = (1 - rho) * g1**2
    np.testing.assert_allclose(p, p0 - lr * g1 / (np.sqrt(s1) + eps), rtol=1e-13)
    # Adam, step 1: p -= lr * g / (|g| + eps) approximately
    p, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    be.adam_update(p, g1, m, v, lr, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_allclose(p, p0 - lr * g1 / (np.abs(g1) + 1e-8), rtol=1e-12)


def test_relu_family_derivative_at_zero_follows_torch(backend_path):
    """ReLU'(0) = 0, LeakyReLU'(0) = alpha, ELU'(0) = alpha, SELU'(0) = scale*alpha (PyTorch)."""
    be = backend_path
    Z = np.zeros((1, 3))
    dA = np.ones((1, 3))
    for code, alpha, want in [(A.RELU, 0.0, 0.0), (A.LEAKY_RELU, 0.07, 0.07), (A.LEAKY_RELU, 0.1, 0.1),
                              (A.ELU, 1.3, 1.3), (A.ELU, 0.7, 0.7), (A.SELU, 0.0, A.SELU_SCALE * A.SELU_ALPHA)]:
        for Aout in (np.empty_like(Z), Z):  # the activations, or (as the ReLU family allows) Z itself
            if Aout is not Z:
                be.act_forward(Z, code, alpha, Aout)
            dZ = np.empty_like(Z)
            be.act_backward(Z, Aout, dA, code, alpha, dZ)
            np.testing.assert_allclose(dZ, want, rtol=1e-12, err_msg=A.CODE_TO_NAME[code])


# ------------------------------------------------------------- errors
def test_act_backward_step_raises(backend_path):
    for Z in (np.ones((2, 2)), np.zeros((2, 3))):
        with pytest.raises(ValueError, match="step"):
            backend_path.act_backward(Z, Z, Z, A.STEP, 0.0, np.empty_like(Z))


@pytest.mark.parametrize("code", [99, -1, len(A.ACTIVATIONS)])
def test_unknown_activation_code_raises(backend_path, code):
    be, Z = backend_path, np.ones((2, 3))
    calls = {
        "act_forward": lambda: be.act_forward(Z, code, 0.0, np.empty_like(Z)),
        "act_backward": lambda: be.act_backward(Z, Z, Z, code, 0.0, np.empty_like(Z)),
        "bias_act_forward": lambda: be.bias_act_forward(Z.copy(), np.empty(0), code, 0.0, np.empty_like(Z)),
        "dense_forward": lambda: be.dense_forward(Z, np.ones((3, 3)), np.empty(0), code, 0.0,
                                                  np.empty_like(Z), np.empty_like(Z)),
    }
    for kernel, call in calls.items():
        with pytest.raises(ValueError, match="unknown activation"):
            call()


# Backends whose kernels check the dtype, layout and size of every array they are
# given (the native ones; the reference leaves it to NumPy).
CHECKED_BACKENDS = [b for b in ("cython", "numba") if b in BACKENDS]
# What each backend raises for a label outside [0, k): the two native backends
# differ (and the reference, which indexes with NumPy, takes -1 as the last class).
LABEL_ERRORS = {"cython": (IndexError, r"is outside \[0, 4\)"), "numba": (ValueError, r"label y\[\d\] = -?\d+ is outside \[0, 4\)"),
                "reference": (IndexError, "out of bounds")}


def test_label_out_of_range_raises(backend_path):
    be = backend_path
    exc, match = LABEL_ERRORS[be.NAME]
    Z = np.zeros((3, 4))
    P = np.empty_like(Z)
    bad = [4] if be.NAME == "reference" else [4, -1]
    for label in bad:
        y = np.array([0, label, 1])
        with pytest.raises(exc, match=match):
            be.softmax_cross_entropy(Z, y, np.empty(0), P, P.copy())
        with pytest.raises(exc, match=match):
            be.nll_loss(Z, y, np.empty(0), P)


@pytest.mark.parametrize("kernel_path", kernel_paths(CHECKED_BACKENDS), indirect=True)
def test_labels_of_the_wrong_length_raise(kernel_path):
    Z = np.zeros((3, 4))
    P = np.empty_like(Z)
    with pytest.raises(ValueError, match="y has length 2, expected 3"):
        kernel_path.softmax_cross_entropy(Z, np.array([0, 1]), np.empty(0), P, P.copy())


def test_int32_labels_and_indices_are_accepted(backend_path):
    be = backend_path
    Z = np.random.default_rng(0).standard_normal((3, 4))
    P, dZ, P2, dZ2 = (np.empty_like(Z) for _ in range(4))
    loss32 = be.softmax_cross_entropy(Z, np.array([0, 3, 1], np.int32), np.empty(0), P, dZ)
    loss64 = be.softmax_cross_entropy(Z, np.array([0, 3, 1], np.int64), np.empty(0), P2, dZ2)
    assert loss32 == loss64
    np.testing.assert_array_equal(dZ, dZ2)
    out = np.empty((2, 4))
    be.gather_rows(Z, np.array([2, 0], np.int32), out)
    np.testing.assert_array_equal(out, Z[[2, 0]])


@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
def test_gather_rows_out_of_range_raises(backend_path, dt):
    X = np.ones((5, 3), dt)
    for idx in (np.array([5], np.int64), np.array([0, 5], np.int64)):
        with pytest.raises(IndexError):
            backend_path.gather_rows(X, idx, np.empty((idx.size, 3), dt))


def test_gemm_shape_errors_raise(backend_path):
    with pytest.raises(ValueError):  # op(A) has 3 columns, op(B) 4 rows
        backend_path.gemm(np.ones((2, 3)), np.ones((4, 2)), np.ones((2, 2)), False, False, 0.0)
    with pytest.raises(ValueError):  # C is not (2, 2)
        backend_path.gemm(np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 3)), False, False, 0.0)


@pytest.mark.parametrize("kernel_path", kernel_paths(CHECKED_BACKENDS), indirect=True)
def test_wrong_dtype_or_layout_raises(kernel_path):
    Z = np.ones((4, 3))
    with pytest.raises(ValueError):
        kernel_path.act_forward(Z, A.RELU, 0.0, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError):
        kernel_path.act_forward(np.asfortranarray(np.ones((4, 3))), A.RELU, 0.0, Z)
    with pytest.raises(ValueError):
        kernel_path.act_forward(Z, A.RELU, 0.0, np.empty((3, 4)))


def test_argument_kinds(backend_path):
    """Read-only inputs, numpy scalars, a float step and an empty buffer of another dtype
    are accepted, as by the reference."""
    be, rng = backend_path, np.random.default_rng(12)
    X, W, b = rand(rng, (5, 4), F32), rand(rng, (4, 3), F32), rand(rng, (3,), F32)
    for arr in (X, W, b):
        arr.setflags(write=False)
    Z1, A1, Z2, A2 = (np.empty((5, 3), F32) for _ in range(4))
    ref.dense_forward(X, W, b, A.LEAKY_RELU, 0.01, Z1, A1)
    be.dense_forward(X, W, b, np.int64(A.LEAKY_RELU), np.float64(0.01), Z2, A2)
    close(A2, A1, TOL["elementwise"][F32])
    out = np.empty((2, 4), F32)
    be.gather_rows(X, np.array([4, 0], np.int32), out)
    np.testing.assert_array_equal(out, X[[4, 0]])
    p0, g = rand(rng, 10, F64), rand(rng, 10, F64)
    p1, p2 = p0.copy(), p0.copy()
    ref.adam_update(p1, g, np.zeros(10), np.zeros(10), 1e-3, 0.9, 0.999, 1e-8, np.int64(3))
    be.adam_update(p2, g, np.zeros(10), np.zeros(10), 1e-3, 0.9, 0.999, 1e-8, 3.0)
    close(p2, p1, TOL["adam"][F64])
    # SGD without momentum: an empty buf of any dtype is fine
    q = np.ones(4, F32)
    be.sgd_update(q, np.ones(4, F32), np.empty(0), 0.5, 0.0, np.bool_(False))
    np.testing.assert_array_equal(q, 0.5)


@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
def test_poisson_loss_negative_targets_raise(backend_path, dt):
    Z = np.zeros((3, 2), dt)
    P, dZ = np.full_like(Z, 7.0), np.full_like(Z, 7.0)
    for bad in (-1.0, np.nan):
        Y = np.ones((3, 2), dt)
        Y[2, 1] = bad
        with pytest.raises(ValueError, match=r"poisson_loss: targets must be >= 0.*Y\[2, 1\]"):
            backend_path.poisson_loss(Z, Y, np.empty(0, dt), P, dZ)
        assert (P == 7.0).all() and (dZ == 7.0).all()  # refused before any work


# ------------------------------------------------------------- extreme values
@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
def test_act_forward_extremes(backend_path, dt):
    """Large |z| must give finite, correct values (no overflow in exp)."""
    be = backend_path
    Z = np.array([[-800.0, -60.0, -20.5, -1e-3, 0.0, 1e-3, 20.5, 60.0, 800.0]], dtype=dt)
    Z = np.clip(Z, np.finfo(dt).min / 2, np.finfo(dt).max / 2).astype(dt)
    z64 = Z.astype(np.float64)
    expected = {
        A.SIGMOID: 0.5 * (1 + np.tanh(z64 / 2)),
        A.SOFTPLUS: np.where(z64 > 20, z64, np.logaddexp(0, z64)),  # PyTorch's threshold=20
        A.TANH: np.tanh(z64),
    }
    for code, want in expected.items():
        out = np.empty_like(Z)
        be.act_forward(Z, code, 0.0, out)
        assert np.isfinite(out).all()
        close(out, want, Tol(1e-5 if dt == F32 else 1e-12, scaled=1e-5 if dt == F32 else 1e-12))
    for code in (A.SOFTMAX, A.LOG_SOFTMAX):
        out = np.empty_like(Z)
        be.act_forward(Z, code, 0.0, out)
        assert np.isfinite(out[:, -1]).all()
        want = z64 - np.logaddexp.reduce(z64, axis=1, keepdims=True)
        close(out, want if code == A.LOG_SOFTMAX else np.exp(want),
              Tol(2e-5 if dt == F32 else 1e-11, scaled=2e-5 if dt == F32 else 1e-11))


def test_act_forward_large_values_and_nan_like_the_reference(backend_path):
    Z = np.array([[1000.0, -1000.0, 0.0, np.nan]])
    for code in (A.SIGMOID, A.SOFTPLUS, A.SWISH, A.RELU, A.TANH):
        want, got = np.empty_like(Z), np.empty_like(Z)
        ref.act_forward(Z, code, 0.0, want)
        backend_path.act_forward(Z, code, 0.0, got)
        np.testing.assert_array_equal(got, want, err_msg=A.CODE_TO_NAME[code])


@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
def test_losses_extreme_logits(backend_path, dt):
    """Fused losses subtract the row max: logits of +-1000 give finite losses and gradients."""
    be = backend_path
    Z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]], dtype=dt)
    y = np.array([1, 2], dtype=np.int64)
    empty = np.empty(0, dt)
    P, dZ = np.empty_like(Z), np.empty_like(Z)
    loss = be.softmax_cross_entropy(Z, y, empty, P, dZ)
    np.testing.assert_allclose(loss, (2000.0 + 1.0 + np.log1p(np.exp(-1.0))) / 2, rtol=1e-5)
    assert np.isfinite(P).all() and np.isfinite(dZ).all()
    Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=dt)
    loss = be.sigmoid_binary_cross_entropy(Z, Y, empty, P, dZ)
    want = (np.logaddexp(0, Z.astype(np.float64)) - Z * Y).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert np.isfinite(P).all() and np.isfinite(dZ).all()


@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
def test_poisson_loss_large_log_rates(backend_path, dt):
    """No clipping (as PyTorch and scikit-learn): exp(z) within range is exact,
    beyond it the loss is +inf (which the training loop reports), never NaN."""
    be = backend_path
    big = 80.0 if dt == F32 else 700.0  # exp(big) is finite in dt
    Z = np.array([[big, -big, 0.0]], dtype=dt)
    Y = np.array([[3.0, 0.0, 2.0]], dtype=dt)
    empty = np.empty(0, dt)
    P, dZ = np.empty_like(Z), np.empty_like(Z)
    loss = be.poisson_loss(Z, Y, empty, P, dZ)
    z64, y64 = Z.astype(np.float64), Y.astype(np.float64)
    np.testing.assert_allclose(loss, (np.exp(z64) - y64 * z64).mean(), rtol=1e-5)
    np.testing.assert_allclose(P, np.exp(z64), rtol=1e-5)
    np.testing.assert_allclose(dZ, (np.exp(z64) - y64) / 3, rtol=1e-5)
    Z[0, 0] = 100.0 if dt == F32 else 800.0  # exp overflows
    loss = be.poisson_loss(Z, Y, empty, P, dZ)
    assert loss == np.inf


# ------------------------------------------------------------- properties
_rows = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
                   elements=st.floats(-50, 50, allow_nan=False, width=64))
# (on each backend's default path, as before: 40 examples on a parallel path would
# be 40 OpenMP regions per kernel call)
_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(Z=_rows)
def test_softmax_rows_sum_to_one(backend_name, Z):
    be = fastmlp.get_backend(backend_name)
    P = np.empty_like(Z)
    be.act_forward(Z, A.SOFTMAX, 0.0, P)
    assert (P >= 0).all() and (P <= 1).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    # monotone: a larger logit never gets a smaller probability
    order = np.argsort(Z, axis=1, kind="stable")
    assert (np.diff(np.take_along_axis(P, order, 1), axis=1) >= -1e-15).all()


@_settings
@given(Z=_rows)
def test_log_softmax_logsumexp_is_zero(backend_name, Z):
    be = fastmlp.get_backend(backend_name)
    L = np.empty_like(Z)
    be.act_forward(Z, A.LOG_SOFTMAX, 0.0, L)
    assert (L <= 1e-12).all()
    np.testing.assert_allclose(np.logaddexp.reduce(L, axis=1), 0.0, atol=1e-12)
    # shift invariance
    L2 = np.empty_like(Z)
    be.act_forward(Z + 7.0, A.LOG_SOFTMAX, 0.0, L2)
    np.testing.assert_allclose(L2, L, atol=1e-12)


@_settings
@given(Z=_rows, seed=st.integers(0, 2**31), weighted=st.booleans())
def test_losses_nonnegative(backend_name, Z, seed, weighted):
    be = fastmlp.get_backend(backend_name)
    rng = np.random.default_rng(seed)
    n, k = Z.shape
    for kernel, args, out_shapes in loss_cases(rng, (n, k), F64, weighted):
        args = (Z if kernel != "nll_loss" else args[0],) + tuple(args[1:])
        outs = [nans(s, F64) for s in out_shapes]
        loss = getattr(be, kernel)(*args, *outs)
        assert isinstance(loss, float), kernel
        if kernel == "poisson_loss":
            # exp(z) - y*z >= y - y*log(y) (the deviance is >= 0), not >= 0
            Y, w = args[1], (args[2] if weighted else np.ones(n))
            bound = np.dot(w, (Y - xlogy(Y, Y)).mean(1)) / w.sum()
            assert loss >= bound - 1e-9 * max(1.0, abs(bound)), kernel
        else:
            assert loss >= -1e-12, kernel
        assert np.isfinite(loss) and all(np.isfinite(o).all() for o in outs), kernel


@_settings
@given(Z=_rows)
def test_softmax_ce_gradient_rows_sum_to_zero(backend_name, Z):
    be = fastmlp.get_backend(backend_name)
    """dZ = (P - onehot) * w: every row of the gradient sums to zero."""
    n, k = Z.shape
    y = np.arange(n, dtype=np.int64) % k
    P, dZ = np.empty_like(Z), np.empty_like(Z)
    be.softmax_cross_entropy(Z, y, np.empty(0), P, dZ)
    np.testing.assert_allclose(dZ.sum(axis=1), 0.0, atol=1e-12)


# ------------------------------------------------------------- denormals
@pytest.mark.parametrize("dt", DTS, ids=["float32", "float64"])
@pytest.mark.parametrize("opt", ["sgd-momentum", "sgd-nesterov", "rmsprop", "adam"])
def test_optimizer_state_flushes_denormals(backend_path, dt, opt):
    # A parameter whose gradient stays 0 decays its state geometrically; once
    # below the smallest normal number the state is 0, in every backend.
    be = backend_path
    tiny = np.finfo(dt).tiny
    n = 37  # a vector body and a tail in every native loop
    rng = seeded_rng("flush", opt, dt.name)
    group = np.arange(n) % 3
    # 0: no gradient, state just above tiny (decays below it: every decay factor is < 0.9999);
    # 1: no gradient, state 3 * tiny (stays normal); 2: a gradient and an ordinary state.
    state = np.where(group == 0, 1.0001 * tiny, np.where(group == 1, 3.0 * tiny, rand(rng, n, dt, 1.0)))
    if opt.startswith("sgd"):
        state[1::6] *= -1  # signed states flush by magnitude
    state = state.astype(dt)
    g = np.where(group == 2, rand(rng, n, dt, 1.0), 0).astype(dt)
    p0 = rand(rng, n, dt, 1.0)

    def run(mod):
        p, s1, s2 = p0.copy(), state.copy(), np.abs(state)
        if opt == "sgd-momentum":
            mod.sgd_update(p, g, s1, 0.1, 0.9, False)
        elif opt == "sgd-nesterov":
            mod.sgd_update(p, g, s1, 0.1, 0.9, True)
        elif opt == "rmsprop":
            s1 = np.abs(s1)
            mod.rmsprop_update(p, g, s1, 0.01, 0.99, 1e-8)
        else:
            mod.adam_update(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, 5)
        return p, s1, s2

    p, s1, s2 = run(be)
    rp, rs1, rs2 = run(ref)
    states = [rs1, rs2] if opt == "adam" else [rs1]
    for r in states:  # the reference flushes exactly the decayed ones
        assert np.all(r[group == 0] == 0), r[group == 0]
        assert np.all(np.abs(r[group != 0]) >= tiny), r
    tol = dict(rtol=1e-6 if dt == F32 else 1e-14, atol=0)
    for mine, want in ([(s1, rs1), (s2, rs2)] if opt == "adam" else [(s1, rs1)]):
        np.testing.assert_array_equal(mine[group != 2], want[group != 2])  # flushed and kept as-is
        np.testing.assert_allclose(mine[group == 2], want[group == 2], **tol)  # FMA may round differently
    np.testing.assert_allclose(p, rp, **tol)
