"""Plots of activations, training histories and training diagnostics (``fm.plot``).

Every function draws with matplotlib (the optional extra ``plot``: ``pip install fastmlp[plot]``),
returns the :class:`matplotlib.figure.Figure` it drew in, and takes ``ax=``: a
:class:`matplotlib.axes.Axes` to draw into instead of a new figure (then its figure is returned).
A function that draws several panels by default also accepts a sequence of as many Axes, one per
panel; given a single Axes it draws every curve into that one.

matplotlib is imported on the first call, not with this module.

Functions
---------
activations
    Each activation and its derivative, as the library computes them.
history
    Loss and accuracy per epoch (and their ``val_`` twins) from ``fit``'s History.
gradient_flow
    The weight gradient's norm per layer over epochs (``diagnostics_["grad_norm"]``), log scale.
dead_units
    The share of dead and of saturated units per layer over epochs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import activations as _act

__all__ = ["activations", "history", "gradient_flow", "dead_units", "ELEMENTWISE", "PRELU_ALPHA"]

# The activations drawn by default: every element-wise one of the table, then PReLU (a layer,
# fm.PReLU, drawn with its initial alpha). softmax and log_softmax are row-wise and maxout takes
# the maximum over several inputs: none of them is a function of one number, so none is drawn.
ELEMENTWISE = tuple(name for name, (code, _, _) in _act.ACTIVATIONS.items() if code not in _act.ROWWISE) + ("prelu",)
PRELU_ALPHA = 0.25  # fm.PReLU's default init

_NO_DIAGNOSTICS = ("{what} has no diagnostics: fit the model with fit(..., diagnostics=True) "
                   "(or MLPClassifier / MLPRegressor(diagnostics=True)) first.")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # the optional extra
        raise ImportError("fastmlp.plot needs matplotlib: pip install fastmlp[plot] "
                          "(or pip install matplotlib).") from exc
    return plt


def _panels(ax, n, figsize):
    """The figure and ``n`` Axes to draw the panels into: new ones, the given sequence of ``n``, or the
    given single Axes ``n`` times (every panel's curves in one Axes)."""
    if ax is None:
        plt = _pyplot()
        fig, axes = plt.subplots(1, n, figsize=figsize, squeeze=False)
        return fig, list(axes.ravel())
    if hasattr(ax, "plot"):
        return ax.figure, [ax] * n
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n or not all(hasattr(a, "plot") for a in axes):
        raise ValueError(f"ax must be a matplotlib Axes or a sequence of {n} Axes (one per panel), got {ax!r}.")
    return axes[0].figure, axes


def _activation_curves(name, z):
    """``(f(z), f'(z))`` from the reference backend's kernels, the specification the native ones match."""
    from .backends import reference

    Z = z.reshape(-1, 1)
    A, dZ = np.empty_like(Z), np.empty_like(Z)
    if name == "prelu":
        alpha = np.full(1, PRELU_ALPHA, dtype=Z.dtype)
        reference._prelu_forward(Z, alpha, A)
        reference._prelu_backward(Z, alpha, np.ones_like(Z), np.empty(1), dZ)
        return A.ravel(), dZ.ravel()
    key, code, alpha = _act.resolve(name)
    if code in _act.ROWWISE:
        raise ValueError(f"{key} is row-wise, not element-wise: it has no curve to draw. "
                         f"Element-wise activations: {', '.join(sorted(ELEMENTWISE))}.")
    reference.act_forward(Z, code, alpha, A)
    if code == _act.STEP:
        dZ[...] = 0.0  # no trainable derivative (act_backward refuses it): 0 wherever it exists
    else:
        reference.act_backward(Z, A, np.ones_like(Z), code, alpha, dZ)
    return A.ravel(), dZ.ravel()


def activations(names=None, ax=None, z=None) -> Any:
    """Draw each activation ``f(z)`` (solid) and its derivative ``f'(z)`` (dashed).

    The values are those the library trains with: the reference backend's ``act_forward`` and
    ``act_backward`` (which the native backends match to rounding), PReLU's with alpha 0.25
    (:class:`fastmlp.PReLU`'s initial value). ``step`` has no trainable derivative: it is drawn as
    0. Row-wise activations (softmax, log_softmax) and Maxout are not functions of one number and
    are not drawn.

    Parameters
    ----------
    names : sequence of str, optional
        Activation names (or aliases) of :data:`fastmlp.activations.ACTIVATIONS`, and "prelu".
        Default: :data:`ELEMENTWISE`, every element-wise one.
    ax : matplotlib Axes or sequence of Axes, optional
        One Axes: every curve in it. A sequence: one Axes per name. Default: a new figure with a
        grid of panels, one per name.
    z : array-like of shape (n_points,), optional
        Where to evaluate. Default: 401 points on [-4, 4].

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For an unknown or row-wise name (before anything is drawn).
    """
    names = list(ELEMENTWISE if names is None else ([names] if isinstance(names, str) else names))
    if not names:
        raise ValueError("names is empty: give at least one activation name.")
    z = np.linspace(-4.0, 4.0, 401) if z is None else np.asarray(z, dtype=np.float64).ravel()
    curves = [(name, *_activation_curves(name, z)) for name in names]  # every name checked first
    if ax is None:
        plt = _pyplot()
        cols = min(4, len(names))
        rows = -(-len(names) // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), sharex=True, squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[len(names):]:
            extra.set_visible(False)
        axes = axes[:len(names)]
    else:
        fig, axes = _panels(ax, len(names), None)
    single = len(set(map(id, axes))) == 1 and len(names) > 1
    for a, (name, f, df) in zip(axes, curves):
        (line,) = a.plot(z, f, label=f"{name}" if single else "f(z)")
        a.plot(z, df, "--", color=line.get_color() if single else "C1", label=f"{name}'" if single else "f'(z)")
        if not single:
            a.set_title(name)
            a.axhline(0.0, color="0.8", lw=0.5)
    axes[0].legend(fontsize=7)
    if ax is None:
        fig.tight_layout()
    return fig


def history(history, ax=None, metrics=None) -> Any:
    """Draw loss and accuracy per epoch, with their validation twins (dashed) when present.

    Parameters
    ----------
    history : fastmlp.History or dict of str to sequence of float
        What ``fit`` returns, or its ``history.history`` dict (e.g. ``{"loss": [...],
        "val_loss": [...], "accuracy": [...]}``).
    ax : matplotlib Axes or sequence of Axes, optional
        One Axes: every curve in it. A sequence: one Axes per panel. Default: a new figure with a
        panel per metric (loss, then accuracy when recorded).
    metrics : sequence of str, optional
        The panels' metrics (each drawn with its ``val_`` twin when recorded). Default: "loss" and,
        when recorded, "accuracy".

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the history holds no epochs, or a requested metric was not recorded.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(f"history must be a fastmlp.History or its dict of per-epoch lists, got {type(history).__name__}.")
    if metrics is None:
        metrics = [m for m in ("loss", "accuracy") if m in logs]
        if not metrics:
            metrics = [k for k in logs if not k.startswith("val_") and k not in ("time", "learning_rate")][:1]
    metrics = list(metrics)
    missing = [m for m in metrics if m not in logs]
    if logs and missing:
        raise ValueError(f"history has no {missing}; recorded: {sorted(logs)}.")
    if not metrics or not any(len(logs.get(m, ())) for m in metrics):
        raise ValueError(f"history holds no epochs to draw (keys: {sorted(logs)}); fit the model first.")
    n = len(logs[metrics[0]])
    epochs = getattr(history, "epoch", None)
    x = np.asarray(epochs, dtype=float) + 1.0 if epochs is not None and len(epochs) == n else np.arange(1.0, n + 1)
    fig, axes = _panels(ax, len(metrics), (4.5 * len(metrics), 3.2))
    for a, metric in zip(axes, metrics):
        for key, style in ((metric, "-"), ("val_" + metric, "--")):
            if key in logs:
                values = np.asarray(logs[key], dtype=float)
                a.plot(x[:len(values)], values, style, marker="o", ms=3, label=key)
        a.set_xlabel("epoch")
        _integer_epochs(a)
        if len(set(map(id, axes))) > 1:
            a.set_ylabel(metric)
        a.legend(fontsize=8)
    if ax is None:
        fig.tight_layout()
    return fig


def _diagnostics(source):
    """The diagnostics dict of a model, an estimator, a History, or the dict itself."""
    if isinstance(source, dict):
        diag = source
    else:
        diag = getattr(source, "diagnostics_", None)
        if diag is None:
            diag = getattr(source, "diagnostics", None)
            if callable(diag):  # not a History: a model's method of that name
                diag = None
    if not isinstance(diag, dict) or "epoch" not in diag:
        raise ValueError(_NO_DIAGNOSTICS.format(what=type(source).__name__))
    if len(diag["epoch"]) == 0:
        raise ValueError(_NO_DIAGNOSTICS.format(what=type(source).__name__) + " (No epoch was recorded.)")
    return diag


def _integer_epochs(a):
    from matplotlib.ticker import MaxNLocator

    a.xaxis.set_major_locator(MaxNLocator(integer=True))


def _layer_lines(a, diag, key, style="-", suffix=""):
    """One line per layer of ``diag[key]`` (E, L) that has a value; returns how many were drawn."""
    _integer_epochs(a)
    from matplotlib import colormaps

    values = np.asarray(diag[key], dtype=float)
    epochs = np.asarray(diag["epoch"], dtype=float)
    # the layers the statistic applies to (an all-NaN column: a layer without W, or another activation)
    shown = [j for j in range(len(diag["layers"])) if not np.all(np.isnan(values[:, j]))]
    colors = colormaps["viridis"]  # by depth: the first layer dark, the last one light
    for k, j in enumerate(shown):
        a.plot(epochs, values[:, j], style, marker="o", ms=3, label=diag["layers"][j] + suffix,
               color=colors(0.9 * k / max(len(shown) - 1, 1)))
    return len(shown)


def gradient_flow(model, ax=None) -> Any:
    """Draw each layer's weight-gradient norm over the epochs (``diagnostics_["grad_norm"]``), log scale.

    A first layer whose line sits orders of magnitude below the last one's is a vanishing gradient;
    lines climbing by orders of magnitude are an exploding one (see ``model.diagnose()``).

    Parameters
    ----------
    model : fastmlp.Sequential, estimator, fastmlp.History or dict
        Fitted with ``diagnostics=True``; or its ``diagnostics_`` dict.
    ax : matplotlib Axes, optional
        Draw into it. Default: a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the model has no diagnostics (fit it with ``diagnostics=True``).
    """
    diag = _diagnostics(model)
    fig, (a,) = _panels(ax, 1, (6.0, 3.6))
    if _layer_lines(a, diag, "grad_norm") == 0:
        a.text(0.5, 0.5, "no layer with weights", ha="center", va="center", transform=a.transAxes)
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("gradient norm of W")
    a.set_title("gradient flow")
    a.legend(fontsize=7)
    if ax is None:
        fig.tight_layout()
    return fig


def dead_units(model, ax=None) -> Any:
    """Draw the share of dead units (ReLU family: output 0 on every sampled row of the epoch) and of
    saturated units (sigmoid / tanh: derivative below 1e-2 on most sampled rows) per layer and epoch.

    Parameters
    ----------
    model : fastmlp.Sequential, estimator, fastmlp.History or dict
        Fitted with ``diagnostics=True``; or its ``diagnostics_`` dict.
    ax : matplotlib Axes or sequence of two Axes, optional
        One Axes: both statistics in it (saturated dashed). Two: dead shares, then saturated
        shares. Default: a new figure with the two panels.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the model has no diagnostics (fit it with ``diagnostics=True``).
    """
    diag = _diagnostics(model)
    fig, axes = _panels(ax, 2, (9.0, 3.4))
    single = axes[0] is axes[1]
    panels = (("dead_share", "-", "dead units", "no ReLU-family layer"),
              ("saturated_share", "--" if single else "-", "saturated units", "no sigmoid / tanh layer"))
    drawn = 0
    for a, (key, style, title, empty) in zip(axes, panels):
        n = _layer_lines(a, diag, key, style, " (saturated)" if single and key == "saturated_share" else "")
        drawn += n
        if not single:
            a.set_title(title)
            if n == 0:
                a.text(0.5, 0.5, empty, ha="center", va="center", transform=a.transAxes)
        a.set_ylim(-0.02, 1.02)
        a.set_xlabel("epoch")
        a.set_ylabel("share of the layer's units")
        if n:
            a.legend(fontsize=7)
    if single and drawn == 0:
        axes[0].text(0.5, 0.5, "no ReLU-family or sigmoid / tanh layer", ha="center", va="center",
                     transform=axes[0].transAxes)
    if ax is None:
        fig.tight_layout()
    return fig
