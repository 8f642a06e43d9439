"""fm.plot: the drawn data are the inputs (or the library's own activation values), log scales where
documented, ax= honoured, the figure returned, clear errors."""
import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import fastmlp as fm  # noqa: E402
from fastmlp import plot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def solid_and_dashed(ax):
    lines = ax.get_lines()
    solid = [line for line in lines if line.get_linestyle() == "-" and len(line.get_xdata()) > 2]
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    return solid, dashed


def diagnostics_dict(E=4, seed=0):
    """A dict as fit(diagnostics=True) leaves in model.diagnostics_ (the contract's keys and shapes)."""
    rng = np.random.default_rng(seed)
    layers = ["dense_0 (Dense 32, relu)", "dense_1 (Dense 32, sigmoid)", "activation_2 (Activation tanh)",
              "dense_3 (Dense 10)"]
    L = len(layers)
    grad = 10.0 ** rng.uniform(-6, 0, size=(E, L))
    grad[:, 2] = np.nan  # an Activation layer has no W
    dead = np.full((E, L), np.nan)
    dead[:, 0] = rng.uniform(0, 1, E)
    sat = np.full((E, L), np.nan)
    sat[:, 1] = rng.uniform(0, 1, E)
    sat[:, 2] = rng.uniform(0, 1, E)
    return {"layers": layers, "layer_index": np.arange(L), "epoch": np.arange(1, E + 1),
            "grad_norm": grad, "update_ratio": grad * 1e-2, "act_mean": rng.normal(size=(E, L)),
            "act_std": rng.uniform(size=(E, L)), "dead_share": dead, "saturated_share": sat,
            "first_last_ratio": grad[:, 0] / grad[:, 3], "loss": np.linspace(2, 1, E)}


# ------------------------------------------------------------------ activations
def test_activations_draws_the_library_values():
    z = np.linspace(-3, 3, 61)
    names = ["sigmoid", "relu", "leaky_relu", "elu", "selu", "step", "prelu", "tanh", "logistic"]
    fig = plot.activations(names, z=z)
    assert isinstance(fig, Figure)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == names
    sig = 1 / (1 + np.exp(-z))
    a, s = fm.activations.SELU_ALPHA, fm.activations.SELU_SCALE
    expected = {
        "sigmoid": (sig, sig * (1 - sig)),
        "logistic": (sig, sig * (1 - sig)),
        "relu": (np.maximum(z, 0), (z > 0).astype(float)),
        "leaky_relu": (np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1, 0.01)),
        "elu": (np.where(z > 0, z, np.expm1(z)), np.where(z > 0, 1, np.exp(z))),
        "selu": (s * np.where(z > 0, z, a * np.expm1(z)), s * np.where(z > 0, 1, a * np.exp(z))),
        "step": ((z > 0).astype(float), np.zeros_like(z)),
        "prelu": (np.where(z > 0, z, 0.25 * z), np.where(z > 0, 1, 0.25)),
        "tanh": (np.tanh(z), 1 - np.tanh(z) ** 2),
    }
    for ax, name in zip(axes, names):
        (f,), (df,) = solid_and_dashed(ax)
        np.testing.assert_array_equal(f.get_xdata(), z)
        np.testing.assert_allclose(f.get_ydata(), expected[name][0], rtol=1e-12, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(df.get_ydata(), expected[name][1], rtol=1e-12, atol=1e-15, err_msg=name)


def test_activations_default_is_every_elementwise_one():
    assert "softmax" not in plot.ELEMENTWISE and "log_softmax" not in plot.ELEMENTWISE
    assert set(plot.ELEMENTWISE) == {n for n, (c, _, _) in fm.activations.ACTIVATIONS.items()
                                     if c not in fm.activations.ROWWISE} | {"prelu"}
    fig = plot.activations()
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles == list(plot.ELEMENTWISE)


def test_activations_into_given_axes():
    fig, ax = plt.subplots()
    out = plot.activations(["relu", "tanh"], ax=ax)
    assert out is fig and len(fig.axes) == 1
    solid, dashed = solid_and_dashed(ax)
    assert len(solid) == 2 and len(dashed) == 2
    fig2, axes = plt.subplots(1, 2)
    assert plot.activations(["relu", "tanh"], ax=axes) is fig2
    assert [a.get_title() for a in axes] == ["relu", "tanh"]


@pytest.mark.parametrize("names", [["softmax"], ["relu", "log_softmax"], ["no_such"], []])
def test_activations_bad_names(names):
    n_before = len(plt.get_fignums())
    with pytest.raises(ValueError, match="softmax|Unknown activation|empty"):
        plot.activations(names)
    assert len(plt.get_fignums()) == n_before  # checked before any figure is made


# ------------------------------------------------------------------ history
def test_history_draws_loss_and_accuracy_with_val():
    logs = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.5, 0.7, 0.8],
            "val_accuracy": [0.45, 0.6, 0.7], "time": [0.1, 0.1, 0.1]}
    fig = plot.history(logs)
    loss_ax, acc_ax = fig.axes
    by_label = {line.get_label(): line for a in fig.axes for line in a.get_lines()}
    assert set(by_label) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    for key in by_label:
        np.testing.assert_array_equal(by_label[key].get_ydata(), logs[key])
        np.testing.assert_array_equal(by_label[key].get_xdata(), [1, 2, 3])
    assert by_label["val_loss"] in loss_ax.get_lines() and by_label["accuracy"] in acc_ax.get_lines()
    assert by_label["val_loss"].get_linestyle() == "--"


