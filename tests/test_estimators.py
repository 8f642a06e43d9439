"""MLPClassifier / MLPRegressor: scikit-learn's contract, and agreement with scikit-learn's own MLP."""
import functools
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from scipy.stats import loguniform  # noqa: E402
from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_multilabel_classification  # noqa: E402
from sklearn.datasets import make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import estimator_checks  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.4, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(200, 8, n_informative=5, n_classes=3, class_sep=2.0, random_state=0)
    return StandardScaler().fit_transform(X), y


# --------------------------------------------------------------- sklearn's suite
# No expected failures: scikit-learn marks none for its own MLPClassifier / MLPRegressor
# (sklearn/utils/_test_common/instance_generator.py), and these pass all checks.
# The float64 instances run the suite as scikit-learn's MLP does for float64 input.
@parametrize_with_checks([MLPClassifier(max_iter=100, dtype="float64"),
                          MLPRegressor(max_iter=100, dtype="float64")])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# The defaults (float32) through the same suite. The sample-weight equivalence checks compare
# two fits to rtol=1e-7, below float32's resolution (6e-8 per rounding): in float32 they run at
# rtol=1e-5 (float64 above runs them as they are).
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_sklearn_estimator_checks_float32(estimator, check, monkeypatch):
    if getattr(check, "func", check).__name__.startswith("check_sample_weight_equivalence"):
        monkeypatch.setattr(estimator_checks, "assert_allclose_dense_sparse",
                            functools.partial(estimator_checks.assert_allclose_dense_sparse,
                                              rtol=1e-5, atol=1e-6))
    check(estimator)


# ---------------------------------------------------------------- meta-estimators
def test_pipeline_grid_search_randomized_cross_val_clone(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.01, random_state=0)
    pipe = make_pipeline(StandardScaler(), clf)
    assert cross_val_score(pipe, X, y, cv=3).mean() > 0.7
    grid = {"mlpclassifier__alpha": [1e-4, 1e-2], "mlpclassifier__activation": ["relu", "tanh"]}
    grid = GridSearchCV(pipe, grid, cv=2, n_jobs=2).fit(X, y)
    assert grid.best_score_ > 0.7
    rand = RandomizedSearchCV(MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0),
                              {"learning_rate_init": loguniform(1e-3, 1e-1)}, n_iter=3, cv=2,
                              random_state=0).fit(X, y.astype(float))
    assert np.isfinite(rand.best_score_)
    est = MLPClassifier(hidden_layer_sizes=(7, 5), activation=["tanh", "relu"], dtype="float64", clip_norm=2.0)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est


@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_pickle_round_trip_identical_predictions(blobs, Est):
    X, y = blobs
    est = Est(hidden_layer_sizes=(16,), max_iter=20, random_state=0).fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    if Est is MLPClassifier:
        np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    back.partial_fit(X, y)  # the optimizer state survives too


# ----------------------------------------------------------- against scikit-learn
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_digits_accuracy_matches_sklearn(digits, solver):
    """Mean test accuracy over 3 seeds within 1 percentage point of scikit-learn's own MLP
    (same hyperparameters, same initial weights; the shuffles differ)."""
    Xtr, Xte, ytr, yte = digits
    acc = {}
    with threadpool_limits(1):
        for name, Est in (("fastmlp", MLPClassifier), ("sklearn", sk_nn.MLPClassifier)):
            acc[name] = np.mean([Est(hidden_layer_sizes=(64,), solver=solver, max_iter=40, random_state=seed)
                                 .fit(Xtr, ytr).score(Xte, yte) for seed in range(3)])
    assert acc["fastmlp"] > 0.93
    assert abs(acc["fastmlp"] - acc["sklearn"]) < 0.01, acc


