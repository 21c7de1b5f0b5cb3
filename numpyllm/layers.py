"""The layers of both model families (GPT-2 and BERT) as forward/backward pairs of plain NumPy functions.

Every layer is a pair, side by side:

    out, cache = x_forward(inputs..., params...)
    dinputs..., dparams... = x_backward(dout, cache)

The forward saves in ``cache`` exactly what its backward needs; the backward returns
the gradient of the loss with respect to each array argument of the forward, in the
forward's argument order. Shapes use GPT-2's letters: B batch, T time, C = n_embd
channels, V vocabulary, H heads, hd = C / H head size. Everything is computed in the
dtype of the inputs (float32 or float64); inputs are trusted (the model validates once,
at its public boundary).

Linear weights have GPT-2's Conv1D layout (in, out), so a linear layer is ``x @ W + b``;
BERT's (out, in) weights are passed transposed (``W.T``, a view: BLAS reads it in place).

The NumPy code below is the specification. Layernorm, both GELUs, the cross-entropy,
linear's bias gradient and the embedding gradient also have compiled kernels (multi-threaded
but for the last; ``numpyllm._layers``, source in ``kernels/layers.pyx``), and so do the
linear layers' float32 products on CPUs with AVX-512 (``matmul``, ``kernels/gemm.h``);
``numpyllm.backend`` selects which runs ("auto": the kernels when built). Either way a
function returns the same values and the same cache.

Depends on NumPy, ``numpyllm.attention`` and ``numpyllm.backend`` only.
"""

import math

import numpy as np

from . import attention
from .backend import kernel as layer_kernel

__all__ = [
    "lookup_forward", "lookup_backward",
    "embedding_forward", "embedding_backward",
    "layernorm_forward", "layernorm_backward",
    "matmul", "linear_forward", "linear_backward",
    "tied_decoder_forward", "tied_decoder_backward",
    "gelu_forward", "gelu_backward",
    "gelu_erf_forward", "gelu_erf_backward",
    "tanh_forward", "tanh_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "mse_forward", "mse_backward",
    "bce_with_logits_forward", "bce_with_logits_backward",
    "qkv_forward", "split_qkv", "merge_heads", "split_heads", "pack_rows", "unpack_rows",
    "self_attention_forward", "self_attention_backward",
    "mlp_forward", "mlp_backward",
    "block_forward", "block_backward",
    "ACTIVATIONS", "LAYERNORM_EPS", "IGNORE_INDEX",
]

LAYERNORM_EPS = 1e-5  # GPT-2's layer_norm_epsilon
IGNORE_INDEX = -1  # the padding target numpyllm writes; every negative target is ignored (HF uses -100)


# --------------------------------------------------------------------------- embedding


def lookup_forward(idx, table):
    """Row lookup: x[..., :] = table[idx[...]].

    idx: (...) int, table: (V, C) -> x: (..., C).
    """
    return table[idx], (idx, table.shape)


def lookup_backward(dx, cache):
    """Every use of a row adds its dx to that row: dtable[v] = Σ_{i : idx[i] = v} dx[i].

    dx: (..., C) -> dtable: (V, C) (rows never looked up are zero).
    """
    idx, table_shape = cache
    kernel = layer_kernel(dx)
    if kernel is not None:
        return kernel.lookup_backward(dx, idx, table_shape[0])
    dtable = np.zeros(table_shape, dtype=dx.dtype)
    np.add.at(dtable, idx, dx)  # unbuffered: repeated ids accumulate
    return dtable


def embedding_forward(idx, wte, wpe):
    """Token plus position embedding: x[b, t] = wte[idx[b, t]] + wpe[t].

    idx: (B, T) int, wte: (V, C), wpe: (block_size, C) -> x: (B, T, C).
    """
    T = idx.shape[1]
    x, token_cache = lookup_forward(idx, wte)
    x += wpe[:T]  # (B, T, C) + (T, C)
    return x, (token_cache, wpe.shape)


