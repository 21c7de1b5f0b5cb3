"""Generation: the KV-cached forward equals the plain one, greedy equals transformers', the
samplers draw only allowed tokens with the renormalised probabilities, streaming text
equals decode(all ids), and the command line streams text or prints one error line."""

import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax
from scipy.stats import chisquare

from numpyllm import GPT, GPTConfig, BPETokenizer, attention
from numpyllm.__main__ import main as cli
from numpyllm.generation import Decoder, StreamDecoder, _sample, generate, sample_logits
from tiny_models import TINY, perturbed_model

BACKENDS = attention.available_backends()


def random_model(seed=0, dtype="float64", backend="numpy", **shape):
    """The TINY shape with 13 tokens (the bad-id tests name [0, 13)), float64 unless asked, ``shape`` on top;
    every parameter (biases and gains too) perturbed by N(0, 0.5²), so logits are well spread."""
    config = GPTConfig(**{**TINY, "vocab_size": 13, "dtype": dtype, **shape})
    return perturbed_model(config, seed, backend, scale=0.5)


def sliding_window_greedy(model, idx, max_new_tokens):
    """Greedy decoding without a cache: each token from model(last block_size tokens)."""
    sequence = np.array(idx)
    for _ in range(max_new_tokens):
        logits = model(sequence[:, -model.config.block_size:])[:, -1]
        sequence = np.concatenate([sequence, logits.argmax(axis=-1)[:, None]], axis=1)
    return sequence


# --------------------------------------------------------------------------- the cached forward


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), prompt=st.integers(1, 5),
       chunks=st.lists(st.integers(1, 3), min_size=1, max_size=4), backend=st.sampled_from(BACKENDS))
def test_cached_logits_equal_uncached_at_every_step(seed, batch, prompt, chunks, backend):
    model = random_model(seed, backend=backend, block_size=prompt + sum(chunks))
    rng = np.random.default_rng(seed)
    sequence = rng.integers(0, model.config.vocab_size, size=(batch, prompt + sum(chunks)))
    decoder = Decoder(model, batch, model.config.block_size)
    logits = decoder.prefill(sequence[:, :prompt])
    np.testing.assert_allclose(logits, model(sequence[:, :prompt])[:, -1], rtol=1e-10, atol=1e-12)
    end = prompt
    for size in chunks:  # single positions and several at once
        logits = decoder.step(sequence[:, end: end + size])
        end += size
        np.testing.assert_allclose(logits, model(sequence[:, :end])[:, -1], rtol=1e-10, atol=1e-12)


def test_cache_is_preallocated_and_refuses_overflow():
    model = random_model()
    decoder = Decoder(model, 1, 4)
    keys = decoder.cache.keys
    decoder.prefill(np.zeros((1, 3), dtype=np.int64))
    decoder.step(np.zeros((1, 1), dtype=np.int64))
    assert decoder.cache.keys is keys and keys.shape == (2, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="cache holds 4 positions"):
        decoder.step(np.zeros((1, 1), dtype=np.int64))


@pytest.mark.parametrize("prompt_length", [3, 8, 11])  # shorter than, equal to, longer than block_size
def test_crop_and_reprefill_past_block_size_equals_sliding_window(prompt_length):
    model = random_model(seed=prompt_length)
    idx = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(2, prompt_length))
    expected = sliding_window_greedy(model, idx, 12)
    np.testing.assert_array_equal(model.generate(idx, 12, temperature=0), expected)


