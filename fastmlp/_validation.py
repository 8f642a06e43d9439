"""Every user-facing check of input and parameters, and its error text.

Data is validated once, before any work, and converted once to the model's
dtype and C order; nothing is cast or dropped silently.
"""
import numbers
import sys

import numpy as np


def check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}.")
    return int(value)


def check_nonnegative_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def check_nonnegative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def check_finite(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def check_in_range(value, name, lo, hi, hi_open=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and lo <= value
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}.")
    return float(value)


def check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
    return dt


def all_finite(a):
    """Whether a float array holds no NaN or infinity, without a full-size
    temporary: a sum propagates both (one pass, no allocation); only when it
    is not finite (bad values, or finite ones that overflow) are the rows
    checked exactly, a block at a time."""
    if a.size == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(a.sum()):
            return True
    rows = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
    step = max(1, (1 << 18) // max(1, rows.shape[1]))
    return all(np.isfinite(rows[i:i + step]).all() for i in range(0, rows.shape[0], step))


def _first_nonfinite(a):
    bad = ~np.isfinite(a)
    pos = np.unravel_index(int(np.argmax(bad)), a.shape)
    kind = "NaN" if np.isnan(a[pos]) else "infinity"
    return kind, pos


def _from_pandas(a, name):
    """A pandas DataFrame / Series as a NumPy array (None if ``a`` is neither).

    Nullable extension dtypes (``Float64``, ``Int64``, ``boolean``) have no
    NumPy dtype of their own (``np.asarray`` gives ``object``): without a
    missing value they convert to their NumPy dtype; ``pd.NA`` is named with
    its row and column."""
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(a, (pd.DataFrame, pd.Series)):
        return None
    frame = a if isinstance(a, pd.DataFrame) else a.to_frame()
    dtypes = list(frame.dtypes)
    if not any(isinstance(dt, pd.api.extensions.ExtensionDtype) for dt in dtypes):
        return np.asarray(a)
    if not all(pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt) for dt in dtypes):
        return np.asarray(a)  # strings or categories: the dtype message below
    missing = frame.isna().to_numpy()
    for j, dt in enumerate(dtypes):
        if isinstance(dt, pd.api.extensions.ExtensionDtype) and missing[:, j].any():
            row = int(np.argmax(missing[:, j]))
            label = f" ({frame.columns[j]!r})" if isinstance(a, pd.DataFrame) else ""
            where = f"at row {row}, column {j}{label}" if isinstance(a, pd.DataFrame) else f"at row {row}"
            raise ValueError(f"{name} contains a missing value (pd.NA) {where}; clean or impute it first.")
    np_types = [getattr(dt, "numpy_dtype", dt) for dt in dtypes]
    return a.to_numpy(dtype=np.result_type(*np_types))


def _is_sparse(a):
    sparse = sys.modules.get("scipy.sparse")  # no sparse matrix exists unless it was imported
    return sparse is not None and sparse.issparse(a)


def _as_numeric(a, name):
    if isinstance(a, np.ndarray):
        arr = a
    elif _is_sparse(a):
        raise TypeError(
            f"{name} is a scipy sparse matrix ({type(a).__name__}, shape {a.shape}); fastmlp trains on dense "
            f"arrays: pass {name}.toarray() (it takes {a.shape[0]} x {a.shape[1]} values of memory).")
    elif (arr := _from_pandas(a, name)) is not None:
        pass
    else:
        try:
            arr = np.asarray(a)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(
            f"{name} must hold numbers (integer or floating point), got dtype {arr.dtype}. "
            "Encode strings or categories as numbers first."
        )
    return arr


def _check_cast(src, out, name):
    """Raise if finite values of ``src`` became infinite in ``out`` (the model's
    dtype): a float64 value beyond float32's range. Checked after the cast."""
    if out.dtype.itemsize >= src.dtype.itemsize or not np.issubdtype(src.dtype, np.floating):
        return out
    if all_finite(out):
        return out
    flat = out.reshape(out.shape[0], -1) if out.ndim > 1 else out.reshape(-1, 1)
    pos = np.unravel_index(int(np.argmax(~np.isfinite(flat))), flat.shape)
    value = np.asarray(src).reshape(flat.shape)[pos].item()
    where = f"at row {pos[0]}, column {pos[1]}" if out.ndim > 1 else f"at row {pos[0]}"
    raise ValueError(
        f"{name} holds {value!r} {where}, which does not fit in {out.dtype} (largest "
        f"{float(np.finfo(out.dtype).max):.4g}); scale it down or use dtype='float64'.")


def cast(arr, dtype, name):
    """``arr`` as a C-contiguous array of ``dtype``; a value that does not fit is an error, not infinity."""
    with np.errstate(over="ignore"):  # the check below names the value instead of NumPy's warning
        out = np.ascontiguousarray(arr, dtype=dtype)
    return _check_cast(arr, out, name)


def check_X(X, dtype, name="X"):
    """Validate features and return a C-contiguous 2-D array of ``dtype``.

    Inputs of more than two dimensions (images) are flattened to
    ``(n_samples, -1)``; a non-contiguous or integer array is converted once.
    """
    arr = _as_numeric(X, name)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}. "
            "Reshape a single feature with X.reshape(-1, 1), a single sample with X.reshape(1, -1)."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples); at least 1 sample is required.")
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 features; at least 1 feature is required.")
    if np.issubdtype(arr.dtype, np.floating) and not all_finite(arr):
        kind, (row, col) = _first_nonfinite(arr)
        raise ValueError(f"{name} contains {kind} at row {row}, column {col}; clean or impute it first.")
    return cast(arr, dtype, name)


