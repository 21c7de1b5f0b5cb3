"""numpyllm.metrics against its oracles: BLEU against sacrebleu's corpus_bleu, ROUGE against
rouge-score's RougeScorer, on drawn text and on the edge cases (empty hypothesis, no
overlap, one word, unicode, several references). Skipped without the oracles (CI has them)."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm import metrics

sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu is the BLEU oracle (pip install sacrebleu)")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score is the ROUGE oracle "
                                                                     "(pip install rouge-score)")

TYPES = ("rouge1", "rouge2", "rougeL")
SCORER = rouge_scorer.RougeScorer(list(TYPES))

# words from a small vocabulary so texts share n-grams; punctuation, digits, dashes, HTML
# entities, case and non-ASCII letters exercise both tokenizers
WORDS = ["the", "The", "cat", "sat", "on", "mat", "a", "dog", "ran", "3.5", "1,000", "x-2", "9-", "e.g.", "end.",
         "(it)", "don't", "&amp;", "&quot;hi&quot;", "<skipped>", "café", "Ölfeld", "日本", "naïve", "—", "!", "?",
         "'", "...", ",", "-", "KELVIN", "İstanbul"]
SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "-\n", ""])


@st.composite
def texts(draw, max_words=12):
    words = draw(st.lists(st.sampled_from(WORDS) | st.text(max_size=4), max_size=max_words))
    pieces = []
    for word in words:
        pieces += [word, draw(SEPARATORS)]
    return "".join(pieces)


@st.composite
def corpora(draw, max_refs=3):
    """(hypotheses, references as sacrebleu's streams): some references None where a hypothesis has fewer."""
    n = draw(st.integers(1, 5))
    hypotheses = draw(st.lists(texts(), min_size=n, max_size=n))
    n_refs = draw(st.integers(1, max_refs))
    streams = [draw(st.lists(texts(), min_size=n, max_size=n)) for _ in range(n_refs)]
    for k in range(1, n_refs):  # the first stream always has every reference
        streams[k] = [draw(st.sampled_from([r, None])) for r in streams[k]]
    return hypotheses, streams


def oracle_rouge(hypotheses, streams):
    sets = [[r for r in refs if r is not None] for refs in zip(*streams)]
    scores = [SCORER.score_multi(refs, hypothesis) for hypothesis, refs in zip(hypotheses, sets)]
    return {name: sum(s[name].fmeasure for s in scores) / len(scores) for name in TYPES}


def check_both(hypotheses, streams):
    expected_bleu = sacrebleu.corpus_bleu(hypotheses, streams).score
    assert metrics.bleu(hypotheses, streams) == pytest.approx(expected_bleu, rel=1e-12, abs=1e-12)
    ours, theirs = metrics.rouge(hypotheses, streams), oracle_rouge(hypotheses, streams)
    assert ours.keys() == theirs.keys()
    for name in TYPES:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12, abs=1e-15), name


@given(corpora())
def test_bleu_and_rouge_match_the_oracles_on_drawn_text(corpus):
    check_both(*corpus)


@st.composite
def overlapping(draw):
    """A reference of plain words and a hypothesis that copies and edits it: high, nonzero scores."""
    reference = draw(st.lists(st.sampled_from(WORDS[:12]), min_size=1, max_size=20))
    hypothesis = list(reference)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(hypothesis)))
        hypothesis.insert(i, draw(st.sampled_from(WORDS[:12])))
    if len(hypothesis) > 1 and draw(st.booleans()):
        del hypothesis[draw(st.integers(0, len(hypothesis) - 1))]
    return " ".join(hypothesis), " ".join(reference)


@given(st.lists(overlapping(), min_size=1, max_size=4))
def test_bleu_and_rouge_match_the_oracles_on_near_copies(pairs):
    hypotheses, references = map(list, zip(*pairs))
    check_both(hypotheses, [references])


