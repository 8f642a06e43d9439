"""Fitting from a numpy.memmap / np.load(mmap_mode="r"): the same model as from memory, and no copy of X."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm

ROOT = Path(__file__).resolve().parents[1]


def _peak_script():
    spec = importlib.util.spec_from_file_location("memmap_peak", ROOT / "benchmarks" / "memmap_peak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mm")
    rng = np.random.default_rng(0)
    n, d = 16384, 512  # 32 MiB of float32
    X = np.lib.format.open_memmap(tmp / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 4096):
        X[start:start + 4096] = rng.random((4096, d), dtype=np.float32)
    y = (X[:, :8].sum(axis=1) > 4).astype(np.int64) + 2 * (X[:, 8] > 0.5)
    X.flush()
    del X
    np.save(tmp / "y.npy", y)
    return tmp / "X.npy", tmp / "y.npy"


def _model():
    m = fm.Sequential([fm.Dense(16, activation="relu"), fm.Dense(4)], input_dim=512, seed=0)
    return m.compile(loss="cross_entropy", optimizer="adam")


def test_fit_from_memmap_equals_fit_from_memory(files):
    x_path, y_path = files
    X, y = np.load(x_path, mmap_mode="r"), np.load(y_path)
    assert isinstance(X, np.memmap) and not X.flags.writeable
    a, b = _model(), _model()
    ha = a.fit(X[:4000], y[:4000], epochs=2, batch_size=64, verbose=0, validation_split=0.25)
    hb = b.fit(np.array(X[:4000]), y[:4000], epochs=2, batch_size=64, verbose=0, validation_split=0.25)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ha.history[key] == hb.history[key]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    est = fm.MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0, dtype="float32")
    ref = fm.MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0, dtype="float32")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X[:2000], y[:2000])
        ref.fit(np.array(X[:2000]), y[:2000])
    np.testing.assert_array_equal(est.coefs_[0], ref.coefs_[0])


@pytest.mark.parametrize("estimator", [False, True])
def test_fit_from_memmap_makes_no_copy(files, estimator):
    """In a fresh process: neither tracemalloc (NumPy's allocations) nor anonymous memory grows by
    anything near the data's size; only the file's pages, read batch by batch, are added to RSS."""
    x_path, y_path = files
    r = _peak_script().measure(x_path, y_path, epochs=1, estimator=estimator)
    data = r["data"]
    assert data == 16384 * 512 * 4
    assert r["tracemalloc_peak"] < data / 2, r
    if not estimator:
        assert r["peak_anon"] - r["anon_before"] < data / 2, r
    assert r["peak_rss"] - r["rss_before"] < data + 64 * 2**20, r
