"""Numba kernels: the names, signatures and semantics of :mod:`.reference`.

Each public function is a thin Python wrapper that checks what the compiled
code cannot report well (activation codes) and dispatches to a private
``_name`` compiled with ``@njit``. The private kernels take plain arrays and
scalars only and allocate nothing of the problem's size (except ``_gemm``
with ``beta != 0``, which no training step uses), so other ``@njit`` code,
such as a whole-epoch training loop, can call them directly.

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
import math

import numba
import numpy as np
from numba import njit
from numba.extending import overload

from .. import _config
from .._native import plan as _plan
from .._native.codes import Act, Loss, Opt, Unit
from ..activations import (
    ELU,
    EXP,
    GELU,
    IDENTITY,
    LEAKY_RELU,
    LOG_SOFTMAX,
    RELU,
    SELU,
    SELU_ALPHA,
    SELU_SCALE,
    SIGMOID,
    SOFTMAX,
    SOFTPLUS,
    STEP,
    SWISH,
    TANH,
)

NAME = "numba"
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_N_CODES = len(Act)
# error_model="numpy": x / 0 gives inf or nan as in NumPy instead of raising
# ZeroDivisionError, and the check it drops is what kept divisions and
# square roots from vectorising (Adam: 8x faster with it).
_jit = njit(cache=True, fastmath=_config.FASTMATH, error_model="numpy")
# A float64 sum of squares does not care about the order of its terms: let
# LLVM reassociate it so the reduction vectorises.
_jit_reduce = njit(cache=True, fastmath=_config.FASTMATH or {"reassoc"}, error_model="numpy")


def set_num_threads(n_threads):
    """Bound the threads of this backend's parallel loops (BLAS is bounded by
    the caller through threadpoolctl)."""
    numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))


def _check_act(act):
    if not 0 <= act < _N_CODES:
        raise ValueError(f"unknown activation code {act}")


# ---------------------------------------------------------------- helpers
@_jit
def _sigmoid(z, one):
    # exp of a non-positive number only: no overflow for either sign.
    e = math.exp(-abs(z))
    return (one if z >= 0 else e) / (one + e)  # a select, not a branch


@_jit
def _weight_sum(sample_weight, n):
    if sample_weight.shape[0] == 0:
        return float(n)
    s = 0.0
    for i in range(sample_weight.shape[0]):
        s += sample_weight[i]
    return s


@_jit
def _row_max(z):
    m = z[0]
    for j in range(1, z.shape[0]):
        if z[j] > m:
            m = z[j]
    return m


# ------------------------------------------------------------ linear algebra
@_jit
def _dot(A, B, C, trans_a, trans_b):
    # One np.dot per layout: a branch-dependent array type would not unify.
    if trans_a:
        if trans_b:
            np.dot(A.T, B.T, C)
        else:
            np.dot(A.T, B, C)
    elif trans_b:
        np.dot(A, B.T, C)
    else:
        np.dot(A, B, C)


def _dot_nt_maybe_empty(A, B, C):
    """C = A @ B.T, C possibly an empty non-C view (typed at compile time)."""


@overload(_dot_nt_maybe_empty)
def _dot_nt_maybe_empty_impl(A, B, C):
    # In njit code an empty dX is naturally x[:0, :0], whose layout is "A";
    # np.dot cannot even be typed with such an output, so only a C array
    # reaches it.
    if C.layout == "C":
        def impl(A, B, C):
            if C.size != 0:
                np.dot(A, B.T, C)
    else:
        def impl(A, B, C):
            if C.size != 0:
                raise ValueError("dense_backward: dX must be C-contiguous or empty")
    return impl


@_jit
def _gemm(A, B, C, trans_a, trans_b, beta):
    if beta == 0.0:
        _dot(A, B, C, trans_a, trans_b)
        return
    # np.dot always overwrites its output: accumulate through a temporary.
    # Training never takes this path (dense_backward adds l2 * W in a loop).
    T = np.empty_like(C)
    _dot(A, B, T, trans_a, trans_b)
    bt = C.dtype.type(beta)
    n, k = C.shape
    for i in range(n):
        for j in range(k):
            C[i, j] = bt * C[i, j] + T[i, j]


@_jit
def _gather_rows(X, idx, out):
    n_rows = X.shape[0]
    k = X.shape[1]
    for i in range(idx.shape[0]):
        r = idx[i]
        if r < 0:
            r += n_rows
        if r < 0 or r >= n_rows:
            raise IndexError("gather_rows: row index out of range")
        for j in range(k):
            out[i, j] = X[r, j]


# ------------------------------------------------------------ activations
@_jit
def _act_row(z, act, alpha, a):
    """a = f(z) for one row; a may be z."""
    k = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    al = z.dtype.type(alpha)
    if act == IDENTITY:
        for j in range(k):
            a[j] = z[j]
    elif act == SIGMOID:
        for j in range(k):
            a[j] = _sigmoid(z[j], one)
    elif act == TANH:
        for j in range(k):
            a[j] = math.tanh(z[j])
    elif act == RELU:
        for j in range(k):
            x = z[j]
            a[j] = zero if x <= 0 else x  # NaN propagates, as np.maximum
    elif act == LEAKY_RELU:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 0 else al * x
    elif act == ELU:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 0 else al * math.expm1(x)
    elif act == SELU:
        sa = z.dtype.type(SELU_ALPHA)
        sc = z.dtype.type(SELU_SCALE)
        for j in range(k):
            x = z[j]
            a[j] = sc * (x if x > 0 else sa * math.expm1(x))
    elif act == SOFTPLUS:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 20 else max(x, zero) + math.log1p(math.exp(-abs(x)))
    elif act == SWISH:
        for j in range(k):
            x = z[j]
            a[j] = x * _sigmoid(x, one)
    elif act == GELU:
        half = z.dtype.type(0.5)
        c = z.dtype.type(_SQRT_HALF)
        for j in range(k):
            x = z[j]
            a[j] = half * x * (one + math.erf(x * c))
    elif act == STEP:
        for j in range(k):
            a[j] = one if z[j] > 0 else zero
    elif act == EXP:
        for j in range(k):
            a[j] = math.exp(z[j])
    elif act == SOFTMAX:
        m = _row_max(z)
        s = 0.0
        for j in range(k):
            e = math.exp(z[j] - m)
            a[j] = e
            s += e
        st = z.dtype.type(s)
        for j in range(k):
            a[j] = a[j] / st
    elif act == LOG_SOFTMAX:
        m = _row_max(z)
        s = 0.0
        for j in range(k):
            s += math.exp(z[j] - m)
        ls = z.dtype.type(math.log(s))
        for j in range(k):
            a[j] = (z[j] - m) - ls
    else:
        raise ValueError("unknown activation code")


@_jit
def _act_forward(Z, act, alpha, A):
    # Z, A : (n, k); A may be Z
    for i in range(Z.shape[0]):
        _act_row(Z[i], act, alpha, A[i])


@_jit
def _bias_act_forward(Z, b, act, alpha, A):
    # Z : (n, k) IN/OUT; b : (k,) or (0,); A : (n, k), may be Z
    k = Z.shape[1]
    has_b = b.shape[0] != 0
    for i in range(Z.shape[0]):
        z = Z[i]
        if has_b:
            for j in range(k):
                z[j] += b[j]
        _act_row(z, act, alpha, A[i])


@_jit
def _dense_forward(X, W, b, act, alpha, Z, A):
    # X : (n, d), W : (d, k), Z, A : (n, k)
    np.dot(X, W, Z)
    _bias_act_forward(Z, b, act, alpha, A)


@_jit
def _act_backward_row(z, a, da, act, alpha, dz):
    """dz = da * f'(z) for one row; dz may be da."""
    k = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    al = z.dtype.type(alpha)
    if act == IDENTITY:
        for j in range(k):
            dz[j] = da[j]
    elif act == SIGMOID:
        for j in range(k):
            dz[j] = da[j] * (a[j] * (one - a[j]))
    elif act == TANH:
        for j in range(k):
            dz[j] = da[j] * (one - a[j] * a[j])
    elif act == RELU:
        for j in range(k):
            dz[j] = da[j] * (one if z[j] > 0 else zero)
    elif act == LEAKY_RELU:
        for j in range(k):
            dz[j] = da[j] * (one if z[j] > 0 else al)
    elif act == ELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (one if x > 0 else al * math.exp(x))
    elif act == SELU:
        sa = z.dtype.type(SELU_ALPHA)
        sc = z.dtype.type(SELU_SCALE)
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (sc * (one if x > 0 else sa * math.exp(x)))
    elif act == SOFTPLUS:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (one if x > 20 else _sigmoid(x, one))
    elif act == SWISH:
        for j in range(k):
            x = z[j]
            s = _sigmoid(x, one)
            dz[j] = da[j] * (s * (one + x * (one - s)))
    elif act == GELU:
        half = z.dtype.type(0.5)
        c = z.dtype.type(_SQRT_HALF)
        c2 = z.dtype.type(_INV_SQRT_2PI)
        for j in range(k):
            x = z[j]
            d = half * (one + math.erf(x * c)) + x * c2 * math.exp(-half * x * x)
            dz[j] = da[j] * d
    elif act == EXP:
        for j in range(k):
            dz[j] = da[j] * a[j]  # exp' = exp
    elif act == SOFTMAX:
        s = 0.0
        for j in range(k):
            s += da[j] * a[j]
        st = z.dtype.type(s)
        for j in range(k):
            dz[j] = a[j] * (da[j] - st)
    elif act == LOG_SOFTMAX:
        s = 0.0
        for j in range(k):
            s += da[j]
        st = z.dtype.type(s)
        for j in range(k):
            dz[j] = da[j] - math.exp(a[j]) * st
    elif act == STEP:
        raise ValueError("step has a zero derivative everywhere; it cannot be trained through")
    else:
        raise ValueError("unknown activation code")


