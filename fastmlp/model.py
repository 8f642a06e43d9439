"""Sequential: compile / fit / predict / evaluate / get_weights / set_weights.

(About 900 lines: one class, the public model, whose methods share its compiled units and
their plans; the maths and the buffers live in fastmlp._native and the backends.)

The model compiles its layers into a plan of units, each an optional dense
product (W, b) followed by an activation, a dropout unit or a batch-norm
unit; an Activation layer after a linear Dense fuses into its unit. All
parameters live in one flat vector (each W and b is a view into it) and all
gradients in another, so that an optimizer step is one kernel call. A
batch-norm unit's block of the vector is [gamma, beta, running_mean,
running_var]: the running statistics are updated by the training loop and get
a zero gradient, so that the update leaves them as they are, and weight decay
spares them (they are buffers in PyTorch, not parameters). A PReLU unit's
block is its alpha (one per feature, or one); a Maxout layer compiles into a
dense unit of units * pieces outputs and a maxout unit without parameters. A
Residual block compiles into a block-start unit, its layers' units and a
block-end unit, which holds the projection Wp (a dense unit's W without b)
when the block changes the width.
Per-batch buffers are allocated once per fit and batch size; a training step
only calls backend kernels on them.
"""
import contextlib
import functools
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _chunks, _config, _planner, _validation
from . import callbacks as _callbacks
from . import activations as _act
from . import initializers as _init
from . import losses as _losses
from . import optim as _optim
from ._native import plan as _plan
from ._native.codes import FUSED_LOSSES, REGRESSION_LOSSES, Loss, Unit
from .backends import get_backend
from .backends import reference as _ref
from .layers import Activation, BatchNorm, Dense, Dropout, Layer, Maxout, PReLU, Residual


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite during fit."""


class History:
    """What ``fit`` returns: ``history.history`` maps metric names to per-epoch lists.

    Attributes
    ----------
    history : dict of str to list of float
        "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", ... per epoch.
    epoch : list of int
        The epochs trained (0-based; they start at ``initial_epoch``).
    diagnostics : dict or None
        After ``fit(diagnostics=True)``: the model's ``diagnostics_`` (the same dict).
    """

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.diagnostics = None

    def _append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class _Unit:
    """One step of the plan: optional dense product + bias, then an activation;
    or a dropout unit (``rate > 0``: not dense, identity activation)."""

    rate = 0.0  # the drop rate of a dropout unit (class default: older pickles)
    bn = False  # a batch-norm unit: params block [gamma, beta, running_mean, running_var]
    eps = momentum = 0.0
    G: Any = None  # (4, fan_out) views of a batch-norm unit's block, and of its gradient
    dG: Any = None
    layers = ()  # indices of the model's layers this unit runs (summary(); class default: older pickles)
    prelu = shared = False  # a PReLU unit: params block alpha, (1,) when shared else (fan_out,)
    alpha_init = 0.25
    alphas: Any = None  # (n_alpha,) views of a PReLU unit's alphas, and of their gradient
    dalphas: Any = None
    pieces = 0  # a maxout unit (no parameters): fan_in == fan_out * pieces
    init_act = None  # the activation the "auto" initializer goes by (None: act)
    res = 0  # a residual block's start (1) or end (2; dense when it holds a projection W)
    link = 0  # a block start's end unit, a block end's start unit (indices)

    def __init__(self, dense, fan_in, fan_out, act, alpha, use_bias=False, init="auto", l2=0.0):
        self.dense, self.fan_in, self.fan_out = dense, fan_in, fan_out
        self.act, self.alpha, self.use_bias, self.init, self.l2 = act, alpha, use_bias, init, l2
        self.w_off = self.b_off = 0
        self.W = self.b = self.dW = self.db = None

    @property
    def dropout(self):
        return self.rate > 0.0

    @property
    def n_params(self):
        if self.bn:
            return 4 * self.fan_out
        if self.prelu:
            return 1 if self.shared else self.fan_out
        return (self.fan_in * self.fan_out + self.fan_out * self.use_bias) if self.dense else 0


_CONTROLLER = None


def _serialized(method):
    """Run ``method`` under the model's lock: predict and evaluate reuse the model's cached
    inference buffers (its predictor and plan), which two threads must not fill at once."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        lock = self.__dict__.get("_buffers_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_buffers_lock", threading.RLock())  # evaluate calls predict
        with lock:
            return method(self, *args, **kwargs)
    return locked


