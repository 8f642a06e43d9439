"""Sequential: compile / fit / predict / evaluate / get_weights / set_weights.

The model compiles its layers into a plan of units, each an optional dense
product (W, b) followed by an activation; an Activation layer after a linear
Dense fuses into its unit. All parameters live in one flat vector (each W and
b is a view into it) and all gradients in another, so that an optimizer step
is one kernel call. Per-batch buffers are allocated once per fit and batch
size; a training step only calls backend kernels on them.
"""
import contextlib
import math
import time

import numpy as np

from . import _config, _validation
from . import activations as _act
from . import initializers as _init
from . import losses as _losses
from . import optim as _optim
from .backends import get_backend
from .layers import Activation, Dense


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite during fit."""


class History:
    """What ``fit`` returns: ``history.history`` maps metric names to per-epoch lists."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def _append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class _Unit:
    """One step of the plan: optional dense product + bias, then an activation."""

    def __init__(self, dense, fan_in, fan_out, act, alpha, use_bias=False, init="auto", l2=0.0):
        self.dense, self.fan_in, self.fan_out = dense, fan_in, fan_out
        self.act, self.alpha, self.use_bias, self.init, self.l2 = act, alpha, use_bias, init, l2
        self.w_off = self.b_off = 0
        self.W = self.b = self.dW = self.db = None

    @property
    def n_params(self):
        return (self.fan_in * self.fan_out + self.fan_out * self.use_bias) if self.dense else 0


class _Buffers:
    """Per-batch-size work arrays of the forward and backward passes."""

    def __init__(self, model, n, training):
        dt, units = model.dtype, model._units
        acts = model._train_acts if training else model._infer_acts
        self.n = n
        self.x = np.empty((n, model.input_dim), dtype=dt)
        self.Z, self.A = [], []
        prev = self.x
        for unit, act in zip(units, acts):
            z = np.empty((n, unit.fan_out), dtype=dt) if unit.dense else prev
            a = z if act == _act.IDENTITY else np.empty((n, unit.fan_out), dtype=dt)
            self.Z.append(z)
            self.A.append(a)
            prev = a
        if not training:
            return
        # Gradients at each unit's output; activation derivatives are applied
        # in place, and an activation-only unit passes its buffer down.
        L = len(units)
        self.dA = [None] * L
        self.dA[L - 1] = np.empty((n, units[-1].fan_out), dtype=dt)
        for i in range(L - 1, 0, -1):
            u = units[i]
            self.dA[i - 1] = np.empty((n, u.fan_in), dtype=dt) if u.dense else self.dA[i]
        self.P = np.empty((n, units[-1].fan_out), dtype=dt)
        spec = model._loss
        if spec.labels and model._onehot is False:
            self.y = np.empty(n, dtype=np.int64)
        else:
            self.y = np.empty((n, units[-1].fan_out), dtype=dt)
        self.labels = np.empty(n, dtype=np.int64)
        self.sw = np.empty(n if model._weighted else 0, dtype=dt)


