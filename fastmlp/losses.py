"""The loss table: each name -> fused kernel, target kind and output rule.

Two kinds of loss:

* fused with the output activation (``cross_entropy`` with softmax,
  ``binary_cross_entropy`` with sigmoid, ``poisson`` with exp): the output
  layer produces logits (log-rates for ``poisson``) in training; the kernel
  returns the loss and the gradient at the logits (``prediction - targets``)
  in one pass, and ``predict`` applies the activation. The output layer may say ``activation=None`` / "identity" or
  name the activation itself (Keras style): both train the same way.
* applied to the output layer's activations (``nll`` after log-softmax,
  ``mse`` after any activation): the kernel returns the gradient at the
  output, and the output activation's derivative is applied after it.
"""
from dataclasses import dataclass

from . import activations as _act
from ._native.codes import Loss


@dataclass(frozen=True)
class LossSpec:
    """What the model needs to know about a loss (one entry of :data:`LOSSES`).

    Parameters
    ----------
    name : str
        The canonical name.
    kind : int
        The loss code of the step loop (:class:`fastmlp._native.codes.Loss`) for integer
        labels or real targets.
    onehot_kind : int
        The code for one-hot (probability) rows, or -1 if they are not accepted.
    fused_act : int
        The activation fused into the kernel, or -1.
    allowed_out : tuple of int
        The output-layer activation codes the loss accepts (empty: any).
    labels : bool
        Whether targets are integer class labels (or one-hot rows).
    predict_act : int
        The activation ``predict`` applies to the logits (-1: the layer's own).
    """

    name: str
    kind: int            # loss kind of the step loop (codes.Loss) for integer labels / real targets
    onehot_kind: int     # loss kind for one-hot (probability) rows, or -1 if not accepted
    fused_act: int       # activation fused into the kernel, or -1
    allowed_out: tuple   # output-layer activation codes this loss accepts (empty: any)
    labels: bool         # targets are integer class labels (or one-hot rows)
    predict_act: int     # activation predict applies to the logits (-1: the layer's own)


LOSSES = {
    "cross_entropy": LossSpec("cross_entropy", Loss.CE, Loss.CE_ONEHOT,
                              _act.SOFTMAX, (_act.IDENTITY, _act.SOFTMAX), True, _act.SOFTMAX),
    "nll": LossSpec("nll", Loss.NLL, -1, -1, (_act.LOG_SOFTMAX,), True, -1),
    "binary_cross_entropy": LossSpec("binary_cross_entropy", Loss.BCE, -1,
                                     _act.SIGMOID, (_act.IDENTITY, _act.SIGMOID), False, _act.SIGMOID),
    "mse": LossSpec("mse", Loss.MSE, -1, -1, (), False, -1),
    # exp(z) - y*z on the log-rate z (PyTorch's PoissonNLLLoss(log_input=True));
    # predict returns the rate exp(z). Targets are counts / rates >= 0.
    "poisson": LossSpec("poisson", Loss.POISSON, -1, _act.EXP, (_act.IDENTITY, _act.EXP), False,
                        _act.EXP),
}
ALIASES = {
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "squared_error": "mse",
    "mean_squared_error": "mse",
    "poisson_nll": "poisson",
}


def resolve(name):
    """Return the :class:`LossSpec` for a loss name; unknown names list the valid ones.

    Parameters
    ----------
    name : str
        A name of :data:`LOSSES` or of :data:`ALIASES` (Keras' and scikit-learn's names).

    Returns
    -------
    LossSpec
    """
    key = ALIASES.get(name, name) if isinstance(name, str) else None
    if not isinstance(key, str) or key not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Valid losses: {', '.join(sorted(LOSSES))}.")
    return LOSSES[key]


def check_output(spec, out_act):
    """Raise if the output layer's activation does not fit the loss.

    Parameters
    ----------
    spec : LossSpec
    out_act : int
        The output layer's activation code.

    Raises
    ------
    ValueError
        Saying which activations the loss needs and how to end the model.
    """
    if spec.allowed_out and out_act not in spec.allowed_out:
        allowed = " or ".join(repr(_act.CODE_TO_NAME[c]) for c in spec.allowed_out)
        hint = {
            "cross_entropy": "end the model with a linear Dense layer (logits) or activation='softmax'",
            "nll": "end the model with Activation('log_softmax')",
            "binary_cross_entropy": "end the model with a linear Dense layer (logits) or activation='sigmoid'",
            "poisson": "end the model with a linear Dense layer (log-rates) or activation='exp'",
        }[spec.name]
        raise ValueError(
            f"Loss {spec.name!r} needs an output activation of {allowed}, but the model ends in "
            f"{_act.CODE_TO_NAME[out_act]!r}: {hint}."
        )
