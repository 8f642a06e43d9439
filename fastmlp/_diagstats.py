"""The statistics of ``fit(diagnostics=True)``: the loop's per-step sums into per-epoch arrays.

The training loops (every backend, ``reference.train_steps`` is the
specification) write, on every ``diagnostics_every``-th step of an epoch
(its first step always), per dense unit and loop thread the sums of squares
of dW, of the update of W and of W, and per feature of every unit's output
the sum, the sum of squares, the rows where it is not 0 and the rows where a
sigmoid's or tanh's derivative is below ``plan.DIAG_SATURATED``
(:meth:`fastmlp._native.plan.LoopState.diagnose_steps`). :class:`Recorder`
adds them up per epoch and keeps the model's ``diagnostics_`` dict; the
findings are :mod:`fastmlp.diagnostics`'.
"""
import math

import numpy as np

from . import activations as _act
from ._native import plan as _plan
from .layers import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU, Residual

# Output activations whose units can die (exactly 0) or saturate (derivative near 0).
DEAD_ACTS = frozenset({_act.RELU, _act.LEAKY_RELU, _act.ELU, _act.SELU})
SATURATING_ACTS = frozenset({_act.SIGMOID, _act.TANH})
_TYPE_NAMES = {Dense: "dense", Activation: "activation", BatchNorm: "batch_norm", Dropout: "dropout",
               PReLU: "prelu", Maxout: "maxout", Residual: "residual"}
PER_EPOCH = ("grad_norm", "update_ratio", "act_mean", "act_std", "dead_share", "saturated_share")


class Entry:
    """One diagnosed layer: the unit holding its W (or None), the unit whose output is its output."""

    __slots__ = ("layer", "name", "w_unit", "a_unit", "act", "kind", "width", "init")

    def __init__(self, layer, name, w_unit, a_unit, act, kind, width, init):
        self.layer, self.name, self.w_unit, self.a_unit = layer, name, w_unit, a_unit
        self.act, self.kind, self.width, self.init = act, kind, width, init


def entries(model):
    """The diagnosed layers of a built model: those with parameters or an activation."""
    groups = {}
    for i, u in enumerate(model._units):
        groups.setdefault(u.layers[0], []).append(i)
    counts, out = {}, []
    for j, (layer, _) in enumerate(model._flat_layers()):  # the units' layer indices count a block's own layers
        base = _TYPE_NAMES[type(layer)]
        k = counts[base] = counts.get(base, -1) + 1
        units = groups.get(j)
        if units is None or isinstance(layer, Dropout):
            continue
        last = model._units[units[-1]]
        dense = [i for i in units if model._units[i].dense]
        act = model._train_acts[units[-1]]
        kind = "prelu" if last.prelu else "maxout" if last.pieces else "batch_norm" if last.bn else "dense"
        if not dense and not last.bn and not last.prelu and last.act == _act.IDENTITY:
            continue  # a linear Activation: nothing to diagnose
        shown = _act.CODE_TO_NAME[last.act]
        typ = type(layer).__name__
        if isinstance(layer, Maxout):
            label = f"{typ} {layer.units}, pieces {layer.pieces}"
        elif isinstance(layer, Residual):
            label = f"{typ} {last.fan_out}, {shown}"
            kind = "residual"
        elif isinstance(layer, Dense):
            label = f"{typ} {layer.units}, {shown}"
        elif isinstance(layer, Activation):
            label = f"{typ}, {shown}"
            kind = "activation"
        else:
            label = f"{typ} {last.fan_out}"
        w = dense[0] if dense and not isinstance(layer, Residual) else None  # the loop gathers no Wp sums
        init = model._units[w].init if w is not None else None
        out.append(Entry(j, f"{base}_{k} ({label})", w, units[-1], act, kind,
                         last.fan_out, init))
    return out


