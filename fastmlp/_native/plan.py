"""The plan: a model compiled for batches of a given size, which every backend's loop walks.

A :class:`Plan` holds one record per unit (``UNIT_DTYPE``: kind, shapes,
offsets into the flat parameter vector, and each parameter by name), the
flat parameter and gradient vectors, and the work buffers of a batch. A
:class:`LoopState` holds what the optimizer brings: its kind, its
hyperparameters by name (``HYPER_DTYPE``), its state vectors and step
counter, the clipping bound and the dropout seed. ``train_steps(plan, loop,
X, targets, sw, order, start, n_steps, losses_out, correct_out)`` and
``make_predictor(plan)`` take them in every backend.

The compiled loops walk the buffers through raw pointers, so every native
entry point first calls :func:`check_train` or :func:`check_predict`: they
compare every buffer's dtype, layout and shape with the records (and the
records with the parameter vector) in time linear in the number of buffers,
and raise ``ValueError`` (``IndexError`` for indices) before any work.

Buffers, per unit i (rows = the batch size):

* ``Z[i]``: the pre-activations of a dense unit, x-hat of a batch-norm unit,
  or the input of an activation, dropout, PReLU or maxout unit, which is then
  ``A[i-1]`` itself (``x`` for the first unit; ``(rows, fan_in)`` for maxout).
* ``A[i]``: the unit's output; ``Z[i]`` itself when the unit's activation is
  the identity (a dense or activation unit), a buffer of its own otherwise
  (always for dropout in training, for batch norm, PReLU and maxout).
* ``dA[i]`` (training): the gradient at ``A[i]``; an activation, dropout or
  PReLU unit passes its buffer down (``dA[i-1]`` is ``dA[i]``), dense,
  batch-norm and maxout units write a ``(rows, fan_in)`` buffer of their own.
* ``M[i]`` (training): a dropout unit's ``(rows, fan_out)`` mask, a batch-norm
  unit's ``(2, fan_out)`` batch statistics; an empty ``(0, 0)`` array otherwise.
* Residual blocks (``act(F(x) + x)``): a ``RES_BEGIN`` unit b, then F's units,
  then a ``RES_ADD`` unit a; ``link`` joins them (b's is a, a's is b). The
  begin unit is the identity and passes its buffers (``Z[b]`` and ``A[b]`` are
  the buffer before it, ``dA[b-1]`` is ``dA[b]``); in the backward pass it adds
  the shortcut's gradient to ``dA[b]``. The add unit's ``fan_out`` is F's width
  (the unit before it) and its ``fan_in`` the block's input width ``A[b]``'s:
  when they differ, the shortcut is a projection ``A[b] @ Wp`` (Wp ``(fan_in,
  fan_out)`` at ``w_off``, no bias, and in training ``M[a]`` is a ``(rows,
  fan_in)`` buffer for ``dZ @ Wp^T``); when they are equal it is ``A[b]`` itself
  and ``M[a]`` is empty. Its ``Z[a]`` is a buffer of its own (``A[a-1] +
  shortcut``), ``A[a]`` is ``act(Z[a])``, and ``dA[a-1]`` is a ``(rows,
  fan_out)`` buffer of its own (``dZ``, which ``dA[a]`` keeps for the shortcut).
* ``P``: the probabilities (rates for poisson) of the fused losses, ``(rows, k)``.
* ``y``, ``Y``, ``sw``: the batch's labels ``(rows,)`` int64 (or ``(0,)``), real
  or one-hot targets ``(rows, k)`` (or ``(0, 0)``), sample weights ``(rows,)``
  (or ``(0,)``).
"""
import math

import numpy as np

from .codes import (
    FUSED_LOSSES,
    HYPER_FIELDS,
    LABEL_LOSSES,
    UNIT_FIELDS,
    Act,
    Loss,
    Opt,
    Unit,
    Variant,
)

UNIT_DTYPE = np.dtype(list(UNIT_FIELDS))
HYPER_DTYPE = np.dtype(list(HYPER_FIELDS))
_INT64 = np.dtype(np.int64)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_N_ACTS = len(Act)
_EMPTY2 = {dt: np.empty((0, 0), dtype=dt) for dt in _FLOATS}


