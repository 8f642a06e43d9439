"""The split loop's shares of the parameters, and the units it keeps on packed operands.

With nt threads of its own, the training loop gives thread tid rows
[f0, f1) of each dense unit's W (its inputs' columns f0..f1) and columns
[c0, c1) of b: it computes those rows of dW and updates those parameters.
A unit on packed operands (UnitPtrs.Wp) keeps W, dW and W's optimizer state
in the packed form of packgemm.h while the loop runs; each thread packs its
rows at the start and writes them back at the end.
"""
from cython cimport floating
from libc.string cimport memcpy

from fastmlp._native.common cimport *
from fastmlp._native.gemm cimport fm_pk_pack_rows, fm_pk_pack_trans_rows, fm_pk_unpack_rows
from fastmlp._native.optim cimport _clamp_p, _opt_apply, _opt_consts, _opt_span, _scale_p, _sumsq_span
from fastmlp._native.units cimport UnitPtrs


cdef inline Py_ssize_t _part(Py_ssize_t n, int t, int nt) noexcept nogil:
    """The start of thread t's share of [0, n) split in nt near-equal parts."""
    return n * t // nt


cdef struct Share:
    # thread tid's share of a dense unit's parameters, as offsets into the flat
    # parameter (and gradient, and state) vector: W's rows f0..f1 and b's columns c0..c1
    Py_ssize_t w0, wn, b0, bn


cdef inline Share _share(const UnitPtrs* u, int tid, int nt) noexcept nogil:
    cdef Share sh
    cdef Py_ssize_t fi = u.r.fan_in, fo = u.r.fan_out
    cdef Py_ssize_t f0 = _part(fi, tid, nt), c0 = _part(fo, tid, nt)
    sh.w0 = u.r.w_off + f0 * fo
    sh.wn = (_part(fi, tid + 1, nt) - f0) * fo
    sh.b0 = u.r.b_off + c0
    sh.bn = _part(fo, tid + 1, nt) - c0 if u.r.use_bias else 0
    return sh


cdef inline void _update_share(const UnitPtrs* u, int tid, int nt, int opt_kind, const Hyper* h, double step,
                               floating* params, floating* grads, floating* s1, floating* s2,
                               bint fold_l2) noexcept nogil:
    """The optimizer on thread tid's share of a dense unit (see _share); fold_l2: dW
    holds the data term only, and the update adds the unit's L2 term."""
    cdef Share sh = _share(u, tid, nt)
    _opt_span(opt_kind, h, step, params + sh.w0, grads + sh.w0, s1 + sh.w0 if s1 != NULL else NULL,
              s2 + sh.w0 if s2 != NULL else NULL, sh.wn, u.r.l2 if fold_l2 else 0.0)
    if sh.bn:
        _opt_span(opt_kind, h, step, params + sh.b0, grads + sh.b0, s1 + sh.b0 if s1 != NULL else NULL,
                  s2 + sh.b0 if s2 != NULL else NULL, sh.bn, 0.0)


