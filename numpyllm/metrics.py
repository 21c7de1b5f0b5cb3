"""Scores of text against text and of a model on text: perplexity, corpus BLEU, ROUGE-1/2/L.

- ``perplexity(mean_loss)``: exp of a mean cross-entropy in nats.
- ``bleu(hypotheses, references)``: corpus BLEU on a 0-100 scale, the number sacrebleu's
  ``corpus_bleu(hypotheses, references).score`` gives with its defaults: the 13a
  tokenisation (mteval-v13a's), case kept, n-grams up to 4, exponential smoothing.
- ``rouge(hypotheses, references)``: ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1), as
  rouge-score's ``RougeScorer(["rouge1", "rouge2", "rougeL"])`` scores each pair with its
  default tokenizer (no stemming), averaged over the pairs.

The references of both, in sacrebleu's layout: a list of reference *streams*, each a
list with one string per hypothesis, so ``references[k][i]`` is the k-th reference of
hypothesis ``i``. A stream may hold None where a hypothesis has fewer references. A
plain list of strings is taken as the one stream (one reference per hypothesis).

Plain Python; needs nothing beyond the standard library. sacrebleu and rouge-score are
the tests' oracles, never imported here.
"""

import collections
import math
import re

__all__ = ["perplexity", "bleu", "rouge", "bleu_tokenize", "rouge_tokenize"]

MAX_ORDER = 4  # BLEU's n-gram orders: 1..4

# mteval-v13a's tokenisation, applied in this order to " " + line + " ":
_BLEU_RULES = (
    (re.compile(r"([!-&(-+/:-@\[-`{-~])"), r" \1 "),  # ASCII punctuation but ' , - . stands alone
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # a period or comma not after a digit
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # ... or not before one
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
)
_HTML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def perplexity(loss):
    """exp(loss), the perplexity of a mean cross-entropy in nats; inf where exp would overflow."""
    return math.exp(loss) if loss < 700 else math.inf


# --------------------------------------------------------------------------- inputs


def _reference_sets(hypotheses, references):
    """(hypotheses as a list, per hypothesis the list of its references) after checking both."""
    if isinstance(hypotheses, str):
        raise TypeError(f"hypotheses must be a list of str, got the str {hypotheses[:60]!r}")
    hypotheses = list(hypotheses)
    bad = [h for h in hypotheses if not isinstance(h, str)]
    if bad:
        raise TypeError(f"hypotheses must be a list of str, got an entry of type {type(bad[0]).__name__}")
    if not hypotheses:
        raise ValueError("hypotheses must hold at least one text, got none")
    if isinstance(references, str):
        raise TypeError("references must be a list of reference streams (lists of str, one per hypothesis) "
                        f"or one list of str, got the str {references[:60]!r}")
    references = list(references)
    if references and all(isinstance(r, str) for r in references):
        references = [references]  # the one stream
    for k, stream in enumerate(references):
        if isinstance(stream, str) or len(stream) != len(hypotheses):
            got = "a str" if isinstance(stream, str) else f"{len(stream)} entries"
            raise ValueError(f"references[{k}] must be a stream of {len(hypotheses)} references, one per "
                             f"hypothesis (sacrebleu's layout), got {got}")
        bad = [r for r in stream if r is not None and not isinstance(r, str)]
        if bad:
            raise TypeError(f"references[{k}] must hold str (or None), got {type(bad[0]).__name__}")
    sets = [[r for r in refs if r is not None] for refs in zip(*references)] if references else []
    if not sets or any(not refs for refs in sets):
        first = next((i for i, refs in enumerate(sets) if not refs), 0)
        raise ValueError(f"every hypothesis needs at least one reference; hypothesis {first} has none")
    return hypotheses, sets


def _ngrams(tokens, n):
    """Counter of the n-grams (tuples) of ``tokens``."""
    return collections.Counter(zip(*(tokens[i:] for i in range(n))))


# --------------------------------------------------------------------------- BLEU


def bleu_tokenize(text):
    """The tokens BLEU counts in ``text`` (13a): trailing space dropped, "<skipped>" removed,
    "-\\n" joined, other newlines spaces, four HTML entities unescaped, punctuation split off."""
    line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, character in _HTML_ENTITIES:
        line = line.replace(entity, character)
    line = f" {line} "
    for pattern, replacement in _BLEU_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _bleu_statistics(hypothesis, references):
    """(hypothesis length, closest reference length, matches per order, n-grams per order).

    Matches clip each hypothesis n-gram's count by its largest count in any one reference;
    the closest reference length is the nearest to the hypothesis's, the shorter on a tie.
    """
    tokens = bleu_tokenize(hypothesis)
    reference_tokens = [bleu_tokenize(r) for r in references]
    lengths = [len(r) for r in reference_tokens]
    closest = min(lengths, key=lambda length: (abs(length - len(tokens)), length))
    matches, totals = [], []
    for n in range(1, MAX_ORDER + 1):
        counts = _ngrams(tokens, n)
        most = collections.Counter()
        for reference in reference_tokens:
            most |= _ngrams(reference, n)  # | keeps the larger count of each n-gram
        matches.append(sum(min(count, most[gram]) for gram, count in counts.items()))
        totals.append(max(len(tokens) - n + 1, 0))
    return len(tokens), closest, matches, totals


