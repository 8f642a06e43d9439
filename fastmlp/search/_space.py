"""The search space: what a trial's parameters may be, how they are drawn, enumerated and mutated.

A parameter is given as a fixed value, a list (or ``range``) of choices, or a
2-tuple ``(low, high)``: a range, drawn log-uniformly for ``width``, ``lr`` and
``batch_size`` (integers for width and batch size) and uniformly for ``depth``
(integers) and ``dropout``. Widths are conditional on the depth: a depth-3
trial has three widths, drawn per layer (``tied=False``) or one for all.
"""
import itertools
import math
import numbers

import numpy as np

from .. import _validation
from .. import activations as _act
from .. import initializers as _init

_OPTIMIZERS = ("adam", "rmsprop", "sgd")
# parameter -> (kind of its range, the check of one value)
_KINDS = {
    "depth": "int",
    "width": "logint",
    "activation": None,
    "init": None,
    "lr": "log",
    "batch_size": "logint",
    "dropout": "float",
    "batch_norm": None,
    "optimizer": None,
}
# the order of the trial's parameters (and of the trials table's columns)
NAMES = ("depth", "widths", "activation", "init", "lr", "batch_size", "dropout", "batch_norm", "optimizer")


def _check_value(name, v):
    """One value of a parameter, checked; its error names the parameter and the valid values."""
    if name in ("depth", "width", "batch_size"):
        return _validation.check_positive_int(v, name)
    if name == "lr":
        return _validation.check_positive(v, name)
    if name == "dropout":
        return _validation.check_in_range(v, name, 0.0, 1.0)
    if name == "batch_norm":
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"batch_norm must be True or False, got {v!r}.")
        return bool(v)
    if name == "activation":
        if v in ("softmax", "log_softmax", "step") or not isinstance(v, str):
            raise ValueError(f"activation {v!r} cannot be a hidden activation; use 'relu', 'tanh' or another "
                             "element-wise activation.")
        _act.resolve(v)  # unknown names list the valid ones
        return v
    if name == "init":
        if not isinstance(v, str):
            raise ValueError(f"init must be a name such as 'auto' or 'he_uniform', got {v!r}.")
        _init.resolve(v, _act.RELU)
        return v
    if name == "optimizer":
        if v not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {v!r}.")
        return v
    raise AssertionError(name)


class _Range:
    """A (low, high) range of one parameter."""

    def __init__(self, name, kind, low, high):
        if kind is None:
            raise ValueError(f"{name} takes a value or a list of choices, not a range; got ({low!r}, {high!r}).")
        low, high = _check_value(name, low), _check_value(name, high)
        if not low <= high:
            raise ValueError(f"The range of {name} must have low <= high, got ({low!r}, {high!r}).")
        self.name, self.kind, self.low, self.high = name, kind, low, high

    def draw(self, rng):
        if self.kind == "int":
            return int(rng.integers(self.low, self.high + 1))
        if self.kind == "float":
            return float(rng.uniform(self.low, self.high))
        x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        if self.kind == "logint":  # rounded in log space would favour the ends; round the value
            return int(min(self.high, max(self.low, round(x))))
        return float(x)

    def clip(self, x):
        x = min(self.high, max(self.low, x))
        return int(round(x)) if self.kind in ("int", "logint") else float(x)

    def __repr__(self):
        return f"({self.low!r}, {self.high!r})"


class _Choices:
    def __init__(self, name, values):
        values = [_check_value(name, v) for v in values]
        if not values:
            raise ValueError(f"{name} has an empty list of choices; give at least one value.")
        self.name, self.values = name, values

    def draw(self, rng):
        return self.values[int(rng.integers(len(self.values)))]

    def __repr__(self):
        return repr(self.values)


def _dimension(name, spec):
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"A range of {name} is a 2-tuple (low, high), got {spec!r}; give a list for choices.")
        return _Range(name, _KINDS[name], *spec)
    if isinstance(spec, (list, range)):
        return _Choices(name, list(spec))
    if isinstance(spec, (np.ndarray, set, dict)):
        raise ValueError(f"{name} must be a value, a list of choices or a (low, high) tuple, got {type(spec).__name__}.")
    return _Choices(name, [spec])


