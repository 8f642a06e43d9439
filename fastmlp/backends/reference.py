"""NumPy kernels: the specification of every kernel, and the fallback backend.

(About 750 lines: the specification of all 27 kernels of the contract and of the step
loop stays one module, the one every backend is compared with, name by name.)

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

from .._native import plan as _plan
from .._native.codes import FUSED_LOSSES, Loss, Opt, Unit
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
    of a parameter whose gradient stays 0 (blank border pixels, dead units)
    decays geometrically (Adam's m by beta1 a step) into denormal numbers,
    which x86 CPUs compute many times slower. Such values change no weight: the
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


# ------------------------------------------------------------ PReLU and maxout
# The units of fm.PReLU and fm.Maxout, in NumPy: helpers of the step loop
# (forward_units, loss_and_grads), not kernels of the contract, so every
# backend's Python path runs these and its compiled loop its own version.
def _prelu_alpha(u):
    """The slice of params holding a PReLU unit's alpha(s)."""
    n = 1 if u["shared"] else int(u["fan_out"])
    return slice(int(u["w_off"]), int(u["w_off"]) + n)


def _prelu_forward(Z, alpha, A):
    """A = max(0, Z) + alpha * min(0, Z) (torch.nn.PReLU). Z, A : (n, k); alpha : (k,) or (1,)."""
    np.multiply(Z, np.where(Z > 0, Z.dtype.type(1), alpha), out=A)


def _prelu_backward(Z, alpha, dA, dalpha, dX):
    """dalpha = sum of min(0, Z) * dA over the rows (and the features when alpha is shared),
    in float64; dX = dA where Z > 0, alpha * dA elsewhere (PyTorch's derivative at 0; dX may be dA)."""
    g = (np.minimum(Z, 0).astype(np.float64) * dA).sum(axis=0)
    dalpha[...] = g.sum() if dalpha.shape[0] == 1 else g
    np.multiply(dA, np.where(Z > 0, Z.dtype.type(1), alpha), out=dX)


def _maxout_forward(Z, pieces, A):
    """A[:, j] = max of Z[:, j*pieces : (j+1)*pieces]. Z : (n, k*pieces); A : (n, k)."""
    n, k = A.shape
    np.max(Z.reshape(n, k, pieces), axis=2, out=A)


def _maxout_backward(Z, pieces, dA, dX):
    """dX : (n, k*pieces) is dA at each output's arg-max piece (the first on ties, as torch.max), 0 elsewhere."""
    n, k = dA.shape
    arg = np.argmax(Z.reshape(n, k, pieces), axis=2)
    d = dX.reshape(n, k, pieces)
    d[...] = 0
    np.put_along_axis(d, arg[:, :, None], dA[:, :, None], axis=2)


# ------------------------------------------------------------ residual blocks
# A block is a RES_BEGIN unit (the identity), F's units and a RES_ADD unit
# (fastmlp._native.plan). Helpers of the step loop, as PReLU's.
def _projection(vec, u):
    """A RES_ADD unit's (fan_in, fan_out) projection Wp in ``vec`` (params or grads), or None
    when the shortcut is the identity (fan_in == fan_out)."""
    fi, fo, w_off = int(u["fan_in"]), int(u["fan_out"]), int(u["w_off"])
    return None if fi == fo else vec[w_off:w_off + fi * fo].reshape(fi, fo)


def _residual_forward(F, X, Wp, Z):
    """Z = F + X (identity shortcut, Wp None) or F + X @ Wp. F, Z : (n, k); X : (n, d); Wp : (d, k)."""
    if Wp is None:
        np.add(F, X, out=Z)
    else:
        np.matmul(X, Wp, out=Z)
        Z += F


def _residual_backward(X, Wp, dZ, dWp, dF, S):
    """The block end's backward from dZ (n, k), the gradient at F + shortcut: dF = dZ (F's
    output gradient); with a projection, dWp = X^T dZ and S = dZ @ Wp^T (n, d), the
    shortcut's gradient at X, which the block's start adds to its dA (else that is dZ)."""
    dF[...] = dZ
    if Wp is not None:
        np.matmul(X.T, dZ, out=dWp)
        np.matmul(dZ, Wp.T, out=S)