def embedding_backward(dx, cache):
    """Gradients of the embedding tables (see lookup_backward): dwpe[t] = Σ_b dx[b, t].

    dx: (B, T, C) -> dwte: (V, C), dwpe: (block_size, C) (rows >= T are zero).
    """
    token_cache, wpe_shape = cache
    dwpe = np.zeros(wpe_shape, dtype=dx.dtype)
    dwpe[: dx.shape[1]] = dx.sum(axis=0)
    return lookup_backward(dx, token_cache), dwpe


# --------------------------------------------------------------------------- layernorm


def layernorm_forward(x, weight, bias, eps=LAYERNORM_EPS):
    """Layer normalisation over the last axis.

        mean = Σ_c x_c / C        rstd = 1 / sqrt(Σ_c (x_c - mean)² / C + eps)
        y = (x - mean) · rstd · weight + bias

    x: (..., C), weight, bias: (C,) -> y: (..., C). Saves mean and rstd: (..., 1).
    """
    kernel = layer_kernel(x, weight, bias)
    if kernel is not None:
        y, mean, rstd = kernel.layernorm_forward(x, weight, bias, eps)
        return y, (x, weight, mean, rstd)
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = np.mean(centered * centered, axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(variance + eps)
    x_hat = centered * rstd
    y = x_hat * weight + bias
    return y, (x, weight, mean, rstd)


def layernorm_backward(dy, cache):
    """Backward of layernorm, with x̂ = (x - mean) · rstd and g = dy · weight:

        dx = rstd · (g - mean_c(g) - x̂ · mean_c(g · x̂))
        dweight = Σ_rows dy · x̂        dbias = Σ_rows dy

    dy: (..., C) -> dx: (..., C), dweight: (C,), dbias: (C,).
    """
    x, weight, mean, rstd = cache
    kernel = layer_kernel(dy, x, weight, mean, rstd)
    if kernel is not None:
        return kernel.layernorm_backward(dy, x, weight, mean, rstd)
    x_hat = (x - mean) * rstd
    g = dy * weight
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= x_hat * np.mean(g * x_hat, axis=-1, keepdims=True)
    dx *= rstd
    C = x.shape[-1]
    dweight = (dy * x_hat).reshape(-1, C).sum(axis=0)
    dbias = dy.reshape(-1, C).sum(axis=0)
    return dx, dweight, dbias


# --------------------------------------------------------------------------- linear


def _products_kernel(a, b):
    """The compiled module when it runs float32 a @ b (backend and CPU allow, see matmul), else None."""
    kernel = layer_kernel(a, b)
    if kernel is None or a.dtype != np.float32 or kernel.matrix_products() != "avx512":
        return None
    return kernel


def matmul(a, b, bias=None):
    """The product of every linear layer: a @ b (+ bias).

    a: (M, K), b: (K, N), bias: (N,) or None -> (M, N). NumPy's ``@`` (BLAS) is the
    reference; float32 goes to the kernels' own products (``numpyllm._layers.matmul``, bias
    added as each block of the result is stored) where ``numpyllm.backend`` selects the
    kernels and ``numpyllm._layers.matrix_products()`` is "avx512".
    """
    kernel = _products_kernel(a, b)
    if kernel is not None:
        return kernel.matmul(a, b, bias)
    y = a @ b
    if bias is not None:
        y += bias
    return y


def linear_forward(x, weight, bias=None):
    """Affine map in GPT-2's Conv1D layout: y = x @ weight + bias.

    x: (..., n_in), weight: (n_in, n_out), bias: (n_out,) or None -> y: (..., n_out).
    The leading axes are flattened so the product is one 2-D matrix multiply.
    """
    n_in, n_out = weight.shape
    y = matmul(x.reshape(-1, n_in), weight, bias)  # (N, n_in) @ (n_in, n_out) -> (N, n_out)
    return y.reshape(*x.shape[:-1], n_out), (x, weight, bias is not None)


def linear_backward(dy, cache):
    """Backward of linear: dx = dy @ weightᵀ, dweight = xᵀ @ dy, dbias = Σ_rows dy.

    dy: (..., n_out) -> dx: (..., n_in), dweight: (n_in, n_out), dbias: (n_out,)
    (None when the forward had no bias).
    """
    return _linear_backward(dy, cache, transposed_weight=False)


def _linear_backward(dy, cache, transposed_weight):
    """linear_backward, returning dweightᵀ = dyᵀ x (n_out, n_in) in place of dweight when
    ``transposed_weight`` (a tied table's layout), formed in that layout rather than copied."""
    x, weight, has_bias = cache
    n_in, n_out = weight.shape
    dy_2d, x_2d = dy.reshape(-1, n_out), x.reshape(-1, n_in)
    dx = matmul(dy_2d, weight.T).reshape(x.shape)  # (N, n_out) @ (n_out, n_in) -> (N, n_in)
    if transposed_weight:
        dweight = matmul(dy_2d.T, x_2d)  # (n_out, N) @ (N, n_in)
    else:
        # dweight = xᵀ dy: (n_in, N) @ (N, n_out), a long reduction, formed as it is or transposed,
        # whichever the implementation runs faster: OpenBLAS wants the product at least as tall as
        # wide (2-3x); the kernel packs its transposed left operand, so wants that the smaller one.
        as_is = n_in <= n_out if _products_kernel(x_2d, dy_2d) is not None else n_in >= n_out
        dweight = matmul(x_2d.T, dy_2d) if as_is else matmul(dy_2d.T, x_2d).T
    dbias = _sum_rows(dy_2d) if has_bias else None
    return dx, dweight, dbias


def tied_decoder_forward(x, table, bias=None):
    """Output layer tied to an embedding table (GPT-2's LM head, BERT's MLM decoder):

        logits = x @ tableᵀ + bias

    x: (..., C), table: (V, C), bias: (V,) or None -> logits: (..., V).
    """
    return linear_forward(x, table.T, bias)  # tableᵀ is a (C, V) view


def tied_decoder_backward(dlogits, cache):
    """Backward of tied_decoder_forward: dx = dlogits @ table, dtable = dlogitsᵀ @ x, dbias = Σ_rows dlogits.

    dlogits: (..., V) -> dx: (..., C), dtable: (V, C), dbias: (V,) (None without a bias).
    dtable is the table's use as a decoder only; a caller that also looks rows up adds
    the lookup's gradient to it.
    """
    # dtable formed as the table lies, (V, N) @ (N, C): the transpose of linear_backward's
    # (C, V) result would be a strided copy of the whole table (~14 ms at V 4096, C 384).
    return _linear_backward(dlogits, cache, transposed_weight=True)


def _sum_rows(x):
    """Σ over rows: x (N, n) -> (n,), e.g. a bias gradient Σ_rows dy."""
    kernel = layer_kernel(x)
    return kernel.sum_rows(x) if kernel is not None else x.sum(axis=0)


# --------------------------------------------------------------------------- GELU

_GELU_SCALE = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """GELU, GPT-2's tanh approximation ("gelu_new"), element-wise:

        u = sqrt(2/π) · (x + 0.044715 x³)        y = x · (1 + tanh(u)) / 2

    x: any shape -> y: same shape. Saves x and tanh(u).
    """
    kernel = layer_kernel(x)
    if kernel is not None:
        y, tanh_u = kernel.gelu_forward(x)
        return y, (x, tanh_u)
    u = _GELU_SCALE * (x + _GELU_CUBIC * x * x * x)
    tanh_u = np.tanh(u, out=u)
    y = 0.5 * x * (1.0 + tanh_u)
    return y, (x, tanh_u)


def gelu_backward(dy, cache):
    """Derivative of exactly the tanh form above (not of the erf GELU), with tanh' = 1 - tanh²:

        du/dx = sqrt(2/π) · (1 + 3 · 0.044715 x²)
        dx = dy · [(1 + tanh u) + x · (1 - tanh² u) · du/dx] / 2

    dy: any shape -> dx: same shape.
    """
    x, tanh_u = cache
    kernel = layer_kernel(dy, x, tanh_u)
    if kernel is not None:
        return kernel.gelu_backward(dy, x, tanh_u)
    du_dx = _GELU_SCALE * (1.0 + 3.0 * _GELU_CUBIC * x * x)
    dx = x * (1.0 - tanh_u * tanh_u) * du_dx
    dx += 1.0 + tanh_u
    dx *= 0.5 * dy
    return dx


def gelu_erf_forward(x):
    """GELU in its exact form (BERT's "gelu"), element-wise, with Φ the standard normal CDF:

        y = x · Φ(x) = x · (1 + erf(x / √2)) / 2

    Φ comes from scipy's ``ndtr`` (NumPy has no erf), which stays accurate in the
    negative tail where ``1 + erf`` would cancel.
    x: any shape -> y: same shape. Saves x and Φ(x).
    """
    kernel = layer_kernel(x)
    if kernel is not None:
        y, cdf = kernel.gelu_erf_forward(x)
        return y, (x, cdf)
    from scipy.special import ndtr  # scipy is a dependency of the package, not of the import

    cdf = ndtr(x)
    return x * cdf, (x, cdf)


def gelu_erf_backward(dy, cache):
    """Derivative of the exact form, with φ(x) = exp(-x²/2) / √(2π) the normal density:

        dx = dy · (Φ(x) + x · φ(x))

    dy: any shape -> dx: same shape.
    """
    x, cdf = cache
    kernel = layer_kernel(dy, x, cdf)
    if kernel is not None:
        return kernel.gelu_erf_backward(dy, x, cdf)
    density = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return dy * (cdf + x * density)


def tanh_forward(x):
    """y = tanh(x), element-wise (BERT's pooler). x: any shape -> y: same shape. Saves y."""
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, cache):
    """dx = dy · (1 - tanh²(x)) = dy · (1 - y²). dy: any shape -> dx: same shape."""
    y = cache
    return dy * (1.0 - y * y)


