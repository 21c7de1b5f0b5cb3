"""numpyllm.metrics against its oracles: sacrebleu's corpus BLEU and rouge-score's ROUGE."""

import math

import pytest

from numpyllm import metrics

sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu is the BLEU oracle")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score is the ROUGE oracle")

CORPORA = {
    "ordinary": (["The cat sat on the mat.", "It is raining today, isn't it?"],
                 ["The cat is sitting on the mat.", "Today it's raining, isn't it?"]),
    "exact": (["a b c d e f"], ["a b c d e f"]),
    "empty hypothesis": (["", "the quick brown fox"], ["a dog", "the quick brown fox jumps"]),
    "all empty": ([""], ["nothing here"]),
    "no overlap": (["alpha beta gamma delta"], ["one two three four"]),
    "one word": (["hello", "world"], ["hello", "there"]),
    "shorter than 4-grams": (["the cat sat"], ["the cat sat down"]),
    "unicode": (["Ünïcödé text — “quoted” 東京 3.5-4", "naïve café"], ["Unicode text — \"quoted\" 東京 3.5 - 4", "naive café"]),
    "numbers and entities": (["Costs 1,000.50 &amp; more-or-less 3-4 <skipped>"], ["costs 1,000.50 & more or less 3 - 4"]),
    "long": ([" ".join(f"w{i % 13}" for i in range(60))], [" ".join(f"w{i % 11}" for i in range(55))]),
}


@pytest.mark.parametrize("name", CORPORA)
def test_bleu_equals_sacrebleu(name):
    hypotheses, references = CORPORA[name]
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert math.isclose(metrics.bleu(hypotheses, references), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_bleu_with_several_references_equals_sacrebleu():
    hypotheses = ["the cat is on the mat", "there is a cat here"]
    first = ["the cat sat on the mat", "a cat is here"]
    second = ["there is a cat on the mat", "there is a cat here indeed"]
    expected = sacrebleu.corpus_bleu(hypotheses, [first, second]).score
    got = metrics.bleu(hypotheses, [[a, b] for a, b in zip(first, second)])
    assert math.isclose(got, expected, rel_tol=1e-12)
    assert got > metrics.bleu(hypotheses, first)  # the second references add matches


def test_tokenize_13a_equals_sacrebleus():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    for hypotheses, references in CORPORA.values():
        for text in hypotheses + references:
            assert metrics.tokenize_13a(text) == Tokenizer13a()(text).split()


@pytest.mark.parametrize("name", CORPORA)
def test_rouge_equals_rouge_score(name):
    hypotheses, references = CORPORA[name]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    per_pair = [scorer.score(ref, hyp) for hyp, ref in zip(hypotheses, references)]  # (target, prediction)
    got = metrics.rouge(hypotheses, references)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(score[key].fmeasure for score in per_pair) / len(per_pair)
        assert math.isclose(got[key], expected, rel_tol=1e-12, abs_tol=1e-15), key


def test_rouge_with_several_references_takes_the_best_as_score_multi():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    hypothesis, refs = "the cat was found under the bed", ["the cat was under the bed", "a dog slept"]
    expected = scorer.score_multi(refs, hypothesis)
    got = metrics.rouge([hypothesis], [refs])
    for key in got:
        assert math.isclose(got[key], expected[key].fmeasure, rel_tol=1e-12)


@pytest.mark.parametrize("call, error, message", [
    (lambda: metrics.bleu(["a"], ["a", "b"]), ValueError, "one entry per hypothesis: 1 hypotheses, 2"),
    (lambda: metrics.bleu("a", ["a"]), TypeError, "must be lists"),
    (lambda: metrics.rouge([1], ["a"]), TypeError, r"hypotheses\[0\] must be a str, got int"),
    (lambda: metrics.rouge(["a"], [[]]), TypeError, r"references\[0\] must be a str or a non-empty list"),
    (lambda: metrics.rouge([], []), ValueError, "at least one hypothesis"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_perplexity_is_exp_of_the_loss():
    assert metrics.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert metrics.perplexity(1e4) == math.inf
