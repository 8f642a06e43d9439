"""fastmlp.search.run: check everything, prepare the data once, run a strategy on an executor."""
import numbers
import time

import numpy as np

from .. import _validation
from . import _executors, _strategies
from ._result import Progress, SearchResult
from ._space import Space, n_params

STRATEGIES = ("evolution", "grid", "halving", "random")
METRICS = ("accuracy", "loss", "val_accuracy", "val_loss")


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _prepare(X, y, validation_data, validation_split, loss, metric, dtype):
    """(X, y, X_val, y_val, n_outputs, loss) for every trial, checked once here."""
    X = _validation.check_X(X, dtype)  # a memmap of the right dtype and order passes through uncopied
    y = np.asarray(y)
    auto = loss == "auto"
    if auto:
        loss = "cross_entropy" if y.ndim == 1 and (y.dtype == bool or np.issubdtype(y.dtype, np.integer)) else "mse"
    val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a tuple (X_val, y_val).")
        Xv = _validation.check_X(validation_data[0], dtype, "X_val")
        if Xv.shape[1] != X.shape[1]:
            raise ValueError(f"X_val has {Xv.shape[1]} features, but X has {X.shape[1]}.")
        val = (Xv, np.asarray(validation_data[1]))
    elif validation_split > 0:
        cut = int(X.shape[0] * (1.0 - validation_split))  # Keras' rule: the last rows, unshuffled
        if cut == 0 or cut == X.shape[0]:
            raise ValueError(f"validation_split={validation_split} of {X.shape[0]} rows leaves no rows to "
                             "train or to validate on; choose another fraction or pass validation_data.")
        val = (X[cut:], y[cut:])
        X, y = X[:cut], y[:cut]
    if metric.startswith("val_") and val is None:
        raise ValueError(f"metric={metric!r} needs validation data: pass validation_data=(X_val, y_val) or "
                         "validation_split > 0, or use metric='loss' / 'accuracy' (training data).")
    if loss == "cross_entropy":
        labels = [y] + ([val[1]] if val is not None else [])
        if not all(a.dtype == bool or np.issubdtype(a.dtype, np.number) for a in labels):
            raise TypeError(f"y must hold integer class labels 0..k-1 for loss='cross_entropy', got dtype {y.dtype}; "
                            "encode them first: classes, y = np.unique(y, return_inverse=True).")
        top = max(int(np.max(a)) if a.size else 0 for a in labels)
        n_out = max(2, top + 1)
        y = _validation.check_labels(y, X.shape[0], n_out)
        if val is not None:
            val = (val[0], _validation.check_labels(val[1], val[0].shape[0], n_out, "y_val"))
    elif loss == "mse":
        if metric.endswith("accuracy"):
            why = f" (loss='auto' chose 'mse': y is of dtype {y.dtype}, not integer labels)" if auto else ""
            raise ValueError(f"metric={metric!r} is for classification, but the loss is 'mse'{why}; pass integer "
                             "class labels or loss='cross_entropy', or use metric='val_loss' / 'loss'.")
        y = _validation.cast(y.reshape(y.shape[0], -1), dtype, "y")
        n_out = y.shape[1]
        if val is not None:
            val = (val[0], _validation.cast(val[1].reshape(val[1].shape[0], -1), dtype, "y_val"))
    else:
        raise ValueError(f"loss must be 'auto', 'cross_entropy' or 'mse', got {loss!r}.")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows, X {X.shape[0]}.")
    Xv, yv = val if val is not None else (None, None)
    return X, y, Xv, yv, n_out, loss


