"""MLPClassifier / MLPRegressor: scikit-learn's estimators on top of :class:`~fastmlp.Sequential`.

(About 750 lines: scikit-learn's whole MLP contract, every parameter, solver and fitted
attribute, in one place beside the shared base class of the two estimators.)

The estimators take every constructor parameter of ``sklearn.neural_network``'s
and have no maths of their own: they validate input the way scikit-learn does,
build a ``Sequential`` of Dense layers and let it train, and keep scikit-learn's
bookkeeping (loss curve, ``tol`` / ``n_iter_no_change``, early stopping,
learning-rate schedules, warm start, ``partial_fit``) between epochs.

How the numbers line up with scikit-learn's
-------------------------------------------
* Losses are reported (``loss_``, ``loss_curve_``, ``best_loss_``) in
  scikit-learn's convention: log-loss summed over the labels of a multilabel
  problem, half the squared error for regression (averaged over the
  outputs), the half Poisson deviance ``y*log(y/mu) - y + mu`` (summed over
  the outputs) for ``loss="poisson"``, plus
  ``alpha / (2 * sum of batch weights) * ||W||**2``.
* ``loss="poisson"``: the output layer gives the log-rate ``z`` and
  ``out_activation_`` is "exp", as in scikit-learn; fastmlp's kernel
  minimises ``exp(z) - y*z`` (PyTorch's ``PoissonNLLLoss(log_input=True)``),
  which differs from the deviance only by ``y*log(y) - y``, a constant of the
  data: it is added to the reported loss (the weighted mean of the training
  targets' constant), never to the gradient.
* The gradient is scikit-learn's. fastmlp's losses are means over the output
  columns (PyTorch's ``reduction="mean"``); scikit-learn's gradient is ``c``
  times that, with ``c = n_labels`` (multilabel), ``n_outputs / 2``
  (squared error: scikit-learn's delta ``y_pred - y`` is the gradient of half
  the squared error summed over the outputs) or ``n_outputs`` (Poisson: its
  delta ``exp(z) - y`` is the gradient of the deviance summed over the
  outputs). SGD runs with ``lr * c``, Adam with ``epsilon / c`` (Adam is
  otherwise invariant to the scale) and the L2 term with ``alpha / c``, so
  every update is scikit-learn's update. L-BFGS minimises ``c`` times the loss.
* SGD momentum: scikit-learn keeps the velocity ``v = momentum * v - lr * g``,
  PyTorch (fastmlp) the buffer ``b = momentum * b + g`` with ``v = -lr * b``.
  When a schedule changes the learning rate, the buffer is rescaled by
  ``old_lr / new_lr`` so that the next update is exactly scikit-learn's.
* Adam: scikit-learn adds ``epsilon`` to ``sqrt(v)``, PyTorch to the
  bias-corrected ``sqrt(v / (1 - beta_2**t))``: the effective epsilon differs
  by ``sqrt(1 - beta_2**t)`` (a factor of at most ~30 on 1e-8 in the first
  steps, 1 afterwards).
* ``learning_rate="invscaling"`` is per epoch, as in scikit-learn
  (``lr = learning_rate_init / (t_ + 1) ** power_t`` with ``t_`` the samples
  seen, updated at the end of each epoch).
* Sample weights: scikit-learn divides a batch's L2 term by the batch's
  weight sum; here it is divided by ``batch rows * mean weight`` (exact for
  L-BFGS and full batches, and whenever the weights are all equal).
* The epoch loss is the sample-weighted mean of the batch losses
  (scikit-learn weighs batches by their row count).
"""
import numbers
import os
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
import scipy
import scipy.optimize
import scipy.special
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from . import _validation
from . import activations as _act
from . import initializers as _init
from . import optim as _optim
from .layers import Activation, BatchNorm, Dense, Dropout, Maxout, PReLU
from .model import Sequential, TrainingDivergedError

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.4 / 1.5
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

_STOCHASTIC = ("sgd", "adam")
_OUT_LOSS = {"softmax": "cross_entropy", "logistic": "binary_cross_entropy", "identity": "mse",
             "exp": "poisson"}


def _is_regressor(est):
    return isinstance(est, RegressorMixin)


_DIVERGED = ("Solver produced non-finite parameter weights. The input data may contain large values "
             "and need to be preprocessed.")


