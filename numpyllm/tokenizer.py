"""Byte-level BPE, as GPT-2 defines it: train, encode, decode, and GPT-2's files both ways.

Text is split into pre-tokens by GPT-2's pattern (contractions, runs of letters, of
digits, of other symbols, each with at most one leading space, and whitespace runs),
each pre-token's UTF-8 bytes start as single-byte tokens, and merges are applied in
rank order inside the pre-token. Encoding a repeated pre-token hits a cache.

Ids: the 256 single bytes are ids 0..255 (id = byte value) in a tokenizer trained here,
merged tokens follow in the order learned, special tokens come last (GPT-2's own files
use their own order, e.g. ``<|endoftext|>`` = 50256). Files are GPT-2's ``vocab.json``
and ``merges.txt`` (see ``bpe_files``), so Hugging Face ``GPT2TokenizerFast`` loads what
``save`` writes and ``from_pretrained`` loads GPT-2's and ``tokenizers``' files.

The tokenizer is pure Python (no NumPy); ``regex`` (GPT-2's pattern needs
``\\p{L}``/``\\p{N}``) is imported on first use and ``tqdm`` only for progress bars.
"""

import codecs
import functools
import heapq
import itertools
import re

from . import bpe_files, bpe_train
from ._checks import check_int

__all__ = ["BPETokenizer", "GPT2_SPLIT_PATTERN"]

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=None)
def _split_pattern():
    """GPT-2's pre-tokenization pattern, compiled with the ``regex`` package."""
    try:
        import regex
    except ImportError:
        raise ImportError("numpyllm.BPETokenizer needs the regex package: pip install regex") from None
    return regex.compile(GPT2_SPLIT_PATTERN)


@functools.lru_cache(maxsize=64)
def _special_pattern(special_tokens):
    """A pattern matching any of ``special_tokens`` (a tuple of str), longest first, captured."""
    alternatives = "|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True))
    return re.compile(f"({alternatives})")


