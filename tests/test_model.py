"""GPT: configuration checks, parameter layout, initialisation, input validation, the whole
model's gradients against finite differences and across attention backends, and
transformers' GPT2LMHeadModel (torch) as the oracle on the same weights."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finite_differences import assert_gradient_matches
from numpyllm import GPT, GPTConfig, attention
from numpyllm.gpt import config_to_hf
from numpyllm.gpt import param_shapes
from numpyllm.params import flat_views
from tiny_models import TINY, perturbed_model


def batch(rng, config, B, T, ignored_fraction=0.25):
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    targets[rng.random((B, T)) < ignored_fraction] = -1
    targets[0, -1] = rng.integers(config.vocab_size)  # at least one scored position
    return idx, targets


# --------------------------------------------------------------------------- config and layout


@pytest.mark.parametrize("change, error, message", [
    (dict(n_embd=10, n_head=3), ValueError, "multiple of n_head"),
    (dict(n_layer=0), ValueError, "n_layer must be >= 1"),
    (dict(vocab_size=-5), ValueError, "vocab_size must be >= 1"),
    (dict(block_size=8.0), TypeError, "block_size must be an int"),
    (dict(n_head=True), TypeError, "n_head must be an int"),
    (dict(dtype="float16"), ValueError, "dtype must be one of"),
])
def test_config_rejects_bad_values(change, error, message):
    with pytest.raises(error, match=message):
        GPTConfig(**{**TINY, **change})


def test_params_are_gpt2_names_and_views_of_one_flat_buffer():
    config = GPTConfig(**TINY)
    model = GPT(config)
    C, V = config.n_embd, config.vocab_size
    assert list(model.params) == [name for name, _ in param_shapes(config)]
    assert model.params["wte.weight"].shape == (V, C)
    assert model.params["h.1.attn.c_attn.weight"].shape == (C, 3 * C)
    assert model.params["h.0.mlp.c_proj.weight"].shape == (4 * C, C)
    assert "lm_head.weight" not in model.params  # tied to wte
    assert model.num_params == sum(p.size for p in model.params.values()) == model.flat_params.size
    for name, p in model.params.items():
        assert p.dtype == np.float32 and np.shares_memory(p, model.flat_params), name
    model.flat_params[:] = 0.5  # one vector operation reaches every tensor
    assert all(np.all(p == 0.5) for p in model.params.values())


def test_flat_views_rejects_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError, match="buffer must be 1-D with 6 elements"):
        flat_views(np.zeros(7), [("a", (2, 2)), ("b", (2,))])


def test_initialisation_is_gpt2s():
    config = GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=64)
    model = GPT(config, seed=1)
    p = model.params
    assert np.std(p["wte.weight"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(p["h.2.attn.c_attn.weight"]) == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / np.sqrt(2 * config.n_layer)
    assert np.std(p["h.2.attn.c_proj.weight"]) == pytest.approx(residual_std, rel=0.05)
    assert np.std(p["h.3.mlp.c_proj.weight"]) == pytest.approx(residual_std, rel=0.05)
    assert all(np.all(p[name] == 0) for name in p if name.endswith(".bias"))
    assert np.all(p["h.0.ln_2.weight"] == 1) and np.all(p["ln_f.weight"] == 1)
    # Same seed, same weights (also across dtypes); another seed, other weights.
    again = GPT(config, seed=1)
    np.testing.assert_array_equal(again.flat_params, model.flat_params)
    wide = GPT(GPTConfig(**{**config.__dict__, "dtype": "float64"}), seed=1)
    np.testing.assert_array_equal(wide.flat_params.astype(np.float32), model.flat_params)
    assert not np.array_equal(GPT(config, seed=2).flat_params, model.flat_params)


@pytest.mark.parametrize("idx, error, message", [
    (np.zeros((2, 3), dtype=np.float32), TypeError, "idx must be an integer array"),
    (np.zeros(3, dtype=int), ValueError, r"idx must be 2-D \(B, T\)"),
    (np.zeros((1, 9), dtype=int), ValueError, "block_size=8"),
    (np.zeros((1, 0), dtype=int), ValueError, "1 <= T"),
    (np.full((1, 3), 11), ValueError, r"idx entries must be in \[0, 11\), got 11"),
    (np.full((1, 3), -1), ValueError, r"idx entries must be in \[0, 11\), got -1"),
])
def test_bad_idx_is_rejected_with_its_name(idx, error, message):
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(error, match=message):
        model(idx)
    with pytest.raises(error, match=message):
        model.loss_and_grads(idx, np.zeros((1, 3), dtype=int))


@pytest.mark.parametrize("targets, error, message", [
    (np.zeros((2, 3)), TypeError, "targets must be an integer array"),
    (np.zeros((2, 4), dtype=int), ValueError, r"targets must have idx's shape \(2, 3\)"),
    (np.full((2, 3), 11), ValueError, r"targets entries must be < 11 \(negative: ignored\), got 11"),
    (np.full((2, 3), -1), ValueError, "no position to score"),
    (np.full((2, 3), -100), ValueError, "no position to score"),
])
def test_bad_targets_are_rejected_with_their_name(targets, error, message):
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(error, match=message):
        model.loss_and_grads(np.zeros((2, 3), dtype=int), targets)


def test_bad_backend_and_config_are_rejected():
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        GPT(GPTConfig(**TINY), attention_backend="torch")
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        GPT(TINY)
    with pytest.raises(ValueError, match="seed must be >= 0 or None, got -1"):
        GPT(GPTConfig(**TINY), seed=-1)
    with pytest.raises(TypeError, match="seed must be an int >= 0 or None, got float 1.5"):
        GPT(GPTConfig(**TINY), seed=1.5)


# --------------------------------------------------------------------------- behaviour


def test_logits_at_a_position_depend_only_on_earlier_tokens():
    model = perturbed_model(GPTConfig(**TINY, dtype="float64"), seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 11, (2, 8))
    changed = idx.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    logits, logits_changed = model(idx), model(changed)
    assert logits.shape == (2, 8, 11) and logits.dtype == np.float64
    np.testing.assert_array_equal(logits_changed[:, :5], logits[:, :5])
    assert not np.allclose(logits_changed[:, 5:], logits[:, 5:])


def test_ignored_targets_do_not_change_loss_or_gradients():
    # Scoring only the first 4 positions of a length-8 batch = the same loss as a length-4 batch.
    model = perturbed_model(GPTConfig(**TINY, dtype="float64"), seed=3)
    rng = np.random.default_rng(3)
    idx, targets = batch(rng, model.config, 2, 8, ignored_fraction=0.0)
    padded = targets.copy()
    padded[:, 4:] = -1
    padded[0, 6] = -100  # Hugging Face's ignore index counts as padding too
    loss, grads = model.loss_and_grads(idx, padded)
    short_loss, short_grads = model.loss_and_grads(idx[:, :4], targets[:, :4])
    assert loss == pytest.approx(short_loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], short_grads[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_grads_are_views_of_one_fresh_flat_buffer():
    model = GPT(GPTConfig(**TINY))
    idx, targets = batch(np.random.default_rng(0), model.config, 2, 5)
    loss, grads = model.loss_and_grads(idx, targets)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert list(grads) == list(model.params)
    buffer = grads["wte.weight"].base
    assert buffer.ndim == 1 and buffer.size == model.num_params and buffer.dtype == np.float32
    assert all(g.base is buffer and g.shape == model.params[n].shape for n, g in grads.items())
    _, grads_again = model.loss_and_grads(idx, targets)
    assert grads_again["wte.weight"].base is not buffer  # earlier results are not overwritten
    np.testing.assert_array_equal(grads_again["wte.weight"], grads["wte.weight"])


# --------------------------------------------------------------------------- gradients


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), n_layer=st.integers(1, 2), n_head=st.integers(1, 2),
       head_size=st.integers(1, 3), B=st.integers(1, 2), T=st.integers(1, 4))
def test_loss_gradient_matches_finite_differences_for_every_parameter(seed, n_layer, n_head, head_size, B, T):
    config = GPTConfig(vocab_size=7, block_size=5, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_size,
                       dtype="float64")
    model = perturbed_model(config, seed)
    rng = np.random.default_rng(seed)
    idx, targets = batch(rng, config, B, T)
    _, grads = model.loss_and_grads(idx, targets)

    def loss():
        return model.loss_and_grads(idx, targets)[0]

    for name, p in model.params.items():
        assert_gradient_matches(loss, p, grads[name], rng, name=name, n_entries=6)


@pytest.mark.skipif("cython" not in attention.available_backends(),
                    reason="the compiled attention kernel (numpyllm._attention) is not built")
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_gradients_are_the_same_through_numpy_and_cython_attention(dtype, rtol):
    config = GPTConfig(vocab_size=64, block_size=40, n_layer=2, n_head=3, n_embd=24, dtype=dtype)
    reference = perturbed_model(config, seed=5, backend="numpy")
    kernel = GPT(config, attention_backend="cython")
    kernel.flat_params[:] = reference.flat_params
    idx, targets = batch(np.random.default_rng(5), config, 3, 37)
    loss, grads = reference.loss_and_grads(idx, targets)
    kernel_loss, kernel_grads = kernel.loss_and_grads(idx, targets)
    assert kernel_loss == pytest.approx(loss, rel=rtol)
    for name, g in grads.items():
        error = np.max(np.abs(kernel_grads[name] - g)) / np.max(np.abs(g))
        assert error <= rtol, f"{name}: relative difference {error:.1e}"


# --------------------------------------------------------------------------- transformers as the oracle


def transformers_twin(model, torch, transformers):
    """A GPT2LMHeadModel with ``model``'s config and exactly its weights (the LM head tied)."""
    c = model.config
    hf_config = transformers.GPT2Config(**config_to_hf(c), bos_token_id=0, eos_token_id=0)
    hf_config._attn_implementation = "eager"
    twin = transformers.GPT2LMHeadModel(hf_config).to(getattr(torch, c.dtype)).eval()
    state = {"transformer." + name: torch.from_numpy(p.copy()) for name, p in model.params.items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    assert twin.lm_head.weight.data_ptr() == twin.transformer.wte.weight.data_ptr()
    return twin


@pytest.mark.parametrize("backend", attention.available_backends())
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float64", 1e-10)])
def test_logits_loss_and_every_gradient_match_transformers_gpt2(dtype, tolerance, backend):
    torch = pytest.importorskip("torch", reason="torch runs the reference GPT-2")
    transformers = pytest.importorskip("transformers", reason="transformers' GPT2LMHeadModel is the oracle")
    config = GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32, dtype=dtype)
    model = perturbed_model(config, seed=7, backend=backend)
    twin = transformers_twin(model, torch, transformers)
    idx, targets = batch(np.random.default_rng(7), config, 3, 24)

    logits = twin(torch.from_numpy(idx)).logits
    np.testing.assert_allclose(model(idx), logits.detach().numpy(), rtol=0, atol=tolerance)
    reference_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size),
                                                       torch.from_numpy(targets).reshape(-1), ignore_index=-1)
    reference_loss.backward()
    loss, grads = model.loss_and_grads(idx, targets)
    assert loss == pytest.approx(reference_loss.item(), rel=tolerance)
    for name, parameter in twin.transformer.named_parameters():
        reference = parameter.grad.numpy()
        error = np.max(np.abs(grads[name] - reference)) / np.max(np.abs(reference))
        assert error <= tolerance, f"{name}: relative difference {error:.1e} from transformers"


# --------------------------------------------------------------------------- checkpoints


def test_save_pretrained_then_from_pretrained_is_exact(tmp_path):
    pytest.importorskip("safetensors", reason="checkpoints are model.safetensors files")
    model = perturbed_model(GPTConfig(**TINY, dtype="float64"), seed=11, backend="numpy")
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path, attention_backend="numpy")
    assert loaded.config == model.config and loaded.attention_backend == "numpy"
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    assert all(np.shares_memory(p, loaded.flat_params) for p in loaded.params.values())
    as_float32 = GPT.from_pretrained(tmp_path, dtype="float32")
    np.testing.assert_array_equal(as_float32.flat_params, model.flat_params.astype(np.float32))


def test_transformers_loads_save_pretrained_with_the_same_logits(tmp_path):
    torch = pytest.importorskip("torch", reason="torch runs the reference GPT-2")
    transformers = pytest.importorskip("transformers", reason="transformers loads the saved directory")
    model = perturbed_model(GPTConfig(**TINY), seed=13, backend="auto")
    model.save_pretrained(tmp_path)
    twin = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = np.random.default_rng(13).integers(0, 11, (2, 8))
    with torch.no_grad():
        reference = twin(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(model(idx), reference, rtol=0, atol=1e-4)
