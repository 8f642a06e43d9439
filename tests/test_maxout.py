"""fm.Maxout: its layer checks, weights layout (PyTorch's Linear then .view(n, units, pieces).max(-1)),
ties, agreement with PyTorch (predict, three full-batch steps), central differences through each
backend's loop, the native loops (the Cython one also split between threads) against the
reference; and, for both new layers, saving, ONNX export, summary() and the estimators."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU
from fastmlp.backends import reference as ref

from conftest import BACKENDS, Loss, Opt, loop_state, make_plan
from test_prelu import (
    OPTIMIZERS,
    TorchMaxout,
    check_finite_differences,
    check_native_matches_reference,
    check_predict_matches_torch,
    check_three_steps_match_torch,
    jitter,
    split_vs_reference,
    torch,
)


def _nets(i):
    return [
        lambda: [Maxout(4), Dense(3)],
        lambda: [Dense(7, "tanh"), Maxout(5, pieces=3), Dense(6), PReLU(), Maxout(4, pieces=1, use_bias=False),
                 Dense(3)],
        lambda: [Maxout(6, pieces=2), BatchNorm(), Dropout(0.25), Maxout(5, pieces=4), Activation("relu"),
                 Dense(3)],
    ][i]


def test_bad_arguments_raise_clear_errors():
    for units in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="Maxout units must be an integer > 0"):
            Maxout(units)
    for pieces in (0, -2, 1.5, None):
        with pytest.raises(ValueError, match="Maxout pieces must be an integer > 0"):
            Maxout(3, pieces=pieces)
    with pytest.raises(ValueError, match="Unknown initializer"):
        Maxout(3, kernel_initializer="nope")
    with pytest.raises(ValueError, match="Maxout cannot be the last layer"):
        fastmlp.Sequential([Dense(3), Maxout(2)], input_dim=4)


def test_weights_layout_and_columns_follow_torch():
    """W (fan_in, units * pieces), b (units * pieces,); unit j's pieces in columns j*pieces ... ."""
    model = fastmlp.Sequential([Maxout(3, pieces=4), Dense(2)], input_dim=5, dtype="float64", seed=0)
    assert [w.shape for w in model.get_weights()] == [(5, 12), (12,), (3, 2), (2,)]
    assert model.count_params() == 5 * 12 + 12 + 6 + 2
    rng = np.random.default_rng(1)
    W, b, X = rng.standard_normal((5, 12)), rng.standard_normal(12), rng.standard_normal((4, 5))
    plan = model._make_plan(model._infer_acts, 4)
    model.set_weights([W, b, np.eye(3, 2), np.zeros(2)])
    plan.x[...] = X
    ref.forward_units(ref, plan)
    np.testing.assert_array_equal(plan.A[1], (X @ W + b).reshape(4, 3, 4).max(axis=2))
    # the "auto" initializer is He (uniform): bound sqrt(6 / fan_in)
    w0 = fastmlp.Sequential([Maxout(50, pieces=2), Dense(2)], input_dim=400, seed=0).get_weights()[0]
    assert np.sqrt(6 / 400) * 0.97 < np.abs(w0).max() <= np.sqrt(6 / 400)


