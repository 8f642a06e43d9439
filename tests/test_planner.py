"""The planner (fastmlp._planner): the loop variants it chooses between, its cache, its overrides, its cost.

Every forced variant trains the reference backend's weights (to rounding); a
measured fit is bit-identical to a fit with the chosen variant forced; the
decision is cached per key under FASTMLP_CACHE_DIR and reused without any
timing; a corrupt cache or one that cannot be written never breaks a fit;
FASTMLP_PLAN and ``plan=`` override it, and bad values fail before any work.
"""
import json

import numpy as np
import pytest

import fastmlp
from fastmlp import _planner
from fastmlp.layers import BatchNorm, Dense, Dropout

cy = fastmlp.get_backend("cython")
if cy.NAME != "cython":  # pragma: no cover - extension not built
    pytest.skip("the Cython backend is not built", allow_module_level=True)
from fastmlp._native import loop as LP  # noqa: E402
from fastmlp._native import policy as POL  # noqa: E402

if not LP._HAVE_LOOP_THREADS:  # pragma: no cover
    pytest.skip("the extension was built without OpenMP: its loop has one variant", allow_module_level=True)

D, N, BATCH = 128, 320, 32


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, no FASTMLP_PLAN, and threads for nets this small."""
    monkeypatch.setenv("FASTMLP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMLP_PLAN", raising=False)
    # the model's own policy would keep nets this small on one thread, where there is nothing to choose
    monkeypatch.setattr(fastmlp.model, "_BLAS_SERIAL_WORK", 0)
    return tmp_path / "cache"


@pytest.fixture
def timed(monkeypatch):
    """Every timed training call of the planner: (seconds, steps asked)."""
    calls = []
    real = _planner._run_steps

    def counting(backend, plan, loop, X, target, sw, order, n_steps):
        seconds, done = real(backend, plan, loop, X, target, sw, order, n_steps)
        calls.append((seconds, n_steps))
        return seconds, done

    monkeypatch.setattr(_planner, "_run_steps", counting)
    return calls


@pytest.fixture
def eager(monkeypatch):
    """Measure fits of any length, with any budget (the tests' fits last a fraction of a second)."""
    monkeypatch.setattr(_planner, "MIN_FIT_SECONDS", 0.0)
    monkeypatch.setattr(_planner, "BUDGET", 1e6)


def _data(dtype, n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)).astype(dtype), rng.integers(0, 5, n)


def _model(dtype="float32", backend="cython", layers=None, opt=None):
    # Dense 128->256 and 256->128 are packed on either tile set (pk_min_weights is 1024 or 32768)
    layers = layers or [Dense(256, activation="relu"), Dropout(0.1), Dense(128, activation="tanh", l2=1e-3),
                        Dense(5)]
    m = fastmlp.Sequential(layers, input_dim=D, dtype=dtype, seed=3, backend=backend, n_threads=2)
    m.compile(loss="cross_entropy", optimizer=opt or fastmlp.optim.Adam(1e-3))
    return m


def _fit(m, X, y, epochs=2, batch_size=BATCH, **kw):
    m.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0, **kw)
    return m


def _weights(m):
    return np.concatenate([w.ravel() for w in m.get_weights()])


def test_the_variants_of_a_fit():
    m32, m64 = _model("float32"), _model("float64")
    rule, valid = _planner.candidates(m32, BATCH, 2)
    assert set(valid) == {"serial", "split", "packed"} and list(valid)[0] == rule
    assert valid["packed"][0] == 2 and set(valid["packed"][1]) >= {0}
    assert valid["split"] == (2, ())
    assert valid["serial"] == (1, ())
    # float64: no packed kernels; one thread: nothing to split; batch norm: the whole batch
    assert set(_planner.candidates(m64, BATCH, 2)[1]) == {"serial", "split"}
    assert set(_planner.candidates(m32, BATCH, 1)[1]) == {"serial"}
    bn = _model(layers=[Dense(256, activation="relu"), BatchNorm(), Dense(5)])
    assert set(_planner.candidates(bn, BATCH, 2)[1]) == {"serial"}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 3e-4)])
