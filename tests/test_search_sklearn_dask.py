"""scikit-learn's and Dask-ML's searches on fastmlp.MLPClassifier: HalvingRandomSearchCV, Incremental on a
Dask array of several chunks, and dask-ml's HyperbandSearchCV."""
import numpy as np
import pytest

import fastmlp as fm

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def test_halving_random_search_cv(digits):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    X, y = digits
    est = fm.MLPClassifier(hidden_layer_sizes=(16,), max_iter=9, random_state=0, dtype="float32")
    params = {"hidden_layer_sizes": [(8,), (16,), (32,), (64,), (32, 32), (64, 64)],
              "learning_rate_init": [1e-3, 3e-3, 1e-2]}
    search = HalvingRandomSearchCV(est, params, n_candidates=9, factor=3, resource="max_iter", min_resources=3,
                                   max_resources=27, cv=2, random_state=0)
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    # 9 candidates at 3 epochs, 3 at 9, 1 at 27
    assert search.n_candidates_ == [9, 3, 1] and search.n_resources_ == [3, 9, 27]
    assert search.best_estimator_.n_iter_ <= 27 and search.best_score_ > 0.9
    assert search.score(X, y) > 0.95


def test_incremental_trains_on_every_chunk_in_order(digits):
    da = pytest.importorskip("dask.array")
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y = digits
    Xd, yd = da.from_array(X, chunks=(400, 64)), da.from_array(y, chunks=400)
    assert Xd.numblocks[0] == 5  # larger than one chunk
    inc = wrappers.Incremental(fm.MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=1e-2, random_state=0), scoring="accuracy",
                               shuffle_blocks=False)
    for _ in range(3):
        inc.partial_fit(Xd, yd, classes=np.arange(10))
    # the same as partial_fit on each block in order, by hand
    ref = fm.MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=1e-2, random_state=0)
    for _ in range(3):
        for start in range(0, len(X), 400):
            ref.partial_fit(X[start:start + 400], y[start:start + 400], classes=np.arange(10))
    assert inc.estimator_.t_ == ref.t_ == 3 * len(X)
    for a, b in zip(inc.estimator_.coefs_, ref.coefs_):
        np.testing.assert_array_equal(a, b)
    # dask's threaded scheduler calls predict on the one model from several threads: they take turns
    pred = np.asarray(inc.predict(Xd).compute(scheduler="threads", num_workers=2))
    np.testing.assert_array_equal(pred, ref.predict(X))
    assert (pred == y).mean() > 0.85


def test_hyperband_search_cv_drives_partial_fit(digits):
    """dask-ml's HyperbandSearchCV trains MLPClassifier by partial_fit on a Dask cluster: every
    bracket gets the partial_fit calls its plan says, and the best model is a good one. (dask-ml
    2025.1 needs dask < 2025.3: the test extra pins it, see pyproject.toml's dask-ml extra.)"""
    distributed = pytest.importorskip("distributed")
    ms = pytest.importorskip("dask_ml.model_selection")

    X, y = digits
    X_train, y_train, X_test, y_test = X[:1400], y[:1400], X[1400:], y[1400:]
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None):
        params = {"hidden_layer_sizes": [(16,), (32,), (64,)], "learning_rate_init": [1e-3, 3e-3, 1e-2]}
        search = ms.HyperbandSearchCV(fm.MLPClassifier(random_state=0, batch_size=64), params, max_iter=9,
                                      random_state=0)
        planned = search.metadata
        search.fit(X_train, y_train, classes=np.arange(10))
    done = search.metadata_
    assert done["partial_fit_calls"] == planned["partial_fit_calls"] > 0
    assert done["n_models"] == planned["n_models"] > 1
    assert max(search.cv_results_["partial_fit_calls"]) == 9
    assert search.best_params_["hidden_layer_sizes"] in params["hidden_layer_sizes"]
    best = search.best_estimator_
    assert isinstance(best, fm.MLPClassifier)
    # the best model was trained by the search (9 partial_fit calls at most): it predicts well on held-out rows
    assert (best.predict(X_test) == y_test).mean() > 0.85
    assert search.best_score_ > 0.85