@_jit
def _act_backward(Z, A, dA, act, alpha, dZ):
    # Z, A, dA, dZ : (n, k); dZ may be dA
    for i in range(Z.shape[0]):
        _act_backward_row(Z[i], A[i], dA[i], act, alpha, dZ[i])


@_jit
def _bias_grad(dZ, db):
    # dZ : (n, k), db : (k,); row after row, as NumPy's axis-0 sum
    k = dZ.shape[1]
    for j in range(k):
        db[j] = 0
    for i in range(dZ.shape[0]):
        for j in range(k):
            db[j] += dZ[i, j]


@_jit
def _dense_backward(X, W, dZ, l2, dW, db, dX):
    # X : (n, d), W : (d, k), dZ : (n, k), dW : (d, k), db : (k,)|(0,), dX : (n, d)|(0, 0)
    np.dot(X.T, dZ, dW)
    if l2 != 0.0:
        lt = W.dtype.type(l2)
        d, k = W.shape
        for i in range(d):
            for j in range(k):
                dW[i, j] = lt * W[i, j] + dW[i, j]
    if db.shape[0] != 0:
        _bias_grad(dZ, db)
    _dot_nt_maybe_empty(dZ, W, dX)


# ------------------------------------------------------------ fused losses
@_jit
def _softmax_cross_entropy(Z, y, sample_weight, P, dZ):
    # Z, P, dZ : (n, k); y : (n,) int64; sample_weight : (n,) or (0,)
    n, k = Z.shape
    has_w = sample_weight.shape[0] != 0
    wsum = _weight_sum(sample_weight, n)
    one = Z.dtype.type(1.0)
    zero = Z.dtype.type(0.0)
    loss = 0.0
    for i in range(n):
        z = Z[i]
        yi = y[i]
        if yi < 0 or yi >= k:
            raise ValueError("softmax_cross_entropy: label out of range [0, n_classes)")
        w = sample_weight[i] if has_w else 1.0
        m = _row_max(z)
        s = 0.0
        for j in range(k):
            s += math.exp(z[j] - m)
        lse = math.log(s)
        loss += w * (lse - (z[yi] - m))
        lse_t = Z.dtype.type(lse)
        coef = Z.dtype.type(w / wsum)
        for j in range(k):
            p = math.exp((z[j] - m) - lse_t)
            P[i, j] = p
            dZ[i, j] = (p - (one if j == yi else zero)) * coef
    return loss / wsum