# ------------------------------------------------------------ the step loop
# See fastmlp._native.plan for the plan (the units' records and the buffers
# of a batch) and the loop state every backend's loop takes.
def forward_units(kernels, plan, training=False):
    """Forward pass of ``plan.x`` through the plan's units with a backend's kernels.

    With ``training``, dropout units multiply by their masks in ``plan.M``
    (filled by :func:`dropout_mask`) and batch-norm units normalize with the
    batch statistics (into ``plan.M``) and update their running statistics;
    otherwise dropout is the identity and batch norm uses the running
    statistics (inference). Returns the output buffer.
    """
    a, params, empty2 = plan.x, plan.params, plan.x[:0, :0]
    for i, u in enumerate(plan.units):
        kind, fan_in, fan_out, act = int(u["kind"]), int(u["fan_in"]), int(u["fan_out"]), int(u["act"])
        Z, A = plan.Z[i], plan.A[i]
        if kind == Unit.DENSE:
            w_off, b_off = int(u["w_off"]), int(u["b_off"])
            W = params[w_off:w_off + fan_in * fan_out].reshape(fan_in, fan_out)
            b = params[b_off:b_off + fan_out] if u["use_bias"] else params[:0]
            kernels.dense_forward(a, W, b, act, u["alpha"], Z, A)
        elif kind == Unit.BATCHNORM:
            G = params[u["w_off"]:u["w_off"] + 4 * fan_out].reshape(4, fan_out)
            kernels.batchnorm_forward(a, G, u["eps"], u["momentum"], plan.M[i] if training else empty2, Z, A)
        elif kind == Unit.DROPOUT:
            if training:
                kernels.dropout_forward(Z, plan.M[i], A)
            elif A is not Z:
                A[...] = Z
        elif kind == Unit.PRELU:
            _prelu_forward(Z, params[_prelu_alpha(u)], A)
        elif kind == Unit.MAXOUT:
            _maxout_forward(Z, int(u["pieces"]), A)
        elif kind == Unit.RES_BEGIN:
            pass  # the identity: Z and A are the buffer before it
        elif kind == Unit.RES_ADD:
            _residual_forward(a, plan.A[int(u["link"])], _projection(params, u), Z)
            kernels.act_forward(Z, act, u["alpha"], A)
        else:
            kernels.act_forward(Z, act, u["alpha"], A)
        a = A
    return a


def loss_and_grads(kernels, plan, y, Y, sw, training=False):
    """Loss at the output (plus L2 penalties) and all gradients into ``plan.grads``.

    Expects :func:`forward_units` to have filled Z and A (with the same
    ``training``). y, Y, sw: the batch's labels, real targets and weights
    (each possibly empty, as the loss kind needs). Returns the loss (float).
    """
    L, params, grads, Z, A, dA = plan.n_units - 1, plan.params, plan.grads, plan.Z, plan.A, plan.dA
    loss_kind, P = plan.loss, plan.P
    if loss_kind == Loss.CE:
        loss = kernels.softmax_cross_entropy(Z[L], y, sw, P, dA[L])
    elif loss_kind == Loss.CE_ONEHOT:
        loss = kernels.softmax_cross_entropy_onehot(Z[L], Y, sw, P, dA[L])
    elif loss_kind == Loss.BCE:
        loss = kernels.sigmoid_binary_cross_entropy(Z[L], Y, sw, P, dA[L])
    elif loss_kind == Loss.POISSON:
        loss = kernels.poisson_loss(Z[L], Y, sw, P, dA[L])
    elif loss_kind == Loss.NLL:
        loss = kernels.nll_loss(A[L], y, sw, dA[L])
    else:
        loss = kernels.mse_loss(A[L], Y, sw, dA[L])
    empty2 = plan.x[:0, :0]
    for i in range(L, -1, -1):
        u = plan.units[i]
        kind, fan_in, fan_out, act = int(u["kind"]), int(u["fan_in"]), int(u["fan_out"]), int(u["act"])
        if act != IDENTITY and (kind == Unit.DENSE or i > 0):
            kernels.act_backward(Z[i], A[i], dA[i], act, u["alpha"], dA[i])
        if kind == Unit.DROPOUT and training and i > 0:
            kernels.dropout_backward(dA[i], plan.M[i], dA[i])
        if kind == Unit.PRELU:
            at = _prelu_alpha(u)
            _prelu_backward(Z[i], params[at], dA[i], grads[at], dA[i])
        if kind == Unit.MAXOUT and i > 0:
            _maxout_backward(Z[i], int(u["pieces"]), dA[i], dA[i - 1])
        if kind == Unit.RES_ADD:
            b = int(u["link"])
            _residual_backward(A[b], _projection(params, u), dA[i], _projection(grads, u), dA[i - 1], plan.M[i])
        if kind == Unit.RES_BEGIN and i > 0:
            e = int(u["link"])
            dA[i] += plan.M[e] if plan.units[e]["fan_in"] != plan.units[e]["fan_out"] else dA[e]
        if kind == Unit.BATCHNORM:
            w_off = int(u["w_off"])
            G = params[w_off:w_off + 4 * fan_out].reshape(4, fan_out)
            dG = grads[w_off:w_off + 4 * fan_out].reshape(4, fan_out)
            kernels.batchnorm_backward(dA[i], Z[i], G, u["eps"], plan.M[i] if training else empty2, dG,
                                       dA[i - 1] if i > 0 else empty2)
        if kind == Unit.DENSE:
            nw, w_off, b_off = fan_in * fan_out, int(u["w_off"]), int(u["b_off"])
            W = params[w_off:w_off + nw].reshape(fan_in, fan_out)
            dW = grads[w_off:w_off + nw].reshape(fan_in, fan_out)
            db = grads[b_off:b_off + fan_out] if u["use_bias"] else grads[:0]
            l2 = u["l2"]  # a float64 scalar, as NumPy applies it to float32 dW
            if l2 != 0.0:
                loss += 0.5 * l2 * kernels.sum_squares(W.reshape(-1))
            kernels.dense_backward(A[i - 1] if i > 0 else plan.x, W, dA[i], l2, dW, db,
                                   dA[i - 1] if i > 0 else empty2)
    return loss


