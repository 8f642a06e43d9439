# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The training loop: ``train_steps(plan, loop, X, targets, sw, order, start, n_steps,
losses_out, correct_out)`` (see reference.train_steps) in one GIL-free call.

A step is cut into phases, each a function that the one-thread, the split and
the packed paths share: gather, forward, loss, backward (the chain of dZ and
the products into each dA), parameter gradients (dW, db), clipping, update.
The driver, ``_train_loop``, runs them and times them (``runtime.loop_phase_times``);
the product helpers time the matrix products apart.

With nt > 1 threads of its own (a plan without batch norm whose dense and PReLU
units own every parameter, and a step big enough: ``_loop_threads``; maxout
units split by rows like activations), thread tid
takes rows [r0, r1) of the batch through gather, forward, loss and backward
(a PReLU unit: its rows' sums of min(0, z) * dA into a scratch of its own);
after a barrier, its share of every dW, db, dalpha (the threads' sums added)
and of the update (split.pxd); a second barrier ends the step. Its products then run on one BLAS thread each
(the BLAS is pinned to one thread meanwhile), or on packgemm.h's kernel for
the units kept on packed operands (float32, ``policy.pk_unit``).

A residual block's end unit (RES_ADD) adds the block's input (A of its RES_BEGIN
unit) or its projection to F's output, row by row like a dense unit's forward
product; in the backward pass it copies dZ into F's dA and, with a projection,
stashes dZ @ Wp^T (its M), which the block's start unit adds to its own dA. A
projection's Wp is a W like a dense unit's (``has_w``): the same shares of dWp
and of its update, on BLAS (it is never packed).
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.math cimport isfinite, sqrt
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

cimport numpy as cnp

from fastmlp._native.common cimport *
from fastmlp._native.gemm cimport (
    Blas, FM_HAVE_PACKGEMM, blas, gemm_ld, gemm_p, pk_floats, pk_gemm, pk_gemm_dw, pk_pack, pk_take,
)
from fastmlp._native.rowloops cimport rows_act_grad, rows_bias_act
from fastmlp._native.optim cimport _clamp_p, _opt_span, _scale_p, _sumsq_span
from fastmlp._native.policy cimport MAX_LOOP_THREADS, LoopPolicy, loop_policy, pk_allowed, pk_unit, threads_for
from fastmlp._native.rows cimport _col_sums, _count_correct, _loss_rows
from fastmlp._native.runtime cimport Runtime, lap, now, runtime
from fastmlp._native.split cimport (
    Share, _part, _pk_copy_rows, _pk_own_clamp, _pk_own_scale, _pk_own_sumsq, _pk_share, _share, _update_share, _update_share_pk,
)
from fastmlp._native.units cimport (
    UnitPtrs, _dropout_mask_p, _mul_mask_p, add_rows_p, bn_backward_p, bn_forward_p, fill_units, has_w,
    maxout_backward_p, maxout_forward_p, prelu_backward_p, prelu_forward_p, sum_rows_p,
)

import numpy as np

from fastmlp._native.plan import DIAG_SATURATED as _DIAG_SATURATED, DIAG_THREADS, check_train
# the policy's hooks, where the loop's tests and benchmarks look for them
from fastmlp._native.policy import (  # noqa: F401
    _HAVE_LOOP_THREADS, _PACKED_MAX_ROWS_PER_THREAD, _PACKED_MIN_WEIGHTS, _loop_threads, _set_fold_l2,
    _set_loop_split_limits, _set_packed_gemm, _set_packed_max_rows,
)

cnp.import_array()

cdef double DIAG_SATURATED = _DIAG_SATURATED

if DIAG_THREADS != MAX_LOOP_THREADS:  # pragma: no cover - a build out of step with plan.py
    raise ImportError(f"plan.DIAG_THREADS ({DIAG_THREADS}) must be the loop's MAX_LOOP_THREADS ({MAX_LOOP_THREADS})")

cdef Runtime* RT = runtime()
cdef Blas* BLAS = blas()

cdef extern from "barrier.h" nogil:
    int FM_HAVE_BARRIER
    int FM_HAVE_OPENMP
    int fm_team_size()
    ctypedef struct fm_barrier:
        int n
    void fm_barrier_init(fm_barrier* b, int n)
    void fm_barrier_wait(fm_barrier* b, int* local)


# While any split loop runs, the BLAS runs on one thread; the count makes loops
# running at once in several Python threads restore the caller's setting only
# when the last one ends. Changed with the GIL held only.
cdef int _blas_pins = 0
cdef int _blas_saved = 0
cdef int _last_nt = 0
cdef bint _last_pk = False
cdef LoopPolicy* POL = loop_policy()


def _last_loop_threads():
    """Threads of its own the last train_steps call ran on (0 before any). For tests."""
    return _last_nt


def _last_loop_packed():
    """Whether the last train_steps call ran on packed operands. For tests."""
    return _last_pk


cdef void _in_place(UnitPtrs* units, Py_ssize_t n_units) noexcept nogil:
    # no unit on packed operands
    cdef Py_ssize_t i
    for i in range(n_units):
        units[i].Wp = units[i].dWp = units[i].mp = units[i].vp = units[i].dZp = units[i].Wtp = NULL


cdef void _pin_blas():
    global _blas_pins, _blas_saved
    if _blas_pins == 0:
        _blas_saved = BLAS.get_threads()
        BLAS.set_threads(1)
    _blas_pins += 1


cdef void _unpin_blas():
    global _blas_pins
    _blas_pins -= 1
    if _blas_pins == 0 and _blas_saved > 0:
        BLAS.set_threads(_blas_saved)


# ---------------------------------------------------------------- one thread's call
cdef struct LoopShared:
    # what the loop's threads share: a barrier and per-thread partial sums
    fm_barrier bar
    double loss[MAX_LOOP_THREADS]
    double l2[MAX_LOOP_THREADS]
    double correct[MAX_LOOP_THREADS]
    double sumsq[MAX_LOOP_THREADS]
    double* acc[MAX_LOOP_THREADS]  # each thread's PReLU sums (Ctx.acc)
    Py_ssize_t done


cdef struct Ctx:
    # one thread's view of a train_steps call: what every phase reads
    int tid, nt, sense
    LoopShared* sh
    UnitPtrs* units
    Py_ssize_t n_units, rows, r0, r1, d, k, n_params, start, t0
    int loss_kind, opt_kind
    Hyper h
    double clip_norm, clip_value
    uint64_t seed
    bint pk, fold_l2, fused, timing, has_bn
    # the data (NULL where absent) and the plan's buffers, typed by the phases
    const void* X
    const int64_t* y
    const void* Y
    const void* sw
    const int64_t* order
    void* params
    void* grads
    void* s1
    void* s2
    void* x_buf
    int64_t* y_buf
    void* Y_buf
    void* sw_buf
    void* P
    double* losses_out
    double* correct_out
    const double* lrs  # a schedule's rate per step of the call, or NULL (h.lr throughout)
    double* acc  # this thread's sums of min(0, z) * dA of every PReLU unit (_acc_off), or NULL
    # diagnostics (plan.LoopState.diagnose_steps): step s sampled when (diag_phase + s) % diag_every == 0
    Py_ssize_t diag_every, diag_phase, n_feat
    double* diag_units  # (samples, MAX_LOOP_THREADS, n_units, 3)
    double* diag_feats  # (samples, n_feat, 4)
    void* before        # each dense unit's W before a sampled update (_before_off), or NULL
    # this step
    const int64_t* idx
    double denom


# ------------------------------------------------------------ products
# Each dispatches to the packed kernel (units on packed operands) or to
# gemm_ld, and times itself when the loop's timer is on.
cdef inline void _fwd_product(Ctx* c, const UnitPtrs* u, const floating* inp, floating* params) noexcept nogil:
    # Z rows r0..r1 = inp rows @ W
    cdef double t = now() if c.timing else 0.0
    cdef Py_ssize_t nr = c.r1 - c.r0, fi = u.r.fan_in, fo = u.r.fan_out
    if u.Wp != NULL:
        pk_gemm(nr, fo, fi, inp, fi, u.Wp, <floating*>u.Z + c.r0 * fo, fo)
    else:
        gemm_p(BLAS, inp, params + u.r.w_off, <floating*>u.Z + c.r0 * fo, <int>nr, <int>fo, <int>fi, False, False, 0.0)
    if c.timing:
        RT.product_s[PH_FORWARD] += now() - t


cdef inline void _dA_product(Ctx* c, const UnitPtrs* u, floating* dA_prev, floating* params) noexcept nogil:
    # the previous unit's dA rows r0..r1 = dZ rows @ W^T
    cdef double t = now() if c.timing else 0.0
    cdef Py_ssize_t nr = c.r1 - c.r0, fi = u.r.fan_in, fo = u.r.fan_out
    if u.Wp != NULL:
        pk_gemm(nr, fi, fo, <floating*>u.dA + c.r0 * fo, fo, u.Wtp, dA_prev + c.r0 * fi, fi)
    else:
        gemm_p(BLAS, <floating*>u.dA + c.r0 * fo, params + u.r.w_off, dA_prev + c.r0 * fi, <int>nr, <int>fi, <int>fo,
               False, True, 0.0)
    if c.timing:
        RT.product_s[PH_BACKWARD] += now() - t


cdef inline void _dW_product(Ctx* c, const UnitPtrs* u, const floating* inp, floating* grads, Py_ssize_t f0,
                             Py_ssize_t f1, double beta) noexcept nogil:
    # dW rows f0..f1 = (inp columns f0..f1)^T @ dZ + beta dW, over the whole batch
    cdef double t = now() if c.timing else 0.0
    cdef Py_ssize_t fi = u.r.fan_in, fo = u.r.fan_out
    if u.Wp != NULL:
        pk_gemm_dw(f1 - f0, fo, c.rows, inp + f0, fi, u.dZp, beta, u.dWp + f0 * 16, 16 * fi)
    else:
        gemm_ld(BLAS, inp + f0, <int>fi, <floating*>u.dA, <int>fo, grads + u.r.w_off + f0 * fo, <int>fo, <int>(f1 - f0),
                <int>fo, <int>c.rows, True, False, beta)
    if c.timing:
        RT.product_s[PH_PARAM_GRADS] += now() - t


# ------------------------------------------------------------ residual blocks
cdef inline void _residual_forward(Ctx* c, const UnitPtrs* u, const floating* F, floating* params) noexcept nogil:
    # Z rows r0..r1 = F rows + the block's input rows (@ Wp), then the activation
    cdef double t
    cdef Py_ssize_t nr = c.r1 - c.r0, fi = u.r.fan_in, fo = u.r.fan_out
    cdef const floating* X = <const floating*>c.units[u.r.link].A + c.r0 * fi
    cdef floating* Z = <floating*>u.Z + c.r0 * fo
    if fi == fo:
        sum_rows_p(F, X, Z, nr * fo)
    else:
        t = now() if c.timing else 0.0
        memcpy(Z, F, nr * fo * sizeof(floating))
        gemm_p(BLAS, X, params + u.r.w_off, Z, <int>nr, <int>fo, <int>fi, False, False, 1.0)
        if c.timing:
            RT.product_s[PH_FORWARD] += now() - t
    if u.r.act != ACT_IDENTITY:
        rows_bias_act(RT, Z, params, <floating*>u.A + c.r0 * fo, nr, fo, False, <int>u.r.act, <floating>u.r.alpha)


cdef inline void _residual_backward(Ctx* c, const UnitPtrs* u, Py_ssize_t i, floating* params) noexcept nogil:
    # rows r0..r1: F's output gradient is dZ (dA, after the activation's derivative); the
    # projection's stash dZ @ Wp^T
    cdef Py_ssize_t nr = c.r1 - c.r0, fo = u.r.fan_out
    memcpy(<floating*>c.units[i - 1].dA + c.r0 * fo, <floating*>u.dA + c.r0 * fo, nr * fo * sizeof(floating))
    if u.r.fan_in != fo:
        _dA_product(c, u, <floating*>u.M, params)


cdef inline void _residual_shortcut(Ctx* c, const UnitPtrs* u, const floating* params) noexcept nogil:
    # a block start's rows r0..r1 of dA += the shortcut's gradient (its end's stash, or dZ);
    # params only types the call
    cdef const UnitPtrs* e = &c.units[u.r.link]
    cdef Py_ssize_t fo = u.r.fan_out
    add_rows_p(<const floating*>(e.M if e.r.fan_in != e.r.fan_out else e.dA) + c.r0 * fo,
               <floating*>u.dA + c.r0 * fo, (c.r1 - c.r0) * fo)


# ------------------------------------------------------------ PReLU's shares
cdef inline Py_ssize_t _acc_off(const Ctx* c, Py_ssize_t i) noexcept nogil:
    # where PReLU unit i's sums start in each thread's scratch: the widths of the PReLU units before it
    cdef Py_ssize_t j, off = 0
    for j in range(i):
        if c.units[j].r.kind == UNIT_PRELU:
            off += c.units[j].r.fan_out
    return off


cdef inline Py_ssize_t _alpha_share(const UnitPtrs* u, int tid, int nt, Py_ssize_t* a0) noexcept nogil:
    # thread tid's alphas of a PReLU unit (offset into a0, count returned): its share of the
    # features, or the shared alpha for thread 0
    cdef Py_ssize_t k = u.r.fan_out
    if u.r.shared:
        a0[0] = u.r.w_off
        return 1 if tid == 0 else 0
    a0[0] = u.r.w_off + _part(k, tid, nt)
    return _part(k, tid + 1, nt) - _part(k, tid, nt)


cdef void _dalpha(Ctx* c, const UnitPtrs* u, Py_ssize_t i, floating* grads) noexcept nogil:
    """This thread's share of PReLU unit i's dalpha: the threads' sums, feature by feature (the
    shared alpha: the sum over the features of those, by thread 0)."""
    cdef Py_ssize_t j, j0, j1, off = _acc_off(c, i), fo = u.r.fan_out
    cdef int t
    cdef double s, total = 0.0
    if u.r.shared:
        if c.tid != 0:
            return
        j0, j1 = 0, fo
    else:
        j0, j1 = _part(fo, c.tid, c.nt), _part(fo, c.tid + 1, c.nt)
    for j in range(j0, j1):
        s = 0.0
        for t in range(c.nt):
            s += c.sh.acc[t][off + j]
        if u.r.shared:
            total += s
        else:
            grads[u.r.w_off + j] = <floating>s
    if u.r.shared:
        grads[u.r.w_off] = <floating>total


# ------------------------------------------------------------ the phases
cdef void _gather(Ctx* c, Py_ssize_t s, floating* params) noexcept nogil:
    """This thread's rows of the batch, its labels, targets and weights; the
    loss's denominator (every thread sums the whole batch's weights, in order)."""
    cdef Py_ssize_t r, d = c.d, k = c.k
    cdef const floating* X = <const floating*>c.X
    cdef floating* x = <floating*>c.x_buf
    cdef const int64_t* idx = c.order + c.start + s * c.rows
    cdef double denom
    c.idx = idx
    if d:
        for r in range(c.r0, c.r1):
            memcpy(x + r * d, X + idx[r] * d, d * sizeof(floating))
    if c.y != NULL:
        for r in range(c.r0, c.r1):
            c.y_buf[r] = c.y[idx[r]]
    if c.Y != NULL:
        for r in range(c.r0, c.r1):
            memcpy(<floating*>c.Y_buf + r * k, <const floating*>c.Y + idx[r] * k, k * sizeof(floating))
    if c.sw != NULL:
        denom = 0.0
        for r in range(c.rows):
            denom += (<const floating*>c.sw)[idx[r]]
        for r in range(c.r0, c.r1):
            (<floating*>c.sw_buf)[r] = (<const floating*>c.sw)[idx[r]]
    else:
        denom = <double>c.rows
    if c.loss_kind == LOSS_BCE or c.loss_kind == LOSS_MSE or c.loss_kind == LOSS_POISSON:
        denom *= k
    c.denom = denom


cdef int _forward(Ctx* c, Py_ssize_t s, floating* params) noexcept nogil:
    """This thread's rows through every unit (batch norm: the whole batch, nt == 1).
    Returns -1 when batch norm cannot allocate its scratch space."""
    cdef Py_ssize_t i, r0 = c.r0, nr = c.r1 - c.r0, fo
    cdef const floating* inp = <floating*>c.x_buf + r0 * c.d
    cdef UnitPtrs* u
    for i in range(c.n_units):
        u = &c.units[i]
        fo = u.r.fan_out
        if u.r.kind == UNIT_DENSE:
            _fwd_product(c, u, inp, params)
            rows_bias_act(RT, <floating*>u.Z + r0 * fo, params + u.r.b_off, <floating*>u.A + r0 * fo, nr, fo,
                          u.r.use_bias != 0, <int>u.r.act, <floating>u.r.alpha)
        elif u.r.kind == UNIT_DROPOUT:
            _dropout_mask_p(c.seed, <uint64_t>(c.t0 + s), <uint64_t>i, u.r.rate, <floating*>u.M + r0 * fo,
                            nr * fo, r0 * fo)
            _mul_mask_p(<const floating*>u.Z + r0 * fo, <const floating*>u.M + r0 * fo, <floating*>u.A + r0 * fo,
                        nr * fo)
        elif u.r.kind == UNIT_BATCHNORM:
            if bn_forward_p(inp, params + u.r.w_off, u.r.eps, u.r.momentum, <floating*>u.M, <floating*>u.Z,
                            <floating*>u.A, c.rows, fo):
                return -1
        elif u.r.kind == UNIT_PRELU:
            prelu_forward_p(<const floating*>u.Z + r0 * fo, params + u.r.w_off, u.r.shared != 0,
                            <floating*>u.A + r0 * fo, nr, fo)
        elif u.r.kind == UNIT_MAXOUT:
            maxout_forward_p(<const floating*>u.Z + r0 * u.r.fan_in, u.r.pieces, <floating*>u.A + r0 * fo, nr, fo)
        elif u.r.kind == UNIT_RES_ADD:
            _residual_forward(c, u, inp, params)
        elif u.r.kind == UNIT_RES_BEGIN:
            pass  # the identity: its A is the buffer before it
        elif u.r.act != ACT_IDENTITY:
            rows_bias_act(RT, <floating*>u.Z + r0 * fo, params, <floating*>u.A + r0 * fo, nr, fo, False,
                          <int>u.r.act, <floating>u.r.alpha)
        inp = <floating*>u.A + r0 * fo
    return 0


cdef void _loss(Ctx* c, floating* params) noexcept nogil:
    """This thread's rows of the loss (its weighted sum) and of the gradient at the
    output (into the last dA), and its count of correct predictions."""
    cdef const UnitPtrs* out = &c.units[c.n_units - 1]
    cdef const floating* ZL = <const floating*>out.Z
    cdef const floating* AL = <const floating*>out.A
    c.sh.loss[c.tid] = _loss_rows(c.loss_kind, ZL, AL, c.k, c.y_buf, <const floating*>c.Y_buf,
                                  <const floating*>c.sw_buf if c.sw != NULL else NULL, <floating*>c.P,
                                  <floating*>out.dA, c.r0, c.r1, c.denom)
    c.sh.correct[c.tid] = _count_correct(c.loss_kind, ZL if c.fused else AL, c.k, c.y_buf,
                                         <const floating*>c.Y_buf, c.r0, c.r1)


cdef int _backward(Ctx* c, floating* params) noexcept nogil:
    """This thread's rows of each unit's dZ and of the gradient at its input (batch
    norm: the whole batch, nt == 1, and its dG; PReLU: its rows' sums for dalpha); its
    part of the L2 penalty. Returns -1 when batch norm cannot allocate its scratch space."""
    cdef Py_ssize_t i, r0 = c.r0, nr = c.r1 - c.r0, fo
    cdef UnitPtrs* u
    cdef Share share
    cdef double l2 = 0.0
    cdef floating* grads = <floating*>c.grads
    for i in range(c.n_units - 1, -1, -1):
        u = &c.units[i]
        fo = u.r.fan_out
        if u.r.act != ACT_IDENTITY and (u.r.kind == UNIT_DENSE or i > 0):
            rows_act_grad(RT, <floating*>u.Z + r0 * fo, <floating*>u.A + r0 * fo, <floating*>u.dA + r0 * fo,
                          <floating*>u.dA + r0 * fo, nr, fo, <int>u.r.act, <floating>u.r.alpha)
        if u.r.kind == UNIT_DROPOUT and i > 0:
            _mul_mask_p(<const floating*>u.dA + r0 * fo, <const floating*>u.M + r0 * fo, <floating*>u.dA + r0 * fo,
                        nr * fo)
        if u.r.kind == UNIT_PRELU:  # this thread's sums for dalpha, then dA in place (dA[i - 1] is dA[i])
            prelu_backward_p(<const floating*>u.Z + r0 * fo, params + u.r.w_off, u.r.shared != 0,
                             <floating*>u.dA + r0 * fo, c.acc + _acc_off(c, i), nr, fo)
        if u.r.kind == UNIT_MAXOUT and i > 0:
            maxout_backward_p(<const floating*>u.Z + r0 * u.r.fan_in, u.r.pieces, <const floating*>u.dA + r0 * fo,
                              <floating*>c.units[i - 1].dA + r0 * u.r.fan_in, nr, fo)
        if u.r.kind == UNIT_RES_ADD:
            _residual_backward(c, u, i, params)
        if u.r.kind == UNIT_RES_BEGIN and i > 0:
            _residual_shortcut(c, u, params)
        if u.r.kind == UNIT_BATCHNORM:
            if bn_backward_p(<const floating*>u.dA, <const floating*>u.Z, params + u.r.w_off, u.r.eps,
                             <const floating*>u.M, grads + u.r.w_off,
                             <floating*>c.units[i - 1].dA if i > 0 else <floating*>NULL, c.rows, fo):
                return -1
        if u.r.kind != UNIT_DENSE:
            continue
        if u.r.l2 != 0.0 and u.Wp != NULL:
            l2 += 0.5 * u.r.l2 * _pk_own_sumsq(u.Wp, u, c.tid, c.nt)
        elif u.r.l2 != 0.0:
            share = _share(u, c.tid, c.nt)
            l2 += 0.5 * u.r.l2 * _sumsq_span(params + share.w0, share.wn)
        if u.Wp != NULL:
            pk_pack(<floating*>u.dA, fo, c.rows, r0, c.r1, u.dZp)
        if i > 0:
            _dA_product(c, u, <floating*>c.units[i - 1].dA, params)
    c.sh.l2[c.tid] = l2
    return 0


cdef void _param_grads(Ctx* c, floating* params) noexcept nogil:
    """This thread's rows f0..f1 of each dW (columns f0..f1 of the input) and columns
    of each db and dalpha, over the whole batch; the L2 term's W goes into dW first unless
    the update folds it in."""
    cdef Py_ssize_t i, fi, fo, f0, f1
    cdef UnitPtrs* u
    cdef const floating* inp
    cdef floating* grads = <floating*>c.grads
    for i in range(c.n_units - 1, -1, -1):
        u = &c.units[i]
        if u.r.kind == UNIT_PRELU:
            _dalpha(c, u, i, grads)
        if not has_w(&u.r):
            continue
        fi, fo = u.r.fan_in, u.r.fan_out
        f0, f1 = _part(fi, c.tid, c.nt), _part(fi, c.tid + 1, c.nt)
        if u.r.kind == UNIT_RES_ADD:  # dWp = (the block's input)^T dZ
            _dW_product(c, u, <floating*>c.units[u.r.link].A, grads, f0, f1, 0.0)
            continue
        inp = <floating*>c.x_buf if i == 0 else <floating*>c.units[i - 1].A
        if u.r.l2 != 0.0 and not c.fold_l2 and u.Wp != NULL:
            _pk_copy_rows(u, c.tid, c.nt)
        elif u.r.l2 != 0.0 and not c.fold_l2:
            memcpy(grads + u.r.w_off + f0 * fo, params + u.r.w_off + f0 * fo, (f1 - f0) * fo * sizeof(floating))
        _dW_product(c, u, inp, grads, f0, f1, 0.0 if c.fold_l2 else u.r.l2)
        if u.r.use_bias:
            _col_sums(<floating*>u.dA, grads + u.r.b_off, c.rows, fo, _part(fo, c.tid, c.nt),
                      _part(fo, c.tid + 1, c.nt))


cdef void _clip_value(Ctx* c, floating* params) noexcept nogil:
    """Clamp every gradient element to [-clip_value, clip_value]: each thread its own shares
    (the same shares _clip then sums and scales, so no thread waits for another here)."""
    cdef Py_ssize_t i, a0, an
    cdef Share share
    cdef UnitPtrs* u
    cdef floating* grads = <floating*>c.grads
    if c.nt == 1:
        _clamp_p(grads, c.n_params, c.clip_value)
        return
    for i in range(c.n_units):
        u = &c.units[i]
        if u.r.kind == UNIT_PRELU:
            an = _alpha_share(u, c.tid, c.nt, &a0)
            _clamp_p(grads + a0, an, c.clip_value)
        elif has_w(&u.r):
            share = _share(u, c.tid, c.nt)
            if u.Wp != NULL:
                _pk_own_clamp(u.dWp, u, c.tid, c.nt, c.clip_value)
            else:
                _clamp_p(grads + share.w0, share.wn, c.clip_value)
            if share.bn:
                _clamp_p(grads + share.b0, share.bn, c.clip_value)


cdef void _clip(Ctx* c, floating* params) noexcept nogil:
    """Rescale the gradient to a global norm of at most clip_norm (the threads sum
    their shares' squares, meet, and scale their shares)."""
    cdef Py_ssize_t i, t, a0, an
    cdef double norm
    cdef Share share
    cdef UnitPtrs* u
    cdef floating* grads = <floating*>c.grads
    if c.nt == 1:
        norm = sqrt(_sumsq_span(grads, c.n_params))
    else:
        norm = 0.0
        for i in range(c.n_units):
            u = &c.units[i]
            if u.r.kind == UNIT_PRELU:
                an = _alpha_share(u, c.tid, c.nt, &a0)
                norm += _sumsq_span(grads + a0, an)
            elif has_w(&u.r):
                share = _share(u, c.tid, c.nt)
                if u.Wp != NULL:
                    norm += _pk_own_sumsq(u.dWp, u, c.tid, c.nt)
                else:
                    norm += _sumsq_span(grads + share.w0, share.wn)
                if share.bn:
                    norm += _sumsq_span(grads + share.b0, share.bn)
        c.sh.sumsq[c.tid] = norm
        fm_barrier_wait(&c.sh.bar, &c.sense)
        norm = 0.0
        for t in range(c.nt):
            norm += c.sh.sumsq[t]
        norm = sqrt(norm)
        fm_barrier_wait(&c.sh.bar, &c.sense)  # sumsq is rewritten next step
    if norm <= c.clip_norm:
        return
    if c.nt == 1:
        _scale_p(grads, c.n_params, c.clip_norm / (norm + 1e-6))
        return
    for i in range(c.n_units):
        u = &c.units[i]
        if u.r.kind == UNIT_PRELU:
            an = _alpha_share(u, c.tid, c.nt, &a0)
            _scale_p(grads + a0, an, c.clip_norm / (norm + 1e-6))
        elif has_w(&u.r):
            share = _share(u, c.tid, c.nt)
            if u.Wp != NULL:
                _pk_own_scale(u.dWp, u, c.tid, c.nt, c.clip_norm / (norm + 1e-6))
            else:
                _scale_p(grads + share.w0, share.wn, c.clip_norm / (norm + 1e-6))
            if share.bn:
                _scale_p(grads + share.b0, share.bn, c.clip_norm / (norm + 1e-6))


cdef void _update_trainable(const UnitRec* r, int opt_kind, const Hyper* h, double step, floating* params,
                            floating* grads, floating* s1, floating* s2) noexcept nogil:
    """The update of one unit's trainable parameters: a dense unit's W and b, batch norm's gamma and
    beta, PReLU's alpha."""
    cdef Py_ssize_t off, n
    if r.kind == UNIT_DENSE:
        off, n = r.w_off, r.fan_in * r.fan_out
        _opt_span(opt_kind, h, step, params + off, grads + off, s1 + off if s1 != NULL else NULL,
                  s2 + off if s2 != NULL else NULL, n, 0.0)
        if r.use_bias:
            off, n = r.b_off, r.fan_out
        else:
            return
    elif r.kind == UNIT_BATCHNORM:
        off, n = r.w_off, 2 * r.fan_out
    elif r.kind == UNIT_PRELU:
        off, n = r.w_off, 1 if r.shared else r.fan_out
    elif has_w(r):  # a residual projection
        off, n = r.w_off, r.fan_in * r.fan_out
    else:
        return
    _opt_span(opt_kind, h, step, params + off, grads + off, s1 + off if s1 != NULL else NULL,
              s2 + off if s2 != NULL else NULL, n, 0.0)


cdef void _update(Ctx* c, Py_ssize_t s, floating* params) noexcept nogil:
    """Update number t0 + s + 1: all parameters (nt == 1), or this thread's shares."""
    cdef Py_ssize_t i, a0, an
    cdef double step = <double>(c.t0 + s + 1)
    cdef floating* grads = <floating*>c.grads
    cdef floating* s1 = <floating*>c.s1
    cdef floating* s2 = <floating*>c.s2
    if c.opt_kind < 0:
        return
    if c.lrs != NULL:
        c.h.lr = c.lrs[s]
    if c.nt == 1:
        if c.h.weight_decay == 0.0 or not c.has_bn:
            _opt_span(c.opt_kind, &c.h, step, params, grads, s1, s2, c.n_params, 0.0)
            return
        # weight decay spares batch norm's running statistics (buffers, not parameters, in
        # PyTorch); their gradients are 0, so that skipping their update changes nothing else
        for i in range(c.n_units):
            _update_trainable(&c.units[i].r, c.opt_kind, &c.h, step, params, grads, s1, s2)
        return
    for i in range(c.n_units):
        if c.units[i].Wp != NULL:
            _update_share_pk(&c.units[i], c.tid, c.nt, c.opt_kind, &c.h, step, params, grads, s1, s2, c.fold_l2)
        elif has_w(&c.units[i].r):
            _update_share(&c.units[i], c.tid, c.nt, c.opt_kind, &c.h, step, params, grads, s1, s2, c.fold_l2)
        elif c.units[i].r.kind == UNIT_PRELU:
            an = _alpha_share(&c.units[i], c.tid, c.nt, &a0)
            if an:
                _opt_span(c.opt_kind, &c.h, step, params + a0, grads + a0, s1 + a0 if s1 != NULL else NULL,
                          s2 + a0 if s2 != NULL else NULL, an, 0.0)


# ------------------------------------------------------------ diagnostics
cdef inline Py_ssize_t _before_off(const Ctx* c, Py_ssize_t i) noexcept nogil:
    # where dense unit i's copy of W starts in c.before: the sizes of the dense units before it,
    # padded to whole 16-column panels (a packed unit's copy keeps the packed layout)
    cdef Py_ssize_t j, off = 0
    for j in range(i):
        if c.units[j].r.kind == UNIT_DENSE:
            off += ((c.units[j].r.fan_out + 15) // 16) * 16 * c.units[j].r.fan_in
    return off


cdef inline void _diag_span(const floating* W, const floating* dW, floating* copy, Py_ssize_t n, double l2,
                            double* g2, double* w2) noexcept nogil:
    # the sums of squares of dW + l2 W (l2: the folded L2 term, else 0) and of W; W into copy
    cdef Py_ssize_t q
    cdef double g, w, sg = 0.0, sw = 0.0
    for q in range(n):
        w = W[q]
        g = dW[q] + l2 * w
        sg += g * g
        sw += w * w
        copy[q] = W[q]
    g2[0] += sg
    w2[0] += sw


cdef inline double _diff_sq(const floating* W, const floating* copy, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t q
    cdef double d, total = 0.0
    for q in range(n):
        d = <double>W[q] - <double>copy[q]
        total += d * d
    return total


cdef void _diag_grads(Ctx* c, Py_ssize_t slot, floating* params) noexcept nogil:
    """A sampled step's statistics after its gradients (reference._diag_step): this thread's
    shares of each dense unit's dW and W (sums of squares; W copied for _diag_update), and its
    share of the features of every unit's output over the whole batch (the first barrier of
    the step is behind: every thread's rows of A are written)."""
    cdef Py_ssize_t i, j, r, k, j0, j1, o, K, f0, f1, off = 0
    cdef double g2, w2, a, l2
    cdef int act
    cdef double* uo = c.diag_units + (slot * MAX_LOOP_THREADS + c.tid) * c.n_units * 3
    cdef double* fo
    cdef UnitPtrs* u
    cdef Share share
    cdef floating* grads = <floating*>c.grads
    cdef floating* b
    cdef const floating* A
    for i in range(c.n_units):
        u = &c.units[i]
        if u.r.kind != UNIT_DENSE:
            continue
        l2 = u.r.l2 if c.fold_l2 else 0.0
        g2, w2 = 0.0, 0.0
        b = <floating*>c.before + _before_off(c, i)
        if u.Wp != NULL:
            if floating is float:
                K = u.r.fan_in
                f0, f1 = _part(K, c.tid, c.nt), _part(K, c.tid + 1, c.nt)
                for j in range(0, u.r.fan_out, 16):
                    o = j * K + f0 * 16
                    _diag_span(u.Wp + o, u.dWp + o, b + o, (f1 - f0) * 16, l2, &g2, &w2)
        else:
            share = _share(u, c.tid, c.nt)
            _diag_span(params + share.w0, grads + share.w0, b + (share.w0 - u.r.w_off), share.wn, l2, &g2, &w2)
        uo[i * 3] = g2
        uo[i * 3 + 2] = w2
    for i in range(c.n_units):
        u = &c.units[i]
        k = u.r.fan_out
        j0, j1 = _part(k, c.tid, c.nt), _part(k, c.tid + 1, c.nt)
        act = <int>u.r.act if (u.r.kind == UNIT_DENSE or u.r.kind == UNIT_ACTIVATION) else ACT_IDENTITY
        fo = c.diag_feats + (slot * c.n_feat + off) * 4
        A = <const floating*>u.A
        for j in range(j0 * 4, j1 * 4):
            fo[j] = 0.0
        for r in range(c.rows):
            for j in range(j0, j1):
                a = A[r * k + j]
                fo[j * 4] += a
                fo[j * 4 + 1] += a * a
                if a != 0.0:
                    fo[j * 4 + 2] += 1.0
                if act == ACT_SIGMOID:
                    if a * (1.0 - a) < DIAG_SATURATED:
                        fo[j * 4 + 3] += 1.0
                elif act == ACT_TANH:
                    if 1.0 - a * a < DIAG_SATURATED:
                        fo[j * 4 + 3] += 1.0
        off += k


cdef void _diag_update(Ctx* c, Py_ssize_t slot, floating* params) noexcept nogil:
    """The sum of squares of this thread's share of each dense unit's change of W in the update."""
    cdef Py_ssize_t i, j, o, K, f0, f1
    cdef double d2
    cdef double* uo = c.diag_units + (slot * MAX_LOOP_THREADS + c.tid) * c.n_units * 3
    cdef UnitPtrs* u
    cdef Share share
    cdef floating* b
    for i in range(c.n_units):
        u = &c.units[i]
        if u.r.kind != UNIT_DENSE:
            continue
        d2 = 0.0
        b = <floating*>c.before + _before_off(c, i)
        if u.Wp != NULL:
            if floating is float:
                K = u.r.fan_in
                f0, f1 = _part(K, c.tid, c.nt), _part(K, c.tid + 1, c.nt)
                for j in range(0, u.r.fan_out, 16):
                    o = j * K + f0 * 16
                    d2 += _diff_sq(u.Wp + o, b + o, (f1 - f0) * 16)
        else:
            share = _share(u, c.tid, c.nt)
            d2 = _diff_sq(params + share.w0, b + (share.w0 - u.r.w_off), share.wn)
        uo[i * 3 + 1] = d2


cdef void _pack_all(Ctx* c, floating* params, bint pack) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(c.n_units):
        if c.units[i].r.kind == UNIT_DENSE:
            _pk_share(&c.units[i], params, <floating*>c.grads, <floating*>c.s1, <floating*>c.s2, c.tid, c.nt, pack)


cdef Py_ssize_t _train_loop(Ctx* c, Py_ssize_t n_steps, floating* params) noexcept nogil:
    """The driver: thread c.tid of c.nt runs n_steps steps, phase after phase.
    Returns the steps done (fewer when the loss was not finite: that step's loss
    is reported and no update applied), or -1 when batch norm could not
    allocate its scratch space."""
    cdef Py_ssize_t s, t, slot = 0
    cdef double loss, l2, correct
    cdef bint sampled
    cdef bint timing = RT.timing and c.tid == 0
    cdef double tm = now() if timing else 0.0
    c.timing = timing
    if c.pk:
        _pack_all(c, params, True)
        fm_barrier_wait(&c.sh.bar, &c.sense)
    for s in range(n_steps):
        _gather(c, s, params)
        tm = lap(RT, timing, PH_GATHER, tm)
        if _forward(c, s, params):
            return -1
        tm = lap(RT, timing, PH_FORWARD, tm)
        _loss(c, params)
        tm = lap(RT, timing, PH_LOSS, tm)
        if _backward(c, params):
            return -1
        tm = lap(RT, timing, PH_BACKWARD, tm)
        fm_barrier_wait(&c.sh.bar, &c.sense)
        tm = lap(RT, timing, PH_SYNC, tm)
        loss, l2, correct = 0.0, 0.0, 0.0
        for t in range(c.nt):
            loss += c.sh.loss[t]
            l2 += c.sh.l2[t]
            correct += c.sh.correct[t]
        loss = loss / c.denom + l2
        if c.tid == 0:
            c.losses_out[s] = loss
            c.correct_out[s] = correct / c.k if c.loss_kind == LOSS_BCE else correct
        if not isfinite(loss):
            if c.pk:  # W as the last update left it
                _pack_all(c, params, False)
            return s
        _param_grads(c, params)
        tm = lap(RT, timing, PH_PARAM_GRADS, tm)
        sampled = c.diag_every > 0 and (c.diag_phase + s) % c.diag_every == 0
        if sampled:
            _diag_grads(c, slot, params)
        if c.clip_value > 0.0:
            _clip_value(c, params)
        if c.clip_norm > 0.0:
            _clip(c, params)
            tm = lap(RT, timing, PH_CLIP, tm)
        _update(c, s, params)
        if sampled:
            _diag_update(c, slot, params)
            slot += 1
        tm = lap(RT, timing, PH_UPDATE, tm)
        # the next step's forward pass reads every parameter, and its gather
        # overwrites rows of x_buf that this step's dW products read
        fm_barrier_wait(&c.sh.bar, &c.sense)
        tm = lap(RT, timing, PH_SYNC, tm)
    if c.pk:
        _pack_all(c, params, False)
    return n_steps


# ---------------------------------------------------------------- the entry point
cdef inline const void* _data(object a):
    # the data of a checked array, NULL when it is empty
    return cnp.PyArray_DATA(<cnp.ndarray>a) if a.size else NULL


cdef Py_ssize_t _run(object plan, object loop, object X, object y, object Y, object sw, object order,
                     Py_ssize_t start, Py_ssize_t n_steps, object losses_out, object correct_out,
                     floating[::1] params) except -2:
    """train_steps on checked arguments, for the dtype of params."""
    global _last_nt, _last_pk
    cdef Py_ssize_t i, n_units = plan.n_units, rows = plan.rows, done = 0, got = 0, pk_total, fi, fo, n_acc = 0
    cdef Py_ssize_t n_before
    cdef int nt, j, tid = 0
    cdef bint pinned = False, serial = False, pk = False
    cdef float* pk_mem = NULL
    cdef float* pk_at
    cdef bint has1 = loop.state1.size != 0, has2 = loop.state2.size != 0
    cdef const Hyper[::1] hyper = loop.hyper
    cdef const UnitRec[::1] recs = plan.units
    cdef LoopShared sh
    cdef LoopShared solo
    cdef LoopShared* shp = &sh
    cdef Ctx* ctxs = NULL
    cdef Ctx base
    # the arrays themselves, alive while the GIL is released (the plan's lists could change)
    keep = (plan.params, plan.grads, plan.x, plan.y, plan.Y, plan.sw, plan.P, tuple(plan.Z), tuple(plan.A),
            tuple(plan.dA), tuple(plan.M), loop.state1, loop.state2, loop.hyper, loop.lrs)
    cdef UnitPtrs* units = fill_units(plan, True)
    base.before = NULL
    try:
        nt = threads_for(&recs[0], n_units, params.shape[0], rows, <int>loop.variant)
        if floating is float and FM_HAVE_PACKGEMM and pk_allowed(POL, <int>loop.variant, rows, nt):
            for i in range(n_units):
                pk = pk or pk_unit(POL, &units[i], i)
        _last_pk = pk
        if pk:
            # one zeroed block for every packed operand, each 64-byte aligned
            pk_total = 16
            for i in range(n_units):
                if pk_unit(POL, &units[i], i):
                    pk_total += ((2 + has1 + has2) * pk_floats(units[i].r.fan_in, units[i].r.fan_out)
                                 + pk_floats(rows, units[i].r.fan_out)
                                 + (pk_floats(units[i].r.fan_out, units[i].r.fan_in) if i > 0 else 0))
            pk_mem = <float*>calloc(pk_total, sizeof(float))
            if pk_mem == NULL:
                raise MemoryError()
            pk_at = <float*>((<size_t>pk_mem + 63) & ~(<size_t>63))
            for i in range(n_units):
                if pk_unit(POL, &units[i], i):
                    fi, fo = units[i].r.fan_in, units[i].r.fan_out
                    units[i].Wp = pk_take(&pk_at, fi, fo, True)
                    units[i].dWp = pk_take(&pk_at, fi, fo, True)
                    units[i].mp = pk_take(&pk_at, fi, fo, has1)
                    units[i].vp = pk_take(&pk_at, fi, fo, has2)
                    units[i].dZp = pk_take(&pk_at, rows, fo, True)
                    units[i].Wtp = pk_take(&pk_at, fo, fi, i > 0)
        _last_nt = nt
        base.sh = &sh
        base.units = units
        base.n_units, base.rows, base.d, base.k = n_units, rows, plan.x.shape[1], units[n_units - 1].r.fan_out
        base.n_params, base.start, base.t0 = params.shape[0], start, loop.t
        base.loss_kind, base.opt_kind, base.h = <int>plan.loss, <int>loop.opt, hyper[0]
        base.clip_norm, base.seed, base.pk = loop.clip_norm, <uint64_t>loop.seed, pk
        base.clip_value = loop.clip_value
        base.has_bn = False
        for i in range(n_units):
            base.has_bn = base.has_bn or recs[i].kind == UNIT_BATCHNORM
        # the folded L2 term joins the gradient after the clipping, which must see it
        base.fold_l2 = (nt > 1 and base.opt_kind == OPT_ADAM and base.clip_norm <= 0.0 and base.clip_value <= 0.0
                        and POL.fold_l2)
        base.fused = (base.loss_kind == LOSS_CE or base.loss_kind == LOSS_CE_ONEHOT or base.loss_kind == LOSS_BCE
                      or base.loss_kind == LOSS_POISSON)
        base.X, base.y, base.Y, base.sw = _data(X), <const int64_t*>_data(y), _data(Y), _data(sw)
        base.order = <const int64_t*>_data(order)
        base.params, base.grads = &params[0], <void*>_data(plan.grads)
        base.s1, base.s2 = <void*>_data(loop.state1), <void*>_data(loop.state2)
        base.x_buf, base.y_buf = <void*>_data(plan.x), <int64_t*>_data(plan.y)
        base.Y_buf, base.sw_buf, base.P = <void*>_data(plan.Y), <void*>_data(plan.sw), <void*>_data(plan.P)
        base.losses_out = <double*>_data(losses_out)
        base.correct_out = <double*>_data(correct_out)
        base.lrs = <const double*>_data(loop.lrs)
        base.acc = NULL
        base.diag_every, base.diag_phase = loop.diag_every, loop.diag_phase
        base.n_feat = loop.diag_feats.shape[1]
        base.diag_units = <double*>_data(loop.diag_units)
        base.diag_feats = <double*>_data(loop.diag_feats)
        base.before = NULL
        if base.diag_every > 0:
            n_before = 1
            for i in range(n_units):
                if recs[i].kind == UNIT_DENSE:
                    n_before += ((recs[i].fan_out + 15) // 16) * 16 * recs[i].fan_in
            base.before = calloc(n_before, sizeof(floating))
            if base.before == NULL:
                raise MemoryError()
        for i in range(n_units):
            if recs[i].kind == UNIT_PRELU:
                n_acc += recs[i].fan_out
        ctxs = <Ctx*>malloc(nt * sizeof(Ctx))
        if ctxs == NULL:
            raise MemoryError()
        for j in range(nt):
            ctxs[j] = base
            ctxs[j].tid, ctxs[j].nt, ctxs[j].sense = j, nt, 0
            ctxs[j].r0, ctxs[j].r1 = _part(rows, j, nt), _part(rows, j + 1, nt)
        for j in range(nt):  # each thread's PReLU sums
            if n_acc:
                ctxs[j].acc = <double*>malloc(n_acc * sizeof(double))
                if ctxs[j].acc == NULL:
                    raise MemoryError()
            sh.acc[j] = ctxs[j].acc
        solo.acc[0] = ctxs[0].acc
        if not RT.loop_parallel:
            RT.serial_loops += 1
            serial = True
        fm_barrier_init(&sh.bar, nt)
        fm_barrier_init(&solo.bar, 1)
        if nt > 1:
            # each thread's products run on one BLAS thread, side by side
            RT.omp_started = True
            _pin_blas()
            pinned = True
            with nogil, parallel(num_threads=nt):
                tid = threadid()
                if fm_team_size() == nt:
                    got = _train_loop(&ctxs[tid], n_steps, &params[0])
                    if tid == 0:
                        shp.done = got
                elif tid == 0:  # a smaller team than asked for (OMP_THREAD_LIMIT): one thread,
                    _in_place(units, n_units)  # its products on BLAS (the packed path splits the update)
                    ctxs[0].nt, ctxs[0].r0, ctxs[0].r1, ctxs[0].pk, ctxs[0].sh = 1, 0, rows, False, &solo
                    ctxs[0].fold_l2 = False
                    shp.done = _train_loop(&ctxs[0], n_steps, &params[0])
            done = sh.done
        else:
            ctxs[0].sh = &solo
            with nogil:
                done = _train_loop(&ctxs[0], n_steps, &params[0])
    finally:
        free(units)
        free(pk_mem)
        free(base.before)
        if ctxs != NULL:
            for j in range(nt):
                free(ctxs[j].acc)
        free(ctxs)
        if serial:
            RT.serial_loops -= 1
        if pinned:
            _unpin_blas()
    if done < 0:
        raise MemoryError()
    return done


def train_steps(plan, loop, X, targets, sw, order, Py_ssize_t start, Py_ssize_t n_steps, losses_out,
                correct_out):
    """The whole-step training loop (see reference.train_steps). Every buffer is
    checked against the plan first (plan.check_train): a ValueError, never a
    read or a write outside a buffer."""
    y, Y = check_train(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out)
    if plan.params.dtype == np.float32:
        return _run[float](plan, loop, X, y, Y, sw, order, start, n_steps, losses_out, correct_out, plan.params)
    return _run[double](plan, loop, X, y, Y, sw, order, start, n_steps, losses_out, correct_out, plan.params)