def records(n_units):
    """A zeroed array of ``n_units`` unit records (``UNIT_DTYPE``)."""
    return np.zeros(n_units, dtype=UNIT_DTYPE)


def hyper(**values):
    """One ``HYPER_DTYPE`` record: the named hyperparameters given, 0 for the others."""
    rec = np.zeros(1, dtype=HYPER_DTYPE)
    for name, value in values.items():
        rec[name] = value
    return rec


class Plan:
    """The units of a model and the buffers of batches of ``rows`` rows.

    Parameters
    ----------
    units : ndarray of UNIT_DTYPE, shape (n_units,)
        The records, in the order of the forward pass; ``act`` is the
        activation the loop applies (the identity for an output layer fused
        into the loss in training).
    params, grads : 1-D float32 or float64 arrays
        The model's flat parameters and gradients (by reference).
    rows : int
        The batch size the buffers are made for.
    loss : Loss
        The loss kind (it selects the target buffers).
    training : bool
        Make the buffers a training step needs (dA, masks, P, targets).
    weighted : bool
        Make a sample-weight buffer.
    """

    def __init__(self, units, params, grads, rows, loss=Loss.MSE, training=False, weighted=False):
        self.units, self.params, self.grads = units, params, grads
        self.rows, self.loss, self.training = int(rows), Loss(loss), bool(training)
        self._alloc(weighted)

    @property
    def dtype(self):
        return self.params.dtype

    @property
    def n_units(self):
        return self.units.shape[0]

    def _alloc(self, weighted):
        n, dt, units = self.rows, self.params.dtype, self.units
        self.x = np.empty((n, int(units[0]["fan_in"])), dtype=dt)
        self.Z, self.A = [], []
        self.M = [_EMPTY2[dt]] * len(units)
        prev = self.x
        for i, u in enumerate(units):
            kind, k = Unit(u["kind"]), int(u["fan_out"])
            z = np.empty((n, k), dtype=dt) if kind in (Unit.DENSE, Unit.BATCHNORM, Unit.RES_ADD) else prev
            own = (u["act"] != Act.IDENTITY or kind in (Unit.BATCHNORM, Unit.PRELU, Unit.MAXOUT)
                   or (self.training and kind == Unit.DROPOUT))
            a = np.empty((n, k), dtype=dt) if own else z
            if self.training and kind == Unit.DROPOUT:
                self.M[i] = np.empty((n, k), dtype=dt)
            elif self.training and kind == Unit.BATCHNORM:
                self.M[i] = np.empty((2, k), dtype=dt)
            elif self.training and kind == Unit.RES_ADD and int(u["fan_in"]) != k:
                self.M[i] = np.empty((n, int(u["fan_in"])), dtype=dt)  # dZ @ Wp^T, for the block's start
            self.Z.append(z)
            self.A.append(a)
            prev = a
        k = int(units[-1]["fan_out"])
        if not self.training:
            self.dA, self.P = [], _EMPTY2[dt]
            self.y, self.Y, self.sw = np.empty(0, _INT64), _EMPTY2[dt], np.empty(0, dt)
            return
        L = len(units) - 1
        self.dA = [None] * (L + 1)
        self.dA[L] = np.empty((n, k), dtype=dt)
        for i in range(L, 0, -1):
            kind = units[i]["kind"]
            own = kind in (Unit.DENSE, Unit.BATCHNORM, Unit.MAXOUT, Unit.RES_ADD)
            width = int(units[i]["fan_out" if kind == Unit.RES_ADD else "fan_in"])
            self.dA[i - 1] = np.empty((n, width), dtype=dt) if own else self.dA[i]
        self.P = np.empty((n, k), dtype=dt)
        labels = self.loss in LABEL_LOSSES
        self.y = np.empty(n if labels else 0, dtype=_INT64)
        self.Y = _EMPTY2[dt] if labels else np.empty((n, k), dtype=dt)
        self.sw = np.empty(n if weighted else 0, dtype=dt)

    def output(self):
        """The buffer holding the last unit's output."""
        return self.A[-1]


