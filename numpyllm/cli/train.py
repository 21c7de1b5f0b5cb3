"""Train a GPT on text files; checkpoints resume exactly and load in eval and generate.

With no --data the corpus is the Python standard library's own .py source files, found
on this machine at run time (site-packages and test directories left out): nothing is
downloaded. The tiny preset uses the first 3 MB of it (--corpus-bytes).

A byte-level BPE is trained on the corpus (unless --tokenizer or --init brings one),
the files, shuffled by --seed, are encoded once into OUT/tokens.npy (read
memory-mapped), the last --val-fraction of the tokens is held out for validation, and
the model trains on random windows with AdamW, linear warmup then cosine decay of the
learning rate, and global-norm gradient clipping. A preset sets every option; any
option given overrides it.

OUT (--out, default runs/PRESET) receives
  checkpoint/   every --checkpoint-interval steps and at the end: the model in Hugging
                Face GPT-2 format, its tokenizer, the optimizer and data-sampler state
  tokens.npy    the encoded corpus
  log.csv       one row per step: train loss, validation loss and perplexity, lr, ...
  loss.png      train and validation loss against step (when matplotlib is installed)

--resume continues OUT's checkpoint so that the result is bit-identical to a run never
stopped. Ctrl-C finishes the current step, saves a checkpoint and exits (status 130).
A non-finite loss stops the run and keeps the last good checkpoint.

Under mpiexec -n K (pip install "numpyllm[mpi]") the run is data-parallel: each process
trains on 1/K of every batch (--batch-size must be a multiple of K) and the result
equals a one-process run's; rank 0 alone prints and writes OUT, which every process
must see. Then:
  python -m numpyllm eval --model OUT --data FILE
  python -m numpyllm generate --model OUT --prompt TEXT
"""

import dataclasses
import os
import sys

from ..train import PRESETS, RESUMABLE, TrainConfig, flag, train


def add_arguments(parser):
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS),
                        help="starting values of every option: tiny (about a minute on 2 cores), small, "
                             "gpt2 (the 124M shape) (default: tiny)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/PRESET)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the checkpoint in --out exactly; may change only "
                             + ", ".join(flag(name) for name in RESUMABLE))
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: print a line every --log-interval steps "
                             "(the default when stderr is not a terminal)")
    types = {int: int, float: float, str: str, tuple: str}
    for field in dataclasses.fields(TrainConfig):
        kwargs = dict(field.metadata)
        kwargs.setdefault("type", types[field.type])
        kwargs.setdefault("metavar", {int: "N", float: "X"}.get(kwargs["type"]))
        if "choices" in kwargs:
            kwargs.pop("metavar")
        preset_value = PRESETS["tiny"].__dict__[field.name]
        kwargs["help"] += "" if preset_value is None else f" (tiny: {preset_value})"
        parser.add_argument(flag(field.name), default=None, **kwargs)


def main(args):
    overrides = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)
                 if getattr(args, field.name) is not None}
    if "data" in overrides:  # absolute, so a resume from another directory can re-read them
        overrides["data"] = tuple(os.path.abspath(path) for path in overrides["data"])
    out = args.out or os.path.join("runs", args.preset)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        return train(out, args.preset, overrides, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        print("numpyllm train: interrupted", file=sys.stderr)
        return 130
