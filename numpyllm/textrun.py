"""What the two objectives that learn from a text corpus share: next-token (GPT) and masked-LM (BERT).

``CorpusConfig`` adds to the loop's settings the corpus (``--data`` files, or this
Python's standard library source cut to ``--corpus-bytes``), the tokenizer and the
step budget; ``encode_corpus`` turns the files, shuffled by the seed, into OUT/tokens.npy
once (read memory-mapped after). Needs only NumPy and tqdm.
"""

import dataclasses
import os
import time

import numpy as np

from . import attention
from ._checks import check_real
from .loop import LoopConfig, option

__all__ = ["CorpusConfig", "CorpusTask", "TOKENS_FILE", "corpus_files", "encode_corpus"]

TOKENS_FILE = "tokens.npy"


@dataclasses.dataclass(frozen=True)
class CorpusConfig(LoopConfig):
    """The loop's settings plus a text corpus, its tokenizer, the window length and the step budget."""

    data: tuple = option(None, "text files to train on (default: this Python's standard library "
                               "source files, no download)", nargs="+", metavar="FILE")
    corpus_bytes: int = option(3_000_000, "use the first N bytes of the default corpus (0: all of it)", minimum=0)
    tokenizer: str = option(None, "tokenizer directory to use instead of training one on the corpus",
                            metavar="DIR")
    vocab_size: int = option(2048, "vocabulary size of the tokenizer trained on the corpus", minimum=1)
    init: str = option(None, "continue from this model directory (a numpyllm run or a Hugging Face one)",
                       metavar="DIR")
    val_fraction: float = option(0.1, "fraction of the tokens held out for validation")
    block_size: int = option(128, "context length: tokens per training window", minimum=1)
    dtype: str = option("float32", "parameter and compute dtype", choices=("float32", "float64"))
    attention_backend: str = option("auto", "attention implementation (auto: the compiled kernel "
                                            "when built)", choices=attention.BACKENDS)
    max_steps: int = option(400, "optimizer steps in all", minimum=1)
    eval_interval: int = option(50, "validate every N steps (and at the end)", minimum=1)
    eval_steps: int = option(8, "validation batches per evaluation (the same windows each time)", minimum=1)

    RESUMABLE = ("max_steps", "eval_interval", "eval_steps", "checkpoint_interval", "log_interval",
                 "attention_backend")

    def check(self):
        super().check()
        check_real(self.val_fraction, "--val-fraction", 0, 1, low_inclusive=False)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup-steps ({self.warmup_steps}) must be <= --max-steps ({self.max_steps})")

    def describe_field(self, name, value):
        """How ``_print_config`` shows a setting: the corpus in words, the rest as is."""
        if name != "data":
            return value
        if self.data:
            return f"{len(self.data)} file(s): " + ", ".join(self.data[:3]) + (" ..." if len(self.data) > 3 else "")
        size = f"the first {self.corpus_bytes:,} bytes" if self.corpus_bytes else "all"
        return f"the Python standard library's source files ({size})"


def corpus_files(config):
    """The run's text files: --data, or the stdlib's source cut to --corpus-bytes (0: all)."""
    from .data import text_files

    return text_files(config.data, config.corpus_bytes or None)


class CorpusTask:
    """What a task that trains on the text corpus shares: its inputs are the corpus files, and a
    new run needs no check beyond its config's own. Subclasses add command, config_class,
    presets, new_model, load_model and objective (see ``numpyllm.loop``)."""

    def check_new(self, config, overrides):
        pass

    def inputs(self, config):
        return corpus_files(config)


def encode_corpus(out, config, files, document_ids, vocab_size, progress):
    """Encode the run's text ``files`` into OUT/tokens.npy; return the file's path.

    document_ids: a function from an iterable of texts to an iterable of 1-D id arrays
    (``numpyllm.data.document_ids`` with a tokenizer bound, or the masked-LM one).
    """
    from tqdm.auto import tqdm

    from .corpus import read_texts
    from .data import write_tokens

    # A seeded shuffle, so the held-out tail is a random sample of the files, not the last ones by name.
    files = [files[i] for i in np.random.default_rng(config.seed).permutation(len(files))]
    path = os.path.join(out, TOKENS_FILE)
    started = time.perf_counter()
    texts = read_texts(tqdm(files, desc="encoding", unit=" files", disable=not progress, leave=False))
    count = write_tokens(path, document_ids(texts), vocab_size)
    if count == 0:
        raise ValueError(f"the corpus has no text: {len(files)} file(s), all empty"
                         + (f" ({', '.join(map(str, config.data))})" if config.data else ""))
    print(f"encoded {count:,} tokens from {len(files)} files into {path} "
          f"({time.perf_counter() - started:.1f} s)")
    return path