class LoopState:
    """The optimizer's side of a training call.

    Parameters
    ----------
    opt : Opt
    hyper : ndarray of HYPER_DTYPE, shape (1,)
    state1, state2 : 1-D arrays of the parameters' dtype
        SGD's momentum buffer, RMSprop's square average, Adam's m and v, in
        that order; (0,) where the optimizer has none.
    t : int
        Optimizer steps done before this call (Adam's t = t + s + 1 at step s).
    clip_norm : float
        The bound of the global gradient norm; 0.0 for no clipping.
    seed : int in [0, 2**64)
        The base seed of the dropout masks.
    lrs : float64 array of shape (n_steps,), or None
        A learning-rate schedule's rates: step s of the call updates with
        ``lrs[s]`` (finite, >= 0) instead of ``hyper["lr"]``. None or (0,): the
        constant ``hyper["lr"]``.
    clip_value : float
        Clamp every gradient element to [-clip_value, clip_value] before the
        norm clipping; 0.0 for none.
    variant : Variant
        The Cython loop's variant: RULE (its constants decide), or one forced
        where it is valid (fastmlp._planner); the other backends have one loop.

    Attributes
    ----------
    diag_every, diag_phase : int
        Training diagnostics (:meth:`diagnose_steps`): step s of the call is
        sampled when ``(diag_phase + s) % diag_every == 0``; ``diag_every`` 0
        (the default) samples none.
    diag_units : float64 array of shape (n_samples, DIAG_THREADS, n_units, 3)
        OUT, zeroed by the caller: per sampled step, loop thread and unit, a
        dense unit's sums of squares of dW (with its L2 term, before any
        clipping), of the step's change of W, and of W before the update
        (each thread its share of W; one thread writes slot 0).
    diag_feats : float64 array of shape (n_samples, n_features, 4)
        OUT: per sampled step and feature of every unit's output (the units'
        widths one after the other), over the batch's rows: the sum and the
        sum of squares of A, the rows where A != 0, and the rows where the
        activation's derivative (sigmoid, tanh; computed from A in float64)
        is below ``DIAG_SATURATED``.
    """

    __slots__ = ("opt", "hyper", "state1", "state2", "t", "clip_norm", "seed", "lrs", "clip_value",
                 "diag_every", "diag_phase", "diag_units", "diag_feats", "variant")

    def __init__(self, opt, hyper, state1, state2, t=0, clip_norm=0.0, seed=0, lrs=None, clip_value=0.0,
                 variant=Variant.RULE):
        self.opt, self.hyper = Opt(opt), hyper
        self.state1, self.state2 = state1, state2
        self.t, self.clip_norm, self.seed = int(t), float(clip_norm), int(seed)
        self.lrs = _NO_RATES if lrs is None else lrs
        self.clip_value = float(clip_value)
        self.diag_every, self.diag_phase = 0, 0
        self.diag_units, self.diag_feats = _NO_UNITS, _NO_FEATS
        self.variant = Variant(variant)

    def diagnose_steps(self, plan, n_steps, every, phase=0):
        """Sample every ``every``-th step of a call of ``n_steps`` steps (step s when
        ``(phase + s) % every == 0``) into fresh zeroed ``diag_units`` and
        ``diag_feats`` buffers for ``plan``; returns the sampled steps' indices."""
        steps = diag_steps(n_steps, every, phase)
        self.diag_every, self.diag_phase = int(every), int(phase)
        self.diag_units = np.zeros((len(steps), DIAG_THREADS, plan.n_units, 3))
        self.diag_feats = np.zeros((len(steps), int(plan.units["fan_out"].sum()), 4))
        return steps


def diag_steps(n_steps, every, phase=0):
    """The steps s in [0, n_steps) a call samples: ``(phase + s) % every == 0``."""
    return np.arange((-int(phase)) % int(every), int(n_steps), int(every))


# Slots of the loop threads in LoopState.diag_units (the Cython loop's MAX_LOOP_THREADS).
DIAG_THREADS = 64
# A sigmoid or tanh unit is saturated on a row where its derivative is below this.
DIAG_SATURATED = 1e-2
_NO_UNITS = np.zeros((0, DIAG_THREADS, 0, 3))
_NO_FEATS = np.zeros((0, 0, 4))