cdef inline void _pk_transpose_rows(const float* Wp, float* Wtp, Py_ssize_t K, Py_ssize_t n, Py_ssize_t f0,
                                    Py_ssize_t f1) noexcept nogil:
    """Rows f0..f1 of W, from its packed form Wp (K rows, n columns) into the
    packed form of W^T: 16 x 16 blocks, each a whole cache line per row of the
    result, where [f0, f1) covers a whole panel of W^T (16 rows of W);
    element by element at its ends (another thread writes the rest of them)."""
    cdef Py_ssize_t f, q, qb, c, fb
    cdef const float* src
    cdef float* dst
    f = f0
    while f < f1:
        if f % 16 == 0 and f + 16 <= f1:
            for qb in range(0, n, 16):
                src = Wp + qb * K + f * 16          # rows f..f+15, columns qb..qb+15
                dst = Wtp + f * n + qb * 16          # panel f / 16, rows qb..
                for q in range(min(16, n - qb)):
                    for c in range(16):
                        dst[q * 16 + c] = src[c * 16 + q]
            f += 16
        else:
            fb = (f // 16) * 16 * n + f % 16
            for q in range(n):
                Wtp[fb + q * 16] = Wp[(q // 16) * 16 * K + f * 16 + q % 16]
            f += 1


cdef inline void _update_share_pk(const UnitPtrs* u, int tid, int nt, int opt_kind, const Hyper* h,
                                  double step, floating* params, floating* grads, floating* s1,
                                  floating* s2, bint fold_l2) noexcept nogil:
    """_update_share for a unit on packed operands: the same element-wise update
    on this thread's rows of the packed W, dW and state (one span per panel),
    then the same rows of W^T."""
    cdef Share sh = _share(u, tid, nt)
    cdef Py_ssize_t j, o, K = u.r.fan_in
    cdef Py_ssize_t f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    cdef double c[9]
    _opt_consts(opt_kind, h, step, c)
    if floating is float:
        for j in range(0, u.r.fan_out, 16):
            o = j * K + f0 * 16
            _opt_apply(opt_kind, c, u.Wp + o, u.dWp + o, u.mp + o if u.mp != NULL else NULL,
                       u.vp + o if u.vp != NULL else NULL, (f1 - f0) * 16, u.r.l2 if fold_l2 else 0.0)
        if u.Wtp != NULL:
            _pk_transpose_rows(u.Wp, u.Wtp, K, u.r.fan_out, f0, f1)
    if sh.bn:
        _opt_apply(opt_kind, c, params + sh.b0, grads + sh.b0, s1 + sh.b0 if s1 != NULL else NULL,
                   s2 + sh.b0 if s2 != NULL else NULL, sh.bn, 0.0)


cdef inline void _pk_share(const UnitPtrs* u, floating* params, floating* grads, floating* s1,
                           floating* s2, int tid, int nt, bint pack) noexcept nogil:
    """Thread tid's rows of a dense unit's W, dW and W's optimizer state (the flat
    vectors; s1, s2 NULL when absent) into their packed forms (pack), or back."""
    cdef Py_ssize_t f0 = _part(u.r.fan_in, tid, nt), f1 = _part(u.r.fan_in, tid + 1, nt)
    cdef Py_ssize_t n = u.r.fan_out, K = u.r.fan_in, o = u.r.w_off
    if u.Wp == NULL:  # a unit the loop keeps in place
        return
    if floating is float:
        if pack:
            fm_pk_pack_rows(params + o, n, n, K, f0, f1, u.Wp)
            fm_pk_pack_rows(grads + o, n, n, K, f0, f1, u.dWp)
            if u.mp != NULL:
                fm_pk_pack_rows(s1 + o, n, n, K, f0, f1, u.mp)
            if u.vp != NULL:
                fm_pk_pack_rows(s2 + o, n, n, K, f0, f1, u.vp)
            if u.Wtp != NULL:
                fm_pk_pack_trans_rows(params + o, K, n, f0, f1, u.Wtp)
        else:
            fm_pk_unpack_rows(u.Wp, n, K, f0, f1, params + o, n)
            fm_pk_unpack_rows(u.dWp, n, K, f0, f1, grads + o, n)
            if u.mp != NULL:
                fm_pk_unpack_rows(u.mp, n, K, f0, f1, s1 + o, n)
            if u.vp != NULL:
                fm_pk_unpack_rows(u.vp, n, K, f0, f1, s2 + o, n)


cdef inline double _pk_own_sumsq(const float* P, const UnitPtrs* u, int tid, int nt) noexcept nogil:
    """The sum of squares of thread tid's rows of a unit's packed W (or dW)."""
    cdef Py_ssize_t j, K = u.r.fan_in, f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    cdef double total = 0.0
    for j in range(0, u.r.fan_out, 16):
        total += _sumsq_span(P + j * K + f0 * 16, (f1 - f0) * 16)
    return total


cdef inline void _pk_own_clamp(float* P, const UnitPtrs* u, int tid, int nt, double bound) noexcept nogil:
    """Thread tid's rows of a unit's packed dW, clamped to [-bound, bound] (the padding stays 0)."""
    cdef Py_ssize_t j, K = u.r.fan_in, f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    for j in range(0, u.r.fan_out, 16):
        _clamp_p(P + j * K + f0 * 16, (f1 - f0) * 16, bound)


cdef inline void _pk_own_scale(float* P, const UnitPtrs* u, int tid, int nt, double factor) noexcept nogil:
    """Thread tid's rows of a unit's packed dW, times factor."""
    cdef Py_ssize_t j, K = u.r.fan_in, f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    for j in range(0, u.r.fan_out, 16):
        _scale_p(P + j * K + f0 * 16, (f1 - f0) * 16, factor)


cdef inline void _pk_copy_rows(const UnitPtrs* u, int tid, int nt) noexcept nogil:
    """Thread tid's rows of a unit's packed W into its packed dW (the L2 term's start)."""
    cdef Py_ssize_t j, K = u.r.fan_in, f0 = _part(K, tid, nt), f1 = _part(K, tid + 1, nt)
    for j in range(0, u.r.fan_out, 16):
        memcpy(u.dWp + j * K + f0 * 16, u.Wp + j * K + f0 * 16, (f1 - f0) * 16 * sizeof(float))
