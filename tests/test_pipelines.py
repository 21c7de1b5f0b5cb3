"""numpyllm.pipeline against transformers.pipeline on the same tiny saved directories."""

import numpy as np
import pytest

import numpyllm
from numpyllm import BPETokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT, GPTConfig
from numpyllm import WordPieceTokenizer

transformers = pytest.importorskip("transformers", reason="transformers.pipeline is the oracle")

TEXTS = ["the cat sat on the mat", "the dog ran to the park", "a bird sang in the tree", "the sun is warm today",
         "we walked along the river", "she reads a book at night", "the film was great fun", "what a dull day"] * 4


def _perturb(model, seed, scale=0.5):
    model.flat_params += np.random.default_rng(seed).normal(0.0, scale, model.flat_params.size).astype(
        model.flat_params.dtype)
    return model


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt")
    tokenizer = BPETokenizer.train(TEXTS, vocab_size=300)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    _perturb(GPT(config, seed=0, attention_backend="numpy"), 1).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def wordpiece():
    return WordPieceTokenizer.train(TEXTS, vocab_size=120, progress=False)


def _bert_config(tokenizer, **changes):
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=32, **changes)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory, wordpiece):
    directory = tmp_path_factory.mktemp("mlm")
    _perturb(BertForMaskedLM(_bert_config(wordpiece), seed=0), 2).save_pretrained(directory)
    wordpiece.save(directory)
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, wordpiece):
    directory = tmp_path_factory.mktemp("cls")
    config = _bert_config(wordpiece, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"})
    _perturb(BertForSequenceClassification(config, seed=0), 3).save_pretrained(directory)
    wordpiece.save(directory)
    return directory


def _same(ours, theirs, rel=1e-4):
    """Equal structures, scores to ``rel``."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (ours, theirs)
        for a, b in zip(ours, theirs):
            _same(a, b, rel)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), (ours, theirs)
        for key in theirs:
            _same(ours[key], theirs[key], rel)
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=rel, abs=1e-7)
    else:
        assert ours == theirs


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=12), dict(max_length=10), dict(max_new_tokens=5, return_full_text=False)])
def test_text_generation_equals_transformers_greedy(gpt_dir, kwargs):
    ours = numpyllm.pipeline("text-generation", model=str(gpt_dir))
    theirs = transformers.pipeline("text-generation", model=str(gpt_dir), framework="pt") \
        if "framework" in transformers.pipeline.__code__.co_varnames else \
        transformers.pipeline("text-generation", model=str(gpt_dir))
    for prompt in ("the cat", ["a bird sang", "we walked"]):
        _same(ours(prompt, **kwargs), theirs(prompt, do_sample=False, **kwargs))


def test_text_generation_samples_several_sequences_reproducibly(gpt_dir):
    generate = numpyllm.pipeline("text-generation", model=gpt_dir)
    first = generate("the", max_new_tokens=6, num_return_sequences=3, do_sample=True, seed=0)
    assert len(first) == 3 and all(row["generated_text"].startswith("the") for row in first)
    assert first == generate("the", max_new_tokens=6, num_return_sequences=3, do_sample=True, seed=0)


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=3), dict(targets=["cat", "dog", "the"])])
def test_fill_mask_equals_transformers(mlm_dir, kwargs):
    ours = numpyllm.pipeline("fill-mask", model=mlm_dir)
    theirs = transformers.pipeline("fill-mask", model=str(mlm_dir))
    for text in ("the [MASK] sat on the mat", ["a bird [MASK] in the tree", "[MASK] film was great"],
                 "the [MASK] ran to the [MASK]"):
        _same(ours(text, **kwargs), theirs(text, **kwargs))


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=2), dict(top_k=None)])
def test_text_classification_equals_transformers(classifier_dir, kwargs):
    ours = numpyllm.pipeline("text-classification", model=classifier_dir)
    theirs = transformers.pipeline("text-classification", model=str(classifier_dir))
    for inputs in ("what a great film", ["a dull day", "the sun is warm"],
                   {"text": "the film", "text_pair": "was great fun"}):
        _same(ours(inputs, **kwargs), theirs(inputs, **kwargs))


@pytest.mark.parametrize("task, fixture, message", [
    ("text-generation", "mlm_dir", r"needs a GPT2LMHeadModel \(model_type 'gpt2'\), but .*config.json holds "
                                   r"model_type 'bert'"),
    ("fill-mask", "gpt_dir", r"needs a BertForMaskedLM or BertForPreTraining .* model_type 'gpt2'"),
    ("fill-mask", "classifier_dir", r"architectures \['BertForSequenceClassification'\]"),
    ("text-classification", "mlm_dir", r"needs a BertForSequenceClassification .*architectures \['BertForMaskedLM'\]"),
])
def test_the_wrong_kind_of_model_is_named_with_the_task(request, task, fixture, message):
    with pytest.raises(ValueError, match=message):
        numpyllm.pipeline(task, model=request.getfixturevalue(fixture))


def test_unknown_task_is_named(gpt_dir):
    with pytest.raises(ValueError, match="task must be one of"):
        numpyllm.pipeline("summarization", model=gpt_dir)