_NO_RATES = np.empty(0, dtype=np.float64)
_NO_RATES.flags.writeable = False


# ---------------------------------------------------------------- checks
def _buf(who, name, b, dt, shape, i=None):
    # name (with [i] when given) is formatted only for the error: the checks run at every call
    if not (isinstance(b, np.ndarray) and b.dtype == dt and b.shape == shape and b.flags.c_contiguous):
        name = name if i is None else f"{name}[{i}]{' (the dropout mask)' if name == 'M' and shape[0] != 2 else ''}"
        name += " (the batch-norm statistics)" if name.startswith("M[") and shape[0] == 2 and "(" not in name else ""
        got = (f"{b.dtype} array of shape {b.shape}{'' if b.flags.c_contiguous else ', not C-contiguous'}"
               if isinstance(b, np.ndarray) else type(b).__name__)
        raise ValueError(f"{who}: {name} must be a C-contiguous {dt} array of shape {shape}, got {got}")


def _writeable(who, name, b):
    if not b.flags.writeable:
        raise ValueError(f"{who}: {name} must be writeable")


_KINDS = frozenset(int(u) for u in Unit)
_OPTS = frozenset(int(o) for o in Opt)
_VARIANTS = frozenset(int(v) for v in Variant)
_DENSE, _ACTIVATION = int(Unit.DENSE), int(Unit.ACTIVATION)
_DROPOUT, _BATCHNORM = int(Unit.DROPOUT), int(Unit.BATCHNORM)
_PRELU, _MAXOUT = int(Unit.PRELU), int(Unit.MAXOUT)
_RES_BEGIN, _RES_ADD = int(Unit.RES_BEGIN), int(Unit.RES_ADD)
# units whose Z is the buffer before them and dA[i-1] is dA[i]
_PASS_DOWN = (_ACTIVATION, _DROPOUT, _PRELU, _RES_BEGIN)
_IDENTITY = int(Act.IDENTITY)
assert tuple(name for name, _ in UNIT_FIELDS) == (
    "kind", "fan_in", "fan_out", "act", "use_bias", "w_off", "b_off", "alpha", "l2", "rate", "eps", "momentum",
    "pieces", "shared", "link")


def _rows(units):
    """The records as tuples, in UNIT_FIELDS' order (read once: a field of a NumPy record is slow)."""
    return units.tolist()


