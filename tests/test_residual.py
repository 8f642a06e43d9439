"""fm.Residual: its checks, the weights layout (the projection Wp after F's weights), agreement with
the same network in PyTorch (predict, three full-batch steps of SGD with momentum, RMSprop, Adam and
AdamW, with and without weight decay and value clipping), central differences of every parameter
through each backend's own loop, the native loops (the Cython one also split between threads, on
BLAS and on packed operands) against the reference, and the plan's checks of the new records."""
import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU, Residual
from fastmlp._native.codes import Unit
from fastmlp.backends import reference as ref

from conftest import BACKENDS, Loss, Opt, loop_state, make_plan
from test_prelu import (
    OPTIMIZERS,
    check_finite_differences,
    check_native_matches_reference,
    check_predict_matches_torch,
    check_three_steps_match_torch,
    jitter,
    split_vs_reference,
    torch,
)

RES_OPTIMIZERS = dict(OPTIMIZERS, **{
    "rmsprop": (lambda: fastmlp.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-6),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6), None),
    "adam_decay_clip": (lambda: fastmlp.optim.Adam(lr=0.01, weight_decay=0.05),
                        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05), 0.02),
    "adamw_clip": (lambda: fastmlp.optim.AdamW(lr=0.01, weight_decay=0.1),
                   lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1), 0.02),
    "rmsprop_decay_clip": (lambda: fastmlp.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-6, weight_decay=0.2),
                           lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.2), 0.02),
})


def _nets(i):
    """Small nets mixing identity and projection shortcuts with the other layers (input width 5)."""
    return [
        lambda: [Dense(6, "relu"), Residual([Dense(6, "tanh"), Dense(6)], activation="relu"), Dense(3)],
        lambda: [Residual([Dense(7, "tanh"), Dense(4)]), Residual([Dense(4), PReLU()], activation="tanh"),
                 Dense(6), Residual([Maxout(3, pieces=2)], activation="relu"), Dense(3)],
        lambda: [Dense(6, use_bias=False), Residual([BatchNorm(), Activation("relu"), Dense(6, "elu")]),
                 Residual([Dense(5), PReLU(shared=True), Dense(8)], activation="sigmoid"), Dense(3)],
        lambda: [Dense(8, "relu"), Residual([Dense(8, "relu"), Dropout(0.3), Dense(8)], activation="relu"),
                 Residual([Dense(5, use_bias=False), BatchNorm(), Activation("tanh")]), Dropout(0.2), Dense(3)],
    ][i]


def _projections(model):
    return [(u.w_off, u.w_off + u.n_params) for u in model._units if u.res == 2 and u.dense]


# ------------------------------------------------------------------ the layer
def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        Residual([])
    with pytest.raises(TypeError, match="takes a list of layers"):
        Residual(Dense(3))
    with pytest.raises(TypeError, match="must be fastmlp.Dense"):
        Residual([Dense(3), "relu"])
    with pytest.raises(ValueError, match="do not nest"):
        Residual([Dense(3), Residual([Dense(3)])])
    with pytest.raises(ValueError, match="needs a Dense or Maxout"):
        Residual([Activation("relu"), Dropout(0.1)])
    with pytest.raises(ValueError, match="Residual cannot be the last layer"):
        fastmlp.Sequential([Dense(3), Residual([Dense(3)])], input_dim=4)
    block = Residual([Dense(3)])
    block.layers.append(Residual([Dense(3)]))  # nested after the block was made: caught when the model is
    with pytest.raises(ValueError, match="do not nest"):
        fastmlp.Sequential([block, Dense(2)], input_dim=3)