# The MLP activations by the names Hugging Face configs give them (GPT-2's activation_function,
# BERT's hidden_act): name -> (forward, backward). "gelu_pytorch_tanh" is torch's own kernel of
# the same tanh formula as "gelu_new".
ACTIVATIONS = {
    "gelu": (gelu_erf_forward, gelu_erf_backward),
    "gelu_new": (gelu_forward, gelu_backward),
    "gelu_pytorch_tanh": (gelu_forward, gelu_backward),
}


# --------------------------------------------------------------------------- cross-entropy


def _check_out(out, like, like_name):
    """An ``out=`` array must have the shape and dtype of the array it stands in for."""
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array or None, got {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype:
        raise ValueError(f"out must have {like_name}' shape {like.shape} and dtype {like.dtype}, "
                         f"got {out.shape} {out.dtype}")


def cross_entropy_forward(logits, targets, out=None):
    """Softmax cross-entropy, fused, averaged over the targets that are not negative (ignored: padding).

        loss = (1 / N) Σ_{(b,t) : targets[b,t] != -1} [logsumexp(logits[b, t]) - logits[b, t, targets[b, t]]]

    with N the number of such positions (N >= 1; the caller checks).
    logits: (B, T, V), targets: (B, T) int -> loss: Python float (summed in float64).
    Saves the softmax probabilities (B, T, V) for the backward, in ``out`` when given: an
    array of logits' shape and dtype, logits itself included (a caller done with its logits
    saves a (B, T, V) allocation, which for a large vocabulary is also a round of page faults).
    """
    _check_out(out, logits, "logits")
    valid = targets >= 0  # (B, T); -1 (ours) and -100 (Hugging Face's) alike are ignored
    n_valid = int(np.count_nonzero(valid))
    safe_targets = np.where(valid, targets, 0)  # any in-range index; masked out below
    kernel = layer_kernel(logits)
    if kernel is not None:
        probs, row_loss = kernel.cross_entropy_forward(logits, safe_targets, out)
    else:
        probs = np.subtract(logits, logits.max(axis=-1, keepdims=True), out=out)  # exp cannot overflow
        target_logit = np.take_along_axis(probs, safe_targets[..., None], axis=-1)[..., 0]  # (B, T)
        np.exp(probs, out=probs)
        sum_exp = probs.sum(axis=-1, keepdims=True)  # (B, T, 1), >= 1
        probs /= sum_exp
        row_loss = np.log(sum_exp[..., 0]) - target_logit  # (B, T)
    loss = float(row_loss[valid].sum(dtype=np.float64)) / n_valid
    return loss, (probs, safe_targets, valid, n_valid)


def cross_entropy_backward(dloss, cache, out=None):
    """Gradient with the loss's own 1/N scaling:

        dlogits[b, t] = dloss / N · (softmax(logits[b, t]) - onehot(targets[b, t]))   if targets[b, t] >= 0
        dlogits[b, t] = 0                                                               otherwise

    dloss: float (1.0 for the loss itself) -> dlogits: (B, T, V), in ``out`` when given (an
    array of the probabilities' shape and dtype; the cache's own probabilities ``cache[0]``
    included, when the cache is not needed again).
    """
    probs, safe_targets, valid, n_valid = cache
    _check_out(out, probs, "the probabilities")
    row_scale = (valid * (dloss / n_valid)).astype(probs.dtype)  # (B, T): 0 on ignored positions
    kernel = layer_kernel(probs)
    if kernel is not None:
        return kernel.cross_entropy_backward(probs, safe_targets, row_scale, out)
    dlogits = np.multiply(probs, row_scale[..., None], out=out)
    at_target = safe_targets[..., None]  # (B, T, 1): one entry per row
    target_entries = np.take_along_axis(dlogits, at_target, axis=-1)
    np.put_along_axis(dlogits, at_target, target_entries - row_scale[..., None], axis=-1)
    return dlogits


def mse_forward(predictions, targets):
    """Mean squared error over every entry (BERT's regression loss):

        loss = (1 / N) Σ_i (predictions_i - targets_i)²        N = predictions.size

    predictions, targets: the same shape -> loss: Python float (summed in float64).
    """
    diff = predictions - targets
    loss = float(np.sum(diff * diff, dtype=np.float64)) / diff.size
    return loss, diff


def mse_backward(dloss, cache):
    """dpredictions = dloss · 2 (predictions - targets) / N. dloss: float -> dpredictions: predictions' shape."""
    diff = cache
    return diff * (2.0 * dloss / diff.size)


def bce_with_logits_forward(logits, targets):
    """Binary cross-entropy on sigmoid(logits), averaged over every entry (multi-label classification):

        loss = (1 / N) Σ_i [max(x_i, 0) - x_i y_i + log(1 + exp(-|x_i|))]

    which is -[y log σ(x) + (1 - y) log(1 - σ(x))] written so that no exp overflows.
    logits, targets (values in [0, 1]): the same shape -> loss: Python float (summed in float64).
    Saves σ(x) and the targets.
    """
    x, y = logits, targets
    row_loss = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    loss = float(np.sum(row_loss, dtype=np.float64)) / x.size
    e = np.exp(-np.abs(x))  # σ(x) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0: no overflow
    sigmoid = np.where(x >= 0, 1.0, e) / (1.0 + e)
    return loss, (sigmoid.astype(x.dtype, copy=False), y)


def bce_with_logits_backward(dloss, cache):
    """dlogits = dloss · (σ(x) - y) / N. dloss: float -> dlogits: logits' shape."""
    sigmoid, y = cache
    return (sigmoid - y) * (dloss / sigmoid.size)


# --------------------------------------------------------------------------- attention


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, hd), a view: head h is channels [h·hd, (h+1)·hd) (GPT-2's split)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, hd) -> (B, T, H·hd), a C-contiguous copy; the inverse of split_heads."""
    B, H, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def split_qkv(qkv, n_head):
    """[q | k | v] (B, T, 3C) -> q, k, v: (B, H, T, hd), views (both attention backends read them in place)."""
    B, T, C3 = qkv.shape
    return qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, hd)