def test_dropout_trains_digits_reproducibly(digits):
    """dropout=0.2: a Dropout after every hidden activation; a sane test accuracy, the same fit for
    the same random_state (masks included), another for another random_state or without dropout."""
    Xtr, Xte, ytr, yte = digits
    kw = dict(hidden_layer_sizes=(64, 32), max_iter=30, learning_rate_init=0.003)
    with threadpool_limits(1):
        clf = MLPClassifier(dropout=0.2, random_state=0, **kw).fit(Xtr, ytr)
        layers = clf._model.layers
        assert [type(layer).__name__ for layer in layers] == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
        assert layers[1].rate == layers[3].rate == 0.2
        assert clf.score(Xte, yte) > 0.93
        proba = clf.predict_proba(Xte)
        np.testing.assert_array_equal(clf.predict_proba(Xte), proba)  # predict has no dropout
        again = MLPClassifier(dropout=0.2, random_state=0, **kw).fit(Xtr, ytr)
        for a, b in zip(again.coefs_ + again.intercepts_, clf.coefs_ + clf.intercepts_):
            np.testing.assert_array_equal(a, b)
        assert again.loss_curve_ == clf.loss_curve_
        other = MLPClassifier(dropout=0.2, random_state=1, **kw).fit(Xtr, ytr)
        plain = MLPClassifier(dropout=0.0, random_state=0, **kw).fit(Xtr, ytr)
    assert not np.allclose(other.coefs_[0], clf.coefs_[0])
    assert not np.allclose(plain.coefs_[0], clf.coefs_[0])
    # the training loss under dropout is above the one without
    assert clf.loss_curve_[-1] > plain.loss_curve_[-1]
    # warm_start cannot change the dropout of a fitted network
    clf.set_params(warm_start=True, dropout=0.5)
    with pytest.raises(ValueError, match="dropout"):
        clf.fit(Xtr, ytr)


def test_dropout_regressor(blobs):
    X, y = blobs
    reg = MLPRegressor(hidden_layer_sizes=(32,), dropout=0.1, max_iter=50, learning_rate_init=0.01,
                       random_state=0).fit(X, X[:, 0] + 2 * X[:, 1])
    assert reg.score(X, X[:, 0] + 2 * X[:, 1]) > 0.8
    assert [type(layer).__name__ for layer in reg._model.layers] == ["Dense", "Dropout", "Dense"]


def _curves(Est, SkEst, X, y, **kw):
    kw = dict(hidden_layer_sizes=(12,), max_iter=12, random_state=0, shuffle=False, **kw)
    ours = Est(dtype="float64", **kw).fit(X, y)
    ref = SkEst(**kw).fit(X, y)
    return ours, ref


@pytest.mark.parametrize("kw", [
    dict(solver="sgd", learning_rate_init=0.1, learning_rate="invscaling"),
    dict(solver="sgd", learning_rate_init=0.05, learning_rate="adaptive", n_iter_no_change=1, tol=0.05),
    dict(solver="sgd", nesterovs_momentum=False, alpha=0.1, batch_size=64),
    dict(solver="sgd", momentum=0.0),
])
def test_sgd_is_sklearns_update_exactly(digits, kw):
    """Unshuffled, in float64, from the same initial weights: the same steps as scikit-learn,
    learning-rate schedules and momentum included."""
    X, y = digits[0][:300], digits[2][:300]
    ours, ref = _curves(MLPClassifier, sk_nn.MLPClassifier, X, y, **kw)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_


def test_multilabel_and_regression_use_sklearns_loss_scale():
    X, Y = make_multilabel_classification(120, 6, n_classes=4, random_state=0)
    ours, ref = _curves(MLPClassifier, sk_nn.MLPClassifier, X, Y, solver="sgd", alpha=0.1)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-10)
    Xr, yr = make_regression(120, 6, n_targets=1, random_state=0)
    ours, ref = _curves(MLPRegressor, sk_nn.MLPRegressor, Xr, yr / 100, solver="sgd", alpha=0.1,
                        learning_rate_init=0.01)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-10)
    # several outputs: same weights; the reported loss is approximate in its L2 term only
    Xr, Yr = make_regression(120, 6, n_targets=3, random_state=0)
    ours, ref = _curves(MLPRegressor, sk_nn.MLPRegressor, Xr, Yr / 100, solver="sgd", alpha=0.1,
                        learning_rate_init=0.01)
    np.testing.assert_allclose(ours.coefs_[0], ref.coefs_[0], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-2)
    # Adam: the same up to where epsilon is added
    ours, ref = _curves(MLPClassifier, sk_nn.MLPClassifier, X, Y, solver="adam")
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-5)


