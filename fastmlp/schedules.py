"""Learning-rate schedules, per optimizer step, as Keras defines them.

Give one as the ``lr`` (or ``learning_rate``) of any optimizer::

    opt = fm.optim.SGD(lr=fm.schedules.CosineDecay(0.1, decay_steps=10_000), momentum=0.9)

The step is the optimizer's step counter before the update (0 for the first
update), as Keras' ``optimizer.iterations``; it goes on across ``fit`` calls.
Before each native training call the model asks the schedule for the rates
of all the steps of the call at once (:meth:`LearningRateSchedule.rates`, one
vectorized NumPy expression); the native loop reads rate ``s`` at step ``s``,
so no Python runs between steps.
"""
import math
import numbers

import numpy as np

from . import _validation

__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstant", "CosineDecay",
           "InverseTimeDecay", "OneCycle"]


def _rate(value, name, positive=True):
    return (_validation.check_positive if positive else _validation.check_nonnegative)(value, name)


class LearningRateSchedule:
    """Base class: a learning rate as a function of the optimizer's step.

    Subclasses define :meth:`rates`; ``schedule(step)`` is the rate of one step.
    """

    def rates(self, start, n):
        """The rates of steps ``start, ..., start + n - 1``.

        Parameters
        ----------
        start : int >= 0
        n : int >= 0

        Returns
        -------
        ndarray of float64, shape (n,): each finite and >= 0
        """
        return self._rates(np.arange(start, start + n, dtype=np.float64))

    def _rates(self, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step):
        """The rate of one step (a float)."""
        step = _validation.check_nonnegative_int(step, "step")
        return float(self.rates(step, 1)[0])

    def get_config(self):
        return dict(vars(self))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class _QuotientDecay(LearningRateSchedule):
    # the two decays of the step quotient p = step / decay_steps (floored when staircase)
    _decay_rate_positive = True

    def __init__(self, initial, decay_steps, decay_rate, staircase=False):
        self.initial = _rate(initial, "initial")
        self.decay_steps = _validation.check_positive(decay_steps, "decay_steps")
        self.decay_rate = _rate(decay_rate, "decay_rate", positive=self._decay_rate_positive)
        self.staircase = bool(staircase)

    def _quotient(self, step):
        p = step / self.decay_steps
        return np.floor(p) if self.staircase else p


class ExponentialDecay(_QuotientDecay):
    """``initial * decay_rate ** (step / decay_steps)``; the exponent floored when ``staircase``.

    As ``keras.optimizers.schedules.ExponentialDecay``.

    Parameters
    ----------
    initial : float > 0
        The rate at step 0.
    decay_steps : float > 0
        The steps over which the rate decays by ``decay_rate``.
    decay_rate : float > 0
        The decay factor.
    staircase : bool, default=False
        Floor the step quotient (a rate constant over each ``decay_steps`` steps).
    """

    def _rates(self, step):
        return self.initial * np.power(self.decay_rate, self._quotient(step))


class InverseTimeDecay(_QuotientDecay):
    """``initial / (1 + decay_rate * step / decay_steps)``; the quotient floored when ``staircase``.

    As ``keras.optimizers.schedules.InverseTimeDecay``.

    Parameters
    ----------
    initial : float > 0
        The rate at step 0.
    decay_steps : float > 0
        The steps over which the rate falls to ``initial / (1 + decay_rate)``.
    decay_rate : float >= 0
        The decay factor.
    staircase : bool, default=False
        Floor the step quotient (a rate constant over each ``decay_steps`` steps).
    """

    _decay_rate_positive = False

    def _rates(self, step):
        return self.initial / (1.0 + self.decay_rate * self._quotient(step))


