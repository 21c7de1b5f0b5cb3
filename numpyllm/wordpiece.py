"""WordPiece, as BERT defines it: train, tokenize, batch, decode, and Hugging Face's files both ways.

Two stages, as in BERT's ``tokenization.py``:

1. the basic tokenizer (``wordpiece_basic.BasicTokenizer``): clean, space out CJK,
   strip accents, lowercase, split on whitespace and punctuation -> words;
2. WordPiece (``wordpiece_split`` below): each word is cut greedily, longest match
   first, into vocabulary pieces, every piece after the first spelled with the ``##``
   continuation prefix; a word with no cover, or longer than
   ``max_input_chars_per_word`` characters, becomes the single token [UNK].

Special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], and any added token of a loaded
tokenizer.json) are cut out of the raw text first and never split or normalized, as
Hugging Face ``tokenizers`` does with its added tokens. Encoding a repeated word hits a
cache. The result is what ``transformers.BertTokenizerFast`` gives (tested against it).

Pure Python plus NumPy for the batch arrays; training needs tqdm for its progress bar.
"""

import functools
import itertools
import os
import re

import numpy as np

from . import bpe_train, wordpiece_files, wordpiece_train
from ._checks import check_int, check_token_ids
from .wordpiece_basic import BasicTokenizer
from .wordpiece_files import SPECIAL_TOKEN_NAMES

__all__ = ["WordPieceTokenizer", "wordpiece_split", "truncated_lengths"]

PREFIX = wordpiece_train.PREFIX

