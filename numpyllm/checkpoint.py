"""Training checkpoints: a model directory plus everything a run needs to resume exactly.

A run directory RUN holds its latest checkpoint in RUN/checkpoint/:

    config.json, model.safetensors   the model, GPT-2's Hugging Face format (GPT.from_pretrained,
                                     transformers.GPT2LMHeadModel.from_pretrained)
    vocab.json, merges.txt           the tokenizer (BPETokenizer.from_pretrained, GPT2TokenizerFast)
    optimizer.npz                    AdamW's step count, hyper-parameters and moments
    trainer_state.json               the step, the data sampler's RNG state, the training config

A save never alters a complete checkpoint before its replacement is complete:

    1. write every file into RUN/checkpoint.tmp/ (each fsynced)
    2. rename RUN/checkpoint     -> RUN/checkpoint.old
    3. rename RUN/checkpoint.tmp -> RUN/checkpoint
    4. delete RUN/checkpoint.old

A crash during 1 leaves RUN/checkpoint/ as it was. POSIX cannot swap two non-empty
directories in one call, so between 2 and 3 only RUN/checkpoint.old/ exists:
``find_checkpoint`` then returns it and the next save moves it back first.

A run that keeps its best model by a validation metric (train-classifier) also holds
RUN/best/, saved the same way; ``model_directory(RUN)`` then names it.

``load_model_and_tokenizer`` is how eval, generate and train --init read a model: from a
model directory or a run's checkpoint, with a tokenizer whose vocabulary fits it. Needs
only NumPy and what the model, tokenizer and optimizer use to save and load themselves.
"""

import json
import os
import shutil

from .fileio import atomic_write, read_json_object
from .hub import CONFIG_NAME

__all__ = [
    "CHECKPOINT_DIR",
    "BEST_DIR",
    "save_checkpoint",
    "find_checkpoint",
    "read_trainer_state",
    "model_directory",
    "load_model_and_tokenizer",
    "load_bert_and_tokenizer",
    "OPTIMIZER_FILE",
    "TRAINER_STATE_FILE",
]

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
OPTIMIZER_FILE = "optimizer.npz"
TRAINER_STATE_FILE = "trainer_state.json"
_TMP_SUFFIX = ".tmp"
_OLD_SUFFIX = ".old"


def _fsync_directory(path):
    """Make renames inside ``path`` durable (POSIX; Windows cannot open a directory)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(run_dir, model, tokenizer, optimizer, trainer_state, name=CHECKPOINT_DIR):
    """Write a complete checkpoint into ``run_dir``/``name``, replacing the previous one.

    model: anything with ``save_pretrained(dir)`` (GPT, the BERT classes); tokenizer:
    anything with ``save(dir)`` (BPETokenizer, WordPieceTokenizer); optimizer: an AdamW
    (``save``); trainer_state: a JSON-able dict (the step, the sampler state, the training
    configuration). See the module docstring for the crash-safe sequence.
    Returns the checkpoint's path.
    """
    run_dir = os.fspath(run_dir)
    final = os.path.join(run_dir, name)
    tmp, old = final + _TMP_SUFFIX, final + _OLD_SUFFIX
    if not os.path.isdir(final) and os.path.isdir(old):  # a previous save died between its renames
        os.rename(old, final)
    shutil.rmtree(tmp, ignore_errors=True)  # what a previous save left half-written
    shutil.rmtree(old, ignore_errors=True)
    os.makedirs(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        optimizer.save(os.path.join(tmp, OPTIMIZER_FILE))
        with atomic_write(os.path.join(tmp, TRAINER_STATE_FILE), "w") as f:
            json.dump(trainer_state, f, indent=2)
            f.write("\n")
        _fsync_directory(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(final):
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_directory(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir):
    """The path of ``run_dir``'s latest complete checkpoint, or None when it has none."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + _OLD_SUFFIX):
        path = os.path.join(os.fspath(run_dir), name)
        if os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
            return path
    return None


def read_trainer_state(checkpoint_dir):
    """The dict ``save_checkpoint`` stored as trainer_state.json in ``checkpoint_dir``."""
    return read_json_object(os.path.join(os.fspath(checkpoint_dir), TRAINER_STATE_FILE))