def count_correct(out, y, Y, loss_kind):
    """Correct predictions of a batch from the training-time output (logits,
    or log-probabilities for nll); for binary cross-entropy the mean over
    columns of each row; 0 for the regression losses (mse, poisson). Returns a float."""
    if loss_kind in (Loss.CE, Loss.NLL):
        return float(np.count_nonzero(np.argmax(out, axis=1) == y))
    if loss_kind == Loss.CE_ONEHOT:
        return float(np.count_nonzero(np.argmax(out, axis=1) == np.argmax(Y, axis=1)))
    if loss_kind == Loss.BCE:
        return float(np.count_nonzero((out > 0) == (Y > 0.5))) / out.shape[1]
    return 0.0


def trainable_spans(units):
    """The (start, stop) spans of the flat parameters that an optimizer trains: each dense
    unit's W and b, each batch norm's gamma and beta (not its running statistics), each PReLU's alpha,
    each residual projection's Wp."""
    spans = []
    for u in units:
        kind, w_off, fo = int(u["kind"]), int(u["w_off"]), int(u["fan_out"])
        if kind == Unit.DENSE:
            spans.append((w_off, w_off + int(u["fan_in"]) * fo))
            if u["use_bias"]:
                spans.append((int(u["b_off"]), int(u["b_off"]) + fo))
        elif kind == Unit.BATCHNORM:
            spans.append((w_off, w_off + 2 * fo))
        elif kind == Unit.PRELU:
            spans.append((w_off, w_off + (1 if u["shared"] else fo)))
        elif kind == Unit.RES_ADD and int(u["fan_in"]) != fo:
            spans.append((w_off, w_off + int(u["fan_in"]) * fo))
    return spans


def weight_decay(params, grads, spans, wd, decoupled, lr):
    """PyTorch's weight decay on the trainable spans: g += wd * p, or (AdamW) p *= 1 - lr * wd."""
    for a, b in spans:
        if decoupled:
            params[a:b] *= params.dtype.type(1.0 - lr * wd)
        else:
            grads[a:b] += params.dtype.type(wd) * params[a:b]