def qkv_forward(x, weight, bias, n_head):
    """Fused q, k, v projection (GPT-2's c_attn), split into heads.

        [q | k | v] = x @ weight + bias        each (B, T, C), then split_heads

    x: (B, T, C), weight: (C, 3C), bias: (3C,) -> q, k, v: (B, H, T, hd), views into
    one (B, T, 3C) array. Also usable for new positions only, e.g. decoding with a KV cache.
    """
    qkv, cache = linear_forward(x, weight, bias)  # (B, T, 3C)
    return split_qkv(qkv, n_head), cache


def unpack_rows(x, rows):
    """Packed rows back to their places: x (N, C) -> (B, T, C), zeros at the positions left out.

    rows = (index, B, T): index (N,) are the rows' positions in the flattened (B·T) batch, or
    None for all of them (then N = B·T and this is a reshape). The transpose of pack_rows,
    so each is the other's backward.
    """
    index, B, T = rows
    if index is None:
        return x.reshape(B, T, x.shape[-1])
    out = np.zeros((B * T, x.shape[-1]), dtype=x.dtype)
    out[index] = x
    return out.reshape(B, T, x.shape[-1])


def pack_rows(x, rows):
    """The rows ``index`` of x (B, T, C) -> (N, C) (see unpack_rows; index None: a reshape)."""
    index, B, T = rows
    x = x.reshape(B * T, x.shape[-1])
    return x if index is None else x[index]


