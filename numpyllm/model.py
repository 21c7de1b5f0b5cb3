"""GPT-2 in NumPy: the configuration, the parameters, and the model that composes the layers.

The model calls the layer pairs of ``numpyllm.layers`` forward in order and backward in
reverse; it never re-derives a layer's math. Parameters are GPT-2's, named as in Hugging
Face's state dict without the "transformer." prefix, in its Conv1D layout (in, out):

    wte.weight (V, C)   wpe.weight (block_size, C)
    h.<i>.ln_1.weight / .bias (C,)           h.<i>.attn.c_attn.weight (C, 3C) / .bias (3C,)
    h.<i>.attn.c_proj.weight (C, C) / .bias  h.<i>.ln_2.weight / .bias (C,)
    h.<i>.mlp.c_fc.weight (C, 4C) / .bias    h.<i>.mlp.c_proj.weight (4C, C) / .bias (C,)
    ln_f.weight / .bias (C,)

The LM head is tied to wte (logits = x @ wteᵀ) and has no tensor of its own. All
parameters live in one flat buffer, ``model.flat_params``; ``model.params[name]`` are
views into it. Gradients come back the same way: a dict of views into one flat buffer.

Depends on NumPy only (``numpyllm.hub``, used by from_pretrained/save_pretrained, is
imported when called).
"""

import dataclasses
import math

import numpy as np

from . import attention
from ._checks import check_int, check_token_ids
from .layers import (
    IGNORE_INDEX,
    block_backward,
    block_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)

__all__ = ["GPTConfig", "GPT", "param_shapes", "block_param_shapes", "flat_views"]

_DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT; the defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence (number of learned positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dtype: str = "float32"  # parameters and computation: "float32" or "float64"

    def __post_init__(self):
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(getattr(self, field), f"GPTConfig.{field}", 1)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd must be a multiple of n_head, got n_embd={self.n_embd}, n_head={self.n_head}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"GPTConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")


def block_param_shapes(n_embd):
    """[(name, shape), ...] of one transformer block's parameters, under the block's own names."""
    C = n_embd
    return [
        ("ln_1.weight", (C,)),
        ("ln_1.bias", (C,)),
        ("attn.c_attn.weight", (C, 3 * C)),
        ("attn.c_attn.bias", (3 * C,)),
        ("attn.c_proj.weight", (C, C)),
        ("attn.c_proj.bias", (C,)),
        ("ln_2.weight", (C,)),
        ("ln_2.bias", (C,)),
        ("mlp.c_fc.weight", (C, 4 * C)),
        ("mlp.c_fc.bias", (4 * C,)),
        ("mlp.c_proj.weight", (4 * C, C)),
        ("mlp.c_proj.bias", (C,)),
    ]


def param_shapes(config):
    """[(name, shape), ...] of every parameter of a GPT with this config, in a fixed order."""
    V, C = config.vocab_size, config.n_embd
    shapes = [("wte.weight", (V, C)), ("wpe.weight", (config.block_size, C))]
    for i in range(config.n_layer):
        shapes += [(f"h.{i}.{name}", shape) for name, shape in block_param_shapes(C)]
    shapes += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    return shapes


def flat_views(buffer, shapes):
    """{name: view} of consecutive slices of the 1-D ``buffer``, reshaped to ``shapes``.

    buffer: 1-D array of exactly Σ prod(shape) elements; shapes: [(name, shape), ...].
    Writing into a view writes into ``buffer``, so one vector operation on the buffer
    (zeroing, an optimizer step, a norm) covers every tensor.
    """
    sizes = [math.prod(shape) for _, shape in shapes]
    if buffer.ndim != 1 or buffer.size != sum(sizes):
        raise ValueError(f"buffer must be 1-D with {sum(sizes)} elements for these shapes, got shape {buffer.shape}")
    views, offset = {}, 0
    for (name, shape), size in zip(shapes, sizes):
        views[name] = buffer[offset: offset + size].reshape(shape)
        offset += size
    return views


def _check_tokens(array, name, config, low):
    """Validate a (B, T) integer array with entries in [low, vocab_size); return it as ndarray."""
    array = check_token_ids(array, name, config.vocab_size, low)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got shape {array.shape}")
    B, T = array.shape
    if B < 1 or not 1 <= T <= config.block_size:
        raise ValueError(f"{name} must have shape (B, T) with B >= 1 and 1 <= T <= block_size="
                         f"{config.block_size}, got {array.shape}")
    return array


