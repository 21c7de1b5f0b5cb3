"""BERT in NumPy: the configuration, the parameters, the encoder and its three heads.

The classes compose the layer pairs of ``numpyllm.layers`` forward in order and
backward in reverse, as ``numpyllm.gpt`` does; nothing here re-derives a layer's math.
BERT as Hugging Face implements it:

    x = LayerNorm(word[input_ids] + position[t] + token_type[token_type_ids])
    per layer (post-LN):  x = LayerNorm(x + SelfAttention(x, padding mask))
                          x = LayerNorm(x + dense_out(act(dense_in(x))))
    pooled = tanh(x[:, 0] @ Wpᵀ + bp)                        (the [CLS] position)
    MLM:  logits = LayerNorm(act(x @ Wtᵀ + bt)) @ wordᵀ + bias   (decoder tied to word embeddings)
    NSP:  pooled @ Wnᵀ + bn (2 classes);  classifier: pooled @ Wcᵀ + bc (num_labels)

Parameters carry transformers' state-dict names and (out, in) layout:

    [bert.]embeddings.word_embeddings.weight (V, C)    .position_embeddings.weight (P, C)
    [bert.]embeddings.token_type_embeddings.weight (type_vocab_size, C)    .LayerNorm.weight/.bias (C,)
    [bert.]encoder.layer.<i>.attention.self.query/key/value.weight (C, C) / .bias (C,)
    [bert.]encoder.layer.<i>.attention.output.dense.weight (C, C)    .attention.output.LayerNorm.*
    [bert.]encoder.layer.<i>.intermediate.dense.weight (I, C)    .output.dense.weight (C, I)    .output.LayerNorm.*
    [bert.]pooler.dense.weight (C, C) / .bias         (not in BertForMaskedLM, as in transformers)
    cls.predictions.transform.dense.weight (C, C), .transform.LayerNorm.*, cls.predictions.bias (V,)
    cls.seq_relationship.weight (2, C) / .bias        classifier.weight (num_labels, C) / .bias

BertModel's names have no "bert." prefix. All live in one flat buffer (``flat_params``)
with ``params[name]`` views, so AdamW, clipping and checkpoints treat them as GPT's.
The query, key and value tensors of a layer lie back to back in that buffer (weights,
then biases), so the stacked [Wq; Wk; Wv] (3C, C) is a view and the three projections
run as the one product GPT-2's c_attn uses (``layers.self_attention_forward``).

The padding mask: ``attention_mask`` (1 = token, 0 = padding, right-padded) becomes the
lengths (B,) that ``numpyllm.attention`` takes as ``key_lengths``. The encoder works on rows
(N, C): every position for outputs returned per position (as transformers computes them),
the real tokens only for the heads' losses and the classifier's logits, which no padded
position can change (no real token attends to one): the padding costs no matrix product.
The [PAD] row of the word embeddings gets no gradient from lookups (transformers'
``padding_idx``).

Checkpoints are Hugging Face BERT directories (config.json with model_type "bert", and
model.safetensors, shards or pytorch_model.bin; the files are ``numpyllm.hub``'s business).

Depends on NumPy, ``layers``, ``attention``, ``params``, ``hub`` and ``_checks``.
"""

import dataclasses
import math
import os
import re
import warnings

import numpy as np

from . import attention, hub
from ._checks import check_int, check_real, check_token_ids
from .layers import (
    ACTIVATIONS,
    bce_with_logits_backward,
    bce_with_logits_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    lookup_backward,
    lookup_forward,
    mlp_backward,
    mlp_forward,
    mse_backward,
    mse_forward,
    self_attention_backward,
    self_attention_forward,
    tanh_backward,
    tanh_forward,
    tied_decoder_backward,
    tied_decoder_forward,
)
from .params import DTYPES, flat_span, flat_views

