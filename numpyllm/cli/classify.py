"""Label texts with a trained classifier; given a labelled file, score it.

--model DIR: a train-classifier run (its best/ model) or any BERT classifier directory
(config.json with id2label, weights, vocab.txt; a Hugging Face one too).
--text T prints every label with its probability, most likely first (regression: the
predicted value). --data FILE (.csv, .tsv or .jsonl as for train-classifier) prints,
when the file has labels, the accuracy, macro-F1 and the confusion matrix (rows: true
label, columns: predicted; regression: MSE and Pearson r), else one prediction a line:
the label and its probability (regression: the value).
"""

import sys

import numpy as np

from ..checkpoint import load_bert_and_tokenizer, model_directory
from ..classification import predict, read_labels, score
from ..labelled import Examples, read_examples
from ..pipelines import label_scores, ranked_labels


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR", help="a train-classifier run or a BERT classifier directory")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="TEXT", help="one text to label")
    what.add_argument("--data", metavar="FILE", help="a .csv, .tsv or .jsonl file of texts (with labels: scored)")
    parser.add_argument("--text-pair", metavar="TEXT", help="the second text of a pair, with --text")
    parser.add_argument("--text-column", default="text", help="the column holding the text (default: text)")
    parser.add_argument("--text-pair-column", help="the column of the second text (default: text_pair if present)")
    parser.add_argument("--label-column", default="label", help="the column holding the label (default: label)")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="tokens per example at most (default: 128, or the model's max_position_embeddings "
                             "when smaller)")


def _print_confusion(matrix, names):
    width = max(8, *map(len, names))
    print("confusion matrix (rows: true label, columns: predicted)")
    print(" " * width + " " + " ".join(f"{name:>{width}}" for name in names))
    for name, row in zip(names, matrix):
        print(f"{name:>{width}} " + " ".join(f"{count:>{width}}" for count in row))


def main(args):
    from ..bert import BertForSequenceClassification
    from ..label_metrics import confusion_matrix

    if args.data:  # read and check the file before loading a model
        examples = read_examples(args.data, args.text_column, args.text_pair_column, args.label_column,
                                 need_labels=False)
    else:
        examples = Examples("--text", [args.text], None if args.text_pair is None else [args.text_pair], None, [1])
    labels = read_labels(model_directory(args.model))
    targets = labels.encode(examples) if examples.labels is not None else None  # unseen labels fail here
    directory, model, tokenizer = load_bert_and_tokenizer(args.model, BertForSequenceClassification)
    longest = model.config.max_position_embeddings
    if args.max_length is not None and not 3 <= args.max_length <= longest:
        raise ValueError(f"--max-length must be in [3, {longest}] (the model's max_position_embeddings), "
                         f"got {args.max_length}")
    logits = predict(model, tokenizer, examples, args.max_length or min(128, longest))
    print(f"{len(examples)} example(s) with {directory}", file=sys.stderr)
    if targets is not None:
        metrics, _ = score(logits, np.asarray(targets), labels)
        if labels.regression:
            print(f"examples {len(examples)} MSE {metrics['val_loss']:.4f} pearson_r {metrics['val_pearson']:.4f}")
        else:
            print(f"examples {len(examples)} accuracy {metrics['val_accuracy']:.4f} "
                  f"macro_f1 {metrics['val_macro_f1']:.4f}")
            _print_confusion(confusion_matrix(targets, logits.argmax(axis=1), labels.num_labels), labels.names)
    elif labels.regression:
        for value in logits[:, 0]:
            print(f"{value:.6g}")
    else:  # --text: every label, most likely first; --data: the best label of each line
        id2label = dict(enumerate(labels.names))
        for row in label_scores(logits, model.config, "softmax"):
            for ranked in ranked_labels(row, id2label, None if args.text is not None else 1):
                print(f"{ranked['label']}\t{ranked['score']:.4f}")
    return 0
