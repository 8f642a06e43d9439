"""Scalar maths by dtype: each helper is one C call in float32 or float64.

Element-wise maths runs in the array's dtype (float32 kernels stay float32 and
vectorize at its width); ``cdef inline`` here, so that every module's loops
inline them.
"""
from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport erf, erff, exp, expf, expm1, expm1f, fabs, fabsf, log1p, log1pf, sqrt, sqrtf, tanh, tanhf

cdef extern from *:
    """
    #define FM_SELU_ALPHA 1.6732632423543772848170429916717
    #define FM_SELU_SCALE 1.0507009873554804934193349852946
    #define FM_SQRT_HALF 0.70710678118654752440084436210485
    #define FM_INV_SQRT_2PI 0.39894228040143267793994605993438
    """
    double SELU_ALPHA "FM_SELU_ALPHA"
    double SELU_SCALE "FM_SELU_SCALE"
    double SQRT_HALF "FM_SQRT_HALF"
    double INV_SQRT_2PI "FM_INV_SQRT_2PI"


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _erf(floating x) noexcept nogil:
    if floating is float:
        return erff(x)
    else:
        return erf(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _fabs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _flush_denormal(floating x) noexcept nogil:
    # 0 for x below the dtype's smallest normal number in magnitude, else x
    # (optimizer state: see reference.flush_denormals)
    if floating is float:
        return 0 if _fabs(x) < FLT_MIN else x
    else:
        return 0 if _fabs(x) < DBL_MIN else x


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # exp of a non-positive number only: no overflow for either sign.
    cdef floating e = _exp(-_fabs(x))
    if x >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


cdef inline floating _softplus(floating x) noexcept nogil:
    # PyTorch's threshold 20, written without overflow below it.
    if x > 20:
        return x
    return (x if x > 0 else 0) + _log1p(_exp(-_fabs(x)))


cdef inline floating _row_max(const floating* z, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating m = z[0]
    for j in range(1, k):
        if z[j] > m:
            m = z[j]
    return m