def test_greedy_equals_transformers_generate(tmp_path):
    torch = pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers' generate is the oracle")
    from test_hub import tiny_transformers_model

    hf_model = tiny_transformers_model(torch, transformers).double()
    hf_model.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path, dtype="float64")
    hf_model.generation_config.eos_token_id = None  # the tiny config's eos is token 0: never stop early
    idx = np.array([[1, 2, 3], [4, 0, 9]])
    expected = hf_model.generate(torch.from_numpy(idx), attention_mask=torch.ones(idx.shape, dtype=torch.long),
                                 max_new_tokens=5, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(model.generate(idx, 5, temperature=0), expected)


# --------------------------------------------------------------------------- sampling


def allowed_tokens(logits, temperature, top_k, top_p):
    """The set of tokens top-k then top-p keep for one row, and their renormalised probabilities."""
    order = np.argsort(-logits, kind="stable")
    if top_k is not None:
        kth = logits[order[min(top_k, logits.size) - 1]]
        order = order[logits[order] >= kth]
    probs = softmax(logits[order] / temperature)
    if top_p is not None:
        keep = np.searchsorted(np.cumsum(probs), top_p) + 1  # the smallest prefix reaching top_p
        order, probs = order[:keep], probs[:keep]
    return order, probs / probs.sum()


sampler_settings = st.fixed_dictionaries({
    "temperature": st.floats(0.2, 3.0),
    "top_k": st.none() | st.integers(1, 12),
    "top_p": st.none() | st.floats(0.05, 1.0),
})


@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 10), settings_=sampler_settings)
def test_samplers_only_return_allowed_tokens(seed, vocab, settings_):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=vocab)
    allowed, _ = allowed_tokens(logits, **settings_)
    tokens = sample_logits(np.tile(logits, (500, 1)), **settings_, rng=rng)
    assert set(tokens.tolist()) <= set(allowed.tolist())


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 6, None), (1.3, None, 0.8),
                                                       (0.8, 7, 0.9)])
def test_sample_frequencies_match_renormalised_probabilities(temperature, top_k, top_p):
    logits = np.random.default_rng(5).normal(0.0, 1.0, size=10)
    allowed, probs = allowed_tokens(logits, temperature, top_k, top_p)
    n = 20_000
    tokens = _sample(np.tile(logits, (n, 1)), temperature, top_k, top_p, np.random.default_rng(0))
    counts = np.bincount(tokens, minlength=logits.size)
    assert counts.sum() == counts[allowed].sum()  # nothing outside the allowed set
    assert chisquare(counts[allowed], n * probs).pvalue > 1e-3
    # the test has power: the untempered, unfiltered softmax is rejected whenever it differs
    if (temperature, top_k, top_p) != (1.0, None, None):
        assert chisquare(counts, n * softmax(logits)).pvalue < 1e-6


def test_temperature_zero_is_argmax_whatever_top_k_and_top_p():
    logits = np.random.default_rng(0).normal(size=(4, 9))
    np.testing.assert_array_equal(sample_logits(logits, 0, top_k=3, top_p=0.5), logits.argmax(axis=-1))


def test_top_p_keeps_at_least_the_most_probable_token():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    np.testing.assert_array_equal(sample_logits(logits, 1.0, top_p=1e-9, rng=np.random.default_rng(0)), [0, 2])


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = random_model(dtype="float32", backend="auto")
    idx = np.array([[1, 2], [3, 4]])
    first = model.generate(idx, 6, seed=7, top_k=8, top_p=0.95)
    np.testing.assert_array_equal(model.generate(idx, 6, seed=7, top_k=8, top_p=0.95), first)
    assert not np.array_equal(model.generate(idx, 6, seed=8, top_k=8, top_p=0.95), first)
    assert first.shape == (2, 8) and first.dtype == np.int64
    np.testing.assert_array_equal(first[:, :2], idx)


def test_stop_tokens_pad_stopped_rows_and_end_when_all_stopped():
    model = random_model()
    idx = np.random.default_rng(3).integers(0, 13, size=(3, 2))
    free = model.generate(idx, 6, seed=1)
    stop = free[0, 3]  # row 0 samples it by its 2nd new token
    # where each row's output ends without padding: just after its first stop token
    ends = [2 + (hits[0] + 1 if hits.size else 6) for hits in (np.flatnonzero(row[2:] == stop) for row in free)]
    out = model.generate(idx, 6, seed=1, stop_tokens=[stop])
    assert out.shape == (3, max(ends))  # all rows stopped, or max_new_tokens reached
    for row, free_row, end in zip(out, free, ends):
        np.testing.assert_array_equal(row[:end], free_row[:end])  # the same draws until the stop token
        assert (row[end:] == stop).all()  # then padded with it
    # a stop token every row produces at once ends generation after one token
    greedy = model.generate(idx, 6, temperature=0)
    assert model.generate(idx, 6, temperature=0, stop_tokens=greedy[:, 2].tolist()).shape == (3, 3)


