"""Numba kernels: the names, signatures and semantics of :mod:`.reference`.

Each public function checks its arrays against the contract's table
(:mod:`fastmlp._native.contract`: shapes, dtypes, layout; the compiled code
does not check bounds) and dispatches to a private kernel of
:mod:`fastmlp.backends._numba` compiled with ``@njit``: the serial one, or
where rows (or elements) are independent and the work repays it, its
parallel variant compiled from the same function (``_numba.jit.variants``).
The private kernels take plain arrays and scalars only and allocate nothing
of the problem's size (except ``_gemm`` with ``beta != 0``, which no
training step uses), so the whole-epoch training loop calls them directly.

Conventions inside the kernels:

* Arithmetic is done in the arrays' dtype: scalar parameters are cast once
  with ``X.dtype.type(...)`` so float32 kernels stay float32 (and vectorise
  at float32 width); only sums that reduce many elements (losses, softmax
  denominators, ``sum_squares``) accumulate in float64.
* Matrix products go to BLAS through ``np.dot(a, b, out)``; the transpose
  of a C-contiguous array is F-contiguous, which BLAS takes without a copy.
* Row-wise work (bias + activation, softmax, losses) processes one row at a
  time, so a row is read from memory once and every later pass over it hits
  L1.
"""
import numba
import numpy as np

from .._native import plan as _plan
from .._native.codes import Act
from .._native.contract import check as _check
from ._numba import losses as _L
from ._numba import rows as _R
from ._numba import updates as _U
from ._numba.jit import parallel_ok as _par
from ._numba.loop import _Predictor, _train_steps, _unit_views

NAME = "numba"


def set_num_threads(n_threads):
    """Bound the threads of this backend's parallel loops (BLAS is bounded by
    the caller through threadpoolctl)."""
    numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))


def _int64(a):
    # integer labels and indices of another width, as the reference takes them
    return a.astype(np.int64) if isinstance(a, np.ndarray) and a.dtype.kind in "iu" and a.dtype != np.int64 else a


def _opt(a, like):
    # an empty optional array (no bias, no weights, no dX) of another dtype, as the reference takes it
    if isinstance(a, np.ndarray) and a.size == 0 and isinstance(like, np.ndarray) and a.dtype != like.dtype:
        return np.empty(a.shape, like.dtype)
    return a


def _check_act(act):
    if not 0 <= act < len(Act):
        raise ValueError(f"unknown activation code {act}")


def _check_gemm(A, B, C, trans_a, trans_b):
    for name, a in (("A", A), ("B", B), ("C", C)):
        if not (isinstance(a, np.ndarray) and a.ndim == 2 and a.flags.c_contiguous and a.dtype == C.dtype
                and a.dtype in (np.float32, np.float64)):
            raise ValueError(f"gemm: {name} must be a 2-D C-contiguous float32 or float64 array of C's dtype")
    if not C.flags.writeable:
        raise ValueError("gemm: C must be writeable")
    m, ka = (A.shape[1], A.shape[0]) if trans_a else A.shape
    kb, n = (B.shape[1], B.shape[0]) if trans_b else B.shape
    if ka != kb:
        raise ValueError(f"gemm: op(A) has {ka} columns but op(B) has {kb} rows.")
    if C.shape != (m, n):
        raise ValueError(f"C has shape {C.shape}, expected {(m, n)}.")


def gemm(A, B, C, trans_a, trans_b, beta):
    """C = op(A) @ op(B) + beta * C, op(M) = M.T when the flag is set.

    A, B : 2-D C-contiguous (IN); C : 2-D C-contiguous (IN/OUT);
    beta == 0.0 ignores the old content of C (even NaN).
    """
    _check_gemm(A, B, C, trans_a, trans_b)
    _R._gemm(A, B, C, bool(trans_a), bool(trans_b), float(beta))


def gather_rows(X, idx, out):
    """out[i] = X[idx[i]]. X : (N, k), idx : (n,) int64 in [0, N) (IN); out : (n, k) (OUT)."""
    idx = _int64(idx)
    _check("gather_rows", X, idx, out)
    (_R._gather_rows_par if _par(out.size) else _R._gather_rows)(X, idx, out)


def act_forward(Z, act, alpha, A):
    """A = f(Z) element-wise (row-wise for softmax / log-softmax); A may be Z."""
    _check_act(act)
    _check("act_forward", Z, A)
    (_R._act_forward_par if _par(Z.size) else _R._act_forward)(Z, int(act), float(alpha), A)


