"""The training loop and the predictor of the Numba backend: one jitted call for many steps."""
import math

import numba
import numpy as np

from ..._native.codes import Loss, Opt, Unit
from ..._native.plan import DIAG_SATURATED
from ...activations import IDENTITY, SIGMOID, TANH
from .jit import jit, jit_reduce
from .losses import (
    _mse_loss,
    _nll_loss,
    _poisson_loss,
    _sigmoid_binary_cross_entropy,
    _softmax_cross_entropy,
    _softmax_cross_entropy_onehot,
)
from .rows import _act_backward, _act_forward, _dense_backward, _dense_forward, _gather_rows
from .updates import (
    _adam_update,
    _batchnorm_backward,
    _batchnorm_forward,
    _dropout_mask,
    _mul_mask,
    _rmsprop_update,
    _scale_inplace,
    _sgd_update,
    _sum_squares,
)


# ------------------------------------------------------------ PReLU and maxout
# (reference._prelu_forward and the others.) alpha is the unit's (1, 1) or (1, k) block.
@jit
def _prelu_forward(Z, alpha, shared, A):
    n, k = Z.shape
    for r in range(n):
        for j in range(k):
            z = Z[r, j]
            A[r, j] = z if z > 0 else alpha[0, 0 if shared else j] * z


@jit
def _prelu_backward(Z, alpha, shared, dA, dalpha):
    # dalpha: the sums of min(0, Z) * dA (float64), then dA in place (PyTorch's derivative at 0: alpha)
    n, k = Z.shape
    acc = np.zeros(k)
    for r in range(n):
        for j in range(k):
            z = Z[r, j]
            if not z > 0:
                if z < 0:
                    acc[j] += np.float64(z) * np.float64(dA[r, j])
                dA[r, j] = dA[r, j] * alpha[0, 0 if shared else j]
    if shared:
        s = 0.0
        for j in range(k):
            s += acc[j]
        dalpha[0, 0] = s
    else:
        for j in range(k):
            dalpha[0, j] = acc[j]


@jit
def _maxout_forward(Z, pieces, A):
    n, k = A.shape
    for r in range(n):
        for j in range(k):
            m = Z[r, j * pieces]
            for p in range(1, pieces):
                if Z[r, j * pieces + p] > m:
                    m = Z[r, j * pieces + p]
            A[r, j] = m


@jit
def _maxout_backward(Z, pieces, dA, dX):
    # dA at the first arg-max piece of each output (torch.max), 0 elsewhere
    n, k = dA.shape
    for r in range(n):
        for j in range(k):
            best = j * pieces
            for p in range(1, pieces):
                if Z[r, j * pieces + p] > Z[r, best]:
                    best = j * pieces + p
            for p in range(pieces):
                dX[r, j * pieces + p] = 0
            dX[r, best] = dA[r, j]


# ------------------------------------------------------------ residual blocks
# (reference._residual_forward and _residual_backward.) Wp is the block end's
# (fan_in, fan_out) projection, or an empty (0, 0) array for the identity shortcut.
@jit
def _residual_forward(F, X, Wp, Z):
    n, k = Z.shape
    if Wp.shape[0] != 0:
        np.dot(X, Wp, Z)
        for r in range(n):
            for j in range(k):
                Z[r, j] += F[r, j]
    else:
        for r in range(n):
            for j in range(k):
                Z[r, j] = F[r, j] + X[r, j]


@jit
def _residual_backward(X, Wp, dZ, dWp, dF, S):
    n, k = dZ.shape
    for r in range(n):
        for j in range(k):
            dF[r, j] = dZ[r, j]
    if Wp.shape[0] != 0:
        np.dot(X.T, dZ, dWp)
        np.dot(dZ, Wp.T, S)


@jit
def _add_into(X, Y):
    n, k = Y.shape
    for r in range(n):
        for j in range(k):
            Y[r, j] += X[r, j]


# ------------------------------------------------------------ the step loop
@jit_reduce
def _sum_squares_2d(W):
    s = 0.0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            w = np.float64(W[i, j])
            s += w * w
    return s


