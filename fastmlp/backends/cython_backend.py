"""Cython backend: a thin shim over the compiled modules of :mod:`fastmlp._native`.

Same kernel names and signatures as :mod:`.reference` (the specification).
Importing this module raises ImportError when the extension was not built;
the registry then warns and falls back to the next backend.

The shim only makes the optional arguments agree with the data's dtype (an
empty bias or ``sample_weight`` of another dtype, labels that are not int64)
so that the compiled fused-type dispatch accepts what the reference accepts.
"""
import numpy as _np

from .. import _config
from .._native import codes as _codes
from .._native import gemm as _gemm
from .._native import kernels as _kernels
from .._native import loop as _loop
from .._native import predictor as _predictor
from .._native import runtime as _runtime

NAME = "cython"


def _check_build():
    """The compiled modules' codes must be fastmlp._native.codes' (a stale build is refused)."""
    built = _runtime.codes()
    for enum in _codes.ENUMS:
        want = {m.name: int(m) for m in enum}
        if built.get(enum.__name__) != want:  # pragma: no cover - a build out of date
            raise ImportError(f"fastmlp._native was built with {enum.__name__} codes {built.get(enum.__name__)}, "
                              f"but fastmlp._native.codes says {want}; rebuild the extension.")


_check_build()

_INT64 = _np.dtype(_np.int64)


def _numpy_openblas():
    """(sgemm address, dgemm address, library name, set_num_threads address,
    get_num_threads address) of the OpenBLAS that NumPy's wheel bundles (ILP64,
    symbols scipy_?gemm_64_), or None when NumPy uses another BLAS. The two
    thread-count addresses are 0 when the library lacks those functions.

    ctypes opens the file NumPy has already loaded: the same library, so the
    same thread pool, which threadpoolctl bounds as NumPy's.
    """
    import ctypes
    from pathlib import Path

    root = Path(_np.__file__).resolve().parent
    for folder, pattern in ((root.parent / "numpy.libs", "libscipy_openblas64_*"),   # Linux, Windows
                            (root / ".dylibs", "libscipy_openblas64_*")):         # macOS
        for path in sorted(folder.glob(pattern)) if folder.is_dir() else ():
            try:
                lib = ctypes.CDLL(str(path))
                s, d = lib.scipy_sgemm_64_, lib.scipy_dgemm_64_
            except (OSError, AttributeError):
                continue
            addr = [ctypes.cast(f, ctypes.c_void_p).value for f in (s, d)]
            try:
                threads = [ctypes.cast(f, ctypes.c_void_p).value for f in (
                    lib.scipy_openblas_set_num_threads64_, lib.scipy_openblas_get_num_threads64_)]
            except AttributeError:
                threads = [0, 0]
            return addr[0], addr[1], f"numpy ({path.name})", threads[0], threads[1]
    return None


def _choose_blas():
    """NumPy's bundled OpenBLAS when present (FASTMLP_BLAS=scipy keeps scipy's)."""
    import os

    if os.environ.get("FASTMLP_BLAS", "").lower() == "scipy":
        return
    found = _numpy_openblas()
    if found:
        _gemm._use_blas64(*found)


_choose_blas()


def _as(arr, dtype):
    # Only a mismatched array is converted (usually an empty "none" placeholder).
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _labels(y):
    return y if y.dtype == _INT64 else y.astype(_INT64)


def set_num_threads(n_threads):
    """Bound the OpenMP threads of the compiled loops (None: the default bound of
    ``_config.default_threads()``; BLAS is bounded by the caller through threadpoolctl)."""
    if n_threads is None:
        n_threads = _config.default_threads()
    _runtime.set_num_threads(int(n_threads))


def gemm(A, B, C, trans_a, trans_b, beta):
    _kernels.gemm(A, B, C, trans_a, trans_b, beta)


def gather_rows(X, idx, out):
    _kernels.gather_rows(X, _labels(idx), out)


def act_forward(Z, act, alpha, A):
    _kernels.act_forward(Z, act, alpha, A)


def bias_act_forward(Z, b, act, alpha, A):
    _kernels.bias_act_forward(Z, _as(b, Z.dtype), act, alpha, A)


def dense_forward(X, W, b, act, alpha, Z, A):
    _kernels.dense_forward(X, W, _as(b, X.dtype), act, alpha, Z, A)


def act_backward(Z, A, dA, act, alpha, dZ):
    _kernels.act_backward(Z, A, dA, act, alpha, dZ)