@pytest.mark.parametrize("hypotheses, streams", [
    pytest.param([""], [["the cat sat on the mat"]], id="empty hypothesis"),
    pytest.param(["", "the cat sat on the mat"], [["a dog", "the cat sat on a mat"]], id="empty among others"),
    pytest.param([""], [[""]], id="both empty"),
    pytest.param(["the cat"], [[""]], id="empty reference"),
    pytest.param(["a b c d e"], [["f g h i j"]], id="no overlap"),
    pytest.param(["cat"], [["cat"]], id="one word, the same"),
    pytest.param(["cat"], [["dog"]], id="one word, different"),
    pytest.param(["cat", "dog", "mat"], [["cat", "dog", "hat"]], id="one-word sentences"),
    pytest.param(["the cat sat on the mat"], [["the cat sat on the mat"]], id="identical"),
    pytest.param(["the the the the the"], [["the cat sat on the mat"]], id="clipped counts"),
    pytest.param(["the cat is on the mat"], [["the cat sat on the mat"], ["there is a cat on the mat"]],
                 id="two references"),
    pytest.param(["a cat sat", "dog"], [["the cat sat", "a dog"], ["a cat sat down", None], ["cat", None]],
                 id="varying reference counts"),
    pytest.param(["Ein Café in Köln, naïve Ölfeld", "日本語のテキスト です"],
                 [["ein café in köln, naive Ölfeld", "日本語のテキスト です"]], id="unicode"),
    pytest.param(["It costs $3.50, i.e. 1,000 - 2 euros."], [["It costs $ 3.50 , i.e. 1,000-2 euros ."]],
                 id="13a punctuation and digits"),
    pytest.param(["fish &amp; chips<skipped> are good-\nish"], [["fish & chips are goodish"]],
                 id="13a entities, skipped, hyphenated line break"),
])
def test_bleu_and_rouge_match_the_oracles_on_edge_cases(hypotheses, streams):
    check_both(hypotheses, streams)


def test_edge_case_values():
    """The numbers themselves, so the edge cases cannot pass by both sides being wrong alike."""
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert metrics.bleu(["a b c d e"], [["f g h i j"]]) == 0.0
    assert metrics.bleu([""], [["the cat"]]) == 0.0
    assert metrics.bleu(["cat"], [["cat"]]) == 0.0  # no 2-grams: BLEU-4 is 0 without effective order
    assert metrics.rouge(["cat"], ["cat"]) == {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 1.0}
    assert metrics.rouge([""], ["the cat"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert metrics.rouge(["日本"], ["日本"])["rouge1"] == 0.0  # no a-z0-9 token: nothing to count
    # one of two pairs perfect, the other disjoint: the corpus ROUGE is the mean of the pairs'
    assert metrics.rouge(["a b", "c d"], ["a b", "e f"]) == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}
    # the best reference per hypothesis
    assert metrics.rouge(["a b"], [["x y"], ["a b"]])["rouge1"] == 1.0


def test_tokenizers():
    assert metrics.bleu_tokenize("Hello, world! It's 3.5 - 1,000.") == \
        ["Hello", ",", "world", "!", "It's", "3.5", "-", "1,000", "."]
    assert metrics.rouge_tokenize("Héllo, World-2 it's") == ["h", "llo", "world", "2", "it", "s"]


def test_perplexity_is_exp_of_the_loss():
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(math.log(153.0)) == pytest.approx(153.0)
    assert metrics.perplexity(1e4) == math.inf


@pytest.mark.parametrize("function", [metrics.bleu, metrics.rouge])
def test_bad_inputs_name_the_argument(function):
    with pytest.raises(TypeError, match="hypotheses"):
        function("the cat", ["the cat"])
    with pytest.raises(TypeError, match="hypotheses"):
        function([1], ["the cat"])
    with pytest.raises(ValueError, match="hypotheses"):
        function([], [])
    with pytest.raises(TypeError, match="references"):
        function(["the cat"], "the cat")
    with pytest.raises(ValueError, match=r"references\[0\].*2 references.*got 1"):
        function(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="hypothesis 1 has none"):
        function(["a", "b"], [["a", None]])
