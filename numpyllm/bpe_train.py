"""Learning byte-level BPE merges from text: count pre-tokens once, then merge incrementally.

1. ``count_pretokens`` streams over the texts, splits each into pre-tokens with the
   given pattern, and counts how often each distinct pre-token occurs (``count_words``,
   which WordPiece's trainer calls with BERT's basic tokenizer).
2. ``learn_merges`` turns every distinct pre-token into a list of byte ids and merges
   the most frequent adjacent pair again and again. Only the words that contain the
   merged pair are touched: a merge of (a, b) into c changes the pair counts around each
   occurrence, (x, a) -> (x, c) and (b, y) -> (c, y), weighted by the word's frequency.
   A max-heap with lazy deletion finds the next pair: entries whose count went stale
   are re-pushed with the current count when they reach the top.

Tie-break (deterministic, independent of input order): highest count first, then the
pair whose (left bytes, right bytes) is lexicographically smallest.

Depends on tqdm for the progress bar.
"""

import heapq
from collections import Counter, defaultdict

__all__ = ["count_pretokens", "count_words", "learn_merges", "merge_pairs", "progress_bar"]


def progress_bar(iterable=None, *, enabled, **kwargs):
    """tqdm over ``iterable``; enabled=None means "only when stderr is a terminal"."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled is None else not enabled, **kwargs)


def count_words(texts, split, special_pattern=None, progress=None, desc="counting pre-tokens"):
    """Count what ``split`` makes of every text, reading the texts one at a time.

    Parameters
    ----------
    texts : iterable of str
    split : function str -> list of str (a pattern's ``findall``, BERT's basic tokenizer)
    special_pattern : compiled pattern with one capturing group matching special-token
        text, or None. Matches are cut out of the training text (they are document
        separators, not language).
    progress : bool or None, tqdm bar over the texts (None: only on a terminal)
    desc : the bar's label

    Returns a Counter str -> int. Raises TypeError for a non-str item.
    """
    counts = Counter()
    for index, text in enumerate(progress_bar(texts, enabled=progress, desc=desc, unit=" texts")):
        if not isinstance(text, str):
            raise TypeError(f"texts must be a str or an iterable of str; item {index} is {type(text).__name__}")
        # split() on a capturing pattern alternates text / special token: keep the even entries
        chunks = special_pattern.split(text)[::2] if special_pattern is not None else (text,)
        for chunk in chunks:
            counts.update(split(chunk))
    return counts


def count_pretokens(texts, pattern, special_pattern=None, progress=None):
    """Count the pre-tokens of every text (``count_words`` with ``pattern.findall``), as UTF-8 bytes.

    pattern : compiled ``regex`` pattern whose ``findall`` gives the pre-tokens; the other
    arguments as for ``count_words``.

    Returns dict bytes -> int, each distinct pre-token as UTF-8 bytes and its count.
    Raises TypeError for a non-str item, ValueError for a lone surrogate.
    """
    word_counts = {}
    for piece, count in count_words(texts, pattern.findall, special_pattern, progress).items():
        try:
            word_counts[piece.encode("utf-8")] = count
        except UnicodeEncodeError as error:
            raise ValueError(
                f"texts contain the lone surrogate {piece[error.start]!r}, which has no UTF-8 encoding"
            ) from None
    return word_counts


def learn_merges(word_counts, n_new_tokens, min_frequency=2, progress=None):
    """Learn merges until ``n_new_tokens`` new tokens exist or no pair occurs ``min_frequency`` times.

    Parameters
    ----------
    word_counts : dict bytes -> int, from ``count_pretokens``
    n_new_tokens : int >= 0, how many tokens to add to the 256 single bytes
    min_frequency : int >= 1, stop when the most frequent pair occurs fewer times
    progress : bool or None, tqdm bar over the new tokens (None: only on a terminal)

    Returns
    -------
    merges : list of (bytes, bytes) in the order learned (= rank). A merge whose result
        already exists (``ab``+``c`` after ``a``+``bc``) is kept but adds no token, so
        there can be more merges than new tokens.
    """
    long_words = [(list(word), count) for word, count in word_counts.items() if len(word) > 1]
    return merge_pairs([word for word, _ in long_words], [count for _, count in long_words],
                       [bytes([byte]) for byte in range(256)], bytes.__add__, n_new_tokens, min_frequency, progress)


def merge_pairs(words, freqs, symbols, join, n_new_tokens, min_frequency=2, progress=None):
    """The merge loop over any symbols: byte strings for BPE, WordPiece's ``##`` pieces.

    Parameters
    ----------
    words : list of lists of int, each word as ids into ``symbols`` (rewritten in place)
    freqs : list of int, each word's count
    symbols : list, id -> symbol, the initial ones; symbols compare for the tie-break
    join : function (left symbol, right symbol) -> the merged symbol
    n_new_tokens, min_frequency, progress : as for ``learn_merges``

    Returns the merges, a list of (left symbol, right symbol) in the order learned.
    """
    id_to_symbol = list(symbols)  # new symbols are appended
    symbol_id = {token: index for index, token in enumerate(id_to_symbol)}

    pair_counts = defaultdict(int)  # (left id, right id) -> occurrences weighted by word frequency
    pair_words = defaultdict(set)  # (left id, right id) -> indices of words that may contain it
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            pair_words[pair].add(index)

    def heap_entry(pair, count):
        return (-count, id_to_symbol[pair[0]], id_to_symbol[pair[1]], pair)

    heap = [heap_entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    bar = progress_bar(enabled=progress, total=n_new_tokens, desc="learning merges", unit=" tokens")
    n_added = 0
    while n_added < n_new_tokens and heap:
        negative_count, left_symbol, right_symbol, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -negative_count:  # stale entry: the count dropped since it was pushed
            if count > 0:
                heapq.heappush(heap, heap_entry(pair, count))
            continue
        if count < min_frequency:
            break
        merged = join(left_symbol, right_symbol)
        new_id = symbol_id.get(merged)
        if new_id is None:
            new_id = symbol_id[merged] = len(id_to_symbol)
            id_to_symbol.append(merged)
            n_added += 1
            bar.update()
        merges.append((left_symbol, right_symbol))
        del pair_counts[pair]
        grown = _apply_merge(words, freqs, pair_words.pop(pair), pair, new_id, pair_counts, pair_words)
        for grown_pair in grown:
            heapq.heappush(heap, heap_entry(grown_pair, pair_counts[grown_pair]))
    bar.close()
    return merges


def _apply_merge(words, freqs, word_indices, pair, new_id, pair_counts, pair_words):
    """Replace ``pair`` by ``new_id`` in the listed words, updating the pair counts in place.

    Walking a word left to right, each occurrence ``x a b y`` becomes ``x c y``:
    (x, a) and (b, y) lose the word's frequency, (x, c) and (c, y) gain it. ``x`` is
    read from the rewritten prefix, so back-to-back occurrences (``a b a b``) see the
    ``c`` just written and nothing is counted twice. The merged pair's own count was
    already dropped by the caller, so changes to it are skipped.

    Returns the set of pairs whose count grew (they need fresh heap entries).
    """
    left, right = pair
    grown = set()
    for index in word_indices:
        word, freq = words[index], freqs[index]
        length = len(word)
        merged_word = []
        start = 0
        while True:
            try:
                position = word.index(left, start)
            except ValueError:
                break
            if position + 1 >= length or word[position + 1] != right:
                merged_word.extend(word[start : position + 1])
                start = position + 1
                continue
            merged_word.extend(word[start:position])
            if merged_word:
                before = merged_word[-1]
                if (before, left) != pair:
                    pair_counts[(before, left)] -= freq
                pair_counts[(before, new_id)] += freq
                pair_words[(before, new_id)].add(index)
                grown.add((before, new_id))
            if position + 2 < length:
                after = word[position + 2]
                if (right, after) != pair:
                    pair_counts[(right, after)] -= freq
                pair_counts[(new_id, after)] += freq
                pair_words[(new_id, after)].add(index)
                grown.add((new_id, after))
            merged_word.append(new_id)
            start = position + 2
        if start:  # the word contained the pair at least once (or only stale `left`s)
            merged_word.extend(word[start:])
            words[index] = merged_word
    return grown