def bias_grad(dZ, db):
    _kernels.bias_grad(dZ, db)


def dense_backward(X, W, dZ, l2, dW, db, dX):
    dtype = X.dtype
    if db.dtype != dtype and db.shape[0] == 0:
        db = _np.empty(0, dtype)
    if dX.dtype != dtype and dX.size == 0:
        dX = _np.empty((0, 0), dtype)
    _kernels.dense_backward(X, W, dZ, l2, dW, db, dX)


def softmax_cross_entropy(Z, y, sample_weight, P, dZ):
    return _kernels.softmax_cross_entropy(Z, _labels(y), _as(sample_weight, Z.dtype), P, dZ)


def softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ):
    return _kernels.softmax_cross_entropy_onehot(
        Z, _as(Y, Z.dtype), _as(sample_weight, Z.dtype), P, dZ
    )


def nll_loss(logP, y, sample_weight, dlogP):
    return _kernels.nll_loss(logP, _labels(y), _as(sample_weight, logP.dtype), dlogP)


def sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ):
    return _kernels.sigmoid_binary_cross_entropy(
        Z, _as(Y, Z.dtype), _as(sample_weight, Z.dtype), P, dZ
    )


def mse_loss(Yhat, Y, sample_weight, dYhat):
    return _kernels.mse_loss(Yhat, _as(Y, Yhat.dtype), _as(sample_weight, Yhat.dtype), dYhat)


def poisson_loss(Z, Y, sample_weight, P, dZ):
    return _kernels.poisson_loss(Z, _as(Y, Z.dtype), _as(sample_weight, Z.dtype), P, dZ)


def sgd_update(p, g, buf, lr, momentum, nesterov):
    if buf.dtype != p.dtype and buf.shape[0] == 0:
        buf = _np.empty(0, p.dtype)
    _kernels.sgd_update(p, g, buf, lr, momentum, nesterov)


def rmsprop_update(p, g, sq, lr, rho, eps):
    _kernels.rmsprop_update(p, g, sq, lr, rho, eps)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    _kernels.adam_update(p, g, m, v, lr, beta1, beta2, eps, step)


def sum_squares(x):
    return _kernels.sum_squares(x)


def dropout_mask(seed, step, unit, rate, M):
    _kernels.dropout_mask(int(seed), int(step), int(unit), float(rate), M)


def dropout_forward(Z, M, A):
    _kernels.dropout_forward(Z, _as(M, Z.dtype), A)


def dropout_backward(dA, M, dZ):
    _kernels.dropout_backward(dA, _as(M, dA.dtype), dZ)


def scale_inplace(x, factor):
    _kernels.scale_inplace(x, factor)


def batchnorm_forward(X, G, eps, momentum, S, Z, A):
    _kernels.batchnorm_forward(X, G, float(eps), float(momentum), _as(S, X.dtype), Z, A)


def batchnorm_backward(dA, Z, G, eps, S, dG, dX):
    dt = dA.dtype
    if dX.dtype != dt and dX.size == 0:
        dX = _np.empty((0, 0), dt)
    _kernels.batchnorm_backward(dA, Z, G, float(eps), _as(S, dt), dG, dX)


# Reference docstrings: ``help(cython_backend.gemm)`` reads like the spec.
def _copy_docs():
    from . import reference

    for name in (
        "set_num_threads", "gemm", "gather_rows", "act_forward", "bias_act_forward",
        "dense_forward", "act_backward", "bias_grad", "dense_backward",
        "softmax_cross_entropy", "softmax_cross_entropy_onehot", "nll_loss",
        "sigmoid_binary_cross_entropy", "mse_loss", "poisson_loss", "sgd_update", "rmsprop_update",
        "adam_update", "sum_squares", "scale_inplace", "dropout_mask", "dropout_forward",
        "dropout_backward", "batchnorm_forward", "batchnorm_backward",
    ):
        fn = globals()[name]
        if fn.__doc__ is None:
            fn.__doc__ = getattr(reference, name).__doc__


_copy_docs()


def train_steps(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out):
    """Run ``n_steps`` training steps in one compiled, GIL-free call (see reference.train_steps)."""
    return int(_loop.train_steps(plan, loop, X, targets, sw, order, int(start), int(n_steps), losses_out,
                                 correct_out))


def make_predictor(plan):
    """A compiled inference object (see reference.make_predictor)."""
    return _predictor.Predictor(plan)