def model_directory(path):
    """``path`` itself when it holds a model (config.json), else the model of the run ``path``:
    its best/ when it kept one, else its latest checkpoint.

    Lets ``--model`` name either a model directory or a training run's directory.
    Raises FileNotFoundError when ``path`` is neither.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return path
    if os.path.isfile(os.path.join(path, BEST_DIR, CONFIG_NAME)):
        return os.path.join(path, BEST_DIR)
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        what = "directory" if os.path.isdir(path) else "path"
        raise FileNotFoundError(
            f"model {what} {path!r} has no {CONFIG_NAME} and no training checkpoint "
            f"({CHECKPOINT_DIR}/{TRAINER_STATE_FILE})"
        )
    return checkpoint


def load_model_and_tokenizer(path, direction, tokenizer_path=None, attention_backend="auto", dtype=None):
    """(directory, model, tokenizer): the GPT at ``path`` and a tokenizer whose ids fit it.

    path: a model directory or a training run's (see ``model_directory``, which gives
    ``directory``). tokenizer_path: a directory with vocab.json + merges.txt (default:
    ``directory``). attention_backend, dtype: as for ``GPT.from_pretrained``.
    direction: which way ids travel, so which vocabulary must cover the other:

        "encode"  text -> tokenizer -> model (eval, fine-tuning): every id the tokenizer
                  can produce must be a model id, tokenizer.vocab_size <= model vocab_size;
        "decode"  model -> sampled ids -> tokenizer (generate): every id the model can
                  sample must decode, model vocab_size <= tokenizer.vocab_size.

    Raises FileNotFoundError for a missing model or tokenizer, ValueError when the
    vocabularies do not fit. The tokenizer loads first, so its errors come before a
    large model is read.
    """
    from .gpt import GPT
    from .tokenizer import BPETokenizer

    if direction not in ("encode", "decode"):
        raise ValueError(f"direction must be 'encode' or 'decode', got {direction!r}")
    directory = model_directory(path)
    tokenizer_dir = os.fspath(tokenizer_path or directory)
    tokenizer = BPETokenizer.from_pretrained(tokenizer_dir)
    model = GPT.from_pretrained(directory, attention_backend=attention_backend, dtype=dtype)
    n_tokenizer, n_model = tokenizer.vocab_size, model.config.vocab_size
    if direction == "encode" and n_tokenizer > n_model:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has {n_tokenizer} ids but the model in {directory} "
                         f"only {n_model}: text could encode to ids the model does not have")
    if direction == "decode" and n_model > n_tokenizer:
        raise ValueError(f"the model in {directory} has {n_model} token ids but the tokenizer in {tokenizer_dir} "
                         f"only {n_tokenizer}: sampled ids could not be decoded")
    return directory, model, tokenizer


def load_bert_and_tokenizer(path, model_class, tokenizer_path=None, flag="--model", **model_options):
    """(directory, model, tokenizer): the BERT at ``path`` as ``model_class`` and its WordPiece.

    path: a model directory (numpyllm's or Hugging Face's: config.json with model_type
    "bert", its weights, vocab.txt) or a training run's (see ``model_directory``).
    model_class: BertForMaskedLM, BertForSequenceClassification, ... tokenizer_path: a
    directory with vocab.txt (default: ``directory``). flag names the option in messages.
    model_options: passed to ``model_class.from_pretrained`` (attention_backend, seed,
    BertConfig fields such as num_labels and id2label).
    Raises FileNotFoundError for missing files and ValueError for a model that is not a
    BERT (a GPT-2 directory, say) or a tokenizer with ids the model does not have.
    """
    from .hub import read_config
    from .wordpiece import WordPieceTokenizer

    directory = model_directory(path)
    model_type = read_config(directory, "a BERT configuration object").get("model_type")
    if model_type != "bert":
        raise ValueError(f"{flag} {os.fspath(path)!r}: {os.path.join(directory, CONFIG_NAME)} has model_type "
                         f"{model_type!r}; this command needs a BERT (model_type 'bert')")
    tokenizer_dir = os.fspath(tokenizer_path or directory)
    tokenizer = WordPieceTokenizer.from_pretrained(tokenizer_dir)
    model = model_class.from_pretrained(directory, **model_options)
    if model_class.__name__ in ("BertForMaskedLM", "BertForPreTraining"):
        if tokenizer.vocab_size < model.config.vocab_size:  # predicted ids must decode
            raise ValueError(f"the model in {directory} predicts {model.config.vocab_size} token ids but the "
                             f"tokenizer in {tokenizer_dir} (its vocab.txt or tokenizer.json) has only "
                             f"{tokenizer.vocab_size}: the two are not from one checkpoint")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has {tokenizer.vocab_size} ids but the model in "
                         f"{directory} only {model.config.vocab_size}: text could encode to ids the model does not have")
    return directory, model, tokenizer
