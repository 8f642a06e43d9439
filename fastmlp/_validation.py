"""Every user-facing check of input and parameters, and its error text.

Data is validated once, before any work, and converted once to the model's
dtype and C order; nothing is cast or dropped silently.
"""
import numbers

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


def _as_numeric(a, name):
    if isinstance(a, np.ndarray):
        arr = a
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
    return np.ascontiguousarray(arr, dtype=dtype)


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
    lab = arr.astype(np.int64)
    lo, hi = int(lab.min()), int(lab.max())
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
    return np.ascontiguousarray(arr, dtype=dtype)


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
    return np.ascontiguousarray(w, dtype=dtype)


def check_length(arr, n_samples, name):
    if arr.shape[0] != n_samples:
        raise ValueError(f"X has {n_samples} samples but {name} has {arr.shape[0]}; they must match.")


def _squeeze_column(arr, name):
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer class labels, got shape {arr.shape}.")
    return arr