def test_lbfgs_reaches_sklearns_loss():
    X, y = make_classification(150, 6, n_informative=4, random_state=1)
    kw = dict(hidden_layer_sizes=(10,), solver="lbfgs", alpha=1e-3, max_iter=20, random_state=0)
    # the same objective and gradient from the same start: the same iterations
    ours = MLPClassifier(dtype="float64", **kw).fit(X, y)
    np.testing.assert_allclose(ours.loss_, sk_nn.MLPClassifier(**kw).fit(X, y).loss_, rtol=1e-10)
    assert not hasattr(ours, "loss_curve_")  # no curve for L-BFGS, as scikit-learn
    # to convergence (alpha large enough for the minima to agree), in float32 and float64
    kw.update(alpha=1.0, max_iter=500)
    ref = sk_nn.MLPClassifier(**kw).fit(X, y)
    for dtype in ("float32", "float64"):  # float32's noisy last digits may keep L-BFGS going to max_iter
        ours = MLPClassifier(dtype=dtype, **kw).fit(X, y)
        assert ours.loss_ == pytest.approx(ref.loss_, rel=0.01)
    assert ours.n_iter_ < 500
    Xr, yr = make_regression(150, 5, random_state=0)
    ref = sk_nn.MLPRegressor(**kw).fit(Xr, yr / 100)
    for dtype in ("float32", "float64"):
        ours = MLPRegressor(dtype=dtype, **kw).fit(Xr, yr / 100)
        assert ours.n_iter_ < 500 and ours.loss_ == pytest.approx(ref.loss_, rel=0.01)


def _poisson_data(n=200, k=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    W = rng.standard_normal((3, k)) * 0.5
    Y = rng.poisson(np.exp(X @ W + 0.3)).astype(float)
    return X, (Y[:, 0] if k == 1 else Y)


@pytest.mark.parametrize("k", [1, 2], ids=["1_output", "2_outputs"])
def test_poisson_matches_sklearn(k):
    """loss='poisson': exp output, scikit-learn's half Poisson deviance as loss_ (constant
    y*log(y) - y included), its gradient (delta exp(z) - y summed over the outputs)."""
    X, y = _poisson_data(k=k)
    # SGD, unshuffled, with L2: scikit-learn's steps exactly
    ours, ref = _curves(MLPRegressor, sk_nn.MLPRegressor, X, y, loss="poisson", solver="sgd", alpha=0.01,
                        learning_rate_init=0.01)
    assert ours.out_activation_ == ref.out_activation_ == "exp"
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-10)
    assert ours.predict(X).shape == ref.predict(X).shape
    # Adam: the same up to where epsilon is added
    ours, ref = _curves(MLPRegressor, sk_nn.MLPRegressor, X, y, loss="poisson", solver="adam",
                        learning_rate_init=0.01)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-4)
    assert ours.score(X, y) == pytest.approx(ref.score(X, y), abs=1e-4)
    # L-BFGS: the same objective and gradient from the same start, the same iterations
    kw = dict(loss="poisson", hidden_layer_sizes=(8,), solver="lbfgs", max_iter=30, random_state=0)
    ours, ref = MLPRegressor(dtype="float64", **kw).fit(X, y), sk_nn.MLPRegressor(**kw).fit(X, y)
    np.testing.assert_allclose(ours.loss_, ref.loss_, rtol=1e-8)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-6)
    assert ours.score(X, y) > 0.3  # the fit explains the rates


def test_poisson_sample_weight_float32_and_errors():
    X, y = _poisson_data(n=120)
    sw = np.random.default_rng(3).uniform(0.5, 2.0, len(y))
    kw = dict(loss="poisson", hidden_layer_sizes=(8,), solver="lbfgs", max_iter=30, random_state=0)
    ours = MLPRegressor(dtype="float64", **kw).fit(X, y, sample_weight=sw)
    ref = sk_nn.MLPRegressor(**kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(ours.loss_, ref.loss_, rtol=1e-8)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-6)
    # the default float32 trains the same model to float32's precision
    kw.update(solver="adam", max_iter=10, learning_rate_init=0.01, shuffle=False)
    f32 = MLPRegressor(**kw).fit(X, y)
    f64 = MLPRegressor(dtype="float64", **kw).fit(X, y)
    assert f32.predict(X).dtype == np.float32 and (f32.predict(X) > 0).all()
    np.testing.assert_allclose(f32.predict(X), f64.predict(X), rtol=1e-3)
    np.testing.assert_allclose(f32.loss_curve_, f64.loss_curve_, rtol=1e-4)
    # partial_fit trains one epoch on the same loss
    pf = MLPRegressor(**kw)
    for _ in range(3):
        pf.partial_fit(X, y)
    assert pf.out_activation_ == "exp" and len(pf.loss_curve_) == 3
    # negative targets: a clear error before any work (scikit-learn would return NaN losses)
    bad = y.copy()
    bad[5] = -1.0
    for solver in ("lbfgs", "adam"):
        est = MLPRegressor(loss="poisson", solver=solver)
        with pytest.raises(ValueError, match=r"loss='poisson' needs targets y >= 0.*-1\.0 at row 5"):
            est.fit(X, bad)
        assert not hasattr(est, "coefs_")


