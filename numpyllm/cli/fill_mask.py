"""The most likely tokens for each [MASK] in a text, with their probabilities.

--model DIR: a train-mlm run or any BERT masked-LM directory (config.json, weights,
vocab.txt; a Hugging Face one such as bert-base-uncased's). For each [MASK] in --text
(in order) it prints --top-k lines: the probability, the token, and the text with
that token in place of the [MASK].
"""

import numpy as np

from ..checkpoint import load_bert_and_tokenizer


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR", help="a train-mlm run or a BERT directory")
    parser.add_argument("--text", required=True, metavar="TEXT", help='a text with [MASK] in it, e.g. "x = [MASK]"')
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="tokens per [MASK] (default: 5)")


def main(args):
    from .._checks import check_int
    from ..bert import BertForMaskedLM

    check_int(args.top_k, "--top-k", 1)
    if "[MASK]" not in args.text:
        raise ValueError(f"--text has no [MASK] to fill: {args.text!r}")
    _, model, tokenizer = load_bert_and_tokenizer(args.model, BertForMaskedLM)
    ids = np.asarray(tokenizer.encode(args.text), dtype=np.int64)
    positions = np.flatnonzero(ids == tokenizer.mask_token_id)
    if positions.size == 0:
        raise ValueError(f"--text {args.text!r} encodes to no [MASK] token with the tokenizer of {args.model}")
    if ids.size > model.config.max_position_embeddings:
        raise ValueError(f"--text is {ids.size} tokens long; the model takes at most "
                         f"{model.config.max_position_embeddings}")
    logits = model(ids[None, :])[0]  # (T, V)
    for n, position in enumerate(positions):
        row = logits[position] - logits[position].max()
        probabilities = np.exp(row) / np.exp(row).sum()
        if positions.size > 1:
            print(f"[MASK] {n + 1} of {positions.size}:")
        for token_id in np.argsort(-probabilities, kind="stable")[:args.top_k]:
            filled = ids.copy()
            filled[position] = token_id
            token = tokenizer.convert_ids_to_tokens([int(token_id)])[0]
            print(f"{probabilities[token_id]:.4f}\t{token}\t{tokenizer.decode(filled, skip_special_tokens=True)}")
    return 0
