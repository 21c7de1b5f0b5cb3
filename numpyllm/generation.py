"""Generation with a KV cache: the decoder, the samplers, and streaming text out of token ids.

- ``KVCache`` and ``Decoder``: the model's forward run on a few positions at a time
  against cached keys and values, composed from the same layer functions as
  ``GPT.__call__`` (``numpyllm.layers``) and ``numpyllm.attention``.
- ``generate`` / ``iter_tokens``: prefill the prompt once, then one position per token.
- ``sample_logits``: temperature, top-k and top-p (nucleus) sampling.
- ``StreamDecoder``: token ids -> text, holding back a UTF-8 character split across tokens.

``GPT.generate`` delegates here; the command line is ``numpyllm.cli.generate``.
Depends on NumPy, ``layers`` and ``attention``; it imports no model module.
"""

import codecs

import numpy as np

from . import attention, backend
from ._checks import check_int, check_real, check_token_ids
from .layers import (LAYERNORM_EPS, embedding_forward, layernorm_forward, linear_forward, merge_heads, mlp_forward,
                     qkv_forward, tied_decoder_forward)

__all__ = ["KVCache", "Decoder", "generate", "iter_tokens", "sample_logits", "check_sampling",
           "StreamDecoder"]


# --------------------------------------------------------------------------- the cached forward

# The most new positions (per sequence) a step runs through the compiled DecodeStep; longer
# prompts run layer function by layer function (BLAS products and the attention kernel).
# One thread, AMD EPYC, 2 layers of C = 384: a 16-position prefill costs both ~5 ms, a
# 64-position one 19-21 ms fused against 10-11 (DecodeStep's loops are no GEMM).
FUSED_MAX_POSITIONS = 16

# A block's parameters in the order numpyllm._layers.DecodeStep takes them.
_FUSED_BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                       "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                       "mlp.c_proj.weight", "mlp.c_proj.bias")