@_jit
def _softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ):
    # Z, Y, P, dZ : (n, k); sample_weight : (n,) or (0,)
    n, k = Z.shape
    has_w = sample_weight.shape[0] != 0
    wsum = _weight_sum(sample_weight, n)
    loss = 0.0
    for i in range(n):
        z = Z[i]
        t = Y[i]
        w = sample_weight[i] if has_w else 1.0
        m = _row_max(z)
        s = 0.0
        ysum = 0.0
        for j in range(k):
            s += math.exp(z[j] - m)
            ysum += t[j]
        lse_t = Z.dtype.type(math.log(s))
        ysum_t = Z.dtype.type(ysum)
        coef = Z.dtype.type(w / wsum)
        row = 0.0
        for j in range(k):
            logp = (z[j] - m) - lse_t
            row += t[j] * logp
            p = math.exp(logp)
            P[i, j] = p
            dZ[i, j] = (p * ysum_t - t[j]) * coef
        loss -= w * row
    return loss / wsum


@_jit
def _nll_loss(logP, y, sample_weight, dlogP):
    # logP, dlogP : (n, k); y : (n,) int64
    n, k = logP.shape
    has_w = sample_weight.shape[0] != 0
    wsum = _weight_sum(sample_weight, n)
    loss = 0.0
    for i in range(n):
        yi = y[i]
        if yi < 0 or yi >= k:
            raise ValueError("nll_loss: label out of range [0, n_classes)")
        w = sample_weight[i] if has_w else 1.0
        loss += w * logP[i, yi]
        for j in range(k):
            dlogP[i, j] = 0
        dlogP[i, yi] = logP.dtype.type(-w / wsum)
    return -loss / wsum


@_jit
def _sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ):
    # Z, Y, P, dZ : (n, k)
    n, k = Z.shape
    has_w = sample_weight.shape[0] != 0
    wsum = _weight_sum(sample_weight, n)
    one = Z.dtype.type(1.0)
    zero = Z.dtype.type(0.0)
    loss = 0.0
    for i in range(n):
        w = sample_weight[i] if has_w else 1.0
        coef = Z.dtype.type(w / (wsum * k))
        row = 0.0
        for j in range(k):
            x = Z[i, j]
            t = Y[i, j]
            row += max(x, zero) - x * t + math.log1p(math.exp(-abs(x)))
            p = _sigmoid(x, one)
            P[i, j] = p
            dZ[i, j] = (p - t) * coef
        loss += w * row
    return loss / (wsum * k)