def test_every_forced_variant_trains_the_reference_weights(dtype, rtol):
    X, y = _data(dtype)
    want = _weights(_fit(_model(dtype, backend="reference"), X, y))
    variants = ["serial", "split"] + (["packed"] if dtype == "float32" else [])
    for v in variants:
        m = _fit(_model(dtype), X, y, plan=v)
        assert m.plan_["variant"] == v and m.plan_["how"] == "forced"
        got = _weights(m)
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=v)
    # and the variants did differ in what ran: the last call was the packed (or split) loop
    assert LP._last_loop_threads() == 2
    assert LP._last_loop_packed() == (dtype == "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_measured_fit_is_the_forced_fit_of_its_choice(dtype, eager, timed):
    X, y = _data(dtype)
    measured = _fit(_model(dtype), X, y, plan="measure")
    assert measured.plan_["how"] == "measured" and timed
    assert set(measured.plan_["timings"]) <= set(measured.plan_["candidates"])
    forced = _fit(_model(dtype), X, y, plan=measured.plan_["variant"])
    np.testing.assert_array_equal(_weights(measured), _weights(forced))
    for a, b in zip(measured.optimizer.states(), forced.optimizer.states()):
        np.testing.assert_array_equal(a, b)
    assert measured.optimizer.t == forced.optimizer.t


def test_the_cache_is_written_reused_and_keyed(cache, eager, timed):
    X, y = _data("float32")
    first = _fit(_model(), X, y)
    assert first.plan_["how"] == "measured" and len(timed) > 0
    doc = json.loads((cache / _planner.CACHE_FILE).read_text())
    (entry,) = doc["entries"].values()
    assert entry["variant"] == first.plan_["variant"] and entry["key"] == first.plan_["key"]
    assert entry["key"]["batch_size"] == BATCH and entry["key"]["dtype"] == "float32"
    assert entry["key"]["cpu"] == _planner.cpu_model() and entry["key"]["threads"] == 2

    timed.clear()
    second = _fit(_model(), X, y)
    assert timed == []  # no timing at all
    assert second.plan_["how"] == "cached" and second.plan_["variant"] == first.plan_["variant"]
    np.testing.assert_array_equal(_weights(first), _weights(second))
    # what the next fit will take, and why
    path = second.loop_path()
    assert path.plan.startswith("planner: cached") and path.path == first.plan_["variant"]
    lines = []
    second.summary(print_fn=lines.append)
    assert any("[planner: cached" in line for line in lines)

    _fit(_model(), X, y, batch_size=2 * BATCH)  # another batch size: another key, measured again
    assert len(timed) > 0
    doc = json.loads((cache / _planner.CACHE_FILE).read_text())
    assert sorted(e["key"]["batch_size"] for e in doc["entries"].values()) == [BATCH, 2 * BATCH]


def test_a_corrupt_cache_is_ignored(cache, eager, timed):
    X, y = _data("float32")
    cache.mkdir()
    for junk in ("{not json", json.dumps([1, 2]), json.dumps({"version": 1, "entries": {"x": 5}}), "\xff\xfe"):
        (cache / _planner.CACHE_FILE).write_bytes(junk.encode("latin-1"))
        timed.clear()
        m = _fit(_model(), X, y)
        assert m.plan_["how"] == "measured" and timed
        doc = json.loads((cache / _planner.CACHE_FILE).read_text())  # rewritten whole
        assert len(doc["entries"]) == 1


def test_a_cache_that_cannot_be_written_does_not_break_fit(tmp_path, monkeypatch, eager):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("FASTMLP_CACHE_DIR", str(tmp_path / "a_file" / "cache"))  # mkdir fails
    X, y = _data("float32")
    m = _fit(_model(), X, y)
    assert m.plan_["how"] == "measured" and "not cached" in m.plan_["reason"]
    want = _fit(_model(), X, y, plan=m.plan_["variant"])
    np.testing.assert_array_equal(_weights(m), _weights(want))


def test_the_cache_directory_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLP_CACHE_DIR", str(tmp_path / "mine"))
    assert _planner.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FASTMLP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _planner.cache_dir() == tmp_path / "xdg" / "fastmlp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _planner.cache_dir() == tmp_path / "home" / ".cache" / "fastmlp"


def test_measure_on_a_batch_of_almost_every_row(timed):
    # "measure" times at least MIN_STEPS steps, but never past the data's rows (one full batch here)
    X, y = _data("float32", n=BATCH + 8)
    m = _fit(_model(), X, y, batch_size=BATCH, plan="measure")
    assert m.plan_["how"] == "measured" and all(k == 1 for _, k in timed)


def test_short_fits_are_left_to_the_rule(timed):
    X, y = _data("float32")
    m = _fit(_model(), X, y)  # 20 steps: nothing is timed
    assert timed == [] and m.plan_["how"] == "rule" and "too short" in m.plan_["reason"]
    assert m.plan_["code"] == 0  # the loop's own constants decide
    _, valid = _planner.candidates(m, BATCH, 2)
    assert m.plan_["variant"] == next(iter(valid))


def test_the_measurement_stays_within_its_budget(monkeypatch, timed):
    # a fit of 10 epochs of 10 steps, 'expected' to be long enough: the timed steps must stay
    # within BUDGET of its expected time (the first step's time times the fit's steps)
    monkeypatch.setattr(_planner, "MIN_FIT_SECONDS", 0.0)
    monkeypatch.setattr(_planner, "BUDGET", 0.25)
    X, y = _data("float32", n=10 * BATCH)
    m = _fit(_model(), X, y, epochs=60)  # 600 steps
    plan = m.plan_
    assert plan["fit_steps"] == 600
    assert plan["budget_s"] == pytest.approx(0.25 * plan["expected_fit_s"])
    # the fit's steps at the fastest step seen (the loop's own time: at most the calls' wall time)
    assert 0 < plan["expected_fit_s"] <= 600 * min(s / k for s, k in timed) * (1 + 1e-9)
    spent = sum(s for s, _ in timed)
    steps = sum(k for _, k in timed)
    assert steps == plan["timed_steps"] and spent <= plan["cost_s"]
    # no call starts that would overrun the budget known then: at most one overshoots, by its own
    # length (the budget shrinks as faster steps are seen: a factor 2 of slack for that)
    assert spent <= 2 * plan["budget_s"] + max(s for s, _ in timed)
    assert steps <= 0.25 * 600


def test_overrides(monkeypatch, timed):
    X, y = _data("float32")
    monkeypatch.setenv("FASTMLP_PLAN", "split")
    m = _fit(_model(), X, y)
    assert m.plan_["variant"] == "split" and m.plan_["reason"] == "forced by FASTMLP_PLAN"
    assert LP._last_loop_threads() == 2 and not LP._last_loop_packed()
    assert m.loop_path().path == "split" and "forced by FASTMLP_PLAN" in m.loop_path().plan
    m = _fit(_model(), X, y, plan="serial")  # the argument wins over the variable
    assert m.plan_["variant"] == "serial" and m.plan_["reason"] == "forced by plan="
    assert LP._last_loop_threads() == 1
    monkeypatch.setenv("FASTMLP_PLAN", "rule")
    m = _fit(_model(), X, y)
    assert m.plan_["how"] == "rule" and m.plan_["code"] == 0
    assert timed == []


def test_bad_values_fail_before_any_work(monkeypatch, timed):
    X, y = _data("float32")
    m = _model()
    m.build(D)
    before = _weights(m)
    with pytest.raises(ValueError, match=r"plan must be one of 'auto', 'measure', 'packed', 'rule', 'serial', "
                                         r"'split', got 'fast'"):
        _fit(m, X, y, plan="fast")
    monkeypatch.setenv("FASTMLP_PLAN", "SPLIT")
    with pytest.raises(ValueError, match="FASTMLP_PLAN must be one of"):
        _fit(m, X, y)
    monkeypatch.delenv("FASTMLP_PLAN")
    m64 = _model("float64")
    with pytest.raises(ValueError, match="'packed' loop variant.*float32 only"):
        _fit(m64, X.astype(np.float64), y, plan="packed")
    bn = _model(layers=[Dense(256, activation="relu"), BatchNorm(), Dense(5)])
    with pytest.raises(ValueError, match="'split' loop variant.*batch norm"):
        _fit(bn, X, y, plan="split")
    ref = _model(backend="reference")
    with pytest.raises(ValueError, match="reference backend has one loop"):
        _fit(ref, X, y, plan="packed")
    with pytest.raises(ValueError, match="plan must be one of"):
        _fit(m, X, y, plan=3)
    np.testing.assert_array_equal(_weights(m), before)
    assert m.optimizer.t == 0 and not hasattr(m, "plan_") and timed == []


def test_the_loop_honours_each_variant():
    # policy._loop_path (what loop_path() reports) against what train_steps ran
    m = _model()
    X, y = _data("float32")
    rule, valid = _planner.candidates(m, BATCH, 2)
    for v, (nt, packed) in valid.items():
        _fit(m, X, y, epochs=1, plan=v)
        assert LP._last_loop_threads() == nt, v
        assert LP._last_loop_packed() == bool(packed), v
    # the rule's bounds are what the forced variants ignore: no work bound, no row bound
    old = POL._set_packed_max_rows(0)
    try:
        assert _planner.candidates(m, BATCH, 2)[0] == "split"
        assert "packed" in _planner.candidates(m, BATCH, 2)[1]
    finally:
        POL._set_packed_max_rows(old)