def test_zero_new_tokens_returns_the_prompt():
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(random_model().generate(idx, 0), idx)


@pytest.mark.parametrize("arguments, error, message", [
    (dict(idx=[[1, 13]]), ValueError, r"idx entries must be in \[0, 13\), got 13"),
    (dict(idx=[[-1]]), ValueError, r"idx entries must be in \[0, 13\), got -1"),
    (dict(idx=[[1.0]]), TypeError, "idx must be an integer array of token ids, got dtype float64"),
    (dict(idx=[1, 2]), ValueError, r"idx must be 2-D \(B, T\)"),
    (dict(idx=np.zeros((1, 0), dtype=int)), ValueError, "at least one prompt of at least one token"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0, got -1"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be an int"),
    (dict(temperature=-0.5), ValueError, r"temperature must be in \[0, inf\) \(0: greedy\), got -0.5"),
    (dict(temperature=float("nan")), ValueError, r"temperature must be in \[0, inf\) \(0: greedy\), got nan"),
    (dict(temperature=float("inf")), ValueError, r"temperature must be in \[0, inf\) \(0: greedy\), got inf"),
    (dict(temperature="hot"), TypeError, "temperature must be a real number in .*, got str 'hot'"),
    (dict(top_k=0), ValueError, "top_k must be >= 1 or None, got 0"),
    (dict(top_k=2.5), TypeError, "top_k must be an int"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\] or None, got 0.0"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=True), TypeError, r"top_p must be a real number in \(0, 1\] or None, got bool True"),
    (dict(seed=-3), ValueError, "seed must be >= 0"),
    (dict(seed="x"), TypeError, "seed must be an int"),
    (dict(stop_tokens=[99]), ValueError, r"stop_tokens entries must be in \[0, 13\), got 99"),
    (dict(stop_tokens=[2.0]), TypeError, "stop_tokens must be an integer array of token ids, got dtype float64"),
])
def test_bad_arguments_are_named(arguments, error, message):
    call = {"idx": [[1, 2]], "max_new_tokens": 3, **arguments}
    with pytest.raises(error, match=message):
        generate(random_model(), **call)


# --------------------------------------------------------------------------- streaming text


def byte_tokenizer():
    """A tokenizer of the 256 single bytes plus one special token: any byte string is reachable."""
    return BPETokenizer({bytes([b]): b for b in range(256)}, [], {"<|endoftext|>": 256})


