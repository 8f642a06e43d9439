"""Optimizer updates as span kernels over [0, n) of raw pointers (PyTorch's rules).

The def kernels run a span once or on one contiguous chunk per thread; the
training loop runs it on the whole vector or on each thread's share of the
parameters. Loads go into locals first, so that the compiler vectorizes
without re-reading what it stored. State below the smallest normal number is
flushed to 0 (see reference.flush_denormals): denormal arithmetic is many
times slower on x86.
"""
from cython cimport floating
from libc.math cimport pow, sqrt
from libc.string cimport memset

from fastmlp._native.common cimport *
from fastmlp._native.scalar cimport _flush_denormal, _sqrt

cdef extern from "fastmath.h" nogil:
    double fm_sumsq_f(const float* x, Py_ssize_t n)
    double fm_sumsq_d(const double* x, Py_ssize_t n)


cdef inline void _sgd_span(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                           floating lr, floating mom, bint nesterov) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, bi
    if mom == 0:
        for i in range(n):
            p[i] -= lr * g[i]
    elif nesterov:
        for i in range(n):
            gi = g[i]
            bi = buf[i] * mom + gi
            bi = _flush_denormal(bi)
            buf[i] = bi
            p[i] -= lr * (gi + mom * bi)
    else:
        for i in range(n):
            bi = buf[i] * mom + g[i]
            bi = _flush_denormal(bi)
            buf[i] = bi
            p[i] -= lr * bi


cdef inline void _rmsprop_span(floating* p, const floating* g, floating* sq, Py_ssize_t n,
                               floating lr, floating rho, floating one_m_rho,
                               floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, si
    for i in range(n):
        gi = g[i]
        si = sq[i] * rho + one_m_rho * gi * gi
        si = _flush_denormal(si)
        sq[i] = si
        p[i] -= lr * gi / (_sqrt(si) + eps)


cdef inline void _adam_span(floating* p, floating* g, floating* m, floating* v,
                            Py_ssize_t n, floating b1, floating one_m_b1, floating b2,
                            floating one_m_b2, floating step_size, floating bc2_sqrt,
                            floating eps, floating l2) noexcept nogil:
    # l2 != 0: g is the data term of the gradient; g + l2 * p is written back
    # to g and used (the split loop folds its L2 term in here, saving a copy
    # of W and a pass over dW). Two loops rather than a test inside one: each
    # stays plainly vectorizable whatever the compiler does with it.
    cdef Py_ssize_t i
    cdef floating gi, mi, vi
    if l2 != 0:
        for i in range(n):
            gi = g[i] + l2 * p[i]
            g[i] = gi
            mi = m[i] * b1 + one_m_b1 * gi
            vi = v[i] * b2 + one_m_b2 * gi * gi
            mi = _flush_denormal(mi)
            vi = _flush_denormal(vi)
            m[i] = mi
            v[i] = vi
            p[i] -= step_size * mi / (_sqrt(vi) / bc2_sqrt + eps)
        return
    for i in range(n):
        gi = g[i]
        mi = m[i] * b1 + one_m_b1 * gi
        vi = v[i] * b2 + one_m_b2 * gi * gi
        mi = _flush_denormal(mi)
        vi = _flush_denormal(vi)
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (_sqrt(vi) / bc2_sqrt + eps)


cdef inline void _opt_consts(int opt_kind, const Hyper* h, double step, double* c) noexcept nogil:
    """The constants of one step of the optimizer, as _opt_apply takes them."""
    memset(c, 0, 9 * sizeof(double))
    c[8] = 1.0
    if h.weight_decay != 0.0:
        if h.decoupled != 0.0:  # AdamW: p *= 1 - lr * wd, before the step
            c[8] = 1.0 - h.lr * h.weight_decay
        else:  # PyTorch's weight_decay: g + wd * p
            c[7] = h.weight_decay
    if opt_kind == OPT_SGD:
        c[0], c[1], c[2] = h.lr, h.momentum, h.nesterov
    elif opt_kind == OPT_RMSPROP:
        c[0], c[1], c[2], c[3] = h.lr, h.rho, 1.0 - h.rho, h.eps
    elif opt_kind == OPT_ADAM:
        c[0], c[1], c[2], c[3] = h.beta1, 1.0 - h.beta1, h.beta2, 1.0 - h.beta2
        c[4] = h.lr / (1.0 - pow(h.beta1, step))
        c[5] = sqrt(1.0 - pow(h.beta2, step))
        c[6] = h.eps


cdef inline void _opt_apply(int opt_kind, const double* c, floating* p, floating* g, floating* s1,
                            floating* s2, Py_ssize_t n, double l2) noexcept nogil:
    """One update of n parameters with the constants of _opt_consts; s1, s2 point at
    the same span of the optimizer's state (s1 NULL for SGD without momentum).
    l2 != 0 (Adam only): g holds the data term, and g + l2 * p is the gradient.
    Weight decay first: c[8] != 1 scales p (decoupled), else c[7] != 0 adds c[7] * p to g."""
    cdef Py_ssize_t i
    cdef floating f
    if n == 0:
        return
    if c[8] != 1.0:
        if l2 != 0.0:  # the L2 term's gradient is of the weights before the decay, as PyTorch's
            f = <floating>l2
            for i in range(n):
                g[i] += f * p[i]
            l2 = 0.0
        f = <floating>c[8]
        for i in range(n):
            p[i] *= f
    elif c[7] != 0.0:
        f = <floating>c[7]
        for i in range(n):
            g[i] += f * p[i]
    if opt_kind == OPT_SGD:
        _sgd_span(p, g, s1, n, <floating>c[0], <floating>c[1], c[2] != 0.0)
    elif opt_kind == OPT_RMSPROP:
        _rmsprop_span(p, g, s1, n, <floating>c[0], <floating>c[1], <floating>c[2], <floating>c[3])
    elif opt_kind == OPT_ADAM:
        _adam_span(p, g, s1, s2, n, <floating>c[0], <floating>c[1], <floating>c[2], <floating>c[3],
                   <floating>c[4], <floating>c[5], <floating>c[6], <floating>l2)


cdef inline void _opt_span(int opt_kind, const Hyper* h, double step, floating* p, floating* g,
                           floating* s1, floating* s2, Py_ssize_t n, double l2) noexcept nogil:
    """_opt_apply with the constants of update number ``step`` (from 1)."""
    cdef double c[9]
    _opt_consts(opt_kind, h, step, c)
    _opt_apply(opt_kind, c, p, g, s1, s2, n, l2)


cdef inline double _sumsq_span(const floating* x, Py_ssize_t n) noexcept nogil:
    """The sum of squares in double, vectorized (reassociated: see fastmath.h)."""
    if floating is float:
        return fm_sumsq_f(x, n)
    else:
        return fm_sumsq_d(x, n)


cdef inline void _clamp_p(floating* x, Py_ssize_t n, double bound) noexcept nogil:
    """x clamped to [-bound, bound] (NaN stays NaN, as torch.clamp)."""
    cdef Py_ssize_t i
    cdef floating v = <floating>bound
    for i in range(n):
        if x[i] > v:
            x[i] = v
        elif x[i] < -v:
            x[i] = -v


cdef inline void _scale_p(floating* x, Py_ssize_t n, double factor) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating f = <floating>factor
    for i in range(n):
        x[i] = x[i] * f
