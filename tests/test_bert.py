"""BERT: configuration checks, parameter layout, initialisation, input validation, every model's
loss gradient against finite differences, transformers' BERT classes (torch) as the oracle on the
same weights with a right-padded batch and token types, and both attention backends."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finite_differences import assert_gradient_matches
from numpyllm import (BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertModel,
                      attention)
from numpyllm.bert import config_to_hf

TINY = dict(vocab_size=23, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
            max_position_embeddings=10, type_vocab_size=3)
CLASSES = (BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification)


def perturbed(cls, config, seed, backend="numpy", scale=0.1):
    """A model whose every parameter (biases and LayerNorm gains too) is non-trivial."""
    model = cls(config, seed=seed, attention_backend=backend)
    model.flat_params += np.random.default_rng(seed).normal(0.0, scale, model.flat_params.size).astype(config.dtype)
    return model


def padded_batch(rng, config, B, T):
    """input_ids, token_type_ids, attention_mask of a right-padded batch (row 0 full, the others shorter).

    What lies under the padding must not matter; here it is ordinary tokens."""
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    mask = (np.arange(T) < lengths[:, None]).astype(np.int64)
    ids = rng.integers(0, config.vocab_size - 1, (B, T))
    ids += ids >= config.pad_token_id  # not [PAD], even under the padding: its lookups get no gradient (see below)
    types = (np.arange(T) >= lengths[:, None] // 2).astype(np.int64) * mask  # sentence A then B, 0 on padding
    return ids, types, mask


def mlm_labels(rng, config, mask):
    labels = np.where(rng.random(mask.shape) < 0.5, rng.integers(0, config.vocab_size, mask.shape), -100)
    labels[mask == 0] = -100
    labels[0, 0] = 1  # at least one scored position
    return labels


def class_labels(rng, problem, config, B):
    """Labels for each problem type, with the config that infers it as transformers does."""
    if problem == "single_label_classification":
        labels = rng.integers(0, 3, B)
        labels[-1] = -100 if B > 1 else labels[-1]
        return dataclasses.replace(config, num_labels=3), labels
    if problem == "regression":  # num_labels == 1: inferred
        return dataclasses.replace(config, num_labels=1), rng.standard_normal(B)
    if problem == "multi_label_classification":  # float labels with num_labels > 1: inferred
        return dataclasses.replace(config, num_labels=3), (rng.random((B, 3)) < 0.5).astype(np.float64)
    # regression over several outputs must be asked for
    return dataclasses.replace(config, num_labels=2, problem_type="regression"), rng.standard_normal((B, 2))


PROBLEMS = ("single_label_classification", "regression", "multi_label_classification", "regression_2d")


def loss_function(cls, rng, config, ids, types, mask, problem=None):
    """(model class, config, f(model) -> (loss, grads)) for one class and problem type.

    BertModel has no loss of its own: a fixed random linear function of both outputs stands in
    (its gradient is ``model.grads`` with those coefficients)."""
    B, T = ids.shape
    if cls is BertModel:
        dhidden = rng.standard_normal((B, T, config.hidden_size))
        dpooled = rng.standard_normal((B, config.hidden_size))

        def run(model):
            hidden, pooled = model(ids, types, mask)
            loss = float(np.sum(hidden * dhidden) + np.sum(pooled * dpooled))
            return loss, model.grads(ids, dhidden, dpooled, types, mask)

        return config, run, (dhidden, dpooled)
    if cls is BertForMaskedLM:
        labels = mlm_labels(rng, config, mask)
    elif cls is BertForPreTraining:
        labels = (mlm_labels(rng, config, mask), rng.integers(0, 2, B))
    else:
        config, labels = class_labels(rng, problem, config, B)
    return config, (lambda model: model.loss_and_grads(ids, labels, types, mask)), labels


def relative_error(actual, reference, all_references):
    """max |actual - reference| relative to the tensor's own largest gradient, or to 1e-3 of the
    model's largest where the tensor's is ~0 (the key biases: softmax ignores a constant added to
    every score of a row, so their exact gradient is 0 and any rounding would be "infinitely" off)."""
    scale = max(np.max(np.abs(r)) for r in all_references)
    return np.max(np.abs(actual - reference)) / max(np.max(np.abs(reference)), 1e-3 * scale)


CASES = [(BertModel, None), (BertForMaskedLM, None), (BertForPreTraining, None)] + [
    (BertForSequenceClassification, problem) for problem in PROBLEMS]
CASE_IDS = [cls.__name__ + (f"-{problem}" if problem else "") for cls, problem in CASES]


# --------------------------------------------------------------------------- config and layout


@pytest.mark.parametrize("change, error, message", [
    (dict(hidden_size=10, num_attention_heads=3), ValueError, "multiple of num_attention_heads"),
    (dict(num_hidden_layers=0), ValueError, "num_hidden_layers must be >= 1"),
    (dict(vocab_size=2.0), TypeError, "vocab_size must be an int"),
    (dict(hidden_act="swish"), ValueError, r"hidden_act must be one of \['gelu', 'gelu_new'"),
    (dict(problem_type="ranking"), ValueError, "problem_type must be None or one of"),
    (dict(layer_norm_eps=0.0), ValueError, "layer_norm_eps must be in"),
    (dict(dtype="float16"), ValueError, "dtype must be one of"),
    (dict(pad_token_id=23), ValueError, "pad_token_id must be < vocab_size=23"),
    (dict(num_labels=2, id2label={0: "a"}), ValueError, "id2label must map each id"),
    (dict(id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0}), ValueError, "label2id must be the inverse"),
])
def test_config_rejects_bad_values(change, error, message):
    with pytest.raises(error, match=message):
        BertConfig(**{**TINY, **change})


def test_config_defaults_are_bert_base_and_labels_are_named():
    config = BertConfig()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.intermediate_size,
            config.hidden_act, config.layer_norm_eps) == (30522, 768, 12, 3072, "gelu", 1e-12)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1"} and config.label2id == {"LABEL_0": 0, "LABEL_1": 1}
    named = BertConfig(**TINY, num_labels=2, id2label={0: "neg", 1: "pos"})
    assert named.label2id == {"neg": 0, "pos": 1}


def test_params_are_views_of_one_flat_buffer_and_qkv_is_one_stacked_view():
    config = BertConfig(**TINY)
    model = BertForSequenceClassification(config)
    C = config.hidden_size
    assert model.params["bert.encoder.layer.1.attention.self.query.weight"].shape == (C, C)
    assert model.params["bert.encoder.layer.0.intermediate.dense.weight"].shape == (12, C)  # (out, in)
    assert model.params["classifier.weight"].shape == (2, C)
    assert model.num_params == sum(p.size for p in model.params.values()) == model.flat_params.size
    assert all(np.shares_memory(p, model.flat_params) for p in model.params.values())
    stacked = model._layers[1]["qkv.weight"]
    assert stacked.shape == (3 * C, C) and np.shares_memory(stacked, model.flat_params)
    model.params["bert.encoder.layer.1.attention.self.key.weight"][...] = 7.0
    assert np.all(stacked[C:2 * C] == 7.0) and not np.any(stacked[:C] == 7.0)
    assert "cls.predictions.decoder.weight" not in BertForMaskedLM(config).params  # tied to the word embeddings
    assert not any(name.startswith("bert.") for name in BertModel(config).params)
    assert not any("pooler" in name for name in BertForMaskedLM(config).params)


def test_initialisation_is_transformers():
    config = BertConfig(**{**TINY, "hidden_size": 64, "num_attention_heads": 4, "initializer_range": 0.05})
    model = BertForPreTraining(config, seed=1)
    p = model.params
    for name in ("bert.encoder.layer.1.attention.self.value.weight", "bert.embeddings.position_embeddings.weight",
                 "cls.predictions.transform.dense.weight"):
        assert np.std(p[name]) == pytest.approx(0.05, rel=0.1), name
    assert np.all(p["bert.embeddings.word_embeddings.weight"][config.pad_token_id] == 0)
    for name, tensor in p.items():
        if name.endswith("bias"):
            assert np.all(tensor == 0), name
        elif "LayerNorm" in name:
            assert np.all(tensor == 1), name
    again = BertForPreTraining(config, seed=1)
    np.testing.assert_array_equal(again.flat_params, model.flat_params)
    wide = BertForPreTraining(dataclasses.replace(config, dtype="float64"), seed=1)
    np.testing.assert_array_equal(wide.flat_params.astype(np.float32), model.flat_params)
    assert not np.array_equal(BertForPreTraining(config, seed=2).flat_params, model.flat_params)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_ids=np.zeros((2, 3))), TypeError, "input_ids must be an integer array"),
    (dict(input_ids=np.zeros((1, 11), int)), ValueError, "max_position_embeddings=10"),
    (dict(input_ids=np.full((1, 3), 23)), ValueError, r"input_ids entries must be in \[0, 23\)"),
    (dict(token_type_ids=np.full((2, 3), 3)), ValueError, r"token_type_ids entries must be in \[0, 3\)"),
    (dict(token_type_ids=np.zeros((2, 4), int)), ValueError, "token_type_ids must have input_ids' shape"),
    (dict(attention_mask=np.array([[1, 1, 1], [0, 1, 1]])), ValueError, r"right-padded.*row 1 is \[0, 1, 1\]"),
    (dict(attention_mask=np.array([[1, 1, 1], [0, 0, 0]])), ValueError, "at least one token in every row; row 1"),
    (dict(attention_mask=np.array([[1, 2, 1], [1, 1, 1]])), ValueError, "must be 0 .padding. or 1 .token., got 2"),
    (dict(attention_mask=np.ones((2, 2))), ValueError, "attention_mask must have input_ids' shape"),
])
def test_bad_inputs_are_rejected_with_their_name(kwargs, error, message):
    model = BertForSequenceClassification(BertConfig(**TINY))
    inputs = {"input_ids": np.zeros((2, 3), int), **kwargs}
    with pytest.raises(error, match=message):
        model(**inputs)
    with pytest.raises(error, match=message):
        model.loss_and_grads(inputs.pop("input_ids"), np.zeros(2, int), **inputs)


@pytest.mark.parametrize("cls, labels, error, message", [
    (BertForSequenceClassification, np.array([0, 2]), ValueError, r"labels entries must be < 2"),
    (BertForSequenceClassification, np.array([-100, -1]), ValueError, "nothing to score"),
    (BertForSequenceClassification, np.zeros((2, 3)), ValueError,
     r"multi_label_classification must have shape \(2, 2\)"),
    (BertForSequenceClassification, np.full((2, 2), 2.0), ValueError, r"must lie in \[0, 1\]"),
    (BertForMaskedLM, np.zeros((2, 4), int), ValueError, r"labels must have shape \(2, 3\)"),
    (BertForMaskedLM, np.full((2, 3), 0.5), TypeError, "labels must be an integer array"),
    (BertForPreTraining, np.zeros((2, 3), int), TypeError, "labels must be a pair"),
    (BertForPreTraining, (np.zeros((2, 3), int), np.array([0, 2])), ValueError, r"nsp labels entries must be < 2"),
])
def test_bad_labels_are_rejected_with_their_name(cls, labels, error, message):
    model = cls(BertConfig(**TINY))
    with pytest.raises(error, match=message):
        model.loss_and_grads(np.zeros((2, 3), int), labels)


def test_mlm_labels_on_padding_are_refused():
    model = BertForMaskedLM(BertConfig(**TINY))
    with pytest.raises(ValueError, match="labels scores a padded position"):
        model.loss_and_grads(np.ones((1, 3), int), np.array([[1, -100, 2]]), attention_mask=np.array([[1, 1, 0]]))


def test_bad_backend_config_and_seed_are_rejected():
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        BertModel(BertConfig(**TINY), attention_backend="torch")
    with pytest.raises(TypeError, match="config must be a BertConfig"):
        BertModel(TINY)
    with pytest.raises(ValueError, match="seed must be >= 0 or None, got -1"):
        BertModel(BertConfig(**TINY), seed=-1)


def test_problem_type_is_inferred_as_transformers_does():
    config = BertConfig(**TINY)
    assert BertForSequenceClassification(config).problem_type(np.array([0, 1])) == "single_label_classification"
    assert BertForSequenceClassification(config).problem_type(np.zeros((2, 2))) == "multi_label_classification"
    single = BertForSequenceClassification(dataclasses.replace(config, num_labels=1))
    assert single.problem_type(np.array([0, 1])) == "regression"
    fixed = BertForSequenceClassification(dataclasses.replace(config, problem_type="regression"))
    assert fixed.problem_type(np.array([0, 1])) == "regression"


# --------------------------------------------------------------------------- behaviour


def test_padding_changes_nothing_but_the_padded_positions():
    model = perturbed(BertForSequenceClassification, BertConfig(**TINY, dtype="float64"), seed=2)
    rng = np.random.default_rng(2)
    ids, types, _ = padded_batch(rng, model.config, 2, 7)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    logits = model(ids, types, mask)
    changed = ids.copy()
    changed[1, 4:] = (changed[1, 4:] + 1) % model.config.vocab_size  # other tokens under the padding
    np.testing.assert_array_equal(model(changed, types, mask), logits)
    short = model(ids[1:, :4], types[1:, :4])  # the same row without its padding
    np.testing.assert_allclose(logits[1:], short, rtol=1e-12)
    loss, grads = model.loss_and_grads(ids, np.array([0, 1]), types, mask)
    assert isinstance(loss, float) and list(grads) == list(model.params)
    assert all(g.base is grads["classifier.weight"].base for g in grads.values())


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("cls, problem", CASES, ids=CASE_IDS)
@settings(max_examples=2)
@given(seed=st.integers(0, 2**32 - 1), hidden_act=st.sampled_from(["gelu", "gelu_new"]))
def test_loss_gradient_matches_finite_differences_for_every_tensor(cls, problem, seed, hidden_act):
    rng = np.random.default_rng(seed)
    config = BertConfig(**{**TINY, "vocab_size": 9, "max_position_embeddings": 6}, hidden_act=hidden_act,
                        dtype="float64")
    ids, types, mask = padded_batch(rng, config, 3, 5)
    config, run, _ = loss_function(cls, rng, config, ids, types, mask, problem)
    model = perturbed(cls, config, seed)
    _, grads = run(model)
    for name, p in model.params.items():
        assert_gradient_matches(lambda: run(model)[0], p, grads[name], rng, name=name, n_entries=2)


@pytest.mark.skipif("cython" not in attention.available_backends(),
                    reason="the compiled attention kernel (numpyllm._attention) is not built")
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_gradients_are_the_same_through_numpy_and_cython_attention(dtype, rtol):
    rng = np.random.default_rng(5)
    config = BertConfig(**{**TINY, "hidden_size": 24, "num_attention_heads": 3, "max_position_embeddings": 40},
                        dtype=dtype)
    ids, types, mask = padded_batch(rng, config, 3, 37)
    labels = mlm_labels(rng, config, mask), np.array([0, 1, 1])
    reference = perturbed(BertForPreTraining, config, seed=5, backend="numpy")
    kernel = BertForPreTraining(config, attention_backend="cython")
    kernel.flat_params[:] = reference.flat_params
    loss, grads = reference.loss_and_grads(ids, labels, types, mask)
    kernel_loss, kernel_grads = kernel.loss_and_grads(ids, labels, types, mask)
    assert kernel_loss == pytest.approx(loss, rel=rtol)
    for name, g in grads.items():
        error = relative_error(kernel_grads[name], g, grads.values())
        assert error <= rtol, f"{name}: relative difference {error:.1e}"


# --------------------------------------------------------------------------- transformers as the oracle


def transformers_twin(model, torch, transformers):
    """transformers' class of the same name with ``model``'s config and exactly its weights."""
    hf_config = transformers.BertConfig(**config_to_hf(model.config, type(model).__name__))
    hf_config._attn_implementation = "eager"
    twin = getattr(transformers, type(model).__name__)(hf_config).to(getattr(torch, model.config.dtype)).eval()
    state = {name: torch.from_numpy(p.copy()) for name, p in model.params.items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    return twin


def reference_loss(twin, torch, cls, inputs, labels, extra):
    """transformers' outputs and loss for the same batch (BertModel: the same linear function of its outputs)."""
    if cls is BertModel:
        out = twin(**inputs)
        outputs = (out.last_hidden_state, out.pooler_output)
        dhidden, dpooled = (torch.from_numpy(a) for a in extra)
        return outputs, (outputs[0] * dhidden).sum() + (outputs[1] * dpooled).sum()
    if cls is BertForPreTraining:
        out = twin(**inputs, labels=torch.from_numpy(labels[0]), next_sentence_label=torch.from_numpy(labels[1]))
        return (out.prediction_logits, out.seq_relationship_logits), out.loss
    out = twin(**inputs, labels=torch.from_numpy(np.asarray(labels)))
    return (out.logits,), out.loss