def test_weights_layout_and_spans():
    model = fastmlp.Sequential([Dense(4), Residual([Dense(4, "relu"), Dense(4)]),
                                Residual([Dense(6, "relu"), Dense(3, use_bias=False)], activation="relu"),
                                Dense(2)], input_dim=3, dtype="float64", seed=0)
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 4), (4,), (4, 4), (4,), (4, 4), (4,), (4, 6), (6,), (6, 3), (4, 3), (3, 2), (2,)]
    assert model.count_params() == sum(int(np.prod(s)) for s in shapes)
    kinds = [int(r["kind"]) for r in model._records(model._train_acts, 4)]
    assert kinds == [Unit.DENSE, Unit.RES_BEGIN, Unit.DENSE, Unit.DENSE, Unit.RES_ADD, Unit.RES_BEGIN, Unit.DENSE,
                     Unit.DENSE, Unit.RES_ADD, Unit.DENSE]
    recs = model._records(model._train_acts, 4)
    assert (recs["link"][[1, 4, 5, 8]] == [4, 1, 8, 5]).all()
    (lo, hi), = _projections(model)
    assert hi - lo == 12 and (lo, hi) in ref.trainable_spans(recs)  # weight decay reaches Wp
    # set_weights round trip, and a projection of the wrong shape is refused
    w = model.get_weights()
    model.set_weights(w)
    bad = list(w)
    bad[9] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"Weight 9 has shape \(3, 4\), expected \(4, 3\)"):
        model.set_weights(bad)


@pytest.mark.parametrize("net", [0, 1, 2, 3])
def test_predict_matches_torch(backend_name, net):
    model = fastmlp.Sequential(_nets(net)(), input_dim=5, dtype="float64", seed=net, backend=backend_name)
    check_predict_matches_torch(jitter(model, net), 10 + net)


@pytest.mark.parametrize("opt_name", sorted(RES_OPTIMIZERS))
def test_three_steps_match_torch(backend_name, opt_name, monkeypatch):
    import test_prelu
    monkeypatch.setattr(test_prelu, "OPTIMIZERS", RES_OPTIMIZERS)
    layers = [Residual([Dense(7, "tanh"), Dense(4)]), Residual([Dense(4), PReLU()], activation="relu"),
              Dense(6, use_bias=False), Residual([BatchNorm(), Maxout(6), Dense(6)], activation="tanh"), Dense(3)]
    model = fastmlp.Sequential(layers, input_dim=5, dtype="float64", seed=3, backend=backend_name)
    check_three_steps_match_torch(jitter(model, 4), opt_name, 5)


@pytest.mark.parametrize("net", [1, 2])
def test_finite_differences_every_parameter(backend_name, net):
    model = fastmlp.Sequential(_nets(net)(), input_dim=5, dtype="float64", seed=1, backend=backend_name)
    jitter(model, 2)
    check_finite_differences(model, backend_name, 6, _projections(model))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", [1, 3])
def test_native_loops_match_reference(native_name, dtype, net):
    check_native_matches_reference(_nets(net), native_name, dtype, 20 + net, d=5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extra", [{}, {"clip_value": 2e-2}, {"clip_norm": 0.05, "weight_decay": 0.1}],
                         ids=["plain", "clip_value", "clip_norm_decay"])
def test_cython_split_loop_matches_reference(dtype, extra):
    """The Cython loop splits a residual net between its threads (each its rows of the block's sums
    and stashes; the projection's dWp and update by shares of its rows, as a dense unit's W)."""
    if "cython" not in BACKENDS:  # pragma: no cover
        pytest.skip("the Cython backend is not built")
    dt = np.dtype(dtype)
    layers = [Residual([Dense(40, "relu"), Dense(40)], activation="relu"), Dropout(0.2),
              Residual([Dense(33, "tanh"), PReLU(), Dense(33)]), Residual([Dense(33, "relu"), Dense(33)]),
              Dense(3)]
    model = jitter(fastmlp.Sequential(layers, input_dim=24, dtype=dt, seed=5, backend="cython"), 5, 0.1)
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((64, 24)).astype(dt), rng.integers(0, 3, 64).astype(np.int64)
    out = split_vs_reference(model, X, y, 16, 4, extra.get("clip_value", 0.0),
                             clip_norm=extra.get("clip_norm", 0.0), weight_decay=extra.get("weight_decay", 0.0))
    assert len(_projections(model)) == 2
    for lo, hi in _projections(model):
        assert np.abs(out["cython"][0][lo:hi] - model._params[lo:hi]).max() > 0  # Wp trained
        assert np.count_nonzero(out["cython"][1][lo:hi]) > 0.9 * (hi - lo)  # every share of dWp was filled