class GPT:
    """GPT-2: learned positions, pre-LN blocks, GELU (tanh) MLP of 4·n_embd, tied LM head.

    Parameters
    ----------
    config : GPTConfig
    seed : int or None
        Seeds GPT-2's initialisation (see ``_initialize``); the same seed gives the same
        weights in float32 and float64 (drawn in float64, then rounded).
    attention_backend : {"auto", "numpy", "cython"}
        Passed to ``numpyllm.attention`` for every attention call.

    Attributes
    ----------
    config, attention_backend
    flat_params : 1-D ndarray of config.dtype, every parameter back to back
    params : dict[str, ndarray], views into flat_params by GPT-2 name. Update them in
        place (``params[name][...] = x``) so they stay views of flat_params.
    """

    def __init__(self, config, seed=0, attention_backend="auto"):
        self._allocate(config, attention_backend)
        self._initialize(seed)

    def _allocate(self, config, attention_backend):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        if attention_backend not in attention.BACKENDS:
            raise ValueError(f"attention_backend must be one of {attention.BACKENDS}, got {attention_backend!r}")
        self.config = config
        self.attention_backend = attention_backend
        self._shapes = param_shapes(config)
        self.flat_params = np.empty(sum(math.prod(s) for _, s in self._shapes), dtype=config.dtype)
        self.params = flat_views(self.flat_params, self._shapes)

    def _initialize(self, seed):
        """GPT-2's initialisation: weights ~ N(0, 0.02²), the residual output projections
        (attn.c_proj, mlp.c_proj) ~ N(0, (0.02 / sqrt(2 · n_layer))²), biases 0, layernorm gains 1."""
        check_int(seed, "seed", 0, optional=True)
        rng = np.random.default_rng(seed)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.params.items():
            if name.endswith(".bias"):
                p[...] = 0.0
            elif p.ndim == 1:  # a layernorm gain
                p[...] = 1.0
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                p[...] = rng.normal(0.0, std, size=p.shape)

    @property
    def num_params(self):
        """Number of trainable scalars (the tied LM head counted once)."""
        return self.flat_params.size

    def block_params(self, i):
        """The parameters of block i under the block's own names ("ln_1.weight", ...)."""
        return {name: self.params[f"h.{i}.{name}"] for name, _ in block_param_shapes(self.config.n_embd)}

    # ------------------------------------------------------------------ forward / backward

    def _forward(self, idx):
        """idx (B, T) -> logits (B, T, V) and the caches the backward needs."""
        p, config, backend = self.params, self.config, self.attention_backend
        x, embedding = embedding_forward(idx, p["wte.weight"], p["wpe.weight"])  # (B, T, C)
        blocks = []
        for i in range(config.n_layer):
            x, block = block_forward(x, self.block_params(i), config.n_head, backend)
            blocks.append(block)
        x, ln_f = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        logits, head = linear_forward(x, p["wte.weight"].T)  # tied head: (B, T, C) @ (C, V)
        return logits, (embedding, blocks, ln_f, head)

    def _backward(self, dlogits, caches):
        """Gradients of every parameter from dlogits (B, T, V): dict of views into one flat buffer."""
        embedding, blocks, ln_f, head = caches
        flat_grads = np.empty_like(self.flat_params)
        grads = flat_views(flat_grads, self._shapes)
        dx, dwte_head, _ = linear_backward(dlogits, head)  # dwte_head: (C, V)
        grads["wte.weight"][...] = dwte_head.T
        dx, grads["ln_f.weight"][...], grads["ln_f.bias"][...] = layernorm_backward(dx, ln_f)
        for i in reversed(range(self.config.n_layer)):
            dx, block_grads = block_backward(dx, blocks[i])
            for name, g in block_grads.items():
                grads[f"h.{i}.{name}"][...] = g
        dwte_embedding, grads["wpe.weight"][...] = embedding_backward(dx, embedding)
        grads["wte.weight"] += dwte_embedding  # the tied table: head use + embedding use
        return grads

    def __call__(self, idx):
        """Logits of the next token at every position.

        idx: (B, T) integer token ids in [0, vocab_size), 1 <= T <= block_size
        -> logits: (B, T, vocab_size) in config.dtype.
        """
        idx = _check_tokens(idx, "idx", self.config, low=0)
        logits, _ = self._forward(idx)
        return logits

    def loss_and_grads(self, idx, targets):
        """Mean cross-entropy of ``targets`` under the model, and its gradient.

        idx: (B, T) token ids; targets: (B, T) token ids or -1 (ignored: padding), with at
        least one target that is not -1. The loss is the mean over those positions.
        Returns (loss: float, grads: dict[str, ndarray] with the names and shapes of
        ``params``, views into one fresh flat buffer of config.dtype).
        """
        idx = _check_tokens(idx, "idx", self.config, low=0)
        targets = _check_tokens(targets, "targets", self.config, low=IGNORE_INDEX)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have idx's shape {idx.shape}, got {targets.shape}")
        if np.all(targets == IGNORE_INDEX):
            raise ValueError(f"targets has no position to score: every entry is {IGNORE_INDEX} (ignored)")
        logits, caches = self._forward(idx)
        loss, cross_entropy = cross_entropy_forward(logits, targets)
        del logits  # the cross-entropy cache holds the probabilities; free the logits now
        dlogits = cross_entropy_backward(1.0, cross_entropy)
        return loss, self._backward(dlogits, caches)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 stop_tokens=None):
        """Continue the prompts idx (B, T) by up to max_new_tokens tokens -> int64 (B, T + new).

        KV-cached; temperature 0 is greedy; top_k / top_p restrict the sampling; the same
        seed gives the same tokens; a row that samples one of ``stop_tokens`` stops growing
        (padded with that token) and generation ends when all rows have. See
        ``numpyllm.generation.generate`` for the details.
        """
        from .generation import generate

        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens)

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, directory, attention_backend="auto", dtype=None):
        """Load a GPT-2 checkpoint directory (Hugging Face's format, or one save_pretrained wrote).

        dtype: "float32"/"float64" to compute in; None takes the checkpoint's own
        (numpyllm's saved dtype, else float32). See ``numpyllm.hub.read_checkpoint``.
        """
        from . import hub

        config, params = hub.read_checkpoint(directory, dtype=dtype)
        model = cls.__new__(cls)
        model._allocate(config, attention_backend)
        for name, view in model.params.items():  # read_checkpoint checked every name and shape
            view[...] = params[name]
        return model

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors that transformers.GPT2LMHeadModel loads (atomically)."""
        from . import hub

        hub.write_checkpoint(directory, self.config, self.params)
