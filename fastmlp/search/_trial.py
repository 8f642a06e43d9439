"""One trial: build the model of a parameter set, train it (or go on training it), score it.

This is the function every executor runs, in this process, in a loky worker
or as a Dask task. It never raises for a trial that fails (diverges, raises):
it returns the record with status "failed" and the error, so the search goes on.
A KeyboardInterrupt is not caught (Ctrl-C stops the search).
"""
import os
import time

import numpy as np

from .. import optim as _optim
from ..callbacks import Callback
from ..layers import Activation, BatchNorm, Dense, Dropout
from ..model import Sequential

_OPTIMIZERS = {"adam": _optim.Adam, "rmsprop": _optim.RMSprop, "sgd": _optim.SGD}

# data loaded from .npy files in a worker process, kept for the next trials of the search
_LOADED = {}


def build_model(params, n_features, n_outputs, loss, seed, dtype="float32", backend=None, n_threads=None):
    """The compiled Sequential of one trial's parameters.

    Parameters
    ----------
    params : dict
        A trial's parameters (:attr:`SearchResult.best_params` has this form).
    n_features, n_outputs : int
        The input width and the output layer's units.
    loss : str
        As :meth:`fastmlp.Sequential.compile`.
    seed : int
    dtype, backend, n_threads : as :class:`fastmlp.Sequential`

    Returns
    -------
    fastmlp.Sequential
    """
    layers = []
    for w in params["widths"]:
        if params["batch_norm"]:
            layers += [Dense(w, use_bias=False, kernel_initializer=params["init"]), BatchNorm(),
                       Activation(params["activation"])]
        else:
            layers.append(Dense(w, activation=params["activation"], kernel_initializer=params["init"]))
        if params["dropout"] > 0:
            layers.append(Dropout(params["dropout"]))
    layers.append(Dense(n_outputs, kernel_initializer=params["init"]))
    model = Sequential(layers, input_dim=n_features, dtype=dtype, seed=seed, backend=backend,
                       n_threads=n_threads)
    model.compile(loss=loss, optimizer=_OPTIMIZERS[params["optimizer"]](lr=params["lr"]))
    return model


class _Deadline(Callback):
    """Stops training after the epoch that ends past the search's time budget."""

    def __init__(self, deadline):
        self.deadline, self.hit = deadline, False

    def on_epoch_end(self, epoch, logs=None):
        if time.time() >= self.deadline:
            self.model.stop_training = self.hit = True


def _resolve(data):
    """The data tuple (X, y, X_val, y_val, n_outputs, loss): given, or from .npy paths (mapped, not read)."""
    if isinstance(data, dict):  # {"files": (...paths...), "n_outputs": .., "loss": ..}
        key = data["files"]
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = tuple(np.load(p, mmap_mode="r") for p in key)
        return (*_LOADED[key], data["n_outputs"], data["loss"])
    return data


def run_trial(task, data):
    """Train one trial; returns ``(record, model)`` (model None when the trial failed).

    ``task`` holds: id, params, seed, epochs, initial_epoch, model (to go on
    training, or None), metric, deadline (time.time() or None), dtype, backend,
    n_threads, callbacks.
    """
    X, y, Xv, yv, n_outputs, loss = _resolve(data)
    t0 = time.perf_counter()
    params = task["params"]
    record = {"status": "ok", "error": "", "pid": os.getpid()}
    model = task.get("model")
    try:
        if model is None:
            model = build_model(params, X.shape[1], n_outputs, loss, task["seed"], task["dtype"], task["backend"],
                                task["n_threads"])
        cbs = list(task["callbacks"] or [])
        deadline = _Deadline(task["deadline"]) if task["deadline"] is not None else None
        if deadline is not None:
            cbs.append(deadline)
        history = model.fit(X, y, epochs=task["epochs"], initial_epoch=task["initial_epoch"],
                            batch_size=params["batch_size"], validation_data=None if Xv is None else (Xv, yv),
                            verbose=0, n_threads=task["n_threads"], callbacks=cbs)
        values = history.history.get(task["metric"])
        if not values:
            raise ValueError(f"fit reported no {task['metric']!r} (it reported {sorted(history.history)}).")
        record["metric"] = float(values[-1])
        record["epochs"] = task["initial_epoch"] + len(history.epoch)
        if not np.isfinite(record["metric"]):
            raise FloatingPointError(f"{task['metric']} is {record['metric']}.")
        if deadline is not None and deadline.hit and record["epochs"] < task["epochs"]:
            record["status"] = "stopped"  # by the time budget: a metric after fewer epochs
    except Exception as exc:  # the trial failed, not the search: record it and go on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", metric=float("nan"),
                      epochs=task["initial_epoch"])
        model = None
    record["seconds"] = time.perf_counter() - t0
    return record, model
