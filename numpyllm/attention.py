"""Scaled dot-product attention: the NumPy reference (the specification) and backend dispatch.

    S = scale · Q Kᵀ + M          M[i, j] = -inf where a causal query i may not see key j
    P = softmax(S)  (row-wise)
    O = P V
    lse[i] = log Σ_j exp(S[i, j])   (saved so the backward can rebuild P = exp(S - lse))

Two backends share one signature:

- ``"numpy"``: the reference below, a few lines of NumPy that build the full
  (Nq, Nk) score matrix. It is the spec every other implementation is tested against.
- ``"cython"``: the fused kernel ``numpyllm._attention`` (source in ``kernels/``), which
  streams over key/value blocks with an online softmax and never builds the score matrix.
- ``"auto"``: the kernel when it is built, else the reference (with one warning).

Inputs are validated here, once; the implementations trust what they receive. This
module depends only on NumPy (the kernel is imported lazily and optionally).
"""

import math
import warnings

import numpy as np

from ._checks import check_int, check_real

__all__ = ["forward", "backward", "available_backends", "BACKENDS"]

BACKENDS = ("numpy", "cython", "auto")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- reference


def _scores(q, k, causal, scale):
    """Scaled, masked scores S = scale · Q Kᵀ (+ -inf above the causal diagonal).

    q: (B, H, Nq, d), k: (B, H, Nk, d) -> S: (B, H, Nq, Nk).
    Causal uses bottom-right alignment: row i sees columns j <= i + (Nk - Nq).
    """
    s = scale * (q @ k.swapaxes(-1, -2))  # (B, H, Nq, d) @ (B, H, d, Nk) -> (B, H, Nq, Nk)
    n_q, n_k = q.shape[-2], k.shape[-2]
    if causal and n_q > 1:  # one query row (a decoding step) sees every key: nothing to mask
        visible = np.tri(n_q, n_k, k=n_k - n_q, dtype=bool)  # (Nq, Nk), True where j <= i + Nk - Nq
        s = np.where(visible, s, -np.inf)
    return s


def reference_forward(q, k, v, causal, scale):
    """Reference forward: out = softmax(S) V and lse = logsumexp(S) per row.

    q: (B, H, Nq, d), k, v: (B, H, Nk, d) -> out: (B, H, Nq, d) in q's dtype,
    lse: (B, H, Nq) float64. The row max is subtracted before exp, so scores of any
    finite size give finite results.
    """
    s = _scores(q, k, causal, scale)
    row_max = s.max(axis=-1, keepdims=True)  # (B, H, Nq, 1)
    p = np.exp(s - row_max)  # unnormalised probabilities, each <= 1
    row_sum = p.sum(axis=-1, keepdims=True)  # (B, H, Nq, 1), >= 1
    out = (p / row_sum) @ v  # (B, H, Nq, Nk) @ (B, H, Nk, d) -> (B, H, Nq, d)
    lse = (row_max.astype(np.float64) + np.log(row_sum.astype(np.float64)))[..., 0]
    return out.astype(q.dtype, copy=False), lse


def reference_backward(dout, q, k, v, out, lse, causal, scale):
    """Reference backward of ``reference_forward``.

    With P = exp(S - lse) rebuilt from the saved lse and D_i = Σ_c dO[i, c] O[i, c]:

        dV = Pᵀ dO
        dP = dO Vᵀ
        dS = P ∘ (dP - D)          (softmax backward; D_i = Σ_j P_ij dP_ij)
        dQ = scale · dS K
        dK = scale · dSᵀ Q

    dout, out: (B, H, Nq, d); lse: (B, H, Nq) -> dq: (B, H, Nq, d), dk, dv: (B, H, Nk, d).
    """
    s = _scores(q, k, causal, scale)
    p = np.exp(s - lse[..., None].astype(s.dtype))  # (B, H, Nq, Nk)
    dv = p.swapaxes(-1, -2) @ dout  # (B, H, Nk, Nq) @ (B, H, Nq, d) -> (B, H, Nk, d)
    dp = dout @ v.swapaxes(-1, -2)  # (B, H, Nq, d) @ (B, H, d, Nk) -> (B, H, Nq, Nk)
    d_row = (dout * out).sum(axis=-1, keepdims=True)  # D: (B, H, Nq, 1)
    ds = p * (dp - d_row)
    dq = scale * (ds @ k)  # (B, H, Nq, Nk) @ (B, H, Nk, d) -> (B, H, Nq, d)
    dk = scale * (ds.swapaxes(-1, -2) @ q)  # (B, H, Nk, Nq) @ (B, H, Nq, d) -> (B, H, Nk, d)
    dtype = q.dtype
    return dq.astype(dtype, copy=False), dk.astype(dtype, copy=False), dv.astype(dtype, copy=False)


# --------------------------------------------------------------------------- validation


