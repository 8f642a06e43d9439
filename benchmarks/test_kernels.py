"""Kernel benchmarks: every kernel of every backend beside the NumPy reference.

    python -m pytest benchmarks/test_kernels.py [--benchmark-save=NAME]

Groups are named ``operation-shape-activation-dtype`` (for example
``dense_forward-128x784x256-relu-float32``) and hold one entry per backend
(the parameter id), the ``reference`` entry being the NumPy baseline. Each
backend's result is compared with the reference's on the same inputs before
anything is timed; that first call is also the JIT warm-up.
"""
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import fastmlp
from fastmlp import activations as act
from fastmlp.backends import reference as ref

# float32 results of a different summation order (BLAS blocking, fused loops)
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@dataclass
class Case:
    """A kernel call: ``make(dtype, rng)`` returns the arguments; ``outputs`` indexes the
    arguments the kernel writes (compared with the reference's), ``returns`` whether its
    return value is compared too."""

    op: str
    shape: str
    make: Callable
    outputs: tuple
    returns: bool = False

    @property
    def id(self):
        return f"{self.op}-{self.shape}"

    def group(self, dtype):
        return f"{self.id}-{np.dtype(dtype).name}"


def _normal(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def dense_forward_case(n, d, k, code, name):
    def make(dt, rng):
        return [_normal(rng, (n, d), dt), _normal(rng, (d, k), dt, math.sqrt(2.0 / d)), _normal(rng, k, dt, 0.1),
                code, 0.0, np.empty((n, k), dt), np.empty((n, k), dt)]
    return Case("dense_forward", f"{n}x{d}x{k}-{name}", make, (5, 6))


def act_backward_case(n, k, code, name):
    def make(dt, rng):
        Z = _normal(rng, (n, k), dt)
        A = np.empty_like(Z)
        ref.act_forward(Z, code, 0.0, A)
        return [Z, A, _normal(rng, (n, k), dt), code, 0.0, np.empty((n, k), dt)]
    return Case("act_backward", f"{n}x{k}-{name}", make, (5,))


def dense_backward_case(n, d, k, first):
    def make(dt, rng):
        dX = np.empty((0, 0), dt) if first else np.empty((n, d), dt)
        return [_normal(rng, (n, d), dt), _normal(rng, (d, k), dt, math.sqrt(2.0 / d)),
                _normal(rng, (n, k), dt, 1.0 / n), 0.0, np.empty((d, k), dt), np.empty(k, dt), dX]
    return Case("dense_backward", f"{n}x{d}x{k}-{'first' if first else 'dX'}", make, (4, 5, 6))


def softmax_ce_case(n, k):
    def make(dt, rng):
        return [_normal(rng, (n, k), dt, 3.0), rng.integers(0, k, n).astype(np.int64), np.empty(0, dt),
                np.empty((n, k), dt), np.empty((n, k), dt)]
    return Case("softmax_cross_entropy", f"{n}x{k}", make, (3, 4), returns=True)


def adam_case(n_params):
    def make(dt, rng):
        return [_normal(rng, n_params, dt, 0.05), _normal(rng, n_params, dt, 0.01),
                _normal(rng, n_params, dt, 0.001), np.abs(_normal(rng, n_params, dt, 1e-4)),
                1e-3, 0.9, 0.999, 1e-8, 10]
    return Case("adam_update", f"{n_params}", make, (0, 2, 3))


def sgd_case(n_params):
    def make(dt, rng):
        return [_normal(rng, n_params, dt, 0.05), _normal(rng, n_params, dt, 0.01),
                _normal(rng, n_params, dt, 0.01), 0.05, 0.9, False]
    return Case("sgd_update", f"{n_params}-momentum", make, (0, 2))


def gather_case(n_rows, d, batch):
    def make(dt, rng):
        return [_normal(rng, (n_rows, d), dt), rng.permutation(n_rows)[:batch].astype(np.int64),
                np.empty((batch, d), dt)]
    return Case("gather_rows", f"{batch}of{n_rows}x{d}", make, (2,))


A_PARAMS = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10    # 235,146
B_PARAMS = 20 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2              # 5,634
CASES = [
    dense_forward_case(128, 784, 256, act.RELU, "relu"),          # A, layer 1
    dense_forward_case(128, 256, 128, act.RELU, "relu"),          # A, layer 2
    dense_forward_case(32, 20, 64, act.RELU, "relu"),             # B, layer 1
    dense_forward_case(1, 20, 64, act.RELU, "relu"),              # C, one row
    act_backward_case(128, 256, act.RELU, "relu"),
    act_backward_case(128, 256, act.GELU, "gelu"),
    dense_backward_case(128, 784, 256, first=True),               # A, layer 1: no dX
    dense_backward_case(128, 256, 128, first=False),
    dense_backward_case(32, 64, 64, first=False),                 # B, layer 2
    softmax_ce_case(128, 10),
    softmax_ce_case(32, 2),
    adam_case(A_PARAMS),
    sgd_case(B_PARAMS),
    gather_case(10_000, 784, 128),
    gather_case(20_000, 20, 32),
]


def _copy(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernel(benchmark, case, backend_name, dtype):
    kernels = fastmlp.get_backend(backend_name)
    fn = getattr(kernels, case.op, None)
    if fn is None:
        pytest.skip(f"backend {backend_name!r} has no kernel {case.op!r}")
    args = case.make(dtype, np.random.default_rng(0))

    # Correctness first (and the JIT warm-up): the same inputs through the reference.
    want_args, got_args = _copy(args), _copy(args)
    want = getattr(ref, case.op)(*want_args)
    got = fn(*got_args)
    rtol = RTOL[np.dtype(dtype)]
    for i in case.outputs:
        w = np.asarray(want_args[i], dtype=np.float64)
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        np.testing.assert_allclose(got_args[i], w, rtol=rtol, atol=rtol * scale,
                                   err_msg=f"{case.id} output {i}, {backend_name} vs reference")
    if case.returns:
        assert got == pytest.approx(want, rel=rtol, abs=rtol)

    benchmark.group = case.group(dtype)
    benchmark.extra_info.update(backend=backend_name, dtype=np.dtype(dtype).name, shape=case.shape)
    # In-place kernels (optimizer updates) run on their own state again and again;
    # values stay finite over the rounds pytest-benchmark takes.
    benchmark(fn, *args)
