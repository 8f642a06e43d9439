"""Row kernels and the loops over rows: activations and their derivatives, the bias,
the dense layer's products, the batch gather. Arithmetic runs in the arrays'
dtype (scalar parameters are cast once with ``X.dtype.type(...)``); products
go to BLAS through ``np.dot(a, b, out)``. Each row loop has a parallel
variant (see jit.variants): rows are independent.
"""
import math

import numba
import numpy as np
from numba.extending import overload

from ...activations import (
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
from .jit import jit, variants

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------- helpers
@jit
def _sigmoid(z, one):
    # exp of a non-positive number only: no overflow for either sign.
    e = math.exp(-abs(z))
    return (one if z >= 0 else e) / (one + e)  # a select, not a branch


@jit
def _weight_sum(sample_weight, n):
    if sample_weight.shape[0] == 0:
        return float(n)
    s = 0.0
    for i in range(sample_weight.shape[0]):
        s += sample_weight[i]
    return s


@jit
def _row_max(z):
    m = z[0]
    for j in range(1, z.shape[0]):
        if z[j] > m:
            m = z[j]
    return m


# ------------------------------------------------------------ linear algebra
@jit
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


@jit
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


def _gather_rows_body(X, idx, out):
    n_rows = X.shape[0]
    k = X.shape[1]
    for i in numba.prange(idx.shape[0]):
        r = idx[i]
        if r < 0:
            r += n_rows
        if r < 0 or r >= n_rows:
            raise IndexError("gather_rows: row index out of range")
        for j in range(k):
            out[i, j] = X[r, j]


_gather_rows, _gather_rows_par = variants(_gather_rows_body)


# ------------------------------------------------------------ activations
@jit
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


def _act_forward_body(Z, act, alpha, A):
    # Z, A : (n, k); A may be Z
    for i in numba.prange(Z.shape[0]):
        _act_row(Z[i], act, alpha, A[i])


def _bias_act_forward_body(Z, b, act, alpha, A):
    # Z : (n, k) IN/OUT; b : (k,) or (0,); A : (n, k), may be Z
    k = Z.shape[1]
    has_b = b.shape[0] != 0
    for i in numba.prange(Z.shape[0]):
        z = Z[i]
        if has_b:
            for j in range(k):
                z[j] += b[j]
        _act_row(z, act, alpha, A[i])


_act_forward, _act_forward_par = variants(_act_forward_body)
_bias_act_forward, _bias_act_forward_par = variants(_bias_act_forward_body)


@jit
def _dense_forward(X, W, b, act, alpha, Z, A):
    # X : (n, d), W : (d, k), Z, A : (n, k)
    np.dot(X, W, Z)
    _bias_act_forward(Z, b, act, alpha, A)


@jit
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


def _act_backward_body(Z, A, dA, act, alpha, dZ):
    # Z, A, dA, dZ : (n, k); dZ may be dA
    for i in numba.prange(Z.shape[0]):
        _act_backward_row(Z[i], A[i], dA[i], act, alpha, dZ[i])


_act_backward, _act_backward_par = variants(_act_backward_body)


@jit
def _bias_grad(dZ, db):
    # dZ : (n, k), db : (k,); row after row, as NumPy's axis-0 sum
    k = dZ.shape[1]
    for j in range(k):
        db[j] = 0
    for i in range(dZ.shape[0]):
        for j in range(k):
            db[j] += dZ[i, j]


@jit
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