def _check_schedule(opt, n_steps, block=1 << 20):
    """Raise unless the schedule gives a finite rate >= 0 to each of the next ``n_steps`` steps."""
    for at in range(opt.t, opt.t + n_steps, block):
        rates = opt.lr.rates(at, min(block, opt.t + n_steps - at))
        bad = ~(np.isfinite(rates) & (rates >= 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"The learning-rate schedule {opt.lr!r} gives step {at + i} the rate {rates[i]}; "
                             "a rate must be finite and >= 0. Fix the schedule's arguments.")


def _blas_controller():
    """One threadpoolctl controller for the process: building one scans every
    loaded library (milliseconds), which a bare ``threadpool_limits`` call does
    each time. Made at first use, after the backends have loaded their BLAS."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


# Batches up to this many rows take the per-request predict path.
_SMALL_ROWS = 64
# OpenBLAS runs a GEMM of m*n*k <= 65536 * 4 multiply-adds on one thread
# (interface/gemm.c, SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD).
_BLAS_SERIAL_WORK = 65536 * 4


class Sequential:
    """A stack of layers trained with fused native kernels.

    Parameters
    ----------
    layers : list of Dense / Activation / Dropout / BatchNorm / PReLU / Maxout / Residual
        A Dropout, BatchNorm, PReLU, Maxout or Residual layer cannot be the last one; a PReLU
        layer cannot be the first.
    input_dim : int, optional
        Number of input features; inferred at the first ``fit`` when omitted.
    dtype : {"float32", "float64"}
    seed : int or None
        Seeds weight initialization, shuffling and the dropout masks.
    backend : {"auto", "cython", "numba", "reference"} or None
        Kernel backend; None uses ``FASTMLP_BACKEND`` or "auto".
    n_threads : int or None
        Bound on BLAS, Numba and OpenMP threads; None leaves the libraries' defaults.
    """

    def __init__(self, layers: Iterable[Layer], input_dim: int | None = None,
                 dtype: DTypeLike = _config.DEFAULT_DTYPE, seed: int | None = None, backend: str | None = None,
                 n_threads: int | None = None) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer.")
        for layer in layers:
            if not isinstance(layer, (Dense, Activation, Dropout, BatchNorm, PReLU, Maxout, Residual)):
                raise TypeError(f"Layers must be fastmlp.Dense, fastmlp.Activation, fastmlp.Dropout, "
                                f"fastmlp.BatchNorm, fastmlp.PReLU, fastmlp.Maxout or fastmlp.Residual, "
                                f"got {layer!r}.")
            if isinstance(layer, Residual):  # its list may have changed since the block was made
                Residual(layer.layers, layer.activation)
        if isinstance(layers[-1], Residual):
            raise ValueError("Residual cannot be the last layer (the loss is computed on the output of the last "
                             "Dense or Activation); put a Dense layer after it.")
        if not any(isinstance(layer, Dense) for layer in layers):
            raise ValueError("Sequential needs at least one Dense layer.")
        if isinstance(layers[-1], Dropout):
            raise ValueError("Dropout cannot be the last layer (the loss is computed on the output of "
                             "the last Dense or Activation); put it before a Dense layer.")
        for kind in (BatchNorm, PReLU, Maxout):
            if isinstance(layers[-1], kind):
                raise ValueError(f"{kind.__name__} cannot be the last layer (the loss is computed on the output "
                                 "of the last Dense or Activation); put it before a Dense layer.")
        if isinstance(layers[0], PReLU):
            raise ValueError("PReLU cannot be the first layer: put it after a linear Dense, "
                             "e.g. [Dense(256), PReLU(), ...].")
        self.layers = layers
        self.dtype = _validation.check_dtype(dtype)
        self.seed = seed
        self.backend_name = backend
        self.backend = get_backend(backend)
        self.n_threads = None if n_threads is None else _validation.check_positive_int(n_threads, "n_threads")
        self._rng = np.random.default_rng(seed)
        self._units: list[_Unit] | None = None
        self._loss = None
        self._loss_kind = None
        self._weighted = False
        self.optimizer: _optim.Optimizer | None = None
        self._alpha_per_batch = 0.0  # scikit-learn's L2 scaling: alpha / (2 n_batch) * ||W||^2
        self._infer_cache = self._predictor = None
        self.input_dim: int | None = None
        if input_dim is not None:
            self.build(_validation.check_positive_int(input_dim, "input_dim"))

    # ------------------------------------------------------------------ build
    def _flat_layers(self):
        """The layers with each Residual block followed by its own layers: ``(layer, depth)``
        pairs (depth 1 inside a block). The units' ``layers`` index this list."""
        out = []
        for layer in self.layers:
            out.append((layer, 0))
            if isinstance(layer, Residual):
                out.extend((inner, 1) for inner in layer.layers)
        return out

    def _compile_units(self, input_dim):
        units, fan_in = [], input_dim
        block = None  # (the block's start unit, its flat index, its input width, the Residual)
        flat = self._flat_layers()
        for j, (layer, depth) in enumerate(flat):
            if block is not None and depth == 0:  # the open block ends before this layer
                units.append(self._block_end(block, fan_in))
                units[block[0]].link = len(units) - 1
                fan_in, block = units[-1].fan_out, None
            if isinstance(layer, Residual):
                units.append(_Unit(False, fan_in, fan_in, _act.IDENTITY, 0.0))
                units[-1].res, units[-1].layers = 1, (j,)
                block = (len(units) - 1, j, fan_in, layer)
                continue
            if isinstance(layer, Dropout):
                if layer.rate > 0.0:  # Dropout(0) is the identity: no unit
                    units.append(_Unit(False, fan_in, fan_in, _act.IDENTITY, 0.0))
                    units[-1].rate, units[-1].layers = layer.rate, (j,)
                continue
            if isinstance(layer, BatchNorm):
                units.append(_Unit(False, fan_in, fan_in, _act.IDENTITY, 0.0, use_bias=True))
                units[-1].bn, units[-1].eps, units[-1].momentum = True, layer.eps, layer.momentum
                units[-1].layers = (j,)
                continue
            if isinstance(layer, PReLU):
                if units and units[-1].dense and units[-1].act == _act.IDENTITY and not units[-1].res:
                    units[-1].init_act = _act.LEAKY_RELU  # "auto" is He before a PReLU
                units.append(_Unit(False, fan_in, fan_in, _act.IDENTITY, 0.0))
                units[-1].prelu, units[-1].shared, units[-1].alpha_init = True, layer.shared, layer.init
                units[-1].layers = (j,)
                continue
            if isinstance(layer, Maxout):  # a dense unit of units * pieces outputs, then the maximum
                width = layer.units * layer.pieces
                units.append(_Unit(True, fan_in, width, _act.IDENTITY, 0.0, layer.use_bias,
                                   layer.kernel_initializer))
                units[-1].init_act, units[-1].layers = _act.RELU, (j,)
                units.append(_Unit(False, width, layer.units, _act.IDENTITY, 0.0))
                units[-1].pieces, units[-1].layers = layer.pieces, (j,)
                fan_in = layer.units
                continue
            _, code, alpha = _act.resolve(layer.activation)
            if isinstance(layer, Dense):
                units.append(_Unit(True, fan_in, layer.units, code, alpha, layer.use_bias,
                                   layer.kernel_initializer, layer.l2))
                fan_in = layer.units
            elif units and units[-1].act == _act.IDENTITY and units[-1].dense and not units[-1].res:
                units[-1].act, units[-1].alpha = code, alpha  # fuse Dense + Activation
                units[-1].layers += (j,)
                continue
            else:
                units.append(_Unit(False, fan_in, fan_in, code, alpha))
            units[-1].layers = (j,)
        if block is not None:  # not reached from Sequential (a block is never last), but a block ends
            units.append(self._block_end(block, fan_in))
            units[block[0]].link = len(units) - 1
        return units

    @staticmethod
    def _block_end(block, width):
        """The end unit of a residual block whose layers give ``width`` features: a dense
        unit (the projection Wp, no bias) when that differs from the block's input width."""
        begin, j, d, layer = block
        _, code, alpha = _act.resolve(layer.activation)
        u = _Unit(d != width, d, width, code, alpha, use_bias=False, init="glorot_uniform")
        u.res, u.link, u.layers = 2, begin, (j,)
        return u

    def build(self, input_dim: int) -> "Sequential":
        """Create the weights for ``input_dim`` features (done by ``fit`` when omitted).

        Parameters
        ----------
        input_dim : int
            Number of input features.

        Returns
        -------
        self : Sequential
        """
        self.input_dim = input_dim
        self._units = self._compile_units(input_dim)
        offset = 0
        for u in self._units:
            u.w_off, u.b_off = offset, offset + (u.fan_out if u.bn else u.fan_in * u.fan_out)
            offset += u.n_params
        self._params = np.zeros(offset, dtype=self.dtype)
        self._grads = np.zeros(offset, dtype=self.dtype)
        self._bind_views()
        for u in self._units:
            if u.dense:
                act = u.act if u.init_act is None else u.init_act
                u.W[...] = _init.initialize(u.init, act, u.fan_in, u.fan_out, self._rng, self.dtype)
            elif u.bn:  # gamma 1, beta 0, running mean 0, running var 1
                u.G[0] = 1.0
                u.G[3] = 1.0
            elif u.prelu:
                u.alphas[...] = u.alpha_init
        self._set_acts()
        self._infer_cache = self._predictor = None
        return self

    def _bind_views(self):
        empty = np.empty(0, dtype=self.dtype)
        for u in self._units:
            if u.bn:
                u.G = self._params[u.w_off:u.w_off + 4 * u.fan_out].reshape(4, u.fan_out)
                u.dG = self._grads[u.w_off:u.w_off + 4 * u.fan_out].reshape(4, u.fan_out)
            if u.prelu:
                u.alphas = self._params[u.w_off:u.w_off + u.n_params]
                u.dalphas = self._grads[u.w_off:u.w_off + u.n_params]
            if not u.dense:
                continue
            nw = u.fan_in * u.fan_out
            u.W = self._params[u.w_off:u.w_off + nw].reshape(u.fan_in, u.fan_out)
            u.dW = self._grads[u.w_off:u.w_off + nw].reshape(u.fan_in, u.fan_out)
            u.b = self._params[u.b_off:u.b_off + u.fan_out] if u.use_bias else empty
            u.db = self._grads[u.b_off:u.b_off + u.fan_out] if u.use_bias else empty

    def _set_acts(self):
        """Activation codes per unit for training (output fused into the loss) and inference."""
        acts = [u.act for u in self._units]
        self._train_acts, self._infer_acts = list(acts), list(acts)
        spec = self._loss
        if spec is not None and spec.fused_act >= 0:
            self._train_acts[-1] = _act.IDENTITY
            self._infer_acts[-1] = spec.predict_act

    @property
    def built(self) -> bool:
        """Whether the weights exist (``input_dim`` given, or after the first ``fit``)."""
        return self._units is not None

    @property
    def _has_batchnorm(self):
        return self._units is not None and any(u.bn for u in self._units)

    @property
    def _has_dropout(self):
        return self._units is not None and any(u.dropout for u in self._units)

    def count_params(self) -> int:
        """Number of parameters (0 before the model is built), BatchNorm's running statistics included."""
        return 0 if not self.built else int(self._params.size)

    def summary(self, print_fn=None, line_length=None, *, batch_size=None, n_threads=None):
        """Print a Keras-like table of the layers (output shapes, parameter counts, the
        total, trainable and non-trainable parameters), then the fused native units,
        the dtype, the backend, the compile settings and the loop path the next fit
        would take (:meth:`loop_path`). Returns None, as Keras does; the text is
        ``fastmlp._summary.summary_text(model)``.

        Parameters
        ----------
        print_fn : callable or None
            Called with each line (Keras' rule); None prints.
        line_length : int, optional
            Width of the table (default 78).
        batch_size, n_threads : int, optional
            As :meth:`loop_path`.

        Raises
        ------
        ValueError
            On a model that is not built yet (no ``input_dim``).
        """
        from . import _summary
        if print_fn is not None and not callable(print_fn):
            raise TypeError(f"print_fn must be callable (it is called with each line), got {print_fn!r}.")
        for line in _summary.summary_lines(self, line_length, batch_size, n_threads):
            (print if print_fn is None else print_fn)(line)

    def loop_path(self, batch_size=None, n_threads=None):
        """The training-loop path a ``fit(batch_size=..., n_threads=...)`` would take now,
        without training: a :class:`fastmlp._summary.LoopPath` (backend, thread bound,
        threads of the loop's own, units on packed operands, and a description).

        Parameters
        ----------
        batch_size : int, optional
            Defaults to the last fit's, else 32.
        n_threads : int, optional
            Defaults to the model's thread bound.

        Returns
        -------
        fastmlp._summary.LoopPath
        """
        from . import _summary
        return _summary.loop_path(self, batch_size, n_threads)

    def _output_act(self):
        code = _act.IDENTITY
        for layer in self.layers:
            if isinstance(layer, (Dropout, BatchNorm)):
                continue
            if isinstance(layer, Residual):  # its activation(F(x) + x)
                code = _act.resolve(layer.activation)[1]
                continue
            if isinstance(layer, (PReLU, Maxout)):
                code = _act.IDENTITY
                continue
            _, c, _ = _act.resolve(layer.activation)
            if isinstance(layer, Dense) or c != _act.IDENTITY:
                code = c
        return code

    # ---------------------------------------------------------------- compile
    def compile(self, loss: str = "cross_entropy", optimizer: "str | _optim.Optimizer" = "adam",
                clip_norm: float | None = None, clip_value: float | None = None) -> "Sequential":
        """Choose the loss and the optimizer.

        Parameters
        ----------
        loss : {"cross_entropy", "nll", "binary_cross_entropy", "mse", "poisson"}
            "poisson": the output layer gives log-rates z (linear, or
            activation="exp"), the loss is ``exp(z) - y*z`` (PyTorch's
            ``PoissonNLLLoss(log_input=True)``), targets must be >= 0 and
            ``predict`` returns the rates ``exp(z)``.
        optimizer : fastmlp.optim.Optimizer or {"sgd", "rmsprop", "adam"}
        clip_norm : float or None
            Rescale the gradient so that its global L2 norm is at most this
            (``torch.nn.utils.clip_grad_norm_``).
        clip_value : float or None
            Clamp every gradient element to [-clip_value, clip_value]
            (``torch.nn.utils.clip_grad_value_``), before ``clip_norm`` when both are given.
        """
        spec = _losses.resolve(loss)
        _losses.check_output(spec, self._output_act())
        n_out = [layer.units for layer in self.layers if isinstance(layer, Dense)][-1]
        if spec.name == "cross_entropy" and n_out < 2:
            raise ValueError(
                "Loss 'cross_entropy' needs an output layer of at least 2 units (one per class); "
                "for two classes with 1 unit use loss='binary_cross_entropy'."
            )
        for layer, _ in self._flat_layers():
            if getattr(layer, "activation", None) == "step":
                raise ValueError(
                    "The 'step' activation has a derivative of zero everywhere (and none at 0), so no "
                    "gradient flows through it and the model cannot be trained. Use 'sigmoid' or 'tanh' "
                    "for a smooth step, or use 'step' only in a model you do not train."
                )
        opt = _optim.get(optimizer)
        clip_norm = None if clip_norm is None else _validation.check_positive(clip_norm, "clip_norm")
        clip_value = None if clip_value is None else _validation.check_positive(clip_value, "clip_value")
        owner = opt._bind(self)
        # Everything above only checks (tests/test_compile_errors.py): a compile that
        # raises leaves the previous loss, optimizer (and its state) and clip_norm.
        self._loss, self._loss_kind = spec, spec.kind
        self.optimizer, opt._owner = opt, owner
        opt.state = None
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.__dict__.pop("_diag", None)  # diagnostics start again with the new loss and optimizer
        self.__dict__.pop("diagnostics_", None)
        if self.built:
            self._set_acts()
            self._infer_cache = self._predictor = None
        return self

    # ------------------------------------------------------------- threading
    @contextlib.contextmanager
    def _threads(self, n_threads):
        n = n_threads if n_threads is not None else self.n_threads
        if n is None:
            yield
            return
        self.backend.set_num_threads(n)
        with _blas_controller().limit(limits=n, user_api="blas"):
            yield

    def _largest_product(self):
        """fan_in * fan_out of the widest Dense unit (the largest GEMM per row)."""
        return max([u.fan_in * u.fan_out for u in self._units if u.dense] or [1])

    def _fit_threads(self, n_threads, batch_size):
        """The thread policy of a fit: one thread when every product of a step
        is below BLAS's own threading threshold (a small net would only pay for
        waking and syncing threads: PyTorch issue 144633), else the bound that
        was asked for (None: the libraries' defaults, all cores)."""
        n = n_threads if n_threads is not None else self.n_threads
        work = batch_size * self._largest_product()
        return 1 if work < _BLAS_SERIAL_WORK else n

    # -------------------------------------------------------------- targets
    def _check_targets(self, y, n, name="y"):
        """Validated targets and the loss kind they select (one-hot rows or labels)."""
        spec, k = self._loss, self._units[-1].fan_out
        if spec.labels:
            arr = _validation.as_array(y, name)
            if arr.ndim == 2 and arr.shape[1] == k and k > 1:
                if spec.onehot_kind < 0:
                    raise ValueError(f"Loss {spec.name!r} takes integer class labels, not one-hot rows.")
                target = _validation.check_targets(arr, n, k, self.dtype, name)
                _validation.check_probability_rows(target, name, spec.name)
                return target, spec.onehot_kind
            return _validation.check_labels(arr, n, k, name), spec.kind
        target = _validation.check_targets(y, n, k, self.dtype, name)
        if spec.kind == Loss.POISSON:
            _validation.check_nonnegative_targets(target, name, spec.name)
        elif spec.kind == Loss.BCE:
            _validation.check_binary_targets(target, name, spec.name)
        return target, spec.kind

    # ------------------------------------------------------------ one step
    def _records(self, acts, n, dropout=False):
        """The unit records (fastmlp._native.plan.UNIT_DTYPE) of batches of n rows.

        With ``dropout`` (training steps) a dropout unit is a DROPOUT record;
        otherwise (predict, evaluate, the full-batch objective) it is an
        identity activation unit. A batch-norm unit is always a BATCHNORM
        record; the loops' ``training`` flag selects its batch statistics or
        its running ones. ``acts`` gives each unit's activation (training:
        the identity at an output fused into the loss).
        """
        rec = _plan.records(len(self._units))
        for i, u in enumerate(self._units):
            r = rec[i:i + 1]
            r["fan_in"], r["fan_out"] = u.fan_in, u.fan_out
            if u.bn:
                r["kind"], r["act"], r["use_bias"] = Unit.BATCHNORM, _act.IDENTITY, 1
                r["w_off"], r["b_off"], r["eps"], r["momentum"] = u.w_off, u.b_off, u.eps, u.momentum
            elif u.dropout:
                r["kind"], r["act"] = (Unit.DROPOUT if dropout else Unit.ACTIVATION), _act.IDENTITY
                r["rate"] = u.rate if dropout else 0.0
            elif u.prelu:
                r["kind"], r["act"], r["w_off"], r["shared"] = Unit.PRELU, _act.IDENTITY, u.w_off, u.shared
            elif u.pieces:
                r["kind"], r["act"], r["pieces"] = Unit.MAXOUT, _act.IDENTITY, u.pieces
            elif u.res == 1:
                r["kind"], r["act"], r["link"] = Unit.RES_BEGIN, _act.IDENTITY, u.link
            elif u.res == 2:
                r["kind"], r["act"], r["alpha"], r["link"] = Unit.RES_ADD, acts[i], u.alpha, u.link
                r["w_off"] = u.w_off
            else:
                r["kind"] = Unit.DENSE if u.dense else Unit.ACTIVATION
                r["act"], r["alpha"], r["use_bias"] = acts[i], u.alpha, u.use_bias
                r["w_off"], r["b_off"] = u.w_off, u.b_off
                # Keras' l2 * sum(W**2) plus scikit-learn's alpha / (2 n) * sum(W**2)
                r["l2"] = (2.0 * u.l2 + self._alpha_per_batch / n) if u.dense else 0.0
        return rec

    def _make_plan(self, acts, n, training=False, dropout=False):
        """A :class:`fastmlp._native.plan.Plan` of this model's units for batches of n rows."""
        return _plan.Plan(self._records(acts, n, dropout), self._params, self._grads, n,
                          loss=self._loss_kind if self._loss_kind is not None else Loss.MSE,
                          training=training, weighted=self._weighted)

    def _forward(self, plan):
        return _ref.forward_units(self.backend, plan)

    def _loss_and_grads(self, plan, target, sw):
        """Loss and gradients (into ``self._grads``) after ``_forward(plan)`` of a training plan."""
        y, Y = (target, plan.Y) if target.ndim == 1 else (plan.y, target)
        return _ref.loss_and_grads(self.backend, plan, y, Y, sw)

    # -------------------------------------------------------------------- fit
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None, verbose: int = 1,
            sample_weight: ArrayLike | None = None, n_threads: int | None = None,
            callbacks: Sequence[Any] | None = None, initial_epoch: int = 0,
            validation_split: float = 0.0, class_weight: dict[Any, float] | None = None,
            diagnostics: Any = False, diagnostics_every: int = 16,
            plan: str | None = None) -> History:
        """Train the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, ...)
            Inputs (more dimensions are flattened); converted to the model's dtype once.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Integer labels (n_samples,) or one-hot rows (n_samples, n_classes) for the
            classification losses; (n_samples,) or (n_samples, n_outputs) for mse and poisson
            (counts or rates >= 0).
        epochs : int, default=1
            Index of the last epoch (Keras' rule with ``initial_epoch``).
        batch_size : int, default=32
            ``len(X)`` gives batch gradient descent, 1 stochastic gradient descent. A last
            partial batch is trained, not dropped.
        shuffle : bool, default=True
            Draw a new order of the rows every epoch.
        validation_data : tuple (X_val, y_val), optional
            Evaluated after every epoch ("val_loss", "val_accuracy" in the history).
        verbose : {0, 1, 2}, default=1
            0 is silent; 1 a progress bar per epoch on a terminal or in a notebook when tqdm is
            installed, else a line per epoch; 2 a line per epoch.
        sample_weight : array-like of shape (n_samples,), optional
            The loss is the weighted mean.
        n_threads : int, optional
            Overrides the model's thread bound for this fit.
        callbacks : list of fastmlp.callbacks.Callback or of callables, optional
            Keras' hooks (setting ``model.stop_training = True`` stops after the epoch), or
            functions ``f(model, epoch, logs)`` run after each epoch (returning True stops).
            The native loop runs in chunks of steps: ``on_train_batch_end`` runs after each
            chunk (about every 0.1 s), not after every step. Ctrl-C stops at the end of the
            chunk (about 1 s without batch hooks), keeps the weights of its last step and the
            history of the completed epochs, runs ``on_train_end``, then raises KeyboardInterrupt.
        initial_epoch : int, default=0
            As Keras: the epoch to start from (``fit(epochs=4, initial_epoch=2)`` trains
            epochs 2 and 3). A callback's ``on_train_begin`` may move it by setting
            ``model._initial_epoch`` (:class:`fastmlp.callbacks.BackupAndRestore` does).
        validation_split : float in [0, 1), default=0.0
            As Keras: the last fraction of the rows (taken before shuffling) is held out and
            evaluated after every epoch; ignored when ``validation_data`` is given.
        class_weight : dict {label: weight}, optional
            Classification losses only, as Keras: a training row weighs ``class_weight[label]``
            (times its sample_weight), 1.0 for a label without a key; a one-hot row's label is
            its argmax.
        diagnostics : bool or fastmlp.diagnostics.Thresholds, default=False
            Gather training diagnostics inside the native loop (:mod:`fastmlp.diagnostics`):
            per diagnosed layer and epoch the gradient norm, the update-to-weight ratio,
            the activations' mean and standard deviation, the shares of dead and saturated
            units, into ``model.diagnostics_`` (also ``history.diagnostics``; a later fit
            appends its epochs, ``compile`` starts again), and warn each new finding of
            :meth:`diagnose` as a :class:`fastmlp.diagnostics.TrainingDynamicsWarning`
            (once per kind and layer). A ``Thresholds`` turns them on with its thresholds;
            a :class:`fastmlp.diagnostics.Monitor` callback turns them on too. They do not
            change the training: the weights are those of a fit without them.
        diagnostics_every : int, default=16
            Sample every this many steps of an epoch (its first step always).
        plan : {"auto", "measure", "rule", "serial", "split", "packed"}, optional
            Which variant of the Cython training loop the fit runs on (None: the
            ``FASTMLP_PLAN`` environment variable, else "auto"). "auto" takes the
            decision cached for this machine and fit shape, else times the valid
            variants for a few steps each on a copy of the model's state (at most
            about 2% of the fit's expected time; fits too short to matter are left
            to the rule) and caches the fastest; "measure" times them again; "rule"
            takes the loop's built-in constants; a variant's name forces it (an
            error where this fit cannot run it). ``model.plan_`` says what was
            chosen and why; the cache lives in ``$FASTMLP_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/fastmlp``, else ``~/.cache/fastmlp``.

        Returns
        -------
        History
            Per-epoch logs in ``history.history``.
        """
        if self._loss is None:
            raise RuntimeError("Call model.compile(loss=..., optimizer=...) before fit.")
        with self._unchanged_on_error():
            X, target, kind, sw, val, batch_size, cbs = self._check_fit(
                X, y, epochs, batch_size, validation_data, sample_weight, n_threads, callbacks, initial_epoch,
                validation_split, verbose, class_weight)
            choice, source = _planner.requested(plan)
            _planner.check_request(self, choice, source, batch_size, self._fit_threads(n_threads, batch_size))
            diag = self._diag_setup(diagnostics, diagnostics_every, cbs)
        epochs = int(epochs)
        n, opt = X.shape[0], self.optimizer
        self._loss_kind, self._weighted = kind, sw.shape[0] > 0
        if opt.state is None:
            opt.init_state(self._params.size, self.dtype)
        history = History()
        self.stop_training = False
        self._initial_epoch = int(initial_epoch)
        cbs.set_params({"epochs": epochs, "steps": -(-n // batch_size), "verbose": verbose})
        lines = verbose == 2 or (verbose == 1 and not cbs.has_progress_bar)
        with _chunks.deferred_interrupt() as interrupt:
            cbs.on_train_begin({})
            first_epoch, self._initial_epoch = self._initial_epoch, None
            threads = self._fit_threads(n_threads, batch_size)
            with self._threads(threads):
                fit_steps = (epochs - first_epoch) * (n // batch_size)
                self.plan_ = _planner.decide(self, X, target, sw, batch_size, threads, fit_steps, choice, source,
                                             self.clip_norm or 0.0, getattr(self, "clip_value", None) or 0.0)
                variant = self.plan_["code"]
                # the time per step, from this model's last fit of the same batch size, threads and variant
                paces = self.__dict__.setdefault("_paces", {})
                plans = {}
                pace = paces.setdefault((batch_size, self.backend.NAME, threads, variant), _chunks.Pace())
                if diag is not None:
                    diag.begin(self, X[:batch_size])
                for epoch in range(first_epoch, epochs):
                    cbs.on_epoch_begin(epoch, {})
                    t0 = time.perf_counter()
                    snapshot = self._params.copy()
                    try:
                        logs = self._train_epoch(X, target, sw, batch_size, shuffle, plans, epoch, snapshot, cbs,
                                                 pace, interrupt, diag, variant)
                    except TrainingDivergedError:
                        if diag is not None:
                            diag.warn(self)
                        raise
                    if interrupt.requested:
                        break  # the history keeps the completed epochs only
                    if val is not None:
                        v = self._evaluate_arrays(val[0], val[1], val[2], np.empty(0, self.dtype))
                        logs["val_loss"] = v["loss"]
                        if "accuracy" in v:
                            logs["val_accuracy"] = v["accuracy"]
                    logs["time"] = time.perf_counter() - t0
                    if diag is not None:
                        diag.recorder.end_epoch(getattr(self, "_epochs_done", 0) + len(history.epoch) + 1,
                                                logs["loss"])
                        history.diagnostics = self.diagnostics_
                    cbs.on_epoch_end(epoch, logs)  # before the history, as Keras: a callback may add to logs
                    history._append(epoch, logs)
                    if diag is not None:
                        diag.warn(self)
                    if lines:
                        print(f"Epoch {epoch + 1}/{epochs} - {logs['time']:.2f}s - "
                              + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k != "time"), flush=True)
                    if self.stop_training or interrupt.requested:
                        break
            self.history = history
            self._epochs_done = getattr(self, "_epochs_done", 0) + len(history.epoch)
            cbs.on_train_end(dict(history.history and {k: v[-1] for k, v in history.history.items()}))
        if interrupt.requested:
            raise KeyboardInterrupt
        return history

    def _check_fit(self, X, y, epochs, batch_size, validation_data, sample_weight, n_threads, callbacks,
                   initial_epoch, validation_split, verbose, class_weight=None):
        """Every check of a fit, before any work: (X, target, kind, sw, val, batch_size, callbacks)."""
        epochs = _validation.check_positive_int(epochs, "epochs")
        initial_epoch = _validation.check_nonnegative_int(initial_epoch, "initial_epoch")
        if initial_epoch >= epochs:
            raise ValueError(f"initial_epoch ({initial_epoch}) must be below epochs ({epochs}): epochs is the "
                             "index of the last epoch, as in Keras, not a count of epochs to add.")
        if isinstance(verbose, bool) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0 (silent), 1 (a progress bar on a terminal, else a line per "
                             f"epoch) or 2 (a line per epoch), got {verbose!r}.")
        cbs = _callbacks.CallbackList(callbacks, self)
        if verbose == 1 and not cbs.has_progress_bar and _callbacks.ProgressBar.available():
            cbs.append(_callbacks.ProgressBar())
        split = _validation.check_in_range(validation_split, "validation_split", 0.0, 1.0)
        batch_size = _validation.check_positive_int(batch_size, "batch_size")
        if n_threads is not None:
            _validation.check_positive_int(n_threads, "n_threads")
        X = self._check_X(X)
        n = X.shape[0]
        target, kind = self._check_targets(y, n)
        sw = _validation.check_sample_weight(sample_weight, n, self.dtype)
        cw = None if class_weight is None else _validation.check_class_weight(
            class_weight, self._units[-1].fan_out, self._loss.name, self._loss.kind in REGRESSION_LOSSES)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a tuple (X_val, y_val).")
            Xv = self._check_X(validation_data[0], "X_val")
            val = (Xv, *self._check_targets(validation_data[1], Xv.shape[0], "y_val"))
        elif split > 0:
            cut = int(n * (1.0 - split))  # Keras' split point
            if cut == 0:
                raise ValueError(f"validation_split={validation_split} of {n} rows leaves no rows to train on; "
                                 "choose a smaller fraction or pass validation_data.")
            val = (X[cut:], target[cut:], kind)
            X, target, n = X[:cut], target[:cut], cut
            sw = sw[:cut] if sw.shape[0] else sw
            if sw.shape[0] and not sw.sum() > 0:
                raise ValueError("sample_weight is 0 on every training row left by validation_split; at least "
                                 "one of them needs a positive weight.")
        if cw is not None:  # the training rows' weights, on the sample_weight path
            sw = _validation.class_weight_rows(cw, target, sw, self.dtype)
        batch_size = min(batch_size, n)
        self._fit_batch_size = batch_size  # loop_path()'s default (the call restores it on an error)
        if self._has_batchnorm and (batch_size < 2 or n % batch_size == 1):
            raise ValueError(
                "Expected more than 1 value per channel when training: BatchNorm needs training batches "
                f"of at least 2 rows, but {n} sample(s) with batch_size={batch_size} give a batch of 1 row"
                + (" (the last, partial one); choose another batch_size." if batch_size >= 2 else "."))
        opt = self.optimizer
        if opt.scheduled:  # every rate of this fit, before its first step
            _check_schedule(opt, (epochs - initial_epoch) * -(-n // batch_size))
        if opt.state is not None and not opt._fits(self._params):
            raise ValueError(
                f"The optimizer's state ({', '.join(opt.state_names)}) was made for another model: it has "
                f"{next(iter(opt.state.values())).size} values, this model {self._params.size} parameters of "
                f"{self.dtype}. Compile this model with an optimizer of its own.")
        return X, target, kind, sw, val, batch_size, cbs

    @contextlib.contextmanager
    def _unchanged_on_error(self):
        """A call whose checks fail leaves the model as it was: its attributes
        (a model built by the call is unbuilt again) and its random state."""
        saved, rng = dict(self.__dict__), self._rng.bit_generator.state
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            self._rng.bit_generator.state = rng
            raise

    def diagnose(self, thresholds: Any = None) -> list:
        """The findings of the training diagnostics (:func:`fastmlp.diagnostics.diagnose`).

        Parameters
        ----------
        thresholds : fastmlp.diagnostics.Thresholds or None
            None: those of the last fit with diagnostics, else the defaults.

        Returns
        -------
        list of fastmlp.diagnostics.Finding
        """
        from . import diagnostics as _diagnostics
        return _diagnostics.diagnose(self, thresholds)

    def _diag_setup(self, diagnostics, every, cbs):
        """The diagnostics of a fit (fastmlp.diagnostics._FitDiagnostics), or None; checks first."""
        from . import diagnostics as _diagnostics
        return _diagnostics._fit_diagnostics(self, diagnostics, every, cbs)

    def _train_epoch(self, X, target, sw, batch_size, shuffle, plans, epoch, snapshot, cbs, pace, interrupt,
                     diag=None, variant=0):
        n = X.shape[0]
        order = self._rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
        # a fresh base seed of the dropout masks per epoch (drawn only when
        # there is dropout, so that models without it keep their streams)
        seed = int(self._rng.integers(0, 2**64, dtype=np.uint64)) if self._has_dropout else 0
        n_full, rem = divmod(n, batch_size)
        losses = np.empty(n_full + (rem > 0), dtype=np.float64)
        correct = np.empty_like(losses)
        if sw.shape[0]:
            weights = np.add.reduceat(sw[order], np.arange(0, n, batch_size))
        else:
            weights = np.full(len(losses), float(batch_size))
            if rem:
                weights[-1] = rem
        opt, clip = self.optimizer, self.clip_norm or 0.0
        clip_value = getattr(self, "clip_value", None) or 0.0  # older pickles have none
        done_steps = 0
        for start, nb, steps in ((0, batch_size, n_full), (n_full * batch_size, rem, 1)):
            if nb == 0 or steps == 0:
                continue
            plan = plans.get(nb)
            if plan is None:
                plan = plans[nb] = self._make_plan(self._train_acts, nb, training=True, dropout=True)
            chunk = _chunks.CHUNK_SECONDS if cbs.batch_hooks else _chunks.QUIET_CHUNK_SECONDS
            s, paced = 0, nb == batch_size  # the partial batch: one step of another size, not timed
            while s < steps:  # chunks of about _chunks.CHUNK_SECONDS
                k, first = pace.next(steps - s, chunk) if paced else steps - s, start // batch_size + s
                loop = opt.loop_state(clip, seed, k, clip_value, variant)
                if diag is not None:
                    loop.diagnose_steps(plan, k, diag.recorder.every, first)
                t0 = time.perf_counter()
                done = self.backend.train_steps(plan, loop, X, target, sw, order, start + s * nb, k,
                                                losses[first:], correct[first:])
                if paced:
                    pace.record(done, time.perf_counter() - t0)
                if diag is not None:
                    diag.recorder.add(loop, done, nb)
                if done < k and diag is not None:
                    diag.recorder.locate_non_finite(plan, seed, opt.t + done, X, target, sw, order,
                                                    start + (s + done) * nb, epoch, first + done)
                opt.t += done
                if done < k:
                    self._diverged(epoch, first + done, losses[first + done], snapshot, X)
                s += done
                done_steps = first + done
                if cbs.batch_hooks:
                    logs = self._epoch_logs(losses, correct, weights, done_steps, min(done_steps * batch_size, n))
                    cbs.on_train_batch_end(done_steps - 1, logs)
                if interrupt.requested:
                    return None
        if not np.isfinite(self._params).all():
            if diag is not None:
                diag.recorder.locate_non_finite_params(self, epoch, len(losses) - 1)
            self._diverged(epoch, len(losses) - 1, math.nan, snapshot, X)
        return self._epoch_logs(losses, correct, weights, len(losses), n)

    def _epoch_logs(self, losses, correct, weights, steps, rows):
        """The mean loss (and accuracy) of the first ``steps`` steps of an epoch (``rows``
        rows), as Keras' logs."""
        w = weights[:steps]
        logs = {"loss": float(np.dot(losses[:steps], w) / w.sum())}
        if self._loss_kind not in REGRESSION_LOSSES:
            logs["accuracy"] = float(correct[:steps].sum()) / rows
        return logs

    def _diverged(self, epoch, step, loss, snapshot, X):
        """Keep the last weights if they are finite and their predictions on the
        training data are too (finite weights of 1e22 can give NaN logits), else
        the weights from the start of the epoch; the message says which."""
        self._infer_cache = self._predictor = None
        where = "the last finite weights (their predictions on X are finite)"
        if not (np.isfinite(self._params).all() and self._finite_outputs(X)):
            self._params[...] = snapshot
            self._infer_cache = self._predictor = None
            where = f"the weights from the start of epoch {epoch + 1}"
            if not self._finite_outputs(X):
                where += (", but even their predictions on X are not finite: X holds values up to "
                          f"{float(np.abs(X).max()):.3g}; scale the inputs")
        raise TrainingDivergedError(
            f"The loss became {loss} at epoch {epoch + 1}, step {step + 1}. The model keeps {where}. "
            f"Try a lower learning rate (now {self.optimizer.current_lr():g}), gradient clipping "
            "(compile(clip_norm=1.0)), or scaling the inputs."
        )

    def _finite_outputs(self, X, batch_size=4096):
        """Whether the model's outputs on the validated X are all finite."""
        with np.errstate(all="ignore"):
            for start in range(0, X.shape[0], batch_size):
                chunk = X[start:start + batch_size]
                plan = self._infer_plan(chunk.shape[0])
                plan.x[...] = chunk
                if not _validation.all_finite(self._forward(plan)):
                    return False
        return True

    # ---------------------------------------------------------- inference
    def _check_X(self, X, name="X"):
        X = _validation.check_X(X, self.dtype, name)
        if not self.built:
            self.build(X.shape[1])
        elif X.shape[1] != self.input_dim:
            raise ValueError(
                f"{name} has {X.shape[1]} features, but the model was built for {self.input_dim}."
            )
        return X

    def _require_built(self):
        if not self.built:
            raise RuntimeError("The model has no weights yet: pass input_dim=... or call fit first.")

    @_serialized
    def predict(self, X: ArrayLike, batch_size: int = 4096, n_threads: int | None = None) -> np.ndarray:
        """Model outputs: probabilities for cross_entropy / binary_cross_entropy, rates exp(z) for
        poisson, else the raw output.

        A C-contiguous batch of up to 64 rows of the model's dtype takes the per-request path:
        one native call with no allocation but the output.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, ...) (flattened)
        batch_size : int, default=4096
            Rows per forward pass (bounds the work buffers' memory).
        n_threads : int, optional
            Overrides the model's thread bound for this call.

        Returns
        -------
        ndarray of shape (n_samples, n_outputs), of the model's dtype.
        """
        out = self._predict_small(X, batch_size, n_threads)
        if out is not None:  # finite: the predictor returns None on a non-finite output
            return out
        batch_size = _validation.check_positive_int(batch_size, "batch_size")
        if n_threads is not None:
            _validation.check_positive_int(n_threads, "n_threads")
        self._require_built()
        X = self._check_X(X)
        n = X.shape[0]
        # converted small inputs take the same path, so give the same numbers
        out = self._predict_small(X, n, None)
        if out is not None:
            return self._check_outputs(out, X)
        out = np.empty((n, self._units[-1].fan_out), dtype=self.dtype)  # type: ignore[index]  # built: checked above
        with self._threads(n_threads), np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n, batch_size):
                chunk = X[start:start + batch_size]
                plan = self._infer_plan(chunk.shape[0])
                plan.x[...] = chunk
                out[start:start + chunk.shape[0]] = self._forward(plan)
        return self._check_outputs(out, X)

    def _check_outputs(self, out, X):
        return _validation.check_outputs(out, X, self.dtype)

    def _predict_small(self, X, batch_size, n_threads):
        """The per-request path: one native call for a C-contiguous batch of up
        to ``_SMALL_ROWS`` rows of the model's dtype, or None to take the general
        path (which also raises the errors). Its products are below OpenBLAS's
        own threading threshold and its loops are serial, so no thread limits
        are set (each threadpoolctl call costs milliseconds)."""
        if not (type(X) is np.ndarray and X.ndim == 2 and X.dtype == self.dtype
                and self._units is not None and X.flags.c_contiguous
                and 1 <= X.shape[0] <= _SMALL_ROWS and X.shape[1] == self.input_dim
                and type(batch_size) is int and batch_size >= X.shape[0]
                and (n_threads is None or (type(n_threads) is int and n_threads >= 1))):
            return None
        p = self._predictor
        if p is None:
            # as many rows as keep every product on one BLAS thread (none: False)
            rows = min(_SMALL_ROWS, (_BLAS_SERIAL_WORK - 1) // self._largest_product())
            if rows < 1:
                p = self._predictor = False
            else:
                p = self._predictor = self.backend.make_predictor(self._make_plan(self._infer_acts, rows))
                self._predictor_rows = rows
        if p is False or X.shape[0] > self._predictor_rows:
            return None
        out = np.empty((X.shape[0], self._units[-1].fan_out), dtype=self.dtype)
        return out if p.run(X, out) else None

    def _infer_plan(self, n):
        if self._infer_cache is None or self._infer_cache.rows != n:
            self._infer_cache = self._make_plan(self._infer_acts, n)
        return self._infer_cache

    @_serialized
    def evaluate(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None, batch_size: int = 4096,
                 n_threads: int | None = None) -> dict[str, float]:
        """Loss (and accuracy for classification) on a data set.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets as for :meth:`fit`.
        sample_weight : array-like of shape (n_samples,), optional
            The loss is the weighted mean.
        batch_size : int, default=4096
            Rows per forward pass.
        n_threads : int, optional
            Overrides the model's thread bound for this call.

        Returns
        -------
        dict
            ``{"loss": float, "accuracy": float}``; no "accuracy" for mse and poisson. The loss
            includes the L2 penalty, as in training.
        """
        if self._loss is None:
            raise RuntimeError("Call model.compile(...) before evaluate.")
        batch_size = _validation.check_positive_int(batch_size, "batch_size")
        self._require_built()
        X = self._check_X(X)
        target, kind = self._check_targets(y, X.shape[0])
        sw = _validation.check_sample_weight(sample_weight, X.shape[0], self.dtype)
        with self._threads(n_threads), np.errstate(over="ignore", invalid="ignore"):
            result = self._evaluate_arrays(X, target, kind, sw, batch_size)
        if not all(math.isfinite(v) for v in result.values()):
            self._check_outputs(self.predict(X, batch_size), X)
            _validation.raise_nonfinite_loss(result["loss"], target, self.dtype)
        return result

    def _evaluate_arrays(self, X, target, kind, sw, batch_size=4096):
        n = X.shape[0]
        saved = self._weighted, self._loss_kind
        self._weighted, self._loss_kind = sw.shape[0] > 0, kind
        try:
            total, wsum, correct = 0.0, 0.0, 0.0
            fused = self._loss_kind in FUSED_LOSSES
            for start in range(0, n, batch_size):
                sl = slice(start, min(start + batch_size, n))
                plan = self._make_plan(self._train_acts, sl.stop - start, training=True)
                plan.units["l2"] = 0.0  # the penalty is added once below, not per chunk
                plan.x[...] = X[sl]
                y, Y = (target[sl], plan.Y) if target.ndim == 1 else (plan.y, target[sl])
                w = sw[sl] if self._weighted else sw
                self._forward(plan)
                loss = _ref.loss_and_grads(self.backend, plan, y, Y, w)
                bw = float(w.sum()) if self._weighted else float(plan.rows)
                total += loss * bw
                wsum += bw
                correct += _ref.count_correct(plan.Z[-1] if fused else plan.A[-1], y, Y, self._loss_kind)
            result = {"loss": total / wsum + self._penalty(n)}
            if self._loss_kind not in REGRESSION_LOSSES:
                result["accuracy"] = correct / n
            return result
        finally:
            self._weighted, self._loss_kind = saved

    def _penalty(self, n):
        """The L2 penalty the training loss carries for batches of n rows."""
        l2 = self._records(self._train_acts, n)["l2"]
        return sum(0.5 * l2[i] * float(np.dot(u.W.ravel(), u.W.ravel()))
                   for i, u in enumerate(self._units) if u.dense and l2[i])

    # ------------------------------------------------------------- weights
    def _weight_views(self):
        out = []
        for u in self._units:
            if u.bn:
                out.extend(u.G)  # gamma, beta, running_mean, running_var
            if u.prelu:
                out.append(u.alphas)
            if u.dense:
                out.append(u.W)
                if u.use_bias:
                    out.append(u.b)
        return out

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the parameters: ``[W0, b0, W1, b1, ...]``, W of shape (fan_in, fan_out).

        A Dense layer with ``use_bias=False`` contributes its W only; a
        BatchNorm layer contributes ``gamma, beta, running_mean, running_var``
        (each of shape (features,), Keras' BatchNormalization order) in its place
        in the layer order; a PReLU layer its alpha, ``(features,)`` or ``(1,)``
        when shared; a Maxout layer W ``(fan_in, units * pieces)`` and b.
        """
        self._require_built()
        return [w.copy() for w in self._weight_views()]

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        """Set the parameters from a list shaped as :meth:`get_weights` returns.

        Parameters
        ----------
        weights : list of array-like
            ``[W0, b0, W1, b1, ...]`` with W of shape (fan_in, fan_out) (BatchNorm layers:
            gamma, beta, running_mean, running_var of shape (features,)); cast to the model's
            dtype. An unbuilt model is built from W0's shape. On an error nothing is changed.
        """
        with self._unchanged_on_error():
            self._set_weights(list(weights))

    def _set_weights(self, weights):
        if not self.built:
            first_bn = isinstance(next(layer for layer, _ in self._flat_layers()
                                       if not isinstance(layer, (Dropout, Residual))), BatchNorm)
            if not weights or np.ndim(weights[0]) != (1 if first_bn else 2):
                raise ValueError("set_weights on an unbuilt model needs W0 of shape (input_dim, units) first "
                                 "(gamma of shape (input_dim,) when the first layer is a BatchNorm).")
            self.build(int(np.shape(weights[0])[0]))
        targets = self._weight_views()
        if len(weights) != len(targets):
            raise ValueError(f"set_weights expected {len(targets)} arrays, got {len(weights)}.")
        arrays = []
        for i, (dst, src) in enumerate(zip(targets, weights)):
            src = _validation.as_array(src, f"Weight {i}")
            if src.shape != dst.shape:
                raise ValueError(f"Weight {i} has shape {src.shape}, expected {dst.shape}.")
            if np.iscomplexobj(src):
                raise TypeError(f"Weight {i} is complex ({src.dtype}); weights are real numbers: pass "
                                "np.real(w) if the imaginary parts are meant to be dropped.")
            if not np.issubdtype(src.dtype, np.number) or not np.isfinite(src).all():
                raise ValueError(f"Weight {i} must be finite numbers.")
            if src.ndim and src.size:
                src = _validation.cast(src, self.dtype, f"Weight {i}")
            arrays.append(src)
        for dst, src in zip(targets, arrays):
            dst[...] = src
        self._infer_cache = self._predictor = None

    def save(self, path: str | os.PathLike, include_optimizer: bool = True) -> None:
        """Write the model to one safetensors file; see :func:`fastmlp.load_model` and
        :mod:`fastmlp.saving`.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (atomically: a temporary file, then a rename).
        include_optimizer : bool, default=True
            Also save the optimizer's state and step counter, so that training resumes exactly.
        """
        from .saving import save_model
        save_model(self, path, include_optimizer)

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(self.__dict__)
        state["backend"] = None
        state["_infer_cache"] = state["_predictor"] = None
        state.pop("_paces", None)  # timings of this machine
        state.pop("_buffers_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_predictor", None)
        self.backend = get_backend(self.backend_name)
        if self._units is not None:
            self._bind_views()
        if self.optimizer is not None:  # a copy's optimizer is the copy's own
            self.optimizer._owner = weakref.ref(self)

    def __repr__(self):
        return f"Sequential({self.layers!r}, input_dim={self.input_dim}, dtype={self.dtype.name!r})"