def bleu(hypotheses, references):
    """Corpus BLEU (0-100) of ``hypotheses`` (list of str) against ``references`` (see the module).

    Sums over the corpus the hypothesis length c, the closest reference length r, and per
    order n = 1..4 the clipped matches m_n and the hypothesis n-grams t_n; then

        BLEU = BP · exp(mean over n of log p_n),   BP = 1 if c >= r else exp(1 - r/c) (0 if c = 0)

    with p_n = m_n / t_n, except that the k-th order with no match gets p_n = 1 / (2^k t_n)
    (exponential smoothing). No match at all, or an order with no n-gram (t_n = 0) before
    any smoothing could help, gives 0. Equals sacrebleu's ``corpus_bleu(...).score``.
    """
    hypotheses, sets = _reference_sets(hypotheses, references)
    c = r = 0
    matches, totals = [0] * MAX_ORDER, [0] * MAX_ORDER
    for hypothesis, refs in zip(hypotheses, sets):
        length, closest, m, t = _bleu_statistics(hypothesis, refs)
        c, r = c + length, r + closest
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
    if not any(matches):
        return 0.0
    brevity = 1.0 if c >= r else math.exp(1 - r / c)
    log_precisions, unmatched = [], 0
    for m, t in zip(matches, totals):
        if t == 0:  # no n-grams of this order or above: those precisions count as 0
            return 0.0
        if m == 0:
            unmatched += 1
            log_precisions.append(-math.log(2 ** unmatched * t))
        else:
            log_precisions.append(math.log(m / t))
    return 100.0 * brevity * math.exp(sum(log_precisions) / MAX_ORDER)


# --------------------------------------------------------------------------- ROUGE


def rouge_tokenize(text):
    """The tokens ROUGE counts in ``text``: lowercased, then the runs of a-z and 0-9 (everything
    else, accented and non-Latin letters included, separates tokens and is dropped)."""
    return _NOT_ALPHANUMERIC.sub(" ", text.lower()).split()


def _f_measure(overlap, n_hypothesis, n_reference):
    """The harmonic mean of precision overlap/n_hypothesis and recall overlap/n_reference (0 if both 0)."""
    precision, recall = overlap / max(n_hypothesis, 1), overlap / max(n_reference, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _lcs_length(a, b):
    """Length of the longest common subsequence of the token lists a and b (dynamic programming by rows)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_pair(hypothesis, reference):
    """(ROUGE-1, ROUGE-2, ROUGE-L) F-measures of one hypothesis token list against one reference's."""
    scores = []
    for n in (1, 2):
        h, r = _ngrams(hypothesis, n), _ngrams(reference, n)
        scores.append(_f_measure(sum((h & r).values()), sum(h.values()), sum(r.values())))
    lcs = _lcs_length(reference, hypothesis) if hypothesis and reference else 0
    scores.append(_f_measure(lcs, len(hypothesis), len(reference)))
    return scores


def rouge(hypotheses, references):
    """{"rouge1", "rouge2", "rougeL"}: F-measures (0-1) averaged over the hypotheses.

    For one hypothesis and one reference (tokens by ``rouge_tokenize``): ROUGE-n counts the
    n-grams the two share (each as often as it occurs in both), precision = shared /
    hypothesis n-grams, recall = shared / reference n-grams, F = 2PR/(P+R), 0 when nothing
    is shared; ROUGE-L does the same with the length of the longest common subsequence of
    the two token lists. A hypothesis with several references takes, for each of the three,
    its best reference's F (rouge-score's ``score_multi``). The corpus score is the mean of
    the per-hypothesis F-measures, as rouge-score's users average ``score`` over pairs.
    """
    hypotheses, sets = _reference_sets(hypotheses, references)
    totals = [0.0, 0.0, 0.0]
    for hypothesis, refs in zip(hypotheses, sets):
        tokens = rouge_tokenize(hypothesis)
        per_reference = [_rouge_pair(tokens, rouge_tokenize(r)) for r in refs]
        totals = [total + max(scores) for total, scores in zip(totals, zip(*per_reference))]
    return {name: total / len(hypotheses) for name, total in zip(("rouge1", "rouge2", "rougeL"), totals)}