def test_history_from_a_fit():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    model = fm.Sequential([fm.Dense(16, activation="relu"), fm.Dense(10)], seed=0, backend="reference")
    model.compile(loss="cross_entropy", optimizer="adam")
    hist = model.fit(X[:300] / 16, y[:300], epochs=3, batch_size=64, verbose=0, validation_split=0.2)
    fig, ax = plt.subplots()
    assert plot.history(hist, ax=ax) is fig
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    np.testing.assert_array_equal(lines["loss"].get_ydata(), hist.history["loss"])
    np.testing.assert_array_equal(lines["val_accuracy"].get_ydata(), hist.history["val_accuracy"])
    hist2 = model.fit(X[:300] / 16, y[:300], epochs=5, initial_epoch=3, batch_size=64, verbose=0)
    (line,) = [ln for ln in plot.history(hist2, metrics=["loss"]).axes[0].get_lines()]
    np.testing.assert_array_equal(line.get_xdata(), [4, 5])  # the epochs trained, 1-based


def test_history_errors():
    with pytest.raises(ValueError, match="no epochs"):
        plot.history({})
    with pytest.raises(ValueError, match="no \\['accuracy'\\]"):
        plot.history({"loss": [1.0]}, metrics=["accuracy"])
    with pytest.raises(TypeError, match="History"):
        plot.history([1.0, 2.0])
    with pytest.raises(ValueError, match="sequence of 2 Axes"):
        plot.history({"loss": [1.0], "accuracy": [0.5]}, ax=[plt.subplots()[1]])


# ------------------------------------------------------------------ diagnostics
def test_gradient_flow_lines_are_grad_norm_columns_on_log_scale():
    diag = diagnostics_dict()
    fig = plot.gradient_flow(diag)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == [diag["layers"][j] for j in (0, 1, 3)]  # the NaN column skipped
    for line, j in zip(lines, (0, 1, 3)):
        np.testing.assert_array_equal(line.get_xdata(), diag["epoch"])
        np.testing.assert_array_equal(line.get_ydata(), diag["grad_norm"][:, j])


def test_gradient_flow_into_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    assert plot.gradient_flow(diagnostics_dict(), ax=right) is fig
    assert right.get_yscale() == "log" and len(right.get_lines()) == 3 and not left.get_lines()


class FakeModel:
    def __init__(self, diag):
        self.diagnostics_ = diag


class FakeHistory:
    def __init__(self, diag):
        self.history = {"loss": list(diag["loss"])}
        self.diagnostics = diag


def test_dead_units_panels_hold_the_shares():
    diag = diagnostics_dict()
    for source in (diag, FakeModel(diag), FakeHistory(diag)):
        fig = plot.dead_units(source)
        dead_ax, sat_ax = fig.axes
        (dead,) = dead_ax.get_lines()
        assert dead.get_label() == diag["layers"][0]
        np.testing.assert_array_equal(dead.get_ydata(), diag["dead_share"][:, 0])
        sat = sat_ax.get_lines()
        assert [line.get_label() for line in sat] == diag["layers"][1:3]
        np.testing.assert_array_equal(sat[0].get_ydata(), diag["saturated_share"][:, 1])
        np.testing.assert_array_equal(sat[1].get_ydata(), diag["saturated_share"][:, 2])
        plt.close(fig)


def test_dead_units_single_axes_and_empty_panel():
    diag = diagnostics_dict()
    fig, ax = plt.subplots()
    assert plot.dead_units(diag, ax=ax) is fig
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [diag["layers"][0], diag["layers"][1] + " (saturated)", diag["layers"][2] + " (saturated)"]
    diag["saturated_share"][:] = np.nan  # a ReLU-only net: the saturated panel says why it is empty
    fig = plot.dead_units(diag)
    assert not fig.axes[1].get_lines()
    assert "no sigmoid / tanh layer" in [t.get_text() for t in fig.axes[1].texts]


def test_diagnostics_plots_need_diagnostics():
    model = fm.Sequential([fm.Dense(4, activation="relu"), fm.Dense(2)], input_dim=3, seed=0, backend="reference")
    model.compile(loss="cross_entropy", optimizer="sgd")
    model.fit(np.zeros((8, 3)), np.zeros(8, dtype=int), epochs=1, verbose=0)
    for fn in (plot.gradient_flow, plot.dead_units):
        with pytest.raises(ValueError, match=r"diagnostics=True"):
            fn(model)
        with pytest.raises(ValueError, match=r"diagnostics=True"):
            fn({"loss": [1.0]})
        with pytest.raises(ValueError, match=r"No epoch"):
            fn({**diagnostics_dict(), "epoch": np.zeros(0, dtype=int)})


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import matplotlib.pyplot -> ImportError
    with pytest.raises(ImportError, match=r"pip install fastmlp\[plot\]"):
        plot.history({"loss": [1.0, 0.5]})


def test_fm_plot_is_the_module():
    assert fm.plot is plot


@pytest.mark.parametrize("backend", ["reference", "numba", "cython"])
def test_diagnostics_plots_of_a_real_fit(backend):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    model = fm.Sequential([fm.Dense(32, activation="relu"), fm.Dense(32, activation="tanh"), fm.Dense(10)],
                          seed=0, backend=backend)
    model.compile(loss="cross_entropy", optimizer="adam")
    hist = model.fit(X[:400] / 16, y[:400], epochs=3, batch_size=32, verbose=0, diagnostics=True,
                     diagnostics_every=2)
    diag = model.diagnostics_
    fig = plot.gradient_flow(model)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == diag["layers"]  # every layer here has a W
    for j, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(line.get_ydata(), diag["grad_norm"][:, j])
    fig = plot.dead_units(hist)  # the History carries the same dict
    (dead,), (sat,) = fig.axes[0].get_lines(), fig.axes[1].get_lines()
    np.testing.assert_array_equal(dead.get_ydata(), diag["dead_share"][:, 0])
    np.testing.assert_array_equal(sat.get_ydata(), diag["saturated_share"][:, 1])
