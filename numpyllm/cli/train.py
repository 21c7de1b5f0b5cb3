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

from ..train import PRESETS, RESUMABLE, TrainConfig, train
from .options import add_config_arguments, add_run_arguments, config_overrides, run_command


def add_arguments(parser):
    add_run_arguments(parser, PRESETS, "tiny (about a minute on 2 cores), small, gpt2 (the 124M shape)", RESUMABLE)
    add_config_arguments(parser, TrainConfig, PRESETS["tiny"])


def main(args):
    return run_command("train", train, args, config_overrides(args, TrainConfig))
