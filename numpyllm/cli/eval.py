"""Evaluate a model on text: the mean next-token cross-entropy and its perplexity.

The files are encoded with the model's tokenizer (documents joined by <|endoftext|>)
and cut into non-overlapping windows of the model's block size, so every token but
the first is predicted exactly once, with as much context as its window gives. Prints

    loss X perplexity Y

with X the mean loss in nats per token and Y = exp(X). --model takes a model directory
(config.json + model.safetensors + vocab.json + merges.txt, e.g. Hugging Face GPT-2's)
or a training run's --out directory (its latest checkpoint).
"""

import sys

import numpy as np

from .. import attention
from ..checkpoint import load_model_and_tokenizer
from ..corpus import read_texts
from ..data import document_ids, text_files
from ..evaluate import evaluate_tokens
from ..metrics import perplexity


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
