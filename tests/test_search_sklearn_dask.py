"""scikit-learn's and Dask-ML's searches on fastmlp.MLPClassifier: HalvingRandomSearchCV, Incremental on a
Dask array of several chunks, and HyperbandSearchCV (broken upstream with the installed dask: checked)."""
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
    import dask
    # one thread: Sequential.predict on one model from several threads at once is not safe (the
    # model's cached inference buffers are shared), and dask's threaded scheduler would do that
    with dask.config.set(scheduler="synchronous"):
        pred = np.asarray(inc.predict(Xd).compute())
    np.testing.assert_array_equal(pred, ref.predict(X))
    assert (pred == y).mean() > 0.85


def test_hyperband_search_cv_drives_partial_fit_or_fails_upstream(digits):
    """dask-ml 2025.1's HyperbandSearchCV (and every IncrementalSearchCV) calls dask.persist inside the
    Client's own event loop, which dask >= 2025 refuses ("Attempting to use an asynchronous Client in a
    synchronous context of `dask.compute`") whatever the estimator: shown here with scikit-learn's
    SGDClassifier too. When dask-ml works again, the fastmlp search must find a good model."""
    distributed = pytest.importorskip("distributed")
    ms = pytest.importorskip("dask_ml.model_selection")
    from sklearn.linear_model import SGDClassifier

    X, y = digits
    assert hasattr(fm.MLPClassifier(), "partial_fit")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None):
        params = {"hidden_layer_sizes": [(16,), (32,)], "learning_rate_init": [1e-3, 3e-3]}
        search = ms.HyperbandSearchCV(fm.MLPClassifier(random_state=0), params, max_iter=9, random_state=0)
        try:
            search.fit(X, y, classes=np.arange(10))
        except RuntimeError as exc:
            assert "asynchronous Client in a synchronous context" in str(exc)
            with pytest.raises(RuntimeError, match="asynchronous Client in a synchronous context"):
                ms.HyperbandSearchCV(SGDClassifier(), {"alpha": [1e-4, 1e-3]}, max_iter=9,
                                     random_state=0).fit(X, y, classes=np.arange(10))
        else:
            assert search.best_score_ > 0.8 and search.best_params_["hidden_layer_sizes"] in params[
                "hidden_layer_sizes"]
