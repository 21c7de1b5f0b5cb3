"""Continue a prompt with a trained GPT, streaming the text as it is produced.

    python -m numpyllm generate --model DIR --prompt "The quick brown fox"

DIR is a checkpoint directory (numpyllm's, or a Hugging Face GPT-2 one) that also holds
the tokenizer's vocab.json and merges.txt. The prompt and its continuation are written
to stdout as they are decoded (then one newline), and nothing else is; --verbose adds
timings on stderr. The same --seed gives the same text. Special-token text in the
prompt (e.g. "<|endoftext|>") becomes the special token.
"""

import os
import sys
import time

import numpy as np

from .._checks import check_int
from ..checkpoint import load_model_and_tokenizer
from ..generation import StreamDecoder, check_sampling, iter_tokens

def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a training run's directory (e.g. runs/tiny) or a model directory with "
                             "config.json, the weights, vocab.json and merges.txt")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue (not empty)")
    parser.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="default: %(default)s")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="0 is greedy; default: %(default)s")
    parser.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="sample from the smallest set of tokens with total probability >= P, in (0, 1]")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="same seed, same text")
    parser.add_argument("--verbose", action="store_true", help="report timings (tokens/s) on stderr")


def _stream(out, text, prompt, tokens):
    """Write the prompt, then each token's text as it comes, then a newline, flushing each
    piece. Returns (number of new tokens, perf_counter time of the first one or None)."""
    out.write(text.push(prompt))
    out.flush()
    n_new, first = 0, None
    for column in tokens:
        first = first or time.perf_counter()
        n_new += 1
        out.write(text.push(column))
        out.flush()
    out.write(text.finish() + "\n")
    out.flush()
    return n_new, first


def main(args):
    # check what needs no files first, so a typo fails before a large model loads
    check_sampling(args.temperature, args.top_k, args.top_p, names=("--temperature", "--top-k", "--top-p"))
    check_int(args.max_new_tokens, "--max-new-tokens", 0)
    check_int(args.seed, "--seed", 0, optional=True)
    if not args.prompt:
        raise ValueError("--prompt must not be empty: the model needs at least one token to continue")

    start = time.perf_counter()
    _, model, tokenizer = load_model_and_tokenizer(args.model, "decode")
    prompt = tokenizer.encode(args.prompt, allowed_special="all")
    outside = [i for i in prompt if i >= model.config.vocab_size]  # the tokenizer may know more ids
    if outside:
        raise ValueError(f"--prompt encodes to token id {outside[0]}, outside the model's vocabulary "
                         f"[0, {model.config.vocab_size}) (its tokenizer has {tokenizer.vocab_size} ids)")
    loaded = time.perf_counter()

    tokens = iter_tokens(model, np.array([prompt]), args.max_new_tokens, args.temperature, args.top_k,
                         args.top_p, args.seed)
    try:
        n_new, first = _stream(sys.stdout, StreamDecoder(tokenizer), prompt, tokens)
    except BrokenPipeError:  # the reader stopped reading (e.g. `| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush is silent
        return 0
    done = time.perf_counter()

    if args.verbose:
        print(f"loaded {args.model} in {loaded - start:.2f} s; prompt: {len(prompt)} tokens", file=sys.stderr)
        if n_new:
            rate = f", then {(n_new - 1) / (done - first):.1f} tokens/s" if n_new > 1 else ""
            print(f"generated {n_new} tokens in {done - loaded:.2f} s: the first after "
                  f"{first - loaded:.3f} s (prefill){rate}", file=sys.stderr)
    return 0
