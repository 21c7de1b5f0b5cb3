"""Command line: ``python -m numpyllm {train,eval,generate,train-mlm,train-classifier,classify,fill-mask} ...``.

Each subcommand lives in its own module, which provides

    add_arguments(parser)   fill an argparse parser (its description is the module's)
    main(args) -> int       run it; return the exit status

and is imported only when that subcommand runs, so ``--help`` stays fast and one
subcommand's optional dependencies never burden another. Errors a user can fix
(bad arguments, missing files, unwritable directories) are raised as ValueError,
OSError or ImportError and printed here as one line, without a traceback.
"""

import argparse
import importlib
import sys

# name -> (module, one-line summary)
SUBCOMMANDS = {
    "train": ("numpyllm.cli.train", "train a GPT on text files (default: the Python standard library's source)"),
    "eval": ("numpyllm.cli.eval", "print the loss and perplexity of a model on a text file (--bleu/--rouge: of its continuations too)"),
    "generate": ("numpyllm.cli.generate", "continue a prompt with a trained model, streaming the text"),
    "train-mlm": ("numpyllm.cli.train_mlm", "pretrain a BERT with masked-LM on text files "
                                           "(default: the Python standard library's source)"),
    "train-classifier": ("numpyllm.cli.train_classifier", "fine-tune a BERT classifier on a labelled .csv/.tsv/"
                                                         ".jsonl file (default: a task built from the standard library)"),
    "classify": ("numpyllm.cli.classify", "label texts with a trained classifier; with labels, score it"),
    "fill-mask": ("numpyllm.cli.fill_mask", "the most likely tokens for the [MASK] in a text"),
}


def build_parser(command=None):
    """The argument parser; only ``command``'s module is imported and asked for its options."""
    parser = argparse.ArgumentParser(
        prog="python -m numpyllm",
        description="numpyllm: a GPT in plain NumPy with hand-written backward passes.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in SUBCOMMANDS.items():
        sub = commands.add_parser(
            name, help=summary, description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == command:
            module = importlib.import_module(module_name)
            sub.description = module.__doc__
            module.add_arguments(sub)
            sub.set_defaults(run=module.main)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"numpyllm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