def run(space, X, y, strategy="random", n_trials=None, epochs=10, validation_data=None, validation_split=0.2,
        metric="val_accuracy", executor=None, n_jobs=1, seed=0, time_budget=None, *, loss="auto",
        dtype="float32", backend=None, n_threads=None, callbacks=None, eta=3, population=None,
        sample_size=None, verbose=1):
    """Search a space of MLPs: train a trial per parameter set, return the table and the best model.

    Parameters
    ----------
    space : Space
    X : array (n_samples, n_features); a ``numpy.memmap`` is read, not copied
    y : integer class labels (n_samples,) or real targets (with ``loss="mse"``)
    strategy : {"grid", "random", "halving", "evolution"}
        "grid": every combination of the (list) choices; "random": ``n_trials``
        draws; "halving": successive halving with epochs as the resource,
        ``n_trials`` configurations at ``epochs / eta**k`` epochs, the best
        ``1/eta`` going on training (the same model, ``fit(initial_epoch=...)``)
        up to ``epochs``; "evolution": regularized (aging) evolution (Real et
        al. 2019), ``population`` members, tournaments of ``sample_size``.
    n_trials : int; default all the grid, or 20
    epochs : int; epochs per trial (the last rung's for halving)
    validation_data : (X_val, y_val), optional
    validation_split : float; without validation_data, the last fraction of the rows
        (Keras' rule: shuffle sorted data first)
    metric : {"val_accuracy", "val_loss", "accuracy", "loss"}; accuracies are maximized, losses minimized
    executor : None (this process, all threads per trial), "processes" (joblib's loky workers, one
        thread per trial) or a ``dask.distributed.Client`` (one task per trial, the data scattered once)
    n_jobs : int; trials at once for "processes" and Dask (-1: every core / every worker thread)
    seed : int; the same seed gives the same trials (and, on one worker, the same results)
    time_budget : seconds, optional; no trial starts after it, and trials running then stop after
        their current epoch (status "stopped")
    loss : {"auto", "cross_entropy", "mse"}; "auto": cross_entropy for integer labels
    dtype, backend, n_threads : as :class:`fastmlp.Sequential`; ``n_threads`` defaults to 1 in workers
    callbacks : list of :class:`fastmlp.callbacks.Callback`, passed to every trial's fit
    eta : int >= 2; halving keeps the best 1/eta of each rung
    population : int, optional; evolution: the number of recent trials tournaments draw from
    sample_size : int, optional; evolution: the trials of one tournament
    verbose : 0 (silent) or 1 (a progress bar over the trials, with tqdm when installed)

    Returns
    -------
    SearchResult
    """
    # ------------------------------------------------------------ checks
    if not isinstance(space, Space):
        raise TypeError(f"space must be a fastmlp.search.Space, got {type(space).__name__}.")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}.")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}.")
    epochs = _validation.check_positive_int(epochs, "epochs")
    validation_split = _validation.check_in_range(validation_split, "validation_split", 0.0, 1.0)
    seed = _check_int(seed, "seed", 0)
    if not (isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, bool) and (n_jobs >= 1 or n_jobs == -1)):
        raise ValueError(f"n_jobs must be an integer >= 1, or -1 for all, got {n_jobs!r}.")
    if time_budget is not None:
        time_budget = _validation.check_positive(time_budget, "time_budget")
    if n_threads is not None:
        n_threads = _validation.check_positive_int(n_threads, "n_threads")
    if isinstance(verbose, bool) or verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 or 1, got {verbose!r}.")
    if not (executor is None or executor == "processes"
            or hasattr(executor, "scatter") and hasattr(executor, "submit")):
        raise ValueError(f"executor must be None, 'processes' or a dask.distributed.Client, got {executor!r}.")
    if executor is None and n_jobs != 1:
        raise ValueError(f"n_jobs={n_jobs} needs executor='processes' or a Dask client: executor=None runs one "
                         "trial at a time in this process (on all its threads).")
    eta = _check_int(eta, "eta", 2)
    grid = space.grid() if strategy == "grid" else None
    if n_trials is None:
        n_trials = len(grid) if grid is not None else 20
    n_trials = _validation.check_positive_int(n_trials, "n_trials")
    if strategy == "evolution":
        population = _check_int(population if population is not None else max(2, min(20, n_trials // 3)),
                                "population", 2)
        sample_size = _check_int(sample_size if sample_size is not None else max(1, population // 4),
                                 "sample_size", 1)
        if sample_size > population:
            raise ValueError(f"sample_size ({sample_size}) must be at most population ({population}).")
    if strategy == "halving" and n_trials < eta:
        raise ValueError(f"halving needs n_trials >= eta ({eta}) to keep the best 1/{eta}, got {n_trials}.")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError("callbacks must be a list of fastmlp.callbacks.Callback.")
    dtype = _validation.check_dtype(dtype).name
    data = _prepare(X, y, validation_data, validation_split, loss, metric, dtype)
    X, y, Xv, yv, n_out, loss = data
    maximize = metric.endswith("accuracy")

    def better(a, b):
        return a > b if maximize else a < b

    rng = np.random.default_rng(seed)
    if strategy == "grid":
        trial_params = grid[:n_trials]
    elif strategy == "random":
        trial_params = [space.sample(rng) for _ in range(n_trials)]
    total = (sum(n for n, _ in _strategies.halving_rungs(n_trials, epochs, eta)) if strategy == "halving"
             else n_trials)
    settings = {"seed": seed, "epochs": epochs, "metric": metric, "dtype": dtype, "backend": backend,
                "n_threads": n_threads if n_threads is not None or executor is None else 1,
                "callbacks": list(callbacks) if callbacks else None, "time_budget": time_budget}

    # ------------------------------------------------------------ the search
    t0 = time.perf_counter()
    progress = Progress(total, metric, verbose)
    ex = _executors.make(executor, data, n_jobs)
    driver = _strategies.Driver(ex, settings, progress, lambda p: n_params(p, X.shape[1], n_out), better)
    try:
        if strategy in ("grid", "random"):
            _strategies.run_list(driver, trial_params)
        elif strategy == "halving":
            _strategies.run_halving(driver, space, rng, n_trials, epochs, eta)
        else:
            _strategies.run_evolution(driver, space, rng, n_trials, population, sample_size)
    finally:
        driver.close()
        progress.close()
    best_model = driver.models.get(driver.best_id)
    return SearchResult(driver.records, metric, maximize, driver.best_id, best_model, driver.interrupted,
                        strategy, time.perf_counter() - t0)
