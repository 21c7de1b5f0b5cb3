"""Text files -> one token file -> batches of (B, T) inputs and next-token targets.

    text files ──tokenizer──► each document's ids, documents joined by <|endoftext|>
               ──write_tokens──► tokens.npy (uint16 when every id fits, else uint32)
    tokens.npy ──load_tokens──► a read-only memory map: pages load on demand, so a
               token file larger than RAM works
               ──split_tokens──► train = the first (1 - f) of the stream, val = the rest
    train ──BatchSampler(seed)──► x, y: (B, T) int64, y[b, t] = x[b, t + 1] one token on
    val ──sequential_batches──► every token but the first predicted exactly once (evaluation)

The sampler draws window starts from a ``numpy.random.Generator``; its
``bit_generator.state`` (a JSON-able dict) is the sampler's whole state, so a resumed
run sees the same batches an uninterrupted one would. Needs only NumPy.
"""

import os
import pathlib
import shutil
import tempfile
import tokenize

import numpy as np

from ._checks import check_int, check_real, check_token_ids
from .corpus import stdlib_corpus_files
from .fileio import atomic_write

__all__ = [
    "SEPARATOR_TOKEN",
    "text_files",
    "token_dtype",
    "document_ids",
    "write_tokens",
    "load_tokens",
    "split_tokens",
    "BatchSampler",
    "sequential_batches",
]

SEPARATOR_TOKEN = "<|endoftext|>"  # GPT-2's document separator


def text_files(paths=None, max_bytes=None):
    """The files to read: ``paths`` checked to be existing files, or by default the stdlib's source.

    paths : sequence of str/PathLike or None. None means the Python standard library's
        own ``.py`` files on this machine (``numpyllm.corpus.stdlib_corpus_files``),
        cut to the first ``max_bytes`` bytes when given (ignored for explicit paths).
    Returns a list of pathlib.Path. Raises FileNotFoundError / IsADirectoryError naming a
    bad path, ValueError for an empty list.
    """
    if paths is None:
        return stdlib_corpus_files(max_bytes=max_bytes)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [pathlib.Path(path) for path in paths]
    if not files:
        raise ValueError("no data files given")
    for path in files:
        if path.is_dir():
            raise IsADirectoryError(f"data file {str(path)!r} is a directory; pass the text files in it")
        if not path.is_file():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    return files


