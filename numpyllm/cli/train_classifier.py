"""Fine-tune a BERT sequence classifier on a labelled file; the best epoch is kept.

--data FILE (and --val FILE): .csv or .tsv with a header row, or .jsonl with one object
a line, holding the columns text, optionally text_pair, and label (--text-column,
--text-pair-column, --label-column name others). Labels are strings or integers
(classes; the set comes from the training file and is saved as id2label in
config.json) or numbers with a fraction (regression, MSE loss). Without --val,
--val-fraction of --data is held out by --seed.

With no --data: the standard-library task, built at run time from this Python's own
source (nothing downloaded): which package (asyncio, email, http, importlib, logging,
multiprocessing, unittest, xml) a docstring or comment comes from; files are split
between training and validation, never texts of one file.

--init DIR starts from a BERT (a train-mlm run, or a Hugging Face BERT directory such
as bert-base-uncased's; its tokenizer comes along; use --preset finetune); otherwise a
fresh encoder and a WordPiece trained on the training texts. Batches are padded to
their longest example (at most --max-length tokens), each epoch in its own seeded
order; after each epoch the validation accuracy and macro-F1 (regression: MSE and
Pearson r) are printed and logged, and the best model goes to OUT/best/ (which
--model OUT then means). The loop is train's: AdamW, warmup + cosine, clipping,
log.csv, loss.png, checkpoints, --resume bit for bit, Ctrl-C saves. Then:
  python -m numpyllm classify --model OUT --text "Return the event loop."
  python -m numpyllm classify --model OUT --data FILE
"""

import functools

from ..classification import PRESETS, TASK, ClassifierConfig
from ..loop import run_training
from .options import add_config_arguments, add_run_arguments, config_overrides, run_command


def add_arguments(parser):
    add_run_arguments(parser, PRESETS, "tiny (a fresh 2 x 128 encoder; a few minutes on 2 cores), finetune "
                                       "(for --init of a pretrained BERT)", ClassifierConfig.RESUMABLE, "classifier-")
    add_config_arguments(parser, ClassifierConfig, PRESETS["tiny"])


def main(args):
    return run_command("train-classifier", functools.partial(run_training, TASK), args, config_overrides(args, ClassifierConfig), "classifier-")