def test_cython_split_loop_on_packed_operands():
    """float32 blocks wide enough for packgemm.h: the dense units inside and around the blocks run
    packed while the block ends add their shortcuts in place."""
    if "cython" not in BACKENDS:  # pragma: no cover
        pytest.skip("the Cython backend is not built")
    from fastmlp._native import loop as LP
    layers = [Dense(64, "relu"), Residual([Dense(64, "relu"), Dense(64)], activation="relu"),
              Residual([Dense(48, "relu"), Dense(48)], activation="relu"), Dense(3)]
    model = jitter(fastmlp.Sequential(layers, input_dim=32, dtype="float32", seed=7, backend="cython"), 7, 0.05)
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((64, 32)).astype(np.float32), rng.integers(0, 3, 64).astype(np.int64)
    split_vs_reference(model, X, y, 32, 2)
    if not LP._PACKED_MIN_WEIGHTS <= 48 * 48:  # pragma: no cover - AVX2-only builds pack larger layers
        pytest.skip("this build packs only layers of at least 32768 weights")
    assert LP._last_loop_packed()


def test_split_policy_counts_the_projection():
    """The split loop's rule that the units it shares own every parameter counts Wp (else a
    projection net would fall back to one thread)."""
    if "cython" not in BACKENDS:  # pragma: no cover
        pytest.skip("the Cython backend is not built")
    from fastmlp._native import loop as LP
    if not LP._HAVE_LOOP_THREADS:  # pragma: no cover
        pytest.skip("no OpenMP in this build")
    model = fastmlp.Sequential([Dense(256, "relu"), Residual([Dense(128, "relu"), Dense(128)]), Dense(10)],
                               input_dim=784, dtype="float32", seed=0, backend="cython")
    recs = model._records(model._train_acts, 128, dropout=True)
    from fastmlp._native import policy
    nt, _ = policy._loop_path(recs, model._params.size, 128, 2, True)
    assert nt == 2
    assert model.loop_path(128, 2).path in ("split", "packed")


# ------------------------------------------------------------------ the plan's checks
def _res_plan(training=True):
    model = fastmlp.Sequential([Dense(4), Residual([Dense(5, "relu"), Dense(3)]), Dense(2)], input_dim=3,
                               dtype="float64", seed=0)
    model.compile("mse", "sgd")
    recs = model._records(model._train_acts, 6, dropout=True)
    return make_plan(recs, 6, np.float64, Loss.MSE, params=model._params.copy(), training=training)


def _set(plan, i, field, value):
    plan.units[i][field] = value


def _train(plan, backend):
    X, Y = np.zeros((6, 3)), np.zeros((6, 2))
    loop = loop_state(Opt.SGD, plan.params.size, np.float64)
    fastmlp.get_backend(backend).train_steps(plan, loop, X, Y, np.empty(0), np.arange(6, dtype=np.int64), 0, 1,
                                             np.empty(1), np.empty(1))


@pytest.mark.parametrize("breakage, match", [
    (lambda p: p.M.__setitem__(4, np.empty((6, 3))), r"M\[4\] \(the projection's gradient stash\)"),
    (lambda p: p.dA.__setitem__(3, p.dA[4]), "below a residual block end must be a buffer of its own"),
    (lambda p: _set(p, 1, "link", 3), "residual block start 1 must link"),
    (lambda p: _set(p, 2, "kind", int(Unit.RES_ADD)), "residual block end 2 must link"),
    (lambda p: _set(p, 4, "fan_in", 5), "residual block end 4 must have"),
    (lambda p: _set(p, 4, "w_off", p.params.size - 3), "projection reaches outside params"),
    (lambda p: _set(p, 4, "kind", int(Unit.ACTIVATION)), "residual block start 1 must link"),
])
def test_plan_checks_refuse_bad_records_and_buffers(backend_name, breakage, match):
    plan = _res_plan()
    _train(plan, backend_name)  # the intact plan trains
    breakage(plan)
    with pytest.raises(ValueError, match=match):
        _train(plan, backend_name)


