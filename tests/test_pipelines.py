"""numpyllm.pipeline against transformers.pipeline on the same tiny directories, built here
(a GPT-2 with a BPE tokenizer beside it, a BERT masked LM and a BERT classifier with a
WordPiece beside them): the same outputs, the same tokens and labels, scores to ~1e-5."""
import numpy as np
import pytest

import numpyllm
from numpyllm import BertConfig, BertForMaskedLM, BertForSequenceClassification, BPETokenizer, GPT, GPTConfig
from numpyllm import WordPieceTokenizer

TEXTS = ["the cat sat on the mat and looked at the dog", "the dog ran after the cat, then sat down",
         "a bird sang in the tree; the cat watched it", "Paris is the capital of France.",
         "what a great film, I loved it", "what a terrible film, I hated it", "the world is a beautiful place"] * 3


def _perturb(model, seed, scale):
    """Spread the random weights so that scores differ by far more than float32 rounding."""
    model.flat_params += np.random.default_rng(seed).normal(0.0, scale, model.flat_params.size).astype(
        model.flat_params.dtype)
    return model


def _bert_config(tokenizer, **labels):
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **labels)


def build_directories(root):
    """root/gpt, root/mlm, root/classifier: tiny perturbed models with their tokenizers beside them."""
    bpe = BPETokenizer.train(TEXTS, vocab_size=300)
    config = GPTConfig(vocab_size=bpe.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    _perturb(GPT(config, seed=0), 1, 0.3).save_pretrained(root / "gpt")
    bpe.save(root / "gpt")
    wordpiece = WordPieceTokenizer.train(TEXTS, vocab_size=150)
    _perturb(BertForMaskedLM(_bert_config(wordpiece), seed=0), 2, 0.2).save_pretrained(root / "mlm")
    config = _bert_config(wordpiece, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"})
    _perturb(BertForSequenceClassification(config, seed=0), 3, 0.2).save_pretrained(root / "classifier")
    for name in ("mlm", "classifier"):
        wordpiece.save(root / name)
    return {name: str(root / name) for name in ("gpt", "mlm", "classifier")}


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    return build_directories(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def gpt_dir(directories):
    return directories["gpt"]


@pytest.fixture(scope="module")
def mlm_dir(directories):
    return directories["mlm"]


@pytest.fixture(scope="module")
def classifier_dir(directories):
    return directories["classifier"]


@pytest.fixture(scope="module")
def hf_pipeline():
    pytest.importorskip("torch", reason="transformers' pipeline runs on torch")
    transformers = pytest.importorskip("transformers", reason="transformers.pipeline is the oracle")
    transformers.utils.logging.set_verbosity_error()
    return lambda task, directory: transformers.pipeline(task, model=directory, device="cpu")


def assert_same(ours, theirs, path="result"):
    """Equal structure, keys and values; floats (scores) to 1e-5."""
    assert type(ours) is type(theirs) or (isinstance(ours, float) and isinstance(theirs, float)), path
    if isinstance(theirs, list):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), path
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{path}[{key!r}]")
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=1e-5), path
    else:
        assert ours == theirs, path


@pytest.mark.parametrize("prompt, options", [
    ("The world is a beautiful place", dict(max_length=40)),
    ("the cat", dict(max_new_tokens=12)),
    ("the cat", dict(max_new_tokens=12, return_full_text=False)),
    (["the dog ran", "a bird"], dict(max_new_tokens=5)),
    ("héllo wörld <|endoftext|> the", dict(max_new_tokens=8)),
])
def test_text_generation_matches_transformers_greedy(gpt_dir, hf_pipeline, prompt, options):
    ours = numpyllm.pipeline("text-generation", model=gpt_dir)(prompt, do_sample=False, **options)
    theirs = hf_pipeline("text-generation", gpt_dir)(prompt, do_sample=False, **options)
    assert_same(ours, theirs)
    assert len((ours[0] if isinstance(prompt, str) else ours[0][0])["generated_text"]) > 0


def test_text_generation_sampling_is_seeded_and_returns_n_sequences(gpt_dir):
    generator = numpyllm.pipeline("text-generation", model=gpt_dir, max_new_tokens=10)
    first = generator("the cat", num_return_sequences=3, seed=7)
    assert len(first) == 3 and all(r["generated_text"].startswith("the cat") for r in first)
    assert generator("the cat", num_return_sequences=3, seed=7) == first
    assert len({r["generated_text"] for r in first}) > 1  # a 300-token vocabulary at temperature 0.7
    greedy = generator("the cat", do_sample=False)
    assert generator("the cat", temperature=1.0, top_k=1, seed=3) == greedy  # top_k=1 sampling is greedy
    with pytest.raises(ValueError, match="num_return_sequences=2 needs do_sample=True"):
        generator("the cat", do_sample=False, num_return_sequences=2)
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        generator("the cat sat", max_length=2, max_new_tokens=None)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_tokens'\]"):
        generator("the cat", max_tokens=3)


@pytest.mark.parametrize("text, options", [
    ("the cat sat on the [MASK].", {}),
    ("the [MASK] sat on the mat", dict(top_k=3)),
    ("the [MASK] sat on the [MASK].", dict(top_k=2)),
    (["the cat [MASK] on the mat", "a [MASK] sang in the tree"], {}),
    (["Paris is the [MASK] of France."], dict(top_k=4)),
    ("the cat sat on the [MASK].", dict(targets=["mat", "dog", "cat", "tree"], top_k=3)),
    ("the cat sat on the [MASK].", dict(targets="dog")),
])
def test_fill_mask_matches_transformers(mlm_dir, hf_pipeline, text, options):
    ours = numpyllm.pipeline("fill-mask", model=mlm_dir)(text, **options)
    theirs = hf_pipeline("fill-mask", mlm_dir)(text, **options)
    assert_same(ours, theirs)


@pytest.mark.parametrize("inputs, options", [
    ("what a great film!", {}),
    ("what a great film!", dict(top_k=2)),
    ("what a great film!", dict(top_k=None)),
    (["what a great film!", "the cat sat on the mat", "I hated it"], {}),
    (["what a great film!", "I hated it"], dict(top_k=None)),
    ({"text": "the cat sat", "text_pair": "on the mat"}, {}),
    ([{"text": "the cat sat", "text_pair": "on the mat"}, {"text": "a bird"}], dict(top_k=3)),
    ("what a great film!", dict(function_to_apply="sigmoid")),
])
def test_text_classification_matches_transformers(classifier_dir, hf_pipeline, inputs, options):
    ours = numpyllm.pipeline("text-classification", model=classifier_dir)(inputs, **options)
    theirs = hf_pipeline("text-classification", classifier_dir)(inputs, **options)
    assert_same(ours, theirs)
    flat = [ours] if isinstance(ours, dict) else [r for item in ours for r in ([item] if isinstance(item, dict) else item)]
    assert {r["label"] for r in flat} <= {"negative", "neutral", "positive"}


def test_text_classification_top_k_given_to_pipeline(classifier_dir, hf_pipeline):
    import transformers

    ours = numpyllm.pipeline("text-classification", model=classifier_dir, top_k=2)("what a great film!")
    theirs = transformers.pipeline("text-classification", model=classifier_dir, top_k=2)("what a great film!")
    assert_same(ours, theirs)
    assert len(ours) == 1 and len(ours[0]) == 2


def test_scores_are_probabilities_in_order(mlm_dir, classifier_dir):
    fill = numpyllm.pipeline("fill-mask", model=mlm_dir)("the cat sat on the [MASK].", top_k=150)
    scores = [r["score"] for r in fill]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5) and scores == sorted(scores, reverse=True)
    everything = numpyllm.pipeline("text-classification", model=classifier_dir)("a film", top_k=None)
    assert sum(r["score"] for r in everything) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("task, wrong, expected", [
    ("fill-mask", "gpt_dir", r"pipeline\('fill-mask'\) needs a BERT masked-LM model .* holds GPT2LMHeadModel"),
    ("text-classification", "mlm_dir", r"needs a BERT sequence classifier .* holds BertForMaskedLM"),
    ("text-generation", "classifier_dir", r"needs a GPT-2 language model .* holds BertForSequenceClassification"),
    ("fill-mask", "classifier_dir", r"needs a BERT masked-LM model .* holds BertForSequenceClassification"),
])
def test_wrong_kind_of_model_names_both(request, task, wrong, expected):
    with pytest.raises(ValueError, match=expected):
        numpyllm.pipeline(task, model=request.getfixturevalue(wrong))