def _full_batch_objective(model, X, T, sample_weight):
    """``f(params) -> (loss, gradient)`` of ``model`` on all of (X, T), both float64.

    One forward and backward pass of the model's kernels over the whole data
    set; the model's parameters are set to ``params`` first.
    """
    X = model._check_X(X)
    target, kind = model._check_targets(T, X.shape[0])
    sw = _validation.check_sample_weight(sample_weight, X.shape[0], model.dtype)
    model._loss_kind, model._weighted = kind, sw.shape[0] > 0
    plan = model._make_plan(model._train_acts, X.shape[0], training=True)
    plan.x[...] = X

    def objective(params):
        model._params[...] = params
        model._forward(plan)
        loss = model._loss_and_grads(plan, target, sw)
        return loss, model._grads.astype(np.float64)

    return objective


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share; use those."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [str, list, tuple],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                             Options(numbers.Real, {np.inf})],
        "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
        "dtype": [str, type, np.dtype],
        "backend": [str, None],
        "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left"), None],
        "batch_norm": ["boolean"],
        "init": [str, None],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "diagnostics": ["boolean"],
    }

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        """Every parameter check, before any work (scikit-learn's messages for its own)."""
        if hasattr(self, "_validate_params"):
            self._validate_params()
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        acts = self.activation
        if isinstance(acts, str):
            acts = [acts] * len(sizes)
        elif len(acts) != len(sizes):
            raise ValueError(f"activation has {len(acts)} entries but there are {len(sizes)} hidden layers; "
                             "give one activation per hidden layer, or one name for all.")
        for a in acts:
            if a in ("softmax", "log_softmax", "step"):
                raise ValueError(f"activation {a!r} cannot be a hidden activation; use 'relu', 'tanh', "
                                 "'logistic' or another element-wise activation.")
            if a not in _LAYER_ACTS:
                _act.resolve(a)
        _validation.check_dtype(self.dtype)
        if self.dropout and self.solver == "lbfgs":
            raise ValueError(f"dropout={self.dropout!r} needs a stochastic solver: L-BFGS's line search "
                             "needs a deterministic loss. Use solver='adam' or 'sgd', or dropout=0.0.")
        if self.batch_norm and self.solver == "lbfgs":
            raise ValueError("batch_norm=True needs a stochastic solver: batch normalisation trains on "
                             "mini-batch statistics and keeps running ones, which L-BFGS's full-batch "
                             "objective has no use for. Use solver='adam' or 'sgd', or batch_norm=False.")
        if getattr(self, "diagnostics", False) and self.solver == "lbfgs":
            raise ValueError("diagnostics=True samples the steps of the native training loop, which "
                             "solver='lbfgs' does not run (scipy drives it). Use solver='adam' or 'sgd', or "
                             "diagnostics=False.")
        if self.init is not None:
            _init.resolve(self.init, _act.RELU)  # raises on unknown names, listing the valid ones
        return [int(s) for s in sizes], acts

    def save(self, path: str | os.PathLike, include_optimizer: bool = True) -> None:
        """Write the fitted estimator to one safetensors file (:func:`fastmlp.load_model` reads it).

        Parameters
        ----------
        path : str or os.PathLike
        include_optimizer : bool, default=True
            Also save the optimizer's state and step counter.
        """
        from .saving import save_model
        save_model(self, path, include_optimizer)

    def _loss_scale(self):
        """scikit-learn's gradient over fastmlp's (see the module docstring)."""
        if _is_regressor(self):
            return float(self.n_outputs_) if self.out_activation_ == "exp" else self.n_outputs_ / 2.0
        return float(self.n_outputs_) if self.out_activation_ == "logistic" else 1.0

    # ------------------------------------------------------------------- fit
    def _fit(self, X, y, sample_weight=None, incremental=False, validation_data=None):
        sizes, acts = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            if (sample_weight < 0).any():
                raise ValueError("sample_weight must be >= 0; negative weights are not supported.")
            if (sample_weight == 1).all():
                sample_weight = None  # the same fit, on the unweighted kernels
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if _is_regressor(self) and self.loss == "poisson" and y.size and not (y >= 0).all():
            row, col = np.unravel_index(int(np.argmax(~(y >= 0))), y.shape)
            raise ValueError(f"loss='poisson' needs targets y >= 0 (counts or rates), got {y[row, col].item()!r} at "
                             f"row {row}" + (f", column {col}" if y.shape[1] > 1 else "") + ".")
        val = None
        if validation_data is not None:
            if self.solver == "lbfgs":
                raise ValueError("validation_data is for early stopping, which solver='lbfgs' does not do; "
                                 "use solver='adam' or 'sgd'.")
            if incremental:
                raise ValueError("partial_fit does not take validation_data (no early stopping).")
            val = self._validate_validation_data(validation_data)
        units = [X.shape[1], *sizes, y.shape[1]]
        rs = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, units, acts, rs, early=self.early_stopping or val is not None)
        elif (units != self._units or float(self.dropout or 0.0) != getattr(self, "_model_dropout", 0.0)
              or bool(self.batch_norm) != getattr(self, "_model_batch_norm", False)
              or (self.solver in _STOCHASTIC and not hasattr(self, "loss_curve_"))):
            raise ValueError(
                f"warm_start / partial_fit continue the fitted network of layer sizes {self._units} "
                f"(solver {self._model_solver!r}, dropout {getattr(self, '_model_dropout', 0.0)}, batch_norm "
                f"{getattr(self, '_model_batch_norm', False)}); this call needs {units} with solver "
                f"{self.solver!r}, dropout {float(self.dropout or 0.0)}, batch_norm {bool(self.batch_norm)}. "
                "Set warm_start=False to start again."
            )
        model = self._model
        sw_sum = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        model._alpha_per_batch = self.alpha / self._loss_scale() * X.shape[0] / sw_sum
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, y, sample_weight)
        else:
            self._fit_stochastic(X, y, sample_weight, rs, incremental, val)
        weights = model.get_weights()
        self.coefs_, self.intercepts_, self.batch_norm_params_ = _split_weights(model)
        if not all(np.isfinite(w).all() for w in weights):
            raise ValueError(_DIVERGED)
        return self

    def _initialize(self, y, units, acts, rs, early):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(units)
        self._units, self._model_solver = units, self.solver
        self._model_dropout = float(self.dropout or 0.0)
        self._model_batch_norm = bool(self.batch_norm)
        if _is_regressor(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        init = "auto" if self.init is None else self.init
        layers = []
        for u, a in zip(units[1:-1], acts):
            if a == "maxout":  # Maxout(u, pieces=2) [, BatchNorm]
                layers.append(Maxout(u, _MAXOUT_PIECES, use_bias=not self.batch_norm, kernel_initializer=init))
                layers += [BatchNorm()] if self.batch_norm else []
            elif self.batch_norm:  # Dense (no bias), BatchNorm, activation
                layers += [Dense(u, use_bias=False, kernel_initializer=init), BatchNorm(),
                           PReLU() if a == "prelu" else Activation(a)]
            elif a == "prelu":
                layers += [Dense(u, kernel_initializer=init), PReLU()]
            else:
                layers.append(Dense(u, activation=a, kernel_initializer=init))
            if self.dropout:
                layers.append(Dropout(float(self.dropout)))
        layers.append(Dense(units[-1], kernel_initializer=init))
        weights = self._sklearn_init(units, rs, acts) if self.init is None else None
        self._model = Sequential(layers, input_dim=units[0], dtype=self.dtype,
                                 seed=int(rs.randint(np.iinfo(np.int32).max)),
                                 backend=self.backend, n_threads=self.n_threads)
        if weights is not None:
            self._model.set_weights(weights)
        self._model.compile(loss=_OUT_LOSS[self.out_activation_], optimizer="sgd")
        for name in ("_learning_rate", "loss_curve_", "best_loss_", "validation_scores_",
                     "best_validation_score_", "_no_improvement_count"):
            self.__dict__.pop(name, None)
        self._best_weights = self._model.get_weights()
        if self.solver in _STOCHASTIC:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = None if early else np.inf
            self.validation_scores_ = [] if early else None
            self.best_validation_score_ = -np.inf if early else None

    def _sklearn_init(self, units, rs, acts=()):
        """scikit-learn's initialisation, from the same random state: weights and biases
        uniform in +-sqrt(6 / (fan_in + fan_out)) (sqrt(2 / ...) for 'logistic'). A maxout
        layer draws its units * pieces columns so; a PReLU's alpha starts at 0.25."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights = []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
            act = acts[i] if i < len(units) - 2 else None
            width = fan_out * (_MAXOUT_PIECES if act == "maxout" else 1)
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, width)))
            b = rs.uniform(-bound, bound, width)  # drawn in any case: the same stream
            if self.batch_norm and act is not None:  # no bias; gamma, beta, running mean, var
                weights += [np.ones(fan_out), np.zeros(fan_out), np.zeros(fan_out), np.ones(fan_out)]
            else:
                weights.append(b)
            if act == "prelu":
                weights.append(np.full(fan_out, PReLU().init))
        return weights

    def _targets(self, y):
        """The targets Sequential trains on: class indices (softmax) or float columns."""
        if getattr(self, "out_activation_", None) == "softmax":
            return np.ascontiguousarray(np.argmax(y, axis=1), dtype=np.int64)
        return y

    # --------------------------------------------------------------- L-BFGS
    def diagnose(self, thresholds=None):
        """The findings of the training diagnostics of a fit with ``diagnostics=True``
        (:func:`fastmlp.diagnostics.diagnose` on the fitted network).

        Parameters
        ----------
        thresholds : fastmlp.diagnostics.Thresholds or None

        Returns
        -------
        list of fastmlp.diagnostics.Finding
        """
        check_is_fitted(self)
        from . import diagnostics as _diagnostics
        return _diagnostics.diagnose(self._model, thresholds)

    def _fit_lbfgs(self, X, y, sample_weight):
        model, c = self._model, self._loss_scale()
        objective = _full_batch_objective(model, X, self._targets(y), sample_weight)

        def scaled(params):
            loss, grad = objective(params)
            grad *= c
            return c * loss, grad

        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        options = {"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol}
        if tuple(int(p) for p in scipy.__version__.split(".")[:2]) < (1, 15):
            options["iprint"] = iprint
        with model._threads(None):
            res = scipy.optimize.minimize(scaled, model._params.astype(np.float64), method="L-BFGS-B",
                                          jac=True, options=options)
        model._params[...] = res.x
        model._infer_cache = None
        self.n_iter_ = min(res.nit, self.max_iter)
        if res.status != 0:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={res.status}):\n"
                          f"{res.message}\n\nIncrease the number of iterations to improve the convergence "
                          f"(max_iter={self.max_iter}).", ConvergenceWarning, stacklevel=3)
        sw_sum = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        self._set_loss_constant(y, sample_weight)
        self.loss_ = self._report_loss(float(res.fun), 1.0 / sw_sum)

    def _set_loss_constant(self, y, sample_weight):
        """What scikit-learn's reported loss adds to ``c`` times fastmlp's: for
        Poisson, ``y*log(y) - y`` summed over the outputs, weighted mean over
        the rows (0 otherwise)."""
        self._loss_constant = 0.0
        if getattr(self, "out_activation_", None) == "exp":
            t = scipy.special.xlogy(y, y) - y
            self._loss_constant = float(np.average(t, weights=sample_weight, axis=0).sum())

    def _report_loss(self, scaled_loss, penalty_per_sample):
        """scikit-learn's ``loss_`` from ``c`` times fastmlp's loss.

        They differ for multi-output squared error, where scikit-learn's
        gradient sums the outputs but its loss averages them (the L2 term,
        ``penalty_per_sample * alpha / 2 * ||W||**2`` from the current
        weights, is kept whole), and for Poisson by the deviance's constant.
        """
        k = self.n_outputs_
        if getattr(self, "out_activation_", None) == "exp":
            return scaled_loss + getattr(self, "_loss_constant", 0.0)
        if not _is_regressor(self) or k == 1:
            return scaled_loss
        sq = sum(float(np.dot(w.ravel(), w.ravel())) for w in _split_weights(self._model)[0])
        penalty = 0.5 * self.alpha * penalty_per_sample * sq
        return (scaled_loss - penalty) / k + penalty

    # ------------------------------------------------------------ SGD / Adam
    def _new_optimizer(self):
        c = self._loss_scale()
        if self.solver == "sgd":
            return _optim.SGD(lr=self.learning_rate_init * c, momentum=self.momentum,
                             nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        return _optim.Adam(lr=self.learning_rate_init, beta1=self.beta_1, beta2=self.beta_2,
                          eps=self.epsilon / c)

    def _set_learning_rate(self, lr):
        """Change the learning rate between epochs, keeping scikit-learn's SGD velocity."""
        opt, old = self._model.optimizer, self._learning_rate
        self._learning_rate = lr
        if self.solver != "sgd":
            return
        state = getattr(opt, "state", None)
        if state and self.momentum > 0 and lr > 0:
            self._model.backend.scale_inplace(state["buf"], old / lr)
        opt.lr = lr * self._loss_scale()

    def _fit_stochastic(self, X, y, sample_weight, rs, incremental, val):
        model = self._model
        if not incremental or not hasattr(self, "_learning_rate"):
            model.compile(loss=_OUT_LOSS[self.out_activation_], optimizer=self._new_optimizer(),
                          clip_norm=self.clip_norm)
            self._learning_rate = float(self.learning_rate_init)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early = self.early_stopping or val is not None
        if early and self.validation_scores_ is None:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        if not early and self.best_loss_ is None:
            self.best_loss_, self.validation_scores_, self.best_validation_score_ = np.inf, None, None
        X_tr, y_tr, sw_tr = X, y, sample_weight
        X_val = y_val = sw_val = None
        if val is not None:
            X_val, y_val = val
        elif early:
            stratify = y if (not _is_regressor(self) and self.n_outputs_ == 1) else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            parts = train_test_split(*arrays, random_state=rs, test_size=self.validation_fraction,
                                     stratify=stratify)
            X_tr, X_val, y_tr, y_val = parts[:4]
            if sample_weight is not None:
                sw_tr, sw_val = parts[4], parts[5]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if not _is_regressor(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        n = X_tr.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))
        if sw_tr is not None:
            sw_sum = float(sw_tr.sum())
            model._alpha_per_batch = self.alpha / self._loss_scale() * n / sw_sum
        else:
            sw_sum = float(n)
        model.optimizer.lr = self._learning_rate * (self._loss_scale() if self.solver == "sgd" else 1.0)
        self._set_loss_constant(y_tr, sw_tr)
        n_batches = -(-n // batch_size)
        self.n_iter_ = 0

        def end_of_epoch(model, epoch, logs):
            return self._end_of_epoch(logs["loss"], n, n_batches / sw_sum, early, X_val, y_val, sw_val,
                                      incremental)

        try:
            model.fit(X_tr, self._targets(y_tr), epochs=1 if incremental else self.max_iter,
                      batch_size=batch_size, shuffle=self.shuffle, verbose=0, sample_weight=sw_tr,
                      callbacks=[end_of_epoch], diagnostics=bool(getattr(self, "diagnostics", False)))
        except TrainingDivergedError as exc:
            raise ValueError(_DIVERGED) from exc
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if getattr(model, "diagnostics_", None) is not None:
            self.diagnostics_ = model.diagnostics_
        if early:
            model.set_weights(self._best_weights)

    def _end_of_epoch(self, loss, n, penalty_per_sample, early, X_val, y_val, sw_val, incremental):
        """scikit-learn's end-of-iteration bookkeeping; True stops training."""
        self.n_iter_ += 1
        self.t_ += n
        self.loss_ = self._report_loss(loss * self._loss_scale(), penalty_per_sample)
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        if getattr(self, "_epoch_hook", None) is not None:  # the command line's progress bar
            self._epoch_hook(self.n_iter_, self.loss_)
        if early:
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_weights = self._model.get_weights()
        else:
            if self.loss_ > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_)
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._set_learning_rate(float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t)
        if self._no_improvement_count > self.n_iter_no_change:
            what = "Validation score" if early else "Training loss"
            msg = (f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} "
                   "consecutive epochs.")
            if self.solver == "sgd" and self.learning_rate == "adaptive" and self._learning_rate > 1e-6:
                self._set_learning_rate(self._learning_rate / 5.0)
                self._no_improvement_count = 0
                if self.verbose:
                    print(msg + " Setting learning rate to %f" % self._learning_rate)
            else:
                if self.verbose:
                    print(msg + (" Learning rate too small." if self.learning_rate == "adaptive"
                                 and self.solver == "sgd" else "") + " Stopping.")
                return True
        if not incremental and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=2)
        return False

    # -------------------------------------------------------------- predict
    def _forward(self, X, check_input=True):
        if check_input:
            X = _validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return self._model.predict(X)

    def _score(self, X, y, sample_weight=None):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is "
                                 "not stochastic.")
        return True

    def _validate_validation_data(self, validation_data):
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a tuple (X_val, y_val).")
        X_val, y_val = validation_data
        X_val = _validate_data(self, X_val, dtype=(np.float64, np.float32), reset=False)
        y_val = np.asarray(y_val)
        if y_val.ndim == 2 and y_val.shape[1] == 1:
            y_val = column_or_1d(y_val, warn=True)
        if y_val.shape[0] != X_val.shape[0]:
            raise ValueError(f"validation_data has {X_val.shape[0]} samples in X_val but {y_val.shape[0]} "
                             "in y_val; they must match.")
        if len(y_val) < 2:
            raise ValueError("The validation set is too small: it needs at least 2 samples.")
        return X_val, y_val



