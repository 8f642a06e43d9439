"""Sequential.summary() and Sequential.loop_path(): the numbers of the table, the fused
units, the dtype / backend lines, and the loop path against the one fit really takes."""
import re

import numpy as np
import pytest

import fastmlp
from fastmlp import Activation, BatchNorm, Dense, Dropout
from fastmlp._summary import summary_lines, summary_text


def mlp(backend=None, dtype="float32", **kw):
    return fastmlp.Sequential([Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10)],
                              input_dim=784, seed=0, backend=backend, dtype=dtype, **kw)


def bn_net(backend=None, dtype="float32"):
    # Dense without bias + Activation fuse; BatchNorm, Activation and Dropout are units of their own;
    # Dropout(0) is no unit at all
    return fastmlp.Sequential([Dense(16, use_bias=False), Activation("tanh"), Dense(12, use_bias=False),
                               BatchNorm(), Activation("relu"), Dropout(0.25), Dropout(0.0), Dense(3)],
                              input_dim=7, seed=0, backend=backend, dtype=dtype)


def bn_big(backend=None, dtype="float32"):
    return fastmlp.Sequential([Dense(256, use_bias=False), BatchNorm(), Activation("relu"), Dense(10)],
                              input_dim=784, seed=0, backend=backend, dtype=dtype)


