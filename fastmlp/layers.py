"""Layer specifications. Layers hold settings only; the maths lives in kernels.

A :class:`~fastmlp.Sequential` compiles its layers into a plan of units
(``fastmlp.model._Unit``): an optional dense product with bias, then an
activation; a dropout unit; or a batch-norm unit. A Dense layer followed by
an Activation layer fuses into one unit.
"""
from typing import Any

from . import _validation
from . import activations as _act
from . import initializers as _init


class Layer:
    """Base class of layer specifications: settings only, no maths."""

    def get_config(self) -> dict[str, Any]:
        return dict(vars(self))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer: ``activation(X @ W + b)``.

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : str or None
        Name from :data:`fastmlp.activations.ACTIVATIONS`; None is the identity.
    use_bias : bool
    kernel_initializer : str
        "auto" (by activation), "glorot_uniform", "glorot_normal", "he_uniform",
        "he_normal", "lecun_uniform", "lecun_normal" or "zeros".
    l2 : float
        L2 penalty ``l2 * sum(W**2)`` added to the loss (Keras' kernel_regularizer).
    """

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: str = "auto", l2: float = 0.0) -> None:
        self.units = _validation.check_positive_int(units, "units")
        self.activation = _act.resolve(activation)[0]
        self.use_bias = bool(use_bias)
        _init.resolve(kernel_initializer, _act.RELU)  # validate the name now
        self.kernel_initializer = kernel_initializer
        self.l2 = _validation.check_nonnegative(l2, "l2")


class Activation(Layer):
    """Activation as a layer of its own: ``Dense(300, use_bias=False)`` then ``Activation("relu")``.

    Parameters
    ----------
    activation : str or None
        Name from :data:`fastmlp.activations.ACTIVATIONS`; None is the identity.
    """

    def __init__(self, activation: str | None) -> None:
        self.activation = _act.resolve(activation)[0]


class Dropout(Layer):
    """Inverted dropout (``torch.nn.Dropout``): during training each element is
    zeroed with probability ``rate`` and the survivors are scaled by
    ``1 / (1 - rate)``; at predict and evaluate the layer is the identity.

    The masks come from a counter-based generator seeded from the model's
    ``seed``, so training is reproducible and the same in every backend.

    Parameters
    ----------
    rate : float in [0, 1)
        Probability of dropping an element; 0 makes the layer a no-op.
    """

    def __init__(self, rate: float = 0.5) -> None:
        self.rate = _validation.check_in_range(rate, "Dropout rate", 0.0, 1.0)


class BatchNorm(Layer):
    """Batch normalization over the features (``torch.nn.BatchNorm1d`` with
    ``affine=True, track_running_stats=True``).

    In training, per feature: ``y = gamma * (x - mean_B) / sqrt(var_B + eps)
    + beta`` with the batch mean and biased batch variance, and the running
    statistics are updated every step: ``running_mean = (1 - momentum) *
    running_mean + momentum * mean_B``, ``running_var`` likewise with the
    unbiased batch variance. At predict and evaluate the running statistics
    are used. gamma starts at 1, beta at 0, running_mean at 0, running_var at
    1. gamma and beta are trained (no L2 applies to them); ``get_weights``
    gives ``[gamma, beta, running_mean, running_var]`` for the layer (Keras'
    BatchNormalization order). Training batches need at least 2 rows.

    Typical use: ``Dense(256, use_bias=False), BatchNorm(), Activation("relu")``.

    Parameters
    ----------
    momentum : float in [0, 1]
    eps : float > 0
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5) -> None:
        momentum = _validation.check_nonnegative(momentum, "BatchNorm momentum")
        if momentum > 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1], got {momentum}.")
        self.momentum = momentum
        self.eps = _validation.check_positive(eps, "BatchNorm eps")


