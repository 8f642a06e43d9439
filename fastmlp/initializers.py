"""Weight initializers: Glorot/Xavier, He, LeCun (uniform and normal), zeros, and "auto".

Weights have shape ``(fan_in, fan_out)``. Draws are made in float64 from a
``numpy.random.Generator`` and cast to the model's dtype, so a seed gives the
same network in float32 and float64 up to rounding. The normal variants are
plain (not truncated) normals, as ``torch.nn.init``'s.
"""
import math

import numpy as np

from . import activations as _act


def _uniform(limit):
    return lambda rng, fan_in, fan_out: rng.uniform(-limit(fan_in, fan_out), limit(fan_in, fan_out),
                                                     size=(fan_in, fan_out))


def _normal(std):
    return lambda rng, fan_in, fan_out: rng.normal(0.0, std(fan_in, fan_out), size=(fan_in, fan_out))


INITIALIZERS = {
    "glorot_uniform": _uniform(lambda i, o: math.sqrt(6.0 / (i + o))),
    "glorot_normal": _normal(lambda i, o: math.sqrt(2.0 / (i + o))),
    "he_uniform": _uniform(lambda i, o: math.sqrt(6.0 / i)),
    "he_normal": _normal(lambda i, o: math.sqrt(2.0 / i)),
    "lecun_uniform": _uniform(lambda i, o: math.sqrt(3.0 / i)),
    "lecun_normal": _normal(lambda i, o: math.sqrt(1.0 / i)),
    "zeros": lambda rng, fan_in, fan_out: np.zeros((fan_in, fan_out)),
}
ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal", "kaiming_uniform": "he_uniform",
           "kaiming_normal": "he_normal"}

_HE_FAMILY = {_act.RELU, _act.LEAKY_RELU, _act.ELU, _act.GELU, _act.SWISH, _act.SOFTPLUS}


def auto_initializer(act_code):
    """The "auto" rule: He for the ReLU family, LeCun (normal) for SELU,
    Glorot for sigmoid, tanh, softmax, identity, exp and the rest.

    Parameters
    ----------
    act_code : int
        The activation's code (:class:`fastmlp._native.codes.Act`).

    Returns
    -------
    str
    """
    if act_code in _HE_FAMILY:
        return "he_uniform"
    if act_code == _act.SELU:
        return "lecun_normal"
    return "glorot_uniform"


def resolve(name, act_code):
    """Return the canonical initializer name for ``name`` ("auto" resolved).

    Parameters
    ----------
    name : str
        A name of :data:`INITIALIZERS`, an alias ("xavier_uniform", "kaiming_normal", ...) or "auto".
    act_code : int
        The layer's activation code, for "auto".
    """
    if name == "auto":
        return auto_initializer(act_code)
    key = ALIASES.get(name, name)
    if not isinstance(key, str) or key not in INITIALIZERS:
        valid = ", ".join(sorted([*INITIALIZERS, "auto"]))
        raise ValueError(f"Unknown initializer {name!r}. Valid initializers: {valid}.")
    return key


def initialize(name, act_code, fan_in, fan_out, rng, dtype):
    """Draw a ``(fan_in, fan_out)`` weight matrix of ``dtype``.

    Parameters
    ----------
    name : str
        As for :func:`resolve`.
    act_code : int
        The layer's activation code, for "auto".
    fan_in, fan_out : int
        The layer's inputs and outputs.
    rng : numpy.random.Generator
    dtype : numpy dtype

    Returns
    -------
    ndarray of shape (fan_in, fan_out)
    """
    return INITIALIZERS[resolve(name, act_code)](rng, fan_in, fan_out).astype(dtype)
