"""Training benchmarks: one epoch of each benchmark network, fastmlp beside its baselines.

    python -m pytest benchmarks/test_training.py [--benchmark-save=NAME]

Groups are named ``epoch-<network>-b<batch>-float32-<n>threads`` (and
``predict1-C-...`` for single-row inference); each holds every fastmlp
backend that can train here (``fastmlp-<backend>``), PyTorch and
scikit-learn (skipped when not installed) and the GEMM bound (the epoch's
matrix products alone with NumPy's BLAS). Rows default to 10000 per epoch
(``FASTMLP_BENCH_ROWS``) so a run stays short; ``benchmarks/compare.py``
gives the full-size table. Each framework trains one warm-up epoch outside
the timing, and its loss is checked before anything is timed.
"""
import math
import os

import numpy as np
import pytest

import _workloads as W

import fastmlp

BACKENDS = fastmlp.available_backends()
THREADS = W.env_threads(2)
REFERENCE_EVERYWHERE = W.env_reference_everywhere()

ROWS = W.env_rows(10_000)
ROUNDS = int(os.environ.get("FASTMLP_BENCH_ROUNDS", "3"))
FASTMLP = [f"fastmlp-{b}" for b in BACKENDS]


def _frameworks(name):
    fws = [f for f in FASTMLP if f != "fastmlp-reference" or REFERENCE_EVERYWHERE or name in ("A b512", "B b32")]
    fws.append("torch")
    if name in ("A b128", "B b32"):
        fws.append("sklearn")
    if name.startswith("A"):
        fws.append("gemm")
    return fws


EPOCH_CASES = [(name, fw) for name in W.WORKLOADS for fw in _frameworks(name)]


def _runner(framework, workload, X, y, train=True):
    if framework == "torch":
        pytest.importorskip("torch")
    elif framework == "sklearn":
        pytest.importorskip("sklearn")
    try:
        return W.make_runner(framework, workload, X, y, THREADS, train=train)
    except W.Unavailable as exc:
        pytest.skip(f"not available: {exc}")


@pytest.mark.parametrize("name,framework", EPOCH_CASES, ids=[f"{n.replace(' ', '-')}-{f}" for n, f in EPOCH_CASES])
def test_epoch(benchmark, name, framework):
    workload = W.WORKLOADS[name]
    X, y, _ = W.load(workload, ROWS)
    runner = _runner(framework, workload, X, y)
    try:
        loss = runner.warmup()
    except W.Unavailable as exc:
        pytest.skip(f"not available: {exc}")
    if loss is not None:  # trained, and better than chance (ln k for k classes)
        assert math.isfinite(loss), f"{framework}: loss {loss}"
        assert loss < math.log(workload.sizes[-1]), f"{framework}: loss {loss} after a warm-up epoch"
    benchmark.group = workload.group(THREADS)
    benchmark.extra_info.update(framework=framework, rows=X.shape[0],
                                steps=W.steps_per_epoch(X.shape[0], workload.batch))
    benchmark.pedantic(runner.epoch, rounds=ROUNDS, iterations=1, warmup_rounds=0)


PREDICT_CASES = FASTMLP + ["torch"]
CALLS = 1000


@pytest.mark.parametrize("framework", PREDICT_CASES)
def test_predict_one_row(benchmark, framework):
    runner = _runner(framework, W.B32, None, None, train=False)
    x = np.random.default_rng(1).standard_normal((1, 20)).astype(np.float32)
    want = W.fastmlp_model(W.B32, "reference", None).predict(x)  # same initial weights everywhere
    np.testing.assert_allclose(runner.predict1(x), want, rtol=1e-4, atol=1e-6)
    for _ in range(50):
        runner.predict1(x)
    benchmark.group = f"predict1-C-{np.dtype(W.DTYPE).name}-{THREADS}threads"
    benchmark.extra_info.update(framework=framework)
    benchmark(runner.predict1, x)
