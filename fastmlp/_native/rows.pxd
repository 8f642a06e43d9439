"""Row kernels: an activation, its derivative and each loss over one row of k values.

The def kernels of ``kernels.pyx``, the training loop and the predictor all
run these, row by row (a row is read from memory once, and every later pass
over it hits L1). ``cdef inline`` here, so that they inline in every module.
One loop per activation code, so that each can vectorize. Pointers are to
C-contiguous rows; sums that reduce a row accumulate in double.
"""
from cython cimport floating
from libc.math cimport log
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from fastmlp._native.common cimport *
from fastmlp._native.scalar cimport (
    INV_SQRT_2PI, SELU_ALPHA, SELU_SCALE, SQRT_HALF, _erf, _exp, _expm1, _fabs, _log1p, _row_max, _sigmoid,
    _softplus, _tanh,
)


# ------------------------------------------------------------ activations
cdef inline void _act_row(const floating* z, floating* a, Py_ssize_t k, int act,
                          floating alpha) noexcept nogil:
    """a = f(z) over one row of k values; a may be z."""
    cdef Py_ssize_t j
    cdef floating x, m, lse
    cdef double acc
    if k == 0:
        return
    if act == ACT_IDENTITY:
        if <const floating*>a != z:
            memcpy(a, z, k * sizeof(floating))
    elif act == ACT_SIGMOID:
        for j in range(k):
            a[j] = _sigmoid(z[j])
    elif act == ACT_TANH:
        for j in range(k):
            a[j] = _tanh(z[j])
    elif act == ACT_RELU:
        for j in range(k):
            x = z[j]
            a[j] = 0 if x < 0 else x  # NaN propagates, as np.maximum
    elif act == ACT_LEAKY_RELU:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 0 else alpha * x
    elif act == ACT_ELU:
        for j in range(k):
            x = z[j]
            a[j] = x if x > 0 else alpha * _expm1(x if x < 0 else <floating>0)
    elif act == ACT_SELU:
        for j in range(k):
            x = z[j]
            a[j] = <floating>SELU_SCALE * (
                x if x > 0 else <floating>SELU_ALPHA * _expm1(x if x < 0 else <floating>0))
    elif act == ACT_SOFTPLUS:
        for j in range(k):
            a[j] = _softplus(z[j])
    elif act == ACT_SWISH:
        for j in range(k):
            x = z[j]
            a[j] = x * _sigmoid(x)
    elif act == ACT_GELU:
        for j in range(k):
            x = z[j]
            a[j] = <floating>0.5 * x * (1 + _erf(x * <floating>SQRT_HALF))
    elif act == ACT_STEP:
        for j in range(k):
            a[j] = 1 if z[j] > 0 else 0
    elif act == ACT_EXP:
        for j in range(k):
            a[j] = _exp(z[j])
    elif act == ACT_SOFTMAX:
        m = _row_max(z, k)
        acc = 0.0
        for j in range(k):
            x = _exp(z[j] - m)
            a[j] = x
            acc += x
        x = <floating>acc
        for j in range(k):
            a[j] = a[j] / x
    elif act == ACT_LOG_SOFTMAX:
        m = _row_max(z, k)
        acc = 0.0
        for j in range(k):
            acc += _exp(z[j] - m)
        lse = <floating>log(acc)
        for j in range(k):
            a[j] = (z[j] - m) - lse


cdef inline void _bias_act_row(floating* z, const floating* b, floating* a, Py_ssize_t k,
                               bint has_bias, int act, floating alpha) noexcept nogil:
    """z += b (when has_bias), then a = f(z)."""
    cdef Py_ssize_t j
    if has_bias:
        for j in range(k):
            z[j] = z[j] + b[j]
    _act_row(z, a, k, act, alpha)