# tokenizers' WordPiece decoder cleans each token (with its leading space) this way ...
_DECODER_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                    (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
# ... and transformers' clean_up_tokenization_spaces cleans the whole text this way.
_TEXT_CLEANUP = tuple(pair for pair in _DECODER_CLEANUP if pair[0] != " do not")


def _cleanup(text, replacements):
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def wordpiece_split(word, vocab, unk_id, max_input_chars_per_word=100, max_piece_chars=None):
    """WordPiece's second stage: one word -> tuple of ids, greedy longest-match-first.

    From the word's start, take the longest prefix that is in ``vocab``; from there on,
    the longest next piece whose ``"##" + piece`` is in ``vocab``; and so on to the end.
    When some position has no piece at all, or the word has more than
    ``max_input_chars_per_word`` characters, the whole word is ``(unk_id,)``.

    vocab : dict str -> int
    max_piece_chars : int or None, no vocabulary piece (without its ``##``) is longer;
        an upper bound only saves lookups, it never changes the result
    """
    n_chars = len(word)
    if n_chars > max_input_chars_per_word:
        return (unk_id,)
    longest = n_chars if max_piece_chars is None else max_piece_chars
    ids = []
    start = 0
    while start < n_chars:
        for end in range(min(n_chars, start + longest), start, -1):
            piece_id = vocab.get(word[start:end] if start == 0 else PREFIX + word[start:end])
            if piece_id is not None:
                break
        else:
            return (unk_id,)
        ids.append(piece_id)
        start = end
    return tuple(ids)


def truncated_lengths(n_first, n_second, budget):
    """How many tokens of each sequence "longest_first" truncation keeps, as tokenizers does.

    n_second is None for a single sequence (it keeps ``min(n_first, budget)``). For a
    pair that does not fit, the shorter sequence keeps ``min(its length, budget // 2)``
    (the first when they tie) and the longer one gets the rest of ``budget``.
    """
    if n_second is None:
        return min(n_first, budget), None
    if n_first + n_second <= budget:
        return n_first, n_second
    if n_first > n_second:
        kept_second = min(n_second, budget // 2)
        return budget - kept_second, kept_second
    kept_first = min(n_first, budget // 2)
    return kept_first, budget - kept_first


def _batch_arrays(rows, segment_a_lengths, width, pad_id):
    """Rows of ids -> BERT's three int64 arrays (B, width), right-padded with ``pad_id``.

    token_type_ids is 0 over each row's first ``segment_a_lengths[b]`` tokens ([CLS] a
    [SEP]) and 1 over the rest of the row (b [SEP]); attention_mask is 1 over the row.
    """
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, (ids, segment_a_length) in enumerate(zip(rows, segment_a_lengths)):
        input_ids[row, : len(ids)] = ids
        token_type_ids[row, segment_a_length : len(ids)] = 1
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


class WordPieceTokenizer:
    """BERT's WordPiece tokenizer.

    Build one with ``WordPieceTokenizer.train(texts)`` or
    ``WordPieceTokenizer.from_pretrained(directory)``; the constructor takes the parts.

    Parameters
    ----------
    vocab : sequence of str (id = position) or dict str -> int (ids 0..N-1, no gaps)
    lowercase, strip_accents, tokenize_chinese_chars, clean_text :
        the basic tokenizer's options (``wordpiece_basic.BasicTokenizer``);
        ``strip_accents=None`` follows ``lowercase``
    pad_token, unk_token, cls_token, sep_token, mask_token : str, must be in ``vocab``
    max_input_chars_per_word : int >= 1, longer words become [UNK]
    clean_up_tokenization_spaces : bool, whether ``decode`` also applies transformers'
        whole-text clean-up (" ." -> ".", " 's" -> "'s", ...); transformers >= 5 defaults
        to False for BERT, older BERT directories say True
    added_tokens : sequence of (str, bool), further never-split tokens in ``vocab`` and
        whether each is special (dropped by ``decode(skip_special_tokens=True)``)
    cache_size : int >= 0 or None, distinct words the encode cache remembers (None: all)
    """

    def __init__(self, vocab, *, lowercase=True, strip_accents=None, tokenize_chinese_chars=True, clean_text=True,
                 pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                 max_input_chars_per_word=100, clean_up_tokenization_spaces=False, added_tokens=(),
                 cache_size=1 << 18):
        if isinstance(vocab, dict):
            vocab = dict(vocab)
        elif isinstance(vocab, str) or not hasattr(vocab, "__iter__"):
            raise TypeError(f"vocab must be a sequence of str or a dict str -> int, got {type(vocab).__name__}")
        else:
            tokens = list(vocab)
            vocab = {token: token_id for token_id, token in enumerate(tokens)}
            if len(vocab) != len(tokens):
                repeated = next(token for token_id, token in enumerate(tokens) if vocab[token] != token_id)
                raise ValueError(f"vocab lists the token {repeated!r} more than once")
        id_to_token = [None] * len(vocab)
        for token, token_id in vocab.items():
            if not isinstance(token, str) or not token:
                raise TypeError(f"vocab tokens must be non-empty str, got {token!r}")
            if type(token_id) is not int or not 0 <= token_id < len(vocab) or id_to_token[token_id] is not None:
                raise ValueError(f"vocab ids must be 0..{len(vocab) - 1}, each once; {token!r} has id {token_id!r}")
            id_to_token[token_id] = token
        self._special_tokens = {}
        for name, token in zip(SPECIAL_TOKEN_NAMES, (pad_token, unk_token, cls_token, sep_token, mask_token)):
            if not isinstance(token, str):
                raise TypeError(f"{name} must be a str, got {type(token).__name__}")
            if token not in vocab:
                raise ValueError(f"{name} {token!r} is not in the vocabulary; a WordPiece vocabulary needs "
                                 f"{token!r} (the five special tokens are {list(SPECIAL_TOKEN_NAMES.values())})")
            self._special_tokens[name] = token
        self._max_input_chars_per_word = check_int(max_input_chars_per_word, "max_input_chars_per_word", 1)
        if not isinstance(clean_up_tokenization_spaces, bool):
            raise TypeError(f"clean_up_tokenization_spaces must be a bool, got {clean_up_tokenization_spaces!r}")
        cache_size = check_int(cache_size, "cache_size", 0, optional=True)
        self._basic = BasicTokenizer(lowercase, strip_accents, tokenize_chinese_chars, clean_text)
        self._clean_up_tokenization_spaces = clean_up_tokenization_spaces

        atoms = dict.fromkeys(self._special_tokens.values(), True)
        for token, special in added_tokens:
            if token not in vocab:
                raise ValueError(f"added token {token!r} is not in the vocabulary")
            atoms[token] = atoms.get(token, False) or bool(special)
        self._added_tokens = [token for token in atoms if token not in self._special_tokens.values()]
        self._special_ids = frozenset(vocab[token] for token, special in atoms.items() if special)
        # split() with a capturing group alternates ordinary text and never-split tokens; longest first
        alternatives = "|".join(re.escape(token) for token in sorted(atoms, key=len, reverse=True))
        self._atom_pattern = re.compile(f"({alternatives})")

        self._vocab = vocab
        self._id_to_token = id_to_token
        self._unk_id = vocab[unk_token]
        max_piece_chars = max(len(token[len(PREFIX):] if token.startswith(PREFIX) else token) for token in vocab)
        self._word_ids = functools.lru_cache(maxsize=cache_size)(functools.partial(
            wordpiece_split, vocab=vocab, unk_id=self._unk_id,
            max_input_chars_per_word=self._max_input_chars_per_word, max_piece_chars=max_piece_chars))

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(cls, texts, vocab_size=8000, lowercase=True, *, strip_accents=None, tokenize_chinese_chars=True,
              min_frequency=2, progress=None):
        """Learn a vocabulary of at most ``vocab_size`` tokens from ``texts``.

        Parameters
        ----------
        texts : str or iterable of str
            Read once, one item at a time (a generator of file contents works).
            Special-token text in them ("[MASK]") is cut out, not learned from.
        vocab_size : int >= 5
            [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4), then the alphabet of single
            characters (each also as a ``##`` continuation), then merged pieces.
            Fewer tokens result when no pair occurs ``min_frequency`` times any more.
        lowercase, strip_accents, tokenize_chinese_chars
            The basic tokenizer's options, used for training and kept for encoding.
        min_frequency : int >= 1
            A pair of pieces must occur at least this often to be merged.
        progress : bool or None
            tqdm progress bars; None shows them only when stderr is a terminal.

        The algorithm (``wordpiece_train``): words are counted once; each starts as its
        characters (``w ##o ##r ##d``) and the most frequent adjacent pair of pieces is
        merged again and again (Hugging Face's WordPiece trainer does the same), ties to
        the smallest (left, right), so the result does not depend on the texts' order.
        """
        if isinstance(texts, str):
            texts = (texts,)
        elif not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
        specials = list(SPECIAL_TOKEN_NAMES.values())
        vocab_size = check_int(vocab_size, "vocab_size", len(specials), hint="the 5 special tokens")
        min_frequency = check_int(min_frequency, "min_frequency", 1)
        basic = BasicTokenizer(lowercase, strip_accents, tokenize_chinese_chars)
        special_pattern = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        word_counts = bpe_train.count_words(texts, basic.split, special_pattern, progress, desc="counting words")
        learned = wordpiece_train.learn_vocab(word_counts, vocab_size - len(specials), min_frequency, progress)
        return cls(specials + learned, lowercase=lowercase,
                   strip_accents=strip_accents, tokenize_chinese_chars=tokenize_chinese_chars)

    @classmethod
    def from_pretrained(cls, directory):
        """Load a BERT tokenizer directory: ``tokenizer.json``, or ``vocab.txt`` (+ ``tokenizer_config.json``).

        Honours lowercasing, accent stripping, CJK spacing and the special tokens' names
        as the directory's config gives them (see ``wordpiece_files``). Missing files raise
        FileNotFoundError; malformed ones ValueError naming the file.
        """
        options = wordpiece_files.read_bert_dir(directory)
        try:
            return cls(**options)
        except (ValueError, TypeError) as error:  # a vocabulary or setting that the files state but cannot be
            source = os.path.join(os.fspath(directory), wordpiece_files.TOKENIZER_FILE)
            if not os.path.isfile(source):
                source = os.path.join(os.fspath(directory), wordpiece_files.VOCAB_FILE)
            raise ValueError(f"{source} (with the directory's tokenizer_config.json and special_tokens_map.json) "
                             f"does not make a WordPiece tokenizer: {error}") from None

    def save(self, directory):
        """Write ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json`` into ``directory``.

        ``transformers.BertTokenizerFast.from_pretrained(directory)`` loads them and encodes
        as this tokenizer does.
        """
        if self._added_tokens:
            raise ValueError(f"added tokens {self._added_tokens} cannot be saved as "
                             "vocab.txt + tokenizer_config.json")
        if not self._basic.clean_text:
            raise ValueError("clean_text=False cannot be saved: transformers' BertTokenizer always cleans")
        options = {"lowercase": self._basic.lowercase, "strip_accents": self._basic.strip_accents,
                   "tokenize_chinese_chars": self._basic.tokenize_chinese_chars,
                   "clean_up_tokenization_spaces": self._clean_up_tokenization_spaces}
        wordpiece_files.write_bert_dir(directory, self._id_to_token, options, self._special_tokens)

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self):
        """Number of ids (0..vocab_size-1): the rows BERT's word embedding needs."""
        return len(self._id_to_token)

    @property
    def vocab(self):
        """dict token -> id (a copy)."""
        return dict(self._vocab)

    @property
    def special_tokens(self):
        """dict name ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token") -> token text."""
        return dict(self._special_tokens)

    @property
    def all_special_ids(self):
        """Sorted ids that ``decode(skip_special_tokens=True)`` drops."""
        return sorted(self._special_ids)

    pad_token_id = property(lambda self: self._vocab[self._special_tokens["pad_token"]], doc="id of [PAD]")
    unk_token_id = property(lambda self: self._unk_id, doc="id of [UNK]")
    cls_token_id = property(lambda self: self._vocab[self._special_tokens["cls_token"]], doc="id of [CLS]")
    sep_token_id = property(lambda self: self._vocab[self._special_tokens["sep_token"]], doc="id of [SEP]")
    mask_token_id = property(lambda self: self._vocab[self._special_tokens["mask_token"]], doc="id of [MASK]")

    def __repr__(self):
        basic = self._basic
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={basic.lowercase}, "
                f"strip_accents={basic.strip_accents}, tokenize_chinese_chars={basic.tokenize_chinese_chars})")

    def convert_tokens_to_ids(self, tokens):
        """list of str -> list of ids (a token not in the vocabulary -> the [UNK] id)."""
        return [self._vocab.get(token, self._unk_id) for token in tokens]

    def convert_ids_to_tokens(self, ids):
        """ids -> list of str. Raises ValueError for an id outside 0..vocab_size-1."""
        return [self._id_to_token[token_id] for token_id in self._checked_ids(ids)]

    def _checked_ids(self, ids):
        """A sequence or 1-D array of ids -> list of int, each checked to be in 0..vocab_size-1."""
        array = check_token_ids(ids, "ids", self.vocab_size)
        if array.ndim != 1:
            raise ValueError(f"ids must be a 1-D sequence of ids, got shape {array.shape}")
        return array.tolist()

    # ------------------------------------------------------------------ encode

    def _text_ids(self, text, name="text"):
        """Both stages over ``text`` (special-token text kept whole) -> list of ids, no [CLS]/[SEP]."""
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
        chunks = self._atom_pattern.split(text)
        ids = list(itertools.chain.from_iterable(map(self._word_ids, self._basic.split(chunks[0]))))
        for index in range(1, len(chunks), 2):  # odd chunks are never-split tokens
            ids.append(self._vocab[chunks[index]])
            ids.extend(itertools.chain.from_iterable(map(self._word_ids, self._basic.split(chunks[index + 1]))))
        return ids

    def tokenize(self, text):
        """``text`` -> list of token strings (pieces with ``##``; no [CLS]/[SEP])."""
        return [self._id_to_token[token_id] for token_id in self._text_ids(text)]

    def encode(self, text, pair=None):
        """``[CLS] text [SEP]``, or ``[CLS] text [SEP] pair [SEP]``, as a list of ids (not truncated).

        ``pair=""`` is an empty second segment (``[CLS] text [SEP] [SEP]``), as in a batch.
        """
        return self._with_specials(self._text_ids(text), None if pair is None else self._text_ids(pair, "pair"))

    def __call__(self, texts, text_pairs=None, max_length=128, padding="longest", truncation=True):
        """Encode a batch for BERT: dict of int64 arrays (B, T) ``input_ids``, ``token_type_ids``, ``attention_mask``.

        Parameters
        ----------
        texts : str or list of str (a str is a batch of one)
        text_pairs : None, or one second text per text (``[CLS] a [SEP] b [SEP]``; token
            type 0 up to the first [SEP], 1 after)
        max_length : int or None, the longest a row may be with its special tokens
        padding : "longest" (or True) pads to the longest row, "max_length" to
            ``max_length``, False (or "do_not_pad") pads nothing, so every row must have
            the same length. Padding is [PAD] on the right with mask 0 and type 0.
        truncation : bool, cut rows to ``max_length`` ("longest_first": a pair gives up
            tokens from its longer side, see ``truncated_lengths``)

        Raises TypeError for a text that is not a str and ValueError when ``max_length``
        cannot hold the special tokens or the rows cannot form one array.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else texts
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        if text_pairs is not None:
            text_pairs = [text_pairs] if isinstance(text_pairs, str) and single else text_pairs
            if not isinstance(text_pairs, (list, tuple)) or len(text_pairs) != len(texts):
                raise ValueError(f"text_pairs must be a list with one str per text ({len(texts)}), got "
                                 f"{type(text_pairs).__name__}" + (f" of length {len(text_pairs)}"
                                                                   if isinstance(text_pairs, (list, tuple)) else ""))
        if padding is True or padding == "longest":
            padding = "longest"
        elif padding is False or padding == "do_not_pad":
            padding = False
        elif padding != "max_length":
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")
        if not isinstance(truncation, bool):
            raise TypeError(f"truncation must be a bool, got {truncation!r}")
        n_special = 2 if text_pairs is None else 3
        max_length = check_int(max_length, "max_length", n_special, optional=not (truncation or padding == "max_length"),
                               hint=f"room for the {n_special} special tokens")

        rows, segment_a_lengths = [], []
        for index, text in enumerate(texts):
            first = self._text_ids(text, f"texts[{index}]")
            second = None if text_pairs is None else self._text_ids(text_pairs[index], f"text_pairs[{index}]")
            if truncation:
                kept_first, kept_second = truncated_lengths(len(first), None if second is None else len(second),
                                                            max_length - n_special)
                first, second = first[:kept_first], None if second is None else second[:kept_second]
            rows.append(self._with_specials(first, second))
            segment_a_lengths.append(len(first) + 2)
        lengths = list(map(len, rows))
        width = max(lengths, default=0)
        if padding == "max_length":
            if width > max_length:
                raise ValueError(f"a row has {width} tokens, more than max_length={max_length}; "
                                 "use truncation=True or a larger max_length")
            width = max_length
        elif padding is False and len(set(lengths)) > 1:
            raise ValueError(f"rows have different lengths ({min(lengths)} to {width}) and padding=False; "
                             "use padding='longest' or 'max_length' to get one array")
        return _batch_arrays(rows, segment_a_lengths, width, self.pad_token_id)

    def _with_specials(self, first, second):
        """ids of ``[CLS] first [SEP]`` or ``[CLS] first [SEP] second [SEP]`` (second None: no pair)."""
        ids = [self.cls_token_id, *first, self.sep_token_id]
        if second is not None:
            ids += [*second, self.sep_token_id]
        return ids

    # ------------------------------------------------------------------ decode

    def decode(self, ids, skip_special_tokens=True):
        """ids -> text, as ``BertTokenizerFast.decode`` gives it.

        Pieces are joined with spaces, a ``##`` piece glued to the one before; each piece
        is cleaned as tokenizers' WordPiece decoder does (" ," -> ",", " ." -> ".", ...),
        and with ``clean_up_tokenization_spaces`` the whole text as transformers does.
        ``skip_special_tokens`` drops [PAD] [UNK] [CLS] [SEP] [MASK]. Lowercasing and
        stripped accents are not undone. Raises ValueError for an id outside
        0..vocab_size-1 and TypeError for a non-integer one.
        """
        ids = self._checked_ids(ids)
        if skip_special_tokens:
            ids = [token_id for token_id in ids if token_id not in self._special_ids]
        pieces = []
        for index, token_id in enumerate(ids):
            token = self._id_to_token[token_id]
            if index:
                token = token[len(PREFIX):] if token.startswith(PREFIX) else " " + token
            pieces.append(_cleanup(token, _DECODER_CLEANUP))
        text = "".join(pieces)
        return _cleanup(text, _TEXT_CLEANUP) if self._clean_up_tokenization_spaces else text