class BPETokenizer:
    """A byte-level BPE tokenizer.

    Build one with ``BPETokenizer.train(texts, vocab_size)`` or
    ``BPETokenizer.from_pretrained(directory)``; the constructor takes the parts directly.

    Parameters
    ----------
    vocab : dict bytes -> int
        Every byte-level token and its id; must hold all 256 single bytes and every
        merge's two sides and result.
    merges : sequence of (bytes, bytes)
        The merges in rank order (first = applied first).
    special_tokens : dict str -> int
        Tokens such as ``"<|endoftext|>"`` that encode only when explicitly allowed
        (see ``encode``) and decode to their literal text.
    cache_size : int >= 0 or None
        How many distinct pre-tokens the encode cache remembers (least recently used go);
        None: unbounded.

    Together the ids must be 0..N-1 without gaps or repeats.
    """

    def __init__(self, vocab, merges, special_tokens=None, cache_size=1 << 16):
        special_tokens = dict(special_tokens or {})
        for token in special_tokens:
            _check_special_token(token)
        cache_size = check_int(cache_size, "cache_size", 0, optional=True)
        missing = [byte for byte in range(256) if bytes([byte]) not in vocab]
        if missing:
            raise ValueError(
                f"vocab must contain all 256 single bytes; missing 0x{missing[0]:02x} and {len(missing) - 1} more"
            )
        for left, right in merges:
            for token in (left, right, left + right):
                if token not in vocab:
                    raise ValueError(f"merge {left!r} + {right!r} needs token {token!r}, which is not in vocab")

        # (name for messages, id, the bytes it decodes to)
        entries = [(token, token_id, token) for token, token_id in vocab.items()]
        entries += [(token, token_id, token.encode("utf-8")) for token, token_id in special_tokens.items()]
        id_to_bytes = [None] * len(entries)
        for name, token_id, data in entries:
            if type(token_id) is not int or not 0 <= token_id < len(entries):
                raise ValueError(f"ids must be 0..{len(entries) - 1} without gaps; {name!r} has id {token_id!r}")
            if id_to_bytes[token_id] is not None:
                raise ValueError(f"id {token_id} is used twice, the second time by {name!r}")
            id_to_bytes[token_id] = data

        self._vocab = dict(vocab)
        self._merges = [(left, right) for left, right in merges]
        # encoding works on ids: (left id, right id) -> (rank, merged id); a repeated merge keeps its first rank
        self._merge_ids = {
            (vocab[left], vocab[right]): (rank, vocab[left + right])
            for rank, (left, right) in reversed(list(enumerate(self._merges)))
        }
        self._byte_ids = [vocab[bytes([byte])] for byte in range(256)]
        self._special_tokens = special_tokens
        self._id_to_bytes = id_to_bytes
        self._piece_ids = functools.lru_cache(maxsize=cache_size)(self._encode_piece)

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(cls, texts, vocab_size, special_tokens=("<|endoftext|>",), *, min_frequency=2, progress=None):
        """Learn a tokenizer of at most ``vocab_size`` ids from ``texts``.

        Parameters
        ----------
        texts : str or iterable of str
            Read once, one item at a time (a generator of file contents works and is
            never joined into one string). Literal special-token text in the texts is
            cut out before counting: it separates documents and is not learned from.
        vocab_size : int >= 256 + len(special_tokens)
            256 byte tokens + learned merges + ``len(special_tokens)``. Fewer tokens
            result when no pair occurs ``min_frequency`` times any more.
        special_tokens : sequence of str
            Get the last ids, in the order given.
        min_frequency : int >= 1
            A pair must occur at least this often (over the corpus) to be merged.
        progress : bool or None
            tqdm progress bars; None shows them only when stderr is a terminal.

        Merging picks the most frequent adjacent pair, ties broken by the
        lexicographically smallest (left bytes, right bytes), so the result does not
        depend on the order of the texts.
        """
        if isinstance(texts, str):
            texts = (texts,)
        elif not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a sequence of str, not one str ({special_tokens!r})")
        special_tokens = tuple(special_tokens)
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens has repeats: {special_tokens!r}")
        for token in special_tokens:
            _check_special_token(token)
        vocab_size = check_int(vocab_size, "vocab_size", 256 + len(special_tokens),
                               hint=f"256 byte tokens + {len(special_tokens)} special token(s)")
        min_frequency = check_int(min_frequency, "min_frequency", 1)

        special_pattern = _special_pattern(special_tokens) if special_tokens else None
        word_counts = bpe_train.count_pretokens(texts, _split_pattern(), special_pattern, progress)
        n_new_tokens = vocab_size - 256 - len(special_tokens)
        merges = bpe_train.learn_merges(word_counts, n_new_tokens, min_frequency, progress)

        vocab = {bytes([byte]): byte for byte in range(256)}
        for left, right in merges:
            vocab.setdefault(left + right, len(vocab))
        specials = {token: len(vocab) + offset for offset, token in enumerate(special_tokens)}
        return cls(vocab, merges, specials)

    @classmethod
    def from_pretrained(cls, directory):
        """Load ``vocab.json`` and ``merges.txt`` from ``directory`` (GPT-2's, ``tokenizers``', or ``save``'s).

        vocab.json entries that are neither a single byte nor a merge's result become
        special tokens (GPT-2's ``<|endoftext|>``). Missing files raise
        FileNotFoundError; malformed ones ValueError naming the file and line or entry.
        """
        vocab, merges, special_tokens = bpe_files.read_gpt2_files(directory)
        return cls(vocab, merges, special_tokens)

    def save(self, directory):
        """Write ``vocab.json`` and ``merges.txt`` (GPT-2's format) into ``directory``, creating it if needed."""
        bpe_files.write_gpt2_files(directory, self._vocab, self._merges, self._special_tokens)

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self):
        """Number of ids (0..vocab_size-1): the rows an embedding table needs."""
        return len(self._id_to_bytes)

    @property
    def special_tokens(self):
        """dict str -> id of the special tokens (a copy)."""
        return dict(self._special_tokens)

    @property
    def merges(self):
        """The merges in rank order, as a list of (bytes, bytes) (a copy)."""
        return list(self._merges)

    def __repr__(self):
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"special_tokens={list(self._special_tokens)})"
        )

    # ------------------------------------------------------------------ encode

    def encode(self, text, allowed_special=()):
        """Encode ``text`` into a list of ids.

        Literal special-token text (say ``"<|endoftext|>"`` typed by a user) is encoded as
        ordinary text by default, so untrusted input can never produce a special id.
        ``allowed_special`` lists the special tokens whose literal text should become
        their id instead (``"all"`` for every special token); where two overlap, the
        longer wins.

        Raises TypeError when ``text`` is not a str and ValueError when it contains a lone
        surrogate (no UTF-8 encoding exists, so no byte tokens either) or
        ``allowed_special`` names an unknown special token.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        allowed = self._allowed_special(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        ids = []
        # split() with a capturing group alternates ordinary text and special-token text
        for index, chunk in enumerate(_special_pattern(allowed).split(text)):
            if index % 2:
                ids.append(self._special_tokens[chunk])
            else:
                ids.extend(self._encode_ordinary(chunk))
        return ids

    def _allowed_special(self, allowed_special):
        """Validate ``allowed_special`` -> a sorted tuple of special-token strings."""
        if allowed_special == "all":
            return tuple(sorted(self._special_tokens))
        if isinstance(allowed_special, str) or not hasattr(allowed_special, "__iter__"):
            raise TypeError(f"allowed_special must be 'all' or a collection of str, got {allowed_special!r}")
        allowed = tuple(sorted(set(allowed_special)))
        unknown = [token for token in allowed if token not in self._special_tokens]
        if unknown:
            raise ValueError(
                f"allowed_special names {unknown[0]!r}, which is not a special token of this tokenizer "
                f"(those are {list(self._special_tokens)})"
            )
        return allowed

    def _encode_ordinary(self, text):
        """Pre-tokenize and encode each pre-token (through the cache)."""
        return list(itertools.chain.from_iterable(map(self._piece_ids, _split_pattern().findall(text))))

    def _encode_piece(self, piece):
        """One pre-token -> tuple of ids, by applying merges in rank order to its bytes."""
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"text contains the lone surrogate {piece[error.start]!r}, which has no UTF-8 encoding"
            ) from None
        byte_ids = self._byte_ids
        return tuple(_apply_merges([byte_ids[byte] for byte in data], self._merge_ids))

    # ------------------------------------------------------------------ decode

    def decode_bytes(self, ids):
        """The bytes ``ids`` stand for (special tokens as their UTF-8 text).

        For streaming, feed these to ``codecs.getincrementaldecoder("utf-8")()``: it holds
        back a multi-byte character until its last byte arrives. Raises ValueError naming
        an id outside 0..vocab_size-1 and TypeError for a non-integer id.
        """
        table = self._id_to_bytes
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # NumPy ints -> plain ints
        try:
            if ids and min(ids) < 0:  # list indexing would silently wrap negative ids around
                raise IndexError
            return b"".join([table[token_id] for token_id in ids])
        except IndexError:
            bad = next(token_id for token_id in ids if not 0 <= token_id < len(table))
            raise ValueError(f"unknown token id {bad}: ids must be in 0..{len(table) - 1}") from None
        except TypeError:
            bad = next(token_id for token_id in ids if not isinstance(token_id, int))
            raise TypeError(f"ids must be integers, got {bad!r} ({type(bad).__name__})") from None

    def decode(self, ids, errors="replace"):
        """Decode ``ids`` to a str; ``decode(encode(s)) == s`` for every valid str ``s``.

        Ids that end inside a multi-byte character (or any invalid UTF-8) are decoded
        with ``errors`` as in ``bytes.decode``: by default each bad sequence becomes
        U+FFFD; ``errors="strict"`` raises UnicodeDecodeError instead. For streaming
        generation use ``decode_bytes`` with an incremental decoder.
        """
        try:
            codecs.lookup_error(errors)
        except (LookupError, TypeError):
            raise ValueError(
                f"errors must be an error handler name such as 'replace' or 'strict', got {errors!r}"
            ) from None
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


def _check_special_token(token):
    if not isinstance(token, str) or not token:
        raise ValueError(f"special_tokens must be non-empty str, got {token!r}")


def _apply_merges(ids, merge_ids):
    """Merge a pre-token's byte ids into its final ids, in O(n log n) for n bytes.

    GPT-2's rule is "while some adjacent pair is a merge, take the lowest-ranked such
    pair and merge its occurrences left to right", overlaps going to the leftmost
    ("aaa" -> "aa", "a"). Rescanning the piece after every merge is O(n) per merge,
    O(n^2) for a long piece. Here the tokens form a doubly linked list and each
    adjacent pair that is a merge waits in a heap ordered by (rank, position), so a pop
    gives the leftmost occurrence of the lowest-ranked pair. A merge changes only the
    pairs on either side of it: those are queued anew, and an entry whose pair has
    changed since it was queued (a neighbour merged first) is skipped when popped.

    Why this is GPT-2's rule: a merge's result only occurs in merges ranked after it
    (training learns a token before any merge that uses it), so a merge of rank r
    creates only pairs ranked above r. Hence ranks come up in increasing order, every
    occurrence of a rank is queued when it comes up and they go left to right, and an
    occurrence overlapping one just merged is skipped. (With a merge list that breaks
    this order the two rules can differ; this one then agrees with Hugging Face
    ``tokenizers``.)

    ``ids``: the byte tokens' ids (a list); ``merge_ids``: (left id, right id) ->
    (rank, merged id). Returns the list of ids.
    """
    n = len(ids)
    # tokens[i]: id of the token starting at byte i, None once merged into its left
    # neighbour. Index n is a sentinel for "no token" at either end: tokens[n] is None
    # (no merge has None as a side) and it is its own neighbour.
    tokens = ids + [None]
    following = list(range(1, n + 1)) + [n]  # start of the next token
    preceding = [n] + list(range(n))  # start of the previous token
    # heap entries: rank * stride + position, one int ordered like (rank, position)
    # (ints compare faster than tuples)
    stride = n + 1
    merge = merge_ids.get
    heap = []
    for start in range(n - 1):
        found = merge((tokens[start], tokens[start + 1]))
        if found is not None:
            heap.append(found[0] * stride + start)
    heapq.heapify(heap)
    while heap:
        rank, left = divmod(heapq.heappop(heap), stride)
        right = following[left]
        found = merge((tokens[left], tokens[right]))
        if found is None or found[0] != rank:
            continue  # this pair has changed since it was queued (ranks are unique to pairs)
        tokens[left], tokens[right] = found[1], None
        after = following[right]
        following[left], preceding[after] = after, left
        for start in (preceding[left], left):  # the new pairs on either side of the merged token
            found = merge((tokens[start], tokens[following[start]]))
            if found is not None:
                heapq.heappush(heap, found[0] * stride + start)
    return [token for token in tokens if token is not None]