cdef inline void _act_grad_row(const floating* z, const floating* a, const floating* da,
                               floating* dz, Py_ssize_t k, int act, floating alpha) noexcept nogil:
    """dz = da * f'(z) over one row (a vector-Jacobian product for the
    row-wise codes); dz may be da."""
    cdef Py_ssize_t j
    cdef floating x, s
    cdef double acc
    if k == 0:
        return
    if act == ACT_IDENTITY:
        if <const floating*>dz != da:
            memcpy(dz, da, k * sizeof(floating))
    elif act == ACT_SIGMOID:
        for j in range(k):
            dz[j] = da[j] * (a[j] * (1 - a[j]))
    elif act == ACT_TANH:
        for j in range(k):
            dz[j] = da[j] * (1 - a[j] * a[j])
    elif act == ACT_RELU:
        for j in range(k):
            dz[j] = da[j] * (1 if z[j] > 0 else 0)
    elif act == ACT_LEAKY_RELU:
        for j in range(k):
            dz[j] = da[j] * (1 if z[j] > 0 else alpha)
    elif act == ACT_ELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (1 if x > 0 else alpha * _exp(x))
    elif act == ACT_SELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (<floating>SELU_SCALE * (1 if x > 0 else <floating>SELU_ALPHA * _exp(x)))
    elif act == ACT_SOFTPLUS:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (1 if x > 20 else _sigmoid(x))
    elif act == ACT_SWISH:
        for j in range(k):
            x = z[j]
            s = _sigmoid(x)
            dz[j] = da[j] * (s * (1 + x * (1 - s)))
    elif act == ACT_GELU:
        for j in range(k):
            x = z[j]
            dz[j] = da[j] * (<floating>0.5 * (1 + _erf(x * <floating>SQRT_HALF))
                             + x * <floating>INV_SQRT_2PI * _exp(<floating>-0.5 * x * x))
    elif act == ACT_STEP:  # zero derivative; the def wrapper and the plan checks refuse it
        memset(dz, 0, k * sizeof(floating))
    elif act == ACT_EXP:  # exp' = exp
        for j in range(k):
            dz[j] = da[j] * a[j]
    elif act == ACT_SOFTMAX:
        acc = 0.0
        for j in range(k):
            acc += da[j] * a[j]
        s = <floating>acc
        for j in range(k):
            dz[j] = a[j] * (da[j] - s)
    elif act == ACT_LOG_SOFTMAX:
        acc = 0.0
        for j in range(k):
            acc += da[j]
        s = <floating>acc
        for j in range(k):
            dz[j] = da[j] - _exp(a[j]) * s