def _check_float_array(x, name):
    """x must be a 4-D float32/float64 ndarray; raise naming ``name`` otherwise."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (B, H, N, d), got shape {x.shape}")


def _check_inputs(q, k, v, causal, scale):
    """Validate q, k, v, causal, scale; return the float scale to use."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float_array(x, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    B, H, n_q, d = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H):
        raise ValueError(
            f"q, k, v must share (B, H); got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H, Nk, d), got k {k.shape}, v {v.shape}")
    if k.shape[3] != d:
        raise ValueError(f"k must have head dimension d={d} like q, got k {k.shape}")
    if d == 0:
        raise ValueError(f"head dimension d must be >= 1, got q {q.shape}")
    n_k = k.shape[2]
    if n_k == 0:
        raise ValueError(f"k and v must have at least one key (Nk >= 1), got k {k.shape}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and n_q > n_k:
        raise ValueError(
            f"causal attention needs Nq <= Nk (bottom-right alignment), got Nq={n_q}, Nk={n_k}"
        )
    if scale is None:
        return 1.0 / math.sqrt(d)
    return check_real(scale, "scale", low_inclusive=False)  # any finite real


def _check_backward_inputs(dout, q, out, lse):
    B, H, n_q, d = q.shape
    for name, x in (("dout", dout), ("out", out)):
        _check_float_array(x, name)
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
        if x.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {q.shape} (B, H, Nq, d), got {x.shape}")
    if not isinstance(lse, np.ndarray):
        raise TypeError(f"lse must be a numpy.ndarray, got {type(lse).__name__}")
    if lse.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"lse must have dtype float32 or float64, got {lse.dtype}")
    if lse.shape != (B, H, n_q):
        raise ValueError(f"lse must have shape (B, H, Nq) = {(B, H, n_q)}, got {lse.shape}")


# --------------------------------------------------------------------------- dispatch

_kernel = None  # the imported numpyllm._attention module, once loaded
_kernel_error = None  # why it could not be imported (not built, or scipy/threadpoolctl missing)
_warned_fallback = False


def _load_kernel():
    """Import the compiled kernel once; remember the error if it is not built."""
    global _kernel, _kernel_error
    if _kernel is None and _kernel_error is None:
        try:
            from . import _attention
        except ImportError as exc:
            _kernel_error = exc
        else:
            _kernel = _attention
    return _kernel


def available_backends():
    """Names of the backends usable here: ``("numpy",)`` or ``("numpy", "cython")``."""
    return ("numpy", "cython") if _load_kernel() is not None else ("numpy",)


def _resolve(backend):
    """Map a backend name to "numpy" or "cython", raising if the request cannot be met."""
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return "numpy"
    if _load_kernel() is not None:
        return "cython"
    if backend == "cython":
        raise RuntimeError(
            "backend='cython' was requested but the compiled kernel numpyllm._attention "
            f"could not be imported ({_kernel_error}). Reinstall numpyllm with a C compiler "
            "(pip install .) or use backend='numpy'."
        )
    if not _warned_fallback:
        warnings.warn(
            f"numpyllm's compiled attention kernel is unavailable ({_kernel_error}); "
            "backend='auto' uses the slower NumPy reference.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned_fallback = True
    return "numpy"


def _check_num_threads(num_threads):
    """The kernel's thread count: num_threads, or 0 for OpenMP's default (OMP_NUM_THREADS, threadpoolctl)."""
    return check_int(num_threads, "num_threads", 1, optional=True) or 0


def forward(q, k, v, causal=False, scale=None, backend="auto", *, num_threads=None):
    """Attention forward: ``out = softmax(scale · Q Kᵀ + mask) V``.

    Parameters
    ----------
    q : ndarray, (B, H, Nq, d), float32 or float64, any strides
    k, v : ndarray, (B, H, Nk, d), same dtype as q, Nk >= 1
    causal : bool
        Bottom-right aligned mask: query row i sees key columns j <= i + (Nk - Nq).
        Requires Nq <= Nk. With Nq == 1 the query sees every key (KV-cache decoding).
    scale : float or None
        Multiplies Q Kᵀ; None means 1/sqrt(d).
    backend : {"auto", "numpy", "cython"}
    num_threads : int or None
        Threads for the compiled kernel; None follows OpenMP's default
        (OMP_NUM_THREADS, threadpoolctl). Ignored by the NumPy reference.

    Returns
    -------
    out : ndarray, (B, H, Nq, d), q's dtype
    lse : ndarray, (B, H, Nq), float64
        log Σ_j exp(S_ij) of each row of scaled, masked scores; the backward needs it.
    """
    scale = _check_inputs(q, k, v, causal, scale)
    n_threads = _check_num_threads(num_threads)
    if _resolve(backend) == "cython":
        return _kernel.forward(q, k, v, bool(causal), scale, n_threads)
    return reference_forward(q, k, v, bool(causal), scale)


def backward(dout, q, k, v, out, lse, causal=False, scale=None, backend="auto", *, num_threads=None):
    """Attention backward: gradients of a scalar loss with respect to q, k and v.

    Parameters
    ----------
    dout : ndarray, (B, H, Nq, d), q's dtype
        Gradient of the loss with respect to ``out``.
    q, k, v, causal, scale, backend, num_threads
        As given to :func:`forward`.
    out : ndarray, (B, H, Nq, d)
    lse : ndarray, (B, H, Nq)
        The two results of :func:`forward` on the same inputs.

    Returns
    -------
    dq : ndarray, (B, H, Nq, d)
    dk, dv : ndarray, (B, H, Nk, d)
        All in q's dtype.
    """
    scale = _check_inputs(q, k, v, causal, scale)
    _check_backward_inputs(dout, q, out, lse)
    n_threads = _check_num_threads(num_threads)
    if _resolve(backend) == "cython":
        return _kernel.backward(dout, q, k, v, out, lse, bool(causal), scale, n_threads)
    return reference_backward(dout, q, k, v, out, lse, bool(causal), scale)