def check_labels(y, n_samples, n_classes, name="y"):
    """Validate integer class labels in [0, n_classes); returns int64 (n_samples,)."""
    arr = _as_numeric(y, name)
    arr = _squeeze_column(arr, name)
    check_length(arr, n_samples, name)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            kind, (row,) = _first_nonfinite(arr)
            raise ValueError(f"{name} contains {kind} at row {row}; clean it first.")
        if not np.all(arr == np.round(arr)):
            row = int(np.argmax(arr != np.round(arr)))
            raise ValueError(
                f"{name} must hold integer class labels for this loss, got {arr[row].item()!r} at row {row}. "
                "Use loss='mse' for regression, or encode classes as 0..n_classes-1."
            )
    lo, hi = arr.min().item(), arr.max().item()
    lo, hi = (int(lo) if lo > -2**62 else -2**62), (int(hi) if hi < 2**62 else 2**62)
    lab = arr.astype(np.int64)
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} has label {bad}, but the output layer has {n_classes} units: labels must be in "
            f"[0, {n_classes}). Encode classes as 0..n_classes-1 (sklearn's LabelEncoder) or widen the "
            "output layer."
        )
    return np.ascontiguousarray(lab)


def check_targets(y, n_samples, n_outputs, dtype, name="y"):
    """Validate real-valued targets; returns C-contiguous (n_samples, n_outputs) of dtype."""
    arr = _as_numeric(y, name)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {arr.shape}.")
    check_length(arr, n_samples, name)
    if arr.shape[1] != n_outputs:
        raise ValueError(f"{name} has {arr.shape[1]} columns, but the output layer has {n_outputs} units.")
    if np.issubdtype(arr.dtype, np.floating) and not all_finite(arr):
        kind, (row, col) = _first_nonfinite(arr)
        raise ValueError(f"{name} contains {kind} at row {row}, column {col}; clean it first.")
    return cast(arr, dtype, name)


def check_nonnegative_targets(target, name="y", loss="poisson"):
    """Raise if a validated (finite) target array has a negative entry."""
    if target.size and target.min() < 0:
        row, col = np.unravel_index(int(np.argmin(target)), target.shape)
        raise ValueError(
            f"Loss {loss!r} needs targets >= 0 (counts or rates), but {name} has {target[row, col].item()!r} "
            f"at row {row}, column {col}."
        )


def check_sample_weight(sample_weight, n_samples, dtype):
    """Validate sample weights; None gives an empty array (meaning all ones)."""
    if sample_weight is None:
        return np.empty(0, dtype=dtype)
    w = _as_numeric(sample_weight, "sample_weight")
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {w.shape}.")
    check_length(w, n_samples, "sample_weight")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and >= 0.")
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to 0; at least one sample needs a positive weight.")
    out = cast(w, dtype, "sample_weight")
    with np.errstate(over="ignore"):
        if not np.isfinite(out.sum()):
            raise ValueError(f"sample_weight sums to more than {out.dtype} holds; scale the weights down "
                             "(only their ratios matter).")
    return out


def check_length(arr, n_samples, name):
    if arr.shape[0] != n_samples:
        raise ValueError(f"X has {n_samples} samples but {name} has {arr.shape[0]}; they must match.")


def _squeeze_column(arr, name):
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer class labels, got shape {arr.shape}.")
    return arr


def as_array(a, name):
    """``a`` as a NumPy array, reading pandas and refusing sparse input as the checks above do."""
    return a if isinstance(a, np.ndarray) else _as_numeric(a, name)


def _outside_unit_interval(target):
    """(row, col) of the first entry of a 2-D array outside [0, 1], or None."""
    bad = (target < 0) | (target > 1)
    if not bad.any():
        return None
    return np.unravel_index(int(np.argmax(bad)), target.shape)