@_jit
def _mse_loss(Yhat, Y, sample_weight, dYhat):
    # Yhat, Y, dYhat : (n, k)
    n, k = Yhat.shape
    has_w = sample_weight.shape[0] != 0
    wsum = _weight_sum(sample_weight, n)
    loss = 0.0
    for i in range(n):
        w = sample_weight[i] if has_w else 1.0
        coef = Yhat.dtype.type(2.0 * w / (wsum * k))
        row = 0.0
        for j in range(k):
            diff = Yhat[i, j] - Y[i, j]
            row += diff * diff
            dYhat[i, j] = diff * coef
        loss += w * row
    return loss / (wsum * k)


@_jit
def _first_negative(Y):
    # Flat index of the first entry that is not >= 0 (negative or NaN), or -1.
    n, k = Y.shape
    for i in range(n):
        for j in range(k):
            if not Y[i, j] >= 0:
                return i * k + j
    return -1


@_jit
def _poisson_loss(Z, Y, sample_weight, P, dZ):
    # Z, Y, P, dZ : (n, k); targets already checked >= 0
    n, k = Z.shape
    has_w = sample_weight.shape[0] != 0
    wsum = _weight_sum(sample_weight, n)
    loss = 0.0
    for i in range(n):
        w = sample_weight[i] if has_w else 1.0
        coef = Z.dtype.type(w / (wsum * k))
        row = 0.0
        for j in range(k):
            x = Z[i, j]
            t = Y[i, j]
            e = math.exp(x)
            row += e - t * x
            P[i, j] = e
            dZ[i, j] = (e - t) * coef
        loss += w * row
    return loss / (wsum * k)


# ------------------------------------------------------------ optimizers
@_jit
def _sgd_update(p, g, buf, lr, momentum, nesterov):
    # p, g, buf : (n_params,)
    lt = p.dtype.type(lr)
    if momentum == 0.0:
        for i in range(p.shape[0]):
            p[i] -= lt * g[i]
        return
    mt = p.dtype.type(momentum)
    tiny = np.finfo(p.dtype).tiny  # state below it is flushed (reference.flush_denormals)
    zero = p.dtype.type(0.0)
    if nesterov:
        for i in range(p.shape[0]):
            b = mt * buf[i] + g[i]
            b = zero if abs(b) < tiny else b
            buf[i] = b
            p[i] -= lt * (g[i] + mt * b)
    else:
        for i in range(p.shape[0]):
            b = mt * buf[i] + g[i]
            b = zero if abs(b) < tiny else b
            buf[i] = b
            p[i] -= lt * b


@_jit
def _rmsprop_update(p, g, sq, lr, rho, eps):
    # p, g, sq : (n_params,)
    lt = p.dtype.type(lr)
    rt = p.dtype.type(rho)
    ct = p.dtype.type(1.0 - rho)
    et = p.dtype.type(eps)
    tiny = np.finfo(p.dtype).tiny  # state below it is flushed (reference.flush_denormals)
    zero = p.dtype.type(0.0)
    for i in range(p.shape[0]):
        gi = g[i]
        s = rt * sq[i] + ct * gi * gi
        s = zero if s < tiny else s
        sq[i] = s
        p[i] -= lt * gi / (math.sqrt(s) + et)


@_jit
def _adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    # p, g, m, v : (n_params,); step counts from 1
    b1 = p.dtype.type(beta1)
    b2 = p.dtype.type(beta2)
    c1 = p.dtype.type(1.0 - beta1)
    c2 = p.dtype.type(1.0 - beta2)
    step_size = p.dtype.type(lr / (1.0 - beta1**step))
    bc2_sqrt = p.dtype.type(math.sqrt(1.0 - beta2**step))
    et = p.dtype.type(eps)
    tiny = np.finfo(p.dtype).tiny  # state below it is flushed (reference.flush_denormals)
    zero = p.dtype.type(0.0)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        mi = zero if abs(mi) < tiny else mi
        vi = zero if vi < tiny else vi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) / bc2_sqrt + et)


@_jit_reduce
def _sum_squares(x):
    s = 0.0
    for i in range(x.shape[0]):
        w = np.float64(x[i])  # float() of a float32 stays float32 in Numba
        s += w * w
    return s


@_jit
def _scale_inplace(x, factor):
    f = x.dtype.type(factor)
    for i in range(x.shape[0]):
        x[i] *= f


# ------------------------------------------------------------ dropout
# The counter-based generator of reference.dropout_mask, in uint64 arithmetic
# (every operand is a uint64: mixing it with int64 would give float64).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@_jit
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@_jit
def _dropout_mask(seed, step, unit, rate, M):
    # seed : uint64; step, unit : int64 >= 0; M : (n, k) C-contiguous
    k1 = _mix64(seed + _GOLDEN * (np.uint64(step) + np.uint64(1)))
    k2 = _mix64(k1 + _GOLDEN * (np.uint64(unit) + np.uint64(1)))
    scale = M.dtype.type(1.0 / (1.0 - rate))
    zero = M.dtype.type(0.0)
    m = M.reshape(-1)
    e = np.uint64(0)
    for j in range(m.shape[0]):
        e += np.uint64(1)
        u = np.float64(_mix64(k2 + _GOLDEN * e) >> np.uint64(11)) * (2.0 ** -53)
        m[j] = scale if u >= rate else zero