class PiecewiseConstant(LearningRateSchedule):
    """``values[0]`` up to step ``boundaries[0]`` (included), ``values[i]`` for
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary.

    As ``keras.optimizers.schedules.PiecewiseConstantDecay``.

    Parameters
    ----------
    boundaries : sequence of increasing step numbers, length m >= 1
    values : sequence of m + 1 rates, each finite and >= 0
    """

    def __init__(self, boundaries, values):
        b = [float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else x for x in boundaries]
        if not b or not all(isinstance(x, float) and math.isfinite(x) for x in b):
            raise ValueError(f"boundaries must be a non-empty list of finite step numbers, got {boundaries!r}.")
        if any(hi <= lo for lo, hi in zip(b, b[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}.")
        values = list(values)
        if len(values) != len(b) + 1:
            raise ValueError(f"values must have one more entry than boundaries ({len(b) + 1}), got {len(values)}.")
        self.boundaries = b
        self.values = [_rate(v, f"values[{i}]", positive=False) for i, v in enumerate(values)]

    def _rates(self, step):
        # searchsorted 'left': the number of boundaries strictly below the step
        return np.asarray(self.values)[np.searchsorted(np.asarray(self.boundaries), step, side="left")]


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial`` (or, after a linear warm-up from ``initial`` to
    ``warmup_target`` over ``warmup_steps`` steps, from ``warmup_target``) down to
    ``alpha`` times that rate over ``decay_steps`` steps, then constant.

    As ``keras.optimizers.schedules.CosineDecay``: without ``warmup_target``
    there is no warm-up (``warmup_steps`` is ignored, as in Keras).

    Parameters
    ----------
    initial : float > 0
        The rate at step 0.
    decay_steps : float > 0
        The steps of the cosine decay (after the warm-up).
    alpha : float in [0, 1], default=0.0
        The final rate as a fraction of the decay's starting rate.
    warmup_steps : int >= 0, default=0
        The steps of the linear warm-up.
    warmup_target : float > 0 or None, default=None
        The rate the warm-up reaches; None: no warm-up.
    """

    def __init__(self, initial, decay_steps, alpha=0.0, warmup_steps=0, warmup_target=None):
        self.initial = _rate(initial, "initial", positive=warmup_target is None)
        self.decay_steps = _validation.check_positive(decay_steps, "decay_steps")
        self.alpha = _validation.check_in_range(alpha, "alpha", 0.0, 1.0, hi_open=False)
        self.warmup_steps = _validation.check_nonnegative(warmup_steps, "warmup_steps")
        self.warmup_target = None if warmup_target is None else _rate(warmup_target, "warmup_target")
        if self.warmup_target is not None and self.warmup_steps == 0:
            raise ValueError("warmup_target needs warmup_steps > 0 (the steps of the linear warm-up).")

    def _decay(self, step, top):
        return top * ((1.0 - self.alpha) * 0.5 * (1.0 + np.cos(math.pi * step / self.decay_steps)) + self.alpha)

    def _rates(self, step):
        if self.warmup_target is None:
            return self._decay(np.minimum(step, self.decay_steps), self.initial)
        w = self.warmup_steps
        step = np.minimum(step, self.decay_steps + w)
        warm = (self.warmup_target - self.initial) * (step / w) + self.initial
        return np.where(step < w, warm, self._decay(step - w, self.warmup_target))


class OneCycle(LearningRateSchedule):
    """The one-cycle policy of ``torch.optim.lr_scheduler.OneCycleLR`` (cosine
    annealing, two phases, the learning rate only).

    From ``max_lr / div_factor`` up to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then down to ``max_lr / div_factor /
    final_div_factor`` at step ``total_steps - 1``; later steps keep that last
    rate (PyTorch raises there instead).

    Parameters
    ----------
    max_lr : float > 0
        The peak rate.
    total_steps : int >= 2
        The steps of the cycle.
    pct_start : float in (0, 1), default=0.3
        The fraction of the steps spent rising.
    div_factor : float > 0, default=25.0
        The starting rate is ``max_lr / div_factor``.
    final_div_factor : float > 0, default=1e4
        The final rate is ``max_lr / div_factor / final_div_factor``.
    """

    def __init__(self, max_lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
        self.max_lr = _rate(max_lr, "max_lr")
        total_steps = _validation.check_positive_int(total_steps, "total_steps")
        if total_steps < 2:
            raise ValueError(f"total_steps must be at least 2 (a rise and a fall), got {total_steps}.")
        self.total_steps = total_steps
        self.pct_start = _validation.check_in_range(pct_start, "pct_start", 0.0, 1.0)
        if not float(self.pct_start * total_steps) - 1 > 0:
            raise ValueError(f"pct_start={pct_start} of total_steps={total_steps} leaves no rising phase; "
                             "raise one of them.")
        if not float(self.pct_start * total_steps) - 1 < total_steps - 1:
            raise ValueError(f"pct_start={pct_start} leaves no falling phase; lower it.")
        self.div_factor = _rate(div_factor, "div_factor")
        self.final_div_factor = _rate(final_div_factor, "final_div_factor")

    @staticmethod
    def _cos(start, end, pct):
        return end + (start - end) / 2.0 * (np.cos(math.pi * pct) + 1.0)

    def _rates(self, step):
        initial = self.max_lr / self.div_factor
        low = initial / self.final_div_factor
        mid, end = float(self.pct_start * self.total_steps) - 1, float(self.total_steps - 1)
        step = np.minimum(step, end)
        up = self._cos(initial, self.max_lr, step / mid)
        down = self._cos(self.max_lr, low, (step - mid) / (end - mid))
        return np.where(step <= mid, up, down)


#: the schedules by class name (what a saved model names; loading builds only these)
SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstant, CosineDecay, InverseTimeDecay,
                                           OneCycle)}


def is_schedule(value):
    """Whether ``value`` is a :class:`LearningRateSchedule`.

    Parameters
    ----------
    value : object

    Returns
    -------
    bool
    """
    return isinstance(value, LearningRateSchedule)
