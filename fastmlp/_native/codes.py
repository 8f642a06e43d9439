"""Every code the layers of fastmlp share, defined once.

The Python layers (``activations``, ``losses``, ``optim``, ``model``), the
reference and Numba backends import these enums; the Cython modules get them
through ``common.pxd``, which ``setup.py`` generates from this file (with
Tempita, from ``common.pxd.tp``), so a compiled build cannot disagree with it
(the Cython backend also compares its build's codes with these at import).
This module imports nothing from fastmlp: ``setup.py`` runs it on its own.

New codes go at the end of their enum: saved models and compiled builds
refer to them by number.
"""
import enum


class Unit(enum.IntEnum):
    """What a unit of the plan is (``plan.UNIT_DTYPE``'s ``kind``)."""

    ACTIVATION = 0  # an activation on its own (after a Dense with its own activation)
    DENSE = 1       # X @ W + b, then the unit's activation
    DROPOUT = 2     # inverted dropout, the identity at inference
    BATCHNORM = 3   # batch normalization over the features
    PRELU = 4       # max(0, x) + alpha * min(0, x), alpha learned per feature or shared
    MAXOUT = 5      # the maximum over each output's ``pieces`` consecutive inputs
    RES_BEGIN = 6   # a residual block's start: the identity, its input is the shortcut's
    RES_ADD = 7     # a residual block's end: act(F(x) + x), or act(F(x) + x @ Wp) with a projection


class Act(enum.IntEnum):
    """Activation codes (``fastmlp.activations`` maps names to them)."""

    IDENTITY = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4
    ELU = 5
    SELU = 6
    SOFTPLUS = 7
    SWISH = 8
    GELU = 9
    STEP = 10
    SOFTMAX = 11      # row-wise: couples the columns of a row
    LOG_SOFTMAX = 12  # row-wise
    EXP = 13          # the inverse of the log link (the Poisson loss's output)


class Loss(enum.IntEnum):
    """Loss kinds of the step loop."""

    CE = 0         # softmax + cross-entropy from logits, integer labels
    CE_ONEHOT = 1  # the same with probability (one-hot) rows
    NLL = 2        # negative log-likelihood after log-softmax, integer labels
    BCE = 3        # sigmoid + binary cross-entropy from logits
    MSE = 4        # mean squared error
    POISSON = 5    # exp(z) - y*z from log-rates


class Opt(enum.IntEnum):
    """Optimizer kinds; NONE computes loss and gradients without an update."""

    NONE = -1
    SGD = 0
    RMSPROP = 1
    ADAM = 2


class Phase(enum.IntEnum):
    """The phases of a training step, as the loop's timer reports them (the
    timer also keeps the time of each phase's matrix products apart)."""

    GATHER = 0       # the batch's rows, labels and weights
    FORWARD = 1      # every unit's forward pass
    LOSS = 2         # the loss and its gradient at the output
    BACKWARD = 3     # the chain of dZ, and each unit's product into the previous dA
    PARAM_GRADS = 4  # dW and db
    CLIP = 5         # the global gradient norm and its clipping
    UPDATE = 6       # the optimizer
    SYNC = 7         # waiting for the other threads of a split loop


class Variant(enum.IntEnum):
    """The training loop's variants (``plan.LoopState.variant``): RULE lets the
    loop's constants decide (policy.pyx); the others force one, where valid
    (fastmlp._planner measures them)."""

    RULE = 0    # the per-instruction-set constants of policy.pyx decide
    SERIAL = 1  # one thread of its own, its products on the BLAS's threads
    SPLIT = 2   # the batch's rows split between threads of its own, one BLAS thread each
    PACKED = 3  # split, float32 dense units of >= pk_min_weights weights on packgemm.h's kernels


# Losses fused with the output activation: they read the output unit's Z.
FUSED_LOSSES = frozenset({Loss.CE, Loss.CE_ONEHOT, Loss.BCE, Loss.POISSON})
# Losses whose targets are integer class labels.
LABEL_LOSSES = frozenset({Loss.CE, Loss.NLL})
# Losses without an accuracy.
REGRESSION_LOSSES = frozenset({Loss.MSE, Loss.POISSON})
# Losses that are means over the columns of a row as well as over the rows.
PER_COLUMN_LOSSES = frozenset({Loss.BCE, Loss.MSE, Loss.POISSON})
ROWWISE_ACTS = frozenset({Act.SOFTMAX, Act.LOG_SOFTMAX})

# The fields of one unit of the plan, in order: a NumPy structured dtype
# (plan.UNIT_DTYPE) and the C struct UnitRec of common.pxd. Every parameter
# has a field of its own.
UNIT_FIELDS = (
    ("kind", "int64"),      # Unit
    ("fan_in", "int64"),
    ("fan_out", "int64"),
    ("act", "int64"),       # Act: the activation after the unit (training: identity before a fused loss)
    ("use_bias", "int64"),  # a dense unit's b exists
    ("w_off", "int64"),     # dense: W's offset in the flat parameters; batch norm: its (4, k) block
    ("b_off", "int64"),     # dense: b's offset
    ("alpha", "float64"),   # the activation's parameter (leaky ReLU's slope, ELU's alpha)
    ("l2", "float64"),      # dense: the L2 coefficient of W in the gradient (2 * Keras' l2 + scikit-learn's)
    ("rate", "float64"),    # dropout: the drop probability, in [0, 1)
    ("eps", "float64"),     # batch norm: added to the variance
    ("momentum", "float64"),  # batch norm: of the running statistics
    ("pieces", "int64"),    # maxout: inputs per output (fan_in == fan_out * pieces)
    ("shared", "int64"),    # prelu: one alpha for every feature (1), or one per feature (0); at w_off
    ("link", "int64"),      # residual: a RES_BEGIN's RES_ADD unit, a RES_ADD's RES_BEGIN unit (indices)
)

# The hyperparameters of the optimizer, by name (plan.HYPER_DTYPE, struct Hyper).
HYPER_FIELDS = (
    ("lr", "float64"),
    ("momentum", "float64"),  # SGD
    ("nesterov", "float64"),  # SGD: 0 or 1
    ("rho", "float64"),       # RMSprop
    ("beta1", "float64"),     # Adam
    ("beta2", "float64"),     # Adam
    ("eps", "float64"),       # RMSprop, Adam
    ("weight_decay", "float64"),  # every optimizer: the decay of every trainable parameter (0 for none)
    ("decoupled", "float64"),     # 0: PyTorch's coupled decay (g + wd * p); 1: AdamW's p *= 1 - lr * wd
)

ENUMS = (Unit, Act, Loss, Opt, Phase, Variant)
