"""BERT's basic tokenizer, the first of WordPiece's two stages: text -> words.

In order, as Hugging Face ``tokenizers``' ``BertNormalizer`` and ``BertPreTokenizer`` do it
(which is what ``transformers.BertTokenizerFast`` runs):

1. clean (``clean_text``): drop NUL, U+FFFD and control characters (categories Cc, Cf,
   Co, except tab, newline and carriage return, which are whitespace);
2. space out CJK ideographs (``tokenize_chinese_chars``): each becomes a word of its own;
3. strip accents (``strip_accents``): NFD, then drop the nonspacing marks (Mn);
4. lowercase (``lowercase``): each character's own full lowercase mapping, so a final
   capital sigma becomes σ, not Python's context-dependent ς;
5. split: whitespace (Unicode's White_Space property) separates words and is dropped;
   each punctuation character (ASCII's symbols ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~`` and
   every Unicode P* category) is a word of its own.

Character classes come from Python's ``unicodedata`` (Unicode 14.0 on Python 3.11).
``tokenizers`` compiles in older Unicode tables, so for a few hundred characters added or
re-classified since, the two disagree; the ``_TOKENIZERS_*`` ranges below list them and
follow ``tokenizers`` (its ids are the ecosystem's). Each was found by running every code
point through ``tokenizers``' normalizer and pre-tokenizer (tests/test_wordpiece.py
repeats that check on samples). Uncovered: lowercasing of characters Python does not
know yet, and U+11938, whose NFD is newer than ``tokenizers``' tables.

Depends only on the standard library. The full Unicode tables are built on the first
non-ASCII text (a scan of every code point, about 0.15 s).
"""

import dataclasses
import functools
import re
import string
import unicodedata

__all__ = ["BasicTokenizer", "is_cjk", "is_dropped", "is_punctuation", "is_whitespace"]

# Unicode's White_Space property (what Rust's char::is_whitespace tests).
_WHITESPACE = ((0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
               (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000))
# The CJK Unified Ideographs blocks and their extensions, as BERT lists them.
_CJK = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF), (0x2A700, 0x2B81F),
        (0x2B920, 0x2CEAF), (0x2F800, 0x2FA1F))
# Cc characters that count as whitespace, not control.
_CONTROL_WHITESPACE = "\t\n\r"
_ASCII_PUNCTUATION = string.punctuation