class Recorder:
    """A model's diagnostics: per-epoch arrays from the loop's sampled steps (``diagnostics_``)."""

    def __init__(self, model, every):
        self.every = int(every)
        self.layout = self.layout_of(model)
        self.entries = entries(model)
        widths = [u.fan_out for u in model._units]
        self.feat_off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.data = {"layers": [e.name for e in self.entries],
                     "layer_index": np.array([e.layer for e in self.entries], dtype=np.int64),
                     "epoch": np.zeros(0, dtype=np.int64)}
        L = len(self.entries)
        for key in PER_EPOCH:
            self.data[key] = np.zeros((0, L))
        self.data["first_last_ratio"] = np.zeros(0)
        self.data["loss"] = np.zeros(0)
        self.data["init_act_std"] = np.full(L, math.nan)
        self.data["init_saturated_share"] = np.full(L, math.nan)
        self._rows = {key: [] for key in (*PER_EPOCH, "first_last_ratio", "loss", "epoch")}
        self.non_finite = None  # (entry index, epoch, step, where) of a divergence
        self.warned = set()
        self._start_epoch()

    @staticmethod
    def layout_of(model):
        """What the recorder's arrays depend on: the units' kinds and widths."""
        return tuple((u.dense, u.bn, u.prelu, u.pieces, u.fan_in, u.fan_out) for u in model._units)

    def _start_epoch(self):
        L = len(self.entries)
        self._g = np.zeros(L)
        self._r = np.zeros(L)
        self._n = 0
        self._f = np.zeros((int(self.feat_off[-1]), 4))
        self._rows_seen = 0

    def add(self, loop, done, rows):
        """The sampled steps of a call that completed ``done`` steps of ``rows`` rows."""
        steps = _plan.diag_steps(done, loop.diag_every, loop.diag_phase)
        n = len(steps)
        if n == 0:
            return
        u = loop.diag_units[:n].sum(axis=1)  # (n, n_units, 3): the threads' shares added
        with np.errstate(divide="ignore", invalid="ignore"):
            for e, ent in enumerate(self.entries):
                if ent.w_unit is not None:
                    g2, d2, w2 = u[:, ent.w_unit, 0], u[:, ent.w_unit, 1], u[:, ent.w_unit, 2]
                    self._g[e] += np.sqrt(g2).sum()
                    self._r[e] += np.where(w2 > 0, np.sqrt(d2) / np.sqrt(w2), math.nan).sum()
        self._n += n
        self._f += loop.diag_feats[:n].sum(axis=0)
        self._rows_seen += n * rows

    def end_epoch(self, epoch, loss):
        """Close an epoch (1-based ``epoch`` of the model's training) with its training loss."""
        L, n, f, rows = len(self.entries), self._n, self._f, self._rows_seen
        vals = {key: np.full(L, math.nan) for key in PER_EPOCH}
        with np.errstate(divide="ignore", invalid="ignore"):
            for e, ent in enumerate(self.entries):
                if n == 0:
                    break
                if ent.w_unit is not None:
                    vals["grad_norm"][e] = self._g[e] / n
                    vals["update_ratio"][e] = self._r[e] / n
                a, b = self.feat_off[ent.a_unit], self.feat_off[ent.a_unit + 1]
                fe = f[a:b]
                count = rows * (b - a)
                mean = fe[:, 0].sum() / count
                vals["act_mean"][e] = mean
                vals["act_std"][e] = math.sqrt(max(fe[:, 1].sum() / count - mean * mean, 0.0)) \
                    if math.isfinite(mean) else math.nan
                if ent.act in DEAD_ACTS or ent.kind == "prelu":
                    vals["dead_share"][e] = float(np.mean(fe[:, 2] == 0))
                if ent.act in SATURATING_ACTS:
                    vals["saturated_share"][e] = float(np.mean(fe[:, 3] > 0.5 * rows))
        for key in PER_EPOCH:
            self._rows[key].append(vals[key])
        g = vals["grad_norm"][[e for e, ent in enumerate(self.entries) if ent.w_unit is not None]]
        with np.errstate(divide="ignore", invalid="ignore"):
            self._rows["first_last_ratio"].append(float(g[0] / g[-1]) if len(g) else math.nan)
        self._rows["loss"].append(float(loss))
        self._rows["epoch"].append(int(epoch))
        self._publish()
        self._start_epoch()

    def _publish(self):
        d = self.data
        for key in PER_EPOCH:
            d[key] = np.array(self._rows[key], dtype=np.float64).reshape(-1, len(self.entries))
        d["first_last_ratio"] = np.array(self._rows["first_last_ratio"], dtype=np.float64)
        d["loss"] = np.array(self._rows["loss"], dtype=np.float64)
        d["epoch"] = np.array(self._rows["epoch"], dtype=np.int64)

    # ------------------------------------------------------- before training
    def initial_pass(self, model, X):
        """The activations of a training forward pass on the first batch at initialization (batch
        norm on the batch's statistics, no dropout), on a copy of the parameters with the
        reference backend: per layer the standard deviation of its output and its share of
        saturated units (init_act_std, init_saturated_share)."""
        from .backends import reference as ref
        rec = model._records(model._train_acts, X.shape[0], dropout=False)
        p = _plan.Plan(rec, model._params.copy(), model._grads.copy(), X.shape[0], training=True)
        p.x[...] = X
        with np.errstate(all="ignore"):
            ref.forward_units(ref, p, training=True)
            for e, ent in enumerate(self.entries):
                a = p.A[ent.a_unit].astype(np.float64)
                self.data["init_act_std"][e] = float(a.std())
                if ent.act in SATURATING_ACTS:
                    d = a * (1.0 - a) if ent.act == _act.SIGMOID else 1.0 - a * a
                    self.data["init_saturated_share"][e] = float(np.mean(
                        (d < _plan.DIAG_SATURATED).sum(axis=0) > 0.5 * a.shape[0]))

    # ------------------------------------------------------------ divergence
    def locate_non_finite(self, plan, seed, t, X, target, sw, order, start, epoch, step):
        """The first layer where a NaN or infinity appears in the step that diverged: its forward
        pass, then its loss and backward pass, recomputed with the reference backend on a copy
        of the parameters (the model is not touched)."""
        from .backends import reference as ref
        p = _plan.Plan(plan.units, plan.params.copy(), plan.grads.copy(), plan.rows, plan.loss, training=True,
                       weighted=plan.sw.shape[0] > 0)
        idx = order[start:start + plan.rows]
        p.x[...] = X[idx]
        if target.ndim == 1:
            p.y[...] = target[idx]
        else:
            p.Y[...] = target[idx]
        if sw.shape[0]:
            p.sw[...] = sw[idx]
        for i, u in enumerate(p.units):
            if u["kind"] == _plan.Unit.DROPOUT:
                ref.dropout_mask(seed, t, i, u["rate"], p.M[i])
        unit, where = None, "loss"
        with np.errstate(all="ignore"):
            ref.forward_units(ref, p, training=True)
            for i in range(p.n_units):
                if not (np.isfinite(p.Z[i]).all() and np.isfinite(p.A[i]).all()):
                    unit, where = i, "output"
                    break
            if unit is None:
                ref.loss_and_grads(ref, p, p.y, p.Y, p.sw, training=True)
                for i in range(p.n_units - 1, -1, -1):
                    if not np.isfinite(p.dA[i]).all():
                        unit, where = i, "gradient"
                        break
        self._record_non_finite(p.n_units - 1 if unit is None else unit, where, epoch, step)

    def locate_non_finite_params(self, model, epoch, step):
        """The first layer whose parameters are not finite after an epoch whose losses were."""
        for i, u in enumerate(model._units):
            block = model._params[u.w_off:u.w_off + u.n_params]
            if not np.isfinite(block).all():
                self._record_non_finite(i, "weights", epoch, step)
                return

    def _record_non_finite(self, unit, where, epoch, step):
        at = [e for e, ent in enumerate(self.entries) if ent.a_unit >= unit]
        self.non_finite = (at[0] if at else len(self.entries) - 1, int(epoch), int(step), where)