__all__ = ["BertConfig", "BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification",
           "PROBLEM_TYPES", "config_from_hf", "config_to_hf"]

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
_PREFIX = "bert."  # the encoder's state-dict prefix inside the three heads


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT; the defaults are bert-base-uncased's. Field names are transformers'.

    hidden_act: "gelu" (exact erf form), "gelu_new" or "gelu_pytorch_tanh" (the tanh form).
    num_labels, problem_type, id2label, label2id: BertForSequenceClassification's labels;
    id2label {int: str} defaults to {i: "LABEL_i"} and label2id to its inverse.
    initializer_range: std of the normal initialisation; pad_token_id: the word-embedding
    row initialised to zero (as transformers does).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    num_labels: int = 2
    problem_type: object = None  # None (inferred from the labels) or one of PROBLEM_TYPES
    dtype: str = "float32"  # parameters and computation: "float32" or "float64"
    initializer_range: float = 0.02
    pad_token_id: int = 0
    id2label: object = None  # dict {int: str}
    label2id: object = None  # dict {str: int}

    def __post_init__(self):
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size", "num_labels"):
            check_int(getattr(self, field), f"BertConfig.{field}", 1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size must be a multiple of num_attention_heads, got "
                             f"hidden_size={self.hidden_size}, num_attention_heads={self.num_attention_heads}")
        check_real(self.layer_norm_eps, "BertConfig.layer_norm_eps", 0.0, low_inclusive=False)
        check_real(self.initializer_range, "BertConfig.initializer_range", 0.0)
        check_int(self.pad_token_id, "BertConfig.pad_token_id", 0)
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id must be < vocab_size={self.vocab_size}, got {self.pad_token_id}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {list(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"BertConfig.problem_type must be None or one of {list(PROBLEM_TYPES)}, "
                             f"got {self.problem_type!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"BertConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        self._set_labels()

    def _set_labels(self):
        """Fill in and check id2label / label2id (a frozen dataclass: set through object.__setattr__)."""
        id2label, label2id = self.id2label, self.label2id

        def default_names(n):
            return {i: f"LABEL_{i}" for i in range(n)}

        if id2label is None or (id2label == default_names(len(id2label)) and len(id2label) != self.num_labels):
            # unnamed labels follow num_labels (as transformers' num_labels setter does), e.g. after
            # dataclasses.replace(config, num_labels=3)
            id2label, label2id = default_names(self.num_labels), None
        if not isinstance(id2label, dict) or sorted(id2label) != list(range(self.num_labels)) \
                or not all(isinstance(name, str) for name in id2label.values()):
            raise ValueError(f"BertConfig.id2label must map each id 0..num_labels-1 ({self.num_labels} labels) "
                             f"to a str name, got {id2label!r}")
        id2label = {i: id2label[i] for i in range(self.num_labels)}
        if label2id is None:
            label2id = {name: i for i, name in id2label.items()}
        if not isinstance(label2id, dict) or any(id2label.get(i) != name for name, i in label2id.items()) \
                or len(label2id) != len(set(id2label.values())):
            raise ValueError(f"BertConfig.label2id must be the inverse of id2label {id2label!r}, got {label2id!r}")
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "label2id", dict(label2id))


# --------------------------------------------------------------------------- parameter layout

_QKV = ("query", "key", "value")


def layer_param_shapes(config):
    """[(name, shape), ...] of one encoder layer, under the layer's own names.

    The query, key and value weights come back to back, then their biases, so that each
    group is one stacked view of the flat buffer (see ``_Bert._layer_views``).
    """
    C, I = config.hidden_size, config.intermediate_size
    return [
        *[(f"attention.self.{n}.weight", (C, C)) for n in _QKV],
        *[(f"attention.self.{n}.bias", (C,)) for n in _QKV],
        ("attention.output.dense.weight", (C, C)),
        ("attention.output.dense.bias", (C,)),
        ("attention.output.LayerNorm.weight", (C,)),
        ("attention.output.LayerNorm.bias", (C,)),
        ("intermediate.dense.weight", (I, C)),
        ("intermediate.dense.bias", (I,)),
        ("output.dense.weight", (C, I)),
        ("output.dense.bias", (C,)),
        ("output.LayerNorm.weight", (C,)),
        ("output.LayerNorm.bias", (C,)),
    ]


def encoder_param_shapes(config, pooler=True):
    """[(name, shape), ...] of BertModel's parameters (names without "bert."), in the flat buffer's order."""
    C = config.hidden_size
    shapes = [
        ("embeddings.word_embeddings.weight", (config.vocab_size, C)),
        ("embeddings.position_embeddings.weight", (config.max_position_embeddings, C)),
        ("embeddings.token_type_embeddings.weight", (config.type_vocab_size, C)),
        ("embeddings.LayerNorm.weight", (C,)),
        ("embeddings.LayerNorm.bias", (C,)),
    ]
    for i in range(config.num_hidden_layers):
        shapes += [(f"encoder.layer.{i}.{name}", shape) for name, shape in layer_param_shapes(config)]
    if pooler:
        shapes += [("pooler.dense.weight", (C, C)), ("pooler.dense.bias", (C,))]
    return shapes


def _mlm_head_shapes(config):
    C = config.hidden_size
    return [
        ("cls.predictions.transform.dense.weight", (C, C)),
        ("cls.predictions.transform.dense.bias", (C,)),
        ("cls.predictions.transform.LayerNorm.weight", (C,)),
        ("cls.predictions.transform.LayerNorm.bias", (C,)),
        ("cls.predictions.bias", (config.vocab_size,)),
    ]


def _nsp_head_shapes(config):
    return [("cls.seq_relationship.weight", (2, config.hidden_size)), ("cls.seq_relationship.bias", (2,))]


def _classifier_shapes(config):
    return [("classifier.weight", (config.num_labels, config.hidden_size)), ("classifier.bias", (config.num_labels,))]


# --------------------------------------------------------------------------- input checks


def _check_input_ids(input_ids, config):
    ids = check_token_ids(input_ids, "input_ids", config.vocab_size)
    if ids.ndim != 2 or ids.shape[0] < 1 or not 1 <= ids.shape[1] <= config.max_position_embeddings:
        raise ValueError(f"input_ids must have shape (B, T) with B >= 1 and 1 <= T <= max_position_embeddings="
                         f"{config.max_position_embeddings}, got {ids.shape}")
    return ids


def _check_token_type_ids(token_type_ids, shape, config):
    if token_type_ids is None:
        return np.zeros(shape, dtype=np.intp)
    types = check_token_ids(token_type_ids, "token_type_ids", config.type_vocab_size)
    if types.shape != shape:
        raise ValueError(f"token_type_ids must have input_ids' shape {shape}, got {types.shape}")
    return types


def _key_lengths(attention_mask, shape):
    """attention_mask (B, T) of 1 (token) / 0 (right padding) -> lengths (B,), or None when nothing is padded."""
    if attention_mask is None:
        return None
    mask = np.asarray(attention_mask)
    if mask.shape != shape:
        raise ValueError(f"attention_mask must have input_ids' shape {shape}, got {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"attention_mask must hold 0/1 numbers, got dtype {mask.dtype}")
    if not np.all((mask == 0) | (mask == 1)):
        bad = mask[(mask != 0) & (mask != 1)].flat[0]
        raise ValueError(f"attention_mask entries must be 0 (padding) or 1 (token), got {bad}")
    lengths = np.count_nonzero(mask, axis=1)
    if lengths.min() < 1:
        raise ValueError(f"attention_mask must mark at least one token in every row; "
                         f"row {int(np.argmin(lengths))} is all padding")
    right_padded = np.arange(shape[1]) < lengths[:, None]  # (B, T): ones, then zeros
    if not np.array_equal(mask != 0, right_padded):
        row = int(np.flatnonzero(np.any((mask != 0) != right_padded, axis=1))[0])
        raise ValueError(f"attention_mask must be right-padded (1s then 0s in each row); row {row} is "
                         f"{mask[row].astype(int).tolist()}")
    return None if lengths.min() == shape[1] else lengths


def _check_mlm_labels(labels, name, shape, vocab_size, attention_mask):
    """MLM labels (B, T): token ids or negative (not scored); none may score a padded position."""
    labels = _check_class_labels(labels, shape, vocab_size, name)
    if attention_mask is not None and np.any((labels >= 0) & (np.asarray(attention_mask) == 0)):
        raise ValueError(f"{name} scores a padded position (attention_mask 0); give padding a negative label")
    return labels


def _check_class_labels(labels, shape, n_classes, name):
    """Integer labels in [0, n_classes) or negative (ignored), of ``shape``, at least one scored."""
    labels = check_token_ids(labels, name, n_classes, low=None)
    if labels.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {labels.shape}")
    if np.all(labels < 0):
        raise ValueError(f"{name} has nothing to score: every entry is negative (ignored)")
    return labels


# --------------------------------------------------------------------------- the shared encoder


class _Bert:
    """What the four classes share: the flat buffer, initialisation, the encoder, checkpoints.

    A subclass sets ``_encoder_prefix`` ("bert." or ""), ``_pooler`` and ``_head_shapes``,
    and composes ``_encode`` / ``_encode_backward`` with its head.
    """

    _encoder_prefix = _PREFIX
    _pooler = True

    @staticmethod
    def _head_shapes(config):
        return []

    @classmethod
    def param_shapes(cls, config):
        """[(name, shape), ...] of every parameter of this class for ``config``, in the flat buffer's order."""
        encoder = [(cls._encoder_prefix + n, s) for n, s in encoder_param_shapes(config, cls._pooler)]
        return encoder + cls._head_shapes(config)

    def __init__(self, config, seed=0, attention_backend="auto"):
        self._allocate(config, attention_backend)
        self._initialize(seed)

    def _allocate(self, config, attention_backend):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        if attention_backend not in attention.BACKENDS:
            raise ValueError(f"attention_backend must be one of {attention.BACKENDS}, got {attention_backend!r}")
        self.config = config
        self.attention_backend = attention_backend
        self._shapes = self.param_shapes(config)
        self.flat_params = np.empty(sum(math.prod(s) for _, s in self._shapes), dtype=config.dtype)
        self.params = flat_views(self.flat_params, self._shapes)
        self._layers = [self._layer_views(self.params, self.flat_params, i) for i in range(config.num_hidden_layers)]

    def _initialize(self, seed, names=None):
        """transformers' initialisation: weights and embeddings ~ N(0, initializer_range²), the
        pad_token_id row of the word embeddings 0, biases 0, LayerNorm gains 1, LayerNorm biases 0.

        names: the tensors to initialise (default: all), in the flat buffer's order.
        """
        check_int(seed, "seed", 0, optional=True)
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        for name in self.params if names is None else names:
            p = self.params[name]
            if name.endswith("bias"):  # "...bias" includes cls.predictions.bias
                p[...] = 0.0
            elif "LayerNorm" in name:
                p[...] = 1.0
            else:
                p[...] = rng.normal(0.0, std, size=p.shape)
                if name.endswith("word_embeddings.weight"):
                    p[self.config.pad_token_id] = 0.0

    @property
    def num_params(self):
        """Number of trainable scalars (the tied decoder counted once)."""
        return self.flat_params.size

    def _layer_views(self, views, buffer, i):
        """Layer i's tensors of ``views`` (params or grads) by short name, plus the stacked
        "qkv.weight" (3C, C) = [Wq; Wk; Wv] and "qkv.bias" (3C,), views into ``buffer``."""
        prefix = f"{self._encoder_prefix}encoder.layer.{i}."
        names = [name for name, _ in layer_param_shapes(self.config)]
        layer = {name: views[prefix + name] for name in names}
        C = self.config.hidden_size
        for part, shape in (("weight", (3 * C, C)), ("bias", (3 * C,))):
            stacked = [f"{prefix}attention.self.{n}.{part}" for n in _QKV]
            layer[f"qkv.{part}"] = flat_span(buffer, self._shapes, stacked).reshape(shape)
        return layer

    def _new_grads(self):
        """(grads dict of views into one fresh flat buffer, per-layer views of it); the backward writes every entry."""
        flat_grads = np.empty_like(self.flat_params)
        grads = flat_views(flat_grads, self._shapes)
        layers = [self._layer_views(grads, flat_grads, i) for i in range(self.config.num_hidden_layers)]
        return grads, layers

    def _check_inputs(self, input_ids, token_type_ids, attention_mask, packed):
        """Validated (ids, types, key_lengths, rows). rows = (index, B, T): the positions the encoder
        computes, as index (N,) into the flattened batch, or None for all of them (N = B·T).
        packed: only the real tokens. A loss that reads no padded position (the heads' losses)
        packs: no output it reads depends on a padded position, since no real token attends to one."""
        ids = _check_input_ids(input_ids, self.config)
        types = _check_token_type_ids(token_type_ids, ids.shape, self.config)
        key_lengths = _key_lengths(attention_mask, ids.shape)
        B, T = ids.shape
        index = None
        if packed and key_lengths is not None:
            index = np.flatnonzero(np.arange(T) < key_lengths[:, None])  # right padding: each row's first L[b]
        return ids, types, key_lengths, (index, B, T)

    # ------------------------------------------------------------------ the encoder

    def _encode(self, ids, types, key_lengths, rows):
        """ids, types (B, T), key_lengths (B,) or None, rows (see _check_inputs)
        -> x (N, C) the last hidden state of the rows, pooled (B, C) or None, cache."""
        p, c, e = self.params, self.config, self._encoder_prefix
        index, B, T = rows
        flat = np.arange(B * T) if index is None else index  # the rows' positions in the flattened batch
        x, word = lookup_forward(ids.ravel()[flat], p[e + "embeddings.word_embeddings.weight"])  # (N, C)
        h, position = lookup_forward(flat % T, p[e + "embeddings.position_embeddings.weight"])
        x += h
        h, token_type = lookup_forward(types.ravel()[flat], p[e + "embeddings.token_type_embeddings.weight"])
        x += h
        x, ln = layernorm_forward(x, p[e + "embeddings.LayerNorm.weight"], p[e + "embeddings.LayerNorm.bias"],
                                  c.layer_norm_eps)
        layers = []
        for layer in self._layers:
            x, cache = self._layer_forward(x, layer, key_lengths, rows)
            layers.append(cache)
        pooled = pooler = None
        if self._pooler:  # tanh(h[CLS] @ Wpᵀ + bp), [CLS] being each sequence's first position
            cls_rows = np.flatnonzero(flat % T == 0)  # (B,)
            pooled, dense = linear_forward(x[cls_rows], p[e + "pooler.dense.weight"].T, p[e + "pooler.dense.bias"])
            pooled, tanh = tanh_forward(pooled)
            pooler = (cls_rows, dense, tanh)
        return x, pooled, (word, position, token_type, ln, layers, pooler)

    def _layer_forward(self, x, p, key_lengths, rows):
        """One post-LN encoder layer: x = LN(x + attention(x)); x = LN(x + mlp(x)). x: (N, C) rows."""
        c = self.config
        a, attn = self_attention_forward(x, p["qkv.weight"].T, p["qkv.bias"], p["attention.output.dense.weight"].T,
                                         p["attention.output.dense.bias"], c.num_attention_heads,
                                         self.attention_backend, causal=False, key_lengths=key_lengths, rows=rows)
        x, ln_1 = layernorm_forward(x + a, p["attention.output.LayerNorm.weight"],
                                    p["attention.output.LayerNorm.bias"], c.layer_norm_eps)
        h, mlp = mlp_forward(x, p["intermediate.dense.weight"].T, p["intermediate.dense.bias"],
                             p["output.dense.weight"].T, p["output.dense.bias"], c.hidden_act)
        x, ln_2 = layernorm_forward(x + h, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], c.layer_norm_eps)
        return x, (attn, ln_1, mlp, ln_2)

    @staticmethod
    def _layer_backward(dx, cache, g):
        """Backward of _layer_forward; writes the layer's gradients into g (its grads views). dx: (N, C)."""
        attn, ln_1, mlp, ln_2 = cache
        dx, g["output.LayerNorm.weight"][...], g["output.LayerNorm.bias"][...] = layernorm_backward(dx, ln_2)
        dh, dw_in, g["intermediate.dense.bias"][...], dw_out, g["output.dense.bias"][...] = mlp_backward(dx, mlp)
        g["intermediate.dense.weight"][...], g["output.dense.weight"][...] = dw_in.T, dw_out.T  # to (out, in)
        dx += dh
        dx, g["attention.output.LayerNorm.weight"][...], g["attention.output.LayerNorm.bias"][...] = (
            layernorm_backward(dx, ln_1))
        da, dw_qkv, g["qkv.bias"][...], dw_proj, g["attention.output.dense.bias"][...] = (
            self_attention_backward(dx, attn))
        g["qkv.weight"][...], g["attention.output.dense.weight"][...] = dw_qkv.T, dw_proj.T
        dx += da
        return dx

    def _encode_backward(self, dx, dpooled, cache, grads, layer_grads, dword=None):
        """Backward of _encode: writes every encoder gradient into ``grads``.

        dx: (N, C) the gradient of the rows' last hidden state, or None (zero); dpooled: (B, C) or
        None; dword: the word embeddings' gradient from elsewhere (a tied decoder's), or None.
        """
        word, position, token_type, ln, layers, pooler = cache
        e = self._encoder_prefix
        dx = np.zeros(ln[0].shape, dtype=self.flat_params.dtype) if dx is None else dx.copy()
        if dpooled is not None:
            cls_rows, dense, tanh = pooler
            dh, dw, grads[e + "pooler.dense.bias"][...] = linear_backward(tanh_backward(dpooled, tanh), dense)
            grads[e + "pooler.dense.weight"][...] = dw.T
            dx[cls_rows] += dh
        for cache_i, g in zip(reversed(layers), reversed(layer_grads)):
            dx = self._layer_backward(dx, cache_i, g)
        dx, grads[e + "embeddings.LayerNorm.weight"][...], grads[e + "embeddings.LayerNorm.bias"][...] = (
            layernorm_backward(dx, ln))
        grads[e + "embeddings.token_type_embeddings.weight"][...] = lookup_backward(dx, token_type)
        grads[e + "embeddings.position_embeddings.weight"][...] = lookup_backward(dx, position)
        dlookup = lookup_backward(dx, word)
        dlookup[self.config.pad_token_id] = 0.0  # transformers' padding_idx: lookups of [PAD] do not train its row
        if dword is None:
            grads[e + "embeddings.word_embeddings.weight"][...] = dlookup
        else:
            np.add(dlookup, dword, out=grads[e + "embeddings.word_embeddings.weight"])

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, directory, attention_backend="auto", dtype=None, seed=0, **config_changes):
        """Load a Hugging Face BERT directory (or one ``save_pretrained`` wrote) into this class.

        Tensors this class has and the checkpoint lacks (a classifier or pooler loaded from an
        MLM checkpoint, the heads loaded from a BertModel one) start fresh from ``seed``, with
        one warning naming them and the checkpoint's tensors left unused. dtype:
        "float32"/"float64" (None: the checkpoint's numpyllm dtype, else float32).
        config_changes: BertConfig fields to override (e.g. num_labels=3, id2label=...);
        changing num_labels drops the checkpoint's label names.
        """
        config, tensors = _read_checkpoint(directory, dtype, config_changes)
        model = cls.__new__(cls)
        model._allocate(config, attention_backend)
        fresh, unused = _load_into(model, tensors, hub.weights_file(os.fspath(directory)))
        if fresh:
            model._initialize(seed, fresh)
        if fresh or unused:
            warnings.warn(f"{cls.__name__} loaded from {os.fspath(directory)!r}: "
                          + (f"newly initialized (not in the checkpoint, train them): {fresh}" if fresh else "")
                          + ("; " if fresh and unused else "")
                          + (f"unused checkpoint tensors: {unused}" if unused else ""), stacklevel=2)
        return model

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors that transformers' class of the same name loads (atomically).

        The tied decoder is not stored (transformers ties it on load), as transformers saves it.
        """
        hf_config = config_to_hf(self.config, type(self).__name__)
        stored = {name: np.asarray(p) for name, p in self.params.items()}
        hub.write_pretrained(directory, hf_config, stored)


# --------------------------------------------------------------------------- the four classes


class BertModel(_Bert):
    """The BERT encoder with its pooler: ``model(input_ids)`` -> (hidden (B, T, C), pooled (B, C)).

    Parameters
    ----------
    config : BertConfig
    seed : int or None
        Seeds transformers' initialisation (normal std initializer_range, zero biases,
        LayerNorm ones/zeros); the same seed gives the same weights in float32 and float64.
    attention_backend : {"auto", "numpy", "cython"}
        Passed to ``numpyllm.attention`` for every attention call.

    Attributes
    ----------
    config, attention_backend, flat_params (1-D, every parameter back to back), params
    (dict of views into flat_params by transformers' state-dict name; update in place).
    """

    _encoder_prefix = ""

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
        """input_ids (B, T); token_type_ids (B, T) or None (zeros); attention_mask (B, T) 1/0, right-padded,
        or None (all tokens) -> (hidden (B, T, C), pooled (B, C)) in config.dtype."""
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=False)
        hidden, pooled, _ = self._encode(ids, types, key_lengths, rows)
        return hidden.reshape(*ids.shape, -1), pooled

    def grads(self, input_ids, dhidden, dpooled, token_type_ids=None, attention_mask=None):
        """Gradients of a scalar loss of the outputs, given dloss/dhidden (B, T, C) and dloss/dpooled (B, C)
        (either may be None: zero). Returns a dict like ``params``, views into one fresh flat buffer."""
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=False)
        B, T = ids.shape
        C = self.config.hidden_size
        for name, d, shape in (("dhidden", dhidden, (B, T, C)), ("dpooled", dpooled, (B, C))):
            if d is not None and np.shape(d) != shape:
                raise ValueError(f"{name} must have shape {shape} or be None, got {np.shape(d)}")
        _, _, cache = self._encode(ids, types, key_lengths, rows)  # every position: padded ones have outputs too
        grads, layer_grads = self._new_grads()
        dx = None if dhidden is None else np.asarray(dhidden, dtype=self.config.dtype).reshape(B * T, C)
        dpooled = None if dpooled is None else np.asarray(dpooled, dtype=self.config.dtype)
        self._encode_backward(dx, dpooled, cache, grads, layer_grads)
        return grads


class _MaskedLMHead:
    """The MLM head, mixed into BertForMaskedLM and BertForPreTraining: LN(act(h @ Wtᵀ + bt)) @ wordᵀ + bias."""

    def _mlm_forward(self, hidden):
        """hidden (..., C) -> logits (..., V), cache."""
        p, c = self.params, self.config
        act_forward, act_backward = ACTIVATIONS[c.hidden_act]
        h, dense = linear_forward(hidden, p["cls.predictions.transform.dense.weight"].T,
                                  p["cls.predictions.transform.dense.bias"])
        h, act = act_forward(h)
        h, ln = layernorm_forward(h, p["cls.predictions.transform.LayerNorm.weight"],
                                  p["cls.predictions.transform.LayerNorm.bias"], c.layer_norm_eps)
        logits, decoder = tied_decoder_forward(h, p[_PREFIX + "embeddings.word_embeddings.weight"],
                                               p["cls.predictions.bias"])
        return logits, (dense, act_backward, act, ln, decoder)

    @staticmethod
    def _mlm_backward(dlogits, cache, grads):
        """dlogits (..., V) -> dhidden (..., C), dword (V, C) the decoder's share of the word
        embeddings' gradient; writes the head's own gradients into grads."""
        dense, act_backward, act, ln, decoder = cache
        dh, dword, grads["cls.predictions.bias"][...] = tied_decoder_backward(dlogits, decoder)
        dh, grads["cls.predictions.transform.LayerNorm.weight"][...], \
            grads["cls.predictions.transform.LayerNorm.bias"][...] = layernorm_backward(dh, ln)
        dh = act_backward(dh, act)
        dhidden, dw, grads["cls.predictions.transform.dense.bias"][...] = linear_backward(dh, dense)
        grads["cls.predictions.transform.dense.weight"][...] = dw.T
        return dhidden, dword

    def _mlm_loss(self, x, labels, rows, grads):
        """Mean cross-entropy of the scored positions (labels (B, T) >= 0) of the rows x (N, C)
        -> (loss, dx (N, C), dword (V, C)).

        Only those positions go through the head: the others' logits do not change the loss."""
        index, B, T = rows
        labels = labels.ravel() if index is None else labels.ravel()[index]  # (N,), the rows' labels
        scored = labels >= 0
        logits, cache = self._mlm_forward(x[scored])  # (n_scored, V)
        loss, ce = cross_entropy_forward(logits, labels[scored], out=logits)  # one array for logits,
        dx = np.zeros_like(x)                                                   # probabilities, dlogits
        dx[scored], dword = self._mlm_backward(cross_entropy_backward(1.0, ce, out=ce[0]), cache, grads)
        return loss, dx, dword


class BertForMaskedLM(_MaskedLMHead, _Bert):
    """BERT with the masked-language-model head (no pooler, as transformers' BertForMaskedLM).

    ``model(input_ids, token_type_ids, attention_mask)`` -> logits (B, T, V);
    ``loss_and_grads(input_ids, labels, ...)``: labels (B, T) token ids, negative = not scored.
    Constructor as ``BertModel``'s.
    """

    _pooler = False

    @staticmethod
    def _head_shapes(config):
        return _mlm_head_shapes(config)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=False)
        x, _, _ = self._encode(ids, types, key_lengths, rows)
        return self._mlm_forward(x)[0].reshape(*ids.shape, -1)

    def loss_and_grads(self, input_ids, labels, token_type_ids=None, attention_mask=None):
        """Mean cross-entropy over the positions with labels >= 0 -> (loss: float, grads: dict like params,
        views into one fresh flat buffer)."""
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=True)
        labels = _check_mlm_labels(labels, "labels", ids.shape, self.config.vocab_size, attention_mask)
        x, _, cache = self._encode(ids, types, key_lengths, rows)
        grads, layer_grads = self._new_grads()
        loss, dx, dword = self._mlm_loss(x, labels, rows, grads)
        self._encode_backward(dx, None, cache, grads, layer_grads, dword)
        return loss, grads