def table(text):
    """{layer name: (type, output width, param count, unit)} from the summary's table rows."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r" (\w+) \((\w+)\)\s+\(None, (\d+)\)\s+([\d,]+)\s+(\S+)$", line)
        if m:
            rows[m[1]] = (m[2], int(m[3]), int(m[4].replace(",", "")), m[5])
    return rows


def figure(text, label):
    return int(re.search(rf"^{label} params: ([\d,]+) \(", text, re.M)[1].replace(",", ""))


@pytest.mark.parametrize("make", [mlp, bn_net])
def test_param_counts_are_the_models(make):
    m = make()
    text = summary_text(m)
    rows = table(text)
    assert len(rows) == len(m.layers)
    total = figure(text, "Total")
    assert total == m.count_params() == sum(w.size for w in m.get_weights()) == sum(r[2] for r in rows.values())
    n_bn = sum(layer.__class__ is BatchNorm for layer in m.layers)
    frozen = figure(text, "Non-trainable")
    assert frozen == (2 * 12 if n_bn else 0)  # running mean and var, as Keras counts them
    assert figure(text, "Trainable") == total - frozen
    assert f"Total params: {total:,} ({total * 4 / 1024:.2f} KB)" in text


def test_table_rows_of_a_known_net():
    rows = table(summary_text(bn_net()))
    assert rows == {
        "dense": ("Dense", 16, 7 * 16, "0"),
        "activation": ("Activation", 16, 0, "0"),  # fused into the dense unit
        "dense_1": ("Dense", 12, 16 * 12, "1"),
        "batch_norm": ("BatchNorm", 12, 4 * 12, "2"),
        "activation_1": ("Activation", 12, 0, "3"),
        "dropout": ("Dropout", 12, 0, "4"),
        "dropout_1": ("Dropout", 12, 0, "-"),
        "dense_2": ("Dense", 3, 12 * 3 + 3, "5"),
    }
    assert table(summary_text(mlp()))["dense_1"] == ("Dense", 128, 256 * 128 + 128, "1")


def test_fused_units_lines():
    m = bn_net()
    m.compile("cross_entropy", "sgd")
    lines = summary_text(m).splitlines()
    start = lines.index("Fused units: 6 (each runs its layers in one pass of the native loop)")
    assert lines[start + 1:start + 7] == [
        " 0: dense 7->16 (no bias) + tanh  <- dense, activation",
        " 1: dense 16->12 (no bias)  <- dense_1",
        " 2: batch norm 12  <- batch_norm",
        " 3: relu on 12  <- activation_1",
        " 4: dropout 0.25 on 12  <- dropout",
        " 5: dense 12->3  <- dense_2; in training its softmax is fused into the cross_entropy loss",
    ]
    assert len(m._units) == 6  # the model's own plan has as many units


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backend_dtype_and_compile_lines(backend_name, dtype):
    m = mlp(backend_name, dtype)
    lines = summary_text(m).splitlines()
    assert f"dtype: {dtype}" in lines and f"backend: {backend_name}" in lines
    assert "compiled: not compiled (call compile(loss=..., optimizer=...) before fit)" in lines
    m.compile("cross_entropy", fastmlp.optim.SGD(lr=0.05), clip_norm=2.0)
    lines = summary_text(m).splitlines()
    assert "compiled: loss=cross_entropy, optimizer=SGD(lr=0.05), clip_norm=2" in lines
    size = "918.54 KB" if dtype == "float32" else "1.79 MB"  # 235146 * 4 / 1024, 235146 * 8 / 1024**2
    assert f"Total params: 235,146 ({size})" in lines
    path = m.loop_path()
    assert path.backend == backend_name
    assert lines[-2] == f"next fit (batch_size=32, n_threads=None): {path.description}"


def test_prints_each_line_and_returns_none(capsys):
    m = mlp()
    got = []
    assert m.summary(print_fn=got.append) is None
    assert got == summary_lines(m)
    assert m.summary() is None
    assert capsys.readouterr().out == summary_text(m) + "\n"
    for width in (50, 100):
        lines = summary_lines(m, line_length=width)
        head = lines[:lines.index("Fused units: 3 (each runs its layers in one pass of the native loop)")]
        assert max(map(len, head)) == width  # the rules; no row is wider
        assert lines[1] == "_" * width


def test_unbuilt_model_and_bad_arguments():
    m = fastmlp.Sequential([Dense(3)])
    for call in (m.summary, m.loop_path, lambda: summary_text(m)):
        with pytest.raises(ValueError, match=r"not yet been built.*model\.build\(input_dim\).*call fit"):
            call()
    m = mlp()
    with pytest.raises(TypeError, match="print_fn must be callable"):
        m.summary(print_fn="stdout")
    with pytest.raises(ValueError, match="line_length must be an integer > 0"):
        m.summary(line_length=0)
    with pytest.raises(ValueError, match="batch_size must be an integer > 0"):
        m.loop_path(batch_size=0)
    with pytest.raises(ValueError, match="n_threads must be an integer > 0"):
        m.summary(n_threads=-1)
    built = fastmlp.Sequential([Dense(3)]).build(5)  # build() makes it summarizable
    assert table(summary_text(built)) == {"dense": ("Dense", 3, 18, "0")}


def test_batch_size_defaults_to_the_last_fit(backend_name):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 784)), rng.integers(0, 10, 40)
    m = mlp(backend_name)
    m.compile("cross_entropy", "sgd")
    assert m.loop_path().batch_size == 32
    m.fit(X, y, batch_size=16, verbose=0)
    assert m.loop_path().batch_size == 16
    m.fit(X, y, batch_size=1000, verbose=0)  # fit caps it at the rows
    assert m.loop_path().batch_size == 40
    with pytest.raises(ValueError):
        m.fit(X, y, batch_size=8, epochs=0, verbose=0)  # a failed fit leaves it
    assert m.loop_path().batch_size == 40
    assert m.loop_path(batch_size=8).batch_size == 8


def test_reference_and_numba_paths(backend_name):
    m = mlp(backend_name)
    path = m.loop_path(batch_size=64, n_threads=2)
    if backend_name == "cython":
        return  # see test_cython_loop_path_is_the_one_fit_takes
    assert (path.loop_threads, path.packed_units, path.path, path.n_threads) == (1, (), "serial", 2)
    assert path.description.endswith("products on BLAS on 2 threads")
    small = fastmlp.Sequential([Dense(4), Dense(2)], input_dim=3, backend=backend_name, n_threads=2)
    path = small.loop_path()
    assert path.n_threads == 1 and "below BLAS's threading threshold" in path.description


# (model maker, dtype, batch size, n_threads): the split, packed and one-thread paths
_CASES = [
    (mlp, "float32", 256, 2),
    (mlp, "float64", 256, 2),
    (mlp, "float32", 64, 1),
    (mlp, "float32", 8, 2),   # 8 rows: fewer than 16 per thread
    (bn_big, "float32", 256, 2),  # batch norm: the loop does not split
]


@pytest.mark.parametrize("make,dtype,batch_size,n_threads", _CASES)
def test_cython_loop_path_is_the_one_fit_takes(make, dtype, batch_size, n_threads):
    cy = fastmlp.get_backend("cython")
    if cy.NAME != "cython":  # pragma: no cover - extension not built
        pytest.skip("the Cython backend is not built")
    from fastmlp._native import loop as LP
    from fastmlp._native import runtime as R

    old = R.get_num_threads()
    try:
        m = make("cython", dtype)
        m.compile("cross_entropy", "adam")
        d, k = m.input_dim, m._units[-1].fan_out
        rng = np.random.default_rng(1)
        X, y = rng.standard_normal((2 * batch_size, d)), rng.integers(0, k, 2 * batch_size)
        path = m.loop_path(batch_size=batch_size, n_threads=n_threads)
        m.fit(X, y, batch_size=batch_size, n_threads=n_threads, shuffle=False, verbose=0)
        assert (LP._last_loop_threads(), LP._last_loop_packed()) == (path.loop_threads, bool(path.packed_units))
        assert path.path == ("packed" if path.packed_units else "split" if path.loop_threads > 1 else "serial")
        if make is bn_big:
            assert path.loop_threads == 1 and "batch norm" in path.description
        # n_threads=None: the loop's thread bound that fit leaves in place (the last fit's here)
        again = m.loop_path(batch_size=batch_size)
        assert (again.loop_threads, again.packed_units) == (path.loop_threads, path.packed_units)
    finally:
        R.set_num_threads(old)


def test_compile_line_shows_decay_clipping_and_a_schedule():
    m = fastmlp.Sequential([Dense(4, activation="relu"), Dense(2)], input_dim=3, seed=0)
    m.compile("cross_entropy", fastmlp.optim.AdamW(lr=fastmlp.schedules.ExponentialDecay(0.1, 10, 0.5)),
              clip_norm=2.0, clip_value=0.5)
    line = next(ln for ln in summary_text(m).splitlines() if ln.startswith("compiled:"))
    assert line == ("compiled: loss=cross_entropy, optimizer=AdamW(lr=ExponentialDecay(initial=0.1, decay_steps=10.0, "
                    "decay_rate=0.5, staircase=False), weight_decay=0.01), clip_norm=2, clip_value=0.5")
