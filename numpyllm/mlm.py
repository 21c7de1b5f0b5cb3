"""Masked-LM pretraining of a BERT on a text corpus: the masking, the windows, the objective.

Sequences. Each document is encoded by the WordPiece as ``[CLS] ids [SEP]``; the
``[CLS]`` is dropped and the rest concatenated, so the stream reads
``doc1 [SEP] doc2 [SEP] ...`` (OUT/tokens.npy). A training sequence is a random
window of block_size - 2 consecutive stream tokens wrapped as ``[CLS] window [SEP]``:
every sequence is block_size long, no padding, a document boundary inside it marked
by its ``[SEP]``.

Masking (``mask_tokens``, BERT's recipe): each position that is not a special token
is chosen with probability 15% (``--mlm-probability``); of the chosen, 80% become
``[MASK]``, 10% a random non-special token, 10% stay as they are; the loss scores the
chosen positions only (labels elsewhere -100). With whole-word masking the draw is per
word (a token and the ``##`` continuations after it), every piece of a chosen word
chosen. Validation uses fixed windows and fixed masks: masked-LM loss and accuracy
(the argmax at the chosen positions).

Next-sentence prediction (``--next-sentence``, BertForPreTraining): the stream has
sentence pairs everywhere (each stretch and the one after it), so a window of
block_size - 3 tokens is cut at a random point into A and B, and half the time B is
replaced by as many tokens from a random place in the corpus (label 1, "not next"; 0
is "next"): ``[CLS] A [SEP] B [SEP]``, token types 0 then 1. Validation adds the NSP
accuracy.
"""

import dataclasses
import functools
import os
import time

import numpy as np

from ._checks import check_real
from .loop import option
from .textrun import TOKENS_FILE, CorpusConfig, CorpusTask, encode_corpus

__all__ = ["MLMConfig", "PRESETS", "mask_tokens", "special_ids", "continuation_ids", "TASK"]

IGNORED = -100  # the label of a position the loss does not score (Hugging Face's value)


@dataclasses.dataclass(frozen=True)
class MLMConfig(CorpusConfig):
    """Every setting of a masked-LM run; each field is a --flag."""

    tokenizer: str = option(None, "WordPiece directory (vocab.txt, e.g. a Hugging Face BERT's) to use "
                                  "instead of training one on the corpus", metavar="DIR")
    vocab_size: int = option(4096, "vocabulary size of the WordPiece trained on the corpus", minimum=1)
    init: str = option(None, "continue from this BERT: a train-mlm run or checkpoint directory, or a "
                             "Hugging Face BERT directory (config.json, weights, vocab.txt)", metavar="DIR")
    hidden_size: int = option(128, "encoder width (a multiple of --num-attention-heads)", minimum=1)
    num_hidden_layers: int = option(2, "encoder layers", minimum=1)
    num_attention_heads: int = option(4, "attention heads per layer", minimum=1)
    intermediate_size: int = option(512, "width of each layer's GELU MLP", minimum=1)
    max_position_embeddings: int = option(512, "longest sequence the model can take (>= --block-size)", minimum=1)
    mlm_probability: float = option(0.15, "fraction of the non-special positions chosen for prediction")
    whole_word_masking: bool = option(False, "choose whole words (a token and its ## continuations) "
                                             "instead of single tokens")
    next_sentence: bool = option(False, "also train next-sentence prediction (BertForPreTraining): each "
                                        "sequence is [CLS] A [SEP] B [SEP], B the text after A or, half the "
                                        "time, a random stretch of the corpus")

    SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings")

    def check(self):
        super().check()
        check_real(self.mlm_probability, "--mlm-probability", 0, 1, low_inclusive=False)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"--hidden-size ({self.hidden_size}) must be a multiple of "
                             f"--num-attention-heads ({self.num_attention_heads})")
        if self.block_size < 3 + self.next_sentence:
            raise ValueError(f"--block-size must be >= {3 + self.next_sentence} ([CLS], [SEP]s and a token each), "
                             f"got {self.block_size}")
        if self.block_size > self.max_position_embeddings:
            raise ValueError(f"--block-size ({self.block_size}) must be <= --max-position-embeddings "
                             f"({self.max_position_embeddings})")