def _check_records(who, plan, training):
    """The records against each other and against the parameter vector (writeable in training)."""
    units, params, grads = plan.units, plan.params, plan.grads
    if not (isinstance(units, np.ndarray) and units.dtype == UNIT_DTYPE and units.ndim == 1
            and units.flags.c_contiguous and units.shape[0] >= 1):
        raise ValueError(f"{who}: plan.units must be a C-contiguous 1-D array of plan.UNIT_DTYPE records")
    if not (isinstance(params, np.ndarray) and params.dtype in _FLOATS and params.ndim == 1
            and params.flags.c_contiguous):
        raise ValueError(f"{who}: params must be a C-contiguous 1-D float32 or float64 array")
    _buf(who, "grads", grads, params.dtype, params.shape)
    if training:
        _writeable(who, "params", params)
        _writeable(who, "grads", grads)
    n_params = params.shape[0]
    rows = _rows(units)
    fan_in = rows[0][1]
    begin = -1  # the open residual block's RES_BEGIN unit
    for i, (kind, fi, k, act, use_bias, w_off, b_off, _, l2, rate, eps, momentum, pieces, shared,
            link) in enumerate(rows):
        if kind not in _KINDS:
            raise ValueError(f"{who}: unit {i} has an unknown kind {kind}")
        if not 0 <= act < _N_ACTS:
            raise ValueError(f"{who}: unit {i} has an unknown activation code {act}")
        if kind == _RES_BEGIN:
            if begin >= 0 or not (i + 2 <= link < len(rows) and rows[link][0] == _RES_ADD and rows[link][14] == i):
                raise ValueError(f"{who}: residual block start {i} must link to a RES_ADD unit at least 2 units "
                                 f"after it that links back, with no block open (blocks do not nest), got link "
                                 f"{link}")
            begin = i
        elif kind == _RES_ADD:
            if link != begin or begin < 0:
                raise ValueError(f"{who}: residual block end {i} must link to the open block's RES_BEGIN unit "
                                 f"({begin}), got {link}")
            if k != fan_in or fi != rows[begin][2] or use_bias or l2 != 0.0:
                raise ValueError(f"{who}: residual block end {i} must have fan_out == the unit before's "
                                 f"({fan_in}), fan_in == the block's input width ({rows[begin][2]}), no bias "
                                 f"and no l2, got fan_in {fi}, fan_out {k}")
            if fi != k and (w_off < 0 or w_off + fi * k > n_params):
                raise ValueError(f"{who}: residual block end {i}'s projection reaches outside params "
                                 f"({n_params} values)")
            begin = -1
            fan_in = k
            continue
        if fi != fan_in or k < 1 or fan_in < 1:
            raise ValueError(f"{who}: unit {i} takes {fi} inputs and gives {k} outputs, but the "
                             f"unit before gives {fan_in} (every width must be >= 1)")
        if kind == _MAXOUT:
            if not (pieces >= 1 and fan_in == k * pieces and act == _IDENTITY):
                raise ValueError(f"{who}: maxout unit {i} needs pieces >= 1, fan_in == fan_out * pieces and the "
                                 f"identity activation, got fan_in {fan_in}, fan_out {k}, pieces {pieces}")
        elif kind != _DENSE and (k != fan_in or (kind != _ACTIVATION and act != _IDENTITY)):
            raise ValueError(f"{who}: unit {i} ({Unit(kind).name.lower()}) must have fan_in == fan_out"
                             + ("" if kind == _ACTIVATION else " and the identity activation"))
        if kind == _DENSE:
            if w_off < 0 or w_off + fan_in * k > n_params or (use_bias and (b_off < 0 or b_off + k > n_params)):
                raise ValueError(f"{who}: dense unit {i}'s W or b reaches outside params ({n_params} values)")
            if not (l2 >= 0 and math.isfinite(l2)):
                raise ValueError(f"{who}: dense unit {i} needs l2 >= 0, got {l2}")
        elif kind == _DROPOUT:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{who}: the dropout rate of unit {i} must be in [0, 1), got {rate}")
        elif kind == _PRELU:
            if shared not in (0, 1) or w_off < 0 or w_off + (1 if shared else k) > n_params:
                raise ValueError(f"{who}: PReLU unit {i} needs shared in (0, 1) and its {1 if shared else k} "
                                 f"alpha(s) inside params")
        elif kind == _BATCHNORM:
            if w_off < 0 or w_off + 4 * k > n_params:
                raise ValueError(f"{who}: batch-norm unit {i} needs its (4, {k}) block inside params")
            if not (eps > 0.0 and 0.0 <= momentum <= 1.0):
                raise ValueError(f"{who}: batch-norm unit {i} needs eps > 0 and momentum in [0, 1], "
                                 f"got {eps}, {momentum}")
        fan_in = k
    return rows  # an open block cannot remain: its start's check found its end


