"""The array arguments of every kernel of the backend contract, as a table, and their check.

Each kernel's arrays are listed with their shapes in symbols (``"n"``,
``"k"``, ...), bound at their first appearance: a later array must agree.
An entry ``"k|0"`` accepts k or 0 (an optional vector), a shape written
``("n", "d") | ()`` also accepts the empty ``(0, 0)`` array. Labels and
indices are int64, everything else the dtype of the kernel's first array
(float32 or float64); outputs must be writeable. Every array must be
C-contiguous.

:func:`check` raises ``ValueError`` (``IndexError`` for an index out of
range) before a kernel runs: the Numba backend calls it in every public
kernel (its compiled loops do not check bounds), and the safety tests
derive from this table, for every native backend, one call per array that
is one element too short.
"""
import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)

# name -> ((argument, shape, kind), ...); kind: "in", "out" (written), "idx" (int64
# values in [0, bound)), "lab" (int64 labels in [0, k)); shape: a tuple of
# symbols, or (tuple, None) when the empty (0, 0) array is accepted too.
_NK = ("n", "k")
KERNELS = {
    "gather_rows": (("X", ("N", "d"), "in"), ("idx", ("n",), "idx:N"), ("out", ("n", "d"), "out")),
    "act_forward": (("Z", _NK, "in"), ("A", _NK, "out")),
    "bias_act_forward": (("Z", _NK, "out"), ("b", ("k|0",), "in"), ("A", _NK, "out")),
    "dense_forward": (("X", ("n", "d"), "in"), ("W", ("d", "k"), "in"), ("b", ("k|0",), "in"),
                      ("Z", _NK, "out"), ("A", _NK, "out")),
    "act_backward": (("Z", _NK, "in"), ("A", _NK, "in"), ("dA", _NK, "in"), ("dZ", _NK, "out")),
    "bias_grad": (("dZ", _NK, "in"), ("db", ("k",), "out")),
    "dense_backward": (("X", ("n", "d"), "in"), ("W", ("d", "k"), "in"), ("dZ", _NK, "in"),
                       ("dW", ("d", "k"), "out"), ("db", ("k|0",), "out"), ("dX", (("n", "d"), None), "out")),
    "softmax_cross_entropy": (("Z", _NK, "in"), ("y", ("n",), "lab"), ("sample_weight", ("n|0",), "in"),
                              ("P", _NK, "out"), ("dZ", _NK, "out")),
    "softmax_cross_entropy_onehot": (("Z", _NK, "in"), ("Y", _NK, "in"), ("sample_weight", ("n|0",), "in"),
                                     ("P", _NK, "out"), ("dZ", _NK, "out")),
    "nll_loss": (("logP", _NK, "in"), ("y", ("n",), "lab"), ("sample_weight", ("n|0",), "in"),
                 ("dlogP", _NK, "out")),
    "sigmoid_binary_cross_entropy": (("Z", _NK, "in"), ("Y", _NK, "in"), ("sample_weight", ("n|0",), "in"),
                                     ("P", _NK, "out"), ("dZ", _NK, "out")),
    "mse_loss": (("Yhat", _NK, "in"), ("Y", _NK, "in"), ("sample_weight", ("n|0",), "in"),
                 ("dYhat", _NK, "out")),
    "poisson_loss": (("Z", _NK, "in"), ("Y", _NK, "in"), ("sample_weight", ("n|0",), "in"),
                     ("P", _NK, "out"), ("dZ", _NK, "out")),
    "sgd_update": (("p", ("m",), "out"), ("g", ("m",), "in"), ("buf", ("m|0",), "out")),
    "rmsprop_update": (("p", ("m",), "out"), ("g", ("m",), "in"), ("sq", ("m",), "out")),
    "adam_update": (("p", ("m",), "out"), ("g", ("m",), "in"), ("m", ("m",), "out"), ("v", ("m",), "out")),
    "sum_squares": (("x", ("m",), "in"),),
    "scale_inplace": (("x", ("m",), "out"),),
    "dropout_mask": (("M", _NK, "out"),),
    "dropout_forward": (("Z", _NK, "in"), ("M", _NK, "in"), ("A", _NK, "out")),
    "dropout_backward": (("dA", _NK, "in"), ("M", _NK, "in"), ("dZ", _NK, "out")),
    "batchnorm_forward": (("X", _NK, "in"), ("G", ("4", "k"), "out"), ("S", (("2", "k"), None), "out"),
                          ("Z", _NK, "out"), ("A", _NK, "out")),
    "batchnorm_backward": (("dA", _NK, "in"), ("Z", _NK, "in"), ("G", ("4", "k"), "in"),
                           ("S", (("2", "k"), None), "in"), ("dG", ("4", "k"), "out"),
                           ("dX", (_NK, None), "out")),
}