class BertForPreTraining(_MaskedLMHead, _Bert):
    """BERT's pretraining model: the MLM head and the next-sentence head on the pooled output.

    ``model(...)`` -> (mlm logits (B, T, V), nsp logits (B, 2));
    ``loss_and_grads(input_ids, (mlm_labels (B, T), nsp_labels (B,)), ...)``: the sum of the two
    mean cross-entropies (negative labels not scored), as transformers' total loss.
    """

    @staticmethod
    def _head_shapes(config):
        return _mlm_head_shapes(config) + _nsp_head_shapes(config)

    def _nsp_forward(self, pooled):
        return linear_forward(pooled, self.params["cls.seq_relationship.weight"].T,
                              self.params["cls.seq_relationship.bias"])

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=False)
        x, pooled, _ = self._encode(ids, types, key_lengths, rows)
        return self._mlm_forward(x)[0].reshape(*ids.shape, -1), self._nsp_forward(pooled)[0]

    def loss_and_grads(self, input_ids, labels, token_type_ids=None, attention_mask=None):
        """labels: (mlm_labels (B, T), nsp_labels (B,) in {0: next, 1: random}) -> (loss, grads)."""
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=True)
        if not isinstance(labels, (tuple, list)) or len(labels) != 2:
            raise TypeError(f"labels must be a pair (mlm_labels (B, T), nsp_labels (B,)), got {type(labels).__name__}")
        mlm_labels = _check_mlm_labels(labels[0], "mlm labels", ids.shape, self.config.vocab_size, attention_mask)
        nsp_labels = _check_class_labels(labels[1], ids.shape[:1], 2, "nsp labels")
        x, pooled, cache = self._encode(ids, types, key_lengths, rows)
        grads, layer_grads = self._new_grads()
        mlm_loss, dx, dword = self._mlm_loss(x, mlm_labels, rows, grads)
        nsp_logits, nsp = self._nsp_forward(pooled)
        nsp_loss, ce = cross_entropy_forward(nsp_logits, nsp_labels)
        dpooled, dw, grads["cls.seq_relationship.bias"][...] = linear_backward(cross_entropy_backward(1.0, ce), nsp)
        grads["cls.seq_relationship.weight"][...] = dw.T
        self._encode_backward(dx, dpooled, cache, grads, layer_grads, dword)
        return mlm_loss + nsp_loss, grads