def self_attention_forward(x, w_attn, b_attn, w_proj, b_proj, n_head, backend="auto", causal=True,
                           key_lengths=None, rows=None):
    """Multi-head self-attention, GPT-2's (causal) and BERT's (over a right-padded batch):

        q, k, v = heads(x @ w_attn + b_attn)                       (B, H, T, hd) each
        o = softmax(q kᵀ / sqrt(hd) + mask) v                      numpyllm.attention
        y = merge_heads(o) @ w_proj + b_proj

    The mask hides keys after the query (causal=True, GPT-2) and keys j >= key_lengths[b]
    (key_lengths (B,) ints or None, BERT's padding). BERT's separate query, key and value
    weights enter as one w_attn = [Wq | Wk | Wv]ᵀ (see numpyllm.bert).
    x: (B, T, C), w_attn: (C, 3C), b_attn: (3C,), w_proj: (C, C), b_proj: (C,) -> y: (B, T, C).
    rows: None, or (index, B, T) when x holds only some positions, packed: x (N, C) -> y (N, C)
    (see unpack_rows). The projections then skip the positions left out (BERT's padding,
    which no kept position attends to); the heads see zeros there.
    The cache keeps q, k, v, o and the row log-sum-exp (B, H, T): no T×T matrix
    (the NumPy attention backend rebuilds one transiently; the Cython one never does).
    """
    qkv, qkv_cache = linear_forward(x, w_attn, b_attn)  # (B, T, 3C) or (N, 3C)
    q, k, v = split_qkv(qkv if rows is None else unpack_rows(qkv, rows), n_head)  # (B, H, T, hd) each
    mask = dict(causal=causal, key_lengths=key_lengths, backend=backend)
    o, lse = attention.forward(q, k, v, **mask)  # (B, H, T, hd), (B, H, T)
    merged = merge_heads(o)  # (B, T, C)
    y, proj_cache = linear_forward(merged if rows is None else pack_rows(merged, rows), w_proj, b_proj)
    return y, (qkv_cache, q, k, v, o, lse, proj_cache, mask, rows)