def _describe(a):
    if not isinstance(a, np.ndarray):
        return type(a).__name__
    return f"{a.dtype} array of shape {a.shape}" + ("" if a.flags.c_contiguous else " (not C-contiguous)")


def check(kernel, *arrays):
    """Raise unless ``arrays`` (the kernel's array arguments, in order) fit ``KERNELS[kernel]``."""
    spec = KERNELS[kernel]
    sizes = {"4": 4, "2": 2}
    dtype = None
    for (name, shape, kind), a in zip(spec, arrays):
        integer = kind in ("lab",) or kind.startswith("idx")
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            raise ValueError(f"{kernel}: {name} must be a C-contiguous NumPy array, got {_describe(a)}.")
        if integer:
            if a.dtype != _INT64:
                raise ValueError(f"{kernel}: {name} must be int64, got {_describe(a)}.")
        elif dtype is None:
            if a.dtype not in _FLOATS:
                raise ValueError(f"{kernel}: {name} must be float32 or float64, got {_describe(a)}.")
            dtype = a.dtype
        elif a.dtype != dtype:
            raise ValueError(f"{kernel}: {name} must be {dtype} like the other arrays, got {_describe(a)}.")
        if kind == "out" and not a.flags.writeable:
            raise ValueError(f"{kernel}: {name} must be writeable.")
        if isinstance(shape[0], tuple):  # a shape, or the empty (0, 0)
            if a.shape == (0, 0):
                continue
            shape = shape[0]
        if a.ndim != len(shape):
            raise ValueError(f"{kernel}: {name} must have {len(shape)} dimension(s), got {_describe(a)}.")
        for sym, got in zip(shape, a.shape):
            sym, optional = (sym[:-2], True) if sym.endswith("|0") else (sym, False)
            if optional and got == 0:
                continue
            want = sizes.setdefault(sym, got)
            if got != want:
                tail = " or 0" if optional else ""
                if a.ndim == 1:
                    raise ValueError(f"{kernel}: {name} has length {got}, expected {want}{tail}.")
                expected = ", ".join(str(sizes.get(s.split("|")[0], s)) for s in shape)
                raise ValueError(f"{kernel}: {name} has shape {a.shape}, expected ({expected}){tail}.")
    for (name, shape, kind), a in zip(spec, arrays):
        if kind == "lab" and a.size and (int(a.min()) < 0 or int(a.max()) >= sizes["k"]):
            bad = int(np.flatnonzero((a < 0) | (a >= sizes["k"]))[0])
            raise ValueError(f"{kernel}: label {name}[{bad}] = {a[bad]} is outside [0, {sizes['k']}).")
        if kind.startswith("idx:") and a.size:
            hi = sizes[kind[4:]]
            if int(a.min()) < 0 or int(a.max()) >= hi:
                bad = int(np.flatnonzero((a < 0) | (a >= hi))[0])
                raise IndexError(f"{kernel}: {name}[{bad}] = {a[bad]} is outside [0, {hi}).")
    return sizes
