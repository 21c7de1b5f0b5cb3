"""Evaluate a model on text: the mean next-token cross-entropy and its perplexity.

The files are encoded with the model's tokenizer (documents joined by <|endoftext|>)
and cut into non-overlapping windows of the model's block size, so every token but
the first is predicted exactly once, with as much context as its window gives. Prints

    loss X perplexity Y

with X the mean loss in nats per token and Y = exp(X). --model takes a model directory
(config.json + model.safetensors + vocab.json + merges.txt, e.g. Hugging Face GPT-2's)
or a training run's --out directory (its latest checkpoint).
"""

import math
import sys

import numpy as np

from . import attention
from .layers import cross_entropy_forward

__all__ = ["add_arguments", "main", "mean_loss", "evaluate_tokens", "perplexity"]

_LOGITS_BUDGET = 1 << 24  # default batch: about this many logits per forward pass


def mean_loss(model, batches):
    """The mean cross-entropy over every target of ``batches``, an iterable of (x, y) (b, t) arrays.

    Each batch's mean loss is weighted by its number of targets, so batches of different
    sizes average correctly. Forward passes only. Returns (loss, number of targets).
    """
    total, count = 0.0, 0
    for x, y in batches:
        loss, _ = cross_entropy_forward(model(x), y)
        total += loss * y.size
        count += y.size
    if count == 0:
        raise ValueError("no batches to evaluate")
    return total / count, count


def perplexity(loss):
    """exp(loss), the perplexity of a mean cross-entropy in nats; inf where exp would overflow."""
    return math.exp(loss) if loss < 700 else math.inf


def evaluate_tokens(model, tokens, batch_size=None):
    """(mean loss, number of targets) of ``model`` on the 1-D ``tokens`` (see the module docstring)."""
    from .data import sequential_batches

    block_size = model.config.block_size
    if batch_size is None:
        batch_size = max(1, _LOGITS_BUDGET // (block_size * model.config.vocab_size))
    return mean_loss(model, sequential_batches(tokens, block_size, batch_size))


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a model directory (config.json, model.safetensors, vocab.json, merges.txt) "
                             "or a training run's --out directory")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE", help="text file(s) to score")
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="directory with vocab.json and merges.txt (default: the model directory)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="windows per forward pass (default: as many as keep ~16M logits)")
    parser.add_argument("--attention-backend", choices=attention.BACKENDS, default="auto",
                        help="attention implementation (default: auto = the compiled kernel when built)")


def main(args):
    from .checkpoint import load_model_and_tokenizer
    from .data import document_ids, text_files
    from .corpus import read_texts

    files = text_files(args.data)
    directory, model, tokenizer = load_model_and_tokenizer(args.model, "encode", args.tokenizer,
                                                           attention_backend=args.attention_backend)
    chunks = list(document_ids(read_texts(files), tokenizer))
    tokens = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    if tokens.size < 2:
        raise ValueError(f"--data has {tokens.size} token(s); scoring needs at least 2")
    loss, count = evaluate_tokens(model, tokens, args.batch_size)
    print(f"scored {count} tokens of {len(files)} file(s) with {directory}", file=sys.stderr)
    print(f"loss {loss:.4f} perplexity {perplexity(loss):.4f}")
    return 0