_EXTRA_DOC = """
    dtype : {"float32", "float64"}, default="float32"
        Precision of the weights and of training; input is converted to it.
    backend : {"auto", "cython", "numba", "reference"} or None, default=None
        Kernel backend; None uses ``FASTMLP_BACKEND`` or "auto".
    n_threads : int or None, default=None
        Bound on BLAS, Numba and OpenMP threads during fit and predict.
    dropout : float in [0, 1) or None, default=0.0
        Inverted dropout (``torch.nn.Dropout``) after every hidden layer's
        activation while training with solver "sgd" or "adam": each hidden
        activation is zeroed with this probability and the survivors are
        scaled by 1 / (1 - dropout); predict is deterministic (no dropout).
        The masks are drawn from ``random_state``. 0.0 or None: no dropout.
        With solver "lbfgs" a value > 0 raises a ValueError.
    batch_norm : bool, default=False
        Batch normalisation (``torch.nn.BatchNorm1d``, momentum 0.1, eps
        1e-5) after every hidden Dense layer, before its activation (and
        before dropout); the hidden Dense layers then have no bias. Training
        normalises with each mini-batch's statistics and keeps running ones,
        which predict uses. Training batches need at least 2 rows (a
        ``batch_size`` leaving a last batch of 1 row raises a ValueError).
        With solver "lbfgs" True raises a ValueError. warm_start / partial_fit
        refuse a changed value.
    init : str or None, default=None
        None: scikit-learn's initialisation, drawn from ``random_state`` as
        scikit-learn draws it. Otherwise a :mod:`fastmlp.initializers` name
        ("he_uniform", "glorot_normal", ...) for the weights, with zero biases.
    clip_norm : float or None, default=None
        Rescale each step's gradient to this global L2 norm at most (sgd, adam).
    diagnostics : bool, default=False
        Training diagnostics (sgd, adam; with solver "lbfgs" True raises a
        ValueError; :mod:`fastmlp.diagnostics`): after fit
        ``diagnostics_`` holds the model's per-layer, per-epoch statistics and
        ``diagnose()`` its findings, each also warned during fit as a
        ``TrainingDynamicsWarning``.
"""