# ------------------------------------------------------------------ learning
def test_learns_and_every_backend_agrees():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6))
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    got = {}
    for name in BACKENDS:
        model = fastmlp.Sequential([Dense(16, "relu"), Residual([Dense(16, "relu"), Dense(16)], activation="relu"),
                                    Residual([Dense(8, "relu")]), Dense(2)], input_dim=6, dtype="float64", seed=0,
                                   backend=name)
        model.compile("cross_entropy", fastmlp.optim.Adam(lr=0.02))
        hist = model.fit(X, y, epochs=30, batch_size=16, verbose=0)
        assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
        got[name] = [w.copy() for w in model.get_weights()]
    for name in got:
        for g, w in zip(got[name], got["reference"]):
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ saving, ONNX, summary
def _mixed(dtype="float64"):
    layers = [Residual([Dense(7, "tanh"), Dense(4), PReLU()], activation="relu"), Dense(6),
              Residual([BatchNorm(), Maxout(6), Dropout(0.2), Dense(6)], activation="elu"), Dense(3)]
    return jitter(fastmlp.Sequential(layers, input_dim=5, dtype=dtype, seed=0, backend="reference"), 1)


def test_saving_round_trip(tmp_path):
    model = _mixed()
    model.compile("cross_entropy", fastmlp.optim.AdamW(lr=0.01), clip_value=0.5)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.safetensors")
    back = fastmlp.load_model(tmp_path / "m.safetensors")
    assert [type(a) for a in back.layers] == [type(a) for a in model.layers]
    assert [type(a) for a in back.layers[2].layers] == [BatchNorm, Maxout, Dropout, Dense]
    assert back.layers[2].activation == "elu" and back.layers[0].layers[1].units == 4
    for got, want in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)  # both train on alike (the projection's state too)
    back.fit(X, y, epochs=1, batch_size=8, verbose=0)
    for got, want in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_saving_names_and_checks_the_blocks():
    import copy

    from fastmlp import saving
    model = _mixed()
    doc0, tensors0 = saving.sequential_state(model)
    assert "layers.0.Wp" in tensors0 and tensors0["layers.0.Wp"].shape == (5, 4)
    assert "layers.0.layers.2.alpha" in tensors0 and "layers.2.Wp" not in tensors0  # 6 -> 6: the identity
    doc = copy.deepcopy(doc0)
    doc["layers"][2]["config"]["layers"][1]["config"]["pieces"] = 0
    with pytest.raises(fastmlp.ModelFileError, match=r"model.layers\[2\].layers\[1\] \(Maxout\)"):
        saving.build_sequential(doc, dict(tensors0))
    doc = copy.deepcopy(doc0)
    doc["layers"][2]["config"]["layers"].append(copy.deepcopy(doc0["layers"][0]))
    with pytest.raises(fastmlp.ModelFileError, match="do not nest"):
        saving.build_sequential(doc, dict(tensors0))
    tensors = dict(tensors0)
    tensors["layers.0.Wp"] = np.zeros((4, 5))
    with pytest.raises(fastmlp.ModelFileError, match="layers.0.Wp"):
        saving.build_sequential(copy.deepcopy(doc0), tensors)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnx_export_matches_predict(dtype):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _mixed(dtype=dtype)
    model.compile("cross_entropy", "adam")
    X = np.random.default_rng(2).standard_normal((30, 5)).astype(dtype)
    proto = fastmlp.onnx.to_onnx(model)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Add") >= 2 + 4  # the two shortcuts, beside the biases
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"X": X})[0]
    np.testing.assert_allclose(got, model.predict(X), rtol=1e-5 if dtype == "float32" else 1e-12,
                               atol=1e-6 if dtype == "float32" else 1e-14)


def test_summary_shows_the_blocks():
    from fastmlp import _summary
    model = _mixed()
    text = _summary.summary_text(model)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if "(None," in line}
    # the block: its layers' parameters (7*5+7, 4*7+4, 4) and the 5->4 projection's 20
    assert rows["residual"][1:3] == ["(Residual)", "(None,"] and rows["residual"][-2] == "98"
    assert rows["residual_1"][-2] == f"{4 * 6 + 6 * 12 + 12 + 6 * 6 + 6}"  # no projection: 6 -> 6
    assert "  dense (Dense)" in text and "  p_re_lu (PReLU)" in text  # indented under their block
    assert "residual add of unit 0's input through a 5->4 projection + relu" in text
    assert "residual add of unit 6's input + elu" in text
    assert f"Total params: {model.count_params():,}" in text