@_jit
def _mul_mask(X, M, out):
    # out = X * M element-wise; out may be X
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            out[i, j] = X[i, j] * M[i, j]


# ------------------------------------------------------------ public API
def gemm(A, B, C, trans_a, trans_b, beta):
    """C = op(A) @ op(B) + beta * C, op(M) = M.T when the flag is set.

    A, B : 2-D C-contiguous (IN); C : 2-D C-contiguous (IN/OUT);
    beta == 0.0 ignores the old content of C (even NaN).
    """
    _gemm(A, B, C, bool(trans_a), bool(trans_b), float(beta))


def gather_rows(X, idx, out):
    """out[i] = X[idx[i]]. X : (N, k), idx : (n,) int64 (IN); out : (n, k) (OUT)."""
    _gather_rows(X, idx, out)


def act_forward(Z, act, alpha, A):
    """A = f(Z) element-wise (row-wise for softmax / log-softmax); A may be Z."""
    _check_act(act)
    _act_forward(Z, int(act), float(alpha), A)


def bias_act_forward(Z, b, act, alpha, A):
    """Z += b (skipped when b is empty), then A = f(Z). Z : (n, k) (IN/OUT)."""
    _check_act(act)
    _bias_act_forward(Z, b, int(act), float(alpha), A)


def dense_forward(X, W, b, act, alpha, Z, A):
    """Z = X @ W + b, A = f(Z). X : (n, d), W : (d, k), b : (k,) or (0,) (IN);
    Z, A : (n, k) (OUT), A may be Z."""
    _check_act(act)
    _dense_forward(X, W, b, int(act), float(alpha), Z, A)


def act_backward(Z, A, dA, act, alpha, dZ):
    """dZ = dA * f'(Z) (vector-Jacobian product for the row-wise ones); dZ may be dA.

    Raises ValueError for ``step`` (its derivative is zero everywhere).
    """
    _check_act(act)
    if act == STEP:
        raise ValueError("step has a zero derivative everywhere; it cannot be trained through")
    _act_backward(Z, A, dA, int(act), float(alpha), dZ)


def bias_grad(dZ, db):
    """db = dZ.sum(axis=0). dZ : (n, k) (IN); db : (k,) (OUT)."""
    _bias_grad(dZ, db)


def dense_backward(X, W, dZ, l2, dW, db, dX):
    """dW = X.T @ dZ + l2 * W; db = dZ.sum(0) (skipped when empty);
    dX = dZ @ W.T (skipped when dX is empty)."""
    _dense_backward(X, W, dZ, float(l2), dW, db, dX)


def softmax_cross_entropy(Z, y, sample_weight, P, dZ):
    """Softmax + cross-entropy from logits and int64 labels; returns the loss."""
    return float(_softmax_cross_entropy(Z, y, sample_weight, P, dZ))


def softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ):
    """Softmax + cross-entropy from logits and probability targets; returns the loss."""
    return float(_softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ))


def nll_loss(logP, y, sample_weight, dlogP):
    """Negative log-likelihood on log-probabilities; returns the loss."""
    return float(_nll_loss(logP, y, sample_weight, dlogP))


def sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ):
    """Sigmoid + binary cross-entropy from logits (softplus form); returns the loss."""
    return float(_sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ))


def mse_loss(Yhat, Y, sample_weight, dYhat):
    """Mean squared error over all elements; returns the loss."""
    return float(_mse_loss(Yhat, Y, sample_weight, dYhat))


def _check_nonnegative_targets(Y):
    bad = int(_first_negative(Y)) if Y.size else -1
    if bad >= 0:
        r, c = divmod(bad, Y.shape[1])
        raise ValueError(f"poisson_loss: targets must be >= 0 (counts or rates), got Y[{r}, {c}] = {Y[r, c]}.")


def poisson_loss(Z, Y, sample_weight, P, dZ):
    """Poisson loss exp(z) - y*z from log-rates; P = exp(Z); returns the loss.

    Raises ValueError before any work when Y has a negative entry.
    """
    _check_nonnegative_targets(Y)
    return float(_poisson_loss(Z, Y, sample_weight, P, dZ))


def sgd_update(p, g, buf, lr, momentum, nesterov):
    """In-place SGD as torch.optim.SGD (dampening 0)."""
    _sgd_update(p, g, buf, float(lr), float(momentum), bool(nesterov))


def rmsprop_update(p, g, sq, lr, rho, eps):
    """In-place RMSprop as torch.optim.RMSprop (alpha=rho, centered=False)."""
    _rmsprop_update(p, g, sq, float(lr), float(rho), float(eps))


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    """In-place Adam as torch.optim.Adam (bias-corrected; ``step`` counts from 1)."""
    _adam_update(p, g, m, v, float(lr), float(beta1), float(beta2), float(eps), int(step))


def sum_squares(x):
    """Return sum(x**2) of a 1-D array as a float."""
    return float(_sum_squares(x))


