"""The fused losses: loss and gradient at the output in one pass over each row
(sums over rows accumulate in float64, in row order)."""
import math

from .jit import jit
from .rows import _row_max, _sigmoid, _weight_sum


# ------------------------------------------------------------ fused losses
@jit
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


@jit
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


@jit
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


@jit
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


@jit
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


@jit
def _first_negative(Y):
    # Flat index of the first entry that is not >= 0 (negative or NaN), or -1.
    n, k = Y.shape
    for i in range(n):
        for j in range(k):
            if not Y[i, j] >= 0:
                return i * k + j
    return -1


@jit
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