def self_attention_backward(dy, cache):
    """Backward of self_attention_forward, its steps in reverse.

    dy: (B, T, C) (or (N, C) with rows) -> dx: like x, dw_attn: (C, 3C), db_attn: (3C,),
    dw_proj: (C, C), db_proj: (C,).
    """
    qkv_cache, q, k, v, o, lse, proj_cache, mask, rows = cache
    do, dw_proj, db_proj = linear_backward(dy, proj_cache)  # (B, T, C) or (N, C)
    do = split_heads(do if rows is None else unpack_rows(do, rows), q.shape[1])  # (B, H, T, hd)
    B, H, T, hd = q.shape
    dqkv = np.empty((B, T, 3 * H * hd), dtype=q.dtype)  # [dq | dk | dv], split_qkv's layout
    attention.backward(do, q, k, v, o, lse, **mask, into=tuple(split_qkv(dqkv, H)))
    dx, dw_attn, db_attn = linear_backward(dqkv if rows is None else pack_rows(dqkv, rows), qkv_cache)
    return dx, dw_attn, db_attn, dw_proj, db_proj


# --------------------------------------------------------------------------- MLP


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj, activation="gelu_new"):
    """The transformer MLP: y = act(x @ w_fc + b_fc) @ w_proj + b_proj.

    activation: a name in ACTIVATIONS ("gelu_new": GPT-2's tanh GELU; "gelu": BERT's exact one).
    x: (B, T, C), w_fc: (C, I), b_fc: (I,), w_proj: (I, C), b_proj: (C,) -> y: (B, T, C)
    (GPT-2: I = 4C; BERT: intermediate_size).
    """
    act_forward, act_backward = ACTIVATIONS[activation]
    h, fc_cache = linear_forward(x, w_fc, b_fc)  # (B, T, I)
    h, act_cache = act_forward(h)
    y, proj_cache = linear_forward(h, w_proj, b_proj)  # (B, T, C)
    return y, (fc_cache, act_backward, act_cache, proj_cache)


