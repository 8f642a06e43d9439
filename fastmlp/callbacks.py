"""Callbacks: Keras' hook names, called by ``Sequential.fit``.

A callback subclasses :class:`Callback` and overrides the hooks it needs;
``fit`` sets ``callback.model`` before training. Setting
``model.stop_training = True`` from any hook stops after the current epoch.
A plain function ``f(model, epoch, logs)`` still works: it runs at the end of
every epoch, and returning True stops training.

Granularity of ``on_train_batch_end``: the native loop runs a part of an
epoch in one call, with no Python between its steps: a chunk of steps of
about 0.1 s (``fastmlp._chunks.CHUNK_SECONDS``), sized from the time per step
of the previous chunk. The hook runs after each chunk, not after every step,
with ``batch`` the index of the chunk's last step and ``logs`` the mean loss
(and accuracy) of the epoch so far, as Keras reports them. A fit whose
callbacks have no batch hook calls none, and its chunks last about 1 s
(``QUIET_CHUNK_SECONDS``), the granularity of Ctrl-C there.
"""
import csv
import math
import numbers
import os
import sys
import warnings

from . import _validation


class Callback:
    """Base class of the callbacks that ``Sequential.fit`` calls.

    Hooks (all optional; ``logs`` is a dict, never None):
    ``on_train_begin(logs)``, ``on_train_end(logs)``,
    ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)`` (logs: loss,
    accuracy, val_loss, val_accuracy, time of the epoch), and
    ``on_train_batch_end(batch, logs)`` (logs: the loss of that step).
    """

    model = None
    #: set by fit before training, as Keras: {"epochs": ..., "steps": steps per epoch, "verbose": ...}
    params = None

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        """Keras' hook: ``fit`` passes ``{"epochs", "steps", "verbose"}`` before training."""
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


def _overrides(cb, hook):
    method = getattr(cb, hook)
    return getattr(method, "__func__", method) is not getattr(Callback, hook)


class _Function(Callback):
    """A plain ``f(model, epoch, logs)``: runs at each epoch's end; True stops training."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, epoch, logs=None):
        if self.fn(self.model, epoch, logs):
            self.model.stop_training = True


class CallbackList:
    """The callbacks of one fit, called in the order given (``fit`` builds it).

    Parameters
    ----------
    callbacks : list of Callback or of functions ``f(model, epoch, logs)``, or None
        A function runs at the end of every epoch; returning True stops training.
    model : Sequential
        The model being trained; each callback's ``model`` is set to it.
    """

    def __init__(self, callbacks, model):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback) or callable(callbacks) and not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError("callbacks must be a list of fastmlp.callbacks.Callback instances or of functions "
                            f"f(model, epoch, logs), got {type(callbacks).__name__}.")
        items = []
        for i, cb in enumerate(callbacks):
            if isinstance(cb, Callback):
                items.append(cb)
            elif callable(cb):
                items.append(_Function(cb))
            else:
                raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}: pass a fastmlp.callbacks.Callback "
                                "instance or a function f(model, epoch, logs).")
        self.model, self.callbacks, self.batch_hooks = model, [], []
        for cb in items:
            self.append(cb)

    def append(self, cb):
        """Add a callback (``fit`` adds the progress bar this way); its ``model`` is set."""
        cb.set_model(self.model)
        self.callbacks.append(cb)
        self.batch_hooks = [cb for cb in self.callbacks if _overrides(cb, "on_train_batch_end")]

    @property
    def has_progress_bar(self):
        return any(isinstance(cb, ProgressBar) for cb in self.callbacks)

    def set_params(self, params):
        """Pass ``params`` to every callback's ``set_params``."""
        for cb in self.callbacks:
            cb.set_params(params)

    def __bool__(self):
        return bool(self.callbacks)

    def on_train_begin(self, logs):
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch, logs):
        for cb in self.batch_hooks:
            cb.on_train_batch_end(batch, logs)


