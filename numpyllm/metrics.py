"""Scores of generated text: perplexity, corpus BLEU (sacrebleu's) and ROUGE-1/2/L (rouge-score's).

    perplexity(mean_loss)              exp of a mean cross-entropy in nats
    bleu(hypotheses, references)       corpus BLEU, 0..100, with sacrebleu's defaults: the
                                       "13a" tokenisation (mteval-v13a's), n-grams 1..4,
                                       the brevity penalty against the closest reference
                                       length, "exp" smoothing of zero counts
    rouge(hypotheses, references)      {"rouge1", "rouge2", "rougeL"}: the mean over the pairs
                                       of rouge-score's F-measures, with its default tokenizer
                                       (lowercase, runs of [a-z0-9]) and no stemming

``references`` has one entry per hypothesis: a string, or a list of strings when a
hypothesis has several references (BLEU counts each n-gram up to its largest count in
any of them; ROUGE takes, per score, the reference that gives the best F-measure, as
rouge-score's ``score_multi``). The formulas are the published ones (Papineni et al.
2002 for BLEU, Lin 2004 for ROUGE), written here in plain Python; sacrebleu and
rouge-score are only the tests' oracles. Depends on the standard library.
"""

import collections
import math
import re

__all__ = ["perplexity", "bleu", "rouge"]


def perplexity(loss):
    """exp(loss), the perplexity of a mean cross-entropy in nats; inf where exp would overflow."""
    return math.exp(loss) if loss < 700 else math.inf


def _reference_lists(hypotheses, references):
    """Check the two arguments; return (hypotheses, [[reference, ...] per hypothesis])."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists (one entry per hypothesis), not a single str")
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"references must have one entry per hypothesis: {len(hypotheses)} hypotheses, "
                         f"{len(references)} references")
    lists = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    for i, (hypothesis, refs) in enumerate(zip(hypotheses, lists)):
        if not isinstance(hypothesis, str):
            raise TypeError(f"hypotheses[{i}] must be a str, got {type(hypothesis).__name__}")
        if not refs or not all(isinstance(ref, str) for ref in refs):
            raise TypeError(f"references[{i}] must be a str or a non-empty list of str, got {refs!r}")
    return hypotheses, lists


# --------------------------------------------------------------------------- BLEU

# mteval-v13a's tokenisation: punctuation and symbols become tokens; a period or comma
# does too unless it sits between digits; a dash after a digit is split off.
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]
_13A_ENTITIES = [("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]


def tokenize_13a(text):
    """``text`` as mteval-v13a (and sacrebleu's default "13a") tokenises it, a list of tokens."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in text:
        for entity, char in _13A_ENTITIES:
            text = text.replace(entity, char)
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def _ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses, references, max_order=4):
    """Corpus BLEU of ``hypotheses`` against ``references`` (see the module docstring), 0..100.

        p_n = clipped matching n-grams / hypothesis n-grams, summed over the corpus
        BP  = exp(1 - r / c) when c < r, else 1     (c: hypothesis tokens, r: closest reference lengths)
        BLEU = 100 · BP · exp(mean over n of log p_n)

    A p_n with no match is smoothed to 1 / (2^k · hypothesis n-grams), k counting the
    orders with no match so far ("exp"); orders past the longest hypothesis end the sum.
    No matching unigram at all (or no hypothesis token) gives 0.
    """
    hypotheses, reference_lists = _reference_lists(hypotheses, references)
    correct, total = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, reference_lists):
        hyp = tokenize_13a(hypothesis)
        ref_tokens = [tokenize_13a(ref) for ref in refs]
        hyp_length += len(hyp)
        ref_length += min((abs(len(ref) - len(hyp)), len(ref)) for ref in ref_tokens)[1]  # closest; ties: shorter
        for n in range(1, max_order + 1):
            most = collections.Counter()
            for ref in ref_tokens:
                most |= _ngrams(ref, n)  # the largest count of each n-gram in any reference
            counts = _ngrams(hyp, n)
            correct[n - 1] += sum(min(count, most[gram]) for gram, count in counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_length == 0 or correct[0] == 0:  # nothing matches: 0, as sacrebleu (smoothing would not make it so)
        return 0.0
    brevity = 1.0 if hyp_length >= ref_length else math.exp(1 - ref_length / hyp_length)
    log_precisions, smoothing = [], 1.0
    for n in range(max_order):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smoothing *= 2
            log_precisions.append(math.log(100.0 / (smoothing * total[n])))
        else:
            log_precisions.append(math.log(100.0 * correct[n] / total[n]))
    log_precisions += [-9999999999.0] * (max_order - len(log_precisions))  # sacrebleu's log(0)
    return brevity * math.exp(sum(log_precisions) / max_order)


# --------------------------------------------------------------------------- ROUGE


def tokenize_rouge(text):
    """rouge-score's default tokenizer: lowercase, then the runs of [a-z0-9] (everything else separates)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _f_measure(matches, n_hypothesis, n_reference):
    precision = matches / n_hypothesis if n_hypothesis else 0.0
    recall = matches / n_reference if n_reference else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _rouge_n(hyp, ref, n):
    hyp_grams, ref_grams = _ngrams(hyp, n), _ngrams(ref, n)
    matches = sum((hyp_grams & ref_grams).values())
    return _f_measure(matches, sum(hyp_grams.values()), sum(ref_grams.values()))


def _lcs_length(a, b):
    """Length of the longest common subsequence of token lists ``a`` and ``b`` (one DP row)."""
    row = [0] * (len(b) + 1)
    for token in a:
        diagonal = 0
        for j, other in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if token == other else max(row[j], row[j - 1])
    return row[-1]


def _rouge_l(hyp, ref):
    return _f_measure(_lcs_length(hyp, ref), len(hyp), len(ref))


def rouge(hypotheses, references):
    """{"rouge1", "rouge2", "rougeL"}: mean F-measures over the pairs, 0..1 (module docstring).

        ROUGE-N: P = matching n-grams / hypothesis n-grams, R = ... / reference n-grams
        ROUGE-L: P = LCS / hypothesis tokens, R = LCS / reference tokens
        F = 2PR / (P + R), 0 when P + R = 0
    """
    hypotheses, reference_lists = _reference_lists(hypotheses, references)
    if not hypotheses:
        raise ValueError("rouge needs at least one hypothesis")
    scorers = {"rouge1": lambda h, r: _rouge_n(h, r, 1), "rouge2": lambda h, r: _rouge_n(h, r, 2),
               "rougeL": _rouge_l}
    sums = dict.fromkeys(scorers, 0.0)
    for hypothesis, refs in zip(hypotheses, reference_lists):
        hyp = tokenize_rouge(hypothesis)
        ref_tokens = [tokenize_rouge(ref) for ref in refs]
        for name, score in scorers.items():
            sums[name] += max(score(hyp, ref) for ref in ref_tokens)
    return {name: total / len(hypotheses) for name, total in sums.items()}