# Where tokenizers' older Unicode tables differ from Python 3.11's unicodedata:
# Cf characters it does not know, so it keeps them;
_TOKENIZERS_KEPT_FORMAT = ((0x890, 0x891), (0x8E2, 0x8E2), (0x110CD, 0x110CD), (0x13430, 0x13438))
# P* characters it does not know, so they are letters to it;
_TOKENIZERS_NOT_PUNCTUATION = (
    (0x61D, 0x61D), (0x9FD, 0x9FD), (0xA76, 0xA76), (0xC77, 0xC77), (0xC84, 0xC84), (0x1B7D, 0x1B7E),
    (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), (0x10EAD, 0x10EAD), (0x10F55, 0x10F59), (0x10F86, 0x10F89),
    (0x1144B, 0x1144F), (0x1145A, 0x1145B), (0x1145D, 0x1145D), (0x11660, 0x1166C), (0x116B9, 0x116B9),
    (0x1183B, 0x1183B), (0x11944, 0x11946), (0x119E2, 0x119E2), (0x11A3F, 0x11A46), (0x11A9A, 0x11A9C),
    (0x11A9E, 0x11AA2), (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11EF7, 0x11EF8), (0x11FFF, 0x11FFF),
    (0x12FF1, 0x12FF2), (0x16E97, 0x16E9A), (0x16FE2, 0x16FE2), (0x1E95E, 0x1E95F),
)
# characters that were punctuation (Po) in its tables and are not any more;
_TOKENIZERS_EXTRA_PUNCTUATION = ((0x166D, 0x166D), (0x111C9, 0x111C9))
# Mn characters it does not know (it keeps them when stripping accents);
_TOKENIZERS_KEPT_MARKS = (
    (0x7FD, 0x7FD), (0x898, 0x89F), (0x8CA, 0x8E1), (0x9FE, 0x9FE), (0xAFA, 0xAFF), (0xB55, 0xB55),
    (0xC04, 0xC04), (0xC3C, 0xC3C), (0xD00, 0xD00), (0xD3B, 0xD3C), (0xD81, 0xD81), (0xEBA, 0xEBA),
    (0x180F, 0x180F), (0x1885, 0x1886), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFB), (0xA82C, 0xA82C),
    (0xA8C5, 0xA8C5), (0xA8FF, 0xA8FF), (0xA9BD, 0xA9BD), (0x10D24, 0x10D27), (0x10EAB, 0x10EAC),
    (0x10F46, 0x10F50), (0x10F82, 0x10F85), (0x11070, 0x11070), (0x11073, 0x11074), (0x110C2, 0x110C2),
    (0x111C9, 0x111C9), (0x111CF, 0x111CF), (0x1123E, 0x1123E), (0x1133B, 0x1133B), (0x11438, 0x1143F),
    (0x11442, 0x11444), (0x11446, 0x11446), (0x1145E, 0x1145E), (0x1182F, 0x11837), (0x11839, 0x1183A),
    (0x1193B, 0x1193C), (0x1193E, 0x1193E), (0x11943, 0x11943), (0x119D4, 0x119D7), (0x119DA, 0x119DB),
    (0x119E0, 0x119E0), (0x11A01, 0x11A0A), (0x11A33, 0x11A38), (0x11A3B, 0x11A3E), (0x11A47, 0x11A47),
    (0x11A51, 0x11A56), (0x11A59, 0x11A5B), (0x11A8A, 0x11A96), (0x11A98, 0x11A99), (0x11C30, 0x11C36),
    (0x11C38, 0x11C3D), (0x11C3F, 0x11C3F), (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3),
    (0x11CB5, 0x11CB6), (0x11D31, 0x11D36), (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45),
    (0x11D47, 0x11D47), (0x11D90, 0x11D91), (0x11D95, 0x11D95), (0x11D97, 0x11D97), (0x11EF3, 0x11EF4),
    (0x16F4F, 0x16F4F), (0x16FE4, 0x16FE4), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1E000, 0x1E006),
    (0x1E008, 0x1E018), (0x1E01B, 0x1E021), (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF), (0x1E944, 0x1E94A),
)
# and a character that was Mn there and is Mc now (it strips it).
_TOKENIZERS_EXTRA_MARKS = ((0x1734, 0x1734),)


def _codes(ranges):
    """The set of code points in ``ranges`` ((first, last) pairs, inclusive)."""
    return {code for first, last in ranges for code in range(first, last + 1)}


@functools.lru_cache(maxsize=None)
def _code_sets():
    """(dropped by cleaning, punctuation, stripped marks): sets of code points, one scan of Unicode."""
    dropped, punctuation, marks = {0x0, 0xFFFD}, set(map(ord, _ASCII_PUNCTUATION)), set()
    for code in range(0x110000):
        category = unicodedata.category(chr(code))
        if category in ("Cc", "Cf", "Co"):
            dropped.add(code)
        elif category[0] == "P":
            punctuation.add(code)
        elif category == "Mn":
            marks.add(code)
    dropped -= set(map(ord, _CONTROL_WHITESPACE)) | _codes(_TOKENIZERS_KEPT_FORMAT)
    punctuation = (punctuation - _codes(_TOKENIZERS_NOT_PUNCTUATION)) | _codes(_TOKENIZERS_EXTRA_PUNCTUATION)
    marks = (marks - _codes(_TOKENIZERS_KEPT_MARKS)) | _codes(_TOKENIZERS_EXTRA_MARKS)
    return dropped, punctuation, marks


def is_whitespace(char):
    """Whether ``char`` separates words (Unicode White_Space)."""
    return ord(char) in _codes(_WHITESPACE)