def scale_inplace(x, factor):
    """x *= factor for a 1-D array."""
    _scale_inplace(x, float(factor))


def dropout_mask(seed, step, unit, rate, M):
    """Fill M with an inverted-dropout mask (see reference.dropout_mask)."""
    _dropout_mask(np.uint64(seed), int(step), int(unit), float(rate), M)


def dropout_forward(Z, M, A):
    """A = Z * M element-wise; A may be Z."""
    _mul_mask(Z, M, A)


def dropout_backward(dA, M, dZ):
    """dZ = dA * M element-wise; dZ may be dA."""
    _mul_mask(dA, M, dZ)


# ------------------------------------------------------------ batch normalization
@_jit
def _batchnorm_forward(X, G, eps, momentum, S, Z, A):
    # see reference.batchnorm_forward; training when S.shape[0] != 0
    n, k = X.shape
    if S.shape[0] != 0:
        for j in range(k):
            acc = 0.0
            for r in range(n):
                acc += np.float64(X[r, j])
            mean = acc / n
            acc = 0.0
            for r in range(n):
                d = np.float64(X[r, j]) - mean
                acc += d * d
            var = acc / n
            S[0, j] = mean
            S[1, j] = 1.0 / math.sqrt(var + eps)
            G[2, j] = (1.0 - momentum) * np.float64(G[2, j]) + momentum * mean
            G[3, j] = (1.0 - momentum) * np.float64(G[3, j]) + momentum * (var * (n / (n - 1.0)))
        for r in range(n):
            for j in range(k):
                z = (X[r, j] - S[0, j]) * S[1, j]
                Z[r, j] = z
                A[r, j] = z * G[0, j] + G[1, j]
    else:
        for r in range(n):
            for j in range(k):
                inv = X.dtype.type(1.0 / math.sqrt(np.float64(G[3, j]) + eps))
                z = (X[r, j] - G[2, j]) * inv
                Z[r, j] = z
                A[r, j] = z * G[0, j] + G[1, j]


@_jit
def _batchnorm_backward(dA, Z, G, eps, S, dG, dX):
    # see reference.batchnorm_backward
    n, k = dA.shape
    for j in range(k):
        db = 0.0
        dg = 0.0
        for r in range(n):
            dy = np.float64(dA[r, j])
            db += dy
            dg += dy * Z[r, j]
        dG[0, j] = dg
        dG[1, j] = db
        if dX.shape[0] == 0:
            continue
        if S.shape[0] != 0:
            c = np.float64(G[0, j]) * np.float64(S[1, j]) / n
            for r in range(n):
                dX[r, j] = c * (n * np.float64(dA[r, j]) - db - Z[r, j] * dg)
        else:
            c = np.float64(G[0, j]) / math.sqrt(np.float64(G[3, j]) + eps)
            for r in range(n):
                dX[r, j] = dA[r, j] * c


def batchnorm_forward(X, G, eps, momentum, S, Z, A):
    """Batch normalization forward (see reference.batchnorm_forward)."""
    if S.size and X.shape[0] < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {X.shape}")
    _batchnorm_forward(X, G, float(eps), float(momentum), S, Z, A)


def batchnorm_backward(dA, Z, G, eps, S, dG, dX):
    """Batch normalization backward (see reference.batchnorm_backward)."""
    _batchnorm_backward(dA, Z, G, float(eps), S, dG, dX)


# ------------------------------------------------------------ the step loop
@_jit_reduce
def _sum_squares_2d(W):
    s = 0.0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            w = np.float64(W[i, j])
            s += w * w
    return s


@_jit
def _count_correct(out, y, Y, loss_kind):
    # Correct predictions of a batch from logits (or log-probabilities).
    n, k = out.shape
    if loss_kind == Loss.BCE:  # mean over the columns of each row
        c = 0
        for i in range(n):
            for j in range(k):
                if (out[i, j] > 0) == (Y[i, j] > 0.5):
                    c += 1
        return c / k
    if loss_kind == Loss.MSE or loss_kind == Loss.POISSON:  # no accuracy
        return 0.0
    c = 0
    for i in range(n):
        best = 0
        for j in range(1, k):
            if out[i, j] > out[i, best]:
                best = j
        if loss_kind == Loss.CE_ONEHOT:
            truth = 0
            for j in range(1, k):
                if Y[i, j] > Y[i, truth]:
                    truth = j
        else:
            truth = y[i]
        if best == truth:
            c += 1
    return float(c)


