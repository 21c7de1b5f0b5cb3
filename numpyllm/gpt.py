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

Checkpoints are Hugging Face GPT-2 directories: config.json holds GPT2Config keys
(model_type "gpt2", vocab_size, n_positions, n_embd, n_layer, n_head, ...) plus
numpyllm's own "numpyllm_dtype"; model.safetensors holds the tensors as
"transformer.<name>", with nothing transposed and the tied LM head not stored. Reading
also accepts names without the prefix (OpenAI's own GPT-2 files), and drops the old
attention-mask buffers "h.<i>.attn.bias"/"h.<i>.attn.masked_bias". The files
themselves are ``numpyllm.hub``'s business.

Depends on NumPy, ``layers``, ``attention``, ``params`` and ``hub`` (``generation`` is
imported by ``generate``).
"""

import dataclasses
import math
import os
import re

import numpy as np

from . import attention, hub
from ._checks import check_int, check_token_ids
from .params import DTYPES, flat_views
from .layers import (
    block_backward,
    block_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    tied_decoder_backward,
    tied_decoder_forward,
)

__all__ = ["GPTConfig", "GPT", "param_shapes", "block_param_shapes", "config_from_hf", "config_to_hf",
           "read_checkpoint", "write_checkpoint"]

_PREFIX = "transformer."  # Hugging Face GPT2LMHeadModel's state-dict prefix of the decoder
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, not parameters

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
        if self.dtype not in DTYPES:
            raise ValueError(f"GPTConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")


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


# --------------------------------------------------------------------------- Hugging Face files


def config_from_hf(hf_config, dtype=None):
    """Build a ``GPTConfig`` from a parsed GPT-2 config.json, rejecting what numpyllm cannot compute.

    dtype: "float32"/"float64" to load as; None takes config.json's "numpyllm_dtype",
    else float32 (Hugging Face's float16/bfloat16 checkpoints are widened).
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"config.json has model_type {model_type!r}; numpyllm reads GPT-2 checkpoints ('gpt2')")
    sizes = {}
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        value = hf_config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.json must have {key!r} as a positive int, got {value!r}")
        sizes[key] = value
    # Settings GPT-2 may vary but numpyllm's model does not: each must have GPT-2's default.
    fixed = {
        "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # both the tanh approximation
        "layer_norm_epsilon": (1e-5,),
        "n_inner": (None, 4 * sizes["n_embd"]),
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
        "add_cross_attention": (False,),
        "tie_word_embeddings": (True,),
    }
    for key, supported in fixed.items():
        value = hf_config.get(key, supported[0])
        if value not in supported:
            raise ValueError(f"config.json has {key}={value!r}; numpyllm supports only {list(supported)}")
    if dtype is None:
        dtype = hf_config.get("numpyllm_dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return GPTConfig(
        vocab_size=sizes["vocab_size"],
        block_size=sizes["n_positions"],
        n_layer=sizes["n_layer"],
        n_head=sizes["n_head"],
        n_embd=sizes["n_embd"],
        dtype=dtype,
    )


def config_to_hf(config):
    """The config.json dict for ``config``: a GPT2Config that transformers loads as this model."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # the older name of n_positions, still read by old tools
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        # numpyllm trains without dropout; zeros make a transformers fine-tune behave the same.
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": config.dtype,
        "numpyllm_dtype": config.dtype,
    }


def _params_from_stored(tensors, expected, source):
    """Map stored names to numpyllm's: strip "transformer.", drop mask buffers, check the tied head."""
    params = {}
    lm_head = None
    for stored_name, tensor in tensors.items():
        name = stored_name[len(_PREFIX):] if stored_name.startswith(_PREFIX) else stored_name
        if _MASK_BUFFER.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head = tensor
            continue
        params[name] = tensor
    hub.check_param_shapes(params, expected, source)
    if lm_head is not None and not np.array_equal(lm_head, params["wte.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; numpyllm ties the LM head "
                         "to the token embedding and cannot load an untied one")
    return params


def read_checkpoint(directory, dtype=None):
    """Read a GPT-2 checkpoint directory -> (config: GPTConfig, params: dict[str, ndarray]).

    ``params`` holds every parameter by numpyllm's name (GPT-2's without "transformer."),
    in the Conv1D layout (in, out), as C-contiguous arrays of ``config.dtype`` (copied only to convert).
    dtype: "float32"/"float64" to load as; None takes config.json's "numpyllm_dtype",
    else float32. Raises FileNotFoundError for a missing directory or file, ValueError
    for a config that is not GPT-2 or a setting numpyllm does not compute, and for
    missing, unexpected or mis-shaped tensors (each named).
    """
    config_path = os.path.join(os.fspath(directory), hub.CONFIG_NAME)
    hf_config = hub.read_config(directory, "a GPT-2 configuration object", "gpt2")
    try:
        config = config_from_hf(hf_config, dtype)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{config_path}: {error}") from None
    tensors = hub.read_weights(directory)
    # Before param_shapes: a config claiming a far larger model fails here, not by building its
    # list of shapes (a few tensors missing are named by _params_from_stored below).
    C = config.n_embd
    hub.check_model_fits_weights(directory, (config.vocab_size + config.block_size + 2) * C + config.n_layer * sum(
        math.prod(shape) for _, shape in block_param_shapes(C)), tensors)
    expected = dict(param_shapes(config))
    params = _params_from_stored(tensors, expected, f"checkpoint {directory!r}")
    return config, {name: np.ascontiguousarray(params[name], dtype=config.dtype) for name in expected}


def write_checkpoint(directory, config, params):
    """Write ``params`` and ``config`` as a GPT-2 checkpoint directory (created if missing).

    Tensors are stored as "transformer.<name>" in ``config.dtype``; both files are
    written atomically (see ``numpyllm.hub.write_pretrained``).
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    expected = dict(param_shapes(config))
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> numpy.ndarray, got {type(params).__name__}")
    hub.check_param_shapes(params, expected, "params")
    stored = {_PREFIX + name: np.asarray(params[name], dtype=config.dtype) for name in expected}
    hub.write_pretrained(directory, config_to_hf(config), stored)


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
        logits, head = tied_decoder_forward(x, p["wte.weight"])  # tied head: (B, T, C) @ (C, V)
        return logits, (embedding, blocks, ln_f, head)

    def _backward(self, dlogits, caches):
        """Gradients of every parameter from dlogits (B, T, V): dict of views into one flat buffer."""
        embedding, blocks, ln_f, head = caches
        flat_grads = np.empty_like(self.flat_params)
        grads = flat_views(flat_grads, self._shapes)
        dx, grads["wte.weight"][...], _ = tied_decoder_backward(dlogits, head)  # (V, C)
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
        targets = _check_tokens(targets, "targets", self.config, low=None)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have idx's shape {idx.shape}, got {targets.shape}")
        if np.all(targets < 0):
            raise ValueError("targets has no position to score: every entry is negative (ignored)")
        logits, caches = self._forward(idx)
        # The (B, T, V) logits, then probabilities, then dlogits share one array: the largest
        # of a step's activations is allocated (and its pages faulted in) once, not three times.
        loss, cross_entropy = cross_entropy_forward(logits, targets, out=logits)
        dlogits = cross_entropy_backward(1.0, cross_entropy, out=cross_entropy[0])
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
        (numpyllm's saved dtype, else float32). See ``read_checkpoint``.
        """
        config, params = read_checkpoint(directory, dtype=dtype)
        model = cls.__new__(cls)
        model._allocate(config, attention_backend)
        for name, view in model.params.items():  # read_checkpoint checked every name and shape
            view[...] = params[name]
        return model

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors that transformers.GPT2LMHeadModel loads (atomically)."""
        write_checkpoint(directory, self.config, self.params)
