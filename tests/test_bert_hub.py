"""BERT checkpoint directories: exact round trips, transformers' four classes both ways (safetensors,
shards, pytorch_model.bin, float16/bfloat16), older files, loading across classes, clear errors."""

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest

from numpyllm import (GPT, BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification,
                      BertModel, GPTConfig)
from numpyllm.bert import config_to_hf

pytest.importorskip("safetensors", reason="checkpoints are model.safetensors files")

TINY = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
            max_position_embeddings=10)
CLASSES = (BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification)


def perturbed(cls, config=None, seed=0):
    model = cls(config or BertConfig(**TINY), seed=seed)
    model.flat_params += np.random.default_rng(seed).normal(0.0, 0.1, model.flat_params.size).astype(np.float32)
    return model


def batch():
    rng = np.random.default_rng(3)
    ids = rng.integers(1, TINY["vocab_size"], (2, 6))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    return ids, (np.arange(6) >= 3).astype(int)[None].repeat(2, 0) * mask, mask


def outputs(model):
    out = model(*batch())
    return out if isinstance(out, tuple) else (out,)


def hf_outputs(twin, torch):
    ids, types, mask = (torch.from_numpy(a) for a in batch())
    with torch.no_grad():
        out = twin(input_ids=ids, token_type_ids=types, attention_mask=mask)
    names = {"BertModel": ("last_hidden_state", "pooler_output"), "BertForPreTraining":
             ("prediction_logits", "seq_relationship_logits")}.get(type(twin).__name__, ("logits",))
    return tuple(getattr(out, name).double().numpy() for name in names)


