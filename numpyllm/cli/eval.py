"""Evaluate a model on text: the mean next-token cross-entropy and its perplexity; BLEU and ROUGE on request.

The files are encoded with the model's tokenizer (documents joined by <|endoftext|>)
and cut into non-overlapping windows of the model's block size, so every token but
the first is predicted exactly once, with as much context as its window gives. Prints

    loss X perplexity Y

with X the mean loss in nats per token and Y = exp(X).

--bleu and/or --rouge add the scores of generated text to that line (bleu B rouge1 R1
rouge2 R2 rougeL RL). The same tokens are cut into windows of --prompt-tokens +
--continuation-tokens (default: 32 + 32, at most half the block size each); up to
--max-samples windows (default 64), evenly spaced over the data, are taken. Each
window's first part is the prompt, which the model continues greedily by as many tokens
as the true continuation has; the generated and the true continuations are decoded
and scored as hypotheses against references: corpus BLEU (0-100, sacrebleu's 13a
definition) and the mean ROUGE-1/2/L F-measures (0-1, rouge-score's), numpyllm.metrics.

--model takes a model directory (config.json + model.safetensors + vocab.json +
merges.txt, e.g. Hugging Face GPT-2's) or a training run's --out directory (its latest
checkpoint).
"""

import sys

import numpy as np

from .. import attention
from ..checkpoint import load_model_and_tokenizer
from ..corpus import read_texts
from ..data import document_ids, text_files
from .._checks import check_int
from ..evaluate import continuation_scores, continuation_windows, evaluate_tokens
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
    parser.add_argument("--bleu", action="store_true", help="also score greedy continuations by corpus BLEU")
    parser.add_argument("--rouge", action="store_true", help="also score them by ROUGE-1/2/L F-measures")
    parser.add_argument("--prompt-tokens", type=int, metavar="N",
                        help="prompt length of each sample (default: 32, at most half the block size)")
    parser.add_argument("--continuation-tokens", type=int, metavar="N",
                        help="tokens generated and scored per sample (default: as --prompt-tokens)")
    parser.add_argument("--max-samples", type=int, default=64, metavar="N",
                        help="samples scored by --bleu/--rouge at most (default: %(default)s)")
    parser.add_argument("--attention-backend", choices=attention.BACKENDS, default="auto",
                        help="attention implementation (default: auto = the compiled kernel when built)")


def _samples(args, model, tokens):
    """(prompts, continuations) for --bleu/--rouge (checked before any work), or None when neither was asked for."""
    if not (args.bleu or args.rouge):
        return None
    half = max(1, model.config.block_size // 2)
    prompt = check_int(args.prompt_tokens if args.prompt_tokens is not None else min(32, half), "--prompt-tokens", 1)
    continuation = check_int(args.continuation_tokens if args.continuation_tokens is not None else prompt,
                             "--continuation-tokens", 1)
    return continuation_windows(tokens, prompt, continuation, check_int(args.max_samples, "--max-samples", 1))


def _scores_text(args, model, tokenizer, samples):
    """' bleu B rouge1 R1 rouge2 R2 rougeL RL' (the ones asked for) of the greedy continuations."""
    prompts, continuations = samples
    scores = continuation_scores(model, tokenizer, prompts, continuations)
    print(f"scored greedy continuations of {scores['samples']} samples ({prompts.shape[1]} prompt + "
          f"{continuations.shape[1]} continuation tokens)", file=sys.stderr)
    line = f" bleu {scores['bleu']:.4f}" if args.bleu else ""
    if args.rouge:
        line += "".join(f" {name} {scores[name]:.4f}" for name in ("rouge1", "rouge2", "rougeL"))
    return line


def main(args):
    files = text_files(args.data)
    directory, model, tokenizer = load_model_and_tokenizer(args.model, "encode", args.tokenizer,
                                                           attention_backend=args.attention_backend)
    chunks = list(document_ids(read_texts(files), tokenizer))
    tokens = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    if tokens.size < 2:
        raise ValueError(f"--data has {tokens.size} token(s); scoring needs at least 2")
    samples = _samples(args, model, tokens)
    loss, count = evaluate_tokens(model, tokens, args.batch_size)
    print(f"scored {count} tokens of {len(files)} file(s) with {directory}", file=sys.stderr)
    extra = "" if samples is None else _scores_text(args, model, tokenizer, samples)
    print(f"loss {loss:.4f} perplexity {perplexity(loss):.4f}{extra}")
    return 0
