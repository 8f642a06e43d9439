"""Training diagnostics: what went wrong in a fit, where, and what to do about it.

``fit(..., diagnostics=True)`` gathers, inside the native loop on every
``diagnostics_every``-th step of an epoch, per layer the norm of its weight
gradient, the ratio of its update's norm to its weights' norm, the mean and
standard deviation of its output, its share of dead units (ReLU family:
exactly 0 on every sampled row of the epoch) and of saturated units
(sigmoid, tanh: derivative below 0.01 on more than half of the sampled rows).
The per-epoch arrays are in ``model.diagnostics_``. :func:`diagnose` turns
them into :class:`Finding` objects whose advice names the model's own
configuration and the cure; during the fit each new finding is also a
:class:`TrainingDynamicsWarning`, once per kind and layer.

Every threshold is a field of :class:`Thresholds`; the guide's "Training
troubles" page gives how each default was measured.
"""
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validation
from . import activations as _act
from . import initializers as _init
from ._diagstats import DEAD_ACTS, SATURATING_ACTS, Recorder
from .callbacks import Callback

__all__ = ["Finding", "Thresholds", "TrainingDynamicsWarning", "Monitor", "diagnose"]

KINDS = ("vanishing_gradient", "exploding_gradient", "dead_units", "saturation", "poor_initialization",
         "loss_not_decreasing", "non_finite")


class TrainingDynamicsWarning(UserWarning):
    """A finding of the training diagnostics (:func:`diagnose`), warned during ``fit``."""


@dataclass(frozen=True)
class Finding:
    """One thing that is wrong with a training run.

    Parameters
    ----------
    kind : str
        One of "vanishing_gradient", "exploding_gradient", "dead_units", "saturation",
        "poor_initialization", "loss_not_decreasing", "non_finite".
    layer : int or None
        The index into ``model.layers`` of the layer concerned (None for the whole model),
        where each Residual block is followed by its own layers (its first layer's index is
        the block's plus one).
    layer_name : str or None
        The layer's name in ``model.diagnostics_["layers"]``.
    epoch : int
        The first epoch (1-based, over the model's fits) of the run of epochs where it
        held; 0 for a finding at initialization, before training.
    value : float
        What was measured (at the last epoch where it held).
    threshold : float
        The :class:`Thresholds` field it was compared with.
    advice : str
        What it means for this model and what to do.
    """

    kind: str
    layer: int | None
    layer_name: str | None
    epoch: int
    value: float
    threshold: float
    advice: str


@dataclass
class Thresholds:
    """The thresholds of :func:`diagnose` (the guide's "Training troubles" gives their measurements).

    Parameters
    ----------
    vanishing_ratio : float, default=1e-3
        A layer's gradient norm below this fraction of the last layer's: vanishing gradient.
    exploding_growth : float, default=100.0
        A layer's gradient norm grown by more than this factor over its first epoch's:
        exploding gradient.
    exploding_norm : float, default=1e3
        A layer's gradient norm above this: exploding gradient.
    dead_share : float, default=0.5
        More than this share of a ReLU-family layer's units dead over an epoch: dead units.
    saturated_share : float, default=0.5
        More than this share of a sigmoid or tanh layer's units saturated: saturation.
    init_std_ratio : float, default=10.0
        At initialization, a hidden layer's output standard deviation more than this factor
        above or below the first hidden layer's: poor initialization.
    init_saturated_share : float, default=0.5
        At initialization, more than this share of a sigmoid or tanh layer's units saturated
        on the first batch: poor initialization.
    loss_patience : int, default=3
        Epochs after the first before the loss is judged.
    loss_min_decrease : float, default=0.01
        The loss, ``loss_patience`` epochs or more after the first epoch, not below
        ``(1 - loss_min_decrease)`` times the first epoch's: loss not decreasing.
    """

    vanishing_ratio: float = 1e-3
    exploding_growth: float = 100.0
    exploding_norm: float = 1e3
    dead_share: float = 0.5
    saturated_share: float = 0.5
    init_std_ratio: float = 10.0
    init_saturated_share: float = 0.5
    loss_patience: int = 3
    loss_min_decrease: float = 0.01

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "loss_patience":
                _validation.check_positive_int(value, f.name)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"Thresholds.{f.name} must be a finite number > 0, got {value!r}.")
        for name in ("dead_share", "saturated_share", "init_saturated_share", "loss_min_decrease"):
            if not getattr(self, name) < 1:
                raise ValueError(f"Thresholds.{name} is a share, in (0, 1), got {getattr(self, name)!r}.")