@jit
def _diag_grads(units, Ws, dWs, A, unit_out, feat_out, before):
    # reference._diag_step: per dense unit sum(dW^2), sum(W^2) (unit_out (n_units, 3), thread 0),
    # W into before (the params' layout); per feature of every A its sums and counts (feat_out)
    for i in range(len(units)):
        u = units[i]
        if u.kind == Unit.DENSE:
            W, dW = Ws[i], dWs[i]
            g2 = 0.0
            w2 = 0.0
            o = u.w_off
            for r in range(W.shape[0]):
                for j in range(W.shape[1]):
                    g = np.float64(dW[r, j])
                    w = W[r, j]
                    g2 += g * g
                    w2 += np.float64(w) * np.float64(w)
                    before[o + r * W.shape[1] + j] = w
            unit_out[i, 0] = g2
            unit_out[i, 2] = w2
    off = 0
    for i in range(len(units)):
        u = units[i]
        a_i = A[i]
        n, k = a_i.shape
        act = u.act if (u.kind == Unit.DENSE or u.kind == Unit.ACTIVATION) else IDENTITY
        for j in range(k):
            s1 = 0.0
            s2 = 0.0
            nz = 0.0
            sat = 0.0
            for r in range(n):
                a = np.float64(a_i[r, j])
                s1 += a
                s2 += a * a
                if a != 0.0:
                    nz += 1.0
                if act == SIGMOID:
                    if a * (1.0 - a) < DIAG_SATURATED:
                        sat += 1.0
                elif act == TANH:
                    if 1.0 - a * a < DIAG_SATURATED:
                        sat += 1.0
            feat_out[off + j, 0] = s1
            feat_out[off + j, 1] = s2
            feat_out[off + j, 2] = nz
            feat_out[off + j, 3] = sat
        off += k


@jit
def _diag_change(units, Ws, before, unit_out):
    # reference._diag_update: per dense unit the sum of squares of W's change (unit_out[:, 1])
    for i in range(len(units)):
        u = units[i]
        if u.kind == Unit.DENSE:
            W = Ws[i]
            d2 = 0.0
            o = u.w_off
            for r in range(W.shape[0]):
                for j in range(W.shape[1]):
                    d = np.float64(W[r, j]) - np.float64(before[o + r * W.shape[1] + j])
                    d2 += d * d
            unit_out[i, 1] = d2


@jit
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


@jit
def _weight_decay(params, grads, units, wd, decoupled, lr):
    # PyTorch's weight decay on the trainable parameters (reference.trainable_spans)
    cast = np.empty_like(params[:1])  # the factor in the parameters' dtype, as the other backends
    cast[0] = 1.0 - lr * wd if decoupled else wd
    f = cast[0]
    for u in units:
        if u.kind == Unit.DENSE:
            spans = ((u.w_off, u.w_off + u.fan_in * u.fan_out), (u.b_off, u.b_off + (u.fan_out if u.use_bias else 0)))
        elif u.kind == Unit.BATCHNORM:
            spans = ((u.w_off, u.w_off + 2 * u.fan_out), (0, 0))
        elif u.kind == Unit.PRELU:
            spans = ((u.w_off, u.w_off + (1 if u.shared else u.fan_out)), (0, 0))
        elif u.kind == Unit.RES_ADD and u.fan_in != u.fan_out:
            spans = ((u.w_off, u.w_off + u.fan_in * u.fan_out), (0, 0))
        else:
            continue
        for a, b in spans:
            for j in range(a, b):
                if decoupled:
                    params[j] *= f
                else:
                    grads[j] += f * params[j]