def _check_unit_buffers(who, plan, training, rows):
    dt, n = plan.params.dtype, plan.rows
    if n < 1:
        raise ValueError(f"{who}: the plan's batches need at least 1 row, got {n}")
    _buf(who, "x", plan.x, dt, (n, rows[0][1]))
    L = len(rows) - 1
    Z, A = plan.Z, plan.A
    dA, M = (plan.dA, plan.M) if training else (None, None)
    for name, seq in (("Z", Z), ("A", A), ("dA", dA), ("M", M)):
        if (seq is not None or name in ("Z", "A")) and not (isinstance(seq, (list, tuple)) and len(seq) == L + 1):
            raise ValueError(f"{who}: plan.{name} must be a list of {L + 1} arrays")
    prev = plan.x
    for i, r in enumerate(rows):
        kind, shape = r[0], (n, r[2])
        _buf(who, "Z", Z[i], dt, (n, r[1]) if kind == _MAXOUT else shape, i)
        _buf(who, "A", A[i], dt, shape, i)
        if (kind in _PASS_DOWN or kind == _MAXOUT) and Z[i] is not prev:
            raise ValueError(f"{who}: Z[{i}] of an activation, dropout, PReLU, maxout or residual-start unit "
                             "must be the buffer before it")
        if kind == _RES_BEGIN and A[i] is not Z[i]:
            raise ValueError(f"{who}: a residual block start's A[{i}] must be its Z[{i}] (the identity)")
        if kind == _RES_ADD and (Z[i] is prev or Z[i] is A[r[14]] or A[i] is A[r[14]]):
            raise ValueError(f"{who}: a residual block end's Z[{i}] must be a buffer of its own")
        if (kind == _BATCHNORM or kind == _PRELU or kind == _MAXOUT) and A[i] is Z[i]:
            raise ValueError(f"{who}: a batch-norm, PReLU or maxout unit's A[{i}] must be a buffer of its own")
        prev = A[i]
        if not training:
            continue
        if kind == _DROPOUT and A[i] is Z[i]:
            raise ValueError(f"{who}: a dropout unit's A[{i}] must be a buffer of its own in training")
        _buf(who, "dA", dA[i], dt, shape, i)
        if i > 0 and kind in _PASS_DOWN and dA[i - 1] is not dA[i]:
            raise ValueError(f"{who}: dA[{i - 1}] below an activation, dropout or PReLU unit must be dA[{i}]")
        if kind == _DROPOUT:
            _buf(who, "M", M[i], dt, shape, i)
        elif kind == _BATCHNORM:
            _buf(who, "M", M[i], dt, (2, r[2]), i)
        elif kind == _RES_ADD:
            if dA[i - 1] is dA[i]:
                raise ValueError(f"{who}: dA[{i - 1}] below a residual block end must be a buffer of its own")
            if r[1] != r[2]:
                _buf(who, f"M[{i}] (the projection's gradient stash)", M[i], dt, (n, r[1]))


def check_predict(plan, who="make_predictor"):
    """Raise unless ``plan`` is fit for a forward pass (records, parameters, Z and A buffers)."""
    _check_unit_buffers(who, plan, False, _check_records(who, plan, training=False))