@pytest.mark.parametrize("cls, problem", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float64", 1e-10)])
def test_outputs_loss_and_every_gradient_match_transformers(cls, problem, dtype, tolerance):
    torch = pytest.importorskip("torch", reason="torch runs the reference BERT")
    transformers = pytest.importorskip("transformers", reason="transformers' BERT classes are the oracle")
    rng = np.random.default_rng(7)
    config = BertConfig(**{**TINY, "vocab_size": 40, "hidden_size": 16, "num_attention_heads": 4,
                           "max_position_embeddings": 12}, dtype=dtype)
    ids, types, mask = padded_batch(rng, config, 4, 11)
    ids[0, 3] = config.pad_token_id  # [PAD] as a token: transformers gives its lookups no gradient (padding_idx)
    config, run, labels = loss_function(cls, rng, config, ids, types, mask, problem)
    model = perturbed(cls, config, seed=7, backend="auto")
    twin = transformers_twin(model, torch, transformers)
    if isinstance(labels, np.ndarray) and labels.dtype.kind == "f":
        labels = labels.astype(dtype)  # torch's MSE and BCE losses want the logits' dtype
    inputs = {name: torch.from_numpy(a) for name, a in
              (("input_ids", ids), ("token_type_ids", types), ("attention_mask", mask))}
    outputs, loss_t = reference_loss(twin, torch, cls, inputs, labels, labels)
    ours = model(ids, types, mask)
    for mine, theirs in zip(ours if isinstance(ours, tuple) else (ours,), outputs):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=0, atol=tolerance)
    if cls is BertForSequenceClassification:
        assert twin.config.problem_type == model.problem_type(labels)
    loss_t.backward()
    loss, grads = run(model)
    assert loss == pytest.approx(loss_t.item(), rel=tolerance)
    references = {name: parameter.grad.numpy() for name, parameter in twin.named_parameters()}
    for name, reference in references.items():
        error = relative_error(grads[name], reference, references.values())
        assert error <= tolerance, f"{name}: relative difference {error:.1e} from transformers"