def is_cjk(char):
    """Whether ``char`` is a CJK ideograph that becomes a word of its own."""
    return any(first <= ord(char) <= last for first, last in _CJK)


def is_punctuation(char):
    """Whether ``char`` is a word of its own: ASCII symbol or Unicode P* (as ``tokenizers`` classifies it)."""
    return ord(char) in _code_sets()[1]


def is_dropped(char):
    """Whether cleaning drops ``char``: NUL, U+FFFD, or a control character that is not whitespace."""
    return ord(char) in _code_sets()[0]


def _char_class(codes):
    """A regex character-class body matching the code points ``codes``, written as ranges."""
    ranges = []
    for code in sorted(codes):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(re.escape(chr(a)) + ("" if a == b else "-" + re.escape(chr(b))) for a, b in ranges)


@functools.lru_cache(maxsize=None)
def _patterns():
    """Compiled patterns: (dropped characters, stripped marks, CJK ideographs, a word)."""
    dropped, punctuation, marks = map(_char_class, _code_sets())
    cjk, whitespace = _char_class(_codes(_CJK)), _char_class(_codes(_WHITESPACE))
    word = re.compile(f"[^{whitespace}{punctuation}]+|[{punctuation}]")
    return re.compile(f"[{dropped}]+"), re.compile(f"[{marks}]+"), re.compile(f"([{cjk}])"), word


# ASCII text needs neither NFD nor CJK spacing, its only dropped characters are the C0
# controls but tab, newline and carriage return, and DEL; its words are found by a pattern
# with small classes (twice as fast as the full one).
_ASCII_DROPPED = str.maketrans("", "", "".join(chr(code) for code in [*range(32), 127]
                                               if chr(code) not in _CONTROL_WHITESPACE))
_ASCII_PUNCTUATION_CLASS = re.escape(_ASCII_PUNCTUATION)
_ASCII_WORD = re.compile(f"[^\\t-\\r {_ASCII_PUNCTUATION_CLASS}]+|[{_ASCII_PUNCTUATION_CLASS}]")


@dataclasses.dataclass(frozen=True)
class BasicTokenizer:
    """BERT's basic tokenizer: ``split(text)`` -> the words WordPiece then cuts into pieces.

    Parameters mirror ``tokenizers.normalizers.BertNormalizer``: ``clean_text``,
    ``tokenize_chinese_chars`` (its ``handle_chinese_chars``), ``strip_accents`` (None:
    follow ``lowercase``, as the original BERT), ``lowercase``.
    """

    lowercase: bool = True
    strip_accents: bool = None
    tokenize_chinese_chars: bool = True
    clean_text: bool = True

    def __post_init__(self):
        for name in ("lowercase", "tokenize_chinese_chars", "clean_text"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.strip_accents is not None and not isinstance(self.strip_accents, bool):
            raise TypeError(f"strip_accents must be a bool or None, got {self.strip_accents!r}")

    @property
    def strips_accents(self):
        """Whether accents are stripped: ``strip_accents``, or ``lowercase`` when that is None."""
        return self.lowercase if self.strip_accents is None else self.strip_accents

    def normalize(self, text):
        """Steps 1-4: the text with controls dropped, CJK spaced, accents stripped, lowercased."""
        if text.isascii():
            if self.clean_text:
                text = text.translate(_ASCII_DROPPED)
        else:
            dropped, marks, cjk, _ = _patterns()
            if self.clean_text:
                text = dropped.sub("", text)
            if self.tokenize_chinese_chars:
                text = cjk.sub(r" \1 ", text)
            if self.strips_accents:
                text = marks.sub("", unicodedata.normalize("NFD", text))
        if self.lowercase:
            # str.lower maps a final capital sigma to ς by context; char by char it is σ
            text = text.replace("\u03a3", "\u03c3").lower()
        return text

    def split(self, text):
        """Normalize ``text`` and split it into words (step 5): list of str."""
        text = self.normalize(text)
        return (_ASCII_WORD if text.isascii() else _patterns()[3]).findall(text)