def bias_act_forward(Z, b, act, alpha, A):
    """Z += b (skipped when b is empty), then A = f(Z). Z : (n, k) (IN/OUT)."""
    _check_act(act)
    b = _opt(b, Z)
    _check("bias_act_forward", Z, b, A)
    (_R._bias_act_forward_par if _par(Z.size) else _R._bias_act_forward)(Z, b, int(act), float(alpha), A)


def dense_forward(X, W, b, act, alpha, Z, A):
    """Z = X @ W + b, A = f(Z). X : (n, d), W : (d, k), b : (k,) or (0,) (IN);
    Z, A : (n, k) (OUT), A may be Z."""
    _check_act(act)
    b = _opt(b, X)
    _check("dense_forward", X, W, b, Z, A)
    if _par(Z.size):
        _R._dot(X, W, Z, False, False)
        _R._bias_act_forward_par(Z, b, int(act), float(alpha), A)
    else:
        _R._dense_forward(X, W, b, int(act), float(alpha), Z, A)


def act_backward(Z, A, dA, act, alpha, dZ):
    """dZ = dA * f'(Z) (vector-Jacobian product for the row-wise ones); dZ may be dA.

    Raises ValueError for ``step`` (its derivative is zero everywhere).
    """
    _check_act(act)
    if act == Act.STEP:
        raise ValueError("step has a zero derivative everywhere; it cannot be trained through")
    _check("act_backward", Z, A, dA, dZ)
    (_R._act_backward_par if _par(Z.size) else _R._act_backward)(Z, A, dA, int(act), float(alpha), dZ)


def bias_grad(dZ, db):
    """db = dZ.sum(axis=0). dZ : (n, k) (IN); db : (k,) (OUT)."""
    _check("bias_grad", dZ, db)
    _R._bias_grad(dZ, db)


def dense_backward(X, W, dZ, l2, dW, db, dX):
    """dW = X.T @ dZ + l2 * W; db = dZ.sum(0) (skipped when empty);
    dX = dZ @ W.T (skipped when dX is empty)."""
    db, dX = _opt(db, X), _opt(dX, X)
    _check("dense_backward", X, W, dZ, dW, db, dX)
    _R._dense_backward(X, W, dZ, float(l2), dW, db, dX)


def softmax_cross_entropy(Z, y, sample_weight, P, dZ):
    """Softmax + cross-entropy from logits and int64 labels; returns the loss."""
    y = _int64(y)
    sample_weight = _opt(sample_weight, Z)
    _check("softmax_cross_entropy", Z, y, sample_weight, P, dZ)
    return float(_L._softmax_cross_entropy(Z, y, sample_weight, P, dZ))


def softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ):
    """Softmax + cross-entropy from logits and probability targets; returns the loss."""
    sample_weight = _opt(sample_weight, Z)
    _check("softmax_cross_entropy_onehot", Z, Y, sample_weight, P, dZ)
    return float(_L._softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ))


def nll_loss(logP, y, sample_weight, dlogP):
    """Negative log-likelihood on log-probabilities; returns the loss."""
    y = _int64(y)
    sample_weight = _opt(sample_weight, logP)
    _check("nll_loss", logP, y, sample_weight, dlogP)
    return float(_L._nll_loss(logP, y, sample_weight, dlogP))


def sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ):
    """Sigmoid + binary cross-entropy from logits (softplus form); returns the loss."""
    sample_weight = _opt(sample_weight, Z)
    _check("sigmoid_binary_cross_entropy", Z, Y, sample_weight, P, dZ)
    return float(_L._sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ))


def mse_loss(Yhat, Y, sample_weight, dYhat):
    """Mean squared error over all elements; returns the loss."""
    sample_weight = _opt(sample_weight, Yhat)
    _check("mse_loss", Yhat, Y, sample_weight, dYhat)
    return float(_L._mse_loss(Yhat, Y, sample_weight, dYhat))


def _check_nonnegative_targets(Y):
    bad = int(_L._first_negative(Y)) if Y.size else -1
    if bad >= 0:
        r, c = divmod(bad, Y.shape[1])
        raise ValueError(f"poisson_loss: targets must be >= 0 (counts or rates), got Y[{r}, {c}] = {Y[r, c]}.")


def poisson_loss(Z, Y, sample_weight, P, dZ):
    """Poisson loss exp(z) - y*z from log-rates; P = exp(Z); returns the loss.

    Raises ValueError before any work when Y has a negative entry.
    """
    sample_weight = _opt(sample_weight, Z)
    _check("poisson_loss", Z, Y, sample_weight, P, dZ)
    _check_nonnegative_targets(Y)
    return float(_L._poisson_loss(Z, Y, sample_weight, P, dZ))