@given(ids=st.lists(st.integers(0, 256), max_size=40), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_stream_decoder_emits_exactly_decode_of_all_ids(ids, cuts):
    tokenizer = byte_tokenizer()
    stream = StreamDecoder(tokenizer)
    bounds = [0, *sorted(cut for cut in cuts if cut <= len(ids)), len(ids)]
    pieces = [stream.push(ids[start:end]) for start, end in zip(bounds, bounds[1:])]
    assert "".join(pieces) + stream.finish() == tokenizer.decode(ids)


def test_stream_decoder_holds_back_a_split_character():
    stream = StreamDecoder(byte_tokenizer())
    euro = list("€".encode())  # three bytes, three tokens
    assert [stream.push([b]) for b in euro] == ["", "", "€"]
    assert stream.push(euro[:1]) == "" and stream.finish() == "\ufffd"


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A directory with a small random model and a byte tokenizer whose vocabulary it covers."""
    directory = tmp_path_factory.mktemp("model")
    random_model(dtype="float32", backend="auto", vocab_size=257, block_size=16).save_pretrained(directory)
    byte_tokenizer().save(directory)
    return directory


def run_cli(capsys, *argv):
    status = cli(["generate", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_streams_the_prompt_and_exactly_the_generated_text(model_dir, capsys):
    args = ["--model", str(model_dir), "--prompt", "h€llo", "--max-new-tokens", "20", "--seed", "3",
            "--top-k", "50"]
    status, out, err = run_cli(capsys, *args)
    assert status == 0 and err == ""
    tokenizer = BPETokenizer.from_pretrained(model_dir)
    prompt = tokenizer.encode("h€llo")
    ids = GPT.from_pretrained(model_dir).generate(np.array([prompt]), 20, seed=3, top_k=50)[0]
    assert out == tokenizer.decode(ids) + "\n"
    assert run_cli(capsys, *args)[1] == out  # same seed, same text
    status, _, err = run_cli(capsys, *args, "--verbose")
    assert "tokens/s" in err


def test_cli_stops_quietly_when_the_reader_closes_the_pipe(model_dir, tmp_path, capsys, monkeypatch):
    class ClosedPipe:  # what `| head` leaves behind once head exits
        def __init__(self, fd):
            self.fd = fd

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return self.fd

    with open(tmp_path / "stdout", "w") as stand_in:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(stand_in.fileno()))
        status = cli(["generate", "--model", str(model_dir), "--prompt", "hi"])
    assert status == 0 and capsys.readouterr().err == ""


@pytest.mark.parametrize("extra, message", [
    (["--temperature", "-1"], r"--temperature must be in \[0, inf\) \(0: greedy\), got -1.0"),
    (["--top-k", "0"], "--top-k must be >= 1"),
    (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--max-new-tokens", "-2"], "--max-new-tokens must be >= 0"),
    (["--prompt", ""], "--prompt must not be empty"),
])
def test_cli_bad_input_is_one_line(model_dir, capsys, extra, message):
    status, out, err = run_cli(capsys, "--model", str(model_dir), "--prompt", "hi", *extra)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("numpyllm generate: error: ")
    assert re.search(message, err)


def test_cli_missing_model_and_vocabulary_mismatches(model_dir, tmp_path, capsys):
    status, out, err = run_cli(capsys, "--model", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert status == 2 and out == "" and err.count("\n") == 1 and "does not exist" in err
    small = tmp_path / "small"  # a model whose vocabulary is smaller than its tokenizer's
    random_model(dtype="float32", vocab_size=100).save_pretrained(small)
    byte_tokenizer().save(small)
    status, out, err = run_cli(capsys, "--model", str(small), "--prompt", "AB~")  # "~" is byte 126
    assert status == 2 and out == "" and err.count("\n") == 1
    assert "--prompt encodes to token id 126, outside the model's vocabulary [0, 100)" in err
    large = tmp_path / "large"  # a model that could sample ids its tokenizer cannot decode
    random_model(dtype="float32", vocab_size=300).save_pretrained(large)
    byte_tokenizer().save(large)
    status, out, err = run_cli(capsys, "--model", str(large), "--prompt", "hi")
    assert status == 2 and out == "" and err.count("\n") == 1
    assert "has 300 token ids but the tokenizer in" in err and "only 257: sampled ids could not be decoded" in err



# --------------------------------------------------------------------------- benchmark smoke test


def test_generate_benchmark_prints_its_table_and_every_row_agrees(capsys):
    from benchmarks import generate as bench

    assert bench.main(["--quick", "--prompt-tokens", "4", "--new-tokens", "3"]) == 0
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[2:]
    assert [cell.strip() for cell in header] == ["implementation", "tokens/s", "ms/token", "vs transformers",
                                                 "same tokens"]
    names = [row[0].strip() for row in body]
    assert names[:2] == ["numpyllm (attention auto)", "numpyllm (attention numpy)"]
    assert names[-1] == bench.WEIGHT_PRODUCTS and body[-1][-1].strip() == "n/a"
    assert all(row[-1].strip() == "yes" for row in body[:-1])  # every generator gave the same tokens
