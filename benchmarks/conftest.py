"""Shared fixtures of the benchmark suites (run with ``python -m pytest benchmarks/``).

Not collected by the default ``python -m pytest`` (pyproject's testpaths is
``tests``). Environment variables:

FASTMLP_BENCH_THREADS : thread bound of every framework (default 2)
FASTMLP_BENCH_ROWS : training rows of the epoch benchmarks (default 10000;
    the full-size numbers come from ``benchmarks/compare.py``)
FASTMLP_BENCH_ROUNDS : timed epochs per training benchmark (default 3)
FASTMLP_BENCH_DTYPES : comma-separated kernel dtypes (default "float32")
FASTMLP_BENCH_REFERENCE : "auto" (the reference backend only where it is
    not painfully slow) or "all"

Compare runs with ``--benchmark-save=NAME`` and ``--benchmark-compare``.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workloads as W  # noqa: E402

import fastmlp  # noqa: E402

BACKENDS = fastmlp.available_backends()
THREADS = W.env_threads(2)
DTYPES = [np.dtype(d.strip()) for d in os.environ.get("FASTMLP_BENCH_DTYPES", "float32").split(",")]
REFERENCE_EVERYWHERE = W.env_reference_everywhere()


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    """Bound BLAS / OpenMP and every backend's own threads for the whole session."""
    for name in BACKENDS:
        fastmlp.get_backend(name).set_num_threads(THREADS)
    with W.blas_threads(THREADS):
        yield THREADS


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Every fastmlp backend that loads here; "reference" is the NumPy baseline."""
    return request.param


@pytest.fixture(params=DTYPES, ids=[d.name for d in DTYPES])
def dtype(request):
    return request.param