@jit
def _train_steps(X, y, Y, sw, order, start, n_steps, units, Ws, bs, dWs, dbs, params, grads, x_buf, y_buf,
                 Y_buf, sw_buf, Z, A, dA, M, P, empty2, loss_kind, opt_kind, hyper, state1, state2, t0,
                 clip_norm, seed, lrs, clip_value, losses_out, correct_out, diag_every, diag_phase, diag_units,
                 diag_feats, before):
    rows = x_buf.shape[0]
    slot = 0
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
            elif u.kind == Unit.PRELU:
                _prelu_forward(Z[i], Ws[i], u.shared != 0, A[i])
            elif u.kind == Unit.MAXOUT:
                _maxout_forward(Z[i], u.pieces, A[i])
            elif u.kind == Unit.RES_ADD:
                _residual_forward(A[i - 1], A[u.link], Ws[i], Z[i])
                _act_forward(Z[i], u.act, u.alpha, A[i])
            elif u.kind != Unit.RES_BEGIN:
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
            if u.kind == Unit.PRELU:
                _prelu_backward(Z[i], Ws[i], u.shared != 0, dA[i], dWs[i])
            if u.kind == Unit.MAXOUT and i > 0:
                _maxout_backward(Z[i], u.pieces, dA[i], dA[i - 1])
            if u.kind == Unit.RES_ADD:
                _residual_backward(A[u.link], Ws[i], dA[i], dWs[i], dA[i - 1], M[i])
            if u.kind == Unit.RES_BEGIN and i > 0:
                e = u.link
                _add_into(M[e] if units[e].fan_in != units[e].fan_out else dA[e], dA[i])
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
        sampled = diag_every > 0 and (diag_phase + s) % diag_every == 0
        if sampled:
            _diag_grads(units, Ws, dWs, A, diag_units[slot, 0], diag_feats[slot], before)
        if clip_value > 0.0:
            for j in range(grads.shape[0]):
                if grads[j] > clip_value:
                    grads[j] = clip_value
                elif grads[j] < -clip_value:
                    grads[j] = -clip_value
        if clip_norm > 0.0:
            norm = math.sqrt(_sum_squares(grads))
            if norm > clip_norm:
                _scale_inplace(grads, clip_norm / (norm + 1e-6))
        lr = lrs[s] if lrs.shape[0] != 0 else h.lr
        if h.weight_decay != 0.0:
            _weight_decay(params, grads, units, h.weight_decay, h.decoupled != 0.0, lr)
        if opt_kind == Opt.SGD:
            _sgd_update(params, grads, state1, lr, h.momentum, h.nesterov != 0.0)
        elif opt_kind == Opt.RMSPROP:
            _rmsprop_update(params, grads, state1, lr, h.rho, h.eps)
        elif opt_kind == Opt.ADAM:
            _adam_update(params, grads, state1, state2, lr, h.beta1, h.beta2, h.eps, t0 + s + 1)
        if sampled:
            _diag_change(units, Ws, before, diag_units[slot, 0])
            slot += 1
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
        elif kind == Unit.RES_ADD and fan_in != fan_out:  # the projection Wp
            Ws.append(params[w_off:w_off + fan_in * fan_out].reshape(fan_in, fan_out))
            dWs.append(grads[w_off:w_off + fan_in * fan_out].reshape(fan_in, fan_out))
            bs.append(e1)
            dbs.append(e1)
        elif kind == Unit.PRELU:  # alpha as a (1, 1) or (1, k) block
            na = 1 if u["shared"] else fan_out
            Ws.append(params[w_off:w_off + na].reshape(1, na))
            dWs.append(grads[w_off:w_off + na].reshape(1, na))
            bs.append(e1)
            dbs.append(e1)
        else:
            Ws.append(e2)
            dWs.append(e2)
            bs.append(e1)
            dbs.append(e1)
    return Ws, bs, dWs, dbs


@jit
def _predict_rows(X, units, Ws, bs, x_buf, Z, A, empty2, out):
    # One forward pass over buffers of exactly X's rows; False on NaN/inf in X or in the outputs.
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
        elif u.kind == Unit.PRELU:
            _prelu_forward(Z[i], Ws[i], u.shared != 0, A[i])
        elif u.kind == Unit.MAXOUT:
            _maxout_forward(Z[i], u.pieces, A[i])
        elif u.kind == Unit.RES_ADD:
            _residual_forward(A[i - 1], A[u.link], Ws[i], Z[i])
            _act_forward(Z[i], u.act, u.alpha, A[i])
        elif u.kind != Unit.RES_BEGIN:
            _act_forward(Z[i], u.act, u.alpha, A[i])
    out[...] = A[L]
    for r in range(out.shape[0]):  # an output that overflowed: the caller raises, naming X
        for j in range(out.shape[1]):
            if not math.isfinite(out[r, j]):
                return False
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
