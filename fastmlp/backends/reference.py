"""NumPy kernels: the specification of every kernel, and the fallback backend.

Every backend (``reference``, ``numba``, ``cython``) exposes exactly these
names with exactly these signatures (``tests/test_backends.py`` compares them
with ``inspect.signature``). Conventions shared by all of them:

* Inputs first, outputs last. Outputs are preallocated C-contiguous arrays of
  the same dtype as the inputs (float32 or float64); kernels write into them
  and allocate nothing of the problem's size.
* Activations are passed as ``(act, alpha)``: an integer code from
  :mod:`fastmlp.activations` and the activation's parameter.
* Bias vectors and sample weights of length 0 mean "none".
* Losses are weighted means over the batch:
  ``loss = sum_i w_i * l_i / sum_i w_i`` (plain mean when ``sample_weight``
  is empty), where ``l_i`` is the row's loss; for the element-wise losses
  (binary cross-entropy, MSE, Poisson) ``l_i`` is the mean over the row's columns, so
  the unweighted loss equals PyTorch's ``reduction="mean"``. The gradient
  returned is the gradient of that loss.
"""
import math
import sys

import numpy as np
from scipy.special import erf as _erf

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

NAME = "reference"
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def set_num_threads(n_threads):
    """Bound the threads this backend's own loops use (NumPy: none; BLAS is
    bounded by the caller through threadpoolctl)."""
    return None


# ---------------------------------------------------------------- helpers
def _sigmoid(z):
    # exp of a non-positive number only: no overflow for either sign.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _weights(sample_weight, n, dtype):
    if sample_weight.shape[0] == 0:
        return np.ones(n, dtype=dtype), float(n)
    return sample_weight.astype(dtype, copy=False), float(sample_weight.sum())


# ------------------------------------------------------------ linear algebra
def gemm(A, B, C, trans_a, trans_b, beta):
    """C = op(A) @ op(B) + beta * C, op(M) = M.T when the flag is set.

    Parameters
    ----------
    A, B : 2-D C-contiguous arrays (IN)
    C : 2-D C-contiguous array (IN/OUT), shape of the product
    trans_a, trans_b : bool
    beta : float; 0.0 ignores the old content of C (even NaN)
    """
    a = A.T if trans_a else A
    b = B.T if trans_b else B
    if beta == 0.0:
        np.matmul(a, b, out=C)
    else:
        C *= beta
        C += a @ b


def gather_rows(X, idx, out):
    """out[i] = X[idx[i]] for a 2-D X (mini-batch gather by a permutation).

    idx : int64 array of row indices (IN); out : (len(idx), X.shape[1]) (OUT)
    """
    np.take(X, idx, axis=0, out=out)


# ------------------------------------------------------------ activations
def act_forward(Z, act, alpha, A):
    """A = f(Z) element-wise (or row-wise for softmax / log-softmax).

    Z : (n, k) pre-activations (IN); A : (n, k) (OUT), may be Z itself.
    """
    if act == IDENTITY:
        if A is not Z:
            A[...] = Z
    elif act == SIGMOID:
        A[...] = _sigmoid(Z)
    elif act == TANH:
        np.tanh(Z, out=A)
    elif act == RELU:
        np.maximum(Z, 0, out=A)
    elif act == LEAKY_RELU:
        A[...] = np.where(Z > 0, Z, alpha * Z)
    elif act == ELU:
        A[...] = np.where(Z > 0, Z, alpha * np.expm1(np.minimum(Z, 0)))
    elif act == SELU:
        A[...] = SELU_SCALE * np.where(Z > 0, Z, SELU_ALPHA * np.expm1(np.minimum(Z, 0)))
    elif act == SOFTPLUS:
        # PyTorch: x when x > 20, else log1p(exp(x)); written without overflow.
        A[...] = np.where(Z > 20, Z, np.maximum(Z, 0) + np.log1p(np.exp(-np.abs(Z))))
    elif act == SWISH:
        A[...] = Z * _sigmoid(Z)
    elif act == GELU:
        A[...] = 0.5 * Z * (1.0 + _erf(Z * _SQRT_HALF))
    elif act == STEP:
        A[...] = (Z > 0).astype(Z.dtype)
    elif act == EXP:
        np.exp(Z, out=A)
    elif act == SOFTMAX:
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
        A[...] = e / e.sum(axis=1, keepdims=True)
    elif act == LOG_SOFTMAX:
        s = Z - Z.max(axis=1, keepdims=True)
        A[...] = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    else:
        raise ValueError(f"unknown activation code {act}")


def bias_act_forward(Z, b, act, alpha, A):
    """Z += b (row-broadcast; skipped when b is empty), then A = f(Z).

    Z : (n, k) (IN/OUT); b : (k,) or (0,) (IN); A : (n, k) (OUT), may be Z.
    """
    if b.shape[0]:
        Z += b
    act_forward(Z, act, alpha, A)


