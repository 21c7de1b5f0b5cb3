"""GPT-2 checkpoint directories: exact round trips, transformers/torch interop both ways, clear errors."""
import json
import os
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm import gpt
from numpyllm.fileio import atomic_write
from numpyllm.gpt import GPT, GPTConfig, param_shapes
from tiny_models import TINY, perturbed_model

def random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(config.dtype) for name, shape in param_shapes(config)}


def assert_params_equal(actual, expected):
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def write_raw_checkpoint(directory, hf_config, tensors):
    """A checkpoint directory written without hub.py, to feed the reader what other tools write."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """(directory, config, params) of a checkpoint written by write_checkpoint."""
    config = GPTConfig(**TINY)
    params = random_params(config)
    gpt.write_checkpoint(tmp_path / "ckpt", config, params)
    return tmp_path / "ckpt", config, params


# --------------------------------------------------------------------------- our own format


@given(
    vocab_size=st.integers(1, 20),
    block_size=st.integers(1, 9),
    n_layer=st.integers(1, 2),
    n_head=st.integers(1, 3),
    head_size=st.integers(1, 4),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_write_then_read_round_trips_exactly(vocab_size, block_size, n_layer, n_head, head_size, dtype):
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                       n_embd=n_head * head_size, dtype=dtype)
    params = random_params(config, seed=vocab_size)
    with tempfile.TemporaryDirectory() as directory:
        gpt.write_checkpoint(directory, config, params)
        read_config, read_params = gpt.read_checkpoint(directory)
    assert read_config == config
    assert_params_equal(read_params, params)


def test_written_files_have_the_transformers_layout(tiny_checkpoint):
    from safetensors import safe_open

    directory, config, params = tiny_checkpoint
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]
    hf_config = json.loads((directory / "config.json").read_text())
    assert hf_config["model_type"] == "gpt2" and hf_config["architectures"] == ["GPT2LMHeadModel"]
    assert (hf_config["n_positions"], hf_config["n_embd"], hf_config["vocab_size"]) == (8, 8, 11)
    with safe_open(directory / "model.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted("transformer." + name for name in params)


def test_read_can_change_dtype(tiny_checkpoint):
    directory, config, params = tiny_checkpoint
    read_config, read_params = gpt.read_checkpoint(directory, dtype="float64")
    assert read_config.dtype == "float64"
    for name, array in read_params.items():
        assert array.dtype == np.float64
        np.testing.assert_array_equal(array, params[name])  # float32 -> float64 is exact


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync", "serialize"])
def test_interrupted_write_keeps_the_previous_checkpoint(tiny_checkpoint, monkeypatch, failing):
    directory, config, params = tiny_checkpoint

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if failing == "serialize":
        import safetensors.numpy

        monkeypatch.setattr(safetensors.numpy, "save", crash)
    else:
        monkeypatch.setattr(os, failing.removeprefix("os."), crash)
    new_params = {name: array + 1 for name, array in params.items()}
    with pytest.raises(OSError, match="simulated crash"):
        gpt.write_checkpoint(directory, GPTConfig(**TINY), new_params)
    monkeypatch.undo()
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]  # temp files removed
    read_config, read_params = gpt.read_checkpoint(directory)
    assert read_config == config
    assert_params_equal(read_params, params)


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "notes.txt"
    with atomic_write(path, "w") as f:
        f.write("first\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("half of the sec")
            raise RuntimeError("interrupted")
    assert path.read_text() == "first\n"
    assert os.listdir(tmp_path) == ["notes.txt"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file's mode, not mkstemp's


# --------------------------------------------------------------------------- other writers' files


def gpt2_config_json(**overrides):
    hf_config = {"model_type": "gpt2", "vocab_size": 11, "n_positions": 8, "n_ctx": 8, "n_embd": 8,
                 "n_layer": 2, "n_head": 2, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
    hf_config.update(overrides)
    return hf_config


def test_reads_unprefixed_names_and_drops_the_mask_buffers(tmp_path):
    # OpenAI's GPT-2 files on the Hub: no "transformer." prefix, causal-mask buffers stored.
    params = random_params(GPTConfig(**TINY))
    tensors = dict(params)
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((8, 8), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    write_raw_checkpoint(tmp_path, gpt2_config_json(), tensors)
    assert_params_equal(gpt.read_checkpoint(tmp_path)[1], params)


def test_reads_sharded_safetensors(tmp_path):
    from safetensors.numpy import save_file

    params = random_params(GPTConfig(**TINY))
    names = list(params)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    write_raw_checkpoint(tmp_path, gpt2_config_json(), {})
    os.remove(tmp_path / "model.safetensors")
    for shard, shard_names in shards.items():
        save_file({"transformer." + n: params[n] for n in shard_names}, tmp_path / shard, metadata={"format": "pt"})
    weight_map = {"transformer." + n: shard for shard, shard_names in shards.items() for n in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_params_equal(gpt.read_checkpoint(tmp_path)[1], params)


def test_pytorch_model_bin_without_torch_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(gpt2_config_json()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"pytorch_model.bin is a PyTorch file .*\(pip install torch\)"):
        gpt.read_checkpoint(tmp_path)


def test_widens_float16(tmp_path):
    params16 = {name: array.astype(np.float16) for name, array in random_params(GPTConfig(**TINY)).items()}
    write_raw_checkpoint(tmp_path, gpt2_config_json(), params16)
    config, params = gpt.read_checkpoint(tmp_path)
    assert config.dtype == "float32"
    assert_params_equal(params, {name: array.astype(np.float32) for name, array in params16.items()})


def test_widens_bfloat16(tmp_path):
    torch = pytest.importorskip("torch", reason="torch writes the bfloat16 reference file")
    from safetensors.torch import save_file

    bf16 = {name: torch.from_numpy(array).bfloat16() for name, array in random_params(GPTConfig(**TINY)).items()}
    write_raw_checkpoint(tmp_path, gpt2_config_json(), {})
    save_file(bf16, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert_params_equal(gpt.read_checkpoint(tmp_path)[1], {name: t.float().numpy() for name, t in bf16.items()})


def tiny_transformers_model(torch, transformers, seed=0):
    """A GPT2LMHeadModel of the TINY shape with random, non-trivial weights (biases and layernorms too).

    Every tensor ~ N(0, 0.3²): large enough that a transposed or misnamed tensor changes the
    logits, small enough that the logits stay O(1) for the float32 tolerance."""
    hf_config = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2,
                                        bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(hf_config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def test_reads_transformers_save_pretrained(tmp_path):
    torch = pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers writes the reference checkpoint")
    model = tiny_transformers_model(torch, transformers)
    model.save_pretrained(tmp_path)
    config, params = gpt.read_checkpoint(tmp_path)
    assert config == GPTConfig(**TINY)
    state = model.state_dict()
    assert_params_equal(params, {name: state["transformer." + name].numpy() for name, _ in param_shapes(config)})


def test_reads_pytorch_model_bin(tmp_path):
    torch = pytest.importorskip("torch", reason="pytorch_model.bin is read with torch")
    transformers = pytest.importorskip("transformers", reason="transformers builds the reference model")
    model = tiny_transformers_model(torch, transformers)
    state = model.state_dict()
    assert "lm_head.weight" in state  # a full state dict: the tied head is stored and must be accepted
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.to_json_file(tmp_path / "config.json")
    config, params = gpt.read_checkpoint(tmp_path)
    assert_params_equal(params, {name: state["transformer." + name].numpy() for name, _ in param_shapes(config)})


def test_transformers_loads_our_checkpoint(tiny_checkpoint):
    pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers is the reader under test")
    directory, config, params = tiny_checkpoint
    model, info = transformers.GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True)
    assert all(not keys for keys in info.values()), info  # nothing missing, unexpected or mismatched
    state = model.state_dict()
    for name, array in params.items():
        np.testing.assert_array_equal(state["transformer." + name].numpy(), array, err_msg=name)
    np.testing.assert_array_equal(state["lm_head.weight"].numpy(), params["wte.weight"])  # tied


def assert_same_logits(ours, theirs, torch, seed):
    """Our GPT and a GPT2LMHeadModel give the same float32 logits on three random full blocks."""
    idx = np.random.default_rng(seed).integers(0, TINY["vocab_size"], size=(3, TINY["block_size"]))
    with torch.no_grad():
        expected = theirs(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(ours(idx), expected, rtol=1e-4, atol=1e-4)


def test_our_saved_model_gives_the_same_logits_in_transformers(tmp_path):
    torch = pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle for the logits")
    ours = perturbed_model(GPTConfig(**TINY), seed=1, backend="auto", scale=0.3)
    ours.save_pretrained(tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_same_logits(ours, theirs, torch, seed=1)


def test_transformers_saved_model_gives_the_same_logits_here(tmp_path):
    torch = pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle for the logits")
    theirs = tiny_transformers_model(torch, transformers, seed=2)
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    assert_same_logits(ours, theirs, torch, seed=2)


# --------------------------------------------------------------------------- errors


def test_missing_directory_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint directory .*nowhere.* does not exist"):
        gpt.read_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        gpt.read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(gpt2_config_json()))
    with pytest.raises(FileNotFoundError, match=r"no weights .* expected model.safetensors"):
        gpt.read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not a UTF-8 JSON file"):
        gpt.read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"n_embd": "\xff"}')
    with pytest.raises(ValueError, match=r"config.json is not a UTF-8 JSON file"):
        gpt.read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json must hold a GPT-2 configuration object, got a JSON list"):
        gpt.read_checkpoint(tmp_path)


@pytest.mark.parametrize("index", ["[]", '{"metadata": {}}', '{"weight_map": ["model.safetensors"]}'])
def test_malformed_shard_index_is_named(tmp_path, index):
    (tmp_path / "config.json").write_text(json.dumps(gpt2_config_json()))
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ValueError, match=r"model.safetensors.index.json must (hold an object|map tensor names)"):
        gpt.read_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model_type": "llama"}, r"config.json has model_type 'llama', expected 'gpt2'"),
        ({"n_embd": None}, r"'n_embd' as a positive int, got None"),
        ({"layer_norm_epsilon": 1e-6}, r"layer_norm_epsilon=1e-06; numpyllm supports only \[1e-05\]"),
        ({"activation_function": "relu"}, r"activation_function='relu'"),
        ({"n_inner": 16}, r"n_inner=16"),
        ({"tie_word_embeddings": False}, r"tie_word_embeddings=False"),
        ({"numpyllm_dtype": "float16"}, r"dtype must be one of \('float32', 'float64'\), got 'float16'"),
    ],
)
def test_unsupported_config_is_named(tmp_path, overrides, message):
    write_raw_checkpoint(tmp_path, gpt2_config_json(**overrides), {})
    with pytest.raises(ValueError, match=message):
        gpt.read_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), r"missing tensors \['h.1.mlp.c_fc.bias'\]"),
        (lambda t: t.update({"transformer.h.2.ln_1.weight": np.ones(8, np.float32)}),
         r"unexpected tensors \['h.2.ln_1.weight'\]"),
        (lambda t: t.update({"transformer.wpe.weight": np.ones((4, 8), np.float32)}),
         r"wrong shape .* wpe.weight: expected \(8, 8\), got \(4, 8\)"),
        (lambda t: t.update({"lm_head.weight": np.ones((11, 8), np.float32)}), r"lm_head.weight differs from wte"),
        (lambda t: t.update({"transformer.ln_f.bias": np.ones(8, np.int32)}),
         r"tensor 'ln_f.bias' must be floating point, got int32"),
    ],
)
def test_bad_tensors_are_named(tmp_path, edit, message):
    tensors = {"transformer." + name: array for name, array in random_params(GPTConfig(**TINY)).items()}
    edit(tensors)
    write_raw_checkpoint(tmp_path, gpt2_config_json(), tensors)
    with pytest.raises((ValueError, TypeError), match=message):
        gpt.read_checkpoint(tmp_path)


def test_write_rejects_params_that_do_not_fit_the_config(tmp_path):
    config = GPTConfig(**TINY)
    params = random_params(config)
    params["h.0.attn.c_attn.weight"] = params["h.0.attn.c_attn.weight"].T
    with pytest.raises(ValueError, match=r"h.0.attn.c_attn.weight: expected \(8, 24\), got \(24, 8\)"):
        gpt.write_checkpoint(tmp_path, config, params)
    assert os.listdir(tmp_path) == []  # nothing written
    with pytest.raises(TypeError, match=r"config must be a GPTConfig, got dict"):
        gpt.write_checkpoint(tmp_path, TINY, random_params(config))