PRESETS = {
    "tiny": MLMConfig(corpus_bytes=1_000_000, block_size=64, batch_size=16, max_steps=300, lr=1e-3,
                      warmup_steps=30, beta2=0.98, weight_decay=0.01, eval_interval=100, eval_steps=8),
    "small": MLMConfig(corpus_bytes=0, vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=1024, block_size=128, batch_size=32, max_steps=5000, lr=5e-4,
                       warmup_steps=200, beta2=0.98, weight_decay=0.01, eval_interval=250, eval_steps=20,
                       checkpoint_interval=500),
    "bert-base": MLMConfig(corpus_bytes=0, vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072, block_size=512, batch_size=8,
                           max_steps=100_000, lr=1e-4, warmup_steps=10_000, beta2=0.999, weight_decay=0.01,
                           eval_interval=1000, eval_steps=20, checkpoint_interval=1000),
}


# --------------------------------------------------------------------------- masking


def special_ids(tokenizer):
    """The ids of the tokenizer's five special tokens: [PAD] [UNK] [CLS] [SEP] [MASK]."""
    return np.array([tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id,
                     tokenizer.sep_token_id, tokenizer.mask_token_id], dtype=np.int64)


def continuation_ids(tokenizer):
    """A bool array (vocab_size,): True for the ``##`` continuation pieces (whole-word masking)."""
    return np.array([token.startswith("##") for token in tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size))])