def check_loop(plan, loop, who="train_steps", n_steps=None):
    """Raise unless the loop state fits the plan: optimizer kind, hyperparameters, state vectors."""
    opt = int(loop.opt) if isinstance(loop, LoopState) else None
    if opt not in _OPTS:
        raise ValueError(f"{who}: loop must be a LoopState with a known optimizer kind")
    h = loop.hyper
    if not (isinstance(h, np.ndarray) and h.dtype == HYPER_DTYPE and h.shape == (1,)):
        raise ValueError(f"{who}: loop.hyper must be one plan.HYPER_DTYPE record")
    h = dict(zip(HYPER_DTYPE.names, h[0].tolist()))  # plain floats: a NumPy record's fields are slow
    for name, value in h.items():
        if not math.isfinite(value):
            raise ValueError(f"{who}: the optimizer's {name} must be finite, got {value}")
    lrs = loop.lrs
    if not (isinstance(lrs, np.ndarray) and lrs.dtype == np.float64 and lrs.ndim == 1 and lrs.flags.c_contiguous):
        raise ValueError(f"{who}: loop.lrs must be a C-contiguous float64 vector (the schedule's rates)")
    if lrs.shape[0]:
        if n_steps is not None and lrs.shape[0] != n_steps:
            raise ValueError(f"{who}: loop.lrs has {lrs.shape[0]} rates for {n_steps} steps")
        if not (np.isfinite(lrs).all() and (lrs >= 0).all()):
            bad = int(np.flatnonzero(~(np.isfinite(lrs) & (lrs >= 0)))[0])
            raise ValueError(f"{who}: the schedule's rate at step {loop.t + bad} is {lrs[bad]}; a learning "
                             "rate must be finite and >= 0")
    elif opt != Opt.NONE and not h["lr"] > 0:
        raise ValueError(f"{who}: the learning rate must be > 0, got {h['lr']}")
    if opt == Opt.SGD and not 0.0 <= h["momentum"] <= 1.0:
        raise ValueError(f"{who}: SGD's momentum must be in [0, 1], got {h['momentum']}")
    if opt == Opt.RMSPROP and not (0.0 <= h["rho"] < 1.0 and h["eps"] > 0):
        raise ValueError(f"{who}: RMSprop needs rho in [0, 1) and eps > 0, got {h['rho']}, {h['eps']}")
    if opt == Opt.ADAM and not (0.0 <= h["beta1"] < 1.0 and 0.0 <= h["beta2"] < 1.0 and h["eps"] > 0):
        raise ValueError(f"{who}: Adam needs beta1, beta2 in [0, 1) and eps > 0, got "
                         f"{h['beta1']}, {h['beta2']}, {h['eps']}")
    if not h["weight_decay"] >= 0.0:
        raise ValueError(f"{who}: weight_decay must be >= 0, got {h['weight_decay']}")
    if h["decoupled"] not in (0.0, 1.0) or (h["decoupled"] == 1.0 and opt != Opt.ADAM):
        raise ValueError(f"{who}: decoupled weight decay is 0 or 1, and 1 with Adam only (AdamW), got "
                         f"{h['decoupled']}")
    n, dt = plan.params.shape[0], plan.params.dtype
    needs = {Opt.NONE: 0, Opt.SGD: 1 if h["momentum"] != 0.0 else 0, Opt.RMSPROP: 1, Opt.ADAM: 2}[opt]
    for j, name in enumerate(("state1", "state2")):
        vec = getattr(loop, name)
        if j < needs:
            if not (isinstance(vec, np.ndarray) and vec.dtype == dt and vec.ndim == 1
                    and vec.flags.c_contiguous and vec.shape[0] == n):
                got = f"{vec.dtype} array of shape {vec.shape}" if isinstance(vec, np.ndarray) else type(vec).__name__
                raise ValueError(f"{who}: the optimizer's {name} must be a C-contiguous {dt} vector of the "
                                 f"model's {n} parameters, got {got} (an optimizer's state belongs to the "
                                 "model it was made for)")
            _writeable(who, name, vec)
        elif not (isinstance(vec, np.ndarray) and vec.dtype == dt and vec.ndim == 1 and vec.flags.c_contiguous
                  and vec.shape[0] in (0, n)):
            raise ValueError(f"{who}: the optimizer's {name} must be a C-contiguous {dt} vector of length 0 "
                             f"or {n}")
    if loop.t < 0:
        raise ValueError(f"{who}: loop.t must be >= 0, got {loop.t}")
    if not (math.isfinite(loop.clip_norm) and loop.clip_norm >= 0.0):
        raise ValueError(f"{who}: clip_norm must be finite and >= 0 (0 for none), got {loop.clip_norm}")
    if not (math.isfinite(loop.clip_value) and loop.clip_value >= 0.0):
        raise ValueError(f"{who}: clip_value must be finite and >= 0 (0 for none), got {loop.clip_value}")
    if not 0 <= loop.seed < 2**64:
        raise ValueError(f"{who}: the dropout seed must be in [0, 2**64), got {loop.seed}")
    if not (isinstance(loop.variant, int) and loop.variant in _VARIANTS):
        raise ValueError(f"{who}: loop.variant must be a codes.Variant, got {loop.variant!r}")
    _check_diag(who, plan, loop, n_steps)


def _check_diag(who, plan, loop, n_steps):
    every, phase = loop.diag_every, loop.diag_phase
    if not (type(every) is int and type(phase) is int and every >= 0 and phase >= 0):
        raise ValueError(f"{who}: loop.diag_every and loop.diag_phase must be ints >= 0, got {every!r}, {phase!r}")
    if every == 0:
        return
    if n_steps is None:
        raise ValueError(f"{who}: diagnostics need the call's step count")
    n_s = len(diag_steps(n_steps, every, phase))
    for name, b, shape in (("diag_units", loop.diag_units, (n_s, DIAG_THREADS, plan.n_units, 3)),
                           ("diag_feats", loop.diag_feats, (n_s, int(plan.units["fan_out"].sum()), 4))):
        _buf(who, f"loop.{name}", b, np.dtype(np.float64), shape)
        _writeable(who, f"loop.{name}", b)


