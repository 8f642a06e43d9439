"""Optimizers with PyTorch's update rules, over one flat parameter vector.

A model keeps all its parameters in one contiguous vector (the layers' W
and b are views into it) and all gradients in another, so one optimizer
step is one fused kernel call over the whole network.
"""
import weakref
from typing import Any, Union

import numpy as np
from numpy.typing import DTypeLike

from . import _validation
from . import schedules as _schedules
from ._native import plan as _plan
from ._native.codes import Opt

# a learning rate: a number, a schedule (fastmlp.schedules), or None for the class's default
_Rate = Union[float, _schedules.LearningRateSchedule, None]


def _no_owner():
    return None


def _check_lr(value, name):
    """A learning rate: a finite number > 0, or a :mod:`fastmlp.schedules` schedule."""
    if isinstance(value, _schedules.LearningRateSchedule):
        return value
    try:
        return _validation.check_positive(value, name)
    except ValueError as exc:
        raise ValueError(f"{exc} It may also be a schedule of fastmlp.schedules.") from None


class _Hyper:
    """A hyperparameter that is checked whenever it is set (in ``__init__`` and
    after, e.g. ``optimizer.lr = -0.1`` from a callback), so that the native
    loop never reads a value that would train uphill or divide by zero."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__[self.slot]

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = self.check(value, f"{type(obj).__name__}.{self.name}")


class Optimizer:
    """Base class: hyperparameters, per-fit state, and the step.

    An optimizer's state (momentum buffers, moment estimates) belongs to the
    parameters of one model: the model whose ``compile`` it was given owns it,
    and giving the same instance to another model's ``compile`` is an error
    while the first model lives.

    Parameters
    ----------
    lr : float > 0, fastmlp.schedules.LearningRateSchedule or None
        The learning rate, or a schedule of it per step; None takes the class's ``default_lr``.
    learning_rate : float > 0, LearningRateSchedule or None
        Keras' spelling of ``lr`` (give one of the two).
    weight_decay : float >= 0, default=0.0
        Weight decay (coupled, or decoupled for :class:`AdamW`).
    """

    #: names of the state vectors, each the size of the parameter vector
    state_names: tuple[str, ...] = ()
    #: the optimizer's code in the native loop (codes.Opt)
    kind = Opt.NONE
    state: dict[str, np.ndarray] | None = None
    #: the learning rate when none is given
    default_lr: float
    _owner = staticmethod(_no_owner)
    lr = _Hyper(_check_lr)
    weight_decay = _Hyper(_validation.check_nonnegative)
    #: AdamW's decoupled decay (``p *= 1 - lr * wd``) rather than PyTorch's coupled one (``g + wd * p``)
    decoupled = False

    def __init__(self, lr: _Rate, learning_rate: _Rate = None,
                 weight_decay: float = 0.0) -> None:
        if learning_rate is not None:  # Keras' spelling
            if lr is not None:
                raise ValueError(
                    f"Pass lr or learning_rate, not both (got lr={lr!r}, learning_rate={learning_rate!r}).")
            lr = learning_rate
        self.lr = self.default_lr if lr is None else lr
        self.weight_decay = weight_decay
        self.t = 0

    @property
    def scheduled(self):
        """Whether the learning rate is a schedule (:mod:`fastmlp.schedules`)."""
        return isinstance(self.lr, _schedules.LearningRateSchedule)

    def current_lr(self):
        """The rate of the next update: ``lr``, or the schedule's rate at step ``t``."""
        return self.lr(self.t) if self.scheduled else self.lr

    def init_state(self, n_params: int, dtype: DTypeLike, np=np) -> None:
        """Allocate the state vectors (zeros), once per model.

        Parameters
        ----------
        n_params : int
            Size of the model's flat parameter vector.
        dtype : numpy dtype
            The model's dtype.
        np : module, default=numpy
            The array module that allocates them.
        """
        self.t = 0
        self.state = {name: np.zeros(n_params, dtype=dtype) for name in self.state_names}

    def _fits(self, params):
        """Whether the state was made for (a model of) this parameter vector."""
        return self.state is not None and all(
            v.shape == params.shape and v.dtype == params.dtype for v in self.state.values())

    def _bind(self, model):
        """Make ``model`` the owner (see the class docstring); raises ValueError if another live model owns it."""
        owner = self._owner()
        if owner is not None and owner is not model:
            cls = type(self).__name__
            raise ValueError(
                f"This {cls} instance is already the optimizer of another model, and an optimizer's state "
                f"({', '.join(self.state_names) or 'none yet'}) belongs to the parameters of one model. "
                f"Give each model an optimizer of its own, e.g. fastmlp.optim.{cls}(**optimizer.get_config())."
            )
        return weakref.ref(model)

    def hyper(self):  # pragma: no cover - abstract
        """The hyperparameter record of the native step loop (plan.HYPER_DTYPE)."""
        raise NotImplementedError

    def states(self, np=np):
        """The two state vectors the native step loop updates ((0,) where unused).

        Parameters
        ----------
        np : module, default=numpy
            The array module that allocates the empty ones.

        Returns
        -------
        list of two ndarray of shape (n_params,) or (0,)
        """
        vecs = [self.state[name] for name in self.state_names]
        empty = np.empty(0, dtype=vecs[0].dtype)
        return (vecs + [empty, empty])[:2]

    def loop_state(self, clip_norm=0.0, seed=0, n_steps=0, clip_value=0.0, variant=0):
        """The :class:`fastmlp._native.plan.LoopState` of a training call of ``n_steps``
        steps from the current state (with a schedule: the rates of those steps).

        Parameters
        ----------
        clip_norm : float, default=0.0
            Global gradient-norm bound (0: no clipping).
        seed : int, default=0
            Seed of the dropout masks.
        n_steps : int, default=0
            Steps of the call (a schedule's rates are computed for them).
        clip_value : float, default=0.0
            Element-wise gradient bound (0: none).
        variant : int, default=0
            The Cython loop's variant (``fastmlp._native.codes.Variant``; 0 lets its rule decide).
        """
        lrs = self.lr.rates(self.t, n_steps) if self.scheduled else None
        return _plan.LoopState(self.kind, self.hyper(), *self.states(), self.t, clip_norm, seed, lrs, clip_value,
                               variant)

    def step(self, backend, params, grads):  # pragma: no cover - abstract
        """One update of ``params`` in place from ``grads`` (both of shape (n_params,)) with ``backend``'s kernel.

        Parameters
        ----------
        backend : module
            A backend from :func:`fastmlp.get_backend`.
        params, grads : ndarray of shape (n_params,)
            The flat parameter vector (updated in place) and its gradient.
        """
        raise NotImplementedError

    def _decay(self, params, grads, lr):
        # step()'s weight decay, on the whole vector (step() knows no layers: the native loop
        # spares batch norm's running statistics, this does not)
        if self.weight_decay:
            from .backends import reference
            reference.weight_decay(params, grads, [(0, params.shape[0])], self.weight_decay, self.decoupled, lr)

    def _hypers(self):
        return [name for name in dir(type(self)) if isinstance(getattr(type(self), name), _Hyper)]

    def get_config(self) -> dict[str, Any]:
        config = {name: getattr(self, name) for name in self._hypers()}
        config.update({k: v for k, v in vars(self).items()
                       if not k.startswith("_") and k not in ("state", "t")})
        return config

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_owner", None)  # a weak reference; the model that unpickles it binds it again
        return state

    def __setstate__(self, state):
        for name in self._hypers():  # pickles of before the checked hyperparameters
            if name in state:
                state["_" + name] = state.pop(name)
        self.__dict__.update(state)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD`` (dampening 0).

    v = momentum * v + g; p -= lr * (g + momentum * v if nesterov else v).

    Parameters
    ----------
    lr : float > 0, default=0.01
        The learning rate.
    momentum : float in [0, 1], default=0.0
        The velocity's decay; 0 is plain gradient descent.
    nesterov : bool, default=False
        Nesterov's momentum (needs ``momentum > 0``).
    learning_rate : float > 0, optional
        Keras' spelling of ``lr``.
    weight_decay : float >= 0, default=0.0
        PyTorch's coupled weight decay: ``weight_decay * p`` is added to each gradient (batch
        norm's running statistics excepted).
    """

    state_names = ("buf",)
    kind = Opt.SGD
    momentum = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0, hi_open=False))

    default_lr = 0.01

    def __init__(self, lr: _Rate = None, momentum: float = 0.0, nesterov: bool = False,
                 learning_rate: _Rate = None, weight_decay: float = 0.0) -> None:
        super().__init__(lr, learning_rate, weight_decay)
        self.momentum = momentum
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum requires momentum > 0, got momentum=0.0.")
        self.nesterov = bool(nesterov)

    def hyper(self):
        return _plan.hyper(lr=self.current_lr(), momentum=self.momentum, nesterov=float(self.nesterov),
                           weight_decay=self.weight_decay)

    def step(self, backend, params, grads):
        lr, self.t = self.current_lr(), self.t + 1
        self._decay(params, grads, lr)
        backend.sgd_update(params, grads, self.state["buf"], lr, self.momentum, self.nesterov)


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop`` (alpha=rho, not centered).

    sq = rho * sq + (1 - rho) * g**2; p -= lr * g / (sqrt(sq) + eps).

    Parameters
    ----------
    lr : float > 0, default=0.01
        The learning rate.
    rho : float in [0, 1), default=0.99
        Decay of the running mean of squared gradients.
    eps : float > 0, default=1e-8
        Added to the denominator.
    learning_rate : float > 0, optional
        Keras' spelling of ``lr``.
    weight_decay : float >= 0, default=0.0
        PyTorch's coupled weight decay: ``weight_decay * p`` is added to each gradient (batch
        norm's running statistics excepted).
    """

    state_names = ("sq",)
    kind = Opt.RMSPROP
    rho = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0))
    eps = _Hyper(_validation.check_positive)

    default_lr = 0.01

    def __init__(self, lr: _Rate = None, rho: float = 0.99, eps: float = 1e-8,
                 learning_rate: _Rate = None, weight_decay: float = 0.0) -> None:
        super().__init__(lr, learning_rate, weight_decay)
        self.rho, self.eps = rho, eps

    def hyper(self):
        return _plan.hyper(lr=self.current_lr(), rho=self.rho, eps=self.eps, weight_decay=self.weight_decay)

    def step(self, backend, params, grads):
        lr, self.t = self.current_lr(), self.t + 1
        self._decay(params, grads, lr)
        backend.rmsprop_update(params, grads, self.state["sq"], lr, self.rho, self.eps)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (bias-corrected, no AMSGrad).

    Parameters
    ----------
    lr : float > 0, default=1e-3
        The learning rate.
    beta1, beta2 : float in [0, 1), default=0.9 and 0.999
        Decays of the first and second moment estimates.
    eps : float > 0, default=1e-8
        Added to the denominator.
    learning_rate : float > 0, optional
        Keras' spelling of ``lr``.
    weight_decay : float >= 0, default=0.0
        PyTorch's coupled weight decay: ``weight_decay * p`` is added to each gradient (batch
        norm's running statistics excepted).
    """

    state_names = ("m", "v")
    kind = Opt.ADAM
    beta1 = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0))
    beta2 = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0))
    eps = _Hyper(_validation.check_positive)

    default_lr = 1e-3

    def __init__(self, lr: _Rate = None, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 learning_rate: _Rate = None, weight_decay: float = 0.0) -> None:
        super().__init__(lr, learning_rate, weight_decay)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def hyper(self):
        return _plan.hyper(lr=self.current_lr(), beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                           weight_decay=self.weight_decay, decoupled=float(self.decoupled))

    def step(self, backend, params, grads):
        lr, self.t = self.current_lr(), self.t + 1
        self._decay(params, grads, lr)
        backend.adam_update(params, grads, self.state["m"], self.state["v"], lr, self.beta1,
                            self.beta2, self.eps, self.t)


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: Adam with decoupled weight decay, every
    trainable parameter first multiplied by ``1 - lr * weight_decay``.

    Parameters
    ----------
    lr : float > 0 or LearningRateSchedule, default=1e-3
        The learning rate.
    beta1, beta2 : float in [0, 1), default=0.9 and 0.999
        Decays of the first and second moment estimates.
    eps : float > 0, default=1e-8
        Added to the denominator.
    weight_decay : float >= 0, default=0.01
        The decoupled decay's rate.
    learning_rate : float > 0, optional
        Keras' spelling of ``lr``.
    """

    decoupled = True

    def __init__(self, lr: _Rate = None, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01, learning_rate: _Rate = None) -> None:
        super().__init__(lr, beta1, beta2, eps, learning_rate, weight_decay)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def get(optimizer: "Optimizer | str") -> Optimizer:
    """An :class:`Optimizer` from an instance or a name.

    Parameters
    ----------
    optimizer : Optimizer or {"sgd", "rmsprop", "adam", "adamw"}
        An instance is returned as is; a name gives a new instance with the defaults.

    Returns
    -------
    Optimizer
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(
        f"Unknown optimizer {optimizer!r}. Pass an instance of fastmlp.optim.SGD, RMSprop, Adam or AdamW, "
        f"or one of the names: {', '.join(sorted(OPTIMIZERS))}."
    )