class Space:
    """The choices of a model search.

    Each parameter is a value, a list (or ``range``) of choices, or a range
    ``(low, high)``: ``depth`` integer-uniform, ``width``, ``lr`` and
    ``batch_size`` log-uniform (width and batch size rounded to integers),
    ``dropout`` uniform.

    Parameters
    ----------
    depth : number of hidden layers
    width : units per hidden layer; drawn per layer unless ``tied``
    activation, init : names (:mod:`fastmlp.activations`, :mod:`fastmlp.initializers`)
    lr : learning rate of the optimizer
    batch_size : int
    dropout : rate of a Dropout after each hidden layer (0: none)
    batch_norm : bool; Dense (no bias), BatchNorm, activation per hidden layer
    optimizer : {"adam", "rmsprop", "sgd"}
    tied : bool; one width for all hidden layers of a trial

    Examples
    --------
    >>> space = Space(depth=[1, 2, 3], width=(64, 1024), lr=(1e-4, 1e-2), dropout=[0.0, 0.2])
    """

    def __init__(self, depth=(1, 3), width=(32, 512), activation="relu", init="auto", lr=(1e-4, 1e-2),
                 batch_size=128, dropout=0.0, batch_norm=False, optimizer="adam", tied=False):
        if not isinstance(tied, (bool, np.bool_)):
            raise ValueError(f"tied must be True or False, got {tied!r}.")
        self.tied = bool(tied)
        specs = dict(depth=depth, width=width, activation=activation, init=init, lr=lr, batch_size=batch_size,
                     dropout=dropout, batch_norm=batch_norm, optimizer=optimizer)
        self.dims = {name: _dimension(name, spec) for name, spec in specs.items()}

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self.dims.items())
        return f"Space({inner}, tied={self.tied})"

    # ------------------------------------------------------------- drawing
    def sample(self, rng):
        """One trial's parameters drawn with the NumPy Generator ``rng``."""
        d = self.dims
        depth = d["depth"].draw(rng)
        if self.tied:
            widths = (d["width"].draw(rng),) * depth
        else:
            widths = tuple(d["width"].draw(rng) for _ in range(depth))
        p = {"depth": depth, "widths": widths}
        for name in NAMES[2:]:
            p[name] = d[name].draw(rng)
        return p

    def grid(self):
        """Every combination of the choices, in a fixed order (ranges cannot be enumerated)."""
        for name, dim in self.dims.items():
            if isinstance(dim, _Range):
                raise ValueError(f"Grid search needs a list of choices for {name}, got the range {dim!r}; "
                                 f"give {name}=[...] or use strategy='random'.")
        d = self.dims
        others = [d[name].values for name in NAMES[2:]]
        out = []
        for depth in d["depth"].values:
            if self.tied:
                width_sets = [(w,) * depth for w in d["width"].values]
            else:
                width_sets = list(itertools.product(d["width"].values, repeat=depth))
            for widths in width_sets:
                for rest in itertools.product(*others):
                    out.append({"depth": depth, "widths": tuple(widths), **dict(zip(NAMES[2:], rest))})
        return out

    # ------------------------------------------------------------ mutation
    def mutable(self):
        """The names aging evolution may mutate here (those with more than one value)."""
        d = self.dims
        names = []
        for name in ("depth", "width", "activation", "lr"):
            dim = d[name]
            if isinstance(dim, _Range) and dim.low < dim.high or isinstance(dim, _Choices) and len(dim.values) > 1:
                names.append(name)
        return names

    def mutate(self, params, rng):
        """A child of ``params`` with one of depth, one width, the activation or the
        learning rate changed (Real et al. 2019: one mutation per child)."""
        names = self.mutable()
        child = dict(params)
        if not names:
            return child
        name = names[int(rng.integers(len(names)))]
        dim = self.dims[name]
        if name == "depth":
            child["depth"] = self._other(dim, params["depth"], rng, step=1)
            widths = list(params["widths"])
            while len(widths) < child["depth"]:  # a new layer copies the width of the last one
                widths.append(widths[-1])
            child["widths"] = tuple(widths[:child["depth"]])
        elif name == "width":
            widths = list(params["widths"])
            i = int(rng.integers(len(widths)))
            new = self._other(dim, widths[i], rng, factor=2.0)
            child["widths"] = (new,) * len(widths) if self.tied else tuple(widths[:i] + [new] + widths[i + 1:])
        elif name == "lr":
            child["lr"] = self._other(dim, params["lr"], rng, factor=3.0)
        else:
            child[name] = self._other(dim, params[name], rng)
        return child

    @staticmethod
    def _other(dim, value, rng, step=None, factor=None):
        """Another value than ``value``: a neighbour among the choices, or a
        step (additive or multiplicative) within a range."""
        if isinstance(dim, _Choices):
            values = dim.values
            if step is not None or factor is not None and all(isinstance(v, numbers.Real) for v in values):
                i = values.index(value) if value in values else 0
                j = i + (1 if rng.random() < 0.5 else -1)
                j = j if 0 <= j < len(values) else i - (j - i)
                return values[j]
            rest = [v for v in values if v != value] or values
            return rest[int(rng.integers(len(rest)))]
        for _ in range(8):
            if step is not None:
                x = value + (step if rng.random() < 0.5 else -step)
            else:
                x = value * math.exp(rng.uniform(-math.log(factor), math.log(factor)))
            x = dim.clip(x)
            if x != value:
                return x
        return dim.draw(rng)


def n_params(params, n_features, n_outputs):
    """The parameter count of the model of ``params`` (as ``Sequential.count_params``)."""
    total, fan_in = 0, n_features
    for w in params["widths"]:
        total += fan_in * w + (4 * w if params["batch_norm"] else w)
        fan_in = w
    return total + fan_in * n_outputs + n_outputs