def test_ties_send_the_gradient_to_the_first_piece(backend_name):
    """As torch.max: equal pieces give the whole gradient to the first of them."""
    Z = np.array([[1.0, 1.0, 0.5, 2.0, 2.0, 2.0]])
    dX = np.full((1, 6), np.nan)
    ref._maxout_backward(Z, 3, np.array([[3.0, 5.0]]), dX)
    x = torch.tensor(Z, requires_grad=True)
    (TorchMaxout(2, 3)(x) * torch.tensor([[3.0, 5.0]], dtype=torch.float64)).sum().backward()
    np.testing.assert_array_equal(dX, x.grad.numpy())
    np.testing.assert_array_equal(dX, [[3.0, 0.0, 0.0, 5.0, 0.0, 0.0]])
    # and in each backend's loop: a first Dense of equal column pairs makes every piece a tie
    model = fastmlp.Sequential([Maxout(2, pieces=2, use_bias=False), Dense(2)], input_dim=3, dtype="float64",
                               seed=0, backend=backend_name)
    W = np.random.default_rng(2).standard_normal((3, 2))
    model.set_weights([np.repeat(W, 2, axis=1), np.array([[1.0, -1.0], [0.5, 2.0]]), np.zeros(2)])
    model.compile("cross_entropy", "sgd")
    n = 5
    X = np.random.default_rng(3).standard_normal((n, 3))
    plan = make_plan(model._records(model._train_acts, n, dropout=True), n, model.dtype, Loss.CE,
                     params=model._params.copy())
    losses, correct = np.empty(1), np.empty(1)
    fastmlp.get_backend(backend_name).train_steps(
        plan, loop_state(Opt.NONE, model._params.size, model.dtype), X, np.zeros(n, np.int64),
        np.empty(0), np.arange(n, dtype=np.int64), 0, 1, losses, correct)
    dW = plan.grads[:12].reshape(3, 4)
    assert np.abs(dW[:, 0::2]).min() > 0
    np.testing.assert_array_equal(dW[:, 1::2], 0.0)


@pytest.mark.parametrize("net", [0, 1, 2])
def test_predict_matches_torch(backend_name, net):
    model = fastmlp.Sequential(_nets(net)(), input_dim=5, dtype="float64", seed=net, backend=backend_name)
    check_predict_matches_torch(jitter(model, net), 30 + net)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_three_steps_match_torch(backend_name, opt_name):
    layers = [Maxout(6, pieces=3), BatchNorm(), Maxout(5), Dense(3)]
    model = fastmlp.Sequential(layers, input_dim=5, dtype="float64", seed=3, backend=backend_name)
    check_three_steps_match_torch(jitter(model, 4), opt_name, 7)