def dense_forward(X, W, b, act, alpha, Z, A):
    """Fused dense layer: Z = X @ W + b, A = f(Z).

    X : (n, d) (IN); W : (d, k) (IN); b : (k,) or (0,) (IN);
    Z : (n, k) pre-activations (OUT, kept for the backward pass);
    A : (n, k) activations (OUT), may be Z for the identity.
    """
    gemm(X, W, Z, False, False, 0.0)
    bias_act_forward(Z, b, act, alpha, A)


def act_backward(Z, A, dA, act, alpha, dZ):
    """dZ = dA * f'(Z) (the vector-Jacobian product for row-wise ones).

    Z : pre-activations, A : activations, dA : gradient at A (IN);
    dZ : gradient at Z (OUT), may be dA itself.
    Raises ValueError for ``step`` (its derivative is zero everywhere).
    """
    if act == IDENTITY:
        d = 1.0
    elif act == SIGMOID:
        d = A * (1.0 - A)
    elif act == TANH:
        d = 1.0 - A * A
    elif act == RELU:
        d = Z > 0
    elif act == LEAKY_RELU:
        d = np.where(Z > 0, 1.0, alpha)
    elif act == ELU:
        d = np.where(Z > 0, 1.0, alpha * np.exp(np.minimum(Z, 0)))
    elif act == SELU:
        d = SELU_SCALE * np.where(Z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(Z, 0)))
    elif act == SOFTPLUS:
        d = np.where(Z > 20, 1.0, _sigmoid(Z))
    elif act == SWISH:
        s = _sigmoid(Z)
        d = s * (1.0 + Z * (1.0 - s))
    elif act == GELU:
        d = 0.5 * (1.0 + _erf(Z * _SQRT_HALF)) + Z * _INV_SQRT_2PI * np.exp(-0.5 * Z * Z)
    elif act == EXP:
        d = A  # exp' = exp
    elif act == SOFTMAX:
        dZ[...] = A * (dA - (dA * A).sum(axis=1, keepdims=True))
        return
    elif act == LOG_SOFTMAX:
        dZ[...] = dA - np.exp(A) * dA.sum(axis=1, keepdims=True)
        return
    elif act == STEP:
        raise ValueError("step has a zero derivative everywhere; it cannot be trained through")
    else:
        raise ValueError(f"unknown activation code {act}")
    np.multiply(dA, d, out=dZ, casting="unsafe")


def bias_grad(dZ, db):
    """db = dZ.sum(axis=0). dZ : (n, k) (IN); db : (k,) (OUT)."""
    np.sum(dZ, axis=0, out=db)


def dense_backward(X, W, dZ, l2, dW, db, dX):
    """Gradients of a dense layer from the gradient at its pre-activations.

    dW = X.T @ dZ + l2 * W; db = dZ.sum(0) (skipped when db is empty);
    dX = dZ @ W.T (skipped when dX is empty: the first layer needs none).

    X : (n, d), W : (d, k), dZ : (n, k) (IN); l2 : float;
    dW : (d, k), db : (k,) or (0,), dX : (n, d) or (0, 0) (OUT).
    """
    if l2 != 0.0:
        dW[...] = W
        gemm(X, dZ, dW, True, False, l2)
    else:
        gemm(X, dZ, dW, True, False, 0.0)
    if db.shape[0]:
        bias_grad(dZ, db)
    if dX.size:
        gemm(dZ, W, dX, False, True, 0.0)


# ------------------------------------------------------------ fused losses
def softmax_cross_entropy(Z, y, sample_weight, P, dZ):
    """Softmax + cross-entropy from logits with integer labels.

    Z : (n, k) logits, y : (n,) int64 labels in [0, k), sample_weight : (n,)
    or (0,) (IN); P : (n, k) probabilities, dZ : (n, k) gradient (OUT).
    Returns the weighted mean loss (float).
    """
    n = Z.shape[0]
    w, wsum = _weights(sample_weight, n, Z.dtype)
    s = Z - Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(s).sum(axis=1))
    rows = np.arange(n)
    loss = float(np.dot(w, (lse - s[rows, y]).astype(Z.dtype)) / wsum)
    P[...] = np.exp(s - lse[:, None])
    dZ[...] = P
    dZ[rows, y] -= 1.0
    dZ *= (w / wsum)[:, None]
    return loss


def softmax_cross_entropy_onehot(Z, Y, sample_weight, P, dZ):
    """Softmax + cross-entropy from logits with probability (one-hot) targets.

    As :func:`softmax_cross_entropy` with Y : (n, k) rows summing to one.
    """
    n = Z.shape[0]
    w, wsum = _weights(sample_weight, n, Z.dtype)
    s = Z - Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(s).sum(axis=1, keepdims=True))
    logp = s - lse
    loss = float(np.dot(w, -(Y * logp).sum(axis=1)) / wsum)
    P[...] = np.exp(logp)
    dZ[...] = (P * Y.sum(axis=1, keepdims=True) - Y) * (w / wsum)[:, None]
    return loss