def test_unknown_task_lists_the_known_ones(gpt_dir):
    with pytest.raises(ValueError, match="unknown task 'summarization'.*'text-generation', 'fill-mask', "
                                         "'text-classification'"):
        numpyllm.pipeline("summarization", model=gpt_dir)


def test_bad_inputs(mlm_dir, classifier_dir):
    fill = numpyllm.pipeline("fill-mask", model=mlm_dir)
    with pytest.raises(ValueError, match=r"no mask token \(\[MASK\]\)"):
        fill("no mask here")
    with pytest.raises(TypeError, match="top_k must be an int"):
        fill("the [MASK]", top_k="5")
    with pytest.raises(TypeError, match="each input must be a str"):
        fill([3])
    classify = numpyllm.pipeline("text-classification", model=classifier_dir)
    with pytest.raises(ValueError, match="a text pair is a dict"):
        classify({"text": "a", "pair": "b"})
    with pytest.raises(ValueError, match="function_to_apply must be one of"):
        classify("a", function_to_apply="relu")
    with pytest.raises(ValueError, match="top_k must be >= 1"):  # a bad default fails in pipeline()
        numpyllm.pipeline("fill-mask", model=mlm_dir, top_k=0)


def test_fill_mask_on_a_pretraining_directory_matches_transformers(tmp_path, hf_pipeline):
    """A BertForPreTraining directory (MLM + NSP heads) serves fill-mask, as in transformers."""
    from numpyllm import BertForPreTraining

    wordpiece = WordPieceTokenizer.train(TEXTS, vocab_size=150)
    _perturb(BertForPreTraining(_bert_config(wordpiece), seed=0), 4, 0.2).save_pretrained(tmp_path)
    wordpiece.save(tmp_path)
    with pytest.warns(UserWarning, match="unused checkpoint tensors"):  # the NSP head, as transformers says
        fill = numpyllm.pipeline("fill-mask", model=str(tmp_path))
    text = "the dog [MASK] after the cat"
    assert_same(fill(text), hf_pipeline("fill-mask", str(tmp_path))(text))