_PARAMS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        The ith element is the number of neurons in the ith hidden layer.
    activation : str or list of str, default="relu"
        'identity', 'logistic', 'tanh', 'relu' or any fastmlp activation
        ('leaky_relu', 'elu', 'selu', 'gelu', 'swish', 'softplus', ...); a list
        gives one per hidden layer. 'prelu': a linear layer then fastmlp.PReLU (alpha
        learned per unit, from 0.25); 'maxout': fastmlp.Maxout(units, pieces=2), whose
        ``coefs_`` entry has 2 * units columns (the pieces of unit j in columns 2j, 2j + 1).
    solver, alpha, batch_size, learning_rate, learning_rate_init, power_t : as in scikit-learn
    max_iter, shuffle, random_state, tol, verbose, warm_start, momentum : as in scikit-learn
    nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2 : as in scikit-learn
    epsilon, n_iter_no_change, max_fun : as in scikit-learn
        As in scikit-learn, with the same defaults. ``solver="lbfgs"`` runs
        scipy's L-BFGS-B on fastmlp's full-batch loss and gradient.""" + _EXTRA_DOC + """
    Attributes
    ----------
    coefs_ : list of ndarray of shape (fan_in, fan_out), copies of the weights
    intercepts_ : list of ndarray of shape (fan_out,); with batch_norm=True a hidden
        layer's entry is its BatchNorm's beta (the layer's additive term)
    batch_norm_params_ : list of dict, one per hidden layer with batch_norm=True
        (keys "gamma", "beta", "running_mean", "running_var"), else empty
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_, n_iter_,
    n_layers_, n_outputs_, out_activation_, t_, n_features_in_, feature_names_in_
        As in scikit-learn.
"""


_LAYER_ACTS = ("prelu", "maxout")  # hidden "activations" that are layers of their own
_MAXOUT_PIECES = 2


def _split_weights(model):
    """(coefs, intercepts, batch-norm dicts) of a fitted Sequential: the
    Dense weights, each layer's additive term (its bias, or the beta of the
    BatchNorm that follows a bias-free Dense) and the BatchNorm parameters."""
    coefs, intercepts, bns = [], [], []
    for u in model._units:
        if u.dense:
            coefs.append(u.W.copy())
            if u.use_bias:
                intercepts.append(u.b.copy())
        elif u.bn:
            g = u.G.copy()
            bns.append({"gamma": g[0], "beta": g[1], "running_mean": g[2], "running_var": g[3]})
            intercepts.append(g[1].copy())
    return coefs, intercepts, bns


def _store(est, params):
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(est, name, value)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = ("Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by fastmlp.\n"
               "\n    Binary (one logistic output), multiclass (softmax) and multilabel (one logistic\n"
               "    output per label) as in scikit-learn.\n" + _PARAMS_DOC
               + "    classes_ : ndarray of shape (n_classes,)\n")

    def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), activation: str = "relu", *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: int | str = "auto", learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool | int = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 max_fun: int = 15000, dtype: DTypeLike = "float32", backend: str | None = None,
                 n_threads: int | None = None, dropout: float = 0.0, batch_norm: bool = False,
                 init: str | None = None, clip_norm: float | None = None, diagnostics: bool = False) -> None:
        _store(self, locals())

    _score_function = staticmethod(accuracy_score)

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None) -> "MLPClassifier":
        """Fit the model to X (n_samples, n_features) and class labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels) label indicators
        sample_weight : array-like of shape (n_samples,), optional
        validation_data : (X_val, y_val), optional
            Turns on early stopping on this set instead of a held-out
            ``validation_fraction`` (sgd and adam).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, validation_data=validation_data)

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    classes: ArrayLike | None = None) -> "MLPClassifier":
        """One epoch over (X, y); ``classes`` (all labels) is required on the first call.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels) label indicators
        sample_weight : array-like of shape (n_samples,), optional
        classes : array-like of shape (n_classes,), optional
            Every label that any call will see; required on the first call.

        Returns
        -------
        self
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted classes, of shape (n_samples,) or (n_samples, n_labels) for multilabel.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_labels)
        """
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities of shape (n_samples, n_classes), in the order of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """``log(predict_proba(X))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True}


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = ("Multi-layer perceptron regressor: scikit-learn's MLPRegressor, trained by fastmlp.\n"
               + _PARAMS_DOC.replace("    Parameters\n    ----------\n", "    Parameters\n    ----------\n"
                                     "    loss : {'squared_error', 'poisson'}, default='squared_error'\n"
                                     "        Half the squared error, or with 'poisson' the half Poisson deviance on\n"
                                     "        an exp output (``out_activation_`` 'exp'; targets must be >= 0), as\n"
                                     "        scikit-learn.\n", 1))

    _parameter_constraints: dict = {**_BaseMLP._parameter_constraints,
                                    "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss: str = "squared_error", hidden_layer_sizes: Sequence[int] = (100,),
                 activation: str = "relu", *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: int | str = "auto", learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool | int = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 max_fun: int = 15000, dtype: DTypeLike = "float32", backend: str | None = None,
                 n_threads: int | None = None, dropout: float = 0.0, batch_norm: bool = False,
                 init: str | None = None, clip_norm: float | None = None, diagnostics: bool = False) -> None:
        _store(self, locals())

    _score_function = staticmethod(r2_score)

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None) -> "MLPRegressor":
        """Fit the model to X (n_samples, n_features) and targets y (n_samples,) or (n_samples, n_outputs).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), optional
        validation_data : (X_val, y_val), optional
            Turns on early stopping on this set instead of a held-out
            ``validation_fraction`` (sgd and adam).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, validation_data=validation_data)

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=(np.float64, np.float32),
                              reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> "MLPRegressor":
        """One epoch over (X, y).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted values, of shape (n_samples,) or (n_samples, n_outputs).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        check_is_fitted(self)
        return self._predict(X)