def mask_tokens(input_ids, rng, *, vocab_size, mask_id, specials, probability=0.15, continuation=None):
    """BERT's masked-LM corruption of a batch (see the module docstring).

    input_ids: (B, T) int; rng: a numpy Generator (three draws per call, so a saved
    state repeats the masks); specials: the ids never chosen (padding included);
    continuation: None, or the (vocab_size,) bool array of ``##`` pieces for whole-word
    masking. Returns (inputs, labels), (B, T) int64: inputs with the chosen positions
    replaced, labels the original id at the chosen positions and -100 elsewhere.
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)
    B, T = input_ids.shape
    special = np.isin(input_ids, specials)  # (B, T)
    draw = rng.random((B, T))
    if continuation is not None:
        # a word starts at a non-continuation token, or right after a special token
        starts = ~continuation[input_ids]
        starts[:, 1:] |= special[:, :-1]
        starts[:, 0] = True
        word_start = np.maximum.accumulate(np.where(starts, np.arange(T), 0), axis=1)  # (B, T)
        draw = np.take_along_axis(draw, word_start, axis=1)  # each piece takes its word's draw
    chosen = (draw < probability) & ~special
    action = rng.random((B, T))
    pool = np.setdiff1d(np.arange(vocab_size), specials)  # random replacements: any ordinary token
    random_tokens = pool[rng.integers(0, len(pool), size=(B, T))]
    inputs = input_ids.copy()
    inputs[chosen & (action < 0.8)] = mask_id
    replaced = chosen & (action >= 0.8) & (action < 0.9)
    inputs[replaced] = random_tokens[replaced]
    labels = np.where(chosen, input_ids, IGNORED)
    return inputs, labels


# --------------------------------------------------------------------------- the objective


class _MaskedLM:
    """Random packed windows, masked as BERT does; masked-LM loss and accuracy on fixed validation masks."""

    best = None

    def __init__(self, out, config, tokenizer, files, progress):
        from .data import BatchSampler, load_tokens, split_tokens

        self.max_steps, self.eval_interval = config.max_steps, config.eval_interval
        if not os.path.isfile(os.path.join(out, TOKENS_FILE)):  # a resume whose tokens.npy was deleted
            _encode(out, config, files, tokenizer, progress)
        self.next_sentence = config.next_sentence
        self.val_columns = ("val_loss", "val_accuracy") + (("val_nsp_accuracy",) if self.next_sentence else ())
        if self.next_sentence:  # its loss adds two means (MLM, NSP): no one count weighs it across MPI ranks
            self.scored = None
        body = config.block_size - 2 - self.next_sentence
        self.train_tokens, self.val_tokens = split_tokens(load_tokens(os.path.join(out, TOKENS_FILE), tokenizer.vocab_size),
                                                          config.val_fraction, body + 1)
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.masking = dict(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_token_id,
                            specials=special_ids(tokenizer), probability=config.mlm_probability,
                            continuation=continuation_ids(tokenizer) if config.whole_word_masking else None)
        self.windows = BatchSampler(self.train_tokens, config.batch_size, body, seed=config.seed)
        self.masks = np.random.default_rng([config.seed, 1])
        val_windows = BatchSampler(self.val_tokens, config.batch_size, body, seed=config.seed + 1)
        val_masks = np.random.default_rng([config.seed + 1, 1])
        self.val_batches = [self._batch(val_windows, val_masks) for _ in range(config.eval_steps)]

    def _batch(self, windows, masks):
        body, _ = windows.sample()
        B = body.shape[0]
        if self.next_sentence:
            middle, types, is_random = self._pairs(body, windows.tokens, masks)
        else:
            middle = body
        ids = np.concatenate([np.full((B, 1), self.cls), middle, np.full((B, 1), self.sep)], axis=1)  # (B, T)
        inputs, labels = mask_tokens(ids, masks, **self.masking)
        if not self.next_sentence:
            return inputs, labels
        return inputs, labels, types, is_random.astype(np.int64)

    def _pairs(self, body, tokens, rng):
        """A [SEP] B of each window (B, L) -> (B, L + 1) ids, the (B, L + 3) token types, and
        which rows have a random B (see the module docstring)."""
        B, L = body.shape
        k = rng.integers(1, L, size=B)[:, None]  # A's length, 1 .. L - 1
        is_random = rng.random(B) < 0.5
        starts = rng.integers(0, len(tokens) - L + 1, size=B)
        elsewhere = tokens[starts[:, None] + np.arange(L)].astype(np.int64)  # (B, L)
        j = np.arange(L + 1)[None, :]  # position in A [SEP] B
        from_a = np.take_along_axis(body, np.minimum(j, L - 1).repeat(B, 0), axis=1)
        next_b = np.take_along_axis(body, np.clip(j - 1, 0, L - 1).repeat(B, 0), axis=1)  # B continues A
        random_b = np.take_along_axis(elsewhere, np.clip(j - 1 - k, 0, L - 1), axis=1)
        second = np.where(is_random[:, None], random_b, next_b)
        middle = np.where(j < k, from_a, np.where(j == k, self.sep, second))
        types = np.concatenate([np.zeros((B, 1), np.int64), (j > k).astype(np.int64), np.ones((B, 1), np.int64)],
                               axis=1)
        return middle, types, is_random

    @property
    def state(self):
        return {"windows": self.windows.state, "masks": self.masks.bit_generator.state}

    @state.setter
    def state(self, value):
        self.windows.state = value["windows"]
        self.masks.bit_generator.state = value["masks"]

    def sample(self):
        return self._batch(self.windows, self.masks)

    def loss_and_grads(self, model, batch):
        if self.next_sentence:
            inputs, labels, types, is_random = batch
            return model.loss_and_grads(inputs, (labels, is_random), token_type_ids=types)
        inputs, labels = batch
        return model.loss_and_grads(inputs, labels)

    def tokens(self, batch):
        return batch[0].size

    def scored(self, batch):
        return int((batch[1] >= 0).sum())  # negative targets are not scored

    def validate(self, model):
        from .layers import cross_entropy_forward

        total, correct, count, nsp_correct, nsp_count = 0.0, 0, 0, 0, 0
        for batch in self.val_batches:
            inputs, labels = batch[:2]
            if self.next_sentence:
                logits, nsp_logits = model(inputs, token_type_ids=batch[2])  # (B, T, V), (B, 2)
                nsp_correct += int((nsp_logits.argmax(axis=1) == batch[3]).sum())
                nsp_count += len(batch[3])
            else:
                logits = model(inputs)  # (B, T, V)
            scored = labels >= 0
            n = int(scored.sum())
            if n == 0:
                continue
            loss, _ = cross_entropy_forward(logits, labels)
            total += loss * n
            correct += int((logits.argmax(axis=-1)[scored] == labels[scored]).sum())
            count += n
        if count == 0:
            raise ValueError("the validation windows have no masked position; raise --eval-steps or --mlm-probability")
        loss, accuracy = total / count, correct / count
        metrics = {"val_loss": loss, "val_accuracy": accuracy}
        line = f"val masked-LM loss {loss:.4f}, accuracy {accuracy:.1%} ({count} masked tokens)"
        if self.next_sentence:
            metrics["val_nsp_accuracy"] = nsp_correct / nsp_count
            line += f", next-sentence accuracy {metrics['val_nsp_accuracy']:.1%}"
        return metrics, line

    def describe(self):
        return f"tokens: {len(self.train_tokens):,} train, {len(self.val_tokens):,} validation"


def _document_ids(texts, tokenizer):
    """Each text as its ids followed by [SEP] (the encoding's [CLS] dropped): the packed stream."""
    for text in texts:
        ids = tokenizer.encode(text)[1:]
        if len(ids) > 1:
            yield np.asarray(ids, dtype=np.int64)


def _encode(out, config, files, tokenizer, progress):
    encode_corpus(out, config, files, functools.partial(_document_ids, tokenizer=tokenizer), tokenizer.vocab_size,
                  progress)


def _model_class(config):
    from .bert import BertForMaskedLM, BertForPreTraining

    return BertForPreTraining if config.next_sentence else BertForMaskedLM


class _MLMTask(CorpusTask):
    command = "train-mlm"
    config_class = MLMConfig
    presets = PRESETS

    def new_model(self, out, config, files, progress):
        """WordPiece (given, from --init, or trained) and BERT (new or --init); the corpus encoded."""
        from .bert import BertConfig
        from .checkpoint import load_bert_and_tokenizer
        from .corpus import read_texts
        from .wordpiece import WordPieceTokenizer

        if config.init:
            _, model, tokenizer = load_bert_and_tokenizer(config.init, _model_class(config), config.tokenizer, "--init",
                                                          attention_backend=config.attention_backend, seed=config.seed)
            shape = {name: getattr(model.config, name) for name in config.SHAPE_FIELDS}
            if config.block_size > shape["max_position_embeddings"]:
                raise ValueError(f"--block-size {config.block_size} exceeds the --init model's "
                                 f"max_position_embeddings {shape['max_position_embeddings']}")
            config = dataclasses.replace(config, **shape)
        else:
            if config.tokenizer:
                tokenizer = WordPieceTokenizer.from_pretrained(config.tokenizer)
            else:
                started = time.perf_counter()
                tokenizer = WordPieceTokenizer.train(read_texts(files), vocab_size=config.vocab_size, progress=progress)
                print(f"trained a WordPiece tokenizer of {tokenizer.vocab_size} tokens on {len(files)} files "
                      f"({time.perf_counter() - started:.1f} s)")
            config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
            model_config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=config.hidden_size,
                                      num_hidden_layers=config.num_hidden_layers,
                                      num_attention_heads=config.num_attention_heads,
                                      intermediate_size=config.intermediate_size,
                                      max_position_embeddings=config.max_position_embeddings, dtype=config.dtype)
            model = _model_class(config)(model_config, seed=config.seed, attention_backend=config.attention_backend)
        _encode(out, config, files, tokenizer, progress)
        return config, model, tokenizer

    def load_model(self, checkpoint, config):
        from .checkpoint import load_bert_and_tokenizer

        _, model, tokenizer = load_bert_and_tokenizer(checkpoint, _model_class(config), flag="--resume",
                                                      attention_backend=config.attention_backend, dtype=config.dtype)
        return model, tokenizer

    def objective(self, out, config, model, tokenizer, files, progress):
        return _MaskedLM(out, config, tokenizer, files, progress)


TASK = _MLMTask()