# ------------------------------------------------------------------ behaviour
def test_binary_multiclass_multilabel(blobs):
    X, y = blobs
    for target, n_out, out in ((y == 1, 1, "logistic"), (y, 3, "softmax")):
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.01, random_state=0)
        clf.fit(X, target)
        P = clf.predict_proba(X)
        assert P.shape == (len(X), len(np.unique(target))) and clf.n_outputs_ == n_out
        assert clf.out_activation_ == out and clf.n_layers_ == 3
        np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(clf.predict_log_proba(X), np.log(P), rtol=1e-5)
        np.testing.assert_array_equal(clf.predict(X), clf.classes_[P.argmax(axis=1)])
        assert clf.score(X, target) > 0.8
    Xm, Ym = make_multilabel_classification(200, 8, n_classes=3, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, random_state=0).fit(Xm, Ym)
    assert clf.predict(Xm).shape == Ym.shape and clf.out_activation_ == "logistic" and clf.n_outputs_ == 3
    assert clf.predict_proba(Xm).shape == Ym.shape
    assert [c.shape for c in clf.coefs_] == [(8, 16), (16, 3)]
    assert [b.shape for b in clf.intercepts_] == [(16,), (3,)]


def test_fastmlp_extras(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), activation=["gelu", "tanh"], init="he_uniform",
                        clip_norm=1.0, n_threads=1, max_iter=20, learning_rate_init=0.01, random_state=0)
    clf.fit(X, y)
    assert clf.coefs_[0].dtype == np.float32 and clf.score(X, y) > 0.7
    assert MLPClassifier(dtype="float64", max_iter=5).fit(X, y).coefs_[0].dtype == np.float64
    with pytest.raises(ValueError, match="needs a stochastic solver"):
        MLPClassifier(dropout=0.2, solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="batch_norm=True needs a stochastic solver"):
        MLPClassifier(batch_norm=True, solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="one activation per hidden layer"):
        MLPClassifier(hidden_layer_sizes=(4, 4), activation=["relu"]).fit(X, y)
    with pytest.raises(ValueError, match="Unknown activation"):
        MLPClassifier(activation="relux").fit(X, y)


