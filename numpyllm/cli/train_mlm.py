"""Pretrain a BERT with the masked-LM objective on text files (default: the standard library's source).

With no --data the corpus is this Python's standard library .py files, as for train
(nothing downloaded); the tiny preset takes the first 1 MB. A WordPiece vocabulary is
trained on the corpus (unless --tokenizer or --init brings one) and each file is
encoded as its tokens followed by [SEP], all concatenated into OUT/tokens.npy. A
training sequence is [CLS] + block_size - 2 consecutive tokens of that stream + [SEP]
(a random window; no padding). In each, 15% of the positions that are not special
tokens are chosen (--mlm-probability; --whole-word-masking chooses whole words): 80%
of them become [MASK], 10% a random token, 10% stay, and the model learns to predict
the original tokens there. Validation: the masked-LM loss and accuracy on fixed
held-out windows and masks. --next-sentence adds next-sentence prediction
(BertForPreTraining): each window becomes [CLS] A [SEP] B [SEP], B the text after A or,
half the time, a stretch from a random place in the corpus. The loop is train's: AdamW, warmup + cosine, clipping,
log.csv, loss.png, atomic checkpoints, --resume bit for bit, Ctrl-C saves.

OUT/checkpoint/ is a Hugging Face BERT directory (config.json, model.safetensors,
vocab.txt): transformers' BertForMaskedLM loads it. Then:
  python -m numpyllm fill-mask --model OUT --text "return [MASK]"
  python -m numpyllm train-classifier --init OUT
"""

import functools

from ..mlm import PRESETS, MLMConfig, TASK
from ..loop import run_training
from .options import add_config_arguments, add_run_arguments, config_overrides, run_command


def add_arguments(parser):
    add_run_arguments(parser, PRESETS, "tiny (about a minute on 2 cores), small (4 layers x 256), "
                                       "bert-base (the 110M shape)", MLMConfig.RESUMABLE, "mlm-")
    add_config_arguments(parser, MLMConfig, PRESETS["tiny"])


def main(args):
    return run_command("train-mlm", functools.partial(run_training, TASK), args, config_overrides(args, MLMConfig), "mlm-")