def nll_loss(logP, y, sample_weight, dlogP):
    """Negative log-likelihood on log-probabilities (after log-softmax).

    logP : (n, k), y : (n,) int64, sample_weight (IN); dlogP : (n, k) (OUT).
    """
    n = logP.shape[0]
    w, wsum = _weights(sample_weight, n, logP.dtype)
    rows = np.arange(n)
    loss = float(-np.dot(w, logP[rows, y]) / wsum)
    dlogP[...] = 0.0
    dlogP[rows, y] = -w / wsum
    return loss


def sigmoid_binary_cross_entropy(Z, Y, sample_weight, P, dZ):
    """Sigmoid + binary cross-entropy from logits, in the softplus form
    ``max(z, 0) - z*y + log1p(exp(-|z|))`` (PyTorch's BCEWithLogitsLoss).

    Z, Y : (n, k), sample_weight (IN); P = sigmoid(Z), dZ : (n, k) (OUT).
    """
    n, k = Z.shape
    w, wsum = _weights(sample_weight, n, Z.dtype)
    l = np.maximum(Z, 0) - Z * Y + np.log1p(np.exp(-np.abs(Z)))
    loss = float(np.dot(w, l.sum(axis=1)) / (wsum * k))
    P[...] = _sigmoid(Z)
    dZ[...] = (P - Y) * (w / (wsum * k))[:, None]
    return loss


def mse_loss(Yhat, Y, sample_weight, dYhat):
    """Mean squared error (PyTorch's MSELoss, mean over all elements).

    Yhat, Y : (n, k), sample_weight (IN); dYhat : (n, k) (OUT).
    """
    n, k = Yhat.shape
    w, wsum = _weights(sample_weight, n, Yhat.dtype)
    diff = Yhat - Y
    loss = float(np.dot(w, (diff * diff).sum(axis=1)) / (wsum * k))
    dYhat[...] = diff * (2.0 * w / (wsum * k))[:, None]
    return loss


def _check_nonnegative_targets(Y):
    if Y.size and not (Y >= 0).all():  # also refuses NaN
        r, c = np.unravel_index(int(np.argmax(~(Y >= 0))), Y.shape)
        raise ValueError(f"poisson_loss: targets must be >= 0 (counts or rates), got Y[{r}, {c}] = {Y[r, c]}.")


def poisson_loss(Z, Y, sample_weight, P, dZ):
    """Poisson negative log-likelihood from log-rates: ``exp(z) - y*z`` per
    element (PyTorch's ``PoissonNLLLoss(log_input=True, full=False)``;
    scikit-learn's ``HalfPoissonLoss`` without its constant ``y*log(y) - y``).

    Z : (n, k) log-rates, Y : (n, k) targets >= 0, sample_weight (IN);
    P = exp(Z) (the predicted rates), dZ = (exp(Z) - Y) * w_i / (sum(w) * k)
    (OUT). z is not clipped (neither PyTorch nor scikit-learn clip it): a
    log-rate beyond log(max float) gives an infinite loss, which the training
    loop reports as divergence. Raises ValueError, before writing anything,
    when Y has a negative (or NaN) entry.
    """
    _check_nonnegative_targets(Y)
    n, k = Z.shape
    w, wsum = _weights(sample_weight, n, Z.dtype)
    with np.errstate(over="ignore"):  # an overflow is an infinite loss, reported by the caller
        P[...] = np.exp(Z)
    l = P - Y * Z
    loss = float(np.dot(w, l.sum(axis=1)) / (wsum * k))
    dZ[...] = (P - Y) * (w / (wsum * k))[:, None]
    return loss


# ------------------------------------------------------------ optimizers
def flush_denormals(x):
    """Set the entries of x below the dtype's smallest normal number (in magnitude) to 0, in place.

    Every optimizer applies this to its state after updating it: the state
    of a parameter whose gradient stays 0 decays geometrically (Adam's m by
    beta1 a step) into denormal numbers, which x86 CPUs compute 10-100x
    slower (1 in 13 of m after one epoch of the Fashion-MNIST net at batch
    32, doubling the update's time). Such values change no weight: the
    step they make is at most lr / (1 - beta1) * m / eps (Adam), below
    1e-28 for float32 with the defaults.
    """
    x[np.abs(x) < np.finfo(x.dtype).tiny] = 0


def sgd_update(p, g, buf, lr, momentum, nesterov):
    """In-place SGD as torch.optim.SGD (dampening 0).

    buf = momentum * buf + g (denormals flushed: see flush_denormals);
    step = g + momentum * buf if nesterov else buf; p -= lr * step. Without
    momentum, p -= lr * g and buf is untouched.
    p, buf : 1-D (IN/OUT); g : 1-D (IN).
    """
    if momentum == 0.0:
        p -= lr * g
        return
    buf *= momentum
    buf += g
    flush_denormals(buf)
    if nesterov:
        p -= lr * (g + momentum * buf)
    else:
        p -= lr * buf