def test_partial_fit(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    for _ in range(30):
        clf.partial_fit(X, y)
    assert clf.score(X, y) > 0.8 and len(clf.loss_curve_) == 31 and clf.n_iter_ == 1
    assert clf.t_ == 50 + 30 * len(X)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(X, y + 5)
    reg = MLPRegressor(hidden_layer_sizes=(8,), random_state=0)
    for _ in range(3):
        reg.partial_fit(X, y.astype(float))
    assert len(reg.loss_curve_) == 3


def test_early_stopping_restores_best_weights(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3, max_iter=200,
                        learning_rate_init=0.05, random_state=0).fit(X, y)
    scores = clf.validation_scores_
    assert clf.n_iter_ < 200 and len(scores) == clf.n_iter_ and clf.best_loss_ is None
    assert clf.best_validation_score_ == max(scores)
    # scikit-learn's rule: n_iter_no_change + 1 epochs in a row without beating the best by tol
    assert all(s < clf.best_validation_score_ + clf.tol for s in scores[-4:])
    best = clf._best_weights  # the snapshot taken at the best epoch
    for got, want in zip(clf.coefs_ + clf.intercepts_, best[0::2] + best[1::2]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.partial_fit(X, y)


def test_validation_data_and_best_weights(blobs):
    X, y = blobs
    Xtr, Xval, ytr, yval = train_test_split(X, y, test_size=0.3, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(32,), n_iter_no_change=4, max_iter=200, learning_rate_init=0.05,
                        random_state=0).fit(Xtr, ytr, validation_data=(Xval, yval))
    assert clf.validation_scores_ and len(clf.validation_scores_) == clf.n_iter_ < 200
    # the weights kept are those of the best epoch on validation_data
    assert clf.score(Xval, yval) == pytest.approx(clf.best_validation_score_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=30, random_state=0)
    reg.fit(Xtr, ytr.astype(float), validation_data=(Xval, yval.astype(float)))
    assert reg.score(Xval, yval.astype(float)) == pytest.approx(reg.best_validation_score_)
    with pytest.raises(ValueError, match="lbfgs"):
        MLPClassifier(solver="lbfgs").fit(Xtr, ytr, validation_data=(Xval, yval))
    with pytest.raises(ValueError, match="X has 7 features"):
        clf.fit(Xtr, ytr, validation_data=(Xval[:, 1:], yval))


def test_warm_start(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, warm_start=True, random_state=0).fit(X, y)
    w = [c.copy() for c in clf.coefs_]
    clf.fit(X, y)
    assert len(clf.loss_curve_) == 10 and clf.n_iter_ == 5
    assert clf.loss_curve_[5] < clf.loss_curve_[0]
    assert not np.array_equal(w[0], clf.coefs_[0])
    cold = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(X, y)
    np.testing.assert_array_equal(cold.coefs_[0], w[0])  # same start as a fresh fit
    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X[y < 2], y[y < 2])


def test_sample_weight(blobs):
    X, y = blobs
    kw = dict(hidden_layer_sizes=(8,), max_iter=15, random_state=0, dtype="float64")
    a = MLPClassifier(**kw).fit(X, y).predict_proba(X)
    b = MLPClassifier(**kw).fit(X, y, sample_weight=np.ones(len(X))).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    # a zero weight is a dropped sample, for L-BFGS and for full-batch sgd / adam
    sw = np.ones(len(X))
    sw[::3] = 0
    for solver in ("lbfgs", "adam"):
        kw = dict(hidden_layer_sizes=(8,), max_iter=30, solver=solver, batch_size=len(X), random_state=0,
                  dtype="float64", alpha=0.01)
        weighted = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        kw["batch_size"] = int(sw.sum())
        dropped = MLPClassifier(**kw).fit(X[sw > 0], y[sw > 0])
        np.testing.assert_allclose(weighted.predict_proba(X), dropped.predict_proba(X), rtol=1e-6, atol=1e-9)
        assert weighted.loss_ == pytest.approx(dropped.loss_, rel=1e-6)
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        MLPClassifier().fit(X, y, sample_weight=-sw)


def test_convergence_warning_and_lbfgs_warning(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\) reached"):
        MLPClassifier(max_iter=3).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        MLPClassifier(solver="lbfgs", max_iter=3).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(8,), tol=0.5, n_iter_no_change=1, max_iter=50).fit(X, y)
    assert clf.n_iter_ < 50


def test_errors(blobs):
    X, y = blobs
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)
    clf = MLPClassifier(max_iter=5).fit(X, y)
    msg = "X has 7 features, but MLPClassifier is expecting 8 features as input"
    with pytest.raises(ValueError, match=msg):
        clf.predict(X[:, 1:])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        MLPClassifier().fit(Xn, y)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict(Xn)
    Xn[3, 2] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        MLPRegressor().fit(Xn, y)
    with pytest.raises(ValueError, match="learning_rate_init"):
        MLPClassifier(learning_rate_init=-1).fit(X, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, y + 0.5)


def test_import_without_sklearn_is_lazy():
    import subprocess
    import sys

    code = ("import sys; sys.modules['sklearn'] = None; import fastmlp; "
            "assert 'fastmlp.estimators' not in sys.modules; print(fastmlp.Sequential.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Sequential"
    assert fastmlp.MLPClassifier is MLPClassifier
    with pytest.raises(AttributeError):
        fastmlp.NoSuchThing  # noqa: B018


def test_every_backend_trains_the_same_network(blobs, backend_name):
    X, y = blobs
    kw = dict(hidden_layer_sizes=(8,), max_iter=5, shuffle=False, random_state=0, dtype="float64")
    ref = MLPClassifier(backend="reference", **kw).fit(X, y)
    est = MLPClassifier(backend=backend_name, **kw).fit(X, y)
    assert est._model.backend.NAME == backend_name
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), rtol=1e-8, atol=1e-12)