def token_dtype(vocab_size):
    """The smallest unsigned dtype that holds ids 0..vocab_size-1: little-endian uint16 or uint32."""
    vocab_size = check_int(vocab_size, "vocab_size", 1)
    if vocab_size > 2**32:
        raise ValueError(f"vocab_size must be <= 2**32 to store ids as uint32, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def document_ids(texts, tokenizer):
    """Yield each text's ids as an int64 array, a separator id between consecutive texts.

    The separator is the tokenizer's ``<|endoftext|>`` when it has one (as GPT-2's and
    numpyllm's trained tokenizers do), else documents are simply concatenated.
    Empty texts yield nothing (and no separator).
    """
    separator = tokenizer.special_tokens.get(SEPARATOR_TOKEN)
    first = True
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            continue
        if not first and separator is not None:
            ids = [separator, *ids]
        first = False
        yield np.asarray(ids, dtype=np.int64)


def write_tokens(path, chunks, vocab_size):
    """Write the concatenation of ``chunks`` (1-D integer arrays of ids) as a 1-D ``.npy`` file.

    Streams: the chunks go to a temporary file as they come and are never held in memory
    together, then the .npy header and the data are written next to ``path`` and renamed
    into place (atomic). The dtype is ``token_dtype(vocab_size)``.
    Returns the number of tokens written. Raises TypeError for a chunk of another dtype and
    ValueError for an id outside [0, vocab_size) (the file at ``path`` is then left as it was).
    """
    dtype = token_dtype(vocab_size)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    count = 0
    with tempfile.TemporaryFile(dir=directory) as raw:
        for i, chunk in enumerate(chunks):
            chunk = check_token_ids(chunk, f"chunks[{i}]", vocab_size)
            if chunk.ndim != 1:
                raise ValueError(f"chunks[{i}] must be 1-D, got shape {chunk.shape}")
            raw.write(chunk.astype(dtype).tobytes())
            count += chunk.size
        raw.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
        with atomic_write(path) as f:
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(raw, f, 1 << 20)
    return count


def load_tokens(path, vocab_size=None):
    """The 1-D token array of ``path`` as a read-only memory map.

    vocab_size: when given, every id must be below it (one pass over the file, in
    chunks; the ids come from a tokenizer that must match the model). A file that is
    not such an array (truncated, damaged, pickled, of another dtype or shape) raises
    ValueError naming ``path``; memory mapping allocates nothing, and NumPy checks the
    header's size against the file's before mapping.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"token file {path!r} does not exist")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as error:  # the last two: a damaged header
        raise ValueError(f"{path} is not a .npy token array ({error})") from None
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype not in (np.dtype("<u2"),
                                                                                      np.dtype("<u4")):
        raise ValueError(f"{path} must hold a 1-D uint16/uint32 token array, got "
                         f"{getattr(tokens, 'dtype', type(tokens).__name__)} shape {getattr(tokens, 'shape', '?')}")
    if vocab_size is not None and tokens.size:
        largest = max(int(tokens[i:i + (1 << 24)].max()) for i in range(0, tokens.size, 1 << 24))
        if largest >= vocab_size:
            raise ValueError(f"{path} holds token id {largest}, outside the tokenizer's {vocab_size} ids: "
                             "it was not encoded with this run's tokenizer")
    return tokens


def split_tokens(tokens, val_fraction, min_tokens):
    """(train, val): the first and last parts of ``tokens``, val taking ``val_fraction`` of it.

    Both parts are views (no copy of a memory map). Each must hold at least
    ``min_tokens`` (a window of block_size + 1), else ValueError saying how many there are.
    """
    check_real(val_fraction, "val_fraction", 0, 1, low_inclusive=False)
    n_val = int(round(len(tokens) * val_fraction))
    n_train = len(tokens) - n_val
    if min(n_train, n_val) < min_tokens:
        raise ValueError(
            f"the corpus has {len(tokens)} tokens: {n_train} for training and {n_val} for validation "
            f"(val_fraction {val_fraction}), but each part needs at least {min_tokens} "
            "(block_size + 1); give more text or a smaller block size"
        )
    return tokens[:n_train], tokens[n_train:]


class BatchSampler:
    """Random windows of ``block_size + 1`` consecutive tokens, as inputs and targets.

    Parameters
    ----------
    tokens : 1-D integer array (a memory map is fine: only the windows are read)
    batch_size, block_size : int >= 1; ``len(tokens)`` must be >= block_size + 1
    seed : int >= 0, seeds the generator that draws the window starts

    ``sample()`` returns x, y: (batch_size, block_size) int64 with y[:, t] = the token
    after x[:, t]. Starts are uniform over every position a whole window fits in.
    ``state`` gets and sets the generator's state (a JSON-able dict): restoring it
    repeats the same sequence of batches.
    """

    def __init__(self, tokens, batch_size, block_size, seed):
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.block_size = check_int(block_size, "block_size", 1)
        check_int(seed, "seed", 0)
        if np.ndim(tokens) != 1 or len(tokens) < block_size + 1:
            raise ValueError(f"tokens must be 1-D with at least block_size + 1 = {block_size + 1} entries, "
                             f"got shape {np.shape(tokens)}")
        self.tokens = tokens
        self._rng = np.random.default_rng(seed)

    def sample(self):
        starts = self._rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        return _windows(self.tokens, starts, self.block_size)

    @property
    def state(self):
        return self._rng.bit_generator.state

    @state.setter
    def state(self, value):
        self._rng.bit_generator.state = value


def sequential_batches(tokens, block_size, batch_size):
    """Yield (x, y) batches of non-overlapping windows that score every token but the first once.

    Window i covers inputs tokens[iT : iT + T] and targets tokens[iT + 1 : iT + T + 1]
    (T = block_size). Full windows come ``batch_size`` at a time as (b, T) int64; a
    shorter final window, if any, comes last on its own as (1, t) with t < T. Over all
    batches the targets are exactly tokens[1:]. ``len(tokens)`` must be >= 2.
    """
    block_size = check_int(block_size, "block_size", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    n = len(tokens)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score one prediction, got {n}")
    n_full = (n - 1) // block_size
    for first in range(0, n_full, batch_size):
        yield _windows(tokens, np.arange(first, min(first + batch_size, n_full)) * block_size, block_size)
    tail_start = n_full * block_size
    if tail_start < n - 1:
        yield _windows(tokens, np.array([tail_start]), n - 1 - tail_start)


def _windows(tokens, starts, length):
    """Inputs x = tokens[s : s + length] and targets y = tokens[s + 1 : s + length + 1] for
    each start s: two int64 (len(starts), length) arrays, views of one gathered copy."""
    windows = tokens[starts[:, None] + np.arange(length + 1)].astype(np.int64)  # (b, length + 1)
    return windows[:, :-1], windows[:, 1:]