def _monitor_op(monitor, mode, who):
    """(better(a, b), mode) for a monitored value: Keras' rule for mode="auto"."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}.")
    if mode == "auto":
        name = monitor[4:] if monitor.startswith("val_") else monitor
        if name == "loss":
            mode = "min"
        elif name == "accuracy":
            mode = "max"
        else:
            raise ValueError(f"{who}: cannot tell whether {monitor!r} should go down or up; pass mode='min' "
                             "or mode='max'.")
    return (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b), mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (Keras' EarlyStopping).

    An epoch improves when its value beats the best by more than ``min_delta``;
    with ``baseline``, the wait restarts only on values that also beat it.
    ``restore_best_weights=True`` sets the weights of the best epoch at the end
    of training (those of the first monitored epoch if none improved).
    Epochs before ``start_from_epoch`` are not monitored.

    Parameters
    ----------
    monitor : str, default="val_loss"
        The log to watch: "loss", "accuracy", "val_loss", "val_accuracy", or a key that another
        callback puts in the logs.
    min_delta : float, default=0.0
        The smallest change that counts as an improvement (its sign is ignored).
    patience : int, default=0
        Epochs without improvement after which training stops.
    mode : {"auto", "min", "max"}, default="auto"
        Which way is better; "auto" is "max" for accuracies, "min" otherwise.
    baseline : float or None, default=None
        A value to beat: the wait restarts only on epochs that also beat it.
    restore_best_weights : bool, default=False
        At the end of training, set the weights of the best epoch.
    start_from_epoch : int, default=0
        Epochs before this one are not monitored (a warm-up).
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        self.monitor = str(monitor)
        self._better, self.mode = _monitor_op(self.monitor, mode, "EarlyStopping")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or not math.isfinite(min_delta):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number, got {min_delta!r}.")
        self.min_delta = abs(float(min_delta))
        self.patience = _validation.check_nonnegative_int(patience, "patience")
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _validation.check_nonnegative_int(start_from_epoch, "start_from_epoch")

    def _improves(self, value, reference):
        delta = self.min_delta if self.mode == "max" else -self.min_delta
        return self._better(value - delta, reference)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"EarlyStopping monitors {self.monitor!r}, which this fit does not report (it reports "
                          f"{', '.join(sorted(logs or {}))}); pass validation_data for val_ metrics.", stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class TerminateOnNaN(Callback):
    """Stop training when a step's loss is NaN or infinite (Keras' TerminateOnNaN).

    fastmlp's loop already stops at a non-finite loss and raises
    :class:`fastmlp.model.TrainingDivergedError`; this callback is for losses
    that other callbacks put in the logs, and for Keras code that uses it. It takes no
    parameters."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from functions (Keras' LambdaCallback): ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_begin(logs)``, ``on_train_end(logs)``,
    ``on_train_batch_end(batch, logs)``; the ones not given do nothing.

    Parameters
    ----------
    on_epoch_begin, on_epoch_end : callable ``f(epoch, logs)`` or None
        Called at the start and at the end of every epoch.
    on_train_begin, on_train_end : callable ``f(logs)`` or None
        Called once, before the first epoch and after the last.
    on_train_batch_end : callable ``f(batch, logs)`` or None
        Called after each native call of the loop (see the module docstring).
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_end=None):
        given = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_train_begin=on_train_begin,
                     on_train_end=on_train_end, on_train_batch_end=on_train_batch_end)
        for name, fn in given.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be a function, got {type(fn).__name__}.")
            setattr(self, name, fn)


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file (Keras' CSVLogger): a column
    ``epoch``, then the logs' keys in sorted order. ``append=True`` adds to an
    existing file (its header is kept).

    Parameters
    ----------
    filename : str or os.PathLike
        The CSV file to write.
    separator : str, default=","
        The field delimiter.
    append : bool, default=False
        Add to an existing file instead of overwriting it.
    """

    def __init__(self, filename, separator=",", append=False):
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise ValueError(f"CSVLogger: filename must be a path, got {filename!r}.")
        self.filename, self.sep, self.append = os.fspath(filename), str(separator), bool(append)
        self._file = self._writer = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer, self._keys, self._header = csv.writer(self._file, delimiter=self.sep), None, exists

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            if not self._header:
                self._writer.writerow(["epoch", *self._keys])
        self._writer.writerow([epoch, *(logs.get(k, "NA") for k in self._keys)])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


def _refuse_schedule(callback):
    # Keras refuses to set a rate that a LearningRateSchedule owns; so do we, before the first epoch
    opt = callback.model.optimizer
    if opt.scheduled:
        raise TypeError(f"{type(callback).__name__} sets optimizer.lr from epoch to epoch, but this optimizer's "
                        f"rate is the schedule {opt.lr!r}, which sets it every step. Use one or the other: "
                        "a number as lr with this callback, or the schedule alone.")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved
    for ``patience`` epochs (Keras' ReduceLROnPlateau): an improvement beats the
    best by more than ``min_delta``; after a reduction, ``cooldown`` epochs pass
    before the wait counts again; the rate never goes below ``min_lr``. Each
    epoch's logs get its ``learning_rate``.

    Parameters
    ----------
    monitor : str, default="val_loss"
        The log to watch.
    factor : float in (0, 1), default=0.1
        The new rate is ``rate * factor``.
    patience : int, default=10
        Epochs without improvement before a reduction.
    mode : {"auto", "min", "max"}, default="auto"
        Which way is better; "auto" is "max" when the monitor's name has "acc" in it.
    min_delta : float, default=1e-4
        The smallest change that counts as an improvement.
    cooldown : int, default=0
        Epochs after a reduction during which the wait does not count.
    min_lr : float, default=0.0
        The rate's floor.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4, cooldown=0,
                 min_lr=0.0):
        self.monitor = str(monitor)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'auto', 'min' or 'max', got {mode!r}.")
        # Keras' auto rule here: a monitor with "acc" in its name goes up, any other down
        self.mode = mode if mode != "auto" else ("max" if "acc" in self.monitor else "min")
        self.factor = _validation.check_in_range(factor, "ReduceLROnPlateau: factor", 0.0, 1.0)
        if self.factor == 0.0:
            raise ValueError("ReduceLROnPlateau: factor must be in (0, 1): a rate of 0 does not train.")
        self.patience = _validation.check_nonnegative_int(patience, "patience")
        self.min_delta = _validation.check_nonnegative(min_delta, "min_delta")
        self.cooldown = _validation.check_nonnegative_int(cooldown, "cooldown")
        self.min_lr = _validation.check_nonnegative(min_lr, "min_lr")

    def _improves(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, logs=None):
        _refuse_schedule(self)
        self.wait, self.cooldown_counter = 0, 0
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        opt = self.model.optimizer
        logs["learning_rate"] = opt.lr
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau monitors {self.monitor!r}, which this fit does not report (it "
                          f"reports {', '.join(sorted(logs))}).", stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and opt.lr > self.min_lr:
                opt.lr = max(opt.lr * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)``
    (Keras' LearningRateScheduler; ``schedule(epoch)`` also works). The new rate
    is checked: a schedule that returns 0, a negative number or NaN stops the fit
    with a ValueError that names it. Each epoch's logs get its ``learning_rate``.

    Parameters
    ----------
    schedule : callable ``schedule(epoch, lr) -> float`` or ``schedule(epoch) -> float``
        The rate of each epoch (0-based), from the current one.
    """

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be a function, got {type(schedule).__name__}.")
        self.schedule = schedule

    def on_train_begin(self, logs=None):
        _refuse_schedule(self)

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        try:
            lr = self.schedule(epoch, opt.lr)
        except TypeError:
            lr = self.schedule(epoch)
        try:
            opt.lr = lr
        except ValueError as exc:
            raise ValueError(f"LearningRateScheduler: schedule({epoch}, ...) returned {lr!r}: {exc}") from None

    def on_epoch_end(self, epoch, logs=None):
        logs["learning_rate"] = self.model.optimizer.lr


class ProgressBar(Callback):
    """A tqdm progress bar per epoch: steps, loss (and accuracy) so far, rate and
    time left, updated after every chunk of steps (about 10 times a second); at
    the epoch's end it shows the epoch's logs (validation included).

    ``fit(verbose=1)`` adds one when standard output is a terminal (or in a
    Jupyter notebook) and tqdm is installed (``pip install fastmlp[cli]``);
    otherwise ``verbose=1`` prints a line per epoch. Given explicitly, it draws a bar on any output.

    Parameters
    ----------
    file : writable text stream, optional (default: sys.stdout, as Keras)
    """

    def __init__(self, file=None):
        if not self.available(require_tty=False):
            raise ImportError("ProgressBar needs tqdm: pip install tqdm (or fastmlp[cli]).")
        self.file = file
        self.bar = None

    @staticmethod
    def available(require_tty=True):
        """Whether fit(verbose=1) can draw a bar: tqdm importable (and stdout a terminal)."""
        try:
            import tqdm  # noqa: F401
        except ImportError:
            return False
        if not require_tty:
            return True
        if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws its widget there
            return True
        isatty = getattr(sys.stdout, "isatty", None)
        return bool(isatty and isatty())

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm
        params = self.params or {}
        self.bar = tqdm(total=params.get("steps"), desc=f"Epoch {epoch + 1}/{params.get('epochs', '?')}",
                        unit="step", file=self.file if self.file is not None else sys.stdout, leave=True,
                        dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None:
            return
        self.bar.update(batch + 1 - self.bar.n)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is None:
            return
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items() if k != "time"}, refresh=False)
        self.bar.close()
        self.bar = None

    def on_train_end(self, logs=None):
        if self.bar is not None:  # an interrupted epoch
            self.bar.close()
            self.bar = None


from .checkpoints import BackupAndRestore, ModelCheckpoint  # noqa: E402, F401  (re-exported; they subclass Callback)