def mlp_backward(dy, cache):
    """Backward of mlp_forward.

    dy: (B, T, C) -> dx: (B, T, C), dw_fc: (C, I), db_fc: (I,), dw_proj: (I, C), db_proj: (C,).
    """
    fc_cache, act_backward, act_cache, proj_cache = cache
    dh, dw_proj, db_proj = linear_backward(dy, proj_cache)
    dh = act_backward(dh, act_cache)
    dx, dw_fc, db_fc = linear_backward(dh, fc_cache)
    return dx, dw_fc, db_fc, dw_proj, db_proj


# --------------------------------------------------------------------------- transformer block


def block_forward(x, params, n_head, backend="auto"):
    """One pre-LN transformer block:

        x = x + self_attention(layernorm_1(x))
        x = x + mlp(layernorm_2(x))

    x: (B, T, C) -> (B, T, C). ``params`` maps the block's own names ("ln_1.weight",
    "attn.c_attn.weight", "mlp.c_fc.bias", ... i.e. GPT-2's without "h.<i>.") to arrays.
    """
    p = params
    h, ln_1 = layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])
    h, attn = self_attention_forward(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"],
                                     p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head, backend)
    x = x + h
    h, ln_2 = layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])
    h, mlp = mlp_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    x = x + h
    return x, (ln_1, attn, ln_2, mlp)


def block_backward(dx, cache):
    """Backward of block_forward: each residual branch adds its gradient to the stream's.

    dx: (B, T, C) -> dx: (B, T, C), dparams: dict with the same names as block_forward's params.
    """
    ln_1, attn, ln_2, mlp = cache
    g = {}
    dh, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"], g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = (
        mlp_backward(dx, mlp))
    dh, g["ln_2.weight"], g["ln_2.bias"] = layernorm_backward(dh, ln_2)
    dx = dx + dh
    dh, g["attn.c_attn.weight"], g["attn.c_attn.bias"], g["attn.c_proj.weight"], g["attn.c_proj.bias"] = (
        self_attention_backward(dx, attn))
    dh, g["ln_1.weight"], g["ln_1.bias"] = layernorm_backward(dh, ln_1)
    dx = dx + dh
    return dx, g