class Monitor(Callback):
    """A callback that turns the training diagnostics on and warns each new finding.

    ``fit(callbacks=[Monitor()])`` is ``fit(diagnostics=True)`` with this callback's
    thresholds; after every epoch :attr:`findings` holds :func:`diagnose`'s list.

    Parameters
    ----------
    thresholds : Thresholds or None
        None: the defaults.
    every : int, default=16
        Sample every this many steps of an epoch (``fit``'s ``diagnostics_every``).
    warn : bool, default=True
        Warn each new finding as a :class:`TrainingDynamicsWarning` (once per kind and layer).
    """

    def __init__(self, thresholds: "Thresholds | None" = None, every: int = 16, warn: bool = True) -> None:
        super().__init__()
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise TypeError(f"thresholds must be a fastmlp.diagnostics.Thresholds or None, got {thresholds!r}.")
        self.thresholds = thresholds
        self.every = _validation.check_positive_int(every, "every")
        self.warn = bool(warn)
        self.findings: list[Finding] = []

    def on_epoch_end(self, epoch, logs=None):
        """Refresh :attr:`findings` (the diagnostics of the epoch are recorded before this hook)."""
        self.findings = diagnose(self.model, self.thresholds)


# ------------------------------------------------------------------ the fit's side
class _FitDiagnostics:
    """What a fit with diagnostics carries: the model's recorder, the thresholds, whether to warn."""

    def __init__(self, recorder, thresholds, warn):
        self.recorder, self.thresholds, self.warn_on = recorder, thresholds, warn

    def begin(self, model, X_first):
        rec = self.recorder
        rec._start_epoch()  # nothing left over from an interrupted epoch
        if not rec.data["epoch"].shape[0] and not np.isfinite(rec.data["init_act_std"]).any():
            rec.initial_pass(model, X_first[:4096])
        self.warn(model, stacklevel=4)

    def warn(self, model, stacklevel=3):
        """Warn each finding not warned before (once per kind and layer over the model's fits)."""
        if not self.warn_on:
            return
        for f in diagnose(model, self.thresholds):
            key = (f.kind, f.layer)
            if key not in self.recorder.warned:
                self.recorder.warned.add(key)
                warnings.warn(f.advice, TrainingDynamicsWarning, stacklevel=stacklevel)


def _fit_diagnostics(model, diagnostics, every, cbs):
    """Check fit's diagnostics arguments; the fit's _FitDiagnostics, or None when off."""
    monitors = [cb for cb in cbs.callbacks if isinstance(cb, Monitor)]
    if not (isinstance(diagnostics, (bool, Thresholds)) or diagnostics in (0, 1)):
        raise TypeError(f"diagnostics must be True, False or a fastmlp.diagnostics.Thresholds, got {diagnostics!r}.")
    every = _validation.check_positive_int(every, "diagnostics_every")
    if not (diagnostics is True or diagnostics == 1 or isinstance(diagnostics, Thresholds) or monitors):
        return None
    thresholds = diagnostics if isinstance(diagnostics, Thresholds) else None
    warn = True
    if monitors:
        every = monitors[0].every if diagnostics is False else every
        thresholds = thresholds or monitors[0].thresholds
        warn = any(m.warn for m in monitors)
    rec = model.__dict__.get("_diag")
    if rec is None or rec.layout != Recorder.layout_of(model):  # new, or the model was built again
        rec = model._diag = Recorder(model, every)
    rec.every = every
    rec.thresholds = thresholds
    model.diagnostics_ = rec.data
    return _FitDiagnostics(rec, thresholds, warn)