def rmsprop_update(p, g, sq, lr, rho, eps):
    """In-place RMSprop as torch.optim.RMSprop (alpha=rho, centered=False).

    sq = rho * sq + (1 - rho) * g**2 (denormals flushed: see flush_denormals);
    p -= lr * g / (sqrt(sq) + eps).
    """
    sq *= rho
    sq += (1.0 - rho) * g * g
    flush_denormals(sq)
    p -= lr * g / (np.sqrt(sq) + eps)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    """In-place Adam as torch.optim.Adam (bias-corrected; ``step`` counts from 1).

    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g**2 (denormals flushed: see
    flush_denormals); p -= (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps).
    """
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    flush_denormals(m)
    flush_denormals(v)
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    p -= (lr / bc1) * m / (np.sqrt(v) / bc2_sqrt + eps)


def sum_squares(x):
    """Return sum(x**2) of a 1-D array as a float (for gradient norms)."""
    return float(np.dot(x, x))


def scale_inplace(x, factor):
    """x *= factor for a 1-D array (gradient clipping)."""
    x *= factor


# ------------------------------------------------------------ dropout
# Counter-based random numbers, identical in every backend: nested splitmix64
# streams. splitmix64 seeded with s yields mix(s + GOLDEN * i) as its i-th
# output (i = 1, 2, ...); the mask element e (row-major in the (n, k) buffer)
# of unit ``unit`` at step ``step`` is drawn as
#   k1 = mix(seed + GOLDEN * (step + 1))
#   k2 = mix(k1   + GOLDEN * (unit + 1))
#   u  = (mix(k2  + GOLDEN * (e + 1)) >> 11) * 2**-53     (uniform in [0, 1))
# and kept when u >= rate. All arithmetic is modulo 2**64.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_U64 = (1 << 64) - 1


def _mix_int(z):
    z &= _U64
    z = ((z ^ (z >> 30)) * _MIX1) & _U64
    z = ((z ^ (z >> 27)) * _MIX2) & _U64
    return z ^ (z >> 31)