class PReLU(Layer):
    """Parametric ReLU (``torch.nn.PReLU``): ``max(0, x) + alpha * min(0, x)`` with
    ``alpha`` learned, one per feature or (``shared=True``) one for the layer.

    Typical use: after a linear ``Dense`` (``Dense(256), PReLU()``); it may follow
    any layer but cannot be the first or the last one. ``get_weights`` gives its
    alpha (shape ``(features,)``, or ``(1,)`` when shared) in its place in the layer
    order, right after the Dense's W and b. The derivative at 0 is PyTorch's
    (``alpha``: the identity branch is ``x > 0``). Weight decay applies to alpha,
    as PyTorch's optimizers decay every parameter they are given; L2 does not.

    Parameters
    ----------
    init : float
        The initial alpha (finite).
    shared : bool
        One alpha for every feature (``num_parameters=1``).
    """

    def __init__(self, init: float = 0.25, shared: bool = False) -> None:
        self.init = _validation.check_finite(init, "PReLU init")
        self.shared = bool(shared)


class Maxout(Layer):
    """Maxout (Goodfellow et al. 2013): a dense layer of ``units * pieces`` outputs, then the
    maximum over each unit's pieces. The same as PyTorch's ``Linear(fan_in, units * pieces)``
    followed by ``.view(n, units, pieces).max(-1)``: ``get_weights`` gives W of shape
    ``(fan_in, units * pieces)`` and b of ``(units * pieces,)``, the pieces of unit j in
    columns ``j * pieces ... j * pieces + pieces - 1``. The gradient goes to the arg-max
    piece (the first on ties, as ``torch.max``). It cannot be the last layer.

    Parameters
    ----------
    units : int
        Number of outputs.
    pieces : int
        Linear pieces per output (>= 1).
    use_bias : bool
    kernel_initializer : str
        As Dense's; "auto" is He (uniform): maxout is piecewise linear like ReLU.
    """

    def __init__(self, units: int, pieces: int = 2, use_bias: bool = True, kernel_initializer: str = "auto") -> None:
        self.units = _validation.check_positive_int(units, "Maxout units")
        self.pieces = _validation.check_positive_int(pieces, "Maxout pieces")
        self.use_bias = bool(use_bias)
        _init.resolve(kernel_initializer, _act.RELU)  # validate the name now
        self.kernel_initializer = kernel_initializer


class Residual(Layer):
    """A residual block (He et al. 2016): ``activation(F(x) + shortcut(x))``, where F runs
    ``layers`` in order and the shortcut is the identity when F keeps the width of its
    input. When F changes the width, the shortcut is a learned linear projection without
    bias, ``x @ Wp`` (He et al.'s option B), with Wp of shape ``(fan_in, fan_out)``;
    ``get_weights`` gives Wp right after F's weights. Blocks may follow each other and
    mix with plain layers, but not nest; a block cannot be the last layer (the loss is
    computed on the output of a Dense or Activation).

    Parameters
    ----------
    layers : list of Dense / Activation / PReLU / Maxout / BatchNorm / Dropout
        F, at least one layer of which is a Dense or a Maxout (F must be trainable).
    activation : str or None
        Applied to ``F(x) + shortcut(x)``; None is the identity.
    """

    def __init__(self, layers: list[Layer], activation: str | None = None) -> None:
        if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"Residual takes a list of layers (F of F(x) + x), got {layers!r}.")
        layers = list(layers)
        if not layers:
            raise ValueError("Residual needs at least one layer (F of F(x) + x), got an empty list.")
        for layer in layers:
            if isinstance(layer, Residual):
                raise ValueError("Residual blocks do not nest: put the inner block's layers in the outer "
                                 "block, or the blocks one after the other.")
            if not isinstance(layer, (Dense, Activation, PReLU, Maxout, BatchNorm, Dropout)):
                raise TypeError(f"The layers of a Residual block must be fastmlp.Dense, fastmlp.Activation, "
                                f"fastmlp.PReLU, fastmlp.Maxout, fastmlp.BatchNorm or fastmlp.Dropout, "
                                f"got {layer!r}.")
        if not any(isinstance(layer, (Dense, Maxout)) for layer in layers):
            raise ValueError("A Residual block needs a Dense or Maxout layer among its layers (F would have "
                             "no parameters: F(x) + x is then a fixed function of x).")
        self.layers = layers
        self.activation = _act.resolve(activation)[0]

    def get_config(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "activation": self.activation}
