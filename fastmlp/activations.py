"""The activation table: name -> integer code understood by every backend.

Kernels receive an activation as ``(code, alpha)``; ``alpha`` is the
activation's parameter (the negative slope of leaky ReLU, the alpha of ELU)
and is ignored by the others. Derivatives at points where none exists follow
PyTorch: ReLU'(0) = 0, LeakyReLU'(0) = alpha, ELU'(0) = alpha (PyTorch's
``x <= 0`` branch; equal to 1 for the default alpha), SELU'(0) =
scale * alpha, step has no trainable derivative at all.

``exp`` is the inverse of the log link: the output activation of the Poisson
loss, whose output layer produces the log-rate. The codes are the members of
:class:`fastmlp._native.codes.Act`.
"""

from ._native.codes import ROWWISE_ACTS as ROWWISE  # noqa: F401  (the row-wise codes, by this module's names)
from ._native.codes import Act

# The codes, by their names in this module (the enum is their one owner).
IDENTITY = Act.IDENTITY
SIGMOID = Act.SIGMOID
TANH = Act.TANH
RELU = Act.RELU
LEAKY_RELU = Act.LEAKY_RELU
ELU = Act.ELU
SELU = Act.SELU
SOFTPLUS = Act.SOFTPLUS
SWISH = Act.SWISH
GELU = Act.GELU
STEP = Act.STEP
SOFTMAX = Act.SOFTMAX
LOG_SOFTMAX = Act.LOG_SOFTMAX
EXP = Act.EXP

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# name -> (code, default parameter, PyTorch equivalent)
ACTIVATIONS = {
    "identity": (IDENTITY, 0.0, "torch.nn.Identity"),
    "step": (STEP, 0.0, "torch.heaviside(x, 0) (forward only)"),
    "sigmoid": (SIGMOID, 0.0, "torch.nn.Sigmoid"),
    "tanh": (TANH, 0.0, "torch.nn.Tanh"),
    "relu": (RELU, 0.0, "torch.nn.ReLU"),
    "leaky_relu": (LEAKY_RELU, 0.01, "torch.nn.LeakyReLU(0.01)"),
    "elu": (ELU, 1.0, "torch.nn.ELU(1.0)"),
    "selu": (SELU, 0.0, "torch.nn.SELU"),
    "softplus": (SOFTPLUS, 0.0, "torch.nn.Softplus (beta=1, threshold=20)"),
    "swish": (SWISH, 0.0, "torch.nn.SiLU"),
    "gelu": (GELU, 0.0, "torch.nn.GELU (exact erf form)"),
    "softmax": (SOFTMAX, 0.0, "torch.nn.Softmax(dim=1)"),
    "log_softmax": (LOG_SOFTMAX, 0.0, "torch.nn.LogSoftmax(dim=1)"),
    "exp": (EXP, 0.0, "torch.exp"),
}

# scikit-learn's names for the same functions.
ALIASES = {"logistic": "sigmoid", "linear": "identity", "silu": "swish", None: "identity"}

CODE_TO_NAME = {code: name for name, (code, _, _) in ACTIVATIONS.items()}


def resolve(name):
    """Return ``(canonical_name, code, alpha)`` for an activation name.

    Parameters
    ----------
    name : str or None
        A name of :data:`ACTIVATIONS` or of :data:`ALIASES` (None is the identity).

    Returns
    -------
    canonical_name : str
    code : int
        The activation's code (:class:`fastmlp._native.codes.Act`).
    alpha : float
        Its parameter (leaky_relu's slope, elu's alpha; 0 for the others).

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the valid names.
    """
    key = ALIASES.get(name, name)
    if not isinstance(key, str) or key not in ACTIVATIONS:
        valid = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"Unknown activation {name!r}. Valid activations: {valid}.")
    code, alpha, _ = ACTIVATIONS[key]
    return key, code, alpha
