"""Evaluate a model on text: the mean next-token cross-entropy and its perplexity.

The files are encoded with the model's tokenizer (documents joined by <|endoftext|>)
and cut into non-overlapping windows of the model's block size, so every token but
the first is predicted exactly once, with as much context as its window gives. Prints

    loss X perplexity Y

with X the mean loss in nats per token and Y = exp(X). With --bleu and/or --rouge the
same line goes on with "bleu B" (sacrebleu's corpus BLEU, 0-100) and "rouge1 R1 rouge2 R2
rougeL RL" (rouge-score's mean F-measures, 0-1) of generated text against held-out text:
each line of the files that has at least 4 tokens (the first --continuations of them) is
cut after half its tokens; the model continues that prompt greedily by --continuation-tokens
tokens (fewer when the line ends first), scored against the line's true next tokens.
--model takes a model directory
(config.json + model.safetensors + vocab.json + merges.txt, e.g. Hugging Face GPT-2's)
or a training run's --out directory (its latest checkpoint).
"""

import sys

import numpy as np

from .. import attention
from ..checkpoint import load_model_and_tokenizer
from ..corpus import read_texts
from ..data import document_ids, text_files
from .._checks import check_int
from ..evaluate import continuations, evaluate_tokens
from ..metrics import bleu, perplexity, rouge


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a model directory (config.json, model.safetensors, vocab.json, merges.txt) "
                             "or a training run's --out directory")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE", help="text file(s) to score")
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="directory with vocab.json and merges.txt (default: the model directory)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="windows per forward pass (default: as many as keep ~16M logits)")
    parser.add_argument("--bleu", action="store_true", help="also report BLEU of greedy continuations")
    parser.add_argument("--rouge", action="store_true", help="also report ROUGE-1/2/L of greedy continuations")
    parser.add_argument("--continuations", type=int, default=50, metavar="N",
                        help="lines to continue for --bleu/--rouge (default: %(default)s)")
    parser.add_argument("--continuation-tokens", type=int, default=16, metavar="N",
                        help="tokens generated per line for --bleu/--rouge (default: %(default)s)")
    parser.add_argument("--attention-backend", choices=attention.BACKENDS, default="auto",
                        help="attention implementation (default: auto = the compiled kernel when built)")


def main(args):
    check_int(args.continuations, "--continuations", 1)
    check_int(args.continuation_tokens, "--continuation-tokens", 1)
    files = text_files(args.data)
    directory, model, tokenizer = load_model_and_tokenizer(args.model, "encode", args.tokenizer,
                                                           attention_backend=args.attention_backend)
    if args.bleu or args.rouge:  # before the loss, so a bad setting fails first
        if model.config.vocab_size > tokenizer.vocab_size:
            raise ValueError(f"--bleu/--rouge decode generated ids, but the model has {model.config.vocab_size} "
                             f"ids and the tokenizer only {tokenizer.vocab_size}")
        if args.continuation_tokens >= model.config.block_size:
            raise ValueError(f"--continuation-tokens must be < the model's block_size {model.config.block_size}")
    chunks = list(document_ids(read_texts(files), tokenizer))
    tokens = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    if tokens.size < 2:
        raise ValueError(f"--data has {tokens.size} token(s); scoring needs at least 2")
    loss, count = evaluate_tokens(model, tokens, args.batch_size)
    scores = _text_scores(args, files, model, tokenizer) if args.bleu or args.rouge else ""
    print(f"scored {count} tokens of {len(files)} file(s) with {directory}", file=sys.stderr)
    print(f"loss {loss:.4f} perplexity {perplexity(loss):.4f}{scores}")
    return 0


def _text_scores(args, files, model, tokenizer):
    """" bleu B rouge1 R1 ...": the scores of greedy continuations of the files' lines."""
    lines = (line for text in read_texts(files) for line in text.splitlines())
    hypotheses, references = continuations(model, tokenizer, lines, args.continuation_tokens, args.continuations)
    if not hypotheses:
        raise ValueError("--bleu/--rouge: no line of --data has the 4 tokens a continuation needs")
    print(f"continued {len(hypotheses)} lines by up to {args.continuation_tokens} tokens", file=sys.stderr)
    scores = ""
    if args.bleu:
        scores += f" bleu {bleu(hypotheses, references):.4f}"
    if args.rouge:
        scores += "".join(f" {name} {value:.4f}" for name, value in rouge(hypotheses, references).items())
    return scores