def test_finite_differences_every_parameter(backend_name):
    model = fastmlp.Sequential(_nets(1)(), input_dim=4, dtype="float64", seed=1, backend=backend_name)
    jitter(model, 2)
    dense = [(u.w_off, u.w_off + 4) for u in model._units if u.dense]
    check_finite_differences(model, backend_name, 8, dense[:1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", [1, 2])
def test_native_loops_match_reference(native_name, dtype, net):
    check_native_matches_reference(_nets(net), native_name, dtype, 40 + net)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cython_split_loop_matches_reference(dtype):
    """Maxout units split by rows: the Cython loop on 2 threads of its own gives the reference's weights."""
    if "cython" not in BACKENDS:  # pragma: no cover
        pytest.skip("the Cython backend is not built")
    dt = np.dtype(dtype)
    model = fastmlp.Sequential([Maxout(40, pieces=3), Maxout(32, pieces=2), Dense(3)], input_dim=24, dtype=dt,
                               seed=5, backend="cython")
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((64, 24)).astype(dt), rng.integers(0, 3, 64).astype(np.int64)
    split_vs_reference(model, X, y, 16, 4)


# ------------------------------------------------- saving, ONNX, summary, estimators (both layers)
def _mixed(backend="reference", dtype="float64"):
    layers = [Dense(6), PReLU(), Maxout(5, pieces=3), BatchNorm(), Dense(4, use_bias=False),
              PReLU(shared=True, init=0.1), Dense(3)]
    model = fastmlp.Sequential(layers, input_dim=5, dtype=dtype, seed=0, backend=backend)
    return jitter(model, 1)


def test_saving_round_trip(tmp_path):
    model = _mixed()
    model.compile("cross_entropy", fastmlp.optim.AdamW(lr=0.01))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.safetensors")
    back = fastmlp.load_model(tmp_path / "m.safetensors")
    assert [type(a) for a in back.layers] == [type(a) for a in model.layers]
    assert [a.get_config() for a in back.layers] == [a.get_config() for a in model.layers]
    for got, want in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)  # both train on alike
    back.fit(X, y, epochs=1, batch_size=8, verbose=0)
    for got, want in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_saving_refuses_bad_layer_settings():
    """Loading checks the new layers' settings and the alpha's shape before it builds anything."""
    import copy

    from fastmlp import saving
    model = _mixed()
    doc0, tensors0 = saving.sequential_state(model)
    assert saving.build_sequential(copy.deepcopy(doc0), dict(tensors0)).count_params() == model.count_params()
    for index, key, value, match in ((1, "init", float("nan"), "PReLU init"), (1, "shared", 1, "shared must be"),
                                     (2, "pieces", 0, "Maxout pieces"), (2, "units", "5", "Maxout units")):
        doc = copy.deepcopy(doc0)
        doc["layers"][index]["config"][key] = value
        with pytest.raises(fastmlp.ModelFileError, match=match):
            saving.build_sequential(doc, dict(tensors0))
    tensors = dict(tensors0)
    tensors["layers.1.alpha"] = np.zeros(5)
    with pytest.raises(fastmlp.ModelFileError, match="layers.1.alpha"):
        saving.build_sequential(copy.deepcopy(doc0), tensors)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_export_matches_predict(dtype):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _mixed(dtype=dtype)
    model.compile("cross_entropy", "adam")
    X = np.random.default_rng(2).standard_normal((30, 5)).astype(dtype)
    for opset in (17, 18):
        sess = ort.InferenceSession(fastmlp.onnx.to_onnx(model, opset=opset).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, {"X": X})[0]
        np.testing.assert_allclose(got, model.predict(X), rtol=1e-5 if dtype == "float32" else 1e-12,
                                   atol=1e-6 if dtype == "float32" else 1e-14)


def test_summary_rows():
    model = _mixed()
    from fastmlp import _summary
    text = _summary.summary_text(model)
    assert "p_re_lu (PReLU)" in text and "p_re_lu_1 (PReLU)" in text and "maxout (Maxout)" in text
    assert "prelu on 6 (an alpha per feature)" in text and "prelu on 4 (one alpha)" in text
    assert "maxout 15->5 (3 pieces)" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if "(None," in line}
    assert rows["p_re_lu"][-2] == "6" and rows["p_re_lu_1"][-2] == "1" and rows["maxout"][-2] == "105"  # 6 * 15 + 15
    assert f"Total params: {model.count_params():,}" in text


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("activation", ["prelu", "maxout"])
def test_estimators_accept_the_new_activations(activation):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int)
    clf = fastmlp.MLPClassifier((8, 6), activation=activation, max_iter=150, learning_rate_init=0.01,
                                random_state=0, dtype="float64", backend="reference")
    clf.fit(X, y)
    kinds = [type(a).__name__ for a in clf._model.layers]
    if activation == "prelu":
        assert kinds == ["Dense", "PReLU", "Dense", "PReLU", "Dense"]
        assert [c.shape for c in clf.coefs_] == [(4, 8), (8, 6), (6, 1)]
    else:
        assert kinds == ["Maxout", "Maxout", "Dense"]
        assert [c.shape for c in clf.coefs_] == [(4, 16), (8, 12), (6, 1)]
    assert clf.score(X, y) > 0.8
    reg = fastmlp.MLPRegressor(hidden_layer_sizes=(5,), activation=activation, max_iter=5, random_state=0,
                               solver="lbfgs")
    reg.fit(X, X[:, 0])
    assert np.isfinite(reg.predict(X)).all()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimator_with_the_new_layers_saves_and_loads(tmp_path):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    clf = fastmlp.MLPClassifier((6, 5), activation=["maxout", "prelu"], max_iter=5, random_state=0,
                                backend="reference").fit(X, y)
    assert [type(a).__name__ for a in clf._model.layers] == ["Maxout", "Dense", "PReLU", "Dense"]
    clf.save(tmp_path / "clf.safetensors")
    back = fastmlp.load_model(tmp_path / "clf.safetensors")
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    for got, want in zip(back._model.get_weights(), clf._model.get_weights()):
        np.testing.assert_array_equal(got, want)