def check_binary_targets(target, name="y", loss="binary_cross_entropy"):
    """Raise if a validated (finite) target array has an entry outside [0, 1]."""
    where = _outside_unit_interval(target)
    if where is not None:
        row, col = where
        raise ValueError(
            f"Loss {loss!r} needs targets in [0, 1] (labels 0 / 1 or probabilities), but {name} has "
            f"{target[row, col].item()!r} at row {row}, column {col}. Use loss='cross_entropy' with an "
            "output unit per class for more than two classes.")


def check_probability_rows(target, name="y", loss="cross_entropy"):
    """Raise unless every row of a validated (finite) target array is a
    probability vector: entries in [0, 1] summing to 1 (within 1e-3); one-hot
    rows and soft targets are both accepted, as in PyTorch."""
    where = _outside_unit_interval(target)
    if where is not None:
        row, col = where
        raise ValueError(
            f"Loss {loss!r} takes one-hot or probability rows (entries in [0, 1] that sum to 1), but {name} "
            f"has {target[row, col].item()!r} at row {row}, column {col}. Pass integer class labels, or fix "
            "the row.")
    sums = target.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0) > 1e-3
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"Loss {loss!r} takes one-hot or probability rows that sum to 1, but row {row} of {name} sums to "
            f"{sums[row]:g}. Normalise the rows (divide by their sum), or pass integer class labels.")


def _dtype_hint(dtype):
    return ", or use dtype='float64'." if np.dtype(dtype) == np.float32 else "."


def check_outputs(out, X, dtype):
    """Raise rather than return NaN or infinity that a model computed from finite (validated) X."""
    if all_finite(out):
        return out
    kind, (row, col) = _first_nonfinite(out)
    big = float(np.abs(np.asarray(X, dtype=np.float64)).max()) if np.size(X) else 0.0
    raise ValueError(
        f"The model's outputs on X are not finite ({kind} at row {row}, output {col}): X (largest |value| "
        f"{big:.3g}) overflows the model's {np.dtype(dtype)} arithmetic with these weights. Scale X "
        "(standardise the features)" + _dtype_hint(dtype))


def raise_nonfinite_loss(loss, target, dtype):
    """evaluate's loss is not finite although the outputs are: the targets overflow."""
    raise ValueError(
        f"The loss on X, y is {loss}: the targets y (largest |value| {float(np.abs(target).max()):.3g}) or "
        f"the outputs overflow the model's {np.dtype(dtype)} arithmetic. Scale y" + _dtype_hint(dtype))


def check_class_weight(class_weight, n_outputs, loss, regression):
    """Validate ``fit``'s ``class_weight`` (Keras' meaning): a mapping from label to a
    finite weight >= 0. Labels are the integers the targets name: class indices
    0..n_outputs-1, or 0 and 1 for a one-unit binary cross-entropy output; a label
    without a key weighs 1.0 (Keras' rule). Returns the float64 weight of each label,
    or None for an empty mapping (no effect, as in Keras)."""
    import collections.abc

    if regression:
        raise ValueError(f"class_weight applies to classification losses (cross_entropy, nll, "
                         f"binary_cross_entropy), not to {loss!r}; weigh the rows with sample_weight instead.")
    if not isinstance(class_weight, collections.abc.Mapping):
        raise TypeError(f"class_weight must be a dict {{label: weight}}, got {type(class_weight).__name__}.")
    n = n_outputs if n_outputs > 1 else 2
    labels = "0 and 1 (one output unit)" if n_outputs == 1 else f"0..{n - 1} (one per output unit)"
    weights = np.ones(n, dtype=np.float64)
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < n:
            raise ValueError(f"class_weight has the key {key!r}, which is not a label of this model: the labels "
                             f"are the integers {labels}.")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"class_weight[{key!r}] must be a finite number >= 0, got {value!r}.")
        weights[int(key)] = float(value)
    return weights if len(class_weight) else None


def class_weight_rows(weights, target, sw, dtype):
    """The row weights of validated targets under the per-label ``weights`` (from
    check_class_weight), times ``sw`` (sample weights, or (0,)). A target row's label
    is its integer label, the argmax of a one-hot or probability row, or the
    rounded value of a one-unit binary target, as Keras reads it."""
    if target.ndim == 1:
        labels = target
    elif target.shape[1] > 1:
        labels = np.argmax(target, axis=1)
    else:
        labels = np.round(target[:, 0]).astype(np.int64)
    rows = weights[labels]
    if sw.shape[0]:
        rows = rows * sw
    if not rows.sum() > 0:
        raise ValueError("The row weights (class_weight" + (" times sample_weight" if sw.shape[0] else "")
                         + ") are 0 on every training row; at least one row needs a positive weight.")
    return cast(rows, dtype, "class_weight")
