"""ONNX export: onnxruntime's outputs match predict for every layer, activation, loss and estimator."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fastmlp as fm

ACTS = sorted(fm.activations.ACTIVATIONS)
TOL = {"float32": 1e-5, "float64": 1e-10}


def _run(proto, X):
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"X": X})))


def _close(got, want, dtype):
    rtol = TOL[dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    # relative to the scale of the outputs as well: an output that is a sum of larger terms of both signs
    # (or expm1 / log1p against exp - 1 / log(1 + e) near 0) differs by the rounding of those terms
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTS)
def test_every_activation_and_layer(act, dtype):
    rng = np.random.default_rng(0)
    layers = [fm.Dense(12, activation="tanh"), fm.Dropout(0.3), fm.Dense(10, use_bias=False), fm.BatchNorm(),
              fm.Activation(act) if act not in ("softmax", "log_softmax") else fm.Activation("relu"),
              fm.Dense(4, activation=act)]
    m = fm.Sequential(layers, input_dim=6, dtype=dtype, seed=1)
    ws = m.get_weights()
    ws[3:7] = [rng.uniform(0.5, 2, 10), rng.normal(size=10), rng.normal(size=10), rng.uniform(0.5, 2, 10)]
    m.set_weights(ws)
    for n in (1, 1000):
        X = (rng.normal(size=(n, 6)) * 2).astype(dtype)
        out = _run(fm.onnx.to_onnx(m), X)["output"]
        if act == "step":
            assert np.array_equal(out, m.predict(X))
        else:
            _close(out, m.predict(X), dtype)


@pytest.mark.parametrize("loss,last", [("cross_entropy", None), ("binary_cross_entropy", None),
                                       ("poisson", None), ("mse", "sigmoid"), ("nll", "log_softmax")])
def test_output_activation_that_predict_applies(loss, last, tmp_path):
    rng = np.random.default_rng(1)
    k = 1 if loss == "binary_cross_entropy" else 3
    m = fm.Sequential([fm.Dense(8, activation="relu"), fm.Dense(k, activation=last)], input_dim=5, seed=0)
    m.compile(loss, "adam")
    X = rng.normal(size=(1000, 5)).astype(np.float32)
    path = fm.onnx.export(m, tmp_path / "m.onnx", opset=15)
    proto = onnx.load(path)
    assert proto.opset_import[0].version == 15
    _close(_run(proto, X)["output"], m.predict(X), "float32")
    _close(_run(proto, X[:1])["output"], m.predict(X[:1]), "float32")


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regressor"])
def test_estimators(kind):
    from sklearn.datasets import make_classification, make_multilabel_classification

    if kind == "multilabel":
        X, y = make_multilabel_classification(300, 6, n_classes=3, random_state=0)
    else:
        X, y = make_classification(300, 6, n_classes=2 if kind == "binary" else 3, n_informative=4, random_state=0)
    X = X.astype(np.float64)
    if kind == "regressor":
        est = fm.MLPRegressor(hidden_layer_sizes=(10,), max_iter=20, random_state=0, dtype="float64").fit(X, y * 2.0)
    else:
        if kind != "multilabel":
            y = np.array(["ant", "bee", "cat"])[y]
        est = fm.MLPClassifier((10,), max_iter=20, random_state=0, dtype="float64",
                               batch_norm=kind == "binary").fit(X, y)
    for Xb in (X[:1], np.repeat(X, 4, axis=0)[:1000]):
        out = _run(fm.onnx.to_onnx(est), Xb)
        if kind == "regressor":
            _close(out["variable"].ravel(), est.predict(Xb), "float64")
            continue
        _close(out["probabilities"], est.predict_proba(Xb), "float64")
        assert np.array_equal(out["label"], est.predict(Xb))


def test_errors():
    with pytest.raises(ValueError, match="no weights"):
        fm.onnx.to_onnx(fm.Sequential([fm.Dense(2)]))
    m = fm.Sequential([fm.Dense(2)], input_dim=3)
    with pytest.raises(ValueError, match="opset must be"):
        fm.onnx.to_onnx(m, opset=7)
    with pytest.raises(TypeError, match="Sequential, MLPClassifier"):
        fm.onnx.to_onnx(object())
