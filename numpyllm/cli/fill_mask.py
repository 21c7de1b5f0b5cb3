"""The most likely tokens for each [MASK] in a text, with their probabilities.

--model DIR: a train-mlm run or any BERT masked-LM directory (config.json, weights,
vocab.txt; a Hugging Face one such as bert-base-uncased's). For each [MASK] in --text
(in order) it prints --top-k lines: the probability, the token, and the text with
that token in place of the [MASK] (with several, the others stay, with [CLS] and [SEP],
as in ``numpyllm.pipeline("fill-mask")``, which computes the same).
"""

from ..checkpoint import load_bert_and_tokenizer


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR", help="a train-mlm run or a BERT directory")
    parser.add_argument("--text", required=True, metavar="TEXT", help='a text with [MASK] in it, e.g. "x = [MASK]"')
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="tokens per [MASK] (default: 5)")


def main(args):
    from .._checks import check_int
    from ..bert import BertForMaskedLM
    from ..pipelines import mask_predictions

    check_int(args.top_k, "--top-k", 1)
    if "[MASK]" not in args.text:
        raise ValueError(f"--text has no [MASK] to fill: {args.text!r}")
    _, model, tokenizer = load_bert_and_tokenizer(args.model, BertForMaskedLM)
    try:
        masks = mask_predictions(model, tokenizer, tokenizer.encode(args.text), args.top_k)
    except ValueError as exc:
        raise ValueError(f"--text {args.text!r} with the tokenizer of {args.model}: {exc}") from None
    for n, predictions in enumerate(masks):
        if len(masks) > 1:
            print(f"[MASK] {n + 1} of {len(masks)}:")
        for p in predictions:
            print(f"{p['score']:.4f}\t{p['token_str']}\t{p['sequence']}")
    return 0