cdef inline void _col_sums(const floating* dZ, floating* db, Py_ssize_t n, Py_ssize_t k,
                           Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """db[j] = the sum of column j of dZ (n rows of k), for j in [j0, j1); db points at
    column 0. Row after row, as NumPy's axis-0 sum of a C array: the same rounding."""
    cdef Py_ssize_t i, j
    cdef const floating* row
    for j in range(j0, j1):
        db[j] = 0
    for i in range(n):
        row = dZ + i * k
        for j in range(j0, j1):
            db[j] = db[j] + row[j]


# ------------------------------------------------------------ losses
# Each returns the row's loss (before its weight) and writes the row of the
# gradient, scaled by c (the row's weight over the batch's denominator), and
# of P where the loss has one.
cdef inline double _weight(const floating* sw, Py_ssize_t i) noexcept nogil:
    """The weight of row i; sw NULL: no weights."""
    return 1.0 if sw == NULL else <double>sw[i]


cdef inline double _sce_row(const floating* z, int64_t y, floating c, floating* p, floating* dz,
                            Py_ssize_t k) noexcept nogil:
    """Softmax + cross-entropy with label y: returns lse - s[y]; p, dz may be z."""
    cdef Py_ssize_t j
    cdef floating m, lse, x
    cdef double acc = 0.0, loss
    if k == 0:
        return 0.0
    m = _row_max(z, k)
    for j in range(k):
        acc += _exp(z[j] - m)
    lse = <floating>log(acc)
    loss = <double>(lse - (z[y] - m))
    for j in range(k):
        x = _exp((z[j] - m) - lse)
        p[j] = x
        dz[j] = (x - (1 if j == y else 0)) * c
    return loss


cdef inline double _sce_onehot_row(const floating* z, const floating* t, floating c, floating* p,
                                   floating* dz, Py_ssize_t k) noexcept nogil:
    """Softmax + cross-entropy with the target row t: returns -sum t * log p."""
    cdef Py_ssize_t j
    cdef floating m, lse, logp, x, tsum
    cdef double acc = 0.0, tacc = 0.0, loss = 0.0
    if k == 0:
        return 0.0
    m = _row_max(z, k)
    for j in range(k):
        acc += _exp(z[j] - m)
        tacc += t[j]
    lse = <floating>log(acc)
    tsum = <floating>tacc
    for j in range(k):
        logp = (z[j] - m) - lse
        loss -= t[j] * logp
        x = _exp(logp)
        p[j] = x
        dz[j] = (x * tsum - t[j]) * c
    return loss


cdef inline double _nll_row(const floating* logp, int64_t y, floating c, floating* dlogp,
                            Py_ssize_t k) noexcept nogil:
    """Negative log-likelihood: returns logp[y] (read before the row of dlogp, which
    may be logp, is zeroed); dlogp is -c at y."""
    cdef double lp = logp[y]
    memset(dlogp, 0, k * sizeof(floating))
    dlogp[y] = -c
    return lp


cdef inline double _bce_row(const floating* z, const floating* t, floating c, floating* p,
                            floating* dz, Py_ssize_t k) noexcept nogil:
    """Sigmoid + binary cross-entropy (softplus form): returns the row's sum."""
    cdef Py_ssize_t j
    cdef floating x, s
    cdef double loss = 0.0
    for j in range(k):
        x = z[j]
        loss += (x if x > 0 else 0) - x * t[j] + _log1p(_exp(-_fabs(x)))
        s = _sigmoid(x)
        p[j] = s
        dz[j] = (s - t[j]) * c
    return loss


cdef inline double _mse_row(const floating* yhat, const floating* t, floating c, floating* dy,
                            Py_ssize_t k) noexcept nogil:
    """Squared error: returns the row's sum; dy = (yhat - t) * c (c carries the 2)."""
    cdef Py_ssize_t j
    cdef floating diff
    cdef double loss = 0.0
    for j in range(k):
        diff = yhat[j] - t[j]
        loss += diff * diff
        dy[j] = diff * c
    return loss


cdef inline double _poisson_row(const floating* z, const floating* t, floating c, floating* p,
                                floating* dz, Py_ssize_t k) noexcept nogil:
    """Poisson loss from log-rates: returns sum exp(z) - t*z; p = exp(z)."""
    cdef Py_ssize_t j
    cdef floating x, e
    cdef double loss = 0.0
    for j in range(k):
        x = z[j]
        e = _exp(x)
        loss += e - t[j] * x
        p[j] = e
        dz[j] = (e - t[j]) * c
    return loss


cdef inline double _loss_rows(int loss_kind, const floating* ZL, const floating* AL, Py_ssize_t k,
                              const int64_t* y, const floating* Y, const floating* sw, floating* P,
                              floating* dAL, Py_ssize_t r0, Py_ssize_t r1, double denom) noexcept nogil:
    """Rows [r0, r1) of a batch's loss (the training loop's shares): their
    weighted loss sum (the batch's loss is the sum over all rows / denom) and
    their rows of dAL (and P). denom is the def kernels' own: the weight sum,
    times the columns for the per-column losses (BCE, MSE, Poisson). ZL is the
    output unit's Z (the fused losses), AL its A (nll, mse); sw NULL: no weights."""
    cdef Py_ssize_t i
    cdef double w, total = 0.0
    for i in range(r0, r1):
        w = _weight(sw, i)
        if loss_kind == LOSS_CE:
            total += w * _sce_row(ZL + i * k, y[i], <floating>(w / denom), P + i * k, dAL + i * k, k)
        elif loss_kind == LOSS_CE_ONEHOT:
            total += w * _sce_onehot_row(ZL + i * k, Y + i * k, <floating>(w / denom), P + i * k,
                                         dAL + i * k, k)
        elif loss_kind == LOSS_BCE:
            total += w * _bce_row(ZL + i * k, Y + i * k, <floating>(w / denom), P + i * k, dAL + i * k, k)
        elif loss_kind == LOSS_POISSON:
            total += w * _poisson_row(ZL + i * k, Y + i * k, <floating>(w / denom), P + i * k,
                                      dAL + i * k, k)
        elif loss_kind == LOSS_NLL:
            total -= w * _nll_row(AL + i * k, y[i], <floating>(w / denom), dAL + i * k, k)
        else:
            total += w * _mse_row(AL + i * k, Y + i * k, <floating>(2.0 * w / denom), dAL + i * k, k)
    return total


cdef inline double _count_correct(int loss_kind, const floating* out, Py_ssize_t k, const int64_t* y,
                                  const floating* Y, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Correct predictions among rows [r0, r1) of the training-time output (logits,
    or log-probabilities for nll); for binary cross-entropy the count of correct
    cells (the caller divides by the columns); 0 for the regression losses."""
    cdef Py_ssize_t i, j, best, truth
    cdef Py_ssize_t c = 0
    cdef const floating* o
    if loss_kind == LOSS_MSE or loss_kind == LOSS_POISSON:
        return 0.0
    if loss_kind == LOSS_BCE:
        for i in range(r0, r1):
            for j in range(k):
                if (out[i * k + j] > 0) == (Y[i * k + j] > 0.5):
                    c += 1
        return <double>c
    for i in range(r0, r1):
        o = out + i * k
        best = 0
        for j in range(1, k):
            if o[j] > o[best]:
                best = j
        if loss_kind == LOSS_CE_ONEHOT:
            truth = 0
            for j in range(1, k):
                if Y[i * k + j] > Y[i * k + truth]:
                    truth = j
        else:
            truth = y[i]
        if best == truth:
            c += 1
    return <double>c
