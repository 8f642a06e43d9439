"""Optimizers with PyTorch's update rules, over one flat parameter vector.

A model keeps all its parameters in one contiguous vector (the layers' W
and b are views into it) and all gradients in another, so one optimizer
step is one fused kernel call over the whole network.
"""
import weakref

import numpy as np

from . import _validation
from . import schedules as _schedules
from ._native import plan as _plan
from ._native.codes import Opt


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
    """

    #: names of the state vectors, each the size of the parameter vector
    state_names = ()
    #: the optimizer's code in the native loop (codes.Opt)
    kind = Opt.NONE
    state = None
    _owner = staticmethod(_no_owner)
    lr = _Hyper(_check_lr)
    weight_decay = _Hyper(_validation.check_nonnegative)
    #: AdamW's decoupled decay (p *= 1 - lr * wd) rather than PyTorch's coupled one (g + wd * p)
    decoupled = False

    def __init__(self, lr, learning_rate=None, weight_decay=0.0):
        if learning_rate is not None:  # Keras' spelling
            if lr is not None:
                raise ValueError(f"Pass lr or learning_rate, not both (got lr={lr!r}, learning_rate={learning_rate!r}).")
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

    def init_state(self, n_params, dtype, np=np):
        """Allocate the state vectors (zeros), once per model."""
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
        """The two state vectors the native step loop updates ((0,) where unused)."""
        vecs = [self.state[name] for name in self.state_names]
        empty = np.empty(0, dtype=vecs[0].dtype)
        return (vecs + [empty, empty])[:2]

    def loop_state(self, clip_norm=0.0, seed=0, n_steps=0, clip_value=0.0):
        """The :class:`fastmlp._native.plan.LoopState` of a training call of ``n_steps``
        steps from the current state (with a schedule: the rates of those steps)."""
        lrs = self.lr.rates(self.t, n_steps) if self.scheduled else None
        return _plan.LoopState(self.kind, self.hyper(), *self.states(), self.t, clip_norm, seed, lrs, clip_value)

    def step(self, backend, params, grads):  # pragma: no cover - abstract
        raise NotImplementedError

    def _decay(self, params, grads, lr):
        # step()'s weight decay, on the whole vector (step() knows no layers: the native loop
        # spares batch norm's running statistics, this does not)
        if self.weight_decay:
            if self.decoupled:
                params *= params.dtype.type(1.0 - lr * self.weight_decay)
            else:
                grads += params.dtype.type(self.weight_decay) * params

    def _hypers(self):
        return [name for name in dir(type(self)) if isinstance(getattr(type(self), name), _Hyper)]

    def get_config(self):
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
    """

    state_names = ("buf",)
    kind = Opt.SGD
    momentum = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0, hi_open=False))

    default_lr = 0.01

    def __init__(self, lr=None, momentum=0.0, nesterov=False, learning_rate=None, weight_decay=0.0):
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
    """RMSprop as ``torch.optim.RMSprop`` (alpha=rho, not centered)."""

    state_names = ("sq",)
    kind = Opt.RMSPROP
    rho = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0))
    eps = _Hyper(_validation.check_positive)

    default_lr = 0.01

    def __init__(self, lr=None, rho=0.99, eps=1e-8, learning_rate=None, weight_decay=0.0):
        super().__init__(lr, learning_rate, weight_decay)
        self.rho, self.eps = rho, eps

    def hyper(self):
        return _plan.hyper(lr=self.current_lr(), rho=self.rho, eps=self.eps, weight_decay=self.weight_decay)

    def step(self, backend, params, grads):
        lr, self.t = self.current_lr(), self.t + 1
        self._decay(params, grads, lr)
        backend.rmsprop_update(params, grads, self.state["sq"], lr, self.rho, self.eps)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (bias-corrected, no AMSGrad)."""

    state_names = ("m", "v")
    kind = Opt.ADAM
    beta1 = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0))
    beta2 = _Hyper(lambda v, name: _validation.check_in_range(v, name, 0.0, 1.0))
    eps = _Hyper(_validation.check_positive)

    default_lr = 1e-3

    def __init__(self, lr=None, beta1=0.9, beta2=0.999, eps=1e-8, learning_rate=None, weight_decay=0.0):
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
    trainable parameter first multiplied by ``1 - lr * weight_decay``."""

    decoupled = True

    def __init__(self, lr=None, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, learning_rate=None):
        super().__init__(lr, beta1, beta2, eps, learning_rate, weight_decay)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def get(optimizer):
    """An :class:`Optimizer` from an instance or a name ("sgd", "rmsprop", "adam", "adamw")."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(
        f"Unknown optimizer {optimizer!r}. Pass an instance of fastmlp.optim.SGD, RMSprop, Adam or AdamW, "
        f"or one of the names: {', '.join(sorted(OPTIMIZERS))}."
    )