def dropout_mask(seed, step, unit, rate, M):
    """Fill M with an inverted-dropout mask: 0 with probability ``rate``, else
    1 / (1 - rate) (in M's dtype), from the counter-based generator above.

    seed : int in [0, 2**64); step, unit : int >= 0 (the training step and
    the unit's row in the plan); rate : float in [0, 1) (IN);
    M : (n, k) (OUT). The same arguments give the same mask in every backend.
    """
    k2 = _mix_int(_mix_int(int(seed) + _GOLDEN * (int(step) + 1)) + _GOLDEN * (int(unit) + 1))
    e = np.arange(1, M.size + 1, dtype=np.uint64)
    z = np.uint64(k2) + np.uint64(_GOLDEN) * e
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    u = (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    scale = M.dtype.type(1.0 / (1.0 - rate))
    M.reshape(-1)[...] = np.where(u >= rate, scale, M.dtype.type(0.0))


def dropout_forward(Z, M, A):
    """A = Z * M element-wise. Z, M : (n, k) (IN); A : (n, k) (OUT), may be Z."""
    np.multiply(Z, M, out=A)


def dropout_backward(dA, M, dZ):
    """dZ = dA * M element-wise (the gradient through a fixed mask).

    dA, M : (n, k) (IN); dZ : (n, k) (OUT), may be dA.
    """
    np.multiply(dA, M, out=dZ)


# ------------------------------------------------------------ batch normalization
# A batch-norm unit owns a (4, k) block of params, G = [gamma, beta,
# running_mean, running_var] (rows), of which only gamma and beta are trained:
# the kernels write gradients into rows 0 and 1 of the matching (4, k) block
# dG of grads and never touch rows 2 and 3, which stay zero, so that no
# optimizer moves the running statistics (a zero gradient is a zero update
# for SGD, RMSprop and Adam) and no L2 applies to any of it.
def batchnorm_forward(X, G, eps, momentum, S, Z, A):
    """Batch normalization (torch.nn.BatchNorm1d, affine, tracking running stats).

    Training (S of shape (2, k)): per column j, with the batch mean m_j and
    the biased batch variance v_j (sums in float64), S[0] = m, S[1] =
    1 / sqrt(v + eps), Z = (X - m) * S[1] (x-hat), A = gamma * Z + beta, and
    the running statistics in G are updated in place:
    ``rm = (1 - momentum) * rm + momentum * m``,
    ``rv = (1 - momentum) * rv + momentum * v * n / (n - 1)`` (unbiased).
    Inference (S empty, (0, 0)): Z = (X - rm) / sqrt(rv + eps), A = gamma *
    Z + beta, G unchanged.

    X : (n, k) (IN); G : (4, k) (IN; rows 2, 3 OUT in training);
    eps > 0, momentum in [0, 1] : float; S : (2, k) or (0, 0) (OUT);
    Z, A : (n, k) (OUT). Training needs n >= 2 (ValueError otherwise).
    """
    n, k = X.shape
    gamma, beta = G[0], G[1]
    if S.size:
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size ({n}, {k})")
        x = X.astype(np.float64)
        mean = x.sum(axis=0) / n
        d = x - mean
        var = (d * d).sum(axis=0) / n
        inv = 1.0 / np.sqrt(var + eps)
        S[0] = mean
        S[1] = inv
        np.multiply(X - S[0], S[1], out=Z)
        G[2] = (1.0 - momentum) * G[2] + momentum * mean
        G[3] = (1.0 - momentum) * G[3] + momentum * (var * (n / (n - 1.0)))
    else:
        inv = (1.0 / np.sqrt(G[3].astype(np.float64) + eps)).astype(X.dtype)
        np.multiply(X - G[2], inv, out=Z)
    np.multiply(Z, gamma, out=A)
    A += beta


def batchnorm_backward(dA, Z, G, eps, S, dG, dX):
    """Gradients of :func:`batchnorm_forward` from the gradient dA at its output.

    dG[0] = sum_rows(dA * Z) (dgamma), dG[1] = sum_rows(dA) (dbeta), sums in
    float64; rows 2, 3 of dG are not written. dX (skipped when empty):
    training (S (2, k) from the forward pass) ``dX = (gamma * S[1] / n) *
    (n * dA - dbeta - Z * dgamma)``; inference (S empty) ``dX = dA * gamma /
    sqrt(rv + eps)``.

    dA, Z : (n, k), G : (4, k), eps : float, S : (2, k) or (0, 0) (IN);
    dG : (4, k), dX : (n, k) or (0, 0) (OUT).
    """
    n = dA.shape[0]
    dy = dA.astype(np.float64)
    dbeta = dy.sum(axis=0)
    dgamma = (dy * Z).sum(axis=0)
    dG[0] = dgamma
    dG[1] = dbeta
    if not dX.size:
        return
    gamma = G[0].astype(np.float64)
    if S.size:
        c = gamma * S[1] / n
        dX[...] = c * (n * dy - dbeta - Z * dgamma)
    else:
        dX[...] = dA * (gamma / np.sqrt(G[3].astype(np.float64) + eps))


# ------------------------------------------------------------ the step loop
# Columns of the integer plan: one row per unit (an optional dense product,
# then an activation). New layer kinds (batch norm, residual, ...) are new
# KIND values handled by new branches of the same loop.
P_KIND, P_FAN_IN, P_FAN_OUT, P_ACT, P_USE_BIAS, P_W_OFF, P_B_OFF = range(7)
# A dropout unit (fan_in == fan_out, activation identity, no parameters)
# multiplies its input by a fresh mask per training step (dropout_mask with
# unit = its row in the plan) and the gradient by the same mask; without
# masks (inference, forward_units(M=None)) it is the identity.
# A batch-norm unit (fan_in == fan_out, activation identity) has W_OFF at
# its (4, k) parameter block [gamma, beta, running_mean, running_var] and
# B_OFF = W_OFF + k (beta), USE_BIAS 1; Z[i] holds x-hat and A[i] the output
# (both buffers of their own), dA[i-1] a buffer of its own. With M given
# (training) M[i] is its (2, k) statistics buffer [batch mean, batch
# 1/sqrt(var + eps)] and the batch statistics are used (and the running ones
# updated); with M=None it uses the running statistics (inference).
KIND_ACTIVATION, KIND_DENSE, KIND_DROPOUT, KIND_BATCHNORM = 0, 1, 2, 3
# Columns of the float plan. P_ALPHA is the activation's parameter; for a
# KIND_DROPOUT unit it holds the drop rate, in [0, 1); for a KIND_BATCHNORM
# unit P_ALPHA holds eps and P_L2 the momentum of the running statistics.
P_ALPHA, P_L2 = 0, 1
# Loss kinds.
LOSS_CE, LOSS_CE_ONEHOT, LOSS_NLL, LOSS_BCE, LOSS_MSE, LOSS_POISSON = range(6)
# Losses fused with the output activation: they read the output unit's Z.
FUSED_LOSSES = (LOSS_CE, LOSS_CE_ONEHOT, LOSS_BCE, LOSS_POISSON)
# Optimizer kinds; OPT_NONE computes loss and gradients without an update.
OPT_NONE, OPT_SGD, OPT_RMSPROP, OPT_ADAM = -1, 0, 1, 2


def forward_units(kernels, plan_i, plan_f, params, x, Z, A, M=None):
    """Forward pass of a plan with a backend's kernels; returns the output buffer.

    x : (n, d) input (IN); Z, A : per-unit pre-activation / activation
    buffers (OUT; A[i] is Z[i] for the identity, Z[i] is A[i-1] for an
    activation-only or dropout unit; a dropout unit trained with a mask has
    an A[i] of its own). M : per-unit dropout masks (IN, filled by
    :func:`dropout_mask`; entries of other units are ignored), or None: the
    dropout units are then the identity (inference).
    """
    a = x
    for i in range(plan_i.shape[0]):
        kind, fan_in, fan_out, act, use_bias, w_off, b_off = plan_i[i]
        if kind == KIND_DENSE:
            W = params[w_off:w_off + fan_in * fan_out].reshape(fan_in, fan_out)
            b = params[b_off:b_off + fan_out] if use_bias else params[:0]
            kernels.dense_forward(a, W, b, act, plan_f[i, P_ALPHA], Z[i], A[i])
        elif kind == KIND_BATCHNORM:
            G = params[w_off:w_off + 4 * fan_out].reshape(4, fan_out)
            kernels.batchnorm_forward(a, G, plan_f[i, P_ALPHA], plan_f[i, P_L2],
                                      M[i] if M is not None else x[:0, :0], Z[i], A[i])
        elif kind == KIND_DROPOUT:
            if M is not None:
                kernels.dropout_forward(Z[i], M[i], A[i])
            elif A[i] is not Z[i]:
                A[i][...] = Z[i]
        else:
            kernels.act_forward(Z[i], act, plan_f[i, P_ALPHA], A[i])
        a = A[i]
    return a


def loss_and_grads(kernels, plan_i, plan_f, params, grads, x, Z, A, dA, P, y, Y, sw, loss_kind, M=None):
    """Loss at the output (plus L2 penalties) and all gradients into ``grads``.

    Expects :func:`forward_units` to have filled Z and A (with the same M).
    dA : per-unit gradient buffers (OUT; dA[i-1] is dA[i] below an
    activation-only or dropout unit). M : the dropout masks of the forward
    pass, or None (dropout units are the identity). Returns the loss (float).
    """
    L = plan_i.shape[0] - 1
    if loss_kind == LOSS_CE:
        loss = kernels.softmax_cross_entropy(Z[L], y, sw, P, dA[L])
    elif loss_kind == LOSS_CE_ONEHOT:
        loss = kernels.softmax_cross_entropy_onehot(Z[L], Y, sw, P, dA[L])
    elif loss_kind == LOSS_BCE:
        loss = kernels.sigmoid_binary_cross_entropy(Z[L], Y, sw, P, dA[L])
    elif loss_kind == LOSS_POISSON:
        loss = kernels.poisson_loss(Z[L], Y, sw, P, dA[L])
    elif loss_kind == LOSS_NLL:
        loss = kernels.nll_loss(A[L], y, sw, dA[L])
    else:
        loss = kernels.mse_loss(A[L], Y, sw, dA[L])
    empty2 = x[:0, :0]
    for i in range(L, -1, -1):
        kind, fan_in, fan_out, act, use_bias, w_off, b_off = plan_i[i]
        if act != IDENTITY and (kind == KIND_DENSE or i > 0):
            kernels.act_backward(Z[i], A[i], dA[i], act, plan_f[i, P_ALPHA], dA[i])
        if kind == KIND_DROPOUT and M is not None and i > 0:
            kernels.dropout_backward(dA[i], M[i], dA[i])
        if kind == KIND_BATCHNORM:
            G = params[w_off:w_off + 4 * fan_out].reshape(4, fan_out)
            dG = grads[w_off:w_off + 4 * fan_out].reshape(4, fan_out)
            kernels.batchnorm_backward(dA[i], Z[i], G, plan_f[i, P_ALPHA],
                                       M[i] if M is not None else empty2, dG,
                                       dA[i - 1] if i > 0 else empty2)
        if kind == KIND_DENSE:
            nw = fan_in * fan_out
            W = params[w_off:w_off + nw].reshape(fan_in, fan_out)
            dW = grads[w_off:w_off + nw].reshape(fan_in, fan_out)
            db = grads[b_off:b_off + fan_out] if use_bias else grads[:0]
            l2 = plan_f[i, P_L2]
            if l2 != 0.0:
                loss += 0.5 * l2 * kernels.sum_squares(W.reshape(-1))
            kernels.dense_backward(A[i - 1] if i > 0 else x, W, dA[i], l2, dW, db,
                                   dA[i - 1] if i > 0 else empty2)
    return loss


def count_correct(out, y, Y, loss_kind):
    """Correct predictions of a batch from the training-time output (logits,
    or log-probabilities for nll); for binary cross-entropy the mean over
    columns of each row; 0 for the regression losses (mse, poisson). Returns a float."""
    if loss_kind in (LOSS_CE, LOSS_NLL):
        return float(np.count_nonzero(np.argmax(out, axis=1) == y))
    if loss_kind == LOSS_CE_ONEHOT:
        return float(np.count_nonzero(np.argmax(out, axis=1) == np.argmax(Y, axis=1)))
    if loss_kind == LOSS_BCE:
        return float(np.count_nonzero((out > 0) == (Y > 0.5))) / out.shape[1]
    return 0.0


def optimizer_step(kernels, params, grads, opt_kind, opt_f, state1, state2, t, clip_norm):
    """Clip the global gradient norm (``clip_norm`` > 0) and apply one update."""
    if clip_norm > 0.0:
        norm = math.sqrt(kernels.sum_squares(grads))
        if norm > clip_norm:
            kernels.scale_inplace(grads, clip_norm / (norm + 1e-6))
    if opt_kind == OPT_SGD:
        kernels.sgd_update(params, grads, state1, opt_f[0], opt_f[1], opt_f[2] != 0.0)
    elif opt_kind == OPT_RMSPROP:
        kernels.rmsprop_update(params, grads, state1, opt_f[0], opt_f[1], opt_f[2])
    elif opt_kind == OPT_ADAM:
        kernels.adam_update(params, grads, state1, state2, opt_f[0], opt_f[1], opt_f[2], opt_f[3], t)


def _check_dropout_plan(plan_i, plan_f, x_buf, M, who="train_steps"):
    """Raise ValueError unless every dropout unit of the plan has a rate in
    [0, 1) and a C-contiguous (rows, fan_out) mask buffer of x_buf's dtype."""
    rows, dt = x_buf.shape[0], x_buf.dtype
    if len(M) != plan_i.shape[0]:
        raise ValueError(f"{who}: M has {len(M)} entries, the plan {plan_i.shape[0]} units")
    for i in range(plan_i.shape[0]):
        if plan_i[i, P_KIND] != KIND_DROPOUT:
            continue
        rate = float(plan_f[i, P_ALPHA])
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{who}: the dropout rate of unit {i} must be in [0, 1), got {rate}")
        if plan_i[i, P_FAN_IN] != plan_i[i, P_FAN_OUT] or plan_i[i, P_ACT] != IDENTITY:
            raise ValueError(f"{who}: dropout unit {i} must have fan_in == fan_out and the identity activation")
        m = M[i]
        if not (isinstance(m, np.ndarray) and m.dtype == dt and m.flags.c_contiguous
                and m.shape == (rows, plan_i[i, P_FAN_OUT])):
            raise ValueError(f"{who}: M[{i}] must be a C-contiguous {dt} array of shape "
                             f"({rows}, {plan_i[i, P_FAN_OUT]})")


def _check_batchnorm_plan(plan_i, plan_f, params, x_buf, M, who="train_steps"):
    """Raise ValueError unless every batch-norm unit of the plan is well formed
    (fan_in == fan_out, identity, B_OFF = W_OFF + k, its (4, k) block inside
    params, eps > 0, momentum in [0, 1]) and, when M is given (training), has a
    C-contiguous (2, fan_out) statistics buffer of x_buf's dtype and the batch
    has more than one row (torch's error)."""
    rows, dt = x_buf.shape[0], x_buf.dtype
    for i in range(plan_i.shape[0]):
        if plan_i[i, P_KIND] != KIND_BATCHNORM:
            continue
        k = int(plan_i[i, P_FAN_OUT])
        if plan_i[i, P_FAN_IN] != k or plan_i[i, P_ACT] != IDENTITY:
            raise ValueError(f"{who}: batch-norm unit {i} must have fan_in == fan_out and the identity activation")
        w_off = int(plan_i[i, P_W_OFF])
        if int(plan_i[i, P_B_OFF]) != w_off + k or w_off < 0 or w_off + 4 * k > params.shape[0]:
            raise ValueError(f"{who}: batch-norm unit {i} needs B_OFF = W_OFF + {k} and its (4, {k}) "
                             "block inside params")
        eps, mom = float(plan_f[i, P_ALPHA]), float(plan_f[i, P_L2])
        if not (eps > 0.0 and 0.0 <= mom <= 1.0):
            raise ValueError(f"{who}: batch-norm unit {i} needs eps > 0 and momentum in [0, 1], got {eps}, {mom}")
        if M is None:
            continue
        m = M[i]
        if not (isinstance(m, np.ndarray) and m.dtype == dt and m.flags.c_contiguous and m.shape == (2, k)):
            raise ValueError(f"{who}: M[{i}] (batch-norm statistics) must be a C-contiguous {dt} array "
                             f"of shape (2, {k})")
        if rows < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"({rows}, {k}) (batch normalization needs batches of at least 2 rows)")