def optimizer_step(kernels, params, grads, loop, t, s=0, units=None):
    """Clip the global gradient norm (``loop.clip_norm`` > 0) and apply update number ``t`` (from 1),
    step ``s`` of the call (its rate ``loop.lrs[s]`` under a schedule); with weight decay,
    ``units`` (the plan's unit records) say which parameters are trained."""
    if loop.clip_value > 0.0:  # torch.nn.utils.clip_grad_value_, before the norm
        np.clip(grads, -loop.clip_value, loop.clip_value, out=grads)
    if loop.clip_norm > 0.0:
        norm = math.sqrt(kernels.sum_squares(grads))
        if norm > loop.clip_norm:
            kernels.scale_inplace(grads, loop.clip_norm / (norm + 1e-6))
    h = loop.hyper[0]
    lr = float(loop.lrs[s]) if loop.lrs.shape[0] else h["lr"]
    if h["weight_decay"] != 0.0:
        spans = [(0, params.shape[0])] if units is None else trainable_spans(units)
        weight_decay(params, grads, spans, float(h["weight_decay"]), h["decoupled"] != 0.0, lr)
    if loop.opt == Opt.SGD:
        kernels.sgd_update(params, grads, loop.state1, lr, h["momentum"], h["nesterov"] != 0.0)
    elif loop.opt == Opt.RMSPROP:
        kernels.rmsprop_update(params, grads, loop.state1, lr, h["rho"], h["eps"])
    elif loop.opt == Opt.ADAM:
        kernels.adam_update(params, grads, loop.state1, loop.state2, lr, h["beta1"], h["beta2"], h["eps"], t)


def train_steps(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out):
    """Run ``n_steps`` training steps with no Python between them (in native backends).

    Step s trains on the rows ``order[start + s*rows : start + (s+1)*rows]``
    with ``rows = plan.rows``: every batch of one call has exactly that many
    rows (the caller makes a second call, with a plan of that size, for a
    last partial batch). A step gathers the batch, runs the forward pass, the
    fused loss, the backward pass, gradient clipping and the optimizer
    update. A dropout unit i draws its mask into ``plan.M[i]`` with
    ``dropout_mask(loop.seed, loop.t + s, i, rate, M[i])`` at step s, so the
    masks of a training run never repeat and are the same in every backend.
    A batch-norm unit normalizes with the batch statistics and updates its
    running statistics (in params, untouched by the optimizer) every step.

    Parameters
    ----------
    plan : fastmlp._native.plan.Plan
        A training plan (IN/OUT: its params, grads and buffers).
    loop : fastmlp._native.plan.LoopState
        The optimizer, its state (IN/OUT) and step counter, clipping, seed.
    X : (n, d) training inputs (IN)
    targets : (n,) int64 labels for the label losses (cross-entropy, nll),
        else (n, k) real targets / one-hot rows (IN)
    sw : (n,) sample weights, or (0,) (IN)
    order : int64 row order, e.g. a permutation (IN)
    start, n_steps : int
    losses_out, correct_out : float64 (>= n_steps,) per-step loss and
        correct count (OUT)

    Returns
    -------
    int : steps completed; fewer than ``n_steps`` when a loss was not finite
        (that step's loss is in losses_out and no update was applied).

    Raises ValueError (IndexError for indices) before any work when a buffer,
    record or argument does not fit (``fastmlp._native.plan.check_train``).
    """
    y, Y = _plan.check_train(plan, loop, X, targets, sw, order, start, n_steps, losses_out, correct_out)
    kernels = sys.modules[__name__]
    bs, units, L = plan.rows, plan.units, plan.n_units - 1
    drop = [i for i in range(L + 1) if units[i]["kind"] == Unit.DROPOUT]
    fused = plan.loss in FUSED_LOSSES
    slot = 0
    for s in range(n_steps):
        idx = order[start + s * bs:start + (s + 1) * bs]
        kernels.gather_rows(X, idx, plan.x)
        if y.shape[0]:
            np.take(y, idx, out=plan.y)
        if Y.shape[0]:
            kernels.gather_rows(Y, idx, plan.Y)
        if sw.shape[0]:
            np.take(sw, idx, out=plan.sw)
        for i in drop:
            kernels.dropout_mask(loop.seed, loop.t + s, i, units[i]["rate"], plan.M[i])
        forward_units(kernels, plan, training=True)
        loss = loss_and_grads(kernels, plan, plan.y, plan.Y, plan.sw, training=True)
        losses_out[s] = loss
        correct_out[s] = count_correct(plan.Z[L] if fused else plan.A[L], plan.y, plan.Y, plan.loss)
        if not math.isfinite(loss):
            return s
        sampled = loop.diag_every > 0 and (loop.diag_phase + s) % loop.diag_every == 0
        if sampled:
            before = _diag_step(plan, loop.diag_units[slot], loop.diag_feats[slot])
        optimizer_step(kernels, plan.params, plan.grads, loop, loop.t + s + 1, s, plan.units)
        if sampled:
            _diag_update(plan, before, loop.diag_units[slot])
            slot += 1
    return n_steps