# ------------------------------------------------------------------ the findings
def _opt_text(model):
    opt = model.optimizer
    text = f"{type(opt).__name__} lr={opt.current_lr():g}"
    if getattr(opt, "momentum", 0):
        text += f" momentum={opt.momentum:g}"
    clip = [f"clip_norm={model.clip_norm:g}" if model.clip_norm else "",
            f"clip_value={model.clip_value:g}" if getattr(model, "clip_value", None) else ""]
    clip = [c for c in clip if c]
    return text + (f" and {', '.join(clip)}" if clip else " without clipping")


def _where(name, layer):
    return f"layer {layer} ({name.split(' (', 1)[1][:-1] if ' (' in name else name})"


def _run_start(held):
    """The index where the final run of True in ``held`` starts (held[-1] is True)."""
    i = len(held) - 1
    while i > 0 and held[i - 1]:
        i -= 1
    return i


def _family(init, act):
    """The initializer family ("glorot", "he", "lecun", "zeros", or None) a layer was drawn from."""
    try:
        return _init.resolve(init, act).split("_")[0]
    except (ValueError, TypeError, AttributeError):
        return None


_EXPECTED = {**{a: "he" for a in DEAD_ACTS if a != _act.SELU}, _act.SELU: "lecun", _act.SIGMOID: "glorot",
             _act.TANH: "glorot", _act.SOFTMAX: "glorot"}
_EXPECTED_NAMES = {"he": "He (he_uniform, he_normal)", "lecun": "LeCun (lecun_normal)",
                   "glorot": "Glorot (glorot_uniform, glorot_normal)"}


