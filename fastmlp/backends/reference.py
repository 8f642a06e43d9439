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
  (binary cross-entropy, MSE) ``l_i`` is the mean over the row's columns, so
  the unweighted loss equals PyTorch's ``reduction="mean"``. The gradient
  returned is the gradient of that loss.
"""
import math

import numpy as np
from scipy.special import erf as _erf

from ..activations import (
    ELU,
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


# ------------------------------------------------------------ optimizers
def sgd_update(p, g, buf, lr, momentum, nesterov):
    """In-place SGD as torch.optim.SGD (dampening 0).

    buf = momentum * buf + g; step = g + momentum * buf if nesterov else buf;
    p -= lr * step. Without momentum, p -= lr * g and buf is untouched.
    p, buf : 1-D (IN/OUT); g : 1-D (IN).
    """
    if momentum == 0.0:
        p -= lr * g
        return
    buf *= momentum
    buf += g
    if nesterov:
        p -= lr * (g + momentum * buf)
    else:
        p -= lr * buf


def rmsprop_update(p, g, sq, lr, rho, eps):
    """In-place RMSprop as torch.optim.RMSprop (alpha=rho, centered=False).

    sq = rho * sq + (1 - rho) * g**2; p -= lr * g / (sqrt(sq) + eps).
    """
    sq *= rho
    sq += (1.0 - rho) * g * g
    p -= lr * g / (np.sqrt(sq) + eps)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step):
    """In-place Adam as torch.optim.Adam (bias-corrected; ``step`` counts from 1).

    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g**2;
    p -= (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps).
    """
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    p -= (lr / bc1) * m / (np.sqrt(v) / bc2_sqrt + eps)


def sum_squares(x):
    """Return sum(x**2) of a 1-D array as a float (for gradient norms)."""
    return float(np.dot(x, x))


def scale_inplace(x, factor):
    """x *= factor for a 1-D array (gradient clipping)."""
    x *= factor