def train_steps(X, y, Y, sw, order, start, n_steps, plan_i, plan_f, params, grads,
                x_buf, y_buf, Y_buf, sw_buf, Z, A, dA, M, P, loss_kind,
                opt_kind, opt_f, state1, state2, t0, clip_norm, seed, losses_out, correct_out):
    """Run ``n_steps`` training steps with no Python between them (in native backends).

    Step s trains on the rows ``order[start + s*bs : start + (s+1)*bs]`` with
    ``bs = x_buf.shape[0]``: every batch of one call has exactly ``bs`` rows
    (the caller makes a second call, with buffers of that size, for a last
    partial batch). A step gathers the batch, runs the forward pass, the
    fused loss, the backward pass, gradient clipping and the optimizer
    update. A dropout unit i draws its mask into M[i] with
    ``dropout_mask(seed, t0 + s, i, rate, M[i])`` at step s, so the masks of
    a training run never repeat and are the same in every backend. A
    batch-norm unit normalizes with the batch statistics and updates its
    running statistics (in params, untouched by the optimizer) every step.

    Parameters
    ----------
    X : (n, d) training inputs (IN)
    y : (n,) int64 labels, or (0,) (IN)
    Y : (n, k) real targets / one-hot rows, or (0, 0) (IN)
    sw : (n,) sample weights, or (0,) (IN)
    order : int64 row order, e.g. a permutation (IN)
    start, n_steps : int
    plan_i : int64 (n_units, 7); plan_f : float64 (n_units, 2) -- see P_* (IN);
        the activation column holds the training activation (identity for
        an output layer fused into the loss)
    params, grads : flat parameter and gradient vectors (IN/OUT)
    x_buf, y_buf, Y_buf, sw_buf : batch buffers shaped like X, y, Y, sw
        with ``bs`` rows (or empty like their source) (OUT)
    Z, A, dA : sequences of per-unit (bs, fan_out) buffers with the
        aliasing of :func:`forward_units` / :func:`loss_and_grads` (OUT)
    M : sequence of per-unit dropout masks: a (bs, fan_out) buffer for each
        KIND_DROPOUT unit, the (2, fan_out) statistics buffer of each
        KIND_BATCHNORM unit, anything (e.g. an empty (0, 0) array) for the
        others (OUT: the masks / statistics of the last step)
    P : (bs, k) probabilities (rates for poisson) of the fused losses (OUT)
    loss_kind : LOSS_*; opt_kind : OPT_*
    opt_f : float64 (4,): SGD (lr, momentum, nesterov, 0); RMSprop (lr, rho,
        eps, 0); Adam (lr, beta1, beta2, eps)
    state1, state2 : optimizer state vectors (SGD buf / RMSprop sq / Adam m,
        v), or (0,) (IN/OUT)
    t0 : int, optimizer steps done before this call (Adam's t = t0 + s + 1)
    clip_norm : float, 0.0 for no clipping
    seed : int in [0, 2**64), the dropout base seed (unused without dropout)
    losses_out, correct_out : float64 (n_steps,) per-step loss and correct
        count (OUT)

    Returns
    -------
    int : steps completed; fewer than ``n_steps`` when a loss was not finite
        (that step's loss is in losses_out and no update was applied).
    """
    kernels = sys.modules[__name__]
    _check_dropout_plan(plan_i, plan_f, x_buf, M)
    _check_batchnorm_plan(plan_i, plan_f, params, x_buf, M)
    bs = x_buf.shape[0]
    L = plan_i.shape[0] - 1
    drop = [i for i in range(L + 1) if plan_i[i, P_KIND] == KIND_DROPOUT]
    fused = loss_kind in FUSED_LOSSES
    for s in range(n_steps):
        idx = order[start + s * bs:start + (s + 1) * bs]
        kernels.gather_rows(X, idx, x_buf)
        if y.shape[0]:
            np.take(y, idx, out=y_buf)
        if Y.shape[0]:
            kernels.gather_rows(Y, idx, Y_buf)
        if sw.shape[0]:
            np.take(sw, idx, out=sw_buf)
        for i in drop:
            kernels.dropout_mask(seed, t0 + s, i, plan_f[i, P_ALPHA], M[i])
        forward_units(kernels, plan_i, plan_f, params, x_buf, Z, A, M)
        loss = loss_and_grads(kernels, plan_i, plan_f, params, grads, x_buf, Z, A, dA, P,
                              y_buf, Y_buf, sw_buf, loss_kind, M)
        losses_out[s] = loss
        correct_out[s] = count_correct(Z[L] if fused else A[L], y_buf, Y_buf, loss_kind)
        if not math.isfinite(loss):
            return s
        optimizer_step(kernels, params, grads, opt_kind, opt_f, state1, state2, t0 + s + 1, clip_norm)
    return n_steps


