"""Learning a WordPiece vocabulary: count words once, then merge pieces by frequency.

1. ``bpe_train.count_words`` streams over the texts, cuts out special-token text, runs
   BERT's basic tokenizer on the rest and counts each distinct word.
2. ``learn_vocab`` writes every word as its characters, the first as itself and the
   others with the ``##`` continuation prefix (``"word"`` -> ``w ##o ##r ##d``); those
   pieces are the alphabet. Then, as Hugging Face ``tokenizers``' WordPiece trainer does,
   the most frequent adjacent pair of pieces (counted over the corpus: each word weighs
   its count) is merged into a new piece, ``w`` + ``##o`` -> ``wo``, ``##r`` + ``##d`` ->
   ``##rd``, again and again (``bpe_train.merge_pairs``, shared with the BPE trainer),
   until the vocabulary is full or no pair occurs ``min_frequency`` times. Ties go to the
   smallest (left, right) pieces, so the result does not depend on the texts' order.

Every training word encodes without [UNK]: whatever prefix greedy longest-match-first
takes, each remaining character has its ``##`` piece in the alphabet. When the alphabet
alone is larger than the room left, only its most frequent pieces are kept (ties: the
smaller piece), and words with a dropped piece take no part in merging.

Depends on ``bpe_train`` (the merge loop).
"""

from collections import Counter

from .bpe_train import merge_pairs

__all__ = ["PREFIX", "learn_vocab"]

PREFIX = "##"


def _pieces(word):
    """A word as its initial pieces: the first character, then ``##`` + each other character."""
    return [word[0], *(PREFIX + char for char in word[1:])]


def _join(left, right):
    """Merge two adjacent pieces: the right one is always a continuation, its ``##`` goes."""
    return left + right[len(PREFIX):]


def learn_vocab(word_counts, n_tokens, min_frequency=2, progress=None):
    """The learned tokens (alphabet, then merges in order), at most ``n_tokens`` of them.

    Parameters
    ----------
    word_counts : dict str -> int, from ``bpe_train.count_words``
    n_tokens : int >= 0, room in the vocabulary after the special tokens
    min_frequency : int >= 1, a pair must occur this often to be merged
    progress : bool or None, tqdm bar over the merges

    Returns a list of distinct str: the alphabet sorted, then each merge's new piece.
    """
    piece_counts = Counter()
    for word, count in word_counts.items():
        for piece in _pieces(word):
            piece_counts[piece] += count
    alphabet = sorted(piece_counts, key=lambda piece: (-piece_counts[piece], piece))[:n_tokens]
    alphabet.sort()
    piece_id = {piece: index for index, piece in enumerate(alphabet)}

    words, freqs = [], []
    for word, count in word_counts.items():
        if len(word) < 2:
            continue
        ids = [piece_id.get(piece) for piece in _pieces(word)]
        if None not in ids:
            words.append(ids)
            freqs.append(count)
    merges = merge_pairs(words, freqs, alphabet, _join, n_tokens - len(alphabet), min_frequency, progress)
    tokens = dict.fromkeys(alphabet)
    for left, right in merges:
        tokens.setdefault(_join(left, right))
    return list(tokens)