def sgd_update(p, g, buf, lr, momentum, nesterov):
    """In-place SGD as torch.optim.SGD (dampening 0)."""
    buf = _opt(buf, p)
    _check("sgd_update", p, g, buf)
    if momentum != 0.0 and buf.shape[0] != p.shape[0]:
        raise ValueError(f"sgd_update: buf has length {buf.shape[0]}, expected {p.shape[0]} (momentum != 0).")
    (_U._sgd_update_par if _par(p.size) else _U._sgd_update)(p, g, buf, float(lr), float(momentum), bool(nesterov))


def rmsprop_update(p, g, sq, lr, rho, eps):
    """In-place RMSprop as torch.optim.RMSprop (alpha=rho, centered=False)."""
    _check("rmsprop_update", p, g, sq)
    (_U._rmsprop_update_par if _par(p.size) else _U._rmsprop_update)(p, g, sq, float(lr), float(rho), float(eps))


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    """In-place Adam as torch.optim.Adam (bias-corrected; ``step`` counts from 1)."""
    _check("adam_update", p, g, m, v)
    (_U._adam_update_par if _par(p.size) else _U._adam_update)(
        p, g, m, v, float(lr), float(beta1), float(beta2), float(eps), int(step))


def sum_squares(x):
    """Return sum(x**2) of a 1-D array as a float."""
    _check("sum_squares", x)
    return float(_U._sum_squares(x))


def scale_inplace(x, factor):
    """x *= factor for a 1-D array."""
    _check("scale_inplace", x)
    (_U._scale_inplace_par if _par(x.size) else _U._scale_inplace)(x, float(factor))


def dropout_mask(seed, step, unit, rate, M):
    """Fill M with an inverted-dropout mask (see reference.dropout_mask)."""
    _check("dropout_mask", M)
    if step < 0 or unit < 0:
        raise ValueError("dropout_mask: step and unit must be >= 0")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_mask: rate must be in [0, 1), got {rate}")
    (_U._dropout_mask_par if _par(M.size) else _U._dropout_mask)(np.uint64(seed), int(step), int(unit),
                                                                   float(rate), M)


def dropout_forward(Z, M, A):
    """A = Z * M element-wise; A may be Z."""
    _check("dropout_forward", Z, M, A)
    (_U._mul_mask_par if _par(Z.size) else _U._mul_mask)(Z, M, A)


def dropout_backward(dA, M, dZ):
    """dZ = dA * M element-wise; dZ may be dA."""
    _check("dropout_backward", dA, M, dZ)
    (_U._mul_mask_par if _par(dA.size) else _U._mul_mask)(dA, M, dZ)


def batchnorm_forward(X, G, eps, momentum, S, Z, A):
    """Batch normalization forward (see reference.batchnorm_forward)."""
    S = _opt(S, X)
    _check("batchnorm_forward", X, G, S, Z, A)
    if S.size and X.shape[0] < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {X.shape}")
    _U._batchnorm_forward(X, G, float(eps), float(momentum), S, Z, A)


def batchnorm_backward(dA, Z, G, eps, S, dG, dX):
    """Batch normalization backward (see reference.batchnorm_backward)."""
    S, dX = _opt(S, dA), _opt(dX, dA)
    _check("batchnorm_backward", dA, Z, G, S, dG, dX)
    _U._batchnorm_backward(dA, Z, G, float(eps), S, dG, dX)


# ------------------------------------------------------------ the step loop
def train_steps(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out):
    """Run ``n_steps`` training steps in one compiled call (see reference.train_steps)."""
    y, Y = _plan.check_train(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out)
    Ws, bs, dWs, dbs = _unit_views(plan)
    empty2 = np.empty((0, 0), dtype=plan.params.dtype)
    lists = [numba.typed.List(bufs) for bufs in (plan.Z, plan.A, plan.dA, plan.M)]
    return int(_train_steps(
        X, y, Y, sw, order, int(start), int(n_steps), plan.units, Ws, bs, dWs, dbs, plan.params, plan.grads,
        plan.x, plan.y, plan.Y, plan.sw, *lists, plan.P, empty2, int(plan.loss), int(loop.opt), loop.hyper,
        loop.state1, loop.state2, int(loop.t), float(loop.clip_norm), np.uint64(loop.seed), loop.lrs, float(loop.clip_value), losses_out,
        correct_out, int(loop.diag_every), int(loop.diag_phase), loop.diag_units, loop.diag_feats,
        np.empty(plan.params.shape[0] if loop.diag_every else 0, plan.params.dtype)))


def make_predictor(plan):
    """A compiled inference object (see reference.make_predictor)."""
    _plan.check_predict(plan)
    return _Predictor(plan)