def diagnose(model: Any, thresholds: "Thresholds | None" = None) -> "list[Finding]":
    """The findings of a model's training diagnostics.

    Parameters
    ----------
    model : fastmlp.Sequential
        A model fitted with ``diagnostics=True`` (or a :class:`Monitor`).
    thresholds : Thresholds or None
        None: those of the model's last fit with diagnostics, else the defaults.

    Returns
    -------
    list of Finding
        In the order of :data:`KINDS`, then of the layers.

    Raises
    ------
    ValueError
        On a model without diagnostics.
    """
    rec = getattr(model, "_diag", None) if hasattr(model, "__dict__") else None
    if rec is None:
        raise ValueError("This model has no diagnostics: fit it with diagnostics=True (or "
                         "callbacks=[fastmlp.diagnostics.Monitor()]) first.")
    if thresholds is None:
        thresholds = getattr(rec, "thresholds", None) or Thresholds()
    if not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds must be a fastmlp.diagnostics.Thresholds or None, got {thresholds!r}.")
    d, th, ents = rec.data, thresholds, rec.entries
    out: list[Finding] = []
    epochs, cfg = d["epoch"], _opt_text(model)
    g, ur = d["grad_norm"], d["update_ratio"]
    weighted = [e for e, ent in enumerate(ents) if ent.w_unit is not None]

    def add(kind, e, epoch, value, threshold, advice):
        name = ents[e].name if e is not None else None
        out.append(Finding(kind, ents[e].layer if e is not None else None, name, int(epoch), float(value),
                           float(threshold), advice))

    # vanishing: the lowest layer whose gradient norm is a tiny fraction of the last layer's
    if len(weighted) > 1 and len(epochs):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = g[:, weighted[:-1]] / g[:, [weighted[-1]]]
        for c, e in enumerate(weighted[:-1]):
            held = ratio[:, c] < th.vanishing_ratio
            if held[-1]:
                k = _run_start(held)
                sat = [x.name.split(", ")[-1][:-1] for x in ents if x.act in SATURATING_ACTS]
                why = (f" through {len(sat)} {'/'.join(sorted(set(sat)))} layers" if sat else "")
                add("vanishing_gradient", e, epochs[k], ratio[-1, c], th.vanishing_ratio,
                    f"{_where(ents[e].name, ents[e].layer)}: its gradient norm ({g[-1, e]:.3g}) is "
                    f"{ratio[-1, c]:.2g} of the last layer's since epoch {epochs[k]}{why} with {cfg}; use relu "
                    "(or leaky_relu / elu) with He initialization, add BatchNorm after the Dense layers, or use "
                    "residual connections, or a shallower net")
                break
    # exploding: growth over the first epoch, or a huge norm
    if len(epochs):
        for e in weighted:
            with np.errstate(divide="ignore", invalid="ignore"):
                growth = g[:, e] / g[0, e]
            held = (growth > th.exploding_growth) | (g[:, e] > th.exploding_norm)
            held &= np.isfinite(g[:, e])
            if held.any():
                k = int(np.argmax(held))
                big = g[k, e] > th.exploding_norm
                what = (f"its gradient norm is {g[k, e]:.3g} in epoch {epochs[k]}" if big else
                        f"its gradient norm grew {growth[k]:.3g}x from {g[0, e]:.3g} in epoch {epochs[0]} to "
                        f"{g[k, e]:.3g} in epoch {epochs[k]}")
                add("exploding_gradient", e, epochs[k], g[k, e] if big else growth[k],
                    th.exploding_norm if big else th.exploding_growth,
                    f"{_where(ents[e].name, ents[e].layer)}: {what} (update/weight ratio {ur[k, e]:.2g}) with "
                    f"{cfg}; lower the learning rate, clip the gradient (compile(clip_norm=1.0)), scale the "
                    "inputs, check the initial weights, or add BatchNorm")
                break
    # dead units
    dead = d["dead_share"]
    for e, ent in enumerate(ents):
        if not len(epochs) or not np.isfinite(dead[:, e]).any():
            continue
        held = dead[:, e] > th.dead_share
        if held[-1]:
            k = _run_start(held)
            init = _family(ent.init, _act.RELU) if ent.init is not None else None
            he = "" if init == "he" else f", and He initialization (now {init or 'none'})"
            add("dead_units", e, epochs[k], dead[-1, e], th.dead_share,
                f"{_where(ent.name, ent.layer)}: {dead[-1, e]:.0%} of units dead since epoch {epochs[k]} "
                f"with {cfg}; lower the learning rate, or use leaky_relu / elu / prelu{he}")
    # saturation
    sat = d["saturated_share"]
    for e, ent in enumerate(ents):
        if not len(epochs) or not np.isfinite(sat[:, e]).any():
            continue
        held = sat[:, e] > th.saturated_share
        if held[-1]:
            k = _run_start(held)
            init = _family(ent.init, ent.act) if ent.init is not None else None
            add("saturation", e, epochs[k], sat[-1, e], th.saturated_share,
                f"{_where(ent.name, ent.layer)}: {sat[-1, e]:.0%} of units saturated (derivative below 0.01 on "
                f"most rows) since epoch {epochs[k]} with {init or 'its'} initialization and {cfg}; scale the "
                "inputs, use Glorot initialization (smaller initial weights), add BatchNorm before the "
                "activation, or use relu with He initialization")
    # poor initialization: the initializer against the activation, then the first batch's activations
    for e, ent in enumerate(ents):
        if ent.w_unit is None or ent.kind == "residual":  # a projection is linear, whatever the block's activation
            continue
        u = model._units[ent.w_unit]
        act = u.act if u.init_act is None else u.init_act
        want, have = _EXPECTED.get(act), _family(u.init, act)
        if have == "zeros" and e != len(ents) - 1:  # zeros in a hidden layer: its units stay alike
            want = want or "glorot"
        if want is not None and have is not None and have != want:
            add("poor_initialization", e, 0, math.nan, math.nan,
                f"{_where(ent.name, ent.layer)}: {u.init} initialization for {_act.CODE_TO_NAME[act]}; use "
                f"{_EXPECTED_NAMES[want]} (kernel_initializer='auto' chooses it)")
    std = d["init_act_std"]
    hidden = [e for e in range(len(ents) - 1) if np.isfinite(std[e])]
    if len(hidden) > 1 and std[hidden[0]] > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = std[hidden] / std[hidden[0]]
        far = np.abs(np.log(np.where(r > 0, r, 1e-300)))
        c = int(np.argmax(far))
        if far[c] > math.log(th.init_std_ratio) and not any(x.kind == "poor_initialization" and
                                                                 x.layer == ents[hidden[c]].layer for x in out):
            e = hidden[c]
            trend = "collapses" if r[c] < 1 else "grows"
            add("poor_initialization", e, 0, r[c], th.init_std_ratio,
                f"{_where(ents[e].name, ents[e].layer)}: at initialization the activations' standard deviation "
                f"{trend} from {std[hidden[0]]:.3g} at layer {ents[hidden[0]].layer} to {std[e]:.3g} (x{r[c]:.2g}); "
                "initialize by activation (kernel_initializer='auto': He for the ReLU family, Glorot for "
                "tanh / sigmoid, LeCun for selu), scale the inputs, or add BatchNorm")
    isat = d["init_saturated_share"]
    for e, ent in enumerate(ents):
        if np.isfinite(isat[e]) and isat[e] > th.init_saturated_share and not any(
                x.kind == "poor_initialization" and x.layer == ent.layer for x in out):
            add("poor_initialization", e, 0, isat[e], th.init_saturated_share,
                f"{_where(ent.name, ent.layer)}: {isat[e]:.0%} of units saturated on the first batch at "
                "initialization: the initial weights are too large for its activation; use Glorot "
                "initialization (kernel_initializer='auto'), scale the inputs, or add BatchNorm")
    # the loss
    loss = d["loss"]
    p = th.loss_patience
    if len(loss) > p:
        held = ~(loss < (1.0 - th.loss_min_decrease) * loss[0])
        held[:p] = False
        if held[-1]:
            k = _run_start(held)
            add("loss_not_decreasing", None, epochs[k], loss[-1], th.loss_min_decrease,
                f"the loss went from {loss[0]:.4g} in epoch {epochs[0]} to {loss[-1]:.4g} in epoch {epochs[-1]} "
                f"with {cfg}; " + ("raise the learning rate" if model.optimizer.current_lr() < 1e-4 else
                                   "try another learning rate (a lower one if the loss rose)")
                + ", check that the inputs are scaled and the targets match the loss")
    # non-finite values
    if rec.non_finite is not None:
        e, epoch, step, where = rec.non_finite
        add("non_finite", e, epoch + 1, math.nan, math.nan,
            f"{_where(ents[e].name, ents[e].layer)}: the first NaN or infinity appeared in its {where} at epoch "
            f"{epoch + 1}, step {step + 1} with {cfg}; lower the learning rate, clip the gradient "
            "(compile(clip_norm=1.0)), or scale the inputs")
    elif len(epochs):
        stats = np.stack([g, d["act_mean"], d["act_std"]])
        bad = np.isinf(stats) | (np.isnan(stats) & _expected_finite(rec, d))
        hit = np.argwhere(bad.any(axis=0))
        if len(hit):
            k, e = (int(v) for v in hit[0])
            add("non_finite", e, epochs[k], math.nan, math.nan,
                f"{_where(ents[e].name, ents[e].layer)}: its statistics became NaN or infinite in epoch "
                f"{epochs[k]} with {cfg}; lower the learning rate, clip the gradient (compile(clip_norm=1.0)), "
                "or scale the inputs")
    order = {k: i for i, k in enumerate(KINDS)}
    out.sort(key=lambda f: (order[f.kind], -1 if f.layer is None else f.layer))
    return out


def _expected_finite(rec, d):
    """(3, E, L): where grad_norm, act_mean, act_std are measured (a NaN there is a non-finite value)."""
    E, L = d["grad_norm"].shape
    w = np.array([ent.w_unit is not None for ent in rec.entries])
    return np.stack([np.broadcast_to(w, (E, L)), np.ones((E, L), bool), np.ones((E, L), bool)])