class _Predictor:
    """See :func:`make_predictor`."""

    def __init__(self, plan_i, plan_f, params, x_buf, Z, A):
        self.plan_i, self.plan_f, self.params = plan_i, plan_f, params
        self.x_buf, self.Z, self.A = x_buf, list(Z), list(A)

    def run(self, X, out):
        n = X.shape[0]
        if not (X.dtype == self.x_buf.dtype and X.ndim == 2 and X.flags.c_contiguous
                and X.shape[1] == self.x_buf.shape[1]
                and 1 <= n <= self.x_buf.shape[0] and out.shape == (n, self.plan_i[-1, 2])
                and out.dtype == X.dtype):
            raise ValueError("predictor: X or out has the wrong dtype or shape")
        if not np.isfinite(X).all():
            return False
        x = self.x_buf[:n]
        x[...] = X
        out[...] = forward_units(sys.modules[__name__], self.plan_i, self.plan_f, self.params, x,
                                 [z[:n] for z in self.Z], [a[:n] for a in self.A])
        return True


def make_predictor(plan_i, plan_f, params, x_buf, Z, A):
    """An inference object for up to ``x_buf.shape[0]`` rows at a time.

    The object keeps the plan, the parameters (by reference: later updates to
    ``params`` are seen) and the buffers (x_buf, per-unit Z and A, shaped as
    for :func:`forward_units`). ``run(X, out)`` checks X (C-contiguous, the
    buffers' dtype, ``1 <= len(X) <= len(x_buf)`` rows) and out
    (``(len(X), n_outputs)``), returns False without touching out when X holds
    a NaN or an infinity, else writes the forward pass of X into out and
    returns True. Native backends run it in one call with no allocation: the
    per-request path of an application that embeds a model.
    """
    return _Predictor(plan_i, plan_f, params, x_buf, Z, A)