@_jit
def _train_steps(X, y, Y, sw, order, start, n_steps, units, Ws, bs, dWs, dbs, params, grads, x_buf, y_buf,
                 Y_buf, sw_buf, Z, A, dA, M, P, empty2, loss_kind, opt_kind, hyper, state1, state2, t0,
                 clip_norm, seed, losses_out, correct_out):
    rows = x_buf.shape[0]
    L = len(Z) - 1
    fused = (loss_kind == Loss.CE or loss_kind == Loss.CE_ONEHOT or loss_kind == Loss.BCE
             or loss_kind == Loss.POISSON)
    h = hyper[0]
    for s in range(n_steps):
        idx = order[start + s * rows:start + (s + 1) * rows]
        _gather_rows(X, idx, x_buf)
        if y.shape[0] != 0:
            for i in range(rows):
                y_buf[i] = y[idx[i]]
        if Y.shape[0] != 0:
            _gather_rows(Y, idx, Y_buf)
        if sw.shape[0] != 0:
            for i in range(rows):
                sw_buf[i] = sw[idx[i]]
        # forward
        for i in range(L + 1):
            u = units[i]
            if u.kind == Unit.DENSE:
                _dense_forward(x_buf if i == 0 else A[i - 1], Ws[i], bs[i], u.act, u.alpha, Z[i], A[i])
            elif u.kind == Unit.DROPOUT:
                _dropout_mask(seed, t0 + s, i, u.rate, M[i])
                _mul_mask(Z[i], M[i], A[i])
            elif u.kind == Unit.BATCHNORM:
                _batchnorm_forward(x_buf if i == 0 else A[i - 1], Ws[i], u.eps, u.momentum, M[i], Z[i], A[i])
            else:
                _act_forward(Z[i], u.act, u.alpha, A[i])
        # fused loss: the gradient at the output lands in dA[L]
        if loss_kind == Loss.CE:
            loss = _softmax_cross_entropy(Z[L], y_buf, sw_buf, P, dA[L])
        elif loss_kind == Loss.CE_ONEHOT:
            loss = _softmax_cross_entropy_onehot(Z[L], Y_buf, sw_buf, P, dA[L])
        elif loss_kind == Loss.BCE:
            loss = _sigmoid_binary_cross_entropy(Z[L], Y_buf, sw_buf, P, dA[L])
        elif loss_kind == Loss.POISSON:
            loss = _poisson_loss(Z[L], Y_buf, sw_buf, P, dA[L])
        elif loss_kind == Loss.NLL:
            loss = _nll_loss(A[L], y_buf, sw_buf, dA[L])
        else:
            loss = _mse_loss(A[L], Y_buf, sw_buf, dA[L])
        # backward
        for i in range(L, -1, -1):
            u = units[i]
            if u.act != IDENTITY and (u.kind == Unit.DENSE or i > 0):
                _act_backward(Z[i], A[i], dA[i], u.act, u.alpha, dA[i])
            if u.kind == Unit.DROPOUT and i > 0:
                _mul_mask(dA[i], M[i], dA[i])
            if u.kind == Unit.BATCHNORM:
                _batchnorm_backward(dA[i], Z[i], Ws[i], u.eps, M[i], dWs[i], dA[i - 1] if i > 0 else empty2)
            if u.kind == Unit.DENSE:
                if u.l2 != 0.0:
                    loss += 0.5 * u.l2 * _sum_squares_2d(Ws[i])
                if i > 0:
                    _dense_backward(A[i - 1], Ws[i], dA[i], u.l2, dWs[i], dbs[i], dA[i - 1])
                else:
                    _dense_backward(x_buf, Ws[i], dA[i], u.l2, dWs[i], dbs[i], empty2)
        losses_out[s] = loss
        correct_out[s] = _count_correct(Z[L] if fused else A[L], y_buf, Y_buf, loss_kind)
        if not math.isfinite(loss):
            return s
        if clip_norm > 0.0:
            norm = math.sqrt(_sum_squares(grads))
            if norm > clip_norm:
                _scale_inplace(grads, clip_norm / (norm + 1e-6))
        if opt_kind == Opt.SGD:
            _sgd_update(params, grads, state1, h.lr, h.momentum, h.nesterov != 0.0)
        elif opt_kind == Opt.RMSPROP:
            _rmsprop_update(params, grads, state1, h.lr, h.rho, h.eps)
        elif opt_kind == Opt.ADAM:
            _adam_update(params, grads, state1, state2, h.lr, h.beta1, h.beta2, h.eps, t0 + s + 1)
    return n_steps


def _unit_views(plan):
    """Typed lists of each unit's W, b, dW, db (empty placeholders for units without them)."""
    params, grads = plan.params, plan.grads
    dt = params.dtype
    e2, e1 = np.empty((0, 0), dtype=dt), np.empty(0, dtype=dt)
    Ws, bs, dWs, dbs = (numba.typed.List() for _ in range(4))
    for u in plan.units:
        kind, fan_in, fan_out, w_off = int(u["kind"]), int(u["fan_in"]), int(u["fan_out"]), int(u["w_off"])
        if kind == Unit.DENSE:
            nw, b_off = fan_in * fan_out, int(u["b_off"])
            Ws.append(params[w_off:w_off + nw].reshape(fan_in, fan_out))
            dWs.append(grads[w_off:w_off + nw].reshape(fan_in, fan_out))
            bs.append(params[b_off:b_off + fan_out] if u["use_bias"] else e1)
            dbs.append(grads[b_off:b_off + fan_out] if u["use_bias"] else e1)
        elif kind == Unit.BATCHNORM:  # the (4, k) blocks [gamma, beta, running mean, running var]
            Ws.append(params[w_off:w_off + 4 * fan_out].reshape(4, fan_out))
            dWs.append(grads[w_off:w_off + 4 * fan_out].reshape(4, fan_out))
            bs.append(e1)
            dbs.append(e1)
        else:
            Ws.append(e2)
            dWs.append(e2)
            bs.append(e1)
            dbs.append(e1)
    return Ws, bs, dWs, dbs