class BertForSequenceClassification(_Bert):
    """BERT with a linear classifier on the pooled [CLS] output: ``model(...)`` -> logits (B, num_labels).

    ``loss_and_grads(input_ids, labels, ...)`` by ``problem_type`` (config, else inferred as
    transformers does: num_labels == 1 -> regression; integer labels -> single-label;
    otherwise multi-label):

        "regression"                   labels (B,) (num_labels == 1) or (B, num_labels) floats -> MSE
        "single_label_classification"  labels (B,) ints in [0, num_labels), negative ignored -> cross-entropy
        "multi_label_classification"   labels (B, num_labels) of 0/1 floats -> BCE-with-logits
    """

    @staticmethod
    def _head_shapes(config):
        return _classifier_shapes(config)

    def _classify(self, pooled):
        return linear_forward(pooled, self.params["classifier.weight"].T, self.params["classifier.bias"])

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
        # packed: the pooled [CLS] output does not depend on any padded position
        _, pooled, _ = self._encode(*self._check_inputs(input_ids, token_type_ids, attention_mask, packed=True))
        return self._classify(pooled)[0]

    def problem_type(self, labels):
        """The problem type ``loss_and_grads`` uses for ``labels``: the config's, else inferred."""
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.config.num_labels == 1:
            return "regression"
        return "single_label_classification" if np.asarray(labels).dtype.kind in "iu" else "multi_label_classification"

    def _loss_layer(self, labels, batch):
        """(forward, backward, checked labels) of the loss for ``labels`` of a batch of ``batch`` rows."""
        L, dtype = self.config.num_labels, self.config.dtype
        problem = self.problem_type(labels)
        if problem == "single_label_classification":
            return cross_entropy_forward, cross_entropy_backward, _check_class_labels(labels, (batch,), L, "labels")
        values = np.asarray(labels)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"labels for {problem} must be numbers, got dtype {values.dtype}")
        shape = (batch, L)
        if problem == "regression" and L == 1 and values.shape == (batch,):
            values = values[:, None]  # transformers squeezes both sides
        if values.shape != shape:
            expected = f"(B,) or {shape}" if problem == "regression" and L == 1 else f"{shape}"
            raise ValueError(f"labels for {problem} must have shape {expected}, got {values.shape}")
        values = values.astype(dtype)
        if problem == "regression":
            return mse_forward, mse_backward, values
        if not np.all((values >= 0) & (values <= 1)):
            raise ValueError("labels for multi_label_classification must lie in [0, 1]")
        return bce_with_logits_forward, bce_with_logits_backward, values

    def loss_and_grads(self, input_ids, labels, token_type_ids=None, attention_mask=None):
        """The loss of ``labels`` (see the class docstring) -> (loss: float, grads: dict like params,
        views into one fresh flat buffer)."""
        ids, types, key_lengths, rows = self._check_inputs(input_ids, token_type_ids, attention_mask, packed=True)
        loss_forward, loss_backward, labels = self._loss_layer(labels, ids.shape[0])
        _, pooled, cache = self._encode(ids, types, key_lengths, rows)
        logits, classifier = self._classify(pooled)
        loss, loss_cache = loss_forward(logits, labels)
        grads, layer_grads = self._new_grads()
        dpooled, dw, grads["classifier.bias"][...] = linear_backward(loss_backward(1.0, loss_cache), classifier)
        grads["classifier.weight"][...] = dw.T
        self._encode_backward(None, dpooled, cache, grads, layer_grads)
        return loss, grads