def assert_same_outputs(model, twin, torch, atol=1e-5):
    for mine, theirs in zip(outputs(model), hf_outputs(twin, torch)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch", reason="torch runs transformers")
    transformers = pytest.importorskip("transformers", reason="transformers reads and writes the other side")
    return torch, transformers


def hf_model(transformers, cls, **config):
    hf_config = transformers.BertConfig(**config_to_hf(BertConfig(**{**TINY, **config}), cls.__name__))
    torch_model = getattr(transformers, cls.__name__)(hf_config).eval()
    return torch_model


# --------------------------------------------------------------------------- both ways with transformers


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_save_pretrained_round_trips_and_loads_in_transformers(cls, hf, tmp_path):
    torch, transformers = hf
    config = BertConfig(**TINY, dtype="float64", num_labels=3, id2label={0: "neg", 1: "mid", 2: "pos"})
    model = perturbed(cls, config, seed=1)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path, attention_backend="numpy")
    assert loaded.config == model.config and loaded.attention_backend == "numpy"
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    twin = getattr(transformers, cls.__name__).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert_same_outputs(model, twin, torch, atol=1e-12)
    if cls is BertForSequenceClassification:
        assert twin.config.id2label == {0: "neg", 1: "mid", 2: "pos"} and twin.config.label2id["pos"] == 2


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["safetensors", "sharded", "pytorch_model.bin", "float16", "bfloat16"])
def test_transformers_checkpoints_load_with_the_same_outputs(cls, how, hf, tmp_path):
    torch, transformers = hf
    twin = hf_model(transformers, cls)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if how in ("float16", "bfloat16"):
        twin = twin.to(getattr(torch, how))
    if how == "pytorch_model.bin":
        twin.config.save_pretrained(tmp_path)
        torch.save(twin.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        twin.save_pretrained(tmp_path, max_shard_size="1KB" if how == "sharded" else "5GB")
    if how == "sharded":
        assert (tmp_path / "model.safetensors.index.json").is_file()
    model = cls.from_pretrained(tmp_path)
    assert model.config.dtype == "float32"
    assert_same_outputs(model, twin.float(), torch)  # float16 weights widen exactly


def write_raw(directory, hf_config, tensors):
    """A checkpoint written without numpyllm, to feed the reader what other tools write."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / "model.safetensors"))


def test_old_style_files_load(tmp_path):
    # LayerNorm.gamma/beta, a stored position_ids buffer, the bias only under the decoder, a stored decoder weight
    model = perturbed(BertForPreTraining)
    tensors = {}
    for name, p in model.params.items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        tensors["cls.predictions.decoder.bias" if name == "cls.predictions.bias" else name] = p
    tensors["bert.embeddings.position_ids"] = np.arange(10)[None]
    tensors["cls.predictions.decoder.weight"] = model.params["bert.embeddings.word_embeddings.weight"]
    write_raw(tmp_path, config_to_hf(model.config), tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing or unused
        loaded = BertForPreTraining.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)


def test_a_checkpoint_without_any_mlm_bias_starts_it_at_zero_and_says_so(tmp_path):
    model = perturbed(BertForMaskedLM)
    tensors = {n: p for n, p in model.params.items() if n != "cls.predictions.bias"}
    write_raw(tmp_path, config_to_hf(model.config), tensors)
    with pytest.warns(UserWarning, match=r"newly initialized.*\['cls.predictions.bias'\]"):
        loaded = BertForMaskedLM.from_pretrained(tmp_path)
    assert np.all(loaded.params["cls.predictions.bias"] == 0)


def test_an_untied_decoder_is_refused(tmp_path):
    model = perturbed(BertForMaskedLM)
    tensors = dict(model.params, **{"cls.predictions.decoder.weight": np.ones((30, 8), np.float32)})
    write_raw(tmp_path, config_to_hf(model.config), tensors)
    with pytest.raises(ValueError, match="decoder.weight differs from the word embeddings"):
        BertForMaskedLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("source", [BertForMaskedLM, BertForPreTraining])
def test_mlm_and_pretraining_checkpoints_load_into_the_classifier_with_one_warning(source, tmp_path):
    trained = perturbed(source)
    trained.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=4, seed=3)
    assert len(caught) == 1
    message = str(caught[0].message)
    fresh = ["classifier.weight", "classifier.bias"] + (["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
                                                          if source is BertForMaskedLM else [])
    assert all(name in message.split("unused")[0] for name in fresh), message
    assert "cls.predictions.transform.dense.weight" in message.split("unused")[1]
    assert model.config.num_labels == 4 and model.config.id2label[3] == "LABEL_3"
    np.testing.assert_array_equal(model.params["bert.encoder.layer.1.output.dense.weight"],
                                  trained.params["bert.encoder.layer.1.output.dense.weight"])
    assert np.std(model.params["classifier.weight"]) > 0 and np.all(model.params["classifier.bias"] == 0)


def test_bertmodel_checkpoints_load_into_the_heads_and_back(tmp_path):
    encoder = perturbed(BertModel)
    encoder.save_pretrained(tmp_path / "encoder")
    with pytest.warns(UserWarning, match="newly initialized"):
        mlm = BertForMaskedLM.from_pretrained(tmp_path / "encoder")
    np.testing.assert_array_equal(mlm.params["bert.embeddings.word_embeddings.weight"],
                                  encoder.params["embeddings.word_embeddings.weight"])
    classifier = perturbed(BertForSequenceClassification, seed=2)
    classifier.save_pretrained(tmp_path / "classifier")
    with pytest.warns(UserWarning, match=r"unused checkpoint tensors: \['classifier.bias', 'classifier.weight'\]"):
        back = BertModel.from_pretrained(tmp_path / "classifier")
    hidden, pooled = back(*batch())
    np.testing.assert_array_equal(back.params["pooler.dense.weight"], classifier.params["bert.pooler.dense.weight"])
    assert hidden.shape == (2, 6, 8) and pooled.shape == (2, 8)


def test_classifier_checkpoint_keeps_its_labels_and_problem_type(tmp_path):
    config = BertConfig(**TINY, num_labels=2, id2label={0: "negative", 1: "positive"},
                        problem_type="multi_label_classification")
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    assert loaded.config.label2id == {"negative": 0, "positive": 1}
    assert loaded.config.problem_type == "multi_label_classification"
    assert BertForSequenceClassification.from_pretrained(tmp_path, dtype="float64").config.dtype == "float64"


# --------------------------------------------------------------------------- clear errors


@pytest.fixture
def saved(tmp_path):
    perturbed(BertForSequenceClassification).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_directory_config_and_weights_are_named(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertModel.from_pretrained(tmp_path / "nowhere")
    os.remove(saved / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights in checkpoint directory .*expected model.safetensors"):
        BertModel.from_pretrained(saved)
    os.remove(saved / "config.json")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        BertModel.from_pretrained(saved)


@pytest.mark.parametrize("changes, error, message", [
    (dict(hidden_act="swish"), ValueError, r"config.json: BertConfig.hidden_act must be one of .*got 'swish'"),
    (dict(hidden_size=9), ValueError, r"config.json: BertConfig.hidden_size must be a multiple"),
    (dict(position_embedding_type="relative_key"), ValueError, r"config.json has position_embedding_type="),
    (dict(is_decoder=True), ValueError, r"config.json has is_decoder=True"),
    (dict(model_type="gpt2"), ValueError, r"config.json has model_type 'gpt2', expected 'bert'"),
    (dict(vocab_size="big"), TypeError, r"config.json: BertConfig.vocab_size must be an int"),
])
def test_bad_config_is_named_with_file_and_field(saved, changes, error, message):
    edit_config(saved, **changes)
    with pytest.raises(error, match=message):
        BertForSequenceClassification.from_pretrained(saved)


def test_wrong_shapes_are_named(saved):
    edit_config(saved, intermediate_size=16)
    with pytest.raises(ValueError, match=r"model.safetensors has tensors of the wrong shape.*"
                                         r"intermediate.dense.weight: expected \(16, 8\), got \(12, 8\)"):
        BertForSequenceClassification.from_pretrained(saved)


def test_foreign_tensors_are_named(tmp_path):
    model = perturbed(BertModel)
    write_raw(tmp_path, config_to_hf(model.config), dict(model.params, **{"lm_head.weight": np.zeros((2, 2))}))
    with pytest.raises(ValueError, match=r"tensors that are not BERT's: \['lm_head.weight'\]"):
        BertModel.from_pretrained(tmp_path)
    tensors = {n: p for n, p in model.params.items() if n != "encoder.layer.1.output.dense.bias"}
    write_raw(tmp_path, config_to_hf(model.config), tensors)
    with pytest.raises(ValueError, match=r"is missing tensors \['encoder.layer.1.output.dense.bias'\]"):
        BertModel.from_pretrained(tmp_path)


def test_gpt2_checkpoint_is_refused_by_bert_and_bert_by_gpt(tmp_path):
    GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).save_pretrained(tmp_path / "gpt")
    with pytest.raises(ValueError, match=r"gpt.config.json has model_type 'gpt2', expected 'bert'"):
        BertModel.from_pretrained(tmp_path / "gpt")
    BertModel(BertConfig(**TINY)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"bert.config.json has model_type 'bert', expected 'gpt2'"):
        GPT.from_pretrained(tmp_path / "bert")


def test_changing_num_labels_needs_matching_names(saved):
    with pytest.raises(ValueError, match="BertConfig.id2label must map each id"):
        BertForSequenceClassification.from_pretrained(saved, num_labels=3, id2label={0: "a"})
    config = dataclasses.replace(BertConfig(**TINY), num_labels=3)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
