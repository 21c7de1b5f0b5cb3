"""Scaled dot-product attention: the NumPy reference (the specification) and backend dispatch.

    S = scale · Q Kᵀ + M          M[i, j] = -inf where query i may not see key j
    P = softmax(S)  (row-wise)
    O = P V
    lse[i] = log Σ_j exp(S[i, j])   (saved so the backward can rebuild P = exp(S - lse))

Query i of batch b may not see key j when j >= key_lengths[b] (right padding) or, with
``causal``, when j > i + (Nk - Nq) (bottom-right alignment). Key 0 is always visible,
so every row has at least one key. k and v may have fewer heads than q (grouped-query
attention): query head h reads key/value head h // (H // H_kv).

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

import numpy as np

from ._checks import check_int, check_real
from ._extension import BACKENDS, CompiledModule

__all__ = ["forward", "backward", "available_backends", "BACKENDS"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- reference


def _visible(n_q, n_k, causal, key_lengths, causal_offset=None):
    """Where query i may see key j: a bool mask broadcastable to (B, H, Nq, Nk), or None.

    Causal rows see j <= i + causal_offset; None is the contract's bottom-right alignment,
    Nk - Nq (one query row, a decoding step, then sees every key). numpyllm.testing also
    checks top-left kernels (PyTorch's is_causal), causal_offset = 0. key_lengths (B,)
    hides keys j >= key_lengths[b].
    """
    mask = None
    offset = n_k - n_q if causal_offset is None else causal_offset
    if causal and offset < n_k - 1:  # else every row sees every key: nothing to mask
        mask = np.tri(n_q, n_k, k=offset, dtype=bool)  # (Nq, Nk), True where j <= i + offset
    if key_lengths is not None:
        unpadded = np.arange(n_k) < key_lengths[:, None, None, None]  # (B, 1, 1, Nk)
        mask = unpadded if mask is None else mask & unpadded  # (B, 1, Nq, Nk)
    return mask


def _repeat_kv_heads(x, n_head):
    """x (B, H_kv, N, d) -> (B, H, N, d): query head h gets key/value head h // (H // H_kv)."""
    return np.repeat(x, n_head // x.shape[1], axis=1)


def _sum_kv_heads(dx, n_kv_head):
    """Backward of ``_repeat_kv_heads``: (B, H, N, d) -> (B, H_kv, N, d), summing each group."""
    B, H, N, d = dx.shape
    return dx.reshape(B, n_kv_head, H // n_kv_head, N, d).sum(axis=2)


def _scores(q, k, causal, scale, key_lengths=None, causal_offset=None):
    """Scaled, masked scores S = scale · Q Kᵀ, -inf where a key is hidden.

    q: (B, H, Nq, d), k: (B, H_kv, Nk, d), key_lengths: (B,) or None -> S: (B, H, Nq, Nk).
    """
    k = _repeat_kv_heads(k, q.shape[1])  # (B, H, Nk, d)
    s = scale * (q @ k.swapaxes(-1, -2))  # (B, H, Nq, d) @ (B, H, d, Nk) -> (B, H, Nq, Nk)
    visible = _visible(q.shape[-2], k.shape[-2], causal, key_lengths, causal_offset)
    return s if visible is None else np.where(visible, s, -np.inf)


def reference_forward(q, k, v, causal, scale, key_lengths=None, causal_offset=None):
    """Reference forward: out = softmax(S) V and lse = logsumexp(S) per row.

    q: (B, H, Nq, d), k, v: (B, H_kv, Nk, d), key_lengths: (B,) ints or None ->
    out: (B, H, Nq, d) in q's dtype, lse: (B, H, Nq) float64. The row max is
    subtracted before exp, so scores of any finite size give finite results.
    causal_offset: see ``_visible`` (None: bottom-right, the contract).
    """
    s = _scores(q, k, causal, scale, key_lengths, causal_offset)
    row_max = s.max(axis=-1, keepdims=True)  # (B, H, Nq, 1), finite: key 0 is always visible
    p = np.exp(s - row_max)  # unnormalised probabilities, each <= 1
    row_sum = p.sum(axis=-1, keepdims=True)  # (B, H, Nq, 1), >= 1
    out = (p / row_sum) @ _repeat_kv_heads(v, q.shape[1])  # (B, H, Nq, Nk) @ (B, H, Nk, d) -> (B, H, Nq, d)
    lse = (row_max.astype(np.float64) + np.log(row_sum.astype(np.float64)))[..., 0]
    return out.astype(q.dtype, copy=False), lse


def reference_backward(dout, q, k, v, out, lse, causal, scale, key_lengths=None, causal_offset=None):
    """Reference backward of ``reference_forward``.

    With P = exp(S - lse) rebuilt from the saved lse, D_i = Σ_c dO[i, c] O[i, c], and
    K, V repeated to H heads as the forward reads them:

        dV = Pᵀ dO
        dP = dO Vᵀ
        dS = P ∘ (dP - D)          (softmax backward; D_i = Σ_j P_ij dP_ij)
        dQ = scale · dS K
        dK = scale · dSᵀ Q

    then dK, dV of the H query heads are summed over each group onto their H_kv heads.
    dout, out: (B, H, Nq, d); lse: (B, H, Nq) -> dq: (B, H, Nq, d), dk, dv: (B, H_kv, Nk, d).
    """
    n_head, n_kv_head = q.shape[1], k.shape[1]
    s = _scores(q, k, causal, scale, key_lengths, causal_offset)
    p = np.exp(s - lse[..., None].astype(s.dtype))  # (B, H, Nq, Nk)
    k, v = _repeat_kv_heads(k, n_head), _repeat_kv_heads(v, n_head)  # (B, H, Nk, d)
    dv = p.swapaxes(-1, -2) @ dout  # (B, H, Nk, Nq) @ (B, H, Nq, d) -> (B, H, Nk, d)
    dp = dout @ v.swapaxes(-1, -2)  # (B, H, Nq, d) @ (B, H, d, Nk) -> (B, H, Nq, Nk)
    d_row = (dout * out).sum(axis=-1, keepdims=True)  # D: (B, H, Nq, 1)
    ds = p * (dp - d_row)
    dq = scale * (ds @ k)  # (B, H, Nq, Nk) @ (B, H, Nk, d) -> (B, H, Nq, d)
    dk = scale * (ds.swapaxes(-1, -2) @ q)  # (B, H, Nk, Nq) @ (B, H, Nq, d) -> (B, H, Nk, d)
    dk, dv = _sum_kv_heads(dk, n_kv_head), _sum_kv_heads(dv, n_kv_head)  # (B, H_kv, Nk, d)
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


def _check_key_lengths(key_lengths, n_batch, n_k):
    """None, or key_lengths as a C-contiguous intp array (B,) with 1 <= L[b] <= Nk."""
    if key_lengths is None:
        return None
    lengths = np.asarray(key_lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(
            f"key_lengths must be None or an integer array of shape (B,) = ({n_batch},), "
            f"got dtype {lengths.dtype}"
        )
    if lengths.shape != (n_batch,):
        raise ValueError(f"key_lengths must have shape (B,) = ({n_batch},), got {lengths.shape}")
    if n_batch and (lengths.min() < 1 or lengths.max() > n_k):
        bad = lengths[(lengths < 1) | (lengths > n_k)][0]
        raise ValueError(f"key_lengths entries must be in [1, Nk] = [1, {n_k}], got {bad}")
    return np.ascontiguousarray(lengths, dtype=np.intp)


def _check_inputs(q, k, v, causal, scale, key_lengths):
    """Validate q, k, v, causal, scale, key_lengths; return (scale, key_lengths) to use."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float_array(x, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    B, H, n_q, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H_kv, Nk, d), got k {k.shape}, v {v.shape}")
    if k.shape[0] != B:
        raise ValueError(f"q, k, v must share B; got q {q.shape}, k {k.shape}, v {v.shape}")
    n_kv_head = k.shape[1]
    if not (n_kv_head == H or (n_kv_head > 0 and H % n_kv_head == 0)):
        raise ValueError(
            f"k and v must have H_kv heads with H % H_kv == 0 for q's H={H} "
            f"(H_kv == H: multi-head, 1: multi-query), got H_kv={n_kv_head} (k {k.shape})"
        )
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
    key_lengths = _check_key_lengths(key_lengths, B, n_k)
    if scale is None:
        return 1.0 / math.sqrt(d), key_lengths
    return check_real(scale, "scale", low_inclusive=False), key_lengths  # any finite real


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


def _check_into(into, q, k):
    """``into`` of backward: None, or three writeable arrays of dq's, dk's and dv's shapes in q's dtype."""
    if into is None:
        return
    if not (isinstance(into, (tuple, list)) and len(into) == 3):
        raise TypeError(f"into must be None or a tuple (dq, dk, dv) of three arrays, got {type(into).__name__}"
                        + (f" of length {len(into)}" if isinstance(into, (tuple, list)) else ""))
    for name, x, shape in (("dq", into[0], q.shape), ("dk", into[1], k.shape), ("dv", into[2], k.shape)):
        if not isinstance(x, np.ndarray) or x.dtype != q.dtype:
            raise TypeError(f"into's {name} must be a numpy.ndarray of q's dtype {q.dtype}, "
                            f"got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape != shape:
            raise ValueError(f"into's {name} must have shape {shape}, got {x.shape}")
        if not x.flags.writeable:
            raise ValueError(f"into's {name} must be writeable")


# --------------------------------------------------------------------------- dispatch

KERNEL = CompiledModule("_attention", "attention kernel")


def available_backends():
    """Names of the backends usable here: ``("numpy",)`` or ``("numpy", "cython")``."""
    return KERNEL.available_backends()


def _check_num_threads(num_threads):
    """The kernel's thread count: num_threads, or 0 for OpenMP's default (OMP_NUM_THREADS, threadpoolctl)."""
    return check_int(num_threads, "num_threads", 1, optional=True) or 0


def forward(q, k, v, causal=False, scale=None, key_lengths=None, backend="auto", *, num_threads=None):
    """Attention forward: ``out = softmax(scale · Q Kᵀ + mask) V``.

    Parameters
    ----------
    q : ndarray, (B, H, Nq, d), float32 or float64, any strides
    k, v : ndarray, (B, H_kv, Nk, d), same dtype as q, Nk >= 1, H % H_kv == 0
        Query head h reads key/value head h // (H // H_kv): H_kv == H is multi-head
        attention, 1 < H_kv < H grouped-query, H_kv == 1 multi-query.
    causal : bool
        Bottom-right aligned mask: query row i sees key columns j <= i + (Nk - Nq).
        Requires Nq <= Nk. With Nq == 1 the query sees every key (KV-cache decoding).
    scale : float or None
        Multiplies Q Kᵀ; None means 1/sqrt(d).
    key_lengths : integer array (B,) or None
        Right padding: every query row of batch b sees only keys j < key_lengths[b],
        1 <= key_lengths[b] <= Nk. Combined with ``causal`` when both are given.
    backend : {"auto", "numpy", "cython"}
    num_threads : int or None
        Threads for the compiled kernel; None follows OpenMP's default
        (OMP_NUM_THREADS, threadpoolctl). Ignored by the NumPy reference.

    Returns
    -------
    out : ndarray, (B, H, Nq, d), q's dtype
        The kernel's is a view of a (B, Nq, H, d) array: merging the heads is then a reshape.
    lse : ndarray, (B, H, Nq), float64
        log Σ_j exp(S_ij) of each row of scaled, masked scores; the backward needs it.
    """
    scale, key_lengths = _check_inputs(q, k, v, causal, scale, key_lengths)
    n_threads = _check_num_threads(num_threads)
    if KERNEL.resolve(backend) == "cython":
        return KERNEL.module.forward(q, k, v, bool(causal), scale, key_lengths, n_threads)
    return reference_forward(q, k, v, bool(causal), scale, key_lengths)


def backward(dout, q, k, v, out, lse, causal=False, scale=None, key_lengths=None, backend="auto", *,
             num_threads=None, into=None):
    """Attention backward: gradients of a scalar loss with respect to q, k and v.

    Parameters
    ----------
    dout : ndarray, (B, H, Nq, d), q's dtype
        Gradient of the loss with respect to ``out``.
    q, k, v, causal, scale, key_lengths, backend, num_threads
        As given to :func:`forward`.
    out : ndarray, (B, H, Nq, d)
    lse : ndarray, (B, H, Nq)
        The two results of :func:`forward` on the same inputs.
    into : None or (dq, dk, dv), three non-overlapping writeable arrays of the results'
        shapes and q's dtype
        Where to write the gradients (returned then), e.g. views of one [dq | dk | dv]
        buffer that the q, k, v projection's backward reads (see
        ``numpyllm.layers.self_attention_backward``); the kernel writes them in place
        when each row's d elements are contiguous.

    Returns
    -------
    dq : ndarray, (B, H, Nq, d)
    dk, dv : ndarray, (B, H_kv, Nk, d)
        All in q's dtype; dk and dv sum the gradients of the query heads sharing a
        key/value head. Padded keys (j >= key_lengths[b]) get zero gradient.
    """
    scale, key_lengths = _check_inputs(q, k, v, causal, scale, key_lengths)
    _check_backward_inputs(dout, q, out, lse)
    n_threads = _check_num_threads(num_threads)
    _check_into(into, q, k)
    if KERNEL.resolve(backend) == "cython":  # it computes into `into` itself where the layout allows
        grads = KERNEL.module.backward(dout, q, k, v, out, lse, bool(causal), scale, key_lengths, n_threads, into)
    else:
        grads = reference_backward(dout, q, k, v, out, lse, bool(causal), scale, key_lengths)
    if into is None:
        return grads
    for target, grad in zip(into, grads):
        if grad is not target:
            target[...] = grad
    return into
