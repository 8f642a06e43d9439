"""Optimizer updates, the gradient norm's sum of squares, dropout masks and batch normalization."""
import math

import numba
import numpy as np

from .jit import jit, jit_reduce, variants


# ------------------------------------------------------------ optimizers
def _sgd_update_body(p, g, buf, lr, momentum, nesterov):
    # p, g, buf : (n_params,)
    lt = p.dtype.type(lr)
    if momentum == 0.0:
        for i in numba.prange(p.shape[0]):
            p[i] -= lt * g[i]
        return
    mt = p.dtype.type(momentum)
    tiny = np.finfo(p.dtype).tiny  # state below it is flushed (reference.flush_denormals)
    zero = p.dtype.type(0.0)
    if nesterov:
        for i in numba.prange(p.shape[0]):
            b = mt * buf[i] + g[i]
            b = zero if abs(b) < tiny else b
            buf[i] = b
            p[i] -= lt * (g[i] + mt * b)
    else:
        for i in numba.prange(p.shape[0]):
            b = mt * buf[i] + g[i]
            b = zero if abs(b) < tiny else b
            buf[i] = b
            p[i] -= lt * b


_sgd_update, _sgd_update_par = variants(_sgd_update_body)


def _rmsprop_update_body(p, g, sq, lr, rho, eps):
    # p, g, sq : (n_params,)
    lt = p.dtype.type(lr)
    rt = p.dtype.type(rho)
    ct = p.dtype.type(1.0 - rho)
    et = p.dtype.type(eps)
    tiny = np.finfo(p.dtype).tiny  # state below it is flushed (reference.flush_denormals)
    zero = p.dtype.type(0.0)
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        s = rt * sq[i] + ct * gi * gi
        s = zero if s < tiny else s
        sq[i] = s
        p[i] -= lt * gi / (math.sqrt(s) + et)


_rmsprop_update, _rmsprop_update_par = variants(_rmsprop_update_body)


def _adam_update_body(p, g, m, v, lr, beta1, beta2, eps, step):
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
    for i in numba.prange(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        mi = zero if abs(mi) < tiny else mi
        vi = zero if vi < tiny else vi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) / bc2_sqrt + et)


_adam_update, _adam_update_par = variants(_adam_update_body)


@jit_reduce
def _sum_squares(x):
    s = 0.0
    for i in range(x.shape[0]):
        w = np.float64(x[i])  # float() of a float32 stays float32 in Numba
        s += w * w
    return s


def _scale_inplace_body(x, factor):
    f = x.dtype.type(factor)
    for i in numba.prange(x.shape[0]):
        x[i] *= f


_scale_inplace, _scale_inplace_par = variants(_scale_inplace_body)


# ------------------------------------------------------------ dropout
# The counter-based generator of reference.dropout_mask, in uint64 arithmetic
# (every operand is a uint64: mixing it with int64 would give float64).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@jit
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _dropout_mask_body(seed, step, unit, rate, M):
    # seed : uint64; step, unit : int64 >= 0; M : (n, k) C-contiguous
    k1 = _mix64(seed + _GOLDEN * (np.uint64(step) + np.uint64(1)))
    k2 = _mix64(k1 + _GOLDEN * (np.uint64(unit) + np.uint64(1)))
    scale = M.dtype.type(1.0 / (1.0 - rate))
    zero = M.dtype.type(0.0)
    m = M.reshape(-1)
    for j in numba.prange(m.shape[0]):
        e = np.uint64(j) + np.uint64(1)
        u = np.float64(_mix64(k2 + _GOLDEN * e) >> np.uint64(11)) * (2.0 ** -53)
        m[j] = scale if u >= rate else zero


_dropout_mask, _dropout_mask_par = variants(_dropout_mask_body)


def _mul_mask_body(X, M, out):
    # out = X * M element-wise; out may be X
    for i in numba.prange(X.shape[0]):
        for j in range(X.shape[1]):
            out[i, j] = X[i, j] * M[i, j]


_mul_mask, _mul_mask_par = variants(_mul_mask_body)



# ------------------------------------------------------------ batch normalization
@jit
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


@jit
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