class Sequential:
    """A stack of layers trained with fused native kernels.

    Parameters
    ----------
    layers : list of Dense / Activation
    input_dim : int, optional
        Number of input features; inferred at the first ``fit`` when omitted.
    dtype : {"float32", "float64"}
    seed : int or None
        Seeds weight initialization and shuffling.
    backend : {"auto", "cython", "numba", "reference"} or None
        Kernel backend; None uses ``FASTMLP_BACKEND`` or "auto".
    n_threads : int or None
        Bound on BLAS, Numba and OpenMP threads; None leaves the libraries' defaults.
    """

    def __init__(self, layers, input_dim=None, dtype=_config.DEFAULT_DTYPE, seed=None, backend=None,
                 n_threads=None):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer.")
        for layer in layers:
            if not isinstance(layer, (Dense, Activation)):
                raise TypeError(f"Layers must be fastmlp.Dense or fastmlp.Activation, got {layer!r}.")
        if not any(isinstance(layer, Dense) for layer in layers):
            raise ValueError("Sequential needs at least one Dense layer.")
        self.layers = layers
        self.dtype = _validation.check_dtype(dtype)
        self.seed = seed
        self.backend_name = backend
        self.backend = get_backend(backend)
        self.n_threads = None if n_threads is None else _validation.check_positive_int(n_threads, "n_threads")
        self._rng = np.random.default_rng(seed)
        self._units = None
        self._loss = None
        self.optimizer = None
        self._alpha_per_batch = 0.0  # scikit-learn's L2 scaling: alpha / (2 n_batch) * ||W||^2
        self._infer_cache = None
        self.input_dim = None
        if input_dim is not None:
            self.build(_validation.check_positive_int(input_dim, "input_dim"))

    # ------------------------------------------------------------------ build
    def _plan(self, input_dim):
        units, fan_in = [], input_dim
        for layer in self.layers:
            _, code, alpha = _act.resolve(layer.activation)
            if isinstance(layer, Dense):
                units.append(_Unit(True, fan_in, layer.units, code, alpha, layer.use_bias,
                                   layer.kernel_initializer, layer.l2))
                fan_in = layer.units
            elif units and units[-1].act == _act.IDENTITY and units[-1].dense:
                units[-1].act, units[-1].alpha = code, alpha  # fuse Dense + Activation
            else:
                units.append(_Unit(False, fan_in, fan_in, code, alpha))
        return units

    def build(self, input_dim):
        """Create the weights for ``input_dim`` features (done by ``fit`` when omitted)."""
        self.input_dim = input_dim
        self._units = self._plan(input_dim)
        offset = 0
        for u in self._units:
            u.w_off, u.b_off = offset, offset + u.fan_in * u.fan_out
            offset += u.n_params
        self._params = np.zeros(offset, dtype=self.dtype)
        self._grads = np.zeros(offset, dtype=self.dtype)
        self._bind_views()
        for u in self._units:
            if u.dense:
                u.W[...] = _init.initialize(u.init, u.act, u.fan_in, u.fan_out, self._rng, self.dtype)
        self._set_acts()
        self._infer_cache = None
        return self

    def _bind_views(self):
        empty = np.empty(0, dtype=self.dtype)
        for u in self._units:
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
    def built(self):
        return self._units is not None

    def count_params(self):
        return 0 if not self.built else int(self._params.size)

    def _output_act(self):
        code = _act.IDENTITY
        for layer in self.layers:
            _, c, _ = _act.resolve(layer.activation)
            if isinstance(layer, Dense) or c != _act.IDENTITY:
                code = c
        return code

    # ---------------------------------------------------------------- compile
    def compile(self, loss="cross_entropy", optimizer="adam", clip_norm=None):
        """Choose the loss and the optimizer.

        Parameters
        ----------
        loss : {"cross_entropy", "nll", "binary_cross_entropy", "mse"}
        optimizer : fastmlp.optim.Optimizer or {"sgd", "rmsprop", "adam"}
        clip_norm : float or None
            Rescale the gradient so that its global L2 norm is at most this
            (``torch.nn.utils.clip_grad_norm_``).
        """
        spec = _losses.resolve(loss)
        _losses.check_output(spec, self._output_act())
        n_out = [layer.units for layer in self.layers if isinstance(layer, Dense)][-1]
        if spec.name == "cross_entropy" and n_out < 2:
            raise ValueError(
                "Loss 'cross_entropy' needs an output layer of at least 2 units (one per class); "
                "for two classes with 1 unit use loss='binary_cross_entropy'."
            )
        for layer in self.layers:
            if layer.activation == "step":
                raise ValueError(
                    "The 'step' activation has a derivative of zero everywhere (and none at 0), so no "
                    "gradient flows through it and the model cannot be trained. Use 'sigmoid' or 'tanh' "
                    "for a smooth step, or use 'step' only in a model you do not train."
                )
        self._loss = spec
        self.optimizer = _optim.get(optimizer)
        self.optimizer.state = None
        self.clip_norm = None if clip_norm is None else _validation.check_positive(clip_norm, "clip_norm")
        if self.built:
            self._set_acts()
            self._infer_cache = None
        return self

    # ------------------------------------------------------------- threading
    @contextlib.contextmanager
    def _threads(self, n_threads):
        n = n_threads if n_threads is not None else self.n_threads
        if n is None:
            yield
            return
        from threadpoolctl import threadpool_limits

        self.backend.set_num_threads(n)
        with threadpool_limits(limits=n, user_api="blas"):
            yield

    # -------------------------------------------------------------- targets
    def _check_targets(self, y, n, name="y"):
        spec, k = self._loss, self._units[-1].fan_out
        if spec.labels:
            arr = np.asarray(y) if not isinstance(y, np.ndarray) else y
            if arr.ndim == 2 and arr.shape[1] == k and k > 1:
                if spec.onehot_kernel == "":
                    raise ValueError(f"Loss {spec.name!r} takes integer class labels, not one-hot rows.")
                Y = _validation.check_targets(arr, n, k, self.dtype, name)
                return Y, True
            return _validation.check_labels(arr, n, k, name), False
        return _validation.check_targets(y, n, k, self.dtype, name), None

    def _accuracy_count(self, out, target, onehot, labels_buf):
        """Correct predictions in a batch from the training-time output (logits or log-probs)."""
        spec = self._loss
        if spec.labels:
            truth = target if onehot is False else np.argmax(target, axis=1)
            return float(np.count_nonzero(np.argmax(out, axis=1) == truth))
        if spec.name == "binary_cross_entropy":
            thresh = 0.0 if self._train_acts[-1] == _act.IDENTITY else 0.5
            return float(np.count_nonzero((out > thresh) == (target > 0.5))) / out.shape[1]
        return math.nan

    # ------------------------------------------------------------ one step
    def _forward(self, buf, acts):
        be, a = self.backend, buf.x
        for i, u in enumerate(self._units):
            if u.dense:
                be.dense_forward(a, u.W, u.b, acts[i], u.alpha, buf.Z[i], buf.A[i])
            else:
                be.act_forward(buf.Z[i], acts[i], u.alpha, buf.A[i])
            a = buf.A[i]
        return a

    def _l2_terms(self, n):
        """Per-unit L2 gradient coefficients and the penalty to add to the loss."""
        coefs, penalty = [], 0.0
        for u in self._units:
            c = 2.0 * u.l2 + (self._alpha_per_batch / n if u.dense else 0.0)
            coefs.append(c)
            if c and u.dense:
                penalty += 0.5 * c * self.backend.sum_squares(u.W.reshape(-1))
        return coefs, penalty

    def _loss_and_grads(self, buf, target, sw):
        be, units, acts = self.backend, self._units, self._train_acts
        spec, L = self._loss, len(units) - 1
        kernel = spec.onehot_kernel if self._onehot else spec.kernel
        if spec.fused_act >= 0:
            loss = getattr(be, kernel)(buf.Z[L], target, sw, buf.P, buf.dA[L])
        else:
            loss = getattr(be, kernel)(buf.A[L], target, sw, buf.dA[L])
        coefs, penalty = self._l2_terms(buf.n)
        empty = self._empty2
        for i in range(L, -1, -1):
            u = units[i]
            if acts[i] != _act.IDENTITY and (u.dense or i > 0):
                be.act_backward(buf.Z[i], buf.A[i], buf.dA[i], acts[i], u.alpha, buf.dA[i])
            if u.dense:
                inp = buf.A[i - 1] if i > 0 else buf.x
                dX = buf.dA[i - 1] if i > 0 else empty
                be.dense_backward(inp, u.W, buf.dA[i], coefs[i], u.dW, u.db, dX)
        return loss + penalty

    def _clip(self):
        norm = math.sqrt(self.backend.sum_squares(self._grads))
        if norm > self.clip_norm:
            self.backend.scale_inplace(self._grads, self.clip_norm / (norm + 1e-6))

    # -------------------------------------------------------------------- fit
    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose=1,
            sample_weight=None, n_threads=None, callbacks=None):
        """Train the model.

        Parameters
        ----------
        X : array of shape (n_samples, n_features) or (n_samples, ...) (flattened)
        y : integer labels (n_samples,) or one-hot (n_samples, n_classes) for
            classification losses; (n_samples,) or (n_samples, n_outputs) for mse
        epochs : int
        batch_size : int; ``len(X)`` gives batch gradient descent, 1 stochastic
            gradient descent. A last partial batch is trained, not dropped.
        shuffle : bool
        validation_data : (X_val, y_val), optional; evaluated after every epoch
        verbose : 0 or 1
        sample_weight : (n_samples,), optional; the loss is the weighted mean
        n_threads : int, optional; overrides the model's setting for this fit
        callbacks : list of callables ``f(model, epoch, logs)``; returning True stops training

        Returns
        -------
        History
        """
        if self._loss is None:
            raise RuntimeError("Call model.compile(loss=..., optimizer=...) before fit.")
        epochs = _validation.check_positive_int(epochs, "epochs")
        batch_size = _validation.check_positive_int(batch_size, "batch_size")
        if n_threads is not None:
            _validation.check_positive_int(n_threads, "n_threads")
        X = self._check_X(X)
        n = X.shape[0]
        target, onehot = self._check_targets(y, n)
        sw = _validation.check_sample_weight(sample_weight, n, self.dtype)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a tuple (X_val, y_val).")
            Xv = self._check_X(validation_data[0], "X_val")
            val = (Xv, self._check_targets(validation_data[1], Xv.shape[0], "y_val"))
        self._onehot, self._weighted = onehot, sw.shape[0] > 0

        opt = self.optimizer
        if getattr(opt, "state", None) is None:
            opt.init_state(self._params.size, self.dtype, np)
        history = History()
        batch_size = min(batch_size, n)
        with self._threads(n_threads):
            bufs = {}
            for epoch in range(epochs):
                t0 = time.perf_counter()
                snapshot = self._params.copy()
                logs = self._train_epoch(X, target, sw, batch_size, shuffle, bufs, epoch, snapshot)
                if val is not None:
                    v = self._evaluate_arrays(val[0], *val[1], np.empty(0, self.dtype))
                    logs["val_loss"] = v["loss"]
                    if "accuracy" in v:
                        logs["val_accuracy"] = v["accuracy"]
                logs["time"] = time.perf_counter() - t0
                history._append(epoch, logs)
                if verbose:
                    print(f"Epoch {epoch + 1}/{epochs} - {logs['time']:.2f}s - "
                          + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k != "time"), flush=True)
                if callbacks and any(cb(self, epoch, logs) for cb in callbacks):
                    break
        self.history = history
        return history

    def _train_epoch(self, X, target, sw, batch_size, shuffle, bufs, epoch, snapshot):
        be, n = self.backend, X.shape[0]
        order = self._rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
        total_loss, correct, wsum = 0.0, 0.0, 0.0
        onehot = self._onehot
        for step, start in enumerate(range(0, n, batch_size)):
            idx = order[start:start + batch_size]
            nb = idx.shape[0]
            buf = bufs.get(nb)
            if buf is None:
                buf = bufs[nb] = _Buffers(self, nb, training=True)
            be.gather_rows(X, idx, buf.x)
            if onehot is False:
                np.take(target, idx, out=buf.y)
            else:
                be.gather_rows(target, idx, buf.y)
            if self._weighted:
                np.take(sw, idx, out=buf.sw)
            self._forward(buf, self._train_acts)
            loss = self._loss_and_grads(buf, buf.y, buf.sw)
            if not math.isfinite(loss):
                self._diverged(epoch, step, loss, snapshot)
            if self.clip_norm is not None:
                self._clip()
            self.optimizer.step(be, self._params, self._grads)
            w = float(buf.sw.sum()) if self._weighted else float(nb)
            total_loss += loss * w
            wsum += w
            correct += self._accuracy_count(buf.Z[-1] if self._loss.fused_act >= 0 else buf.A[-1],
                                            buf.y, onehot, buf.labels)
        if not np.isfinite(self._params).all():
            self._diverged(epoch, step, math.nan, snapshot)
        logs = {"loss": total_loss / wsum}
        if self._loss.labels or self._loss.name == "binary_cross_entropy":
            logs["accuracy"] = correct / n
        return logs

    def _diverged(self, epoch, step, loss, snapshot):
        where = "the last finite weights"
        if not np.isfinite(self._params).all():
            self._params[...] = snapshot
            where = f"the weights from the start of epoch {epoch + 1}"
        self._infer_cache = None
        raise TrainingDivergedError(
            f"The loss became {loss} at epoch {epoch + 1}, step {step + 1}. The model keeps {where}. "
            f"Try a lower learning rate (now {self.optimizer.lr:g}), gradient clipping "
            "(compile(clip_norm=1.0)), or scaling the inputs."
        )

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

    def _infer_acts_now(self):
        return self._infer_acts

    def predict(self, X, batch_size=4096, n_threads=None):
        """Model outputs: probabilities for cross_entropy / binary_cross_entropy, else the raw output.

        Returns
        -------
        ndarray of shape (n_samples, n_outputs), of the model's dtype.
        """
        self._require_built()
        X = self._check_X(X)
        n = X.shape[0]
        out = np.empty((n, self._units[-1].fan_out), dtype=self.dtype)
        with self._threads(n_threads):
            for start in range(0, n, batch_size):
                chunk = X[start:start + batch_size]
                buf = self._infer_buffers(chunk.shape[0])
                buf.x[...] = chunk
                out[start:start + chunk.shape[0]] = self._forward(buf, self._infer_acts)
        return out

    def _infer_buffers(self, n):
        if self._infer_cache is None or self._infer_cache.n != n:
            self._infer_cache = _Buffers(self, n, training=False)
        return self._infer_cache

    def evaluate(self, X, y, sample_weight=None, batch_size=4096, n_threads=None):
        """Loss (and accuracy for classification) on a data set: ``{"loss": ..., "accuracy": ...}``."""
        if self._loss is None:
            raise RuntimeError("Call model.compile(...) before evaluate.")
        self._require_built()
        X = self._check_X(X)
        target, onehot = self._check_targets(y, X.shape[0])
        sw = _validation.check_sample_weight(sample_weight, X.shape[0], self.dtype)
        with self._threads(n_threads):
            return self._evaluate_arrays(X, target, onehot, sw, batch_size)

    def _evaluate_arrays(self, X, target, onehot, sw, batch_size=4096):
        saved = getattr(self, "_onehot", None), getattr(self, "_weighted", False)
        self._onehot, self._weighted = onehot, sw.shape[0] > 0
        try:
            n, total, wsum, correct = X.shape[0], 0.0, 0.0, 0.0
            be, spec = self.backend, self._loss
            kernel = getattr(be, spec.onehot_kernel if onehot else spec.kernel)
            L = len(self._units) - 1
            for start in range(0, n, batch_size):
                sl = slice(start, min(start + batch_size, n))
                buf = _Buffers(self, sl.stop - start, training=True)
                buf.x[...] = X[sl]
                t = target[sl]
                w = sw[sl] if self._weighted else sw
                self._forward(buf, self._train_acts)
                if spec.fused_act >= 0:
                    loss = kernel(buf.Z[L], t, w, buf.P, buf.dA[L])
                    out = buf.Z[L]
                else:
                    loss = kernel(buf.A[L], t, w, buf.dA[L])
                    out = buf.A[L]
                bw = float(w.sum()) if self._weighted else float(buf.n)
                total += loss * bw
                wsum += bw
                correct += self._accuracy_count(out, t, onehot, None)
            _, penalty = self._l2_terms(n)
            result = {"loss": total / wsum + penalty}
            if spec.labels or spec.name == "binary_cross_entropy":
                result["accuracy"] = correct / n
            return result
        finally:
            self._onehot, self._weighted = saved

    # ------------------------------------------------------------- weights
    def get_weights(self):
        """Copies of the parameters: ``[W0, b0, W1, b1, ...]``, W of shape (fan_in, fan_out).

        A Dense layer with ``use_bias=False`` contributes its W only.
        """
        self._require_built()
        out = []
        for u in self._units:
            if u.dense:
                out.append(u.W.copy())
                if u.use_bias:
                    out.append(u.b.copy())
        return out

    def set_weights(self, weights):
        """Set the parameters from a list shaped as :meth:`get_weights` returns."""
        weights = list(weights)
        if not self.built:
            if not weights or np.ndim(weights[0]) != 2:
                raise ValueError("set_weights on an unbuilt model needs W0 of shape (input_dim, units) first.")
            self.build(int(np.shape(weights[0])[0]))
        targets = []
        for u in self._units:
            if u.dense:
                targets.append(u.W)
                if u.use_bias:
                    targets.append(u.b)
        if len(weights) != len(targets):
            raise ValueError(f"set_weights expected {len(targets)} arrays, got {len(weights)}.")
        arrays = []
        for i, (dst, src) in enumerate(zip(targets, weights)):
            src = np.asarray(src)
            if src.shape != dst.shape:
                raise ValueError(f"Weight {i} has shape {src.shape}, expected {dst.shape}.")
            if not np.issubdtype(src.dtype, np.number) or not np.isfinite(src).all():
                raise ValueError(f"Weight {i} must be finite numbers.")
            arrays.append(src)
        for dst, src in zip(targets, arrays):
            dst[...] = src
        self._infer_cache = None

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(self.__dict__)
        state["backend"] = None
        state["_infer_cache"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.backend = get_backend(self.backend_name)
        if self._units is not None:
            self._bind_views()

    @property
    def _empty2(self):
        return np.empty((0, 0), dtype=self.dtype)

    def __repr__(self):
        return f"Sequential({self.layers!r}, input_dim={self.input_dim}, dtype={self.dtype.name!r})"