def _dense_views(plan):
    """(unit index, W, dW) of each dense unit: views into params and grads."""
    out = []
    for i, u in enumerate(plan.units):
        if u["kind"] == Unit.DENSE:
            w0, n = int(u["w_off"]), int(u["fan_in"]) * int(u["fan_out"])
            out.append((i, plan.params[w0:w0 + n], plan.grads[w0:w0 + n]))
    return out


def _diag_step(plan, units_out, feats_out):
    """The statistics of a sampled training step after its gradients (LoopState's
    diag_units and diag_feats, one slot; the loop's one thread is thread 0): per
    dense unit the sums of squares of dW (its L2 term in, before clipping) and of W;
    per feature of every unit's output A, the sum and sum of squares over the batch,
    the rows where A != 0 and the rows where sigmoid's or tanh's derivative (from A,
    in float64) is below plan.DIAG_SATURATED. Returns the W before the update."""
    before = []
    for i, W, dW in _dense_views(plan):
        w, g = W.astype(np.float64), dW.astype(np.float64)
        units_out[0, i, 0], units_out[0, i, 2] = np.dot(g, g), np.dot(w, w)
        before.append(w)
    off = 0
    for i, u in enumerate(plan.units):
        a = plan.A[i].astype(np.float64)
        k = a.shape[1]
        f = feats_out[off:off + k]
        f[:, 0], f[:, 1], f[:, 2] = a.sum(axis=0), (a * a).sum(axis=0), (a != 0).sum(axis=0)
        act = int(u["act"]) if u["kind"] in (Unit.DENSE, Unit.ACTIVATION) else IDENTITY
        d = a * (1.0 - a) if act == SIGMOID else 1.0 - a * a if act == TANH else None
        f[:, 3] = 0.0 if d is None else (d < _plan.DIAG_SATURATED).sum(axis=0)
        off += k
    return before


def _diag_update(plan, before, units_out):
    """The sums of squares of each dense unit's change of W in the update (diag_units[..., 1])."""
    for (i, W, _), w in zip(_dense_views(plan), before):
        d = W.astype(np.float64) - w
        units_out[0, i, 1] = np.dot(d, d)


class _Predictor:
    """See :func:`make_predictor`."""

    def __init__(self, plan):
        self.plan = plan

    def run(self, X, out):
        plan, n = self.plan, X.shape[0]
        if not (type(X) is np.ndarray and X.dtype == plan.x.dtype and X.ndim == 2 and X.flags.c_contiguous
                and X.shape[1] == plan.x.shape[1] and 1 <= n <= plan.rows):
            raise ValueError(f"predictor: X must be a C-contiguous array of the model's dtype, "
                             f"(1..{plan.rows}, {plan.x.shape[1]})")
        if not (type(out) is np.ndarray and out.dtype == X.dtype and out.flags.c_contiguous
                and out.flags.writeable and out.shape == (n, int(plan.units[-1]["fan_out"]))):
            raise ValueError(f"predictor: out must be a writeable C-contiguous ({n}, {int(plan.units[-1]['fan_out'])}) "
                             "array of the model's dtype")
        if not np.isfinite(X).all():
            return False
        view = _plan.Plan.__new__(_plan.Plan)  # the same plan on the first n rows of its buffers
        view.__dict__.update(plan.__dict__)
        view.rows, view.x = n, plan.x[:n]
        view.Z, view.A = [z[:n] for z in plan.Z], [a[:n] for a in plan.A]
        view.x[...] = X
        with np.errstate(over="ignore", invalid="ignore"):
            out[...] = forward_units(sys.modules[__name__], view)
        return bool(np.isfinite(out).all())


def make_predictor(plan):
    """An inference object for up to ``plan.rows`` rows at a time.

    The object keeps the plan (an inference plan: its parameters by
    reference, so later updates to them are seen, and its x, Z and A
    buffers). ``run(X, out)`` checks X (C-contiguous, the plan's dtype,
    ``1 <= len(X) <= plan.rows`` rows) and out (``(len(X), n_outputs)``),
    returns False without touching out when X holds a NaN or an infinity,
    else writes the forward pass of X into out and returns whether all of
    it is finite (False: an output overflowed; the model then raises). Native
    backends run it in one call with no allocation: the per-request path of
    an application that embeds a model. Raises ValueError when the plan's
    records or buffers do not fit (``fastmlp._native.plan.check_predict``).
    """
    _plan.check_predict(plan)
    return _Predictor(plan)