class KVCache:
    """Keys and values of every layer for the positions processed so far, preallocated.

    keys, values: (n_layer, B, H, capacity, hd) in the model's dtype; positions
    [0, length) are filled. A step writes its one position; attention is handed the view
    ``keys[layer, :, :, :length]``, which both backends read in place.
    """

    def __init__(self, config, batch_size, capacity):
        shape = (config.n_layer, batch_size, config.n_head, capacity, config.n_embd // config.n_head)
        self.keys = np.empty(shape, dtype=config.dtype)
        self.values = np.empty(shape, dtype=config.dtype)
        self.length = 0

    @property
    def capacity(self):
        return self.keys.shape[3]


class Decoder:
    """GPT's forward over new positions only, keeping every layer's keys and values.

    ``prefill(idx)`` empties the cache and runs the prompt idx (B, T) at positions
    0..T-1; ``step(idx)`` runs idx (B, T_new) (usually T_new = 1) at the next positions.
    Both return the logits of the last position, (B, vocab_size), equal to
    ``model(all ids so far)[:, -1]`` up to rounding. Inputs are trusted (``generate``
    validates them). The positions may not exceed ``capacity`` <= block_size.

    When ``numpyllm.backend`` allows the compiled kernels and the model's attention backend
    is not "numpy", a step of at most FUSED_MAX_POSITIONS positions (every decoding step, a
    short prompt) is one call of ``numpyllm._layers.DecodeStep``: every layer and the head
    in one OpenMP region whose threads split each product's columns and stream the weights
    themselves. A decoding step multiplies one row per sequence by every weight matrix, so
    it is bound by reading the weights from memory; going through BLAS would pay a call (and
    with 2 threads a thread pool's hand-off) per product. Longer prompts, and the "numpy"
    backends, run the layer functions one by one, with BLAS and the model's attention
    backend. On a machine busy with other work two threads stall at every barrier (BLAS's as
    much as the kernel's): set OMP_NUM_THREADS=1 (OPENBLAS_NUM_THREADS=1) there.
    """

    def __init__(self, model, batch_size, capacity):
        config = model.config
        if not 1 <= capacity <= config.block_size:
            raise ValueError(f"capacity must be in [1, block_size={config.block_size}], got {capacity}")
        self.model = model
        self.cache = KVCache(config, batch_size, capacity)
        self._blocks = [model.block_params(i) for i in range(config.n_layer)]  # looked up once
        self._block_arrays = [tuple(block[name] for name in _FUSED_BLOCK_PARAMS) for block in self._blocks]
        self._kernel_step = None  # numpyllm._layers.DecodeStep, made on the first fused step

    def prefill(self, idx):
        self.cache.length = 0
        return self.step(idx)

    def step(self, idx):
        """idx (B, T_new) at positions [length, length + T_new) -> logits (B, V) of the last one."""
        p, cache = self.model.params, self.cache
        start = cache.length
        end = start + idx.shape[1]
        if end > cache.capacity:
            raise ValueError(f"the cache holds {cache.capacity} positions; {end} were asked for")
        x, _ = embedding_forward(idx, p["wte.weight"], p["wpe.weight"][start:])  # (B, T_new, C)
        kernel = backend.kernel(x) if self.model.attention_backend != "numpy" and idx.shape[1] <= FUSED_MAX_POSITIONS else None
        if kernel:
            logits = self._fused_step(kernel, x, start)
        else:
            x = self._blocks_forward(x, start, end)
            x, _ = layernorm_forward(x[:, -1], p["ln_f.weight"], p["ln_f.bias"])  # (B, C)
            logits, _ = tied_decoder_forward(x, p["wte.weight"])  # tied head: (B, C) @ (C, V)
        cache.length = end
        return logits

    def _blocks_forward(self, x, start, end):
        """The blocks on x (B, T_new, C) at positions [start, end), layer function by layer function."""
        cache, n_head, attention_backend = self.cache, self.model.config.n_head, self.model.attention_backend
        for layer, b in enumerate(self._blocks):
            h, _ = layernorm_forward(x, b["ln_1.weight"], b["ln_1.bias"])
            (q, k, v), _ = qkv_forward(h, b["attn.c_attn.weight"], b["attn.c_attn.bias"], n_head)  # (B, H, T_new, hd)
            keys, values = cache.keys[layer], cache.values[layer]  # (B, H, capacity, hd)
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            # bottom-right causal: new position i sees every cached key and new keys up to i
            o, _ = attention.forward(q, keys[:, :, :end], values[:, :, :end], causal=True, backend=attention_backend)
            h, _ = linear_forward(merge_heads(o), b["attn.c_proj.weight"], b["attn.c_proj.bias"])  # (B, T_new, C)
            x += h
            h, _ = layernorm_forward(x, b["ln_2.weight"], b["ln_2.bias"])
            h, _ = mlp_forward(h, b["mlp.c_fc.weight"], b["mlp.c_fc.bias"], b["mlp.c_proj.weight"], b["mlp.c_proj.bias"])
            x += h
        return x

    def _fused_step(self, kernel, x, start):
        """Logits (B, V) of the last of the new positions x (B, T_new, C) (from start on), in one
        call of the compiled kernel (``numpyllm._layers.DecodeStep``: every layer, attention and
        the head included); x is overwritten."""
        if self._kernel_step is None:  # made once: it checks and holds the parameters and the cache
            p = self.model.params
            self._kernel_step = kernel.DecodeStep(self._block_arrays, self.cache.keys, self.cache.values,
                                                  p["ln_f.weight"], p["ln_f.bias"], p["wte.weight"], LAYERNORM_EPS)
        return self._kernel_step.step(x, start)


# --------------------------------------------------------------------------- validation


def check_sampling(temperature, top_k, top_p, names=("temperature", "top_k", "top_p")):
    """Validate the sampler settings; return (temperature, top_k, top_p) as float/int/float or None.

    names: what the errors call them (the command line passes its flags).
    """
    return (check_real(temperature, names[0], 0, hint="0: greedy"),
            check_int(top_k, names[1], 1, optional=True),
            check_real(top_p, names[2], 0, 1, low_inclusive=False, high_inclusive=True, optional=True))


def _check_generate_args(model, idx, max_new_tokens, seed, stop_tokens):
    """Validate generate's arguments other than the sampler's; return (idx, stop_tokens array)."""
    vocab_size = model.config.vocab_size
    idx = check_token_ids(idx, "idx", vocab_size)
    if idx.ndim != 2:
        raise ValueError(f"idx must be 2-D (B, T): a batch of equal-length prompts, got shape {idx.shape}")
    if idx.shape[0] < 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must hold at least one prompt of at least one token, got shape {idx.shape}")
    check_int(max_new_tokens, "max_new_tokens", 0)
    check_int(seed, "seed", 0, optional=True)
    if stop_tokens is not None:
        stop_tokens = check_token_ids(np.atleast_1d(stop_tokens), "stop_tokens", vocab_size).ravel()
        if stop_tokens.size == 0:
            stop_tokens = None
    return idx.astype(np.int64, copy=False), stop_tokens


# --------------------------------------------------------------------------- sampling


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """Draw one token per row of ``logits`` (B, V) -> ids (B,) int64.

    - temperature 0: the argmax (greedy; the first on ties). Otherwise sample from
      softmax(logits / temperature), restricted by:
    - top_k: the tokens whose logit is >= the k-th largest (ties at the k-th are kept);
    - top_p: after top_k, the smallest set of most probable tokens whose probability
      sums to >= top_p (always at least the most probable one);
    and renormalised over what remains.

    rng: a numpy Generator (default: a fresh unseeded one).
    """
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.dtype.kind != "f":
        raise ValueError(f"logits must be a 2-D float array (B, V), got {logits.dtype} {logits.shape}")
    return _sample(logits, temperature, top_k, top_p, np.random.default_rng() if rng is None else rng)


def _sample(logits, temperature, top_k, top_p, rng):
    """sample_logits on trusted arguments."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    scores = logits.astype(np.float64) / temperature  # (B, V), float64 so the cumulative sums are exact enough
    B, V = scores.shape
    if top_k is not None and top_k < V:
        kth_largest = np.partition(scores, V - top_k, axis=-1)[:, V - top_k, None]  # (B, 1)
        scores[scores < kth_largest] = -np.inf
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))  # unnormalised: the draw below rescales
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")  # most probable first
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        cumulative = np.cumsum(sorted_probs, axis=-1)
        mass_before = (cumulative - sorted_probs) / cumulative[:, -1:]  # 0 for the most probable token
        np.put_along_axis(probs, order, np.where(mass_before < top_p, sorted_probs, 0.0), axis=-1)
    # inverse CDF: the first token whose cumulative mass exceeds u · total. Tokens of
    # probability 0 add nothing to the cumulative sum, so they are never the first.
    cumulative = np.cumsum(probs, axis=-1)
    threshold = rng.random(B) * cumulative[:, -1]
    tokens = np.count_nonzero(cumulative <= threshold[:, None], axis=-1)
    last_allowed = V - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)  # guards u · total rounding up to total
    return np.minimum(tokens, last_allowed)


# --------------------------------------------------------------------------- generation


def iter_tokens(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                stop_tokens=None):
    """Yield each new column of tokens, (B,) int64, as soon as it is sampled.

    Arguments as for ``generate``; they are validated before the first token is asked
    for. Stops after max_new_tokens columns, or once every row has produced a stop token.
    """
    idx, stop_tokens = _check_generate_args(model, idx, max_new_tokens, seed, stop_tokens)
    sampling = check_sampling(temperature, top_k, top_p)
    return _decode(model, idx, max_new_tokens, sampling, np.random.default_rng(seed), stop_tokens)


def _decode(model, idx, max_new_tokens, sampling, rng, stop_tokens):
    """iter_tokens on validated arguments."""
    if max_new_tokens == 0:
        return
    B, T = idx.shape
    block_size = model.config.block_size
    sequence = np.empty((B, T + max_new_tokens), dtype=np.int64)  # kept for re-prefills past block_size
    sequence[:, :T] = idx
    decoder = Decoder(model, B, min(block_size, T + max_new_tokens - 1))
    logits = decoder.prefill(idx[:, -decoder.cache.capacity:])
    finished = np.zeros(B, dtype=bool)
    for length in range(T, T + max_new_tokens):
        tokens = _sample(logits, *sampling, rng)
        if stop_tokens is not None:
            tokens[finished] = sequence[finished, length - 1]  # a stopped row repeats its stop token
            finished |= np.isin(tokens, stop_tokens)
        sequence[:, length] = tokens
        yield tokens
        if finished.all() or length + 1 == T + max_new_tokens:
            return
        if decoder.cache.length < decoder.cache.capacity:
            logits = decoder.step(sequence[:, length: length + 1])
        else:
            # Full: the model sees the last block_size tokens. Positions are learned and
            # absolute, so sliding the window changes every cached key: run it afresh.
            logits = decoder.prefill(sequence[:, length + 1 - decoder.cache.capacity: length + 1])


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop_tokens=None):
    """Continue each prompt in idx by up to max_new_tokens tokens; see ``GPT.generate``.

    Parameters
    ----------
    model : GPT
    idx : int array (B, T), T >= 1: a batch of equal-length prompts, ids in [0, vocab_size).
        Prompts longer than block_size are conditioned on their last block_size tokens.
    max_new_tokens : int >= 0
    temperature : float >= 0; 0 is greedy (argmax), otherwise logits are divided by it.
    top_k : int >= 1 or None; top_p : float in (0, 1] or None; see ``sample_logits``.
    seed : int >= 0 or None; the same seed, model and arguments give the same tokens.
    stop_tokens : int, sequence of ints, or None. A row that samples one of these stops
        growing: its later positions repeat that stop token. Generation ends when every
        row has stopped, so the result may have fewer than max_new_tokens new columns.

    Returns
    -------
    int64 array (B, T + n), the prompts followed by n <= max_new_tokens new tokens.

    The prompt is processed once (prefill) into a preallocated KV cache; each new token
    then runs the blocks on its single position. Once the sequence holds block_size
    tokens, each further token is predicted from the last block_size tokens, which are
    cropped out and prefilled anew (as costly as decoding without a cache).
    """
    columns = list(iter_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens))
    idx = np.asarray(idx, dtype=np.int64)
    return np.concatenate([idx, np.stack(columns, axis=1)], axis=1) if columns else idx.copy()


# --------------------------------------------------------------------------- streaming text


class StreamDecoder:
    """Token ids in, text out, a few tokens at a time.

    A UTF-8 character may be split across tokens; its bytes are held back until the
    last one arrives, so ``push(a) + push(b) + ... + finish()`` equals
    ``tokenizer.decode(a + b + ...)`` (invalid bytes become U+FFFD in both).
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids):
        """Decode more ids; returns the text that is now complete (possibly "")."""
        return self._utf8.decode(self._tokenizer.decode_bytes(ids))

    def finish(self):
        """The text of any bytes still held back (an incomplete character -> U+FFFD)."""
        return self._utf8.decode(b"", final=True)