def check_train(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out,
                who="train_steps"):
    """Raise unless a training call may run: the plan, its training buffers, the loop
    state, the data and the index ranges (the labels and ``order`` are scanned once).

    Returns ``(y, Y)``: the labels (int64, or (0,)) and the real targets (or (0, 0)).
    """
    if not isinstance(plan, Plan) or not plan.training:
        raise ValueError(f"{who}: plan must be a training Plan")
    recs = _check_records(who, plan, training=True)
    _check_unit_buffers(who, plan, True, recs)
    if any(r[3] == Act.STEP for r in recs):
        raise ValueError("step has a zero derivative everywhere; it cannot be trained through")
    check_loop(plan, loop, who, n_steps)
    dt, rows, k = plan.params.dtype, plan.rows, recs[-1][2]
    loss = plan.loss
    if not (type(X) is np.ndarray and X.dtype == dt and X.ndim == 2 and X.flags.c_contiguous
            and X.shape[1] == plan.x.shape[1]):
        raise ValueError(f"{who}: X must be a C-contiguous {dt} array with {plan.x.shape[1]} columns")
    n = X.shape[0]
    labels = loss in LABEL_LOSSES
    if labels:
        _buf(who, "the targets (labels)", targets, _INT64, (n,))
        y, Y = targets, _EMPTY2[dt]
        _buf(who, "the label buffer y", plan.y, _INT64, (rows,))
        if n and (int(targets.min()) < 0 or int(targets.max()) >= k):
            raise ValueError(f"{who}: labels must lie in [0, {k})")
    else:
        _buf(who, "the targets", targets, dt, (n, k))
        y, Y = np.empty(0, _INT64), targets
        _buf(who, "the target buffer Y", plan.Y, dt, (rows, k))
        if loss == Loss.POISSON and targets.size and not (targets >= 0).all():
            r, c = np.unravel_index(int(np.argmax(~(targets >= 0))), targets.shape)
            raise ValueError(f"poisson_loss: targets must be >= 0 (counts or rates), got "
                             f"Y[{r}, {c}] = {targets[r, c]}.")
    if not (isinstance(sw, np.ndarray) and sw.dtype == dt and sw.ndim == 1 and sw.flags.c_contiguous
            and sw.shape[0] in (0, n)):
        raise ValueError(f"{who}: sw must be a C-contiguous {dt} vector of length 0 or {n}")
    _buf(who, "the weight buffer sw", plan.sw, dt, (rows if sw.shape[0] else 0,))
    _buf(who, "P", plan.P, dt, (rows, k))
    if loss not in FUSED_LOSSES and loss not in (Loss.NLL, Loss.MSE):  # pragma: no cover - Loss is closed
        raise ValueError(f"{who}: unknown loss kind {loss}")
    if recs[-1][0] not in (_DENSE, _ACTIVATION):
        raise ValueError(f"{who}: the last unit must be dense or an activation")
    if any(r[0] == _BATCHNORM for r in recs) and rows < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"({rows}, {k}) (batch normalization needs batches of at least 2 rows)")
    if not (isinstance(order, np.ndarray) and order.dtype == _INT64 and order.ndim == 1 and order.flags.c_contiguous):
        raise ValueError(f"{who}: order must be a C-contiguous 1-D int64 array")
    start, n_steps = int(start), int(n_steps)
    if start < 0 or n_steps < 0 or start + n_steps * rows > order.shape[0]:
        raise IndexError(f"{who}: the batches reach outside order")
    if n_steps and (int(order[start:start + n_steps * rows].min()) < 0
                    or int(order[start:start + n_steps * rows].max()) >= n):
        raise IndexError(f"{who}: the batches reach outside X")
    for name, out in (("losses_out", losses_out), ("correct_out", correct_out)):
        if not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.ndim == 1
                and out.flags.c_contiguous and out.shape[0] >= n_steps):
            raise ValueError(f"{who}: {name} must be a C-contiguous float64 vector of at least {n_steps} entries")
        _writeable(who, name, out)
    return y, Y