_CLASSES = (BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification)


# --------------------------------------------------------------------------- Hugging Face files

# Settings BERT may vary but numpyllm's does not: key -> the values it supports (first: the default).
_FIXED = {
    "position_embedding_type": ("absolute",),
    "is_decoder": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings", "type_vocab_size")


def config_from_hf(hf_config, dtype=None, source="config.json", **changes):
    """Build a ``BertConfig`` from a parsed BERT config.json; errors name ``source`` and the field.

    Absent keys take transformers' defaults (bert-base's). num_labels comes from id2label
    (else "num_labels", else 2). dtype: as for ``from_pretrained``. changes: fields to override.
    """
    if hf_config.get("model_type") != "bert":
        raise ValueError(f"{source} has model_type {hf_config.get('model_type')!r}, expected 'bert'")
    for key, supported in _FIXED.items():
        value = hf_config.get(key, supported[0])
        if value not in supported:
            raise ValueError(f"{source} has {key}={value!r}; numpyllm's BERT supports only {list(supported)}")
    defaults = BertConfig.__dataclass_fields__
    fields = {key: hf_config.get(key, defaults[key].default) for key in
              (*_SIZES, "layer_norm_eps", "hidden_act", "initializer_range", "problem_type")}
    fields["pad_token_id"] = hf_config.get("pad_token_id") or 0
    id2label = hf_config.get("id2label")
    if id2label is not None:
        try:
            fields["id2label"] = {int(i): name for i, name in id2label.items()}
        except (AttributeError, ValueError):
            raise ValueError(f"{source} has id2label={id2label!r}; expected an object of id -> label name") from None
        fields["num_labels"] = len(id2label)
        fields["label2id"] = hf_config.get("label2id")
    else:
        fields["num_labels"] = hf_config.get("num_labels", 2)
    fields["dtype"] = dtype or hf_config.get("numpyllm_dtype", "float32")
    if "num_labels" in changes and "id2label" not in changes:
        fields.pop("id2label", None)
        fields.pop("label2id", None)
    fields.update(changes)
    try:
        return BertConfig(**fields)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{source}: {error}") from None


def config_to_hf(config, architecture="BertModel"):
    """The config.json dict for ``config``: a transformers BertConfig loading as ``architecture``."""
    hf = {
        "architectures": [architecture],
        "model_type": "bert",
        **{key: getattr(config, key) for key in _SIZES},
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        # BERT's recipe; numpyllm computes without dropout, transformers drops out only in train().
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "tie_word_embeddings": True,
        "id2label": {str(i): name for i, name in config.id2label.items()},
        "label2id": dict(config.label2id),
        "dtype": config.dtype,
        "numpyllm_dtype": config.dtype,
    }
    if config.problem_type is not None:
        hf["problem_type"] = config.problem_type
    return hf


def _read_checkpoint(directory, dtype, changes):
    """(BertConfig, {stored name: ndarray}) of a BERT checkpoint directory."""
    source = os.path.join(os.fspath(directory), hub.CONFIG_NAME)
    hf_config = hub.read_config(directory, "a BERT configuration object", "bert")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or None, got {dtype!r}")
    config = config_from_hf(hf_config, dtype, source, **changes)
    tensors = hub.read_weights(directory)
    # Before the model is allocated: the embeddings and each layer's weight matrices, a lower bound.
    C, inner = config.hidden_size, config.intermediate_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * C
    hub.check_model_fits_weights(directory, embeddings + config.num_hidden_layers * (4 * C * C + 2 * C * inner), tensors)
    return config, tensors


_BUFFERS = re.compile(r"(bert\.)?embeddings\.(position_ids|token_type_ids)")  # stored buffers, not parameters
_DECODER = "cls.predictions.decoder."


def _normalized_names(tensors, encoder_prefix, source):
    """{numpyllm name: tensor} from stored names: old LayerNorm.gamma/beta renamed, buffers dropped, the
    encoder's "bert." prefix added or removed to match ``encoder_prefix``, the tied decoder checked."""
    named = {}
    for stored, tensor in tensors.items():
        if _BUFFERS.fullmatch(stored):
            continue
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", stored))
        if name.startswith(_PREFIX):
            name = name[len(_PREFIX):]
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = encoder_prefix + name
        named[name] = tensor
    decoder_bias = named.pop(_DECODER + "bias", None)
    if decoder_bias is not None:
        named.setdefault("cls.predictions.bias", decoder_bias)  # older files keep the bias under the decoder
    decoder = named.pop(_DECODER + "weight", None)
    word = named.get(encoder_prefix + "embeddings.word_embeddings.weight")
    if decoder is not None and word is not None and not np.array_equal(decoder, word):
        raise ValueError(f"{source}: {_DECODER}weight differs from the word embeddings; numpyllm ties the MLM "
                         "decoder to them and cannot load an untied one")
    return named


def _load_into(model, tensors, source):
    """Copy ``tensors`` (stored names) into ``model.params``; -> (names to initialise fresh, unused stored names).

    The encoder's tensors (embeddings, layers) must all be there; the pooler and the heads may
    be missing (they start fresh); tensors of the other BERT classes are left unused; any
    other name, or a wrong shape, is an error.
    """
    prefix = model._encoder_prefix
    named = _normalized_names(tensors, prefix, source)
    expected = dict(model._shapes)
    known = {prefix + name for name, _ in encoder_param_shapes(model.config)}
    known |= {name for cls in _CLASSES[1:] for name, _ in cls._head_shapes(model.config)}
    unknown = sorted(set(named) - known)
    if unknown:
        raise ValueError(f"{source} has tensors that are not BERT's: {unknown}")
    optional = {prefix + "pooler.dense.weight", prefix + "pooler.dense.bias"}
    optional |= {name for name, _ in model._head_shapes(model.config)}
    missing = [name for name in expected if name not in named and name not in optional]
    if missing:
        raise ValueError(f"{source} is missing tensors {missing}")
    present = {name: named[name] for name in expected if name in named}
    hub.check_param_shapes(present, {name: expected[name] for name in present}, source)
    for name, tensor in present.items():
        model.params[name][...] = tensor
    fresh = [name for name in expected if name not in named]
    unused = sorted(set(named) - set(expected))
    return fresh, unused