def train_steps(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out):
    """Run ``n_steps`` training steps in one compiled call (see reference.train_steps)."""
    y, Y = _plan.check_train(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out)
    Ws, bs, dWs, dbs = _unit_views(plan)
    empty2 = np.empty((0, 0), dtype=plan.params.dtype)
    lists = [numba.typed.List(bufs) for bufs in (plan.Z, plan.A, plan.dA, plan.M)]
    return int(_train_steps(
        X, y, Y, sw, order, int(start), int(n_steps), plan.units, Ws, bs, dWs, dbs, plan.params, plan.grads,
        plan.x, plan.y, plan.Y, plan.sw, *lists, plan.P, empty2, int(plan.loss), int(loop.opt), loop.hyper,
        loop.state1, loop.state2, int(loop.t), float(loop.clip_norm), np.uint64(loop.seed), losses_out,
        correct_out))


@_jit
def _predict_rows(X, units, Ws, bs, x_buf, Z, A, empty2, out):
    # One forward pass over buffers of exactly X's rows; False on NaN/inf in X.
    # The calls and their argument types are the training loop's, so their
    # compiled code is shared instead of compiled again for sliced arrays.
    n, d = X.shape
    for r in range(n):
        for j in range(d):
            v = X[r, j]
            if not math.isfinite(v):
                return False
            x_buf[r, j] = v
    L = len(Z) - 1
    for i in range(L + 1):
        u = units[i]
        if u.kind == Unit.DENSE:
            _dense_forward(x_buf if i == 0 else A[i - 1], Ws[i], bs[i], u.act, u.alpha, Z[i], A[i])
        elif u.kind == Unit.BATCHNORM:
            _batchnorm_forward(x_buf if i == 0 else A[i - 1], Ws[i], u.eps, 0.0, empty2, Z[i], A[i])
        else:
            _act_forward(Z[i], u.act, u.alpha, A[i])
    out[...] = A[L]
    return True


class _Predictor:
    """Compiled make_predictor: typed lists built once per row count (a few
    are kept); ``run`` is one jitted call."""

    _KEEP = 8  # row counts with buffers of their own

    def __init__(self, plan):
        self.dtype, self.capacity, self.d_in = plan.x.dtype, plan.rows, plan.x.shape[1]
        self.d_out = int(plan.units[-1]["fan_out"])
        self.Ws, self.bs, _, _ = _unit_views(plan)
        self.units = plan.units.copy()
        self.x_buf, self.Z, self.A = plan.x, list(plan.Z), list(plan.A)
        self.empty2 = np.empty((0, 0), dtype=plan.x.dtype)
        self._by_rows = {}

    def _buffers(self, n):
        # C-contiguous buffers of n rows with the aliasing of the given ones
        # (Z[i] is A[i-1] after an activation-only unit, A[i] is Z[i] for the identity)
        bufs = self._by_rows.get(n)
        if bufs is None:
            if len(self._by_rows) >= self._KEEP:
                self._by_rows.clear()
            x = np.empty((n, self.d_in), self.dtype)
            Z, A, prev, prev0 = [], [], x, self.x_buf
            for z0, a0 in zip(self.Z, self.A):
                z = prev if z0 is prev0 else np.empty((n, z0.shape[1]), self.dtype)
                a = z if a0 is z0 else np.empty((n, a0.shape[1]), self.dtype)
                Z.append(z)
                A.append(a)
                prev, prev0 = a, a0
            bufs = self._by_rows[n] = (x, numba.typed.List(Z), numba.typed.List(A))
        return bufs

    def run(self, X, out):
        if not (type(X) is np.ndarray and X.dtype == self.dtype and X.ndim == 2
                and X.flags.c_contiguous and X.shape[1] == self.d_in and 1 <= X.shape[0] <= self.capacity):
            raise ValueError(f"predictor: X must be a C-contiguous array of the model's dtype, "
                             f"(1..{self.capacity}, {self.d_in})")
        if not (type(out) is np.ndarray and out.dtype == self.dtype and out.flags.c_contiguous
                and out.flags.writeable and out.shape == (X.shape[0], self.d_out)):
            raise ValueError(f"predictor: out must be a writeable C-contiguous ({X.shape[0]}, {self.d_out}) "
                             "array of the model's dtype")
        x_buf, Z, A = self._buffers(X.shape[0])
        return _predict_rows(X, self.units, self.Ws, self.bs, x_buf, Z, A, self.empty2, out)


def make_predictor(plan):
    """A compiled inference object (see reference.make_predictor)."""
    _plan.check_predict(plan)
    return _Predictor(plan)
